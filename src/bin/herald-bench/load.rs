//! The load generator: publishes events to the bench's topic exchange with publisher
//! confirms pipelined (chunks of messages in flight at once, each chunk published
//! back to back and then confirmed together), either as fast as possible or at a
//! fixed offered rate. Each event's data is `{"sent_at_us": <publish time>, "pad": …}`
//! and its AMQP `message_id` is `<run tag>-<n>`.

use std::time::{Duration, Instant};

use herald::broker::{Outgoing, Publisher};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use tokio::task::JoinSet;

use crate::now_us;

/// Messages published back to back before their confirms are awaited.
const CHUNK: usize = 250;
/// Chunks awaiting confirms at once.
const IN_FLIGHT: usize = 32;

/// What to publish.
#[derive(Debug, Clone)]
pub struct Load {
    pub exchange: String,
    pub tag: String,
    /// The number of the first event (ids `<tag>-<first>` …), so that loads published
    /// one after another under one tag do not repeat ids.
    pub first: usize,
    pub count: usize,
    /// Events per second; `None` = as fast as the broker confirms.
    pub rate: Option<f64>,
    pub body_bytes: usize,
    /// (routing key, tenant) of event `n`.
    pub kinds: Vec<(String, Option<String>)>,
    /// Event `n` carries the header `x-ordering-key: key-<n mod K>` (round-robin).
    pub ordering_keys: Option<usize>,
}

impl Load {
    fn kind(&self, n: usize) -> &(String, Option<String>) {
        &self.kinds[n % self.kinds.len()]
    }
}

/// The data of event `n`, padded to about `bytes`.
fn body(bytes: usize) -> Vec<u8> {
    let head = format!("{{\"sent_at_us\":{},\"pad\":\"", now_us());
    let pad = bytes.saturating_sub(head.len() + 2);
    let mut body = head.into_bytes();
    body.extend(std::iter::repeat_n(b'x', pad));
    body.extend_from_slice(b"\"}");
    body
}

async fn publish_chunk(
    publisher: Publisher,
    load: std::sync::Arc<Load>,
    range: std::ops::Range<usize>,
) -> Result<(), herald::broker::PublishError> {
    let messages: Vec<(usize, Vec<u8>)> = range.map(|n| (n, body(load.body_bytes))).collect();
    let outgoing = messages
        .iter()
        .map(|(n, data)| {
            let (routing_key, tenant) = load.kind(*n);
            let mut properties = BasicProperties::default()
                .with_message_id(ShortString::from(format!(
                    "{}-{}",
                    load.tag,
                    load.first + n
                )))
                .with_content_type(ShortString::from("application/json"))
                .with_delivery_mode(2);
            let mut headers = FieldTable::default();
            if let Some(tenant) = tenant {
                headers.insert(
                    ShortString::from("x-tenant-id"),
                    AMQPValue::LongString(LongString::from(tenant.as_str())),
                );
            }
            if let Some(keys) = load.ordering_keys {
                headers.insert(
                    ShortString::from("x-ordering-key"),
                    AMQPValue::LongString(LongString::from(format!(
                        "key-{}",
                        (load.first + n) % keys.max(1)
                    ))),
                );
            }
            if !headers.inner().is_empty() {
                properties = properties.with_headers(headers);
            }
            Outgoing {
                exchange: &load.exchange,
                routing_key,
                body: data,
                properties,
            }
        })
        .collect();
    publisher.publish_all(outgoing).await
}

/// Publishes the whole load; returns how long it took.
pub async fn publish(publisher: &Publisher, load: Load) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let load = std::sync::Arc::new(load);
    let mut tasks = JoinSet::new();
    let mut next = 0usize;
    // At a fixed rate, chunks are small and released every 10 ms.
    let chunk = match load.rate {
        Some(rate) => ((rate / 100.0).ceil() as usize).clamp(1, CHUNK),
        None => CHUNK,
    };
    // Concurrent chunks interleave on the channel: a keyed load publishes one chunk
    // after the other, so that publish order is event order (the order checked).
    let in_flight = if load.ordering_keys.is_some() {
        1
    } else {
        IN_FLIGHT
    };
    while next < load.count {
        let mut due = load.count;
        if let Some(rate) = load.rate {
            due = ((started.elapsed().as_secs_f64() * rate) as usize).min(load.count);
            if due <= next {
                tokio::time::sleep(Duration::from_millis(2)).await;
                continue;
            }
        }
        while tasks.len() >= in_flight {
            if let Some(done) = tasks.join_next().await {
                done??;
            }
        }
        let end = (next + chunk).min(due);
        tasks.spawn(publish_chunk(publisher.clone(), load.clone(), next..end));
        next = end;
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(started.elapsed())
}
