//! The SRE's dead-letter workflow: list what is parked (with filters and a total),
//! redrive it, purge it. Redrives and purges are jobs: started here, counted and
//! recorded (`herald.dlq_jobs`), then worked chunk by chunk in the background of the
//! process that started them — the API answers `202` with the job to poll, the CLI
//! shows its progress — and taken over by another `api` process if that one dies.
//!
//! Everything works on the records (`crate::store::dlq`), so selecting three deliveries
//! out of a million is an index lookup; the copies in the `<prefix>.dlq` queue are
//! settled afterwards by a sweep (`crate::dlq`).
//!
//! A redrive chunk: deliveries whose endpoint is deleted are refused, and so are those
//! whose endpoint is disabled unless the job enables it (closing its breaker, with its
//! `herald.endpoint.enabled` event); the rest are marked `pending` in a transaction,
//! their tasks published with confirms, then the transaction commits with the job's
//! cursor — the order of a retry (`crate::service::resend`). The job publishes only
//! while the work queue holds fewer than [`MAX_QUEUED`] tasks, so live traffic never
//! waits behind more than that, however large the redrive.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::resend::Dispatcher;
use super::validate::Check;
use super::{Caller, PageRequest, ServiceError};
use crate::config::Settings;
use crate::delivery::decision::DeadLetterReason;
use crate::delivery::task::DeliveryTask;
use crate::store::dlq::{self as records, DeadView, Filter};
use crate::store::dlq_jobs::{self as jobs, Job, NewJob, Refusal};
use crate::store::{events, health};

/// Dead deliveries worked per chunk (one transaction, one confirm round).
const CHUNK: i64 = 1_000;
/// A redrive publishes only while the work queue holds fewer tasks than this.
pub const MAX_QUEUED: u32 = 5_000;
/// A running job not moved for this long lost its process.
const STALE: Duration = Duration::from_secs(60);
/// Most ids one request may name.
const MAX_IDS: usize = 10_000;

/// One page of the dead-letter queue, and how many dead deliveries the filter selects.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = DeadLetterPage)]
pub struct DeadPage {
    pub data: Vec<DeadView>,
    #[schema(required = true)]
    pub next_cursor: Option<String>,
    /// Every dead delivery the filter selects, on all pages.
    pub total: i64,
}

/// The reasons a delivery is dead-lettered for (`unknown`: recorded by an earlier
/// version without one).
pub fn reasons() -> impl Iterator<Item = &'static str> {
    DeadLetterReason::ALL
        .into_iter()
        .map(DeadLetterReason::as_str)
        .chain(["unknown"])
}

/// Checks a filter and confines it to the caller; `None` when a tenant token asked
/// for another tenant (which selects nothing).
fn confined(caller: &Caller, mut filter: Filter) -> Result<Option<Filter>, ServiceError> {
    let mut check = Check::default();
    if let Some(reason) = &filter.reason {
        if !reasons().any(|r| r == reason) {
            let all: Vec<&str> = reasons().collect();
            check.fail("reason", format!("one of {}", all.join(", ")));
        }
    }
    if let (Some(since), Some(until)) = (filter.since, filter.until) {
        if since >= until {
            check.fail("until", "must be after since");
        }
    }
    if filter
        .delivery_ids
        .as_ref()
        .is_some_and(|ids| ids.len() > MAX_IDS)
    {
        check.fail("delivery_ids", format!("at most {MAX_IDS} per request"));
    }
    check.finish()?;
    if caller
        .scope()
        .is_some_and(|own| filter.tenant_id.as_deref().is_some_and(|t| t != own))
    {
        return Ok(None);
    }
    filter.scope = caller.scope().map(String::from);
    Ok(Some(filter))
}

pub async fn list(
    pool: &PgPool,
    caller: &Caller,
    filter: Filter,
    page: PageRequest,
) -> Result<DeadPage, ServiceError> {
    let before = page.after::<Uuid>()?;
    let Some(filter) = confined(caller, filter)? else {
        return Ok(DeadPage {
            data: Vec::new(),
            next_cursor: None,
            total: 0,
        });
    };
    let rows = records::list(pool, &filter, before, page.fetch()).await?;
    let total = records::count(pool, &filter).await?;
    let page = super::Page::of(rows, &page, |d: &DeadView| d.id);
    Ok(DeadPage {
        data: page.data,
        next_cursor: page.next_cursor,
        total,
    })
}

/// Redrive (send again with a fresh retry schedule) or purge (take out of the
/// dead-letter queue; the records stay `failed`, noting when).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Redrive,
    Purge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Redrive => "redrive",
            Kind::Purge => "purge",
        }
    }
}

/// What a job is asked to do. Without `all`, ids or a filter it is refused: "every
/// dead delivery" must be asked for.
#[derive(Debug, Clone)]
pub struct JobRequest {
    pub kind: Kind,
    pub all: bool,
    pub filter: Filter,
    /// Redrive: enable the disabled endpoints of the selected deliveries.
    pub enable_endpoints: bool,
}

/// Creates a job and counts what it selects; the caller runs it ([`run`]).
pub async fn start(
    pool: &PgPool,
    caller: &Caller,
    request: JobRequest,
) -> Result<Job, ServiceError> {
    let narrowed = request.filter != Filter::default();
    if !request.all && !narrowed {
        return Err(ServiceError::invalid(
            "all",
            "say which dead deliveries: \"all\": true, \"delivery_ids\", or a filter \
             (endpoint_id, tenant_id, reason, event_type, since, until)",
        ));
    }
    if request.kind == Kind::Purge && request.enable_endpoints {
        return Err(ServiceError::invalid(
            "enable_endpoints",
            "only a redrive enables endpoints",
        ));
    }
    let asked = request.filter.delivery_ids.clone();
    let filter = confined(caller, request.filter)?.unwrap_or_else(|| Filter {
        scope: caller.scope().map(String::from),
        delivery_ids: Some(Vec::new()),
        ..Filter::default()
    });
    let matched = records::count(pool, &filter).await?;
    let not_found = match &asked {
        Some(ids) => {
            let found: HashSet<Uuid> = records::chunk(pool, &filter, None, ids.len() as i64 + 1)
                .await?
                .into_iter()
                .map(|d| d.id)
                .collect();
            ids.iter()
                .filter(|id| !found.contains(id))
                .copied()
                .collect()
        }
        None => Vec::new(),
    };
    let job = jobs::insert(
        pool,
        NewJob {
            kind: request.kind.as_str(),
            filter: &filter,
            enable_endpoints: request.enable_endpoints,
            matched,
            not_found: &not_found,
        },
    )
    .await?;
    tracing::info!(job_id = %job.id, kind = job.kind, matched, "dead-letter job started");
    Ok(job)
}

pub async fn get(pool: &PgPool, caller: &Caller, id: Uuid) -> Result<Job, ServiceError> {
    jobs::get(pool, caller.scope(), id)
        .await?
        .ok_or(ServiceError::NotFound)
}

/// Works a job to its end; `progress` sees it after every chunk. A failure is recorded
/// on the job (`failed`, with the error) as well as returned.
pub async fn run(
    settings: &Settings,
    pool: &PgPool,
    mut job: Job,
    mut progress: impl FnMut(&Job),
) -> Result<Job, ServiceError> {
    // The stored selection leaves the caller's tenant out; it is the job's own column.
    job.selection.0.scope = job.scope.clone();
    let worked = match job.kind.as_str() {
        "redrive" => redrive(settings, pool, &mut job, &mut progress).await,
        _ => purge(pool, &mut job, &mut progress).await,
    };
    if let Err(error) = worked {
        tracing::warn!(job_id = %job.id, %error, "dead-letter job failed");
        let _ = jobs::finish(pool, job.id, None, Some(&error.to_string())).await;
        return Err(error);
    }
    let swept = match crate::dlq::sweep_if_worth_it(settings, pool).await {
        Ok(swept) => swept.map(|s| s.dropped as i64),
        Err(error) => {
            // The records are done; stale copies wait for the next sweep.
            tracing::warn!(job_id = %job.id, error = format!("{error:#}"), "dead-letter queue not swept");
            None
        }
    };
    let job = jobs::finish(pool, job.id, swept, None).await?;
    tracing::info!(job_id = %job.id, kind = job.kind, processed = job.processed,
        refused = job.refused, "dead-letter job done");
    progress(&job);
    Ok(job)
}

async fn purge(
    pool: &PgPool,
    job: &mut Job,
    progress: &mut impl FnMut(&Job),
) -> Result<(), ServiceError> {
    loop {
        let chunk = records::chunk(pool, &job.selection, job.cursor_id, CHUNK).await?;
        let Some(last) = chunk.last() else {
            return Ok(());
        };
        job.cursor_id = Some(last.id);
        let ids: Vec<Uuid> = chunk.iter().map(|d| d.id).collect();
        let mut tx = pool.begin().await?;
        job.processed += records::mark_purged(&mut *tx, &ids).await? as i64;
        jobs::advance(&mut tx, job).await?;
        tx.commit().await?;
        progress(job);
    }
}

async fn redrive(
    settings: &Settings,
    pool: &PgPool,
    job: &mut Job,
    progress: &mut impl FnMut(&Job),
) -> Result<(), ServiceError> {
    let dispatcher = Dispatcher::open(settings).await?;
    let result = redrive_chunks(pool, &dispatcher, job, progress).await;
    dispatcher.close().await;
    result
}

async fn redrive_chunks(
    pool: &PgPool,
    dispatcher: &Dispatcher,
    job: &mut Job,
    progress: &mut impl FnMut(&Job),
) -> Result<(), ServiceError> {
    loop {
        while dispatcher.work_queued().await? >= MAX_QUEUED {
            jobs::touch(pool, job.id).await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let chunk = records::chunk(pool, &job.selection, job.cursor_id, CHUNK).await?;
        let Some(last) = chunk.last() else {
            return Ok(());
        };
        job.cursor_id = Some(last.id);
        let mut sendable = Vec::with_capacity(chunk.len());
        for dead in chunk {
            let enabled =
                dead.endpoint_enabled || job.enabled_endpoints.contains(&dead.endpoint_id);
            let refusal = if dead.endpoint_deleted {
                Some("endpoint_deleted")
            } else if !enabled && !job.enable_endpoints {
                Some("endpoint_disabled")
            } else {
                None
            };
            if let Some(reason) = refusal {
                job.refused += 1;
                job.refusals
                    .0
                    .entry(dead.endpoint_id)
                    .or_insert_with(|| Refusal {
                        reason: reason.into(),
                        deliveries: 0,
                    })
                    .deliveries += 1;
                continue;
            }
            if !enabled {
                health::set_enabled(
                    pool,
                    job.scope.as_deref(),
                    dead.endpoint_id,
                    true,
                    "enabled by a dead-letter redrive",
                )
                .await?;
                job.enabled_endpoints.push(dead.endpoint_id);
            }
            sendable.push(dead);
        }
        let keys: Vec<(String, String)> = sendable
            .iter()
            .map(|d| (d.tenant_key.clone(), d.event_id.clone()))
            .collect();
        let stored = events::load_many(pool, &keys).await?;
        let mut tx = pool.begin().await?;
        let ids: Vec<Uuid> = sendable.iter().map(|d| d.id).collect();
        let marked: HashSet<Uuid> = records::mark_redriven(&mut *tx, &ids)
            .await?
            .into_iter()
            .collect();
        let tasks: Vec<DeliveryTask> = sendable
            .iter()
            .filter(|d| marked.contains(&d.id))
            .filter_map(|d| {
                let event = stored.get(&(d.tenant_key.clone(), d.event_id.clone()))?;
                Some(DeliveryTask::resend(
                    d.id,
                    d.event_id.clone(),
                    d.endpoint_id,
                    d.attempts,
                    Bytes::from(event.webhook_body()),
                ))
            })
            .collect();
        if !tasks.is_empty() {
            dispatcher.publish(&tasks).await?;
        }
        job.processed += tasks.len() as i64;
        jobs::advance(&mut tx, job).await?;
        tx.commit().await?;
        progress(job);
    }
}

/// Takes over the jobs whose process died and runs them to their end, now and then,
/// until `shutdown`. Run by every `api` role process.
pub async fn resume_stale(
    settings: Arc<Settings>,
    pool: PgPool,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let stale = chrono::Duration::from_std(STALE).expect("a minute");
    super::background::every(STALE / 2, &shutdown, || async {
        let Ok(stale_jobs) = jobs::claim_stale(&pool, stale).await else {
            return;
        };
        for job in stale_jobs {
            tracing::info!(job_id = %job.id, "taking over a dead-letter job whose process stopped");
            let (settings, pool) = (settings.clone(), pool.clone());
            tokio::spawn(async move {
                let _ = run(&settings, &pool, job, |_| {}).await;
            });
        }
    })
    .await;
}
