//! The request headers of an attempt as they are recorded and shown (issue 14): every
//! header Herald sent, by name, with the secrets taken out.
//!
//! - A value marked sensitive — every static header of an endpoint is
//!   ([`crate::domain::parse_header`]), `X-Api-Key`, `Authorization`… — is shown as
//!   [`REDACTED`].
//! - A signature (`webhook-signature`, `x-signature`) keeps its scheme's prefix, so a
//!   reader sees which signatures went out: `v1,[redacted] v1,[redacted]` while a
//!   secret rotates, `sha256=[redacted]`.
//! - Every other value (`webhook-id`, `webhook-timestamp`, `x-herald-attempt`,
//!   `traceparent`, `x-event`…) as sent, and the two the client adds to every request
//!   ([`CLIENT_HEADERS`]: `content-type`, `user-agent`). Transport headers (`host`,
//!   `content-length`, `accept`) are not shown.
//!
//! Per attempt: one JSON text, written once from the request's `HeaderMap` before it
//! is sent; only a signature's redacted form is a further (small) allocation.

use std::borrow::Cow;

use reqwest::header::{HeaderMap, HeaderValue};
use serde::ser::{Serialize, SerializeMap, Serializer};

use super::client::USER_AGENT;
use crate::signing::{WEBHOOK_SIGNATURE, X_SIGNATURE};

/// What a secret value is shown as.
pub const REDACTED: &str = "[redacted]";

/// The headers [`super::client::WebhookClient`] sets on every request, past the
/// `HeaderMap` it is given.
pub const CLIENT_HEADERS: [(&str, &str); 2] = [
    ("content-type", "application/json"),
    ("user-agent", USER_AGENT),
];

/// The request headers `headers` and [`CLIENT_HEADERS`] as a JSON object of name → redacted value.
pub fn redacted_json(headers: &HeaderMap) -> String {
    serde_json::to_string(&Redacted(headers)).expect("a map of strings serialises")
}

/// The value of header `name` as it is shown.
pub fn redacted_value<'a>(name: &str, value: &'a HeaderValue) -> Cow<'a, str> {
    if value.is_sensitive() {
        return Cow::Borrowed(REDACTED);
    }
    let Ok(text) = value.to_str() else {
        // Herald's own values are ASCII; anything else is not shown.
        return Cow::Borrowed(REDACTED);
    };
    if name == WEBHOOK_SIGNATURE || name == X_SIGNATURE {
        return Cow::Owned(redacted_signatures(text));
    }
    Cow::Borrowed(text)
}

/// Space-separated signatures, each cut after its scheme (`v1,`, `sha256=`).
fn redacted_signatures(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(64));
    for (n, signature) in text.split(' ').filter(|s| !s.is_empty()).enumerate() {
        if n > 0 {
            out.push(' ');
        }
        if let Some(at) = signature.find([',', '=']) {
            out.push_str(&signature[..=at]);
        }
        out.push_str(REDACTED);
    }
    if out.is_empty() {
        out.push_str(REDACTED);
    }
    out
}

/// Serialises the headers as a map without collecting them first.
struct Redacted<'a>(&'a HeaderMap);

impl Serialize for Redacted<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for (name, value) in self.0 {
            map.serialize_entry(name.as_str(), &redacted_value(name.as_str(), value))?;
        }
        for (name, value) in CLIENT_HEADERS {
            if !self.0.contains_key(name) {
                map.serialize_entry(name, value)?;
            }
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::parse_header;

    #[test]
    fn secrets_are_redacted_and_everything_else_is_kept_as_sent() {
        let plain = |v: &str| HeaderValue::from_str(v).unwrap();
        let (_, api_key) = parse_header("X-Api-Key", "s3cret").unwrap();
        let mut raw = HeaderValue::from_bytes(b"caf\xe9").unwrap();
        raw.set_sensitive(false);
        for (name, value, shown) in [
            ("x-api-key", api_key, REDACTED),
            (
                "webhook-signature",
                plain("v1,c2lnbmF0dXJl"),
                "v1,[redacted]",
            ),
            (
                "webhook-signature",
                plain("v1,bmV3 v1,b2xk=="),
                "v1,[redacted] v1,[redacted]",
            ),
            ("x-signature", plain("sha256=00ff"), "sha256=[redacted]"),
            ("x-signature", plain("no-scheme"), REDACTED),
            ("webhook-signature", plain(""), REDACTED),
            ("webhook-id", plain("evt_1"), "evt_1"),
            ("webhook-timestamp", plain("1700000000"), "1700000000"),
            ("x-herald-attempt", plain("2"), "2"),
            (
                "x-event",
                plain("sales.order.created"),
                "sales.order.created",
            ),
            (
                "content-type",
                plain("application/json"),
                "application/json",
            ),
            (
                "traceparent",
                plain("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("x-odd", raw, REDACTED),
        ] {
            assert_eq!(redacted_value(name, &value), shown, "{name}: {value:?}");
        }
    }

    #[test]
    fn the_json_names_every_header_sent_and_holds_no_secret() {
        let mut headers = HeaderMap::new();
        let (name, value) = parse_header("Authorization", "Bearer t0ken").unwrap();
        headers.insert(name, value);
        headers.insert("webhook-id", HeaderValue::from_static("evt_\"1\""));
        headers.insert("webhook-signature", HeaderValue::from_static("v1,c2VjcmV0"));
        let json: serde_json::Value = serde_json::from_str(&redacted_json(&headers)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "authorization": REDACTED,
                "webhook-id": "evt_\"1\"",
                "webhook-signature": "v1,[redacted]",
                "content-type": "application/json",
                "user-agent": USER_AGENT,
            })
        );
    }
}
