//! `EventType`: a dot-separated event name such as `sales.order.created`.

use std::fmt;
use std::str::FromStr;

use super::InvalidValue;

/// Longest routing key AMQP allows.
const MAX_LEN: usize = 255;

/// A non-empty, dot-separated name whose words are letters, digits, `_` or `-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventType(String);

impl EventType {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

pub(crate) fn valid_word(word: &str) -> bool {
    !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl FromStr for EventType {
    type Err = InvalidValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(InvalidValue("event type is empty".into()));
        }
        if s.len() > MAX_LEN {
            return Err(InvalidValue(format!(
                "event type is longer than {MAX_LEN} bytes"
            )));
        }
        if !s.split('.').all(valid_word) {
            return Err(InvalidValue(format!(
                "event type `{s}` must be dot-separated words of letters, digits, '_' or '-'"
            )));
        }
        Ok(Self(s.to_string()))
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dotted_words_and_refuses_empty_words_or_wildcards() {
        for ok in [
            "sales.order.created",
            "product.low_stock",
            "a",
            "billing.v2-invoice.paid",
        ] {
            assert!(ok.parse::<EventType>().is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "sales..created",
            "sales.",
            ".sales",
            "sales.*",
            "sales.#",
            "a b",
        ] {
            assert!(bad.parse::<EventType>().is_err(), "{bad:?}");
        }
    }
}
