//! The attempt of a batch: the attempt engine's steps, once per request for all the
//! batch's tasks (see [`super::batch`] for how a batch is gathered).
//!
//! - Admission: one place in the endpoint's throttle for the request (the rate limit
//!   and the in-flight caps count requests, not events); with none, every task is put
//!   off through the defer queues as a task sent alone would be.
//! - The request: one body, `{"type":"herald.batch","data":[…]}`, signed like any body
//!   under the endpoint's scheme with a `webhook-id` of its own (`batch_…`).
//! - The outcome: every task's decision is its own (its attempt number, its place in
//!   the retry schedule) from the one response; every task records the attempt with the
//!   same status, duration and response, and is retried, dead-lettered or done on its
//!   own. The endpoint's health counts the request once: one failure per request, and a
//!   410 disables the endpoint once.

use std::time::SystemTime;

use bytes::Bytes;
use futures_util::future::join_all;
use reqwest::header::HeaderMap;
use tokio::sync::oneshot;
use tracing::Instrument;
use uuid::Uuid;

use super::batch::{batch_body, Joined, Leading, Member, BATCH_TYPE};
use super::client::header;
use super::decision::decide;
use super::engine::{send, sign_into, static_headers, Deliverer, Origin, Run, Signed, Unsettled};
use super::task::DeliveryTask;
use super::throttle::Admission;
use crate::broker::Publisher;
use crate::domain::Batching;
use crate::store::endpoints::ActiveEndpoint;
use crate::telemetry;

/// The header telling a receiver how many events the batch holds.
pub const BATCH_SIZE_HEADER: &str = "x-herald-batch-size";

impl Run<'_> {
    /// Joins the endpoint's open batch (or opens and leads one) and returns once the
    /// batch's request is made and this task's outcome is durable.
    pub(super) async fn join_batch(
        &self,
        endpoint: &ActiveEndpoint,
        batching: Batching,
    ) -> Result<(), Unsettled> {
        if self.over_ingest_share(endpoint) {
            return self.hand_on().await;
        }
        let (done, settled) = oneshot::channel();
        let member = Member {
            task: self.task.clone(),
            origin: self.origin,
            done,
        };
        if let Joined::Leader(batch) = self.d.batches.join(endpoint.id, batching, member) {
            let leading = Leading {
                batches: &self.d.batches,
                endpoint: endpoint.id,
                batch,
            };
            leading.batch.gathered(batching).await;
            let members = self.d.batches.seal(endpoint.id, &leading.batch);
            attempt_batch(self.d, self.publisher, endpoint, members).await;
        }
        settled.await.unwrap_or(Err(Unsettled::BatchAbandoned))
    }
}

/// Makes the batch's one attempt and hands each member its result.
async fn attempt_batch(
    d: &Deliverer,
    publisher: &Publisher,
    endpoint: &ActiveEndpoint,
    members: Vec<Member>,
) {
    let span = tracing::info_span!("deliver_batch", endpoint_id = %endpoint.id,
        events = members.len());
    let traceparent = telemetry::link(&span, members[0].task.traceparent.as_deref());
    let (tasks, senders): (Vec<_>, Vec<_>) = members
        .into_iter()
        .map(|m| ((m.task, m.origin), m.done))
        .unzip();
    let results = settle(d, publisher, endpoint, &tasks, &traceparent)
        .instrument(span)
        .await;
    for (done, result) in senders.into_iter().zip(results) {
        let _ = done.send(result);
    }
}

/// The body and headers of one batch's request, signed at this moment: the webhook
/// bodies of `tasks` in a `herald.batch` body, a `webhook-id` of the batch's own
/// (`batch_…`, new for every request: a retried event may travel with others), the
/// highest attempt number among them and how many they are.
pub(crate) fn batch_request(
    endpoint: &ActiveEndpoint,
    tasks: &[&DeliveryTask],
    traceparent: &str,
) -> (Bytes, HeaderMap) {
    let body = batch_body(tasks.iter().map(|t| &t.body));
    let batch_id = format!("batch_{}", Uuid::now_v7().simple());
    let mut headers = static_headers(endpoint);
    sign_into(
        &mut headers,
        endpoint,
        Signed {
            msg_id: &batch_id,
            event_type: BATCH_TYPE,
            body: &body,
            attempt: tasks.iter().map(|t| t.attempt).max().unwrap_or(1),
            traceparent,
        },
    );
    let (name, value) = header(BATCH_SIZE_HEADER, &tasks.len().to_string());
    headers.insert(name, value);
    (body, headers)
}

/// Admission, the request and every task's outcome: one result per task, in order.
async fn settle(
    d: &Deliverer,
    publisher: &Publisher,
    endpoint: &ActiveEndpoint,
    tasks: &[(DeliveryTask, Origin)],
    traceparent: &str,
) -> Vec<Result<(), Unsettled>> {
    // The request speaks for the endpoint's health through one task: the first that is
    // not an operational event (those never feed the breaker).
    let mut runs: Vec<Run> = tasks
        .iter()
        .map(|(task, origin)| Run {
            d,
            publisher,
            task,
            origin: *origin,
            counts_request: false,
        })
        .collect();
    let counting = runs.iter().position(|r| !r.about_ops()).unwrap_or(0);
    runs[counting].counts_request = true;

    // Reservations the tasks carry (put off together, they come back together): the
    // earliest is kept, the others' slots go unused (never more than the limit).
    let not_before = tasks.iter().filter_map(|(t, _)| t.not_before_ms).min();
    let turn = tasks.iter().filter_map(|(t, _)| t.turn).min();
    let slot = match d
        .throttle
        .admit(endpoint.id, endpoint.rate_limit, not_before, turn)
        .await
    {
        Admission::Go(slot) => slot,
        Admission::Defer {
            delay,
            not_before_ms,
            turn,
            reason,
        } => {
            return join_all(
                runs.iter()
                    .map(|run| run.put_off(delay, not_before_ms, turn, reason)),
            )
            .await;
        }
    };

    d.metrics.batch_events.observe(tasks.len() as f64);
    let members: Vec<&DeliveryTask> = tasks.iter().map(|(t, _)| t).collect();
    let (body, headers) = batch_request(endpoint, &members, traceparent);
    let made = send(d, endpoint, slot, headers, body).await;
    tracing::debug!(
        events = tasks.len(),
        duration_ms = made.duration_ms,
        "batch sent"
    );

    let decisions: Vec<_> = {
        let mut rng = rand::thread_rng();
        tasks
            .iter()
            .map(|(task, _)| {
                decide(
                    &made.response,
                    task.retries_done(),
                    &d.retry,
                    endpoint.retry_schedule(),
                    SystemTime::now(),
                    &mut rng,
                )
            })
            .collect()
    };
    // Concurrently: the outcomes go into the recorder's next group commit together.
    join_all(
        runs.iter()
            .zip(decisions)
            .map(|(run, decision)| run.carry_out(made.clone(), decision)),
    )
    .await
}
