//! `herald.dlq_jobs`: redrive and purge jobs of the dead-letter queue and their
//! progress. A job's cursor (the last delivery id done) moves with every chunk, in the
//! chunk's transaction, so a job whose process died is taken over where it stopped.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::types::Json;
use sqlx::{FromRow, PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::dlq::Filter;

/// Why a redrive left an endpoint's deliveries where they were.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Refusal {
    /// `endpoint_disabled` (redrive with `enable_endpoints` to send them) or
    /// `endpoint_deleted`.
    pub reason: String,
    pub deliveries: i64,
}

/// A redrive or purge job and its progress.
#[derive(Debug, Clone, Serialize, FromRow, utoipa::ToSchema)]
#[schema(as = DlqJob)]
pub struct Job {
    pub id: Uuid,
    /// `redrive` or `purge`.
    pub kind: String,
    #[serde(skip)]
    #[schema(ignore)]
    pub scope: Option<String>,
    /// What the job selects, as given.
    #[schema(value_type = Filter)]
    pub selection: Json<Filter>,
    /// Disabled endpoints are enabled (their breaker closed) and their deliveries sent.
    pub enable_endpoints: bool,
    /// `running`, `done` or `failed`.
    pub state: String,
    /// Dead deliveries selected, counted at the start.
    pub matched: i64,
    /// Sent again (redrive) or purged.
    pub processed: i64,
    /// Left in the queue, by endpoint in `refusals`.
    pub refused: i64,
    #[schema(value_type = BTreeMap<String, Refusal>)]
    pub refusals: Json<BTreeMap<Uuid, Refusal>>,
    pub enabled_endpoints: Vec<Uuid>,
    /// Requested ids not in the dead-letter queue (or not the caller's).
    pub not_found: Vec<Uuid>,
    /// Stale copies taken out of the `<prefix>.dlq` queue at the end; `null` while
    /// running, or when the queue was not swept (few stale copies in a long queue: the
    /// next job's sweep takes them).
    #[schema(required = true)]
    pub swept: Option<i64>,
    #[serde(skip)]
    #[schema(ignore)]
    pub cursor_id: Option<Uuid>,
    #[schema(required = true)]
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[schema(required = true)]
    pub finished_at: Option<DateTime<Utc>>,
}

impl Job {
    pub fn running(&self) -> bool {
        self.state == "running"
    }
}

const COLUMNS: &str = "id, kind, scope, selection, enable_endpoints, state, matched, processed, \
    refused, refusals, enabled_endpoints, not_found, swept, cursor_id, error, created_at, \
    updated_at, finished_at";

pub struct NewJob<'a> {
    pub kind: &'a str,
    pub filter: &'a Filter,
    pub enable_endpoints: bool,
    pub matched: i64,
    pub not_found: &'a [Uuid],
}

pub async fn insert(pool: &PgPool, job: NewJob<'_>) -> Result<Job, sqlx::Error> {
    sqlx::query_as(&format!(
        "INSERT INTO herald.dlq_jobs (id, kind, scope, selection, enable_endpoints, matched, not_found)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(job.kind)
    .bind(&job.filter.scope)
    .bind(Json(job.filter))
    .bind(job.enable_endpoints)
    .bind(job.matched)
    .bind(job.not_found)
    .fetch_one(pool)
    .await
}

/// One job; `scope` confines it to jobs a tenant's token started.
pub async fn get(pool: &PgPool, scope: Option<&str>, id: Uuid) -> Result<Option<Job>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM herald.dlq_jobs
         WHERE id = $1 AND ($2::text IS NULL OR scope = $2)"
    ))
    .bind(id)
    .bind(scope)
    .fetch_optional(pool)
    .await
}

/// A chunk done, in its transaction: the cursor, the counts, and what was refused or
/// enabled so far.
pub async fn advance(tx: &mut Transaction<'_, Postgres>, job: &Job) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE herald.dlq_jobs SET cursor_id = $2, processed = $3, refused = $4, refusals = $5,
             enabled_endpoints = $6, updated_at = now()
         WHERE id = $1",
    )
    .bind(job.id)
    .bind(job.cursor_id)
    .bind(job.processed)
    .bind(job.refused)
    .bind(&job.refusals)
    .bind(&job.enabled_endpoints)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Still working (a job waiting for the work queue to drain is not stale).
pub async fn touch(pool: &PgPool, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE herald.dlq_jobs SET updated_at = now() WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn finish(
    pool: &PgPool,
    id: Uuid,
    swept: Option<i64>,
    error: Option<&str>,
) -> Result<Job, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE herald.dlq_jobs SET state = CASE WHEN $3::text IS NULL THEN 'done' ELSE 'failed' END,
             swept = $2, error = $3, finished_at = now(), updated_at = now()
         WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(swept)
    .bind(error)
    .fetch_one(pool)
    .await
}

/// Claims the running jobs not moved for `stale` (their process died).
pub async fn claim_stale(pool: &PgPool, stale: chrono::Duration) -> Result<Vec<Job>, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE herald.dlq_jobs SET updated_at = now()
         WHERE state = 'running' AND updated_at < now() - $1 RETURNING {COLUMNS}"
    ))
    .bind(stale)
    .fetch_all(pool)
    .await
}
