//! A parked message (`<prefix>.invalid`, see [`super::park`]) read back: its id, what
//! an SRE is shown of it, and the copy `herald invalid reingest` sends back to ingest.
//! Pure functions over AMQP properties; the queue itself is walked by
//! `crate::service::invalid`.
//!
//! **Ids.** Every message parked since this version carries `x-herald-parked-id`, a
//! UUIDv7 given at park time. A message parked by an earlier version has none: its id is
//! derived — a UUID (version 8) of the SHA-256 of its origin, message id, timestamp,
//! error and body — so it is the same on every listing while the message stays parked.
//! Two byte-identical copies parked by an earlier version share their derived id (and
//! are the same event to ingest).
//!
//! **Back to ingest.** A reingested copy is published to Herald's own ingest queue
//! (the default exchange), not to the publishers' exchange: other consumers of that
//! exchange, and another Herald deployment sharing it, never see it twice. Its origin
//! travels in `x-herald-exchange` / `x-herald-routing-key`, which ingest takes (see
//! [`origin`]) for a message that arrived through the default exchange; the other
//! parking headers are removed, so that ingest parks it again, with a new id, if it is
//! still refused.

use std::borrow::Cow;
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use lapin::message::Delivery;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::headers::{header_int, header_text};

/// `reason: detail`, why the message was refused.
pub const ERROR: &str = "x-herald-error";
/// The reason class alone (`not_json`, `too_large`, …).
pub const REASON: &str = "x-herald-reason";
/// The exchange the message was published to.
pub const EXCHANGE: &str = "x-herald-exchange";
/// Its routing key.
pub const ROUTING_KEY: &str = "x-herald-routing-key";
/// The id given at park time (UUIDv7).
pub const PARKED_ID: &str = "x-herald-parked-id";

/// How many times the broker has handed the message out and had it back (a quorum
/// queue's count; every listing returns what it looked at).
pub const DELIVERY_COUNT: &str = "x-delivery-count";

/// Headers the broker keeps on a quorum queue's messages, not the message's own.
const BROKER_HEADERS: [&str; 2] = [DELIVERY_COUNT, "x-acquired-count"];

/// Headers a reingested copy loses: it is a new message to ingest.
const PARKING_ONLY: [&str; 5] = [
    ERROR,
    REASON,
    PARKED_ID,
    BROKER_HEADERS[0],
    BROKER_HEADERS[1],
];

/// The reason of a message the deliver role found in `<prefix>.work` that is not a
/// delivery task: not an event, so never sent through ingest (only purged).
pub const MALFORMED_TASK: &str = "malformed_task";

/// Most body bytes a listing shows of each message.
pub const BODY_PREFIX_BYTES: usize = 1024;

/// Where a message came from: the exchange and routing key it was published with.
/// A message that reached the ingest queue through the default exchange and carries
/// [`ROUTING_KEY`] is a reingested one: its origin is in its headers.
pub fn origin(delivery: &Delivery) -> (Cow<'_, str>, Cow<'_, str>) {
    if delivery.exchange.as_str().is_empty() {
        if let Some(headers) = delivery.properties.headers() {
            if let Some(routing_key) = header_text(headers, ROUTING_KEY) {
                let exchange = header_text(headers, EXCHANGE).unwrap_or_default();
                return (Cow::Owned(exchange), Cow::Owned(routing_key));
            }
        }
    }
    (
        Cow::Borrowed(delivery.exchange.as_str()),
        Cow::Borrowed(delivery.routing_key.as_str()),
    )
}

/// A parked message's id: the one given at park time, else one derived from the
/// message (see the module's comment); `true` when derived.
pub fn parked_id(properties: &BasicProperties, body: &[u8]) -> (Uuid, bool) {
    let headers = properties.headers().clone().unwrap_or_default();
    if let Some(id) = header_text(&headers, PARKED_ID).and_then(|t| Uuid::parse_str(&t).ok()) {
        return (id, false);
    }
    let mut hash = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hash.update((bytes.len() as u64).to_be_bytes());
        hash.update(bytes);
    };
    for name in [EXCHANGE, ROUTING_KEY, ERROR] {
        field(header_text(&headers, name).unwrap_or_default().as_bytes());
    }
    field(
        properties
            .message_id()
            .as_ref()
            .map_or("", |m| m.as_str())
            .as_bytes(),
    );
    field(&properties.timestamp().unwrap_or(0).to_be_bytes());
    field(body);
    let digest = hash.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    (uuid::Builder::from_custom_bytes(bytes).into_uuid(), true)
}

/// Whether the message was parked at or after `since_ms` (Unix milliseconds), by the
/// time in its UUIDv7 id; a message with a derived id was parked by an earlier version,
/// so before.
pub fn parked_since(properties: &BasicProperties, since_ms: u64) -> bool {
    let Some(headers) = properties.headers() else {
        return false;
    };
    header_text(headers, PARKED_ID)
        .and_then(|t| Uuid::parse_str(&t).ok())
        .and_then(|id| id.get_timestamp())
        .is_some_and(|ts| {
            let (secs, nanos) = ts.to_unix();
            secs * 1000 + u64::from(nanos / 1_000_000) >= since_ms
        })
}

/// The reason class of a parked message: `x-herald-reason`, else the start of
/// `x-herald-error` (`reason: detail`).
pub fn reason(headers: &FieldTable) -> Option<String> {
    header_text(headers, REASON).or_else(|| {
        header_text(headers, ERROR).and_then(|e| e.split_once(": ").map(|(r, _)| r.to_string()))
    })
}

/// What `herald invalid list` shows of one parked message.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ParkedMessage {
    /// Select it with this id to reingest or purge it.
    pub id: Uuid,
    /// The id is derived from the message (parked by a Herald that gave no ids).
    pub derived_id: bool,
    /// Its place in the queue when listed, from 0.
    pub position: u64,
    /// The reason class (`not_json`, `too_large`, `no_type`, `bad_type`,
    /// `bad_cloudevent`, `too_deep`, `refused_by_database`; `malformed_task` for a
    /// message of the work queue that is no delivery task, which reingest leaves).
    #[schema(required = true)]
    pub reason: Option<String>,
    /// Why, for the operator (`x-herald-error`).
    #[schema(required = true)]
    pub error: Option<String>,
    #[schema(required = true)]
    pub exchange: Option<String>,
    #[schema(required = true)]
    pub routing_key: Option<String>,
    /// AMQP `message_id`.
    #[schema(required = true)]
    pub message_id: Option<String>,
    /// AMQP `type`.
    #[schema(required = true)]
    pub message_type: Option<String>,
    #[schema(required = true)]
    pub content_type: Option<String>,
    /// AMQP `timestamp` (the arrival time when the publisher set none).
    #[schema(required = true)]
    pub timestamp: Option<DateTime<Utc>>,
    /// Times the broker handed it out and had it back (`x-delivery-count`; listings
    /// count too). On RabbitMQ 4.0–4.2 a quorum queue drops a message at its delivery
    /// limit (20 by default) unless a policy lifts it (docs/deployment.md).
    #[schema(required = true)]
    pub delivery_count: Option<i64>,
    /// The message's own headers (Herald's `x-herald-*` and the broker's counts left
    /// out).
    #[schema(value_type = Object)]
    pub headers: BTreeMap<String, Value>,
    /// The body's full size.
    pub body_bytes: usize,
    /// Its first bytes (at most 1 KiB), as UTF-8 with invalid sequences replaced.
    pub body_prefix: String,
    /// The body is longer than `body_prefix`.
    pub body_truncated: bool,
}

impl ParkedMessage {
    pub fn read(properties: &BasicProperties, body: &[u8], position: u64) -> Self {
        let headers = properties.headers().clone().unwrap_or_default();
        let (id, derived_id) = parked_id(properties, body);
        let shown = &body[..body.len().min(BODY_PREFIX_BYTES)];
        Self {
            id,
            derived_id,
            position,
            reason: reason(&headers),
            error: header_text(&headers, ERROR),
            exchange: header_text(&headers, EXCHANGE),
            routing_key: header_text(&headers, ROUTING_KEY),
            message_id: properties.message_id().as_ref().map(|m| m.to_string()),
            message_type: properties.kind().as_ref().map(|m| m.to_string()),
            content_type: properties.content_type().as_ref().map(|m| m.to_string()),
            timestamp: properties
                .timestamp()
                .and_then(|t| DateTime::from_timestamp(i64::try_from(t).ok()?, 0)),
            delivery_count: header_int(&headers, DELIVERY_COUNT),
            headers: headers
                .inner()
                .iter()
                .filter(|(name, _)| {
                    !name.as_str().starts_with("x-herald-")
                        && !BROKER_HEADERS.contains(&name.as_str())
                })
                .map(|(name, value)| (name.to_string(), json(value)))
                .collect(),
            body_bytes: body.len(),
            body_prefix: String::from_utf8_lossy(shown).into_owned(),
            body_truncated: body.len() > shown.len(),
        }
    }
}

/// The properties a reingested copy is published with: the parked copy's, without the
/// parking headers (the origin kept, see [`origin`]).
pub fn reingest_properties(properties: &BasicProperties) -> BasicProperties {
    let mut kept = FieldTable::default();
    if let Some(headers) = properties.headers() {
        for (name, value) in headers.inner() {
            if !PARKING_ONLY.contains(&name.as_str()) {
                kept.insert(name.clone(), value.clone());
            }
        }
    }
    properties.clone().with_headers(kept)
}

/// An AMQP header value as JSON.
fn json(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(n) => (*n).into(),
        AMQPValue::ShortShortUInt(n) => (*n).into(),
        AMQPValue::ShortInt(n) => (*n).into(),
        AMQPValue::ShortUInt(n) => (*n).into(),
        AMQPValue::LongInt(n) => (*n).into(),
        AMQPValue::LongUInt(n) => (*n).into(),
        AMQPValue::LongLongInt(n) => (*n).into(),
        AMQPValue::Float(f) => {
            serde_json::Number::from_f64(f64::from(*f)).map_or(Value::Null, Value::Number)
        }
        AMQPValue::Double(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        AMQPValue::DecimalValue(d) => Value::String(format!("{}e-{}", d.value, d.scale)),
        AMQPValue::ShortString(s) => Value::String(s.as_str().to_string()),
        AMQPValue::LongString(s) => {
            Value::String(String::from_utf8_lossy(s.as_bytes()).into_owned())
        }
        AMQPValue::ByteArray(b) => {
            Value::String(String::from_utf8_lossy(b.as_slice()).into_owned())
        }
        AMQPValue::Timestamp(t) => (*t).into(),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(json).collect()),
        AMQPValue::FieldTable(t) => Value::Object(
            t.inner()
                .iter()
                .map(|(k, v)| (k.to_string(), json(v)))
                .collect(),
        ),
        AMQPValue::Void => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use lapin::types::{FieldArray, ShortString};

    use super::super::headers::text;
    use super::*;

    fn parked(extra: &[(&str, AMQPValue)]) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(ERROR.into(), text("not_json: expected value at line 1"));
        headers.insert(REASON.into(), text("not_json"));
        headers.insert(EXCHANGE.into(), text("erp.events"));
        headers.insert(ROUTING_KEY.into(), text("sales.order.created"));
        headers.insert("x-tenant-id".into(), text("acme"));
        for (name, value) in extra {
            headers.insert(ShortString::from(*name), value.clone());
        }
        BasicProperties::default()
            .with_message_id("m-1".into())
            .with_timestamp(1_700_000_000)
            .with_content_type("application/json".into())
            .with_headers(headers)
    }

    #[test]
    fn the_id_given_at_park_time_is_the_id() {
        let id = Uuid::now_v7();
        let properties = parked(&[(PARKED_ID, text(&id.to_string()))]);
        assert_eq!(parked_id(&properties, b"{"), (id, false));
    }

    #[test]
    fn a_message_parked_without_an_id_gets_one_derived_from_its_content_and_stable() {
        let properties = parked(&[]);
        let (id, derived) = parked_id(&properties, b"{not json");
        assert!(derived);
        assert_eq!(parked_id(&properties, b"{not json").0, id, "stable");
        let cases = [
            (parked(&[]), &b"{not json!"[..]),
            (
                properties.clone().with_message_id("m-2".into()),
                b"{not json",
            ),
            (
                properties.clone().with_timestamp(1_700_000_001),
                b"{not json",
            ),
            (
                parked(&[(ROUTING_KEY, text("sales.order.updated"))]),
                b"{not json",
            ),
            (parked(&[(PARKED_ID, text("not a uuid"))]), b"{not json!"),
        ];
        for (properties, body) in cases {
            assert_ne!(parked_id(&properties, body).0, id);
        }
    }

    #[test]
    fn a_listing_shows_reason_origin_properties_own_headers_and_the_body_prefix() {
        let body = vec![b'x'; 3000];
        let properties = parked(&[(DELIVERY_COUNT, AMQPValue::LongLongInt(2))]);
        let shown = ParkedMessage::read(&properties, &body, 7);
        assert_eq!(shown.delivery_count, Some(2));
        assert_eq!(shown.reason.as_deref(), Some("not_json"));
        assert_eq!(
            shown.error.as_deref(),
            Some("not_json: expected value at line 1")
        );
        assert_eq!(shown.exchange.as_deref(), Some("erp.events"));
        assert_eq!(shown.routing_key.as_deref(), Some("sales.order.created"));
        assert_eq!(shown.message_id.as_deref(), Some("m-1"));
        assert_eq!(shown.content_type.as_deref(), Some("application/json"));
        assert_eq!(shown.timestamp.unwrap().timestamp(), 1_700_000_000);
        assert_eq!(shown.position, 7);
        assert_eq!(
            shown.headers,
            BTreeMap::from([("x-tenant-id".to_string(), Value::from("acme"))]),
            "Herald's own headers and the broker's count are fields, not headers"
        );
        assert_eq!(shown.body_bytes, 3000);
        assert_eq!(shown.body_prefix.len(), BODY_PREFIX_BYTES);
        assert!(shown.body_truncated);
        let short = ParkedMessage::read(&parked(&[]), b"\xff{", 0);
        assert_eq!(short.body_prefix, "\u{fffd}{");
        assert!(!short.body_truncated);
    }

    #[test]
    fn a_message_is_parked_since_a_time_by_its_id() {
        let now_ms = chrono::Utc::now().timestamp_millis() as u64;
        let id = Uuid::now_v7().to_string();
        let fresh = parked(&[(PARKED_ID, text(&id))]);
        assert!(parked_since(&fresh, now_ms - 1_000));
        assert!(!parked_since(&fresh, now_ms + 60_000));
        assert!(!parked_since(&parked(&[]), 0), "a derived id is older");
    }

    #[test]
    fn the_reason_of_an_old_parked_message_is_read_from_its_error() {
        let mut headers = FieldTable::default();
        headers.insert(ERROR.into(), text("too_large: 300000 bytes"));
        assert_eq!(reason(&headers).as_deref(), Some("too_large"));
        assert_eq!(reason(&FieldTable::default()), None);
    }

    #[test]
    fn a_reingested_copy_keeps_its_properties_and_origin_and_loses_the_parking_headers() {
        let properties = parked(&[
            (PARKED_ID, text(&Uuid::now_v7().to_string())),
            (DELIVERY_COUNT, AMQPValue::LongLongInt(3)),
        ]);
        let copy = reingest_properties(&properties);
        let headers = copy.headers().clone().unwrap();
        let names: Vec<&str> = headers.inner().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, [EXCHANGE, ROUTING_KEY, "x-tenant-id"]);
        assert_eq!(copy.message_id(), properties.message_id());
        assert_eq!(copy.timestamp(), properties.timestamp());
        assert_eq!(copy.content_type(), properties.content_type());
    }

    #[test]
    fn header_values_are_shown_as_json() {
        let mut table = FieldTable::default();
        table.insert("n".into(), AMQPValue::LongInt(3));
        let cases = [
            (AMQPValue::Boolean(true), serde_json::json!(true)),
            (AMQPValue::LongLongInt(-4), serde_json::json!(-4)),
            (text("t"), serde_json::json!("t")),
            (AMQPValue::Void, Value::Null),
            (
                AMQPValue::FieldArray(FieldArray::from(vec![text("a")])),
                serde_json::json!(["a"]),
            ),
            (AMQPValue::FieldTable(table), serde_json::json!({"n": 3})),
        ];
        for (value, expected) in cases {
            assert_eq!(json(&value), expected, "{value:?}");
        }
    }
}
