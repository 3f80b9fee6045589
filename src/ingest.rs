//! The ingest role: consume published events, record them and fan each out into one
//! delivery task per subscribed endpoint.
//!
//! Per batch of messages ([`fan_out`]): read each (refusals are parked in
//! `<prefix>.invalid`), match against the in-memory subscriptions (type patterns, then
//! the payload filters of the endpoints that carry one), record events and
//! deliveries in one transaction (idempotent on the event's tenant and id; an event
//! whose content PostgreSQL refuses is isolated and parked, the rest recorded). Then, with `ingest.deliver_first_attempt`
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

use chrono::{DateTime, Utc};
use lapin::acker::Acker;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::Connection;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backoff::Backoff;
use crate::broker::consumer::{keep_consuming, Consuming};
use crate::broker::headers::{encoded_size, entered_queue_at, header_text};
use crate::broker::park::{park, Refused};
use crate::broker::parked::origin;
use crate::broker::{PublishError, Publisher};
use crate::config::Settings;
use crate::delivery::engine::{self, AttemptPermit, Deliverer, Origin};
use crate::delivery::task::DeliveryTask;
use crate::envelope::{self, Event, Inbound, ParkReason};
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::store::deliveries::NewRow;
use crate::store::events::{self, tenant_key, FanOut, Recorded, Rows};
use crate::store::ops::PARKED;
use crate::store::{self};
use crate::subscriptions::Subscriptions;
use crate::telemetry;
use crate::topology::Topology;

pub struct Ingestor {
    pub settings: Arc<Settings>,
    pub topology: Topology,
    pub subscriptions: Arc<Subscriptions>,
    pub metrics: Arc<Metrics>,
    pub pool: sqlx::PgPool,
    /// Which slot of the idempotency ring takes new event keys (store::retention).
    pub event_keys: store::retention::EventKeys,
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

/// Which queue a consumer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queue {
    /// `<prefix>.ingest`: every event, the keyed ones excepted (they come through
    /// `<prefix>.ordered` as well, and are recorded from there).
    Ingest(usize),
    /// `<prefix>.ordered`: the keyed events, read by one consumer of the deployment at
    /// a time, so in publish order; their tasks go to the work queue.
    Ordered,
}

/// Runs `ingest.consumers` consumers of `<prefix>.ingest` and one of
/// `<prefix>.ordered` until `shutdown`, each reconnecting on its own.
pub async fn run(ingestor: Arc<Ingestor>, readiness: Readiness, shutdown: CancellationToken) {
    let queues = (0..ingestor.settings.ingest.consumers)
        .map(Queue::Ingest)
        .chain([Queue::Ordered]);
    let consumers = queues.map(|queue| {
        tokio::spawn(run_consumer(
            ingestor.clone(),
            readiness.clone(),
            shutdown.clone(),
            queue,
        ))
    });
    futures_util::future::join_all(consumers).await;
}

async fn run_consumer(
    ingestor: Arc<Ingestor>,
    readiness: Readiness,
    shutdown: CancellationToken,
    queue: Queue,
) {
    let settings = ingestor.settings.clone();
    let name = match queue {
        Queue::Ingest(n) => format!("{}-ingest-{n}", settings.topology.prefix),
        Queue::Ordered => format!("{}-ingest-ordered", settings.topology.prefix),
    };
    keep_consuming(
        &settings.amqp,
        &name,
        crate::broker::Frames::Publishers,
        &shutdown,
        || readiness.set_ingest(false),
        |connection| {
            let (ingestor, readiness, shutdown) =
                (ingestor.clone(), readiness.clone(), shutdown.clone());
            Box::pin(
                async move { consume(&ingestor, connection, queue, &readiness, &shutdown).await },
            )
        },
    )
    .await;
}

async fn consume(
    ingestor: &Ingestor,
    connection: &Connection,
    which: Queue,
    readiness: &Readiness,
    shutdown: &CancellationToken,
) -> Result<(), IngestError> {
    let queue = match which {
        Queue::Ingest(_) => ingestor.topology.ingest_queue(),
        Queue::Ordered => ingestor.topology.ordered_queue(),
    };
    let mut consuming = Consuming::start(
        connection,
        &ingestor.topology,
        &queue,
        ingestor.settings.ingest.prefetch,
    )
    .await?;
    readiness.set_ingest(true);
    tracing::info!(%queue, "ingesting");
    let result = consume_batches(ingestor, &mut consuming, which, shutdown).await;
    // First attempts in flight each hold their message unacknowledged: let them finish.
    consuming
        .finish(ingestor.settings.delivery.shutdown_grace)
        .await;
    result
}

/// Takes batches — a message and whatever else the broker has already handed over —
/// and fans each out, until shutdown or a failure.
async fn consume_batches(
    ingestor: &Ingestor,
    consuming: &mut Consuming,
    which: Queue,
    shutdown: &CancellationToken,
) -> Result<(), IngestError> {
    let max_batch = ingestor.settings.ingest.batch_size;
    loop {
        let Some(first) = consuming.next(shutdown).await? else {
            return Ok(());
        };
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match consuming.ready()? {
                Some(delivery) => batch.push(delivery),
                None => break,
            }
        }
        let publisher = consuming.publisher.clone();
        let planned = fan_out(ingestor, &publisher, &batch, which, shutdown).await?;
        // The ordered consumer's tasks go through the work queue: a key's head is
        // sent by whichever deliverer takes it, the rest wait for their turn.
        let direct = ingestor.direct.as_ref().filter(|_| which != Queue::Ordered);
        match direct {
            None => {
                dispatch(ingestor, &publisher, &planned).await?;
                let last = batch.last().expect("batch is not empty");
                last.acker.ack(BasicAckOptions { multiple: true }).await?;
            }
            Some(direct) => {
                let started = start_first_attempts(
                    direct,
                    &publisher,
                    batch,
                    planned,
                    &consuming.in_flight,
                    shutdown,
                )
                .await?;
                if !started {
                    return Ok(());
                }
            }
        }
    }
}

/// What one message of a batch came to: its event's key when it was accepted, and the
/// delivery tasks still to be started.
#[derive(Default)]
struct Planned {
    /// The event's tenant key and id, and when it was recorded (this batch's time; None
    /// for a duplicate, recorded earlier, which is then not marked dispatched again).
    event: Option<(String, String, Option<DateTime<Utc>>)>,
    tasks: Vec<DeliveryTask>,
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
    planned: Vec<Planned>,
    attempts: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<bool, IngestError> {
    for (message, Planned { tasks, .. }) in batch.into_iter().zip(planned) {
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

/// How long a first attempt may take before its delivery's row is written `pending`
/// (the records, the API and the console show it while it lasts). One that ends sooner
/// writes the row once, with its outcome.
const SHOWN_PENDING_AFTER: Duration = Duration::from_secs(1);

/// One delivery's first attempt, holding one of the process's attempt permits.
async fn first_attempt(
    direct: Arc<Deliverer>,
    publisher: Publisher,
    task: DeliveryTask,
    permit: AttemptPermit,
    message: Arc<Unsettled>,
) {
    // A slow attempt: its delivery is shown `pending` while it lasts. Written beside
    // the attempt, which goes on meanwhile (suspended, it could hold a transaction open).
    let show_pending = async {
        tokio::time::sleep(SHOWN_PENDING_AFTER).await;
        if let Err(error) = direct.write_row(&task).await {
            tracing::warn!(%error, delivery_id = %task.delivery_id,
                "cannot record the delivery as pending; its outcome will be");
        }
        std::future::pending::<std::convert::Infallible>().await
    };
    let settled = tokio::select! {
        result = engine::attempt(&direct, &publisher, &task, Origin::Ingest) => result.is_ok(),
        never = show_pending => match never {},
    };
    drop(permit);
    message.attempt_finished(settled).await;
}

/// Publishes the tasks to `<prefix>.work` with confirms, then marks their events
/// dispatched.
async fn dispatch(
    ingestor: &Ingestor,
    publisher: &Publisher,
    planned: &[Planned],
) -> Result<(), IngestError> {
    let work_exchange = ingestor.topology.work_exchange();
    publisher
        .publish_all(
            planned
                .iter()
                .flat_map(|p| &p.tasks)
                .map(|t| t.to_work(&work_exchange))
                .collect(),
        )
        .await?;
    // Narrows what a crash right now would republish; if this write is lost, a
    // redelivery republishes the pending tasks (a duplicate, never a loss).
    let dispatched: Vec<(&str, &str, DateTime<Utc>)> = planned
        .iter()
        .filter(|p| !p.tasks.is_empty())
        .filter_map(|p| p.event.as_ref())
        .filter_map(|(tenant, id, at)| Some((tenant.as_str(), id.as_str(), (*at)?)))
        .collect();
    if !dispatched.is_empty() {
        if let Err(error) = events::mark_dispatched(&ingestor.pool, &dispatched).await {
            tracing::warn!(%error, "cannot mark events dispatched");
        }
    }
    Ok(())
}

/// An accepted event and what its message said about tracing and redelivery.
struct Accepted {
    /// Position of its message in the batch.
    index: usize,
    event: Event,
    /// Its ordering key, read by the ordered consumer only.
    ordering_key: Option<String>,
    redelivered: bool,
    traceparent: Option<String>,
}

/// Fans one batch out: refusals parked, events and deliveries committed. Returns, for
/// each message of the batch, its event and the delivery tasks still to be started.
async fn fan_out(
    ingestor: &Ingestor,
    publisher: &Publisher,
    batch: &[Delivery],
    which: Queue,
    shutdown: &CancellationToken,
) -> Result<Vec<Planned>, IngestError> {
    let received_at = Utc::now();
    note_lag(ingestor, batch);
    let (accepted, refused) = read(ingestor, batch, which, received_at);
    park_refused(ingestor, publisher, &refused, received_at).await?;
    let accepted = without_repeats(ingestor, accepted);
    let mut planned: Vec<Planned> = batch.iter().map(|_| Planned::default()).collect();
    if accepted.is_empty() {
        return Ok(planned);
    }

    let snapshot = ingestor.subscriptions.snapshot();
    let mut filtered_out = Vec::with_capacity(accepted.len());
    let fan_outs: Vec<FanOut> = accepted
        .iter()
        .map(|a| {
            let receivers = snapshot.receiving(&a.event.subject());
            filtered_out.push(receivers.filtered_out);
            let ordered = match &a.ordering_key {
                Some(_) => receivers
                    .endpoints
                    .iter()
                    .filter(|e| e.ordering)
                    .map(|e| e.id)
                    .collect(),
                None => Vec::new(),
            };
            FanOut {
                event: &a.event,
                endpoints: receivers.endpoints.iter().map(|e| e.id).collect(),
                redelivered: a.redelivered,
                ordering_key: a.ordering_key.as_deref(),
                ordered,
            }
        })
        .collect();
    // First attempts made here write their deliveries' rows with their outcome.
    let rows = match (&ingestor.direct, which) {
        (Some(_), Queue::Ingest(_)) => Rows::ByFirstOutcome,
        _ => Rows::Now,
    };
    let recorded = record(ingestor, &fan_outs, received_at, rows, shutdown).await?;

    let mut refused = Vec::new();
    let outcomes = accepted.iter().zip(&fan_outs).zip(filtered_out);
    for (((a, fan_out), filtered_out), result) in outcomes.zip(recorded) {
        match result {
            Ok(recorded) => {
                planned[a.index] = plan(ingestor, a, fan_out, filtered_out, recorded, received_at);
            }
            Err(error) => {
                tracing::warn!(event_id = %a.event.id, %error,
                    "the database refused the event; parking its message");
                refused.push(Refused {
                    message: &batch[a.index],
                    reason: ParkReason::RefusedByDatabase.as_str(),
                    detail: error,
                });
            }
        }
    }
    park_refused(ingestor, publisher, &refused, received_at).await?;
    Ok(planned)
}

/// How late ingest is: when the oldest message of the batch entered the queue.
fn note_lag(ingestor: &Ingestor, batch: &[Delivery]) {
    if let Some(entered) = batch
        .iter()
        .filter_map(|d| entered_queue_at(&d.properties))
        .min()
    {
        ingestor
            .metrics
            .queue_taken_enqueued_at
            .with_label_values(&["ingest"])
            .set(entered);
    }
}

/// Parses every message of the batch: the events accepted, and the messages refused.
/// A keyed message read from `<prefix>.ingest` is neither: its copy in
/// `<prefix>.ordered` is recorded instead, and this one is acknowledged as it is.
fn read<'b>(
    ingestor: &Ingestor,
    batch: &'b [Delivery],
    which: Queue,
    received_at: DateTime<Utc>,
) -> (Vec<Accepted>, Vec<Refused<'b>>) {
    let max_body = ingestor.settings.ingest.max_body_bytes;
    let mut accepted = Vec::with_capacity(batch.len());
    let mut refused = Vec::new();
    for (index, delivery) in batch.iter().enumerate() {
        if which != Queue::Ordered && routed_to_ordered(delivery) {
            continue;
        }
        // A reingested message (`herald invalid reingest`) carries its origin.
        let (exchange, routing_key) = origin(delivery);
        let message = inbound(delivery, &routing_key);
        let parsed = envelope::parse(&message, max_body, received_at).and_then(|event| {
            let key = match which {
                Queue::Ordered => envelope::ordering_key(&message)?,
                Queue::Ingest(_) => None,
            };
            Ok((event, key))
        });
        match parsed {
            Ok((event, ordering_key)) => {
                if event.key_in_body_only {
                    ingestor.metrics.events_key_not_routed.inc();
                    tracing::warn!(event_id = %event.id,
                        "partitionkey in the CloudEvent's body only; delivered unordered \
                         (send it as the header cloudEvents:partitionkey or x-ordering-key)");
                }
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
                    ordering_key,
                    redelivered: delivery.redelivered,
                    traceparent,
                });
            }
            Err(rejection) => {
                tracing::warn!(reason = rejection.reason.as_str(), error = %rejection.detail,
                    %exchange, %routing_key,
                    "message refused; parking it");
                refused.push(Refused {
                    message: delivery,
                    reason: rejection.reason.as_str(),
                    detail: rejection.detail,
                });
            }
        }
    }
    (accepted, refused)
}

/// Whether the broker also routed this message to `<prefix>.ordered`: it came through
/// a publishers' exchange (not reingested through the default one) with one of the
/// ordering-key headers, by the exact name the headers exchange matches.
fn routed_to_ordered(delivery: &Delivery) -> bool {
    !delivery.exchange.as_str().is_empty()
        && delivery.properties.headers().as_ref().is_some_and(|h| {
            envelope::ORDERING_KEY_HEADERS
                .iter()
                .any(|name| h.inner().contains_key(*name))
        })
}

/// The plain view of an AMQP message that `envelope::parse` reads, published with
/// `routing_key`.
fn inbound<'a>(delivery: &'a Delivery, routing_key: &'a str) -> Inbound<'a> {
    let p = &delivery.properties;
    let (headers, header_bytes) = p
        .headers()
        .as_ref()
        .map(|table| {
            let values = table
                .inner()
                .keys()
                .filter_map(|k| header_text(table, k.as_str()).map(|v| (k.as_str(), v)))
                .collect();
            (values, encoded_size(table))
        })
        .unwrap_or_default();
    Inbound {
        body: &delivery.data,
        content_type: p.content_type().as_ref().map(|s| s.as_str()),
        message_id: p.message_id().as_ref().map(|s| s.as_str()),
        type_property: p.kind().as_ref().map(|s| s.as_str()),
        routing_key,
        timestamp: *p.timestamp(),
        headers,
        header_bytes,
    }
}

/// Parks refused messages in `<prefix>.invalid` (confirmed) and counts them.
async fn park_refused(
    ingestor: &Ingestor,
    publisher: &Publisher,
    refused: &[Refused<'_>],
    received_at: DateTime<Utc>,
) -> Result<(), IngestError> {
    let queue = ingestor.topology.invalid_queue();
    let ids = park(publisher, &queue, refused, received_at.timestamp() as u64).await?;
    for r in refused {
        ingestor.metrics.parked.with_label_values(&[r.reason]).inc();
    }
    report_parked(ingestor, refused, &ids).await;
    Ok(())
}

/// Records `herald.message.parked` for each parked message (with its `parked_id`, to
/// reingest or purge it by), in one statement; best effort (the messages are parked
/// already). A message from Herald's own `<prefix>.ops`
/// exchange causes none: no operational event may cause another.
async fn report_parked(ingestor: &Ingestor, refused: &[Refused<'_>], ids: &[uuid::Uuid]) {
    let ops_exchange = ingestor.topology.ops_exchange();
    let events: Vec<serde_json::Value> = refused
        .iter()
        .zip(ids)
        .map(|(r, id)| (r, id, origin(r.message)))
        .filter(|(_, _, (exchange, _))| *exchange != ops_exchange)
        .map(|(r, id, (exchange, routing_key))| {
            serde_json::json!({
                "parked_id": id,
                "reason": r.reason,
                "detail": r.detail,
                "exchange": exchange,
                "routing_key": routing_key,
                "message_id": r.message.properties.message_id().as_ref().map(|m| m.as_str()),
                "queue": ingestor.topology.invalid_queue(),
            })
        })
        .collect();
    if events.is_empty() {
        return;
    }
    if let Err(error) = crate::store::ops::record_many(&ingestor.pool, PARKED, events).await {
        tracing::warn!(%error, "operational events for parked messages not recorded");
    }
}

/// The same event (tenant and id) twice in one batch is one event.
fn without_repeats(ingestor: &Ingestor, accepted: Vec<Accepted>) -> Vec<Accepted> {
    let first: Vec<bool> = {
        let mut seen = HashSet::with_capacity(accepted.len());
        accepted
            .iter()
            .map(|a| seen.insert((tenant_key(&a.event), a.event.id.as_str())))
            .collect()
    };
    let repeats = first.iter().filter(|first| !**first).count();
    ingestor.metrics.events_duplicate.inc_by(repeats as u64);
    accepted
        .into_iter()
        .zip(first)
        .filter_map(|(a, first)| first.then_some(a))
        .collect()
}

/// Records the batch; an event whose content PostgreSQL refuses is isolated (see
/// [`store::write_isolating`]) and comes back as the database's reason, every other
/// event is recorded.
async fn record(
    ingestor: &Ingestor,
    fan_outs: &[FanOut<'_>],
    received_at: DateTime<Utc>,
    rows: Rows,
    shutdown: &CancellationToken,
) -> Result<Vec<Result<Recorded, String>>, IngestError> {
    let recorded = store::write_isolating(fan_outs.len(), |part| {
        record_while_away(ingestor, &fan_outs[part], received_at, rows, shutdown)
    })
    .await
    .map_err(IngestError::Stopped)?;
    Ok(recorded
        .into_iter()
        .map(|r| r.map_err(|refused| refused.to_string()))
        .collect())
}

/// Records `fan_outs` in one transaction, retrying while the database is away; a
/// refusal of their content (see [`store::refused_content`]) is returned, and so is any
/// error once shutdown has come (the batch is then left unacknowledged for redelivery).
async fn record_while_away(
    ingestor: &Ingestor,
    fan_outs: &[FanOut<'_>],
    received_at: DateTime<Utc>,
    rows: Rows,
    shutdown: &CancellationToken,
) -> Result<Vec<Recorded>, sqlx::Error> {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let recording = events::record_fan_out(
            &ingestor.pool,
            &ingestor.event_keys,
            fan_outs,
            received_at,
            rows,
        );
        match recording.await {
            Ok(recorded) => return Ok(recorded),
            Err(error) if store::missing_partition(&error) => {
                tracing::warn!(%error, %received_at, "no partition for this day yet; creating it");
                if let Err(error) =
                    store::retention::create_partitions(&ingestor.pool, received_at, received_at)
                        .await
                {
                    tracing::warn!(%error, "cannot create the day's partitions");
                    backoff.wait(shutdown).await;
                }
            }
            Err(error) if store::refused_content(&error) || shutdown.is_cancelled() => {
                return Err(error)
            }
            Err(error) => {
                tracing::warn!(%error, events = fan_outs.len(), retry_in = ?backoff.next_delay(),
                    "cannot record events; holding the batch until the database is back");
                backoff.wait(shutdown).await;
            }
        }
    }
}

/// The tasks an event's recording calls for, counted in the metrics; `filtered_out`
/// endpoints of its type refused it by their payload filter.
fn plan(
    ingestor: &Ingestor,
    a: &Accepted,
    fan_out: &FanOut<'_>,
    filtered_out: usize,
    recorded: Recorded,
    received_at: DateTime<Utc>,
) -> Planned {
    let m = &ingestor.metrics;
    let new = matches!(recorded, Recorded::New(_));
    let deliveries = match recorded {
        Recorded::New(deliveries) => {
            m.events_ingested.inc();
            m.deliveries_filtered.inc_by(filtered_out as u64);
            m.fanout_size.observe(fan_out.endpoints.len() as f64);
            if fan_out.endpoints.is_empty() {
                m.events_unmatched.inc();
            }
            deliveries
        }
        Recorded::Duplicate(pending) => {
            m.events_duplicate.inc();
            tracing::debug!(event_id = %a.event.id, republished = pending.len(), "event already recorded");
            pending
        }
    };
    let event = Some((
        tenant_key(&a.event).to_string(),
        a.event.id.clone(),
        new.then_some(received_at),
    ));
    if deliveries.is_empty() {
        return Planned {
            event,
            tasks: Vec::new(),
        };
    }
    let body = bytes::Bytes::from(a.event.webhook_body());
    let received_at_ms = received_at.timestamp_millis();
    let tenant = tenant_key(&a.event);
    let tasks = deliveries
        .into_iter()
        .map(|d| DeliveryTask {
            first_write: (!d.written).then(|| {
                Arc::new(NewRow {
                    tenant_key: tenant.to_string(),
                    event_id: a.event.id.clone(),
                    event_type: a.event.event_type.to_string(),
                    endpoint_id: d.endpoint_id,
                    created_at: d.created_at,
                })
            }),
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
            ordering_key: d.ordering_key,
            body: body.clone(),
        })
        .collect();
    Planned { event, tasks }
}
