//! Herald's RabbitMQ topology, declared in one place and derived from `topology.prefix`.
//!
//! ```text
//! erp.events (topic, the publishers') ──#──▶ <prefix>.ingest (quorum)
//!                                              │ ingest: record, fan out
//!                                              ▼
//! <prefix>.work (direct) ──deliver──▶ <prefix>.work (quorum) ──▶ deliver: sign, POST
//!        ▲                                                    │ failure
//!        └── dead-letter on TTL ── <prefix>.delay.<ms> (quorum, one per delay) ◀┘
//!                                  <prefix>.defer.<ms> (same, for tasks put off by the
//!                                                       per-endpoint throttle)
//!                                  <prefix>.dlq      (retries exhausted)
//!                                  <prefix>.invalid  (messages Herald cannot accept)
//! ```
//! Declaring is idempotent; every Herald process declares at startup.

use std::collections::BTreeSet;
use std::time::Duration;

use lapin::options::{
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, ExchangeKind};

use crate::config::Settings;
use crate::delivery::retry::RetryPolicy;
use crate::delivery::throttle::DEFER_TIERS;

/// Routing key of delivery tasks on the work exchange.
pub const WORK_ROUTING_KEY: &str = "deliver";

#[derive(Debug, Clone)]
pub struct Topology {
    prefix: String,
    source_exchanges: Vec<String>,
    binding_keys: Vec<String>,
    delays: BTreeSet<Duration>,
}

impl Topology {
    pub fn new(settings: &Settings, retry: &RetryPolicy) -> Self {
        Self {
            prefix: settings.topology.prefix.clone(),
            source_exchanges: settings.ingest.exchanges.clone(),
            binding_keys: settings
                .ingest
                .binding_keys
                .iter()
                .map(|k| k.as_str().to_string())
                .collect(),
            delays: retry.delay_queues(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn ingest_queue(&self) -> String {
        format!("{}.ingest", self.prefix)
    }

    pub fn work_exchange(&self) -> String {
        format!("{}.work", self.prefix)
    }

    pub fn work_queue(&self) -> String {
        format!("{}.work", self.prefix)
    }

    pub fn delay_queue(&self, delay: Duration) -> String {
        format!("{}.delay.{}", self.prefix, delay.as_millis())
    }

    /// Where tasks put off by the throttle wait (no attempt made).
    pub fn defer_queue(&self, delay: Duration) -> String {
        format!("{}.defer.{}", self.prefix, delay.as_millis())
    }

    pub fn dlq(&self) -> String {
        format!("{}.dlq", self.prefix)
    }

    pub fn invalid_queue(&self) -> String {
        format!("{}.invalid", self.prefix)
    }

    /// Every queue Herald owns.
    pub fn queues(&self) -> Vec<String> {
        let mut queues = vec![
            self.ingest_queue(),
            self.work_queue(),
            self.dlq(),
            self.invalid_queue(),
        ];
        queues.extend(self.delays.iter().map(|d| self.delay_queue(*d)));
        queues.extend(DEFER_TIERS.iter().map(|d| self.defer_queue(*d)));
        queues
    }

    /// Declares exchanges, queues and bindings; safe to run from every process at once.
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        for exchange in &self.source_exchanges {
            // The publishers' exchange: declared here too so that events published
            // before any publisher declared it are not dropped by the broker.
            channel
                .exchange_declare(
                    exchange,
                    ExchangeKind::Topic,
                    durable,
                    FieldTable::default(),
                )
                .await?;
        }
        channel
            .exchange_declare(
                &self.work_exchange(),
                ExchangeKind::Direct,
                durable,
                FieldTable::default(),
            )
            .await?;

        // Quorum queues: replicated, and their consumers see `redelivered` and delivery
        // counts; at-least-once dead-lettering needs them.
        declare_queue(channel, &self.ingest_queue(), quorum()).await?;
        for exchange in &self.source_exchanges {
            for key in &self.binding_keys {
                channel
                    .queue_bind(
                        &self.ingest_queue(),
                        exchange,
                        key,
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
            }
        }
        declare_queue(channel, &self.work_queue(), quorum()).await?;
        channel
            .queue_bind(
                &self.work_queue(),
                &self.work_exchange(),
                WORK_ROUTING_KEY,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        for delay in &self.delays {
            declare_queue(channel, &self.delay_queue(*delay), self.delay_args(*delay)).await?;
        }
        for delay in DEFER_TIERS {
            declare_queue(channel, &self.defer_queue(delay), self.delay_args(delay)).await?;
        }
        declare_queue(channel, &self.dlq(), quorum()).await?;
        declare_queue(channel, &self.invalid_queue(), quorum()).await?;
        Ok(())
    }

    /// A delay queue holds retries for exactly one delay. A queue-level TTL (never a
    /// per-message one, which only expires at the head and so blocks behind longer
    /// delays) dead-letters each message back to the work exchange when it is due.
    fn delay_args(&self, delay: Duration) -> FieldTable {
        let mut args = quorum();
        let ttl_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
        args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl_ms));
        args.insert(
            "x-dead-letter-exchange".into(),
            long_string(&self.work_exchange()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            long_string(WORK_ROUTING_KEY),
        );
        // At-least-once dead-lettering: the broker keeps a message until the work queue
        // has confirmed it, so a due retry is never lost between the two queues. It
        // requires `reject-publish` overflow.
        args.insert(
            "x-dead-letter-strategy".into(),
            long_string("at-least-once"),
        );
        args.insert("x-overflow".into(), long_string("reject-publish"));
        args
    }

    /// Deletes every queue Herald owns (tests and `herald topology delete`), not the
    /// publishers' exchanges.
    pub async fn delete(&self, channel: &Channel) -> lapin::Result<()> {
        for queue in self.queues() {
            channel
                .queue_delete(&queue, QueueDeleteOptions::default())
                .await?;
        }
        channel
            .exchange_delete(&self.work_exchange(), Default::default())
            .await?;
        Ok(())
    }
}

fn quorum() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), long_string("quorum"));
    args
}

fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

async fn declare_queue(channel: &Channel, name: &str, args: FieldTable) -> lapin::Result<()> {
    channel
        .queue_declare(
            name,
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await?;
    Ok(())
}

/// Message count of a queue, by a passive declare.
pub async fn queue_depth(channel: &Channel, name: &str) -> lapin::Result<u32> {
    Ok(queue_counts(channel, name).await?.0)
}

/// Messages ready in a queue and its consumers, from a passive declare: nothing in the
/// queue is touched.
pub async fn queue_counts(channel: &Channel, name: &str) -> lapin::Result<(u32, u32)> {
    let queue = channel
        .queue_declare(
            name,
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok((queue.message_count(), queue.consumer_count()))
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
}
