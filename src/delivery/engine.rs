//! The attempt engine, driven by the deliver role (work-queue tasks) and the ingest
//! role (first attempts) alike. One attempt, in named steps:
//!
//! 1. find the endpoint (a disabled or deleted one dead-letters the task at once); a
//!    task for an endpoint that batches joins a batch here instead ([`super::batched`]),
//!    which goes through the same steps once per request;
//! 2. take a place in the endpoint's throttle, or put the task off through a defer
//!    queue;
//! 3. sign and send ([`send`]), holding one of the process's request slots;
//! 4. ask the pure [`decide`] what the answer means: done, retry at a delay, or
//!    dead-letter with a reason;
//! 5. carry that out — record the outcome and publish the follow-up message, in the
//!    order the task's [`Origin`] needs — and only then report it settled.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use prometheus::IntGauge;
use reqwest::header::HeaderMap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use super::batch::{fits_in_batch, Batches};
use super::breaker::{failure_reason, held_delay};
use super::client::{header, Response, WebhookClient};
use super::decision::{decide, DeadLetterReason, Decision};
use super::health::{Change, Health};
use super::order;
use super::put_off::PutOffs;
use super::recorder::{RecordError, Recorder};
use super::retry::RetryPolicy;
use super::sent_headers;
pub use super::settle::{Origin, Unsettled};
use super::task::DeliveryTask;
use super::throttle::{busy_delay, defer_tier, Admission, Slot, Throttle};
use crate::broker::{Outgoing, Publisher};
use crate::config::Settings;
use crate::domain::SignatureScheme;
use crate::envelope;
use crate::metrics::Metrics;
use crate::signing;
use crate::store::deliveries::{AttemptRecord, Outcome, Status};
use crate::store::endpoints::ActiveEndpoint;
use crate::store::ops;
use crate::subscriptions::{Lookup, Subscriptions};
use crate::telemetry;
use crate::topology::Topology;

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
    /// The open batches of the endpoints that batch their events.
    pub batches: Batches,
    /// Every endpoint's failure streak and circuit breaker, shared by the deployment.
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    pub pool: sqlx::PgPool,
}

impl Deliverer {
    /// Writes the task's delivery row, `pending`, if it may not be written yet (see
    /// [`DeliveryTask::first_write`]); a no-op for every other task.
    pub async fn write_row(&self, task: &DeliveryTask) -> Result<(), RecordError> {
        let Some(row) = &task.first_write else {
            return Ok(());
        };
        self.recorder
            .record(Outcome {
                delivery_id: task.delivery_id,
                attempt: None,
                status: Status::Pending,
                attempts: 0,
                next_retry_at: None,
                last_status_code: None,
                last_error: None,
                at: row.created_at,
                new_row: Some(row.clone()),
            })
            .await
    }

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
    let run = Run {
        d: deliverer,
        publisher,
        task,
        origin,
        counts_request: true,
    };
    async {
        let result = run.deliver(&traceparent).await;
        if let Err(error) = &result {
            tracing::warn!(%error, "delivery not settled; it will be tried again");
        }
        result
    }
    .instrument(span)
    .await
}

/// One attempt of one task: what every step needs.
pub(super) struct Run<'a> {
    pub(super) d: &'a Deliverer,
    pub(super) publisher: &'a Publisher,
    pub(super) task: &'a DeliveryTask,
    pub(super) origin: Origin,
    /// Whether this task's outcome speaks for the request in the endpoint's health
    /// (its failure streak and breaker, a 410's disabling): every task sent alone, one
    /// task of a batch.
    pub(super) counts_request: bool,
}

/// An attempt that was made, as it is recorded.
#[derive(Clone)]
pub(super) struct Made {
    pub(super) response: Response,
    pub(super) duration_ms: i32,
    pub(super) at: DateTime<Utc>,
    /// The request's headers, redacted ([`super::sent_headers`]): shared by every
    /// task of a batch.
    pub(super) request_headers: Arc<str>,
}

impl Run<'_> {
    async fn deliver(&self, traceparent: &str) -> Result<(), Unsettled> {
        // The one branch ordering costs an unordered task.
        if let Some(key) = &self.task.ordering_key {
            let (pool, topology) = (&self.d.pool, &self.d.topology);
            let go = order::before_attempt(pool, topology, self.publisher, self.task, key).await?;
            if go == order::Go::Skip {
                return Ok(());
            }
        }
        let endpoint = match self.d.subscriptions.lookup(self.task.endpoint_id).await? {
            Lookup::Active(endpoint) => endpoint,
            Lookup::Disabled(reason) => {
                let why = format!(
                    "endpoint disabled{}",
                    reason.map(|r| format!(": {r}")).unwrap_or_default()
                );
                return self
                    .dead_letter(DeadLetterReason::EndpointDisabled, None, why)
                    .await;
            }
            Lookup::Deleted => {
                return self
                    .dead_letter(
                        DeadLetterReason::EndpointDeleted,
                        None,
                        "endpoint deleted".into(),
                    )
                    .await;
            }
        };
        if self.d.health.is_open(endpoint.id) && !self.about_ops() {
            // The endpoint is `failing`: this task is the probe, or it waits, without
            // an attempt, until the next probe is due.
            if let Some(wait) = self.d.health.pass(endpoint.id).await? {
                let delay = held_delay(wait, self.task.deferrals);
                return self.put_off(delay, None, None, "circuit_open").await;
            }
        }
        // The one branch batching costs an endpoint that does not batch.
        if let Some(batching) = endpoint.batch() {
            if fits_in_batch(&self.task.body) {
                let batching = batching.within(self.d.settings.delivery.batch_bounds());
                return self.join_batch(&endpoint, batching).await;
            }
        }
        let slot = match self.admit(&endpoint).await {
            Ok(slot) => slot,
            Err(put_off) => return put_off,
        };
        let made = self.send(&endpoint, slot, traceparent).await;
        let decision = decide(
            &made.response,
            self.task.retries_done(),
            &self.d.retry,
            endpoint.retry_schedule(),
            SystemTime::now(),
            &mut rand::thread_rng(),
        );
        self.carry_out(made, decision).await
    }

    /// A place in the endpoint's throttle; or, when it has none now, the result of
    /// putting the task off.
    async fn admit(&self, endpoint: &ActiveEndpoint) -> Result<Slot, Result<(), Unsettled>> {
        let task = self.task;
        if self.over_ingest_share(endpoint) {
            return Err(self.hand_on().await);
        }
        match self
            .d
            .throttle
            .admit(
                endpoint.id,
                endpoint.rate_limit,
                task.not_before_ms,
                task.turn,
            )
            .await
        {
            Admission::Go(slot) => Ok(slot),
            Admission::Defer {
                delay,
                not_before_ms,
                turn,
                reason,
            } => Err(self.put_off(delay, not_before_ms, turn, reason).await),
        }
    }

    /// A first attempt over this process's share of its endpoint's rate limit, which
    /// is handed on (see [`Self::hand_on`]).
    pub(super) fn over_ingest_share(&self, endpoint: &ActiveEndpoint) -> bool {
        self.origin == Origin::Ingest
            && self.task.not_before_ms.is_none()
            && !self
                .d
                .throttle
                .has_rate_slot(endpoint.id, endpoint.rate_limit)
    }

    /// Signs and sends the webhook, holding a request slot for the request alone.
    async fn send(&self, endpoint: &ActiveEndpoint, slot: Slot, traceparent: &str) -> Made {
        let headers = request_headers(endpoint, self.task, traceparent);
        send(self.d, endpoint, slot, headers, self.task.body.clone()).await
    }

    /// Records the attempt and carries the decision out.
    pub(super) async fn carry_out(&self, made: Made, decision: Decision) -> Result<(), Unsettled> {
        let (d, task) = (self.d, self.task);
        let retry_reason = failure_reason(&made.response);
        let (status_code, error_text, record) =
            attempt_record(task, made.response, made.duration_ms, made.request_headers);
        let mut outcome = Outcome {
            delivery_id: task.delivery_id,
            attempt: Some(record),
            status: Status::Success,
            attempts: task.attempt as i32,
            next_retry_at: None,
            last_status_code: status_code.map(i32::from),
            last_error: None,
            at: made.at,
            new_row: task.first_write.clone(),
        };
        if decision == Decision::Done {
            d.metrics.deliveries.with_label_values(&["success"]).inc();
            if task.received_at_ms > 0 {
                let latency =
                    (made.at.timestamp_millis() - task.received_at_ms).max(0) as f64 / 1000.0;
                d.metrics.end_to_end.observe(latency);
            }
            d.recorder.record(outcome).await?;
            tracing::debug!(duration_ms = made.duration_ms, "delivered");
            order::after_finish(&d.pool, &d.topology, self.publisher, task, false).await?;
            if self.counts_request {
                self.count_success().await;
            }
            return Ok(());
        }
        d.metrics.deliveries.with_label_values(&["failure"]).inc();
        d.metrics.endpoint_failed(task.endpoint_id);
        outcome.last_error = Some(error_text.clone());
        match decision {
            Decision::Done => unreachable!("handled above"),
            Decision::Retry { delay } => {
                outcome.status = Status::Retrying;
                outcome.next_retry_at =
                    Some(made.at + chrono::Duration::from_std(delay).unwrap_or_default());
                let next_task = task.next_attempt();
                let queue = d.topology.delay_queue(delay);
                self.follow_up(outcome, next_task.to_queue(&queue)).await?;
                d.metrics.retries.with_label_values(&[retry_reason]).inc();
                tracing::info!(error = %error_text, retry_in = ?delay, "attempt failed; retry scheduled");
                if self.counts_request {
                    self.count_failure(status_code, &error_text).await;
                }
                Ok(())
            }
            Decision::DeadLetter(reason) => {
                if reason.disables_endpoint() && self.counts_request {
                    self.disable_endpoint().await?;
                }
                let failure = Failure {
                    reason,
                    last_status: status_code,
                    error: error_text.clone(),
                };
                self.park(failure, Some(outcome)).await?;
                if !reason.disables_endpoint() && self.counts_request {
                    self.count_failure(status_code, &error_text).await;
                }
                Ok(())
            }
        }
    }

    /// The receiver said this endpoint is gone for good: stop sending to it.
    async fn disable_endpoint(&self) -> Result<(), Unsettled> {
        if self.d.health.gone(self.task.endpoint_id, 410).await? {
            self.d
                .metrics
                .endpoints_disabled
                .with_label_values(&["gone"])
                .inc();
        }
        tracing::warn!("endpoint answered 410 Gone; disabled");
        Ok(())
    }

    /// Deliveries of Herald's own operational events (an endpoint subscribed to
    /// `<prefix>.ops` through ingest) neither feed the breaker nor cause operational
    /// events: no operational event may cause another.
    pub(super) fn about_ops(&self) -> bool {
        envelope::webhook_event_type(&self.task.body).is_some_and(|t| t.starts_with("herald."))
    }

    /// After a success: the endpoint's streak, if any, ends (its breaker closes).
    /// Best effort: the outcome is recorded already; a miss is made up by the next.
    async fn count_success(&self) {
        if self.about_ops() {
            return;
        }
        match self.d.health.succeeded(self.task.endpoint_id).await {
            Ok(true) => tracing::info!("endpoint recovered; its breaker is closed"),
            Ok(false) => {}
            Err(error) => tracing::warn!(%error, "endpoint health not updated"),
        }
    }

    /// After a failure: counts it in the endpoint's streak, opening the breaker or
    /// disabling the endpoint when the streak calls for it. Best effort, as above.
    async fn count_failure(&self, status: Option<u16>, error: &str) {
        if self.about_ops() {
            return;
        }
        match self
            .d
            .health
            .failed(self.task.endpoint_id, status, error)
            .await
        {
            Ok(Change::Opened) => {
                tracing::warn!("endpoint failing: its breaker is open; probing")
            }
            Ok(Change::Disabled) => {
                self.d
                    .metrics
                    .endpoints_disabled
                    .with_label_values(&["failing"])
                    .inc();
                tracing::warn!("endpoint failing for delivery.disable_after; disabled")
            }
            Ok(Change::None) => {}
            Err(error) => tracing::warn!(%error, "endpoint health not updated"),
        }
    }

    /// Records `herald.delivery.dead_lettered` (best effort: the delivery is parked and
    /// recorded already).
    async fn report_dead_letter(&self, failure: &Failure, attempts: i32) {
        if self.about_ops() {
            return;
        }
        let task = self.task;
        let data = serde_json::json!({
            "delivery_id": task.delivery_id,
            "event_id": task.event_id,
            "event_type": envelope::webhook_event_type(&task.body),
            "reason": failure.reason.as_str(),
            "last_status": failure.last_status,
            "last_error": failure.error,
            "attempts": attempts,
        });
        let written =
            ops::about_endpoint(&self.d.pool, ops::DEAD_LETTERED, task.endpoint_id, data).await;
        if let Err(error) = written {
            tracing::warn!(%error, "operational event not recorded");
        }
    }

    /// Puts the task off through a defer queue: no attempt, nothing recorded.
    pub(super) async fn put_off(
        &self,
        delay: Duration,
        not_before_ms: Option<i64>,
        turn: Option<u64>,
        reason: &'static str,
    ) -> Result<(), Unsettled> {
        let task = self.task;
        self.d.write_row(task).await?;
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
        self.d
            .put_offs
            .put_off(self.publisher, self.d.topology.defer_queue(tier), later)
            .await?;
        self.d.metrics.deferred.with_label_values(&[reason]).inc();
        tracing::debug!(reason, put_off = ?tier, "delivery put off");
        Ok(())
    }

    /// A first attempt over this process's share of its endpoint's rate limit goes to
    /// the work queue as it is, without a reserved slot: whichever deliver process takes
    /// it reserves one from its own share, so every process's share is used (put off
    /// with a reservation, the ingest process's share alone would pace the endpoint).
    /// One message per task, so the work queue shares them out.
    pub(super) async fn hand_on(&self) -> Result<(), Unsettled> {
        self.d.write_row(self.task).await?;
        let exchange = self.d.topology.work_exchange();
        self.publisher.publish(self.task.to_work(&exchange)).await?;
        self.d
            .metrics
            .deferred
            .with_label_values(&["rate_limit"])
            .inc();
        tracing::debug!("first attempt over this process's rate share; handed on");
        Ok(())
    }

    /// Ends the delivery as `failed` without an attempt (its endpoint is gone).
    async fn dead_letter(
        &self,
        reason: DeadLetterReason,
        last_status: Option<u16>,
        error: String,
    ) -> Result<(), Unsettled> {
        let failure = Failure {
            reason,
            last_status,
            error,
        };
        self.park(failure, None).await
    }

    /// Ends the delivery as `failed` and parks its task in the dead-letter queue.
    async fn park(&self, failure: Failure, outcome: Option<Outcome>) -> Result<(), Unsettled> {
        let (d, task) = (self.d, self.task);
        let Failure {
            reason,
            last_status,
            ref error,
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
            new_row: task.first_write.clone(),
        });
        outcome.status = Status::Failed;
        outcome.next_retry_at = None;
        outcome.last_error = Some(format!("{}: {error}", reason.as_str()));
        let dlq = d.topology.dlq();
        let parked = Outgoing {
            exchange: "",
            routing_key: &dlq,
            body: &task.body,
            properties: task.properties_with(task.dead_letter_headers(
                reason.as_str(),
                last_status,
                Some(error),
                outcome.at.timestamp_millis(),
            )),
        };
        let attempts = outcome.attempts;
        self.follow_up(outcome, parked).await?;
        order::after_finish(&d.pool, &d.topology, self.publisher, task, true).await?;
        d.metrics
            .dead_lettered
            .with_label_values(&[reason.as_str()])
            .inc();
        tracing::warn!(
            reason = reason.as_str(),
            error,
            "delivery failed; moved to the dead-letter queue"
        );
        self.report_dead_letter(&failure, attempts).await;
        Ok(())
    }

    /// Records `outcome` and publishes the message that carries the delivery on, in the
    /// order the task's origin needs (see [`Origin`]).
    async fn follow_up(&self, outcome: Outcome, message: Outgoing<'_>) -> Result<(), Unsettled> {
        match self.origin {
            Origin::WorkQueue => {
                self.d.recorder.record(outcome).await?;
                self.publisher.publish(message).await?;
            }
            Origin::Ingest => {
                // The message's task may be attempted, and its outcome recorded, by
                // another process before this outcome is: its row must be there.
                self.d.write_row(self.task).await?;
                self.publisher.publish(message).await?;
                self.d.recorder.record(outcome).await?;
            }
        }
        Ok(())
    }
}

/// Sends one request, holding one of the process's request slots for the request
/// alone, and counts it in the metrics.
pub(super) async fn send(
    d: &Deliverer,
    endpoint: &ActiveEndpoint,
    slot: Slot,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Made {
    // Before the headers move into the request; not while holding a request slot.
    let request_headers = Arc::from(sent_headers::redacted_json(&headers));
    let request = d.requests.acquire().await.expect("never closed");
    d.metrics.in_flight.inc();
    let attempt = d
        .client
        .post_within(&endpoint.url, headers, body, endpoint.timeout())
        .await;
    // The endpoint's and the process's slots are for the request only, not for
    // recording its outcome.
    drop(slot);
    drop(request);
    d.metrics.in_flight.dec();
    d.metrics
        .delivery_duration
        .observe(attempt.duration.as_secs_f64());
    match &attempt.response {
        Response::Answered { status, .. } => d
            .metrics
            .http_status
            .with_label_values(&[&status.to_string()])
            .inc(),
        Response::Failed { class, .. } => d
            .metrics
            .delivery_errors
            .with_label_values(&[class.as_str()])
            .inc(),
    }
    Made {
        response: attempt.response,
        duration_ms: i32::try_from(attempt.duration.as_millis()).unwrap_or(i32::MAX),
        at: Utc::now(),
        request_headers,
    }
}

/// Why a delivery ends `failed`.
struct Failure {
    reason: DeadLetterReason,
    last_status: Option<u16>,
    error: String,
}

/// The attempt as stored, with its status code and the error text for the delivery.
fn attempt_record(
    task: &DeliveryTask,
    response: Response,
    duration_ms: i32,
    request_headers: Arc<str>,
) -> (Option<u16>, String, AttemptRecord) {
    let (status_code, error_class, error_text, body) = match response {
        Response::Answered { status, body, .. } => {
            (Some(status), None, format!("HTTP {status}"), Some(body))
        }
        Response::Failed { class, message } => (
            None,
            Some(class.as_str()),
            format!("{}: {message}", class.as_str()),
            None,
        ),
    };
    let record = AttemptRecord {
        attempt: task.attempt as i32,
        status_code: status_code.map(i32::from),
        error: error_class.map(String::from),
        duration_ms,
        response_body: body,
        request_headers: Some(request_headers),
    };
    (status_code, error_text, record)
}

/// The owner's static headers: their names never clash with Herald's (reserved).
/// Cloning a name or a value shares its bytes; nothing is copied.
pub(super) fn static_headers(endpoint: &ActiveEndpoint) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(9 + endpoint.headers.len());
    for (name, value) in endpoint.headers.iter() {
        headers.insert(name.clone(), value.clone());
    }
    headers
}

/// The endpoint's signature headers plus Herald's own, signed at this moment.
pub(crate) fn request_headers(
    endpoint: &ActiveEndpoint,
    task: &DeliveryTask,
    traceparent: &str,
) -> HeaderMap {
    let mut headers = static_headers(endpoint);
    // Legacy signatures name the event type, which the body Herald made starts with;
    // only they pay for reading it.
    let event_type = match endpoint.signing.scheme() {
        SignatureScheme::Standard => "",
        _ => envelope::webhook_event_type(&task.body).unwrap_or_default(),
    };
    sign_into(
        &mut headers,
        endpoint,
        Signed {
            msg_id: &task.event_id,
            event_type,
            body: &task.body,
            attempt: task.attempt,
            traceparent,
        },
    );
    headers
}

/// What one request's signature and Herald's headers are made of.
pub(super) struct Signed<'a> {
    pub msg_id: &'a str,
    pub event_type: &'a str,
    pub body: &'a [u8],
    pub attempt: u32,
    pub traceparent: &'a str,
}

/// Adds the endpoint's signature headers, signed at this moment, and Herald's own.
pub(super) fn sign_into(headers: &mut HeaderMap, endpoint: &ActiveEndpoint, signed: Signed<'_>) {
    signing::signature_headers(
        &endpoint.signing,
        signed.msg_id,
        signed.event_type,
        Utc::now().timestamp(),
        signed.body,
        |name, value| {
            let (name, value) = header(name, value);
            headers.insert(name, value);
        },
    );
    for (name, value) in [
        header("x-herald-attempt", &signed.attempt.to_string()),
        header("traceparent", signed.traceparent),
    ] {
        headers.insert(name, value);
    }
}
