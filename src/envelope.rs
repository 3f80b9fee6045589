//! From an AMQP message to an `Event`, or to the reason it cannot be accepted.
//!
//! Three forms are accepted (contract §4):
//! - CloudEvents structured mode (`application/cloudevents+json`): `id`, `type`,
//!   `source`, `time`, `data`, tenant in the `tenantid` extension;
//! - CloudEvents binary mode (AMQP binding: `cloudEvents:id`, `cloudEvents:type`, …
//!   application properties, `cloudEvents_` also accepted), the body being the data;
//! - plain JSON: the body is the data, id = `message_id`, type = `type` property or the
//!   routing key, tenant = header `x-tenant-id`.
//!
//! A message without an id gets one derived from its content, so a redelivered or
//! republished copy is still recognised as the same event. Pure: no I/O here.

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::domain::{EventType, Subject};

/// Longest event id or tenant id kept.
const MAX_ID_LEN: usize = 255;

/// Deepest nesting of arrays and objects accepted in a body. PostgreSQL's JSON parser
/// recurses per level and refuses a document nested 100,000 deep (`stack depth limit
/// exceeded`); serde_json's own default limit for typed data is 128.
pub const MAX_DEPTH: usize = 128;

/// Most bytes of AMQP headers accepted on a message (names and values).
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Longest CloudEvents `source` kept.
const MAX_SOURCE_LEN: usize = 2048;

/// What the ingest consumer read off one AMQP message, in plain types.
#[derive(Debug, Default, Clone)]
pub struct Inbound<'a> {
    pub body: &'a [u8],
    pub content_type: Option<&'a str>,
    pub message_id: Option<&'a str>,
    pub type_property: Option<&'a str>,
    pub routing_key: &'a str,
    /// AMQP `timestamp` property, Unix seconds.
    pub timestamp: Option<u64>,
    /// String-valued headers (application properties), names as sent.
    pub headers: Vec<(&'a str, String)>,
    /// The size of every header the message carries, encoded.
    pub header_bytes: usize,
}

impl Inbound<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// A CloudEvents binary-mode attribute: `cloudEvents:NAME` or `cloudEvents_NAME`.
    fn ce_attribute(&self, name: &str) -> Option<&str> {
        self.header(&format!("cloudEvents:{name}"))
            .or_else(|| self.header(&format!("cloudEvents_{name}")))
    }
}

/// An accepted event, ready to be recorded and fanned out.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: String,
    pub event_type: EventType,
    pub tenant_id: Option<String>,
    pub source: Option<String>,
    pub occurred_at: DateTime<Utc>,
    /// The publisher's data, byte for byte.
    pub data: Box<RawValue>,
    /// A structured-mode CloudEvent gave a `partitionkey` in its body only: the broker
    /// cannot route on it, so the event is delivered unordered (docs/ordering.md).
    pub key_in_body_only: bool,
}

/// Why a message was parked in `<prefix>.invalid`; `as_str` is the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParkReason {
    NotJson,
    TooLarge,
    NoType,
    BadType,
    BadCloudEvent,
    /// Arrays and objects nested deeper than [`MAX_DEPTH`].
    TooDeep,
    /// Accepted here, but PostgreSQL refused to store it (a zero byte in a text
    /// field, say): found by the ingest role, which parks it and records the rest.
    RefusedByDatabase,
}

impl ParkReason {
    pub const ALL: [ParkReason; 7] = [
        ParkReason::NotJson,
        ParkReason::TooLarge,
        ParkReason::NoType,
        ParkReason::BadType,
        ParkReason::BadCloudEvent,
        ParkReason::TooDeep,
        ParkReason::RefusedByDatabase,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ParkReason::NotJson => "not_json",
            ParkReason::TooLarge => "too_large",
            ParkReason::NoType => "no_type",
            ParkReason::BadType => "bad_type",
            ParkReason::BadCloudEvent => "bad_cloudevent",
            ParkReason::TooDeep => "too_deep",
            ParkReason::RefusedByDatabase => "refused_by_database",
        }
    }
}

/// A refused message: the reason class and a sentence for the `x-herald-error` header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {detail}", reason.as_str())]
pub struct Rejection {
    pub reason: ParkReason,
    pub detail: String,
}

fn reject(reason: ParkReason, detail: impl Into<String>) -> Rejection {
    Rejection {
        reason,
        detail: detail.into(),
    }
}

#[derive(Deserialize)]
struct StructuredCloudEvent<'a> {
    #[serde(borrow)]
    id: Option<&'a str>,
    #[serde(rename = "type")]
    kind: Option<String>,
    source: Option<String>,
    time: Option<String>,
    tenantid: Option<String>,
    partitionkey: Option<serde_json::Value>,
    data: Option<Box<RawValue>>,
}

/// Accepts or refuses one message.
pub fn parse(
    msg: &Inbound<'_>,
    max_body_bytes: usize,
    received_at: DateTime<Utc>,
) -> Result<Event, Rejection> {
    if msg.body.len() > max_body_bytes {
        return Err(reject(
            ParkReason::TooLarge,
            format!(
                "body is {} bytes, the limit is {max_body_bytes}",
                msg.body.len()
            ),
        ));
    }
    if msg.header_bytes > MAX_HEADER_BYTES {
        return Err(reject(
            ParkReason::TooLarge,
            format!(
                "headers are {} bytes, the limit is {MAX_HEADER_BYTES}",
                msg.header_bytes
            ),
        ));
    }
    if let Some(depth) = nesting_beyond(msg.body, MAX_DEPTH) {
        return Err(reject(
            ParkReason::TooDeep,
            format!("JSON nested at least {depth} levels deep, the limit is {MAX_DEPTH}"),
        ));
    }
    let structured = msg
        .content_type
        .is_some_and(|ct| ct.trim().starts_with("application/cloudevents+json"));
    if structured {
        parse_structured(msg, received_at)
    } else {
        parse_plain(msg, received_at)
    }
}

fn parse_structured(msg: &Inbound<'_>, received_at: DateTime<Utc>) -> Result<Event, Rejection> {
    let ce: StructuredCloudEvent = serde_json::from_slice(msg.body).map_err(|e| {
        if e.is_data() {
            reject(ParkReason::BadCloudEvent, format!("CloudEvent: {e}"))
        } else {
            reject(ParkReason::NotJson, format!("body is not JSON: {e}"))
        }
    })?;
    let id = ce
        .id
        .filter(|id| !id.is_empty())
        .ok_or_else(|| reject(ParkReason::BadCloudEvent, "CloudEvent has no `id`"))?;
    let kind = ce
        .kind
        .filter(|k| !k.is_empty())
        .ok_or_else(|| reject(ParkReason::NoType, "CloudEvent has no `type`"))?;
    let event_type = kind
        .parse::<EventType>()
        .map_err(|e| reject(ParkReason::BadType, e.0))?;
    Ok(Event {
        id: checked_id(id)?,
        event_type,
        tenant_id: checked_tenant(ce.tenantid)?,
        source: checked_source(ce.source)?,
        occurred_at: event_time(ce.time.as_deref(), msg.timestamp, received_at),
        data: ce.data.unwrap_or_else(null_data),
        key_in_body_only: ce.partitionkey.is_some() && !matches!(ordering_key(msg), Ok(Some(_))),
    })
}

fn parse_plain(msg: &Inbound<'_>, received_at: DateTime<Utc>) -> Result<Event, Rejection> {
    let data: Box<RawValue> = serde_json::from_slice(msg.body)
        .map_err(|e| reject(ParkReason::NotJson, format!("body is not JSON: {e}")))?;
    let binary_ce = msg.ce_attribute("type").is_some();
    let kind = msg
        .ce_attribute("type")
        .or(msg.type_property)
        .filter(|t| !t.is_empty())
        .or(Some(msg.routing_key).filter(|k| !k.is_empty()))
        .ok_or_else(|| {
            reject(
                ParkReason::NoType,
                "no `type` property and no routing key to take the event type from",
            )
        })?;
    let event_type = kind
        .parse::<EventType>()
        .map_err(|e| reject(ParkReason::BadType, e.0))?;
    let tenant_id = msg
        .ce_attribute("tenantid")
        .or_else(|| msg.header("x-tenant-id"))
        .map(String::from);
    let tenant_id = checked_tenant(tenant_id)?;
    let explicit_id = msg
        .ce_attribute("id")
        .or(msg.message_id)
        .filter(|id| !id.is_empty());
    let id = match explicit_id {
        Some(id) => checked_id(id)?,
        None => derived_id(&event_type, tenant_id.as_deref(), msg.body),
    };
    let time = if binary_ce {
        msg.ce_attribute("time")
    } else {
        None
    };
    Ok(Event {
        id,
        event_type,
        tenant_id,
        source: checked_source(msg.ce_attribute("source").map(String::from))?,
        occurred_at: event_time(time, msg.timestamp, received_at),
        data,
        key_in_body_only: false,
    })
}

/// The AMQP header that carries an event's ordering key (docs/ordering.md); the
/// CloudEvents binary-mode attribute `partitionkey` (`cloudEvents:partitionkey`) is
/// read as well. Both are headers, so the broker routes keyed events to
/// `<prefix>.ordered` (see [`crate::topology`]).
pub const ORDERING_KEY_HEADER: &str = "x-ordering-key";

/// The headers the broker looks for to send an event to `<prefix>.ordered`.
pub const ORDERING_KEY_HEADERS: [&str; 3] = [
    ORDERING_KEY_HEADER,
    "cloudEvents:partitionkey",
    "cloudEvents_partitionkey",
];

/// The event's ordering key, if it has one: `x-ordering-key`, else the CloudEvents
/// `partitionkey` attribute. An empty key is no key; a key longer than 255 bytes or
/// with control characters is refused.
pub fn ordering_key(msg: &Inbound<'_>) -> Result<Option<String>, Rejection> {
    let key = msg
        .header(ORDERING_KEY_HEADER)
        .or_else(|| msg.ce_attribute("partitionkey"))
        .filter(|k| !k.is_empty());
    match key {
        Some(k) if k.len() > MAX_ID_LEN || k.chars().any(char::is_control) => Err(reject(
            ParkReason::BadCloudEvent,
            format!("ordering key must be at most {MAX_ID_LEN} printable characters"),
        )),
        other => Ok(other.map(String::from)),
    }
}

fn null_data() -> Box<RawValue> {
    RawValue::from_string("null".into()).expect("null is JSON")
}

fn checked_id(id: &str) -> Result<String, Rejection> {
    if id.len() > MAX_ID_LEN || id.chars().any(char::is_control) {
        return Err(reject(
            ParkReason::BadCloudEvent,
            format!("event id must be at most {MAX_ID_LEN} printable characters"),
        ));
    }
    Ok(id.to_string())
}

fn checked_tenant(tenant: Option<String>) -> Result<Option<String>, Rejection> {
    match tenant {
        Some(t) if t.is_empty() => Ok(None),
        Some(t) if t.len() > MAX_ID_LEN => Err(reject(
            ParkReason::BadType,
            format!("tenant id is longer than {MAX_ID_LEN} bytes"),
        )),
        other => Ok(other),
    }
}

fn checked_source(source: Option<String>) -> Result<Option<String>, Rejection> {
    match source {
        Some(s) if s.len() > MAX_SOURCE_LEN => Err(reject(
            ParkReason::BadCloudEvent,
            format!("source is longer than {MAX_SOURCE_LEN} bytes"),
        )),
        other => Ok(other),
    }
}

/// `Some(depth)` as soon as arrays and objects in `json` nest deeper than `limit`
/// (brackets inside strings do not count). One pass over the bytes, no allocation;
/// malformed JSON is left for the parser to refuse.
fn nesting_beyond(json: &[u8], limit: usize) -> Option<usize> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &byte in json {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return Some(depth);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// The event's own time if it gave one, else the AMQP timestamp, else arrival.
fn event_time(
    time: Option<&str>,
    amqp_timestamp: Option<u64>,
    received_at: DateTime<Utc>,
) -> DateTime<Utc> {
    time.and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
        .or_else(|| {
            amqp_timestamp
                .and_then(|s| i64::try_from(s).ok())
                .and_then(|s| Utc.timestamp_opt(s, 0).single())
        })
        .unwrap_or(received_at)
}

/// A deterministic id for a message that carries none: the same content, the same id.
pub fn derived_id(event_type: &EventType, tenant: Option<&str>, body: &[u8]) -> String {
    let mut hash = Sha256::new();
    hash.update(event_type.as_str());
    hash.update([0]);
    hash.update(tenant.unwrap_or(""));
    hash.update([0]);
    hash.update(body);
    let digest = hash.finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

#[derive(Serialize)]
struct WebhookBody<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    timestamp: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant_id: Option<&'a str>,
    data: &'a RawValue,
}

impl Event {
    /// The event as payload filters read it (the webhook body's fields); its data is
    /// parsed only if a filter reads it.
    pub fn subject(&self) -> Subject<'_> {
        Subject::new(
            &self.id,
            self.event_type.as_str(),
            self.tenant_id.as_deref(),
            &self.data,
        )
    }

    /// The body POSTed to every endpoint (contract §6); `data` is copied unchanged.
    pub fn webhook_body(&self) -> Vec<u8> {
        serde_json::to_vec(&WebhookBody {
            id: &self.id,
            kind: self.event_type.as_str(),
            timestamp: self
                .occurred_at
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            tenant_id: self.tenant_id.as_deref(),
            data: &self.data,
        })
        .expect("serialising strings and raw JSON cannot fail")
    }
}

/// The event type of a webhook body Herald made ([`Event::webhook_body`]), read from
/// its start (`{"id":"…","type":"…"`) without parsing the rest: the `X-Event` header of
/// legacy signatures costs a scan of the id, not of the data. `None` for any other body.
pub fn webhook_event_type(body: &[u8]) -> Option<&str> {
    let rest = body.strip_prefix(br#"{"id":""#)?;
    // The id is a JSON string: it ends at the first quote not escaped.
    let mut i = 0;
    while i < rest.len() {
        match rest[i] {
            b'\\' => i += 2,
            b'"' => break,
            _ => i += 1,
        }
    }
    let rest = rest.get(i..)?.strip_prefix(br#"","type":""#)?;
    let end = rest.iter().position(|&b| b == b'"')?;
    let kind = &rest[..end];
    // Event types are letters, digits, `_`, `-` and dots: never escaped.
    if kind.is_empty() || kind.contains(&b'\\') {
        return None;
    }
    std::str::from_utf8(kind).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ordering_key_comes_from_its_header_or_the_cloudevents_partitionkey() {
        let with = |headers: Vec<(&'static str, &str)>| Inbound {
            headers: headers
                .into_iter()
                .map(|(k, v)| (k, v.to_string()))
                .collect(),
            ..Default::default()
        };
        type Case = (Vec<(&'static str, &'static str)>, Option<&'static str>);
        let cases: Vec<Case> = vec![
            (vec![], None),
            (vec![("x-ordering-key", "order-1")], Some("order-1")),
            (vec![("X-Ordering-Key", "order-1")], Some("order-1")),
            (
                vec![("cloudEvents:partitionkey", "order-2")],
                Some("order-2"),
            ),
            (
                vec![("cloudEvents_partitionkey", "order-3")],
                Some("order-3"),
            ),
            (
                vec![("cloudEvents:partitionkey", "ce"), ("x-ordering-key", "x")],
                Some("x"),
            ),
            (vec![("x-ordering-key", "")], None),
        ];
        for (headers, expected) in cases {
            let msg = with(headers.clone());
            assert_eq!(
                ordering_key(&msg).unwrap().as_deref(),
                expected,
                "{headers:?}"
            );
        }
        let long = "k".repeat(256);
        assert!(ordering_key(&with(vec![("x-ordering-key", &long)])).is_err());
        assert!(ordering_key(&with(vec![("x-ordering-key", "a\nb")])).is_err());
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap()
    }

    fn plain<'a>(body: &'a [u8], routing_key: &'a str) -> Inbound<'a> {
        Inbound {
            body,
            routing_key,
            ..Default::default()
        }
    }

    #[test]
    fn plain_json_takes_id_type_and_tenant_from_properties() {
        let mut msg = plain(br#"{"order": 42,  "total": 1.50}"#, "sales.order.created");
        msg.message_id = Some("evt-1");
        msg.headers = vec![("x-tenant-id", "acme".into())];
        let event = parse(&msg, 1024, now()).unwrap();
        assert_eq!(event.id, "evt-1");
        assert_eq!(event.event_type.as_str(), "sales.order.created");
        assert_eq!(event.tenant_id.as_deref(), Some("acme"));
        assert_eq!(event.data.get(), r#"{"order": 42,  "total": 1.50}"#);
        assert_eq!(event.occurred_at, now());
    }

    #[test]
    fn the_type_property_wins_over_the_routing_key() {
        let mut msg = plain(b"{}", "sales.order.created");
        msg.type_property = Some("sales.order.amended");
        assert_eq!(
            parse(&msg, 1024, now()).unwrap().event_type.as_str(),
            "sales.order.amended"
        );
    }

    #[test]
    fn a_message_without_id_gets_the_same_derived_id_every_time() {
        let a = parse(&plain(br#"{"x":1}"#, "a.b"), 1024, now()).unwrap();
        let b = parse(&plain(br#"{"x":1}"#, "a.b"), 1024, now()).unwrap();
        let c = parse(&plain(br#"{"x":2}"#, "a.b"), 1024, now()).unwrap();
        assert_eq!(a.id, b.id);
        assert_ne!(a.id, c.id);
        assert!(a.id.starts_with("sha256:"));
    }

    #[test]
    fn structured_cloudevents_are_unwrapped() {
        let body = br#"{"specversion":"1.0","id":"ce-9","type":"billing.invoice.paid","source":"/billing","time":"2026-01-02T03:04:05Z","tenantid":"t1","data":{"amount":10}}"#;
        let mut msg = plain(body, "ignored.key");
        msg.content_type = Some("application/cloudevents+json; charset=utf-8");
        let event = parse(&msg, 4096, now()).unwrap();
        assert_eq!(event.id, "ce-9");
        assert_eq!(event.event_type.as_str(), "billing.invoice.paid");
        assert_eq!(event.tenant_id.as_deref(), Some("t1"));
        assert_eq!(event.source.as_deref(), Some("/billing"));
        assert_eq!(event.data.get(), r#"{"amount":10}"#);
        assert_eq!(event.occurred_at.to_rfc3339(), "2026-01-02T03:04:05+00:00");
    }

    #[test]
    fn binary_cloudevents_attributes_come_from_headers() {
        let mut msg = plain(br#"[1,2]"#, "x.y");
        msg.headers = vec![
            ("cloudEvents:id", "b-1".into()),
            ("cloudEvents:type", "product.low_stock".into()),
            ("cloudEvents:source", "/inventory".into()),
        ];
        let event = parse(&msg, 1024, now()).unwrap();
        assert_eq!(
            (event.id.as_str(), event.event_type.as_str()),
            ("b-1", "product.low_stock")
        );
        assert_eq!(event.source.as_deref(), Some("/inventory"));
    }

    #[test]
    fn refusals_say_why() {
        let cases: Vec<(Inbound, ParkReason)> = vec![
            (plain(b"not json", "a.b"), ParkReason::NotJson),
            (plain(&[b' '; 5000], "a.b"), ParkReason::TooLarge),
            (plain(b"{}", ""), ParkReason::NoType),
            (plain(b"{}", "a..b"), ParkReason::BadType),
            (
                Inbound {
                    content_type: Some("application/cloudevents+json"),
                    ..plain(br#"{"type":"a.b"}"#, "a.b")
                },
                ParkReason::BadCloudEvent,
            ),
            (
                Inbound {
                    content_type: Some("application/cloudevents+json"),
                    ..plain(br#"{"id":"1"}"#, "a.b")
                },
                ParkReason::NoType,
            ),
            (plain(&[b'['; MAX_DEPTH + 1], "a.b"), ParkReason::TooDeep),
            (
                Inbound {
                    header_bytes: MAX_HEADER_BYTES + 1,
                    ..plain(b"{}", "a.b")
                },
                ParkReason::TooLarge,
            ),
            (
                Inbound {
                    content_type: Some("application/cloudevents+json"),
                    ..plain(
                        format!(
                            r#"{{"id":"1","type":"a.b","source":"{}"}}"#,
                            "s".repeat(3000)
                        )
                        .into_bytes()
                        .leak(),
                        "a.b",
                    )
                },
                ParkReason::BadCloudEvent,
            ),
        ];
        for (msg, reason) in cases {
            let err = parse(&msg, 4096, now()).unwrap_err();
            assert_eq!(err.reason, reason, "{err}");
            assert!(!err.detail.is_empty());
        }
    }

    #[test]
    fn nesting_is_counted_outside_strings_only() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        for (json, limit, beyond) in [
            (deep(3), 3, None),
            (deep(4), 3, Some(4)),
            (r#"{"a":{"b":[1,{"c":2}]}}"#.to_string(), 4, None),
            (r#"{"a":{"b":[1,{"c":2}]}}"#.to_string(), 3, Some(4)),
            (r#"["[[[[[[", "\"[[[[[["]"#.to_string(), 1, None),
            (r#"[[],[],[],[]]"#.to_string(), 2, None),
        ] {
            assert_eq!(nesting_beyond(json.as_bytes(), limit), beyond, "{json}");
        }
        let body = deep(MAX_DEPTH);
        let mut msg = plain(body.as_bytes(), "a.b");
        msg.message_id = Some("deep-but-fine");
        assert!(parse(&msg, 4096, now()).is_ok());
    }

    #[test]
    fn the_webhook_body_wraps_data_unchanged() {
        let mut msg = plain(br#"{"b": 1, "a": [true]}"#, "sales.order.created");
        msg.message_id = Some("evt-7");
        let body = parse(&msg, 1024, now()).unwrap().webhook_body();
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"id":"evt-7","type":"sales.order.created","timestamp":"2026-11-23T12:00:00.000Z","data":{"b": 1, "a": [true]}}"#
        );
    }

    #[test]
    fn the_event_type_is_read_from_the_start_of_a_webhook_body() {
        for id in ["evt-7", r#"quote " and \\ backslash"#, "ünï"] {
            let mut msg = plain(br#"{"a":"\"type\":\"x.y\""}"#, "sales.order.created");
            msg.message_id = Some(id);
            let body = parse(&msg, 1024, now()).unwrap().webhook_body();
            assert_eq!(
                webhook_event_type(&body),
                Some("sales.order.created"),
                "{id}"
            );
        }
        for other in [
            &b""[..],
            b"{}",
            br#"{"type":"a.b","id":"1"}"#,
            br#"{"id":"1","type":""}"#,
            br#"{"id":"1\","type":"a.b"}"#,
            br#"{"id":"1","type":"a.b"#,
        ] {
            assert_eq!(webhook_event_type(other), None, "{other:?}");
        }
    }
}
