//! A delivery task on the wire: the exact webhook body as the AMQP payload, and what
//! the worker needs to send, record and route it as headers. It carries everything
//! the request needs, so the per-delivery path reads nothing from the database.
//!
//! Tasks put off together travel as one message (header `x-herald-tasks`, the count):
//! a JSON array of tasks, each with its webhook body embedded as raw JSON. One broker
//! message instead of hundreds keeps a slow endpoint's backlog cheap to hold.

use std::sync::Arc;

use bytes::Bytes;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::broker::headers::{header_int, header_text, text};
use crate::broker::Outgoing;
use crate::store::deliveries::NewRow;
use crate::topology::WORK_ROUTING_KEY;

const DELIVERY_ID: &str = "x-herald-delivery-id";
const EVENT_ID: &str = "x-herald-event-id";
const ENDPOINT_ID: &str = "x-herald-endpoint-id";
const ATTEMPT: &str = "x-herald-attempt";
const SCHEDULE_START: &str = "x-herald-schedule-start";
const RECEIVED_AT_MS: &str = "x-herald-received-at-ms";
const NOT_BEFORE_MS: &str = "x-herald-not-before-ms";
const DEFERRALS: &str = "x-herald-deferrals";
const TURN: &str = "x-herald-turn";
const ORDERING_KEY: &str = "x-herald-ordering-key";
/// On a message carrying several tasks: how many.
pub const TASKS: &str = "x-herald-tasks";
pub const TRACEPARENT: &str = "traceparent";

/// Headers added when a delivery is dead-lettered.
pub const REASON: &str = "x-herald-reason";
pub const LAST_STATUS: &str = "x-herald-last-status";
pub const LAST_ERROR: &str = "x-herald-last-error";
pub const ATTEMPTS: &str = "x-herald-attempts";
/// When the delivery was dead-lettered (ms since the epoch), as its record says: the
/// copy in the dead-letter queue is current while the record's `dead_at` is this one.
pub const DEAD_AT_MS: &str = "x-herald-dead-at-ms";

#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryTask {
    pub delivery_id: Uuid,
    pub event_id: String,
    pub endpoint_id: Uuid,
    /// The 1-based number of the attempt this task makes.
    pub attempt: u32,
    /// The attempt at which the current run of the retry schedule began (1, or the
    /// first attempt after a redrive).
    pub schedule_start: u32,
    /// When Herald accepted the event, Unix milliseconds: end-to-end latency.
    pub received_at_ms: i64,
    /// A rate-limit slot reserved for this task, Unix milliseconds: send at that time.
    pub not_before_ms: Option<i64>,
    /// Its place in the line of a busy endpoint (a turn on the throttle's clock for
    /// that endpoint): it is sent when the turn comes, at the endpoint's pace by then.
    pub turn: Option<u64>,
    /// Times the task was put off (endpoint busy or rate-limited) without an attempt.
    pub deferrals: u32,
    pub traceparent: Option<String>,
    /// Its ordering key when it is delivered in its key's order (docs/ordering.md):
    /// it is sent only while it is its key's head, and its key moves on after it.
    pub ordering_key: Option<String>,
    /// Present when the delivery's row may not be written yet (a first attempt made by
    /// ingest): its outcome writes it, and it is written before the task leaves the
    /// process. Never on the wire: a task from a message has its row.
    pub first_write: Option<Arc<NewRow>>,
    /// The webhook body, byte for byte what is signed and POSTed; shared, not copied,
    /// between an event's tasks and the HTTP request.
    pub body: Bytes,
}

#[derive(Debug, thiserror::Error)]
#[error("malformed delivery task: {0}")]
pub struct MalformedTask(pub &'static str);

impl DeliveryTask {
    /// A task sent again on request (a retry, a replay, a redrive): the next attempt
    /// after the `attempts` made so far, with a fresh run of the retry schedule.
    pub fn resend(
        delivery_id: Uuid,
        event_id: String,
        endpoint_id: Uuid,
        attempts: i32,
        body: Bytes,
    ) -> Self {
        let attempt = u32::try_from(attempts).unwrap_or(0) + 1;
        DeliveryTask {
            delivery_id,
            event_id,
            endpoint_id,
            attempt,
            schedule_start: attempt,
            received_at_ms: 0,
            not_before_ms: None,
            turn: None,
            deferrals: 0,
            traceparent: None,
            ordering_key: None,
            first_write: None,
            body,
        }
    }

    /// Retries already made in this run of the schedule.
    pub fn retries_done(&self) -> u32 {
        self.attempt.saturating_sub(self.schedule_start)
    }

    /// The same task, for the next attempt.
    pub fn next_attempt(&self) -> DeliveryTask {
        DeliveryTask {
            attempt: self.attempt + 1,
            not_before_ms: None,
            turn: None,
            deferrals: 0,
            ..self.clone()
        }
    }

    pub fn headers(&self) -> FieldTable {
        let mut h = FieldTable::default();
        h.insert(DELIVERY_ID.into(), text(&self.delivery_id.to_string()));
        h.insert(EVENT_ID.into(), text(&self.event_id));
        h.insert(ENDPOINT_ID.into(), text(&self.endpoint_id.to_string()));
        h.insert(ATTEMPT.into(), AMQPValue::LongLongInt(self.attempt.into()));
        h.insert(
            SCHEDULE_START.into(),
            AMQPValue::LongLongInt(self.schedule_start.into()),
        );
        h.insert(
            RECEIVED_AT_MS.into(),
            AMQPValue::LongLongInt(self.received_at_ms),
        );
        if let Some(at) = self.not_before_ms {
            h.insert(NOT_BEFORE_MS.into(), AMQPValue::LongLongInt(at));
        }
        if let Some(turn) = self.turn.and_then(|t| i64::try_from(t).ok()) {
            h.insert(TURN.into(), AMQPValue::LongLongInt(turn));
        }
        if self.deferrals > 0 {
            h.insert(
                DEFERRALS.into(),
                AMQPValue::LongLongInt(self.deferrals.into()),
            );
        }
        if let Some(tp) = &self.traceparent {
            h.insert(TRACEPARENT.into(), text(tp));
        }
        if let Some(key) = &self.ordering_key {
            h.insert(ORDERING_KEY.into(), text(key));
        }
        h
    }

    /// Persistent, JSON, `message_id` = delivery id.
    pub fn properties(&self) -> BasicProperties {
        self.properties_with(self.headers())
    }

    pub fn properties_with(&self, headers: FieldTable) -> BasicProperties {
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_timestamp(chrono::Utc::now().timestamp() as u64)
            .with_content_type("application/json".into())
            .with_message_id(self.delivery_id.to_string().into())
            .with_headers(headers)
    }

    /// This task as a message to the work exchange.
    pub fn to_work<'a>(&'a self, work_exchange: &'a str) -> Outgoing<'a> {
        Outgoing {
            exchange: work_exchange,
            routing_key: WORK_ROUTING_KEY,
            body: &self.body,
            properties: self.properties(),
        }
    }

    /// This task as a message straight to a queue (delay, defer): default exchange.
    pub fn to_queue<'a>(&'a self, queue: &'a str) -> Outgoing<'a> {
        Outgoing {
            exchange: "",
            routing_key: queue,
            body: &self.body,
            properties: self.properties(),
        }
    }

    /// Headers of the copy parked in the dead-letter queue: the task's own plus why.
    pub fn dead_letter_headers(
        &self,
        reason: &str,
        last_status: Option<u16>,
        last_error: Option<&str>,
        dead_at_ms: i64,
    ) -> FieldTable {
        let mut h = self.headers();
        h.insert(REASON.into(), text(reason));
        h.insert(DEAD_AT_MS.into(), AMQPValue::LongLongInt(dead_at_ms));
        h.insert(ATTEMPTS.into(), AMQPValue::LongLongInt(self.attempt.into()));
        if let Some(status) = last_status {
            h.insert(LAST_STATUS.into(), AMQPValue::LongLongInt(status.into()));
        }
        if let Some(error) = last_error {
            h.insert(LAST_ERROR.into(), text(error));
        }
        h
    }

    pub fn from_amqp(
        properties: &BasicProperties,
        body: impl Into<Bytes>,
    ) -> Result<Self, MalformedTask> {
        let empty = FieldTable::default();
        let h = properties.headers().as_ref().unwrap_or(&empty);
        let uuid = |name: &'static str| {
            header_text(h, name)
                .and_then(|s| s.parse::<Uuid>().ok())
                .ok_or(MalformedTask(name))
        };
        let count = |name: &'static str| {
            header_int(h, name)
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n >= 1)
                .ok_or(MalformedTask(name))
        };
        Ok(DeliveryTask {
            delivery_id: uuid(DELIVERY_ID)?,
            event_id: header_text(h, EVENT_ID).ok_or(MalformedTask(EVENT_ID))?,
            endpoint_id: uuid(ENDPOINT_ID)?,
            attempt: count(ATTEMPT)?,
            schedule_start: count(SCHEDULE_START)?,
            received_at_ms: header_int(h, RECEIVED_AT_MS).unwrap_or_default(),
            not_before_ms: header_int(h, NOT_BEFORE_MS),
            turn: header_int(h, TURN).and_then(|t| u64::try_from(t).ok()),
            deferrals: header_int(h, DEFERRALS)
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0),
            traceparent: header_text(h, TRACEPARENT),
            ordering_key: header_text(h, ORDERING_KEY),
            first_write: None,
            body: body.into(),
        })
    }
}

/// One task inside a message that carries several (`x-herald-tasks`).
#[derive(Serialize, Deserialize)]
struct Packed<'a> {
    delivery_id: Uuid,
    #[serde(borrow)]
    event_id: std::borrow::Cow<'a, str>,
    endpoint_id: Uuid,
    attempt: u32,
    schedule_start: u32,
    received_at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    not_before_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    turn: Option<u64>,
    #[serde(default)]
    deferrals: u32,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    traceparent: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    ordering_key: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    body: &'a RawValue,
}

/// Several tasks as one message body, or `None` if a body is not JSON (such a task
/// travels alone).
pub fn pack(tasks: &[DeliveryTask]) -> Option<Vec<u8>> {
    let packed = tasks
        .iter()
        .map(|t| {
            let body = std::str::from_utf8(&t.body).ok()?;
            let body: &RawValue = serde_json::from_str(body).ok()?;
            Some(Packed {
                delivery_id: t.delivery_id,
                event_id: t.event_id.as_str().into(),
                endpoint_id: t.endpoint_id,
                attempt: t.attempt,
                schedule_start: t.schedule_start,
                received_at_ms: t.received_at_ms,
                not_before_ms: t.not_before_ms,
                turn: t.turn,
                deferrals: t.deferrals,
                traceparent: t.traceparent.as_deref().map(Into::into),
                ordering_key: t.ordering_key.as_deref().map(Into::into),
                body,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    serde_json::to_vec(&packed).ok()
}

/// The tasks of a message: one, or several when it carries `x-herald-tasks`.
pub fn unpack(
    properties: &BasicProperties,
    body: Bytes,
) -> Result<Vec<DeliveryTask>, MalformedTask> {
    let packed = properties
        .headers()
        .as_ref()
        .and_then(|h| header_int(h, TASKS));
    if packed.is_none() {
        return DeliveryTask::from_amqp(properties, body).map(|t| vec![t]);
    }
    let tasks: Vec<Packed> =
        serde_json::from_slice(&body).map_err(|_| MalformedTask("x-herald-tasks body"))?;
    Ok(tasks
        .into_iter()
        .map(|p| DeliveryTask {
            delivery_id: p.delivery_id,
            event_id: p.event_id.into_owned(),
            endpoint_id: p.endpoint_id,
            attempt: p.attempt.max(1),
            schedule_start: p.schedule_start.max(1),
            received_at_ms: p.received_at_ms,
            not_before_ms: p.not_before_ms,
            turn: p.turn,
            deferrals: p.deferrals,
            traceparent: p.traceparent.map(|t| t.into_owned()),
            ordering_key: p.ordering_key.map(|k| k.into_owned()),
            first_write: None,
            // Sliced from the message: the tasks share its buffer, no copy.
            body: body.slice_ref(p.body.get().as_bytes()),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_survives_the_round_trip_through_amqp_properties() {
        let task = DeliveryTask {
            delivery_id: Uuid::now_v7(),
            event_id: "evt-1".into(),
            endpoint_id: Uuid::new_v4(),
            attempt: 3,
            schedule_start: 1,
            received_at_ms: 1_700_000_000_123,
            not_before_ms: Some(1_700_000_001_000),
            turn: Some(42),
            deferrals: 2,
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            ordering_key: Some("order-7".into()),
            first_write: None,
            body: Bytes::from_static(br#"{"id":"evt-1"}"#),
        };
        let properties = task.properties();
        assert!(
            properties.timestamp().is_some(),
            "queue age is measured from it"
        );
        let back = DeliveryTask::from_amqp(&properties, task.body.clone()).unwrap();
        assert_eq!(back, task);
        assert_eq!(back.retries_done(), 2);
        assert_eq!(back.next_attempt().attempt, 4);
        assert_eq!(
            back.next_attempt().turn,
            None,
            "a new attempt starts a new line"
        );
    }

    #[test]
    fn tasks_packed_into_one_message_come_back_whole() {
        let task = |n: u32| DeliveryTask {
            delivery_id: Uuid::now_v7(),
            event_id: format!("evt-{n}"),
            endpoint_id: Uuid::new_v4(),
            attempt: n,
            schedule_start: 1,
            received_at_ms: 1_700_000_000_000 + i64::from(n),
            not_before_ms: (n % 2 == 0).then_some(1_700_000_009_000),
            turn: (n % 3 == 0).then_some(n as u64),
            deferrals: n,
            traceparent: (n == 1)
                .then(|| "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            ordering_key: (n == 2).then(|| format!("order-{n}")),
            first_write: None,
            body: Bytes::from(format!(r#"{{"id":"evt-{n}","data":{{"q":"\"x\" ü"}}}}"#)),
        };
        let tasks = vec![task(1), task(2), task(3)];
        let body = pack(&tasks).expect("JSON bodies pack");
        let mut headers = FieldTable::default();
        headers.insert(TASKS.into(), AMQPValue::LongLongInt(3));
        let properties = BasicProperties::default().with_headers(headers);
        assert_eq!(unpack(&properties, Bytes::from(body)).unwrap(), tasks);
        // A message without the header is one task, as before.
        let single = tasks[0].clone();
        assert_eq!(
            unpack(&single.properties(), single.body.clone()).unwrap(),
            vec![single]
        );
    }

    #[test]
    fn a_task_whose_body_is_not_json_is_not_packed() {
        let mut task = DeliveryTask::from_amqp(
            &DeliveryTask {
                delivery_id: Uuid::now_v7(),
                event_id: "e".into(),
                endpoint_id: Uuid::new_v4(),
                attempt: 1,
                schedule_start: 1,
                received_at_ms: 0,
                not_before_ms: None,
                turn: None,
                deferrals: 0,
                traceparent: None,
                ordering_key: None,
                first_write: None,
                body: Bytes::new(),
            }
            .properties(),
            Bytes::from_static(b"{}"),
        )
        .unwrap();
        assert!(pack(std::slice::from_ref(&task)).is_some());
        task.body = Bytes::from_static(b"not json");
        assert!(pack(&[task]).is_none());
    }

    #[test]
    fn a_task_without_its_ids_is_malformed() {
        let err = DeliveryTask::from_amqp(&BasicProperties::default(), vec![]).unwrap_err();
        assert_eq!(err.0, DELIVERY_ID);
    }
}
