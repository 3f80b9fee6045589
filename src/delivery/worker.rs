//! The deliver role: consume delivery tasks, sign and POST each, record the attempt,
//! then route the task — done, to a delay queue, or to the dead-letter queue — and
//! only then acknowledge it. A message may carry several tasks put off together
//! (see [`super::put_off`]); it is acknowledged once all of them are settled.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicNackOptions};
use lapin::Connection;
use prometheus::IntGauge;
use reqwest::header::HeaderMap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::client::{header, Response, WebhookClient};
use super::put_off::{PutOffError, PutOffs};
use super::recorder::{RecordError, Recorder};
use super::retry::{parse_retry_after, RetryPolicy};
use super::task::{unpack, DeliveryTask};
use super::throttle::{busy_delay, defer_tier, Admission, Throttle};
use crate::app::Readiness;
use crate::broker::{self, Outgoing, PublishError, Publisher};
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::signing::signature_header;
use crate::store::deliveries::{AttemptRecord, Outcome, Status};
use crate::store::endpoints::{self, ActiveEndpoint};
use crate::subscriptions::{Lookup, Subscriptions};
use crate::telemetry;
use crate::topology::{self, Topology};

/// Most tasks of one bulk message in progress at once (each holds an attempt's state).
const TASKS_AT_ONCE: usize = 64;

/// Pause between the last acknowledgement and closing the channel on shutdown.
const SETTLE_PAUSE: Duration = Duration::from_millis(300);

/// Everything a delivery needs, shared by all of a process's deliveries.
pub struct Deliverer {
    pub settings: Arc<Settings>,
    pub topology: Topology,
    pub retry: RetryPolicy,
    pub client: WebhookClient,
    pub subscriptions: Arc<Subscriptions>,
    pub recorder: Recorder,
    pub throttle: Throttle,
    /// The process's `delivery.concurrency` request slots, each held for one HTTP
    /// request only (not while its outcome is recorded).
    pub requests: Semaphore,
    /// The process's attempts in progress (requests, outcomes being recorded, put-offs
    /// being confirmed), [`crate::config::DeliverySettings::attempts_in_progress`] at
    /// most: first attempts and work-queue tasks alike.
    pub attempts: Arc<Semaphore>,
    pub put_offs: PutOffs,
    pub metrics: Arc<Metrics>,
    pub pool: sqlx::PgPool,
}

impl Deliverer {
    /// Waits for one of the process's attempt permits; counted in
    /// `herald_attempts_in_progress` while held.
    pub async fn attempt_permit(&self) -> AttemptPermit {
        let permit = self
            .attempts
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        self.metrics.attempts_in_progress.inc();
        AttemptPermit {
            _permit: permit,
            gauge: self.metrics.attempts_in_progress.clone(),
        }
    }
}

/// One attempt's place among the process's attempts in progress.
pub struct AttemptPermit {
    _permit: OwnedSemaphorePermit,
    gauge: IntGauge,
}

impl Drop for AttemptPermit {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Why a task was not settled; it will be tried again (see [`Origin`]).
#[derive(Debug, thiserror::Error)]
pub enum Unsettled {
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    PutOff(#[from] PutOffError),
}

/// Where a task came from, which decides the order of the writes after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A message of `<prefix>.work`: if settling fails, the task itself comes back.
    /// The outcome is recorded first, then the retry or dead letter is published.
    WorkQueue,
    /// A first attempt made by the ingest role: if settling fails, the event's message
    /// comes back and only deliveries still `pending` are tried again. The retry or
    /// dead letter is published first, then the outcome recorded, so a delivery is never
    /// left `retrying` without a task to retry it.
    Ingest,
}

/// Runs the deliver role until `shutdown`, reconnecting whenever the broker goes away.
pub async fn run(deliverer: Arc<Deliverer>, readiness: Readiness, shutdown: CancellationToken) {
    let settings = deliverer.settings.clone();
    broker::keep_consuming(
        &settings.amqp,
        &format!("{}-deliver", settings.topology.prefix),
        &shutdown,
        || readiness.set_deliver(false),
        |connection| {
            let (deliverer, readiness, shutdown) =
                (deliverer.clone(), readiness.clone(), shutdown.clone());
            Box::pin(async move { consume(&deliverer, connection, &readiness, &shutdown).await })
        },
    )
    .await;
}

async fn consume(
    deliverer: &Arc<Deliverer>,
    connection: &Connection,
    readiness: &Readiness,
    shutdown: &CancellationToken,
) -> lapin::Result<()> {
    // The broker hands out no more tasks than the process keeps in progress at once:
    // requests in flight (`delivery.concurrency`) and outcomes being recorded.
    let broker::ConsumerSetup {
        channel,
        mut consumer,
        publisher,
    } = broker::start_consumer(
        connection,
        &deliverer.topology,
        &deliverer.topology.work_queue(),
        u16::try_from(deliverer.settings.delivery.attempts_in_progress()).unwrap_or(u16::MAX),
    )
    .await?;
    readiness.set_deliver(true);
    tracing::info!(queue = %deliverer.topology.work_queue(), "delivering");
    let tracker = TaskTracker::new();
    let result = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    let deliverer = deliverer.clone();
                    let publisher = publisher.clone();
                    tracker.spawn(async move { settle_message(&deliverer, &publisher, delivery).await });
                }
                Some(Err(error)) => break Err(error),
                None => break Err(lapin::Error::InvalidChannelState(lapin::ChannelState::Closed)),
            }
        }
    };
    readiness.set_deliver(false);
    // Take no new tasks; let those in flight finish within the grace period. Whatever
    // is unacknowledged when the channel closes goes back to the queue.
    let _ = channel
        .basic_cancel(consumer.tag().as_str(), BasicCancelOptions::default())
        .await;
    drain(&tracker, deliverer.settings.delivery.shutdown_grace).await;
    let _ = channel.close(200, "done").await;
    result
}

/// Lets the deliveries in flight finish within `grace`, then pauses for their
/// acknowledgements to settle. Call before closing the channel they ack on.
pub async fn drain(tracker: &TaskTracker, grace: Duration) {
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            unfinished = tracker.len(),
            ?grace,
            "deliveries still in flight after the grace period; they will be redelivered"
        );
    }
    // RabbitMQ applies a quorum queue's acknowledgements asynchronously: closing the
    // channel right after the last ack can let the broker return just-acknowledged
    // messages to the queue (seen as duplicate sends after a graceful stop). A short
    // pause lets the acks settle first.
    tokio::time::sleep(SETTLE_PAUSE).await;
}

/// Settles one message from the work queue — one task, or several put off together —
/// ack when every task is done, nack (requeue) otherwise.
async fn settle_message(deliverer: &Deliverer, publisher: &Publisher, delivery: Delivery) {
    if let Some(entered) = topology::entered_queue_at(&delivery.properties) {
        deliverer
            .metrics
            .queue_taken_enqueued_at
            .with_label_values(&["work"])
            .set(entered);
    }
    let acker = delivery.acker.clone();
    let tasks = match unpack(&delivery.properties, delivery.data.into()) {
        Ok(tasks) => tasks,
        Err(error) => {
            // Not ours, or damaged: park it where an SRE sees it rather than retry forever.
            tracing::error!(%error, "malformed delivery task; parking it");
            let parked = publisher
                .publish(Outgoing {
                    exchange: "",
                    routing_key: &deliverer.topology.invalid_queue(),
                    body: &[],
                    properties: lapin::BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_headers(crate::ingest::error_headers(
                            delivery.properties.headers().clone(),
                            "malformed_task",
                            &error.to_string(),
                        )),
                })
                .await;
            let _ = match parked {
                Ok(()) => acker.ack(BasicAckOptions::default()).await,
                Err(_) => acker.nack(requeue()).await,
            };
            return;
        }
    };
    let settled = match tasks.as_slice() {
        [task] => {
            let _permit = deliverer.attempt_permit().await;
            attempt(deliverer, publisher, task, Origin::WorkQueue)
                .await
                .is_ok()
        }
        // Put off together: each goes on (or is put off again) on its own, a bounded
        // number at a time; the message is done when all of them are. If one fails, all
        // come back (at least once).
        _ => attempt_all(deliverer, publisher, &tasks).await,
    };
    if settled {
        if let Err(error) = acker.ack(BasicAckOptions::default()).await {
            tracing::warn!(%error, tasks = tasks.len(),
                "ack failed; the task will be redelivered");
        }
    } else {
        let _ = acker.nack(requeue()).await;
    }
}

/// Attempts every task, at most `TASKS_AT_ONCE` at a time and each only once it has
/// one of the process's attempt permits (an attempt's state is allocated only then);
/// `true` if all were settled.
async fn attempt_all(deliverer: &Deliverer, publisher: &Publisher, tasks: &[DeliveryTask]) -> bool {
    let mut waiting = tasks.iter().peekable();
    let mut running = futures_util::stream::FuturesUnordered::new();
    let mut settled = true;
    loop {
        if running.len() < TASKS_AT_ONCE && waiting.peek().is_some() {
            tokio::select! {
                permit = deliverer.attempt_permit() => {
                    let task = waiting.next().expect("peeked");
                    running.push(async move {
                        let result = attempt(deliverer, publisher, task, Origin::WorkQueue).await;
                        drop(permit);
                        result
                    });
                }
                Some(result) = running.next(), if !running.is_empty() => {
                    settled &= result.is_ok();
                }
            }
            continue;
        }
        match running.next().await {
            Some(result) => settled &= result.is_ok(),
            None => return settled,
        }
    }
}

/// Makes one attempt of `task` in its own `deliver` span (a child of the event's
/// trace). `Ok` once everything the attempt caused is durable.
pub async fn attempt(
    deliverer: &Deliverer,
    publisher: &Publisher,
    task: &DeliveryTask,
    origin: Origin,
) -> Result<(), Unsettled> {
    let span = tracing::info_span!("deliver",
        event_id = %task.event_id, endpoint_id = %task.endpoint_id,
        delivery_id = %task.delivery_id, attempt = task.attempt);
    let traceparent = telemetry::link(&span, task.traceparent.as_deref());
    async {
        let result = deliver(deliverer, publisher, task, origin, &traceparent).await;
        if let Err(error) = &result {
            tracing::warn!(%error, "delivery not settled; it will be tried again");
        }
        result
    }
    .instrument(span)
    .await
}

fn requeue() -> BasicNackOptions {
    BasicNackOptions {
        requeue: true,
        ..Default::default()
    }
}

/// One attempt and everything it causes, durable before returning `Ok`.
async fn deliver(
    d: &Deliverer,
    publisher: &Publisher,
    task: &DeliveryTask,
    origin: Origin,
    traceparent: &str,
) -> Result<(), Unsettled> {
    let endpoint = match d.subscriptions.lookup(task.endpoint_id).await? {
        Lookup::Active(endpoint) => endpoint,
        Lookup::Disabled(reason) => {
            let why = format!(
                "endpoint disabled{}",
                reason.map(|r| format!(": {r}")).unwrap_or_default()
            );
            let failure = Failure::new("endpoint_disabled", None, why);
            return dead_letter(d, publisher, task, origin, failure, None).await;
        }
        Lookup::Deleted => {
            let failure = Failure::new("endpoint_deleted", None, "endpoint deleted".into());
            return dead_letter(d, publisher, task, origin, failure, None).await;
        }
    };

    let slot = match d
        .throttle
        .admit(
            endpoint.id,
            endpoint.rate_limit,
            task.not_before_ms,
            task.turn,
        )
        .await
    {
        Admission::Go(slot) => slot,
        Admission::Defer {
            delay,
            not_before_ms,
            turn,
            reason,
        } => return defer(d, publisher, task, delay, (not_before_ms, turn), reason).await,
    };

    let request = d.requests.acquire().await.expect("never closed");
    d.metrics.in_flight.inc();
    let attempt = d
        .client
        .post(
            &endpoint.url,
            request_headers(&endpoint, task, traceparent),
            task.body.clone(),
        )
        .await;
    // The endpoint's and the process's slots are for the request only, not for
    // recording its outcome.
    drop(slot);
    drop(request);
    d.metrics.in_flight.dec();
    d.metrics
        .delivery_duration
        .observe(attempt.duration.as_secs_f64());
    let duration_ms = i32::try_from(attempt.duration.as_millis()).unwrap_or(i32::MAX);
    let now = Utc::now();

    let (status_code, error_class, error_text, retry_after, body) = match attempt.response {
        Response::Answered {
            status,
            retry_after,
            body,
        } => {
            d.metrics
                .http_status
                .with_label_values(&[&status.to_string()])
                .inc();
            let wait = retry_after
                .as_deref()
                .filter(|_| status == 429 || status == 503)
                .and_then(parse_retry_after);
            (
                Some(status),
                None,
                format!("HTTP {status}"),
                wait,
                Some(body),
            )
        }
        Response::Failed { class, message } => {
            d.metrics
                .delivery_errors
                .with_label_values(&[class.as_str()])
                .inc();
            (
                None,
                Some(class.as_str()),
                format!("{}: {message}", class.as_str()),
                None,
                None,
            )
        }
    };
    let record = AttemptRecord {
        attempt: task.attempt as i32,
        status_code: status_code.map(i32::from),
        error: error_class.map(String::from),
        duration_ms,
        response_body: body,
    };
    let mut outcome = Outcome {
        delivery_id: task.delivery_id,
        attempt: Some(record),
        status: Status::Success,
        attempts: task.attempt as i32,
        next_retry_at: None,
        last_status_code: status_code.map(i32::from),
        last_error: None,
        at: now,
    };

    if status_code.is_some_and(|s| (200..300).contains(&s)) {
        d.metrics.deliveries.with_label_values(&["success"]).inc();
        if task.received_at_ms > 0 {
            let latency = (now.timestamp_millis() - task.received_at_ms).max(0) as f64 / 1000.0;
            d.metrics.end_to_end.observe(latency);
        }
        d.recorder.record(outcome).await?;
        tracing::debug!(duration_ms, "delivered");
        return Ok(());
    }

    d.metrics.deliveries.with_label_values(&["failure"]).inc();
    d.metrics.endpoint_failed(task.endpoint_id);
    outcome.last_error = Some(error_text.clone());

    if status_code == Some(410) {
        // The receiver says this endpoint is gone for good: stop sending to it.
        endpoints::set_enabled(
            &d.pool,
            task.endpoint_id,
            false,
            Some("receiver answered 410 Gone"),
        )
        .await?;
        d.metrics.endpoints_disabled.inc();
        tracing::warn!("endpoint answered 410 Gone; disabled");
        let failure = Failure::new("gone", status_code, error_text);
        return dead_letter(d, publisher, task, origin, failure, Some(outcome)).await;
    }

    let next = d
        .retry
        .next_delay(task.retries_done(), retry_after, &mut rand::thread_rng());
    match next {
        Some(delay) => {
            outcome.status = Status::Retrying;
            outcome.next_retry_at =
                Some(now + chrono::Duration::from_std(delay).unwrap_or_default());
            let next_task = task.next_attempt();
            let queue = d.topology.delay_queue(delay);
            follow_up(d, publisher, origin, outcome, next_task.to_queue(&queue)).await?;
            d.metrics.retries.inc();
            tracing::info!(error = %error_text, retry_in = ?delay, "attempt failed; retry scheduled");
            Ok(())
        }
        None => {
            let failure = Failure::new("retries_exhausted", status_code, error_text);
            dead_letter(d, publisher, task, origin, failure, Some(outcome)).await
        }
    }
}

/// Puts a task off through a defer queue: no attempt, nothing recorded.
async fn defer(
    d: &Deliverer,
    publisher: &Publisher,
    task: &DeliveryTask,
    delay: Duration,
    (not_before_ms, turn): (Option<i64>, Option<u64>),
    reason: &'static str,
) -> Result<(), Unsettled> {
    // A busy endpoint whose pace is not known yet: back off.
    let wanted = if delay.is_zero() {
        busy_delay(task.deferrals)
    } else {
        delay
    };
    let tier = defer_tier(wanted);
    let later = DeliveryTask {
        deferrals: task.deferrals + 1,
        not_before_ms,
        turn,
        ..task.clone()
    };
    d.put_offs
        .put_off(publisher, d.topology.defer_queue(tier), later)
        .await?;
    d.metrics.deferred.with_label_values(&[reason]).inc();
    tracing::debug!(reason, put_off = ?tier, "delivery put off");
    Ok(())
}

/// Records `outcome` and publishes the message that carries the delivery on, in the
/// order `origin` needs (see [`Origin`]).
async fn follow_up(
    d: &Deliverer,
    publisher: &Publisher,
    origin: Origin,
    outcome: Outcome,
    message: Outgoing<'_>,
) -> Result<(), Unsettled> {
    match origin {
        Origin::WorkQueue => {
            d.recorder.record(outcome).await?;
            publisher.publish(message).await?;
        }
        Origin::Ingest => {
            publisher.publish(message).await?;
            d.recorder.record(outcome).await?;
        }
    }
    Ok(())
}

/// Why a delivery ends `failed`.
struct Failure {
    reason: &'static str,
    last_status: Option<u16>,
    error: String,
}

impl Failure {
    fn new(reason: &'static str, last_status: Option<u16>, error: String) -> Self {
        Self {
            reason,
            last_status,
            error,
        }
    }
}

/// Ends a delivery as `failed` and parks its task in the dead-letter queue.
async fn dead_letter(
    d: &Deliverer,
    publisher: &Publisher,
    task: &DeliveryTask,
    origin: Origin,
    failure: Failure,
    outcome: Option<Outcome>,
) -> Result<(), Unsettled> {
    let Failure {
        reason,
        last_status,
        error,
    } = failure;
    let mut outcome = outcome.unwrap_or_else(|| Outcome {
        delivery_id: task.delivery_id,
        attempt: None,
        status: Status::Failed,
        attempts: task.attempt as i32 - 1,
        next_retry_at: None,
        last_status_code: None,
        last_error: None,
        at: Utc::now(),
    });
    outcome.status = Status::Failed;
    outcome.next_retry_at = None;
    outcome.last_error = Some(format!("{reason}: {error}"));
    let dlq = d.topology.dlq();
    let parked = Outgoing {
        exchange: "",
        routing_key: &dlq,
        body: &task.body,
        properties: task.properties_with(task.dead_letter_headers(
            reason,
            last_status,
            Some(&error),
        )),
    };
    follow_up(d, publisher, origin, outcome, parked).await?;
    d.metrics.dead_lettered.with_label_values(&[reason]).inc();
    tracing::warn!(
        reason,
        error,
        "delivery failed; moved to the dead-letter queue"
    );
    Ok(())
}

/// Standard Webhooks headers plus Herald's own, signed at this moment.
fn request_headers(endpoint: &ActiveEndpoint, task: &DeliveryTask, traceparent: &str) -> HeaderMap {
    let timestamp = Utc::now().timestamp();
    let signature = signature_header(&endpoint.secrets, &task.event_id, timestamp, &task.body);
    let mut headers = HeaderMap::with_capacity(6);
    for (name, value) in [
        header("webhook-id", &task.event_id),
        header("webhook-timestamp", &timestamp.to_string()),
        header("webhook-signature", &signature),
        header("x-herald-attempt", &task.attempt.to_string()),
    ] {
        headers.insert(name, value);
    }
    let (name, value) = header("traceparent", traceparent);
    headers.insert(name, value);
    headers
}
