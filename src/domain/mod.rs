//! Domain types that cannot be invalid: parsed once at the edge, trusted inside.

mod batching;
mod delivery_options;
mod event_type;
mod filter;
mod headers;
mod pattern;
mod secret;
mod signature;
mod signing_secret;
mod url;

pub use batching::{BatchBounds, BatchError, Batching, MAX_BATCH_EVENTS, MIN_BATCH_EVENTS};
pub use delivery_options::{
    format as format_duration, DeliveryBounds, DeliveryOptions, ScheduleError, MAX_RETRY_STEPS,
};
pub use event_type::EventType;
pub use filter::{FilterError, PayloadFilter, Subject};
pub use headers::{parse_header, StaticHeaders};
pub use pattern::{TopicPattern, TopicTrie};
pub use secret::Secret;
pub use signature::{LegacySecret, SignatureScheme, Signing};
pub use signing_secret::SigningSecret;
pub use url::EndpointUrl;

/// Why a value was refused at the edge; the message is shown to the user as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(pub String);

impl From<FilterError> for InvalidValue {
    fn from(error: FilterError) -> Self {
        InvalidValue(format!("filter {error}"))
    }
}
