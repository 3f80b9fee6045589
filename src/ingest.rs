//! The ingest role: consume published events, record them and fan each out into one
//! delivery task per subscribed endpoint.
//!
//! Per batch of messages: parse (refusals are parked in `<prefix>.invalid`), match
//! against the in-memory subscriptions, record events and deliveries in one
//! transaction (idempotent on the event id). Then, with `ingest.deliver_first_attempt`
//! (the default), make each delivery's first attempt right here and acknowledge a
//! message once all of its attempts are recorded or handed on to a retry queue;
//! otherwise publish the tasks to `<prefix>.work` with confirms and only then
//! acknowledge the batch.
//!
//! A message that is not acknowledged comes back flagged `redelivered`: its event is
//! already recorded, and the deliveries still `pending` with no attempt are tried again.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures_util::{FutureExt, StreamExt};
use lapin::acker::Acker;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicNackOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::Connection;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::Readiness;
use crate::broker::{self, Outgoing, PublishError, Publisher};
use crate::config::Settings;
use crate::delivery::task::DeliveryTask;
use crate::delivery::worker::{self, AttemptPermit, Deliverer, Origin};
use crate::envelope::{self, Event, Inbound};
use crate::metrics::Metrics;
use crate::store::events::{self, FanOut, Recorded};
use crate::subscriptions::Subscriptions;
use crate::telemetry;
use crate::topology::{self, header_text, Topology};

pub struct Ingestor {
    pub settings: Arc<Settings>,
    pub topology: Topology,
    pub subscriptions: Arc<Subscriptions>,
    pub metrics: Arc<Metrics>,
    pub pool: sqlx::PgPool,
    /// Present with `ingest.deliver_first_attempt`: first attempts are made here, each
    /// holding one of the deliverer's attempt permits.
    pub direct: Option<Arc<Deliverer>>,
}

/// Why a batch was not acknowledged; its messages will be redelivered.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("stopped before the batch was recorded: {0}")]
    Stopped(sqlx::Error),
}

/// Runs `ingest.consumers` consumers until `shutdown`, each reconnecting on its own.
pub async fn run(ingestor: Arc<Ingestor>, readiness: Readiness, shutdown: CancellationToken) {
    let consumers = (0..ingestor.settings.ingest.consumers).map(|n| {
        tokio::spawn(run_consumer(
            ingestor.clone(),
            readiness.clone(),
            shutdown.clone(),
            n,
        ))
    });
    futures_util::future::join_all(consumers).await;
}

async fn run_consumer(
    ingestor: Arc<Ingestor>,
    readiness: Readiness,
    shutdown: CancellationToken,
    n: usize,
) {
    let settings = ingestor.settings.clone();
    broker::keep_consuming(
        &settings.amqp,
        &format!("{}-ingest-{n}", settings.topology.prefix),
        &shutdown,
        || readiness.set_ingest(false),
        |connection| {
            let (ingestor, readiness, shutdown) =
                (ingestor.clone(), readiness.clone(), shutdown.clone());
            Box::pin(async move { consume(&ingestor, connection, &readiness, &shutdown).await })
        },
    )
    .await;
}

async fn consume(
    ingestor: &Ingestor,
    connection: &Connection,
    readiness: &Readiness,
    shutdown: &CancellationToken,
) -> Result<(), IngestError> {
    let broker::ConsumerSetup {
        channel,
        mut consumer,
        publisher,
    } = broker::start_consumer(
        connection,
        &ingestor.topology,
        &ingestor.topology.ingest_queue(),
        ingestor.settings.ingest.prefetch,
    )
    .await?;
    readiness.set_ingest(true);
    tracing::info!(queue = %ingestor.topology.ingest_queue(), "ingesting");
    let max_batch = ingestor.settings.ingest.batch_size;
    // First attempts in flight, each holding its message unacknowledged.
    let attempts = TaskTracker::new();
    let result: Result<(), IngestError> = async {
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => delivery,
                    Some(Err(error)) => return Err(error.into()),
                    None => return Err(lapin::Error::InvalidChannelState(lapin::ChannelState::Closed).into()),
                }
            };
            // Whatever else the broker has already handed us joins the batch.
            let mut batch = vec![first];
            while batch.len() < max_batch {
                match consumer.next().now_or_never() {
                    Some(Some(Ok(delivery))) => batch.push(delivery),
                    Some(Some(Err(error))) => return Err(error.into()),
                    _ => break,
                }
            }
            let tasks = fan_out(ingestor, &publisher, &batch, shutdown).await?;
            match &ingestor.direct {
                None => {
                    dispatch(ingestor, &publisher, &tasks).await?;
                    let last = batch.last().expect("batch is not empty").delivery_tag;
                    channel
                        .basic_ack(last, BasicAckOptions { multiple: true })
                        .await?;
                }
                Some(direct) => {
                    let started =
                        start_first_attempts(direct, &publisher, batch, tasks, &attempts, shutdown)
                            .await?;
                    if !started {
                        return Ok(());
                    }
                }
            }
        }
    }
    .await;
    let _ = channel
        .basic_cancel(consumer.tag().as_str(), BasicCancelOptions::default())
        .await;
    worker::drain(&attempts, ingestor.settings.delivery.shutdown_grace).await;
    let _ = channel.close(200, "shutdown").await;
    result
}

/// Spawns the first attempts of a batch's deliveries, each once one of the process's
/// attempt permits is free: a bounded number of attempts exist at once, however
/// large the fan-out. A message with nothing to attempt is acknowledged at
/// once. `false` if shutdown came first: the rest stay unattempted and their messages
/// unacknowledged, to be redelivered.
async fn start_first_attempts(
    direct: &Arc<Deliverer>,
    publisher: &Publisher,
    batch: Vec<Delivery>,
    tasks: Vec<Vec<DeliveryTask>>,
    attempts: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<bool, IngestError> {
    for (message, tasks) in batch.into_iter().zip(tasks) {
        if tasks.is_empty() {
            message.acker.ack(BasicAckOptions::default()).await?;
            continue;
        }
        let unsettled = Arc::new(Unsettled::new(message.acker, &tasks));
        for task in tasks {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => return Ok(false),
                permit = direct.attempt_permit() => permit,
            };
            attempts.spawn(first_attempt(
                direct.clone(),
                publisher.clone(),
                task,
                permit,
                unsettled.clone(),
            ));
        }
    }
    Ok(true)
}

/// An event's message whose first attempts are in flight: the last attempt to finish
/// acknowledges it if every attempt was settled, or returns it to the queue (flagged
/// redelivered, so its deliveries still `pending` are tried again).
struct Unsettled {
    acker: Acker,
    event_id: String,
    attempts_left: AtomicUsize,
    failed: AtomicBool,
}

impl Unsettled {
    fn new(acker: Acker, tasks: &[DeliveryTask]) -> Self {
        Self {
            acker,
            event_id: tasks[0].event_id.clone(),
            attempts_left: AtomicUsize::new(tasks.len()),
            failed: AtomicBool::new(false),
        }
    }

    async fn attempt_finished(&self, settled: bool) {
        if !settled {
            self.failed.store(true, Ordering::Relaxed);
        }
        if self.attempts_left.fetch_sub(1, Ordering::AcqRel) > 1 {
            return;
        }
        let result = if self.failed.load(Ordering::Relaxed) {
            let requeue = BasicNackOptions {
                requeue: true,
                ..Default::default()
            };
            self.acker.nack(requeue).await
        } else {
            self.acker.ack(BasicAckOptions::default()).await
        };
        if let Err(error) = result {
            tracing::warn!(%error, event_id = %self.event_id,
                "cannot settle the event's message; it will be redelivered");
        }
    }
}

/// One delivery's first attempt, holding one of the process's request slots.
async fn first_attempt(
    direct: Arc<Deliverer>,
    publisher: Publisher,
    task: DeliveryTask,
    permit: AttemptPermit,
    message: Arc<Unsettled>,
) {
    let settled = worker::attempt(&direct, &publisher, &task, Origin::Ingest)
        .await
        .is_ok();
    drop(permit);
    message.attempt_finished(settled).await;
}

/// Publishes the tasks to `<prefix>.work` with confirms, then marks their events
/// dispatched.
async fn dispatch(
    ingestor: &Ingestor,
    publisher: &Publisher,
    tasks: &[Vec<DeliveryTask>],
) -> Result<(), IngestError> {
    let work_exchange = ingestor.topology.work_exchange();
    publisher
        .publish_all(
            tasks
                .iter()
                .flatten()
                .map(|t| t.to_work(&work_exchange))
                .collect(),
        )
        .await?;
    // Narrows what a crash right now would republish; if this write is lost, a
    // redelivery republishes the pending tasks (a duplicate, never a loss).
    let dispatched: Vec<&str> = tasks
        .iter()
        .filter_map(|t| t.first().map(|t| t.event_id.as_str()))
        .collect();
    if !dispatched.is_empty() {
        if let Err(error) = events::mark_dispatched(&ingestor.pool, &dispatched).await {
            tracing::warn!(%error, "cannot mark events dispatched");
        }
    }
    Ok(())
}

/// The plain view of an AMQP message that `envelope::parse` reads.
fn inbound(delivery: &Delivery) -> Inbound<'_> {
    let p = &delivery.properties;
    let headers = p
        .headers()
        .as_ref()
        .map(|table| {
            table
                .inner()
                .keys()
                .filter_map(|k| header_text(table, k.as_str()).map(|v| (k.as_str(), v)))
                .collect()
        })
        .unwrap_or_default();
    Inbound {
        body: &delivery.data,
        content_type: p.content_type().as_ref().map(|s| s.as_str()),
        message_id: p.message_id().as_ref().map(|s| s.as_str()),
        type_property: p.kind().as_ref().map(|s| s.as_str()),
        routing_key: delivery.routing_key.as_str(),
        timestamp: *p.timestamp(),
        headers,
    }
}

/// An accepted event and what its message said about tracing and redelivery.
struct Accepted {
    /// Position of its message in the batch.
    index: usize,
    event: Event,
    redelivered: bool,
    traceparent: Option<String>,
}

/// Records one batch: refusals parked, events and deliveries committed. Returns, for
/// each message of the batch, the delivery tasks still to be started.
async fn fan_out(
    ingestor: &Ingestor,
    publisher: &Publisher,
    batch: &[Delivery],
    shutdown: &CancellationToken,
) -> Result<Vec<Vec<DeliveryTask>>, IngestError> {
    let received_at = Utc::now();
    // How late ingest is: when the oldest message of the batch entered the queue.
    if let Some(entered) = batch
        .iter()
        .filter_map(|d| topology::entered_queue_at(&d.properties))
        .min()
    {
        ingestor
            .metrics
            .queue_taken_enqueued_at
            .with_label_values(&["ingest"])
            .set(entered);
    }
    let max_body = ingestor.settings.ingest.max_body_bytes;
    let invalid_queue = ingestor.topology.invalid_queue();
    let mut accepted = Vec::with_capacity(batch.len());
    let mut parked = Vec::new();
    for (index, delivery) in batch.iter().enumerate() {
        let message = inbound(delivery);
        match envelope::parse(&message, max_body, received_at) {
            Ok(event) => {
                let span = tracing::info_span!("ingest", event_id = %event.id, event_type = %event.event_type);
                let parent = message
                    .headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("traceparent"))
                    .map(|(_, v)| v.as_str());
                let traceparent = Some(telemetry::link(&span, parent));
                accepted.push(Accepted {
                    index,
                    event,
                    redelivered: delivery.redelivered,
                    traceparent,
                });
            }
            Err(rejection) => {
                tracing::warn!(reason = rejection.reason.as_str(), error = %rejection.detail,
                    exchange = %delivery.exchange, routing_key = %delivery.routing_key,
                    "message refused; parked in {invalid_queue}");
                parked.push((delivery, rejection));
            }
        }
    }

    if !parked.is_empty() {
        let mut messages = Vec::with_capacity(parked.len());
        for (delivery, rejection) in &parked {
            let mut headers = error_headers(
                delivery.properties.headers().clone(),
                rejection.reason.as_str(),
                &rejection.detail,
            );
            headers.insert("x-herald-exchange".into(), text(delivery.exchange.as_str()));
            headers.insert(
                "x-herald-routing-key".into(),
                text(delivery.routing_key.as_str()),
            );
            let mut properties = delivery
                .properties
                .clone()
                .with_delivery_mode(2)
                .with_headers(headers);
            if properties.timestamp().is_none() {
                // So an operator looking at the parked message sees when it came.
                properties = properties.with_timestamp(received_at.timestamp() as u64);
            }
            messages.push(Outgoing {
                exchange: "",
                routing_key: &invalid_queue,
                body: &delivery.data,
                properties,
            });
        }
        publisher.publish_all(messages).await?;
        for (_, rejection) in &parked {
            ingestor
                .metrics
                .parked
                .with_label_values(&[rejection.reason.as_str()])
                .inc();
        }
    }

    // The same id twice in one batch is one event.
    let mut seen = HashSet::with_capacity(accepted.len());
    accepted.retain(|a| {
        let first = seen.insert(a.event.id.clone());
        if !first {
            ingestor.metrics.events_duplicate.inc();
        }
        first
    });
    let mut tasks: Vec<Vec<DeliveryTask>> = batch.iter().map(|_| Vec::new()).collect();
    if accepted.is_empty() {
        return Ok(tasks);
    }

    let snapshot = ingestor.subscriptions.snapshot();
    let fan_outs: Vec<FanOut> = accepted
        .iter()
        .map(|a| FanOut {
            event: &a.event,
            endpoints: snapshot
                .matching(a.event.event_type.as_str(), a.event.tenant_id.as_deref())
                .iter()
                .map(|e| e.id)
                .collect(),
            redelivered: a.redelivered,
        })
        .collect();

    let recorded = record_with_retry(ingestor, &fan_outs, received_at, shutdown).await?;

    let received_at_ms = received_at.timestamp_millis();
    for ((a, fan_out), result) in accepted.iter().zip(&fan_outs).zip(recorded) {
        let deliveries = match result {
            Recorded::New(deliveries) => {
                ingestor.metrics.events_ingested.inc();
                ingestor
                    .metrics
                    .fanout_size
                    .observe(fan_out.endpoints.len() as f64);
                if fan_out.endpoints.is_empty() {
                    ingestor.metrics.events_unmatched.inc();
                }
                deliveries
            }
            Recorded::Duplicate(pending) => {
                ingestor.metrics.events_duplicate.inc();
                tracing::debug!(event_id = %a.event.id, republished = pending.len(), "event already recorded");
                pending
            }
        };
        if deliveries.is_empty() {
            continue;
        }
        let body = bytes::Bytes::from(a.event.webhook_body());
        for d in deliveries {
            tasks[a.index].push(DeliveryTask {
                delivery_id: d.delivery_id,
                event_id: a.event.id.clone(),
                endpoint_id: d.endpoint_id,
                attempt: 1,
                schedule_start: 1,
                received_at_ms,
                not_before_ms: None,
                turn: None,
                deferrals: 0,
                traceparent: a.traceparent.clone(),
                body: body.clone(),
            });
        }
    }
    Ok(tasks)
}

/// Retries the transaction while the database is away; gives up only on shutdown, and
/// then the batch is left unacknowledged for redelivery.
async fn record_with_retry(
    ingestor: &Ingestor,
    fan_outs: &[FanOut<'_>],
    received_at: chrono::DateTime<Utc>,
    shutdown: &CancellationToken,
) -> Result<Vec<Recorded>, IngestError> {
    let mut delay = Duration::from_millis(100);
    loop {
        match events::record_fan_out(&ingestor.pool, fan_outs, received_at).await {
            Ok(recorded) => return Ok(recorded),
            Err(error) if shutdown.is_cancelled() => return Err(IngestError::Stopped(error)),
            Err(error) => {
                tracing::warn!(%error, events = fan_outs.len(), retry_in = ?delay,
                    "cannot record events; holding the batch until the database is back");
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// A message's headers plus `x-herald-error` ("reason: detail") and `x-herald-reason`.
pub fn error_headers(headers: Option<FieldTable>, reason: &str, detail: &str) -> FieldTable {
    let mut headers = headers.unwrap_or_default();
    headers.insert(
        "x-herald-error".into(),
        text(&format!("{reason}: {detail}")),
    );
    headers.insert("x-herald-reason".into(), text(reason));
    headers
}
