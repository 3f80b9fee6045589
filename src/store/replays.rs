//! `herald.replays`: replay jobs and the page-by-page work they do — the events of a
//! window that an endpoint is subscribed to, and their deliveries created or requeued.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::envelope::Event;
use crate::store::events::StoredRow;

/// A replay job and its progress.
#[derive(Debug, Clone, Serialize, FromRow, utoipa::ToSchema)]
pub struct Replay {
    pub id: Uuid,
    pub endpoint_id: Uuid,
    #[schema(required = true)]
    pub tenant_id: Option<String>,
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub only_failed: bool,
    /// `running`, `done` or `failed`.
    #[schema(schema_with = state_schema)]
    pub state: String,
    /// Events in the window the endpoint is subscribed to, counted at the start.
    pub matched: i64,
    /// Sent again (a delivery created or requeued).
    pub sent: i64,
    /// Left alone: their delivery was already queued.
    pub skipped: i64,
    /// Why the job failed.
    #[schema(required = true)]
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    #[schema(required = true)]
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(skip)]
    pub cursor_at: Option<DateTime<Utc>>,
    #[serde(skip)]
    pub cursor_key: Option<String>,
    #[serde(skip)]
    pub cursor_id: Option<String>,
}

fn state_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(["running", "done", "failed"]))
        .build()
}

const COLUMNS: &str = "id, endpoint_id, tenant_id, since, until, only_failed, state, matched, \
    sent, skipped, error, created_at, finished_at, cursor_at, cursor_key, cursor_id";

/// What a replay selects: the endpoint, its tenant (events of that tenant only; every
/// tenant's when `None`), its patterns as dotted regexes, and the window.
#[derive(Debug, Clone)]
pub struct Window<'a> {
    pub endpoint_id: Uuid,
    pub tenant: Option<&'a str>,
    pub type_regexes: &'a [String],
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub only_failed: bool,
}

const MATCHING: &str = "FROM herald.events e
    WHERE e.received_at >= $1 AND e.received_at < $2
      AND ($3::text IS NULL OR e.tenant_key = $3)
      AND '.' || e.type ~ ANY($4)
      AND (NOT $5 OR EXISTS (SELECT 1 FROM herald.deliveries d
             WHERE d.tenant_key = e.tenant_key AND d.event_id = e.id
               AND d.endpoint_id = $6 AND d.status = 'failed'))";

pub async fn count(pool: &PgPool, window: &Window<'_>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(&format!("SELECT count(*) {MATCHING}"))
        .bind(window.since)
        .bind(window.until)
        .bind(window.tenant)
        .bind(window.type_regexes)
        .bind(window.only_failed)
        .bind(window.endpoint_id)
        .fetch_one(pool)
        .await
}

pub async fn insert(
    pool: &PgPool,
    window: &Window<'_>,
    matched: i64,
) -> Result<Replay, sqlx::Error> {
    sqlx::query_as(&format!(
        "INSERT INTO herald.replays (id, endpoint_id, tenant_id, since, until, only_failed, matched)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(window.endpoint_id)
    .bind(window.tenant)
    .bind(window.since)
    .bind(window.until)
    .bind(window.only_failed)
    .bind(matched)
    .fetch_one(pool)
    .await
}

pub async fn get(
    pool: &PgPool,
    scope: Option<&str>,
    id: Uuid,
) -> Result<Option<Replay>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM herald.replays r WHERE id = $1
           AND ($2::text IS NULL OR EXISTS (SELECT 1 FROM herald.endpoints ep
                 WHERE ep.id = r.endpoint_id AND ep.tenant_id = $2))"
    ))
    .bind(id)
    .bind(scope)
    .fetch_optional(pool)
    .await
}

/// Takes over running jobs nobody has moved for `stale`: their process died.
pub async fn claim_stale(
    pool: &PgPool,
    stale: chrono::Duration,
) -> Result<Vec<Replay>, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE herald.replays SET heartbeat_at = now()
         WHERE state = 'running' AND heartbeat_at < now() - $1 RETURNING {COLUMNS}"
    ))
    .bind(stale)
    .fetch_all(pool)
    .await
}

/// The next page of matching events after the cursor, with what rebuilds their webhooks.
pub async fn next_page(
    pool: &PgPool,
    window: &Window<'_>,
    after: Option<(DateTime<Utc>, String, String)>,
    limit: i64,
) -> Result<Vec<(DateTime<Utc>, String, Event)>, sqlx::Error> {
    #[derive(FromRow)]
    struct Row {
        received_at: DateTime<Utc>,
        tenant_key: String,
        #[sqlx(flatten)]
        stored: StoredRow,
    }
    let (at, key, id) = match after {
        Some((at, key, id)) => (Some(at), Some(key), Some(id)),
        None => (None, None, None),
    };
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT e.received_at, e.tenant_key, e.id, e.type, e.tenant_id, e.source, e.occurred_at,
                e.payload::text AS payload
         {MATCHING}
           AND ($7::timestamptz IS NULL OR (e.received_at, e.tenant_key, e.id) > ($7, $8, $9))
         ORDER BY e.received_at, e.tenant_key, e.id LIMIT $10"
    ))
    .bind(window.since)
    .bind(window.until)
    .bind(window.tenant)
    .bind(window.type_regexes)
    .bind(window.only_failed)
    .bind(window.endpoint_id)
    .bind(at)
    .bind(key)
    .bind(id)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| Ok((r.received_at, r.tenant_key, Event::try_from(r.stored)?)))
        .collect()
}

/// A delivery to send again: new (attempt 1) or finished and requeued.
#[derive(Debug, Clone, FromRow)]
pub struct Resend {
    pub id: Uuid,
    pub tenant_key: String,
    pub event_id: String,
    pub attempts: i32,
}

/// Creates the missing deliveries of these events to the endpoint, committed at once
/// and `failed` ("not sent yet"), so that [`requeue`] then treats them as every other
/// finished delivery. Committed before any task is published: a task whose delivery row
/// is not visible yet cannot record its outcome (the foreign key), and would be tried —
/// and sent — again. A crash after this leaves them `failed`, which the job's resumed
/// page requeues.
pub async fn create_missing(
    pool: &sqlx::PgPool,
    endpoint_id: Uuid,
    events: &[(String, String)],
) -> Result<(), sqlx::Error> {
    let keys: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    let ids: Vec<&str> = events.iter().map(|(_, i)| i.as_str()).collect();
    let fresh: Vec<Uuid> = events.iter().map(|_| Uuid::now_v7()).collect();
    // One event's delivery to one endpoint is one row: replays of an endpoint take turns
    // here (the partitioned table cannot hold that as a unique key: docs/retention.md).
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('herald replay'), hashtext($1::text))")
        .bind(endpoint_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO herald.deliveries (id, tenant_key, event_id, endpoint_id, status, last_error)
         SELECT id, tenant_key, event_id, $4, 'failed', 'replay: created, not sent yet'
         FROM UNNEST($1::uuid[], $2::text[], $3::text[]) AS t(id, tenant_key, event_id)
         WHERE NOT EXISTS (SELECT 1 FROM herald.deliveries d
                           WHERE d.tenant_key = t.tenant_key AND d.event_id = t.event_id
                             AND d.endpoint_id = $4)",
    )
    .bind(&fresh)
    .bind(&keys)
    .bind(&ids)
    .bind(endpoint_id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Marks the finished deliveries of these events to the endpoint (`failed` only, with
/// `only_failed`; those [`create_missing`] made are `failed`) `pending` again;
/// deliveries still queued are left alone. In the caller's transaction, committed once
/// the tasks are confirmed.
pub async fn requeue(
    tx: &mut Transaction<'_, Postgres>,
    endpoint_id: Uuid,
    events: &[(String, String)],
    only_failed: bool,
) -> Result<Vec<Resend>, sqlx::Error> {
    let keys: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    let ids: Vec<&str> = events.iter().map(|(_, i)| i.as_str()).collect();
    let finished: &[&str] = if only_failed {
        &["failed"]
    } else {
        &["success", "failed"]
    };
    let requeued: Vec<Resend> = sqlx::query_as(
        "UPDATE herald.deliveries d SET status = 'pending', next_retry_at = NULL, updated_at = now(),
            last_error = CASE WHEN d.attempts = 0 THEN NULL ELSE d.last_error END,
            ordering = CASE WHEN d.ordering IS NULL THEN NULL ELSE 'out_of_order' END
         FROM UNNEST($1::text[], $2::text[]) AS t(tenant_key, event_id)
         WHERE d.endpoint_id = $3 AND d.tenant_key = t.tenant_key AND d.event_id = t.event_id
           AND d.status = ANY($4)
         RETURNING d.id, d.tenant_key, d.event_id, d.attempts",
    )
    .bind(&keys)
    .bind(&ids)
    .bind(endpoint_id)
    .bind(finished)
    .fetch_all(&mut **tx)
    .await?;
    Ok(requeued)
}

/// Moves the job's cursor and counters on, in the page's transaction.
pub async fn advance(
    tx: &mut Transaction<'_, Postgres>,
    id: Uuid,
    cursor: (&DateTime<Utc>, &str, &str),
    sent: i64,
    skipped: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE herald.replays SET cursor_at = $2, cursor_key = $3, cursor_id = $4,
            sent = sent + $5, skipped = skipped + $6, heartbeat_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(cursor.0)
    .bind(cursor.1)
    .bind(cursor.2)
    .bind(sent)
    .bind(skipped)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Still working (a job waiting for the work queue to drain is not stale).
pub async fn touch(pool: &PgPool, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE herald.replays SET heartbeat_at = now() WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn finish(pool: &PgPool, id: Uuid, error: Option<&str>) -> Result<Replay, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE herald.replays SET state = CASE WHEN $2::text IS NULL THEN 'done' ELSE 'failed' END,
            error = $2, finished_at = now(), heartbeat_at = now() WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(error)
    .fetch_one(pool)
    .await
}
