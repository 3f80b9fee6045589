//! Parking: a message Herald cannot take goes to `<prefix>.invalid` whole — body and
//! properties as they came — with headers saying why (`x-herald-error`,
//! `x-herald-reason`) and where it came from (`x-herald-exchange`,
//! `x-herald-routing-key`), so that an SRE can read it and `herald invalid reingest` can
//! send it back.

use lapin::message::Delivery;
use lapin::BasicProperties;

use super::headers::{encoded_size, text, with_error};
use super::{Outgoing, PublishError, Publisher};

/// Most bytes of a message's own headers a parked copy keeps. A header table has to
/// fit in one AMQP frame (16 KiB by default, `broker::DEFAULT_FRAME_MAX`) together
/// with the other properties; larger ones are left out, and the parked copy says so.
pub const MAX_KEPT_HEADER_BYTES: usize = 8 * 1024;

/// One message to park and why.
pub struct Refused<'a> {
    pub message: &'a Delivery,
    /// A short class, the metric label (`not_json`, `too_deep`, …).
    pub reason: &'static str,
    /// A sentence for the operator.
    pub detail: String,
}

/// Publishes every refused message to `queue` with confirms.
pub async fn park(
    publisher: &Publisher,
    queue: &str,
    refused: &[Refused<'_>],
    now_unix: u64,
) -> Result<(), PublishError> {
    if refused.is_empty() {
        return Ok(());
    }
    let messages = refused
        .iter()
        .map(|r| Outgoing {
            exchange: "",
            routing_key: queue,
            body: &r.message.data,
            properties: parked_properties(r, now_unix),
        })
        .collect();
    publisher.publish_all(messages).await
}

/// The properties of a parked copy: the message's own, persistent, with the reason
/// and origin added and a timestamp (arrival) if it had none.
fn parked_properties(refused: &Refused<'_>, now_unix: u64) -> BasicProperties {
    let message = refused.message;
    let own = message.properties.headers().clone();
    let own_size = own.as_ref().map_or(0, encoded_size);
    let (own, detail) = if own_size > MAX_KEPT_HEADER_BYTES {
        let note = format!(
            "{} (its own headers, {own_size} bytes, were left out)",
            refused.detail
        );
        (None, note)
    } else {
        (own, refused.detail.clone())
    };
    let mut headers = with_error(own, refused.reason, &detail);
    headers.insert("x-herald-exchange".into(), text(message.exchange.as_str()));
    headers.insert(
        "x-herald-routing-key".into(),
        text(message.routing_key.as_str()),
    );
    let mut properties = message
        .properties
        .clone()
        .with_delivery_mode(2)
        .with_headers(headers);
    if properties.timestamp().is_none() {
        properties = properties.with_timestamp(now_unix);
    }
    properties
}
