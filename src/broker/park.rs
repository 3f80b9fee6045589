//! Parking: a message Herald cannot take goes to `<prefix>.invalid` whole — body and
//! properties as they came — with headers saying why (`x-herald-error`,
//! `x-herald-reason`) and where it came from (`x-herald-exchange`,
//! `x-herald-routing-key`) and an id to select it by (`x-herald-parked-id`, a UUIDv7),
//! so that an SRE can read it and `herald invalid reingest` can send it back
//! ([`super::parked`]).

use lapin::message::Delivery;
use lapin::BasicProperties;
use uuid::Uuid;

use super::headers::{encoded_size, text, with_error};
use super::parked::{self, origin};
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

/// Publishes every refused message to `queue` with confirms; their parked ids, in
/// order.
pub async fn park(
    publisher: &Publisher,
    queue: &str,
    refused: &[Refused<'_>],
    now_unix: u64,
) -> Result<Vec<Uuid>, PublishError> {
    if refused.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = refused.iter().map(|_| Uuid::now_v7()).collect();
    let messages = refused
        .iter()
        .zip(&ids)
        .map(|(r, id)| Outgoing {
            exchange: "",
            routing_key: queue,
            body: &r.message.data,
            properties: parked_properties(r, *id, now_unix),
        })
        .collect();
    publisher.publish_all(messages).await?;
    Ok(ids)
}

/// The properties of a parked copy: the message's own, persistent, with the reason,
/// origin and a new id added and a timestamp (arrival) if it had none. A reingested
/// message refused again keeps its origin ([`origin`]) and gets a new id.
fn parked_properties(refused: &Refused<'_>, id: Uuid, now_unix: u64) -> BasicProperties {
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
    let (exchange, routing_key) = origin(message);
    headers.insert(parked::EXCHANGE.into(), text(&exchange));
    headers.insert(parked::ROUTING_KEY.into(), text(&routing_key));
    headers.insert(parked::PARKED_ID.into(), text(&id.to_string()));
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
