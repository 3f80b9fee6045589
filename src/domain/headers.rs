//! `StaticHeaders`: headers an endpoint's owner asked Herald to send with every request
//! (an `X-Api-Key`, an `Authorization`), checked once at the edge. Their values are
//! secrets: write-only through the API, encrypted at rest, never in a log.

use std::fmt;

use reqwest::header::{HeaderName, HeaderValue};

use super::InvalidValue;

/// At most this many static headers per endpoint.
pub const MAX_HEADERS: usize = 20;
/// Longest header name.
pub const MAX_NAME: usize = 100;
/// Longest header value, in bytes.
pub const MAX_VALUE: usize = 4096;
/// All names and values of an endpoint together, in bytes: receivers and proxies
/// commonly refuse request heads over 8 KiB.
pub const MAX_TOTAL: usize = 6 * 1024;

/// Names Herald sets itself, or that belong to the connection rather than the request:
/// refused, so a static header can never forge a signature or break the framing.
/// `authorization` is allowed: it is the static auth header receivers ask for most.
const RESERVED: &[&str] = &[
    "connection",
    "content-encoding",
    "content-length",
    "content-type",
    "cookie",
    "expect",
    "host",
    "keep-alive",
    "te",
    "trailer",
    "traceparent",
    "tracestate",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "x-event",
    "x-signature",
];
const RESERVED_PREFIXES: &[&str] = &["webhook-", "x-herald-", "proxy-"];

/// Is `name` (lowercase) one a static header may not take?
pub fn is_reserved(name: &str) -> bool {
    RESERVED.contains(&name) || RESERVED_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// One header checked: a valid HTTP name not reserved, a value of visible ASCII
/// characters and inner spaces. The name comes back lowercase.
pub fn parse_header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), InvalidValue> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(InvalidValue(format!(
            "a header name is 1 to {MAX_NAME} characters"
        )));
    }
    let parsed = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
        InvalidValue("not a valid HTTP header name (letters, digits and !#$%&'*+-.^_`|~)".into())
    })?;
    if is_reserved(parsed.as_str()) {
        return Err(InvalidValue(format!(
            "`{name}` is reserved: Herald sets it, or it belongs to the connection \
             (reserved: webhook-*, x-herald-*, proxy-*, {})",
            RESERVED.join(", ")
        )));
    }
    if value.is_empty() || value.len() > MAX_VALUE {
        return Err(InvalidValue(format!(
            "a header value is 1 to {MAX_VALUE} bytes"
        )));
    }
    if !value.bytes().all(|b| (0x20..=0x7e).contains(&b)) || value.trim() != value {
        return Err(InvalidValue(
            "a header value is printable ASCII, without leading or trailing spaces".into(),
        ));
    }
    let mut value =
        HeaderValue::from_str(value).map_err(|_| InvalidValue("invalid header value".into()))?;
    value.set_sensitive(true);
    Ok((parsed, value))
}

/// An endpoint's static headers, names lowercase and unique.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct StaticHeaders(Box<[(HeaderName, HeaderValue)]>);

impl StaticHeaders {
    /// Headers already checked one by one ([`parse_header`]): refuses too many, too
    /// large together, or one name twice (in any case).
    pub fn new(headers: Vec<(HeaderName, HeaderValue)>) -> Result<Self, InvalidValue> {
        if headers.len() > MAX_HEADERS {
            return Err(InvalidValue(format!("at most {MAX_HEADERS} headers")));
        }
        let total: usize = headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len())
            .sum();
        if total > MAX_TOTAL {
            return Err(InvalidValue(format!(
                "names and values together are at most {MAX_TOTAL} bytes"
            )));
        }
        for (n, (name, _)) in headers.iter().enumerate() {
            if headers[..n].iter().any(|(earlier, _)| earlier == name) {
                return Err(InvalidValue(format!("`{name}` is given twice")));
            }
        }
        Ok(Self(headers.into()))
    }

    pub fn iter(&self) -> impl Iterator<Item = &(HeaderName, HeaderValue)> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for StaticHeaders {
    /// Names only: the values are secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(name, _)| name.as_str()))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_values_are_checked() {
        for (name, value, ok) in [
            ("X-Api-Key", "k3y", true),
            ("Authorization", "Bearer abc.def", true),
            ("x-tenant", "a b c", true),
            ("", "v", false),
            ("with space", "v", false),
            ("colon:", "v", false),
            ("X-Api-Key", "", false),
            ("X-Api-Key", " padded", false),
            ("X-Api-Key", "line\r\nInjected: 1", false),
            ("X-Api-Key", "tab\tinside", false),
            ("X-Api-Key", "ünicode", false),
        ] {
            assert_eq!(parse_header(name, value).is_ok(), ok, "{name:?}: {value:?}");
        }
        let (name, _) = parse_header("X-Api-Key", "k").unwrap();
        assert_eq!(name.as_str(), "x-api-key");
    }

    #[test]
    fn herald_s_own_and_connection_headers_are_reserved() {
        for name in [
            "Webhook-Signature",
            "webhook-anything",
            "Content-Type",
            "content-length",
            "Host",
            "User-Agent",
            "X-Signature",
            "x-event",
            "X-Herald-Attempt",
            "traceparent",
            "Connection",
            "Transfer-Encoding",
            "Proxy-Authorization",
        ] {
            let err = parse_header(name, "v").unwrap_err().0;
            assert!(err.contains("reserved"), "{name}: {err}");
        }
        assert!(parse_header("authorization", "Basic dTpw").is_ok());
    }

    #[test]
    fn a_set_is_bounded_and_has_each_name_once() {
        let h = |name: &str| parse_header(name, "v").unwrap();
        assert!(StaticHeaders::new(vec![h("x-a"), h("X-B")]).is_ok());
        let twice = StaticHeaders::new(vec![h("X-A"), h("x-a")]).unwrap_err().0;
        assert!(twice.contains("twice"), "{twice}");
        let many = (0..=MAX_HEADERS).map(|n| h(&format!("x-{n}"))).collect();
        assert!(StaticHeaders::new(many).is_err());
        let big = "v".repeat(MAX_VALUE);
        let large = (0..2)
            .map(|n| parse_header(&format!("x-{n}"), &big).unwrap())
            .collect();
        assert!(StaticHeaders::new(large).is_err());
    }

    #[test]
    fn debug_shows_names_only() {
        let headers =
            StaticHeaders::new(vec![parse_header("X-Api-Key", "hunter2").unwrap()]).unwrap();
        let shown = format!("{headers:?}");
        assert!(
            shown.contains("x-api-key") && !shown.contains("hunter2"),
            "{shown}"
        );
    }
}
