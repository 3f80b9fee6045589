//! Herald's RabbitMQ topology, declared in one place and derived from `topology.prefix`.
//!
//! ```text
//! erp.events (topic, the publishers') ──#──▶ <prefix>.ingest (quorum)
//!        │                                     │ ingest: record, fan out
//!        └──#──▶ <prefix>.keyed (headers) ──▶ <prefix>.ordered (quorum, single active
//!                 events with an ordering key    consumer: ingest in publish order)
//!                                              ▼
//! <prefix>.work (direct) ──deliver──▶ <prefix>.work (quorum) ──▶ deliver: sign, POST
//!        ▲                                                    │ failure
//!        └── dead-letter on TTL ── <prefix>.delay.<ms> (quorum, one per delay) ◀┘
//!                                  <prefix>.defer.<ms> (same, for tasks put off by the
//!                                                       per-endpoint throttle)
//!                                  <prefix>.dlq      (retries exhausted)
//!                                  <prefix>.invalid  (messages Herald cannot accept)
//!                                  <prefix>.senders  (nothing published: one consumer
//!                                                     per process that delivers, counted
//!                                                     to share the rate limits)
//! ```
//! Declaring is idempotent; every Herald process declares at startup.

use std::collections::BTreeSet;
use std::time::Duration;

use lapin::options::{
    ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};

use crate::config::Settings;

/// Routing key of delivery tasks on the work exchange.
pub const WORK_ROUTING_KEY: &str = "deliver";

#[derive(Debug, Clone)]
pub struct Topology {
    prefix: String,
    source_exchanges: Vec<String>,
    binding_keys: Vec<String>,
    delays: BTreeSet<Duration>,
    defers: BTreeSet<Duration>,
}

impl Topology {
    /// The topology of `settings` (prefix, source exchanges, binding keys) with one
    /// delay queue per `retry_delays` and one defer queue per `defer_delays`
    /// (`crate::delivery::topology` gives it the delivery's own).
    pub fn new(
        settings: &Settings,
        retry_delays: impl IntoIterator<Item = Duration>,
        defer_delays: impl IntoIterator<Item = Duration>,
    ) -> Self {
        Self {
            prefix: settings.topology.prefix.clone(),
            source_exchanges: settings.ingest.exchanges.clone(),
            binding_keys: settings
                .ingest
                .binding_keys
                .iter()
                .map(|k| k.as_str().to_string())
                .collect(),
            delays: retry_delays.into_iter().collect(),
            defers: defer_delays.into_iter().collect(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn ingest_queue(&self) -> String {
        format!("{}.ingest", self.prefix)
    }

    /// Events with an ordering key, routed here by their headers (headers exchange).
    pub fn keyed_exchange(&self) -> String {
        format!("{}.keyed", self.prefix)
    }

    /// The keyed events, read by one consumer of the deployment at a time (single
    /// active consumer), so they are recorded in the order they were published.
    pub fn ordered_queue(&self) -> String {
        format!("{}.ordered", self.prefix)
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

    /// The topic exchange of operational events (contract §9), routing key = type.
    pub fn ops_exchange(&self) -> String {
        format!("{}.ops", self.prefix)
    }

    pub fn invalid_queue(&self) -> String {
        format!("{}.invalid", self.prefix)
    }

    /// Nothing is published here: every process that delivers holds one consumer on
    /// it, and its consumer count is how many share each endpoint's rate limit
    /// (`crate::delivery::share`).
    pub fn senders_queue(&self) -> String {
        format!("{}.senders", self.prefix)
    }

    /// Every queue Herald owns.
    pub fn queues(&self) -> Vec<String> {
        let mut queues = vec![
            self.ingest_queue(),
            self.ordered_queue(),
            self.work_queue(),
            self.dlq(),
            self.invalid_queue(),
            self.senders_queue(),
        ];
        queues.extend(self.delays.iter().map(|d| self.delay_queue(*d)));
        queues.extend(self.defers.iter().map(|d| self.defer_queue(*d)));
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
                &self.ops_exchange(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await?;
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
        self.declare_ordered(channel).await?;
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
        for delay in &self.defers {
            declare_queue(channel, &self.defer_queue(*delay), self.delay_args(*delay)).await?;
        }
        declare_queue(channel, &self.dlq(), quorum()).await?;
        declare_queue(channel, &self.invalid_queue(), quorum()).await?;
        // Quorum too, so that the count survives the loss of a node of a cluster.
        declare_queue(channel, &self.senders_queue(), quorum()).await?;
        Ok(())
    }

    /// A delay queue holds retries for exactly one delay. A queue-level TTL (never a
    /// per-message one, which only expires at the head and so blocks behind longer
    /// delays) dead-letters each message back to the work exchange when it is due.
    /// The keyed path: every source exchange's events of Herald's binding keys also
    /// reach `<prefix>.keyed`, which passes on only those carrying an ordering-key
    /// header (a binding argument without a value matches the header's presence) to
    /// `<prefix>.ordered`. Events without a key stop at the exchange: no queue, no copy.
    async fn declare_ordered(&self, channel: &Channel) -> lapin::Result<()> {
        let keyed = self.keyed_exchange();
        channel
            .exchange_declare(
                &keyed,
                ExchangeKind::Headers,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        for exchange in &self.source_exchanges {
            for key in &self.binding_keys {
                channel
                    .exchange_bind(
                        &keyed,
                        exchange,
                        key,
                        ExchangeBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
            }
        }
        let mut ordered = quorum();
        ordered.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        declare_queue(channel, &self.ordered_queue(), ordered).await?;
        let mut any_key = FieldTable::default();
        // `any` leaves out headers whose name starts with `x-`; `any-with-x` (RabbitMQ
        // 3.10 and later) matches them too.
        any_key.insert("x-match".into(), long_string("any-with-x"));
        for header in crate::envelope::ORDERING_KEY_HEADERS {
            any_key.insert(header.into(), AMQPValue::Void);
        }
        channel
            .queue_bind(
                &self.ordered_queue(),
                &keyed,
                "",
                QueueBindOptions::default(),
                any_key,
            )
            .await
    }

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

    /// Deletes every queue Herald owns (tests clean up with it), not the publishers'
    /// exchanges.
    pub async fn delete(&self, channel: &Channel) -> lapin::Result<()> {
        for queue in self.queues() {
            channel
                .queue_delete(&queue, QueueDeleteOptions::default())
                .await?;
        }
        for exchange in [self.work_exchange(), self.keyed_exchange()] {
            channel
                .exchange_delete(&exchange, Default::default())
                .await?;
        }
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
