//! Payload filters: a condition on an event's content that an endpoint may carry
//! besides its type patterns (docs/filters.md). A JSON document in the style of
//! MongoDB queries — `{"data.amount": {"$gte": 1000}, "data.currency": {"$in":
//! ["EUR", "USD"]}}` — compiled once, at the edge, into a small tree.
//!
//! Safe by construction: no code, no regular expressions, no recursion into the event
//! beyond a path's segments. Every limit below bounds the tree, so one evaluation costs
//! at most [`MAX_CONDITIONS`] × ([`MAX_PATH_SEGMENTS`] + [`MAX_SET`]) steps. The event's
//! data is parsed at most once per event, and only when a filter reads it
//! ([`Subject`]). Pure: no I/O here.

use std::cell::OnceCell;
use std::cmp::Ordering;

use serde_json::value::RawValue;
use serde_json::{Number, Value};

/// Longest filter accepted, as compact JSON.
pub const MAX_FILTER_BYTES: usize = 4096;
/// Deepest nesting of `$and` / `$or`.
pub const MAX_NESTING: usize = 4;
/// Most conditions (one per operator, or per plain value) in one filter.
pub const MAX_CONDITIONS: usize = 32;
/// Most values in one `$in` / `$nin`.
pub const MAX_SET: usize = 64;
/// Most segments in one path (`data.customer.address.country` has four).
pub const MAX_PATH_SEGMENTS: usize = 10;
/// Longest path, in bytes.
pub const MAX_PATH_BYTES: usize = 256;

const OPERATORS: &str = "$eq, $ne, $in, $nin, $exists, $gt, $gte, $lt, $lte";
const ROOTS: &str = "`data.…` (the event's data), `type`, `id` or `tenant_id`";

/// A compiled payload filter; equal to another when written the same way.
#[derive(Debug, Clone)]
pub struct PayloadFilter {
    /// As written (keys sorted, the way PostgreSQL's `jsonb` keeps it too).
    source: Value,
    root: Node,
}

impl PartialEq for PayloadFilter {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for PayloadFilter {}

/// Why a filter was refused: where (the clause, e.g. `$or[1].data.amount.$gte`) and
/// what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", if at.is_empty() { String::new() } else { format!("`{at}`: ") })]
pub struct FilterError {
    pub at: String,
    pub message: String,
}

fn refuse<T>(at: &str, message: impl Into<String>) -> Result<T, FilterError> {
    Err(FilterError {
        at: at.to_string(),
        message: message.into(),
    })
}

#[derive(Debug, Clone)]
enum Node {
    All(Box<[Node]>),
    Any(Box<[Node]>),
    Field { path: Path, test: Test },
}

/// Where a condition looks: one of the webhook body's fields, and within `data`, keys
/// and array positions.
#[derive(Debug, Clone)]
enum Path {
    Id,
    Type,
    TenantId,
    Data(Box<[Segment]>),
}

#[derive(Debug, Clone)]
struct Segment {
    key: Box<str>,
    /// The key as a position, for arrays (`data.lines.0.sku`).
    index: Option<usize>,
}

#[derive(Debug, Clone)]
enum Test {
    /// A scalar (string, number, boolean, null); numbers equal by value (`1 == 1.0`).
    Eq(Value),
    /// Holds when the field is missing or differs.
    Ne(Value),
    In(Box<[Value]>),
    /// Holds when the field is missing or is none of the values.
    Nin(Box<[Value]>),
    Exists(bool),
    /// Against a number or a string; a field of another type never compares.
    Compare(Comparison, Value),
}

#[derive(Debug, Clone, Copy)]
enum Comparison {
    Gt,
    Gte,
    Lt,
    Lte,
}

impl Comparison {
    fn accepts(self, ordering: Ordering) -> bool {
        match self {
            Comparison::Gt => ordering == Ordering::Greater,
            Comparison::Gte => ordering != Ordering::Less,
            Comparison::Lt => ordering == Ordering::Less,
            Comparison::Lte => ordering != Ordering::Greater,
        }
    }
}

impl PayloadFilter {
    /// Compiles a filter, or says which clause is wrong and why.
    pub fn parse(source: Value) -> Result<Self, FilterError> {
        let size = serde_json::to_string(&source).map_or(usize::MAX, |s| s.len());
        if size > MAX_FILTER_BYTES {
            return refuse(
                "",
                format!("the filter is {size} bytes of JSON, at most {MAX_FILTER_BYTES}"),
            );
        }
        let mut conditions = 0;
        let root = filter(&source, "", 0, &mut conditions)?;
        Ok(Self { source, root })
    }

    /// The filter as written.
    pub fn source(&self) -> &Value {
        &self.source
    }

    /// Whether the event passes.
    pub fn matches(&self, event: &Subject<'_>) -> bool {
        self.root.holds(event)
    }
}

impl std::fmt::Display for PayloadFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.source.fmt(f)
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn join(at: &str, key: &str) -> String {
    if at.is_empty() {
        key.to_string()
    } else {
        format!("{at}.{key}")
    }
}

/// `{key: …, …}`: every entry must hold.
fn filter(
    value: &Value,
    at: &str,
    depth: usize,
    conditions: &mut usize,
) -> Result<Node, FilterError> {
    let Value::Object(entries) = value else {
        return refuse(
            at,
            format!(
                "a filter is a JSON object such as {{\"data.amount\": {{\"$gte\": 1000}}}}, \
                 got {}",
                kind(value)
            ),
        );
    };
    if entries.is_empty() {
        return refuse(
            at,
            "an empty filter: name at least one field (leave the filter out, or null, to \
             receive every event)",
        );
    }
    let mut nodes = Vec::with_capacity(entries.len());
    for (key, value) in entries {
        let here = join(at, key);
        nodes.push(match key.as_str() {
            "$and" | "$or" => {
                let list = list(value, &here, depth, conditions)?;
                if key == "$and" {
                    Node::All(list)
                } else {
                    Node::Any(list)
                }
            }
            other if other.starts_with('$') => {
                return refuse(
                    &here,
                    format!(
                        "unknown key `{other}`: a filter's keys are field paths, `$and` or `$or`"
                    ),
                )
            }
            path => field(path, value, &here, conditions)?,
        });
    }
    Ok(all(nodes))
}

fn all(mut nodes: Vec<Node>) -> Node {
    if nodes.len() == 1 {
        nodes.pop().expect("one node")
    } else {
        Node::All(nodes.into())
    }
}

/// The filters of `$and` / `$or`.
fn list(
    value: &Value,
    at: &str,
    depth: usize,
    conditions: &mut usize,
) -> Result<Box<[Node]>, FilterError> {
    if depth >= MAX_NESTING {
        return refuse(at, format!("$and and $or nest at most {MAX_NESTING} deep"));
    }
    let Value::Array(items) = value else {
        return refuse(
            at,
            format!("takes an array of filters, got {}", kind(value)),
        );
    };
    if items.is_empty() {
        return refuse(at, "takes at least one filter");
    }
    items
        .iter()
        .enumerate()
        .map(|(n, item)| filter(item, &format!("{at}[{n}]"), depth + 1, conditions))
        .collect()
}

/// `path: value` or `path: {operator: operand, …}`.
fn field(text: &str, value: &Value, at: &str, conditions: &mut usize) -> Result<Node, FilterError> {
    let path = path(text, at)?;
    let mut count = |at: &str| {
        *conditions += 1;
        if *conditions > MAX_CONDITIONS {
            refuse(
                at,
                format!("a filter holds at most {MAX_CONDITIONS} conditions"),
            )
        } else {
            Ok(())
        }
    };
    let operators = match value {
        Value::Object(operators) => operators,
        Value::Array(_) => {
            return refuse(
                at,
                "an array is not a value to compare with: {\"$in\": [...]} matches one of \
                 several values",
            )
        }
        scalar => {
            count(at)?;
            return Ok(Node::Field {
                path,
                test: Test::Eq(scalar.clone()),
            });
        }
    };
    if operators.is_empty() {
        return refuse(at, format!("an empty condition: use one of {OPERATORS}"));
    }
    let mut nodes = Vec::with_capacity(operators.len());
    for (operator, operand) in operators {
        let here = join(at, operator);
        if !operator.starts_with('$') {
            return refuse(
                &here,
                format!(
                    "a condition holds operators ({OPERATORS}); to test a nested field, \
                     name it with a dotted path: `{text}.{operator}`"
                ),
            );
        }
        count(&here)?;
        nodes.push(Node::Field {
            path: path.clone(),
            test: test(operator, operand, &here)?,
        });
    }
    Ok(all(nodes))
}

fn path(text: &str, at: &str) -> Result<Path, FilterError> {
    if text.len() > MAX_PATH_BYTES {
        return refuse(at, format!("a path is at most {MAX_PATH_BYTES} bytes"));
    }
    let segments: Vec<&str> = text.split('.').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return refuse(
            at,
            "a path has no empty segment (`data.a.b`, not `data..b`)",
        );
    }
    if segments.len() > MAX_PATH_SEGMENTS {
        return refuse(
            at,
            format!("a path has at most {MAX_PATH_SEGMENTS} segments"),
        );
    }
    let (root, rest) = segments.split_first().expect("split yields one at least");
    let plain = |path: Path| {
        if rest.is_empty() {
            Ok(path)
        } else {
            refuse(at, format!("`{root}` is text: it has no fields"))
        }
    };
    match *root {
        "data" => Ok(Path::Data(
            rest.iter()
                .map(|key| Segment {
                    key: (*key).into(),
                    index: key.parse().ok(),
                })
                .collect(),
        )),
        "id" => plain(Path::Id),
        "type" => plain(Path::Type),
        "tenant_id" => plain(Path::TenantId),
        _ => refuse(
            at,
            format!("`{text}` is not a field of the event: a path is {ROOTS}"),
        ),
    }
}

fn scalar(value: &Value, at: &str, what: &str) -> Result<Value, FilterError> {
    match value {
        Value::Array(_) | Value::Object(_) => refuse(
            at,
            format!(
                "{what} a string, a number, a boolean or null, got {}",
                kind(value)
            ),
        ),
        scalar => Ok(scalar.clone()),
    }
}

fn set(value: &Value, at: &str) -> Result<Box<[Value]>, FilterError> {
    let Value::Array(items) = value else {
        return refuse(at, format!("takes an array of values, got {}", kind(value)));
    };
    if items.is_empty() || items.len() > MAX_SET {
        return refuse(
            at,
            format!("takes 1 to {MAX_SET} values, got {}", items.len()),
        );
    }
    items
        .iter()
        .enumerate()
        .map(|(n, item)| scalar(item, &format!("{at}[{n}]"), "is"))
        .collect()
}

fn test(operator: &str, operand: &Value, at: &str) -> Result<Test, FilterError> {
    let comparison = |comparison| match operand {
        Value::Number(_) | Value::String(_) => Ok(Test::Compare(comparison, operand.clone())),
        other => refuse(
            at,
            format!("{operator} takes a number or a string, got {}", kind(other)),
        ),
    };
    match operator {
        "$eq" => Ok(Test::Eq(scalar(operand, at, "$eq takes")?)),
        "$ne" => Ok(Test::Ne(scalar(operand, at, "$ne takes")?)),
        "$in" => Ok(Test::In(set(operand, at)?)),
        "$nin" => Ok(Test::Nin(set(operand, at)?)),
        "$exists" => match operand {
            Value::Bool(exists) => Ok(Test::Exists(*exists)),
            other => refuse(
                at,
                format!("$exists takes true or false, got {}", kind(other)),
            ),
        },
        "$gt" => comparison(Comparison::Gt),
        "$gte" => comparison(Comparison::Gte),
        "$lt" => comparison(Comparison::Lt),
        "$lte" => comparison(Comparison::Lte),
        other => refuse(
            at,
            format!("unknown operator `{other}`: the operators are {OPERATORS}"),
        ),
    }
}

/// The event as filters see it: the webhook body's fields, the data parsed on first
/// use and then kept for every other filter of the same event.
pub struct Subject<'a> {
    id: &'a str,
    event_type: &'a str,
    tenant_id: Option<&'a str>,
    data: &'a RawValue,
    parsed: OnceCell<Value>,
}

impl<'a> Subject<'a> {
    pub fn new(
        id: &'a str,
        event_type: &'a str,
        tenant_id: Option<&'a str>,
        data: &'a RawValue,
    ) -> Self {
        Self {
            id,
            event_type,
            tenant_id,
            data,
            parsed: OnceCell::new(),
        }
    }

    pub fn event_type(&self) -> &'a str {
        self.event_type
    }

    pub fn tenant_id(&self) -> Option<&'a str> {
        self.tenant_id
    }

    /// Whether a filter has read the data (and so paid for parsing it).
    pub fn data_parsed(&self) -> bool {
        self.parsed.get().is_some()
    }

    fn data(&self) -> &Value {
        // The data was accepted as JSON, nested at most `envelope::MAX_DEPTH` deep
        // (serde_json's own limit is 128 as well): it parses.
        self.parsed
            .get_or_init(|| serde_json::from_str(self.data.get()).unwrap_or(Value::Null))
    }
}

/// A field of the event found at a path.
#[derive(Clone, Copy)]
enum Found<'v> {
    Text(&'v str),
    Json(&'v Value),
}

impl Node {
    fn holds(&self, event: &Subject<'_>) -> bool {
        match self {
            Node::All(nodes) => nodes.iter().all(|n| n.holds(event)),
            Node::Any(nodes) => nodes.iter().any(|n| n.holds(event)),
            Node::Field { path, test } => test.holds(path.find(event)),
        }
    }
}

impl Path {
    fn find<'v>(&self, event: &'v Subject<'_>) -> Option<Found<'v>> {
        match self {
            Path::Id => Some(Found::Text(event.id)),
            Path::Type => Some(Found::Text(event.event_type)),
            Path::TenantId => event.tenant_id.map(Found::Text),
            Path::Data(segments) => {
                let mut value = event.data();
                for segment in segments.iter() {
                    value = match value {
                        Value::Object(map) => map.get(&*segment.key)?,
                        Value::Array(items) => items.get(segment.index?)?,
                        _ => return None,
                    };
                }
                Some(Found::Json(value))
            }
        }
    }
}

impl Test {
    fn holds(&self, found: Option<Found<'_>>) -> bool {
        let is = |wanted: &Value| found.is_some_and(|f| equal(f, wanted));
        match self {
            Test::Eq(wanted) => is(wanted),
            Test::Ne(wanted) => !is(wanted),
            Test::In(set) => set.iter().any(is),
            Test::Nin(set) => !set.iter().any(is),
            Test::Exists(exists) => found.is_some() == *exists,
            Test::Compare(comparison, bound) => found
                .and_then(|f| compare(f, bound))
                .is_some_and(|ordering| comparison.accepts(ordering)),
        }
    }
}

fn equal(found: Found<'_>, wanted: &Value) -> bool {
    match (found, wanted) {
        (Found::Text(text), Value::String(wanted)) => text == wanted,
        (Found::Text(_), _) => false,
        (Found::Json(Value::Number(a)), Value::Number(b)) => numbers(a, b) == Some(Ordering::Equal),
        (Found::Json(value), wanted) => value == wanted,
    }
}

/// The field against a bound of the same kind; `None` across kinds.
fn compare(found: Found<'_>, bound: &Value) -> Option<Ordering> {
    match (found, bound) {
        (Found::Text(text), Value::String(bound)) => Some(text.cmp(bound.as_str())),
        (Found::Json(Value::String(text)), Value::String(bound)) => Some(text.cmp(bound)),
        (Found::Json(Value::Number(a)), Value::Number(b)) => numbers(a, b),
        _ => None,
    }
}

/// Integers exactly, anything with a float as floats.
fn numbers(a: &Number, b: &Number) -> Option<Ordering> {
    if let (Some(a), Some(b)) = (a.as_i64(), b.as_i64()) {
        return Some(a.cmp(&b));
    }
    if let (Some(a), Some(b)) = (a.as_u64(), b.as_u64()) {
        return Some(a.cmp(&b));
    }
    if !a.is_f64() && !b.is_f64() {
        // Integers on either side of i64: the negative one is the smaller.
        return Some(if a.as_i64().is_some() {
            Ordering::Less
        } else {
            Ordering::Greater
        });
    }
    a.as_f64()?.partial_cmp(&b.as_f64()?)
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Map};

    use super::*;

    fn parse(source: Value) -> Result<PayloadFilter, FilterError> {
        PayloadFilter::parse(source)
    }

    fn subject<'a>(tenant: Option<&'a str>, data: &'a RawValue) -> Subject<'a> {
        Subject::new("evt-1", "sales.order.created", tenant, data)
    }

    const ORDER: &str = r#"{
        "amount": 1500, "price": 12.5, "currency": "EUR", "paid": true, "note": null,
        "customer": {"vip": false, "country": "FR", "tier": 3},
        "lines": [{"sku": "A-1", "qty": 2}, {"sku": "B-7", "qty": 1}],
        "big": 18446744073709551615, "negative": -5
    }"#;

    #[test]
    fn filters_accept_and_refuse_events_as_documented() {
        let data = RawValue::from_string(ORDER.into()).unwrap();
        let acme = subject(Some("acme"), &data);
        let cases: Vec<(Value, bool)> = vec![
            // A plain value is equality; numbers equal by value, int or float.
            (json!({"data.currency": "EUR"}), true),
            (json!({"data.currency": "USD"}), false),
            (json!({"data.amount": 1500}), true),
            (json!({"data.amount": 1500.0}), true),
            (json!({"data.price": 12.5}), true),
            (json!({"data.paid": true}), true),
            (json!({"data.note": null}), true),
            (json!({"data.customer.country": {"$eq": "FR"}}), true),
            // Type mismatches never match (the string "1500" is not the number).
            (json!({"data.amount": "1500"}), false),
            (json!({"data.paid": 1}), false),
            (json!({"data.amount": {"$gte": "1000"}}), false),
            (json!({"data.currency": {"$gt": 5}}), false),
            // Missing fields: equality and comparisons fail, $ne and $nin hold.
            (json!({"data.missing": "x"}), false),
            (json!({"data.missing": {"$gt": 0}}), false),
            (json!({"data.missing": {"$ne": "x"}}), true),
            (json!({"data.missing": {"$nin": ["x"]}}), true),
            (json!({"data.currency.deeper": "x"}), false),
            // Sets.
            (json!({"data.currency": {"$in": ["USD", "EUR"]}}), true),
            (json!({"data.currency": {"$in": ["USD", "GBP"]}}), false),
            (json!({"data.customer.tier": {"$in": [1, 3.0]}}), true),
            (json!({"data.currency": {"$nin": ["USD", "EUR"]}}), false),
            (json!({"data.currency": {"$ne": "USD"}}), true),
            // Presence; null is present.
            (json!({"data.customer.vip": {"$exists": true}}), true),
            (json!({"data.note": {"$exists": true}}), true),
            (json!({"data.customer.gold": {"$exists": true}}), false),
            (json!({"data.customer.gold": {"$exists": false}}), true),
            // Comparisons, int against float, and beyond i64.
            (json!({"data.amount": {"$gte": 1000}}), true),
            (json!({"data.amount": {"$gt": 1500}}), false),
            (json!({"data.amount": {"$gte": 1500, "$lt": 2000}}), true),
            (json!({"data.amount": {"$gt": 1499.5}}), true),
            (json!({"data.price": {"$lte": 12}}), false),
            (json!({"data.big": {"$gt": 1}}), true),
            (
                json!({"data.negative": {"$lt": 18446744073709551615_u64}}),
                true,
            ),
            (
                json!({"data.customer.country": {"$gte": "E", "$lt": "G"}}),
                true,
            ),
            // Array positions.
            (json!({"data.lines.1.sku": "B-7"}), true),
            (json!({"data.lines.2.sku": {"$exists": true}}), false),
            (json!({"data.lines.first": {"$exists": true}}), false),
            // The webhook body's own fields.
            (json!({"type": "sales.order.created"}), true),
            (json!({"type": {"$in": ["billing.invoice.paid"]}}), false),
            (json!({"id": "evt-1"}), true),
            (json!({"tenant_id": "acme"}), true),
            (json!({"data": {"$exists": true}}), true),
            // Several keys: all of them; $and, $or, nested.
            (
                json!({"data.currency": "EUR", "data.amount": {"$gte": 2000}}),
                false,
            ),
            (
                json!({"$or": [{"data.currency": "USD"}, {"data.customer.tier": {"$gte": 3}}]}),
                true,
            ),
            (
                json!({"$and": [{"data.paid": true}, {"$or": [{"data.amount": {"$lt": 10}},
                    {"data.customer.vip": false}]}]}),
                true,
            ),
            (
                json!({"$or": [{"data.currency": "USD"}, {"data.amount": {"$lt": 10}}]}),
                false,
            ),
        ];
        for (source, expected) in cases {
            let filter = parse(source.clone()).unwrap_or_else(|e| panic!("{source}: {e}"));
            assert_eq!(filter.matches(&acme), expected, "{source}");
        }
    }

    #[test]
    fn a_missing_tenant_fails_equality_and_satisfies_not_exists() {
        let data = RawValue::from_string("{}".into()).unwrap();
        let none = subject(None, &data);
        assert!(!parse(json!({"tenant_id": "acme"})).unwrap().matches(&none));
        let absent = parse(json!({"tenant_id": {"$exists": false}})).unwrap();
        assert!(absent.matches(&none));
    }

    #[test]
    fn data_that_is_not_an_object_has_no_fields() {
        for data in ["[1, 2]", "\"text\"", "null", "42"] {
            let raw = RawValue::from_string(data.into()).unwrap();
            let filter = parse(json!({"data.amount": {"$exists": true}})).unwrap();
            assert!(!filter.matches(&subject(None, &raw)), "{data}");
        }
        let raw = RawValue::from_string("[{\"a\": 1}]".into()).unwrap();
        assert!(parse(json!({"data.0.a": 1}))
            .unwrap()
            .matches(&subject(None, &raw)));
    }

    #[test]
    fn data_beyond_what_a_json_value_holds_has_no_fields() {
        // Accepted as raw JSON, but no f64 holds the number: the document counts as
        // having no fields (so $exists: false and $ne hold).
        let raw = RawValue::from_string(r#"{"amount": 1e400, "currency": "EUR"}"#.into()).unwrap();
        let event = subject(None, &raw);
        assert!(!parse(json!({"data.currency": "EUR"}))
            .unwrap()
            .matches(&event));
        let absent = parse(json!({"data.currency": {"$exists": false}})).unwrap();
        assert!(absent.matches(&event));
    }

    #[test]
    fn the_data_is_parsed_only_when_a_filter_reads_it() {
        let data = RawValue::from_string(ORDER.into()).unwrap();
        let event = subject(Some("acme"), &data);
        assert!(parse(json!({"type": {"$in": ["sales.order.created"]}}))
            .unwrap()
            .matches(&event));
        assert!(!event.data_parsed());
        assert!(parse(json!({"data.paid": true})).unwrap().matches(&event));
        assert!(event.data_parsed());
    }

    #[test]
    fn invalid_filters_are_refused_naming_the_clause() {
        let many: Vec<Value> = (0..=MAX_SET).map(|n| json!(n)).collect();
        let conditions: Map<String, Value> = (0..=MAX_CONDITIONS)
            .map(|n| (format!("data.f{n}"), json!(n)))
            .collect();
        let deep = (0..=MAX_NESTING).fold(json!({"data.a": 1}), |inner, _| json!({"$or": [inner]}));
        let cases: Vec<(Value, &str, &str)> = vec![
            (json!([1]), "", "a filter is a JSON object"),
            (json!("data.a"), "", "got a string"),
            (json!({}), "", "an empty filter"),
            (
                json!({"amount": 5}),
                "amount",
                "is not a field of the event",
            ),
            (json!({"data..a": 5}), "data..a", "no empty segment"),
            (json!({"type.name": "x"}), "type.name", "has no fields"),
            (json!({"data.a": [1, 2]}), "data.a", "$in"),
            (json!({"data.a": {}}), "data.a", "an empty condition"),
            (
                json!({"data.a": {"vip": true}}),
                "data.a.vip",
                "`data.a.vip`",
            ),
            (
                json!({"data.a": {"$regex": "^x"}}),
                "data.a.$regex",
                "unknown operator `$regex`",
            ),
            (json!({"$where": "1"}), "$where", "unknown key `$where`"),
            (
                json!({"data.a": {"$gte": true}}),
                "data.a.$gte",
                "a number or a string",
            ),
            (
                json!({"data.a": {"$eq": {"b": 1}}}),
                "data.a.$eq",
                "got an object",
            ),
            (
                json!({"data.a": {"$in": "EUR"}}),
                "data.a.$in",
                "an array of values",
            ),
            (
                json!({"data.a": {"$in": []}}),
                "data.a.$in",
                "1 to 64 values",
            ),
            (json!({"data.a": {"$in": many}}), "data.a.$in", "got 65"),
            (
                json!({"data.a": {"$nin": [1, [2]]}}),
                "data.a.$nin[1]",
                "got an array",
            ),
            (
                json!({"data.a": {"$exists": 1}}),
                "data.a.$exists",
                "true or false",
            ),
            (json!({"$or": {"data.a": 1}}), "$or", "an array of filters"),
            (json!({"$and": []}), "$and", "at least one filter"),
            (
                json!({"$or": [{"data.a": 1}, {"b": 2}]}),
                "$or[1].b",
                "not a field",
            ),
            (json!({"$or": [{}]}), "$or[0]", "an empty filter"),
            (deep, "$or[0].$or[0].$or[0].$or[0].$or", "nest at most 4"),
            (
                Value::Object(conditions),
                "data.f9",
                "at most 32 conditions",
            ),
            (
                json!({ format!("data.{}", "a".repeat(MAX_PATH_BYTES)): 1 }),
                "",
                "at most 256 bytes",
            ),
            (
                json!({ "data.a.b.c.d.e.f.g.h.i.j": 1 }),
                "data.a.b.c.d.e.f.g.h.i.j",
                "at most 10 segments",
            ),
            (
                json!({"data.a": {"$in": vec!["x".repeat(100); 50]}}),
                "",
                "at most 4096",
            ),
        ];
        for (source, at, message) in cases {
            let error = parse(source.clone()).expect_err(&source.to_string());
            if !at.is_empty() {
                assert_eq!(error.at, at, "{source}: {error}");
            }
            let text = error.to_string();
            assert!(text.contains(message), "{source}: {text}");
            if !error.at.is_empty() {
                assert!(text.starts_with(&format!("`{}`: ", error.at)), "{text}");
            }
        }
    }

    #[test]
    fn two_filters_are_equal_when_written_alike() {
        let a = parse(json!({"data.a": 1, "data.b": {"$in": [1, 2]}})).unwrap();
        let b = parse(json!({"data.b": {"$in": [1, 2]}, "data.a": 1})).unwrap();
        let c = parse(json!({"data.a": 2, "data.b": {"$in": [1, 2]}})).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.to_string(), r#"{"data.a":1,"data.b":{"$in":[1,2]}}"#);
    }
}
