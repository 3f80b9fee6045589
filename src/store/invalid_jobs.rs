//! `herald.invalid_jobs`: reingest and purge jobs of the parking queue and their
//! progress, written by the process walking the queue after every chunk, so that any
//! `api` process answers for a job. A job is never resumed: one not moved for a while
//! is marked `failed` ([`fail_stale`]; why in `crate::service::invalid_jobs`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::types::Json;
use sqlx::{FromRow, PgPool};
use uuid::Uuid;

/// Which parked messages a job takes, as given: exactly one of `all`, a non-empty
/// `ids` or a `reason`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = InvalidSelection)]
pub struct Selected {
    pub all: bool,
    pub ids: Vec<Uuid>,
    #[schema(required = true)]
    pub reason: Option<String>,
}

/// A reingest or purge job and its progress.
#[derive(Debug, Clone, Serialize, FromRow, utoipa::ToSchema)]
#[schema(as = InvalidJob)]
pub struct Job {
    pub id: Uuid,
    /// `reingest` or `purge`.
    pub kind: String,
    #[schema(value_type = Selected)]
    pub selection: Json<Selected>,
    /// `running`, `done` or `failed`.
    pub state: String,
    /// Messages in the parking queue when the walk began (0 until it began).
    pub depth: i64,
    /// Messages looked at so far.
    pub seen: i64,
    /// Sent back through ingest (a reingest; 0 for a purge).
    pub reingested: i64,
    /// Dropped (a purge; 0 for a reingest).
    pub purged: i64,
    /// Selected but left in the queue because they are no events (`malformed_task`:
    /// purge them); a reingest's only.
    pub skipped: i64,
    /// Reingested or purged, by reason.
    #[schema(value_type = BTreeMap<String, i64>)]
    pub by_reason: Json<BTreeMap<String, i64>>,
    /// Requested ids with no message in the parking queue (known at the end).
    pub not_found: Vec<Uuid>,
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

    /// Reingested or purged, whichever the job does.
    pub fn taken(&self) -> i64 {
        self.reingested + self.purged
    }
}

const COLUMNS: &str = "id, kind, selection, state, depth, seen, \
    CASE WHEN kind = 'reingest' THEN taken ELSE 0 END AS reingested, \
    CASE WHEN kind = 'purge' THEN taken ELSE 0 END AS purged, \
    skipped, by_reason, not_found, error, created_at, updated_at, finished_at";

pub async fn insert(pool: &PgPool, kind: &str, selection: &Selected) -> Result<Job, sqlx::Error> {
    sqlx::query_as(&format!(
        "INSERT INTO herald.invalid_jobs (id, kind, selection) VALUES ($1, $2, $3)
         RETURNING {COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(kind)
    .bind(Json(selection))
    .fetch_one(pool)
    .await
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<Job>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM herald.invalid_jobs WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// How far a running job is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub depth: i64,
    pub seen: i64,
    pub taken: i64,
    pub skipped: i64,
    pub by_reason: BTreeMap<String, i64>,
}

/// A chunk done; `None` when the job is no longer running (marked `failed` by
/// [`fail_stale`]): its walk must stop.
pub async fn advance(pool: &PgPool, id: Uuid, counts: &Counts) -> Result<Option<Job>, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE herald.invalid_jobs SET depth = $2, seen = $3, taken = $4, skipped = $5,
             by_reason = $6, updated_at = now()
         WHERE id = $1 AND state = 'running' RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(counts.depth)
    .bind(counts.seen)
    .bind(counts.taken)
    .bind(counts.skipped)
    .bind(Json(&counts.by_reason))
    .fetch_optional(pool)
    .await
}

/// The end of a running job: `done` with its final counts, or `failed` with the error
/// (counts as they were). `None` when it was no longer running.
pub async fn finish(
    pool: &PgPool,
    id: Uuid,
    outcome: Result<(&Counts, &[Uuid]), &str>,
) -> Result<Option<Job>, sqlx::Error> {
    match outcome {
        Ok((counts, not_found)) => {
            sqlx::query_as(&format!(
                "UPDATE herald.invalid_jobs SET state = 'done', depth = $2, seen = $3,
                     taken = $4, skipped = $5, by_reason = $6, not_found = $7,
                     finished_at = now(), updated_at = now()
                 WHERE id = $1 AND state = 'running' RETURNING {COLUMNS}"
            ))
            .bind(id)
            .bind(counts.depth)
            .bind(counts.seen)
            .bind(counts.taken)
            .bind(counts.skipped)
            .bind(Json(&counts.by_reason))
            .bind(not_found)
            .fetch_optional(pool)
            .await
        }
        Err(error) => {
            sqlx::query_as(&format!(
                "UPDATE herald.invalid_jobs SET state = 'failed', error = $2,
                     finished_at = now(), updated_at = now()
                 WHERE id = $1 AND state = 'running' RETURNING {COLUMNS}"
            ))
            .bind(id)
            .bind(error)
            .fetch_optional(pool)
            .await
        }
    }
}

/// Marks `failed`, with `error`, the running jobs not moved for `stale` (their process
/// stopped); returns their ids.
pub async fn fail_stale(
    pool: &PgPool,
    stale: chrono::Duration,
    error: &str,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE herald.invalid_jobs SET state = 'failed', error = $2, finished_at = now(),
             updated_at = now()
         WHERE state = 'running' AND updated_at < now() - $1 RETURNING id",
    )
    .bind(stale)
    .bind(error)
    .fetch_all(pool)
    .await
}
