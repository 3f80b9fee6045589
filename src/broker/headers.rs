//! AMQP header values in plain types: reading them as text or numbers, writing text,
//! the error headers of a parked message, and the size a header table takes.

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;

/// A header value to write as text.
pub fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// A header value as text, whatever string-ish or numeric AMQP type it came in.
pub fn header_text(headers: &FieldTable, name: &str) -> Option<String> {
    let key: ShortString = name.into();
    match headers.inner().get(&key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        AMQPValue::LongLongInt(n) => Some(n.to_string()),
        AMQPValue::LongInt(n) => Some(n.to_string()),
        AMQPValue::ShortInt(n) => Some(n.to_string()),
        AMQPValue::LongUInt(n) => Some(n.to_string()),
        AMQPValue::ShortUInt(n) => Some(n.to_string()),
        AMQPValue::ByteArray(b) => Some(String::from_utf8_lossy(b.as_slice()).into_owned()),
        _ => None,
    }
}

/// A header value as an integer.
pub fn header_int(headers: &FieldTable, name: &str) -> Option<i64> {
    header_text(headers, name)?.parse().ok()
}

/// A message's headers plus `x-herald-error` ("reason: detail") and `x-herald-reason`.
pub fn with_error(headers: Option<FieldTable>, reason: &str, detail: &str) -> FieldTable {
    let mut headers = headers.unwrap_or_default();
    headers.insert(
        "x-herald-error".into(),
        text(&format!("{reason}: {detail}")),
    );
    headers.insert("x-herald-reason".into(), text(reason));
    headers
}

/// About the bytes a header table takes on the wire (names, values, type tags and
/// lengths; nested tables and arrays counted through).
pub fn encoded_size(headers: &FieldTable) -> usize {
    headers
        .inner()
        .iter()
        .map(|(name, value)| 1 + name.as_str().len() + value_size(value))
        .sum()
}

fn value_size(value: &AMQPValue) -> usize {
    1 + match value {
        AMQPValue::LongString(s) => 4 + s.as_bytes().len(),
        AMQPValue::ShortString(s) => 1 + s.as_str().len(),
        AMQPValue::ByteArray(b) => 4 + b.as_slice().len(),
        AMQPValue::FieldTable(t) => 4 + encoded_size(t),
        AMQPValue::FieldArray(a) => 4 + a.as_slice().iter().map(value_size).sum::<usize>(),
        _ => 8,
    }
}

/// Unix seconds at which a message entered its current queue, if it says: the time the
/// broker dead-lettered it (a retry back from a delay queue, `x-death`), else its AMQP
/// `timestamp`.
pub fn entered_queue_at(properties: &BasicProperties) -> Option<i64> {
    let dead_lettered = properties
        .headers()
        .as_ref()
        .and_then(|h: &FieldTable| h.inner().get("x-death"))
        .and_then(|v| match v {
            AMQPValue::FieldArray(deaths) => deaths.as_slice().first().cloned(),
            _ => None,
        })
        .and_then(|death| match death {
            AMQPValue::FieldTable(t) => match t.inner().get("time") {
                Some(AMQPValue::Timestamp(ts)) => i64::try_from(*ts).ok(),
                _ => None,
            },
            _ => None,
        });
    dead_lettered.or_else(|| properties.timestamp().and_then(|t| i64::try_from(t).ok()))
}

#[cfg(test)]
mod tests {
    use lapin::types::FieldArray;

    use super::*;

    #[test]
    fn a_message_entered_its_queue_when_dead_lettered_there_else_when_published() {
        let published = BasicProperties::default().with_timestamp(1_700_000_000);
        assert_eq!(entered_queue_at(&published), Some(1_700_000_000));
        let mut death = FieldTable::default();
        death.insert("time".into(), AMQPValue::Timestamp(1_700_000_060));
        let mut headers = FieldTable::default();
        headers.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
        );
        let retried = published.with_headers(headers);
        assert_eq!(entered_queue_at(&retried), Some(1_700_000_060));
        assert_eq!(entered_queue_at(&BasicProperties::default()), None);
    }

    #[test]
    fn header_values_read_as_text_and_numbers_whatever_their_amqp_type() {
        let mut headers = FieldTable::default();
        headers.insert("a".into(), text("x"));
        headers.insert("n".into(), AMQPValue::LongInt(-7));
        headers.insert("s".into(), AMQPValue::ShortString("9".into()));
        assert_eq!(header_text(&headers, "a").as_deref(), Some("x"));
        assert_eq!(header_int(&headers, "n"), Some(-7));
        assert_eq!(header_int(&headers, "s"), Some(9));
        assert_eq!(header_text(&headers, "missing"), None);
    }

    #[test]
    fn the_size_of_a_header_table_counts_names_and_values() {
        let mut headers = FieldTable::default();
        assert_eq!(encoded_size(&headers), 0);
        headers.insert("k".into(), text(&"v".repeat(1000)));
        let one = encoded_size(&headers);
        assert!((1000..1020).contains(&one), "{one}");
        let mut nested = FieldTable::default();
        nested.insert("inner".into(), AMQPValue::FieldTable(headers.clone()));
        assert!(encoded_size(&nested) > one);
    }
}
