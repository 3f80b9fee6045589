//! Replay: every stored event of a time window that an endpoint is subscribed to (with
//! its current patterns, tenant and payload filter) sent to it again — also events
//! older than the endpoint. `matched` counts by type and tenant; events the filter
//! refuses are counted as `skipped`. A job runs in the background of the process that
//! started it (the API answers at once with the job to poll; `herald replay` runs it in
//! the foreground with progress on stderr) and records its cursor with every page, so a
//! job whose process died is taken over by another (`resume_stale`) where it stopped.
//!
//! Each page of events: missing deliveries are created (committed first, `failed`:
//! a task must find its delivery row to record its outcome), then one transaction
//! requeues the finished ones (a delivery still queued is skipped, never doubled), the
//! tasks are published with confirms, then the transaction commits. Pages are paced at
//! [`EVENTS_PER_SECOND`] at most, and wait while the work queue holds
//! `dlq::MAX_QUEUED` tasks, so that a replay of a million events does not crowd the
//! work queue in front of live traffic.

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::resend::Dispatcher;
use super::validate::Check;
use super::{Caller, ServiceError};
use crate::config::Settings;
use crate::delivery::task::DeliveryTask;
use crate::domain::PayloadFilter;
use crate::store::endpoints;
use crate::store::replays::{self, Replay, Window};

/// Events a replay sends per second at most.
pub const EVENTS_PER_SECOND: u64 = 2_000;
const PAGE: i64 = 500;
/// A running job not moved for this long lost its process.
const STALE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Default)]
pub struct ReplayInput {
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub only_failed: bool,
    /// `retention.window`: a replay cannot reach further back than the records are kept.
    pub retention: Duration,
}

/// Creates a replay job for endpoint `id` and counts what it will send; the caller
/// runs it ([`run`]).
pub async fn start(
    pool: &PgPool,
    caller: &Caller,
    id: Uuid,
    input: ReplayInput,
) -> Result<Replay, ServiceError> {
    let mut check = Check::default();
    let until = input.until.unwrap_or_else(Utc::now);
    let kept_since = crate::store::retention::cutoff(input.retention);
    match input.since {
        None => check.fail("since", "required: the start of the window (RFC 3339)"),
        Some(since) if since >= until => check.fail("until", "must be after since"),
        Some(since) if since < kept_since => check.fail(
            "since",
            format!(
                "reaches past retention.window ({}): events received before {} are removed or about to be",
                humantime::format_duration(input.retention),
                kept_since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            ),
        ),
        Some(_) => {}
    }
    check.finish()?;
    let endpoint = endpoints::get(pool, caller.scope(), id)
        .await?
        .filter(|e| !e.deleted)
        .ok_or(ServiceError::NotFound)?;
    let regexes: Vec<String> = endpoint
        .event_types
        .iter()
        .map(|p| p.to_dotted_regex())
        .collect();
    let window = Window {
        endpoint_id: id,
        tenant: endpoint.tenant_id.as_deref(),
        type_regexes: &regexes,
        since: input.since.expect("checked"),
        until,
        only_failed: input.only_failed,
    };
    let matched = replays::count(pool, &window).await?;
    let job = replays::insert(pool, &window, matched).await?;
    tracing::info!(replay_id = %job.id, endpoint_id = %id, matched, "replay started");
    Ok(job)
}

/// The answer to starting a replay: the job, and how many events it queues.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[schema(as = ReplayStarted)]
pub struct Started {
    #[serde(flatten)]
    pub job: Replay,
    /// Events the job sends again (its `matched` at the start).
    pub queued: i64,
}

impl From<&Replay> for Started {
    fn from(job: &Replay) -> Self {
        Started {
            job: job.clone(),
            queued: job.matched,
        }
    }
}

pub async fn get(pool: &PgPool, caller: &Caller, id: Uuid) -> Result<Replay, ServiceError> {
    replays::get(pool, caller.scope(), id)
        .await?
        .ok_or(ServiceError::NotFound)
}

/// Works a job to its end; `progress` sees it after every page. A failure is recorded
/// on the job (`failed`, with the error) as well as returned.
pub async fn run(
    settings: &Settings,
    pool: &PgPool,
    job: Replay,
    mut progress: impl FnMut(&Replay),
) -> Result<Replay, ServiceError> {
    match work(settings, pool, job.clone(), &mut progress).await {
        Ok(()) => Ok(replays::finish(pool, job.id, None).await?),
        Err(error) => {
            tracing::warn!(replay_id = %job.id, %error, "replay failed");
            let _ = replays::finish(pool, job.id, Some(&error.to_string())).await;
            Err(error)
        }
    }
}

async fn work(
    settings: &Settings,
    pool: &PgPool,
    mut job: Replay,
    progress: &mut impl FnMut(&Replay),
) -> Result<(), ServiceError> {
    let endpoint = endpoints::get(pool, None, job.endpoint_id)
        .await?
        .ok_or(ServiceError::NotFound)?;
    let regexes: Vec<String> = endpoint
        .event_types
        .iter()
        .map(|p| p.to_dotted_regex())
        .collect();
    let tenant = job.tenant_id.clone();
    let window = Window {
        endpoint_id: job.endpoint_id,
        tenant: tenant.as_deref(),
        type_regexes: &regexes,
        since: job.since,
        until: job.until,
        only_failed: job.only_failed,
    };
    let cursor = match (job.cursor_at, job.cursor_key.clone(), job.cursor_id.clone()) {
        (Some(at), Some(key), Some(id)) => Some((at, key, id)),
        _ => None,
    };
    let dispatcher = Dispatcher::open(settings).await?;
    let filter = endpoint.filter.as_ref();
    let result = pages(
        pool,
        &window,
        filter,
        &mut job,
        cursor,
        &dispatcher,
        progress,
    )
    .await;
    dispatcher.close().await;
    result
}

async fn pages(
    pool: &PgPool,
    window: &Window<'_>,
    filter: Option<&PayloadFilter>,
    job: &mut Replay,
    mut cursor: Option<(DateTime<Utc>, String, String)>,
    dispatcher: &Dispatcher,
    progress: &mut impl FnMut(&Replay),
) -> Result<(), ServiceError> {
    let pace = Duration::from_secs_f64(PAGE as f64 / EVENTS_PER_SECOND as f64);
    loop {
        // As a redrive does: never more than MAX_QUEUED tasks waiting in the work
        // queue, whatever the pace, so live traffic that goes through it (retries, and
        // first attempts handed on when the process is busy) waits behind no more.
        while dispatcher.work_queued().await? >= super::dlq::MAX_QUEUED {
            replays::touch(pool, job.id).await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let started = tokio::time::Instant::now();
        let page = replays::next_page(pool, window, cursor.clone(), PAGE).await?;
        let Some((last_at, last_key, last)) = page.last() else {
            return Ok(());
        };
        let next = (*last_at, last_key.clone(), last.id.clone());
        // The endpoint's payload filter, as now: the events it refuses are skipped.
        let keys: Vec<(String, String)> = page
            .iter()
            .filter(|(_, _, event)| filter.is_none_or(|f| f.matches(&event.subject())))
            .map(|(_, key, event)| (key.clone(), event.id.clone()))
            .collect();
        replays::create_missing(pool, job.endpoint_id, &keys).await?;
        let mut tx = pool.begin().await?;
        let resend = replays::requeue(&mut tx, job.endpoint_id, &keys, job.only_failed).await?;
        let tasks: Vec<DeliveryTask> = resend
            .iter()
            .filter_map(|r| {
                let (_, _, event) = page
                    .iter()
                    .find(|(_, key, e)| *key == r.tenant_key && e.id == r.event_id)?;
                Some(DeliveryTask::resend(
                    r.id,
                    event.id.clone(),
                    job.endpoint_id,
                    r.attempts,
                    Bytes::from(event.webhook_body()),
                ))
            })
            .collect();
        if !tasks.is_empty() {
            dispatcher.publish(&tasks).await?;
        }
        let sent = tasks.len() as i64;
        let skipped = page.len() as i64 - sent;
        replays::advance(&mut tx, job.id, (&next.0, &next.1, &next.2), sent, skipped).await?;
        tx.commit().await?;
        job.sent += sent;
        job.skipped += skipped;
        progress(job);
        cursor = Some(next);
        tokio::time::sleep_until(started + pace).await;
    }
}

/// Takes over the replays whose process died and runs them to their end, now and
/// then, until `shutdown`. Run by every `api` role process.
pub async fn resume_stale(
    settings: std::sync::Arc<Settings>,
    pool: PgPool,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let stale = chrono::Duration::from_std(STALE).expect("a minute");
    super::background::every(STALE / 2, &shutdown, || async {
        let Ok(jobs) = replays::claim_stale(&pool, stale).await else {
            return;
        };
        for job in jobs {
            tracing::info!(replay_id = %job.id, "taking over a replay whose process stopped");
            let (settings, pool) = (settings.clone(), pool.clone());
            tokio::spawn(async move {
                let _ = run(&settings, &pool, job, |_| {}).await;
            });
        }
    })
    .await;
}
