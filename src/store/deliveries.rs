//! `herald.deliveries` and `herald.delivery_attempts`: outcomes recorded in batches,
//! and the views SREs read (failed deliveries, attempts).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgPool};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = DeliveryStatus)]
pub enum Status {
    Pending,
    Retrying,
    Success,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Retrying => "retrying",
            Status::Success => "success",
            Status::Failed => "failed",
        }
    }
}

/// One HTTP attempt.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub attempt: i32,
    pub status_code: Option<i32>,
    /// Failure class when there was no response (`timeout`, `connect`, …).
    pub error: Option<String>,
    pub duration_ms: i32,
    pub response_body: Option<String>,
    /// The request headers sent, redacted, as a JSON object (`crate::delivery::sent_headers`).
    pub request_headers: Option<Arc<str>>,
}

/// The new state of a delivery after an attempt (or after finding its endpoint gone).
#[derive(Debug, Clone)]
pub struct Outcome {
    pub delivery_id: Uuid,
    pub attempt: Option<AttemptRecord>,
    pub status: Status,
    pub attempts: i32,
    pub next_retry_at: Option<DateTime<Utc>>,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    pub at: DateTime<Utc>,
    /// Present when the delivery's row may not be written yet (a first attempt made by
    /// ingest): this outcome writes it. An outcome `pending` with no attempt only
    /// writes the row, if it is not there yet.
    pub new_row: Option<Arc<NewRow>>,
}

/// What a delivery's row is created with, besides its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRow {
    pub tenant_key: String,
    pub event_id: String,
    pub event_type: String,
    pub endpoint_id: Uuid,
    /// When its event was received.
    pub created_at: DateTime<Utc>,
}

/// Records many outcomes in one transaction: attempts inserted, deliveries written or
/// updated. A delivery already `success` is never moved back (a duplicate task after a
/// crash), nor is a later attempt's outcome overwritten by an earlier one's. A `failed`
/// one is in the dead-letter queue from `at`, for the reason its `last_error` starts
/// with (`retries_exhausted: HTTP 500`).
pub async fn record_outcomes(pool: &PgPool, outcomes: &[Outcome]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let attempts: Vec<(&Outcome, &AttemptRecord)> = outcomes
        .iter()
        .filter_map(|o| o.attempt.as_ref().map(|a| (o, a)))
        .collect();
    if !attempts.is_empty() {
        sqlx::query(
            "INSERT INTO herald.delivery_attempts
                 (delivery_id, attempt, status_code, error, duration_ms, response_body, attempted_at,
                  request_headers)
             SELECT u.id, u.attempt, u.status_code, u.error, u.duration_ms, u.body, u.at,
                    u.headers::jsonb
             FROM UNNEST($1::uuid[], $2::int4[], $3::int4[], $4::text[], $5::int4[],
                         $6::text[], $7::timestamptz[], $8::text[])
                  AS u(id, attempt, status_code, error, duration_ms, body, at, headers)
             ON CONFLICT (delivery_id, attempt) DO NOTHING",
        )
        .bind(attempts.iter().map(|(o, _)| o.delivery_id).collect::<Vec<_>>())
        .bind(attempts.iter().map(|(_, a)| a.attempt).collect::<Vec<_>>())
        .bind(attempts.iter().map(|(_, a)| a.status_code).collect::<Vec<_>>())
        .bind(attempts.iter().map(|(_, a)| a.error.as_deref()).collect::<Vec<_>>())
        .bind(attempts.iter().map(|(_, a)| a.duration_ms).collect::<Vec<_>>())
        .bind(attempts.iter().map(|(_, a)| a.response_body.as_deref()).collect::<Vec<_>>())
        .bind(attempts.iter().map(|(o, _)| o.at).collect::<Vec<_>>())
        .bind(attempts.iter().map(|(_, a)| a.request_headers.as_deref()).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    }
    let (new, known): (Vec<&Outcome>, Vec<&Outcome>) =
        outcomes.iter().partition(|o| o.new_row.is_some());
    if !new.is_empty() {
        write_rows(&mut tx, &latest_per_delivery(new)).await?;
    }
    if !known.is_empty() {
        update_rows(&mut tx, &known).await?;
    }
    tx.commit().await
}

/// One outcome per delivery, the latest (most attempts; one with an attempt before one
/// without): a statement that writes rows may touch each row once.
fn latest_per_delivery(mut outcomes: Vec<&Outcome>) -> Vec<&Outcome> {
    let rank = |o: &Outcome| (o.attempts, o.status != Status::Pending);
    outcomes.sort_by(|a, b| (a.delivery_id, rank(b)).cmp(&(b.delivery_id, rank(a))));
    outcomes.dedup_by_key(|o| o.delivery_id);
    outcomes
}

/// Writes the rows of deliveries that may not have one yet, with their outcome; one
/// already there is updated as [`update_rows`] would (a `pending` outcome leaves it).
async fn write_rows(tx: &mut sqlx::PgConnection, outcomes: &[&Outcome]) -> Result<(), sqlx::Error> {
    let row = |o: &&Outcome| o.new_row.clone().expect("partitioned on new_row");
    let rows: Vec<Arc<NewRow>> = outcomes.iter().map(row).collect();
    sqlx::query(
        "INSERT INTO herald.deliveries AS d
             (id, tenant_key, event_id, endpoint_id, event_type, created_at, status, attempts,
              next_retry_at, last_status_code, last_error, delivered_at, dead_reason, dead_at,
              updated_at)
         SELECT u.id, u.tenant_key, u.event_id, u.endpoint_id, u.event_type, u.created_at,
                u.status, u.attempts,
                u.next_retry_at, u.last_status_code, u.last_error,
                CASE WHEN u.status = 'success' THEN u.at END,
                CASE WHEN u.status = 'failed' THEN split_part(u.last_error, ':', 1) END,
                CASE WHEN u.status = 'failed' THEN u.at END,
                u.at
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::timestamptz[],
                     $6::text[], $7::int4[], $8::timestamptz[], $9::int4[], $10::text[],
                     $11::timestamptz[], $12::text[])
              AS u(id, tenant_key, event_id, endpoint_id, created_at, status, attempts,
                   next_retry_at, last_status_code, last_error, at, event_type)
         ON CONFLICT (id) DO UPDATE SET
             status = EXCLUDED.status,
             attempts = GREATEST(d.attempts, EXCLUDED.attempts),
             next_retry_at = EXCLUDED.next_retry_at,
             last_status_code = COALESCE(EXCLUDED.last_status_code, d.last_status_code),
             last_error = EXCLUDED.last_error,
             delivered_at = COALESCE(EXCLUDED.delivered_at, d.delivered_at),
             dead_reason = EXCLUDED.dead_reason,
             dead_at = EXCLUDED.dead_at,
             purged_at = NULL,
             updated_at = EXCLUDED.updated_at
         WHERE d.status <> 'success' AND d.attempts <= EXCLUDED.attempts
           AND EXCLUDED.status <> 'pending'",
    )
    .bind(outcomes.iter().map(|o| o.delivery_id).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|r| r.tenant_key.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|r| r.event_id.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.endpoint_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.created_at).collect::<Vec<_>>())
    .bind(
        outcomes
            .iter()
            .map(|o| o.status.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(outcomes.iter().map(|o| o.attempts).collect::<Vec<_>>())
    .bind(outcomes.iter().map(|o| o.next_retry_at).collect::<Vec<_>>())
    .bind(
        outcomes
            .iter()
            .map(|o| o.last_status_code)
            .collect::<Vec<_>>(),
    )
    .bind(
        outcomes
            .iter()
            .map(|o| o.last_error.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(outcomes.iter().map(|o| o.at).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|r| r.event_type.as_str())
            .collect::<Vec<_>>(),
    )
    .execute(tx)
    .await?;
    Ok(())
}

/// Updates the rows of deliveries written earlier with their outcome.
async fn update_rows(
    tx: &mut sqlx::PgConnection,
    outcomes: &[&Outcome],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE herald.deliveries d SET
             status = u.status,
             attempts = GREATEST(d.attempts, u.attempts),
             next_retry_at = u.next_retry_at,
             last_status_code = COALESCE(u.last_status_code, d.last_status_code),
             last_error = u.last_error,
             delivered_at = CASE WHEN u.status = 'success' THEN u.at ELSE d.delivered_at END,
             dead_reason = CASE WHEN u.status = 'failed' THEN split_part(u.last_error, ':', 1) END,
             dead_at = CASE WHEN u.status = 'failed' THEN u.at END,
             purged_at = NULL,
             updated_at = u.at
         FROM UNNEST($1::uuid[], $2::text[], $3::int4[], $4::timestamptz[], $5::int4[],
                     $6::text[], $7::timestamptz[])
              AS u(id, status, attempts, next_retry_at, last_status_code, last_error, at)
         WHERE d.id = u.id AND d.status <> 'success' AND d.attempts <= u.attempts",
    )
    .bind(outcomes.iter().map(|o| o.delivery_id).collect::<Vec<_>>())
    .bind(
        outcomes
            .iter()
            .map(|o| o.status.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(outcomes.iter().map(|o| o.attempts).collect::<Vec<_>>())
    .bind(outcomes.iter().map(|o| o.next_retry_at).collect::<Vec<_>>())
    .bind(
        outcomes
            .iter()
            .map(|o| o.last_status_code)
            .collect::<Vec<_>>(),
    )
    .bind(
        outcomes
            .iter()
            .map(|o| o.last_error.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(outcomes.iter().map(|o| o.at).collect::<Vec<_>>())
    .execute(tx)
    .await?;
    Ok(())
}

/// A delivery as SREs see it.
#[derive(Debug, Clone, Serialize, FromRow, utoipa::ToSchema)]
#[schema(as = Delivery)]
pub struct DeliveryView {
    pub id: Uuid,
    pub event_id: String,
    pub event_type: String,
    #[schema(required = true)]
    pub tenant_id: Option<String>,
    pub endpoint_id: Uuid,
    pub url: String,
    #[schema(value_type = Status)]
    pub status: String,
    pub attempts: i32,
    #[schema(required = true)]
    pub next_retry_at: Option<DateTime<Utc>>,
    #[schema(required = true)]
    pub last_status_code: Option<i32>,
    #[schema(required = true)]
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[schema(required = true)]
    pub delivered_at: Option<DateTime<Utc>>,
    /// The event's ordering key, when its endpoint delivers in order (docs/ordering.md).
    #[schema(required = true)]
    pub ordering_key: Option<String>,
    /// With an ordering key: `in_order` (delivered in its key's order, or waiting for
    /// its turn), `skipped` (dead-lettered; its key moved on without it) or
    /// `out_of_order` (redriven after its key moved on: delivered out of order).
    #[schema(required = true, value_type = Option<String>, example = "in_order")]
    pub ordering: Option<String>,
}

// A delivery carries its event's type and tenant key (migration
// `20261208000020_delivery_lists.sql`): reading them does not probe the events' day
// partitions for every row. A row recorded before that migration and not yet filled by
// `herald migrate`'s backfill (src/store/upgrade.rs) reads its type from the event, as
// before; a filter on the type finds it once it is filled.
const VIEW: &str =
    "SELECT d.id, d.event_id, coalesce(d.event_type, (SELECT e.type FROM herald.events e
            WHERE e.tenant_key = d.tenant_key AND e.id = d.event_id LIMIT 1), '') AS event_type,
        NULLIF(d.tenant_key, '') AS tenant_id, d.endpoint_id,
        ep.url, d.status, d.attempts, d.next_retry_at, d.last_status_code, d.last_error,
        d.created_at, d.updated_at, d.delivered_at, d.ordering_key, d.ordering
    FROM herald.deliveries d
    JOIN herald.endpoints ep ON ep.id = d.endpoint_id";

/// Filters for listing deliveries; `None` means any.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    /// The caller's tenant: deliveries to its endpoints only (a tenant token).
    pub scope: Option<String>,
    /// The event's tenant (the admin's filter).
    pub tenant: Option<String>,
    pub status: Option<String>,
    pub endpoint_id: Option<Uuid>,
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    pub http_status: Option<i32>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Ids below this one (the last of the page before); ids are UUIDv7, newest last.
    pub before: Option<Uuid>,
    pub limit: i64,
}

/// Deliveries newest first. Only the filters given are in the statement, so each
/// combination is planned for what it asks — an index that matches it, read in id
/// order (migration `20261208000020_delivery_lists.sql`) — never as one plan of
/// `($1 IS NULL OR …)` for every filter at once.
pub async fn list(pool: &PgPool, filter: &Filter) -> Result<Vec<DeliveryView>, sqlx::Error> {
    let mut sql = sqlx::QueryBuilder::<sqlx::Postgres>::new(VIEW);
    sql.push(" WHERE true");
    if let Some(status) = &filter.status {
        sql.push(" AND d.status = ").push_bind(status);
    }
    if let Some(endpoint_id) = filter.endpoint_id {
        sql.push(" AND d.endpoint_id = ").push_bind(endpoint_id);
    }
    if let Some(event_id) = &filter.event_id {
        sql.push(" AND d.event_id = ").push_bind(event_id);
    }
    if let Some(scope) = &filter.scope {
        // A tenant's endpoints receive only its events (crate::subscriptions, replays),
        // so their deliveries carry its key: the same rows, found by the tenant index.
        sql.push(" AND ep.tenant_id = ").push_bind(scope);
        sql.push(" AND d.tenant_key = ").push_bind(scope);
    }
    if let Some(tenant) = &filter.tenant {
        sql.push(" AND d.tenant_key = ").push_bind(tenant);
    }
    if let Some(event_type) = &filter.event_type {
        sql.push(" AND d.event_type = ").push_bind(event_type);
    }
    if let Some(code) = filter.http_status {
        sql.push(" AND d.last_status_code = ").push_bind(code);
    }
    // A delivery's id is a UUIDv7 made within moments of its `created_at`; bounds on
    // the id (an hour wider: any skew between clocks) let the scan start and end in the
    // right day partitions instead of filtering every newer row.
    if let Some(since) = filter.since {
        sql.push(" AND d.created_at >= ").push_bind(since);
        sql.push(" AND d.id >= herald.uuid_v7_floor(")
            .push_bind(since)
            .push(" - interval '1 hour')");
    }
    if let Some(until) = filter.until {
        sql.push(" AND d.created_at < ").push_bind(until);
        sql.push(" AND d.id < herald.uuid_v7_floor(")
            .push_bind(until)
            .push(" + interval '1 hour')");
    }
    if let Some(before) = filter.before {
        sql.push(" AND d.id < ").push_bind(before);
    }
    sql.push(" ORDER BY d.id DESC LIMIT ")
        .push_bind(filter.limit.clamp(1, 10_001));
    sql.build_query_as().fetch_all(pool).await
}

/// One delivery; `scope` confines it to deliveries to one tenant's endpoints.
pub async fn get(
    pool: &PgPool,
    scope: Option<&str>,
    id: Uuid,
) -> Result<Option<DeliveryView>, sqlx::Error> {
    sqlx::query_as(&format!(
        "{VIEW} WHERE d.id = $1 AND ($2::text IS NULL OR ep.tenant_id = $2)"
    ))
    .bind(id)
    .bind(scope)
    .fetch_optional(pool)
    .await
}

/// Deliveries of one event, oldest first.
pub async fn of_event(
    pool: &PgPool,
    scope: Option<&str>,
    tenant_key: &str,
    event_id: &str,
) -> Result<Vec<DeliveryView>, sqlx::Error> {
    sqlx::query_as(&format!(
        "{VIEW} WHERE d.tenant_key = $1 AND d.event_id = $2
            AND ($3::text IS NULL OR ep.tenant_id = $3)
         ORDER BY d.id LIMIT 10000"
    ))
    .bind(tenant_key)
    .bind(event_id)
    .bind(scope)
    .fetch_all(pool)
    .await
}

/// One HTTP attempt of a delivery.
#[derive(Debug, Clone, Serialize, FromRow, utoipa::ToSchema)]
#[schema(as = Attempt)]
pub struct AttemptView {
    pub attempt: i32,
    #[schema(required = true)]
    pub status_code: Option<i32>,
    #[schema(required = true)]
    pub error: Option<String>,
    pub duration_ms: i32,
    #[schema(required = true)]
    pub response_body: Option<String>,
    /// The request headers Herald sent, by lowercase name: static header values shown
    /// as `[redacted]`, signatures as their scheme and `[redacted]` (`v1,[redacted]`,
    /// `sha256=[redacted]`), every other value as sent. `null` for attempts recorded
    /// before Herald kept them.
    #[schema(value_type = Option<std::collections::BTreeMap<String, String>>, required = true)]
    pub request_headers: Option<serde_json::Value>,
    pub attempted_at: DateTime<Utc>,
}

pub async fn attempts(pool: &PgPool, delivery_id: Uuid) -> Result<Vec<AttemptView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT attempt, status_code, error, duration_ms, response_body, request_headers,
                attempted_at
         FROM herald.delivery_attempts WHERE delivery_id = $1 ORDER BY attempt",
    )
    .bind(delivery_id)
    .fetch_all(pool)
    .await
}

/// Marks redriven deliveries as pending again; in the redrive's transaction, which
/// commits once their new tasks are confirmed (see `crate::dlq`).
pub async fn mark_redriven(
    executor: impl sqlx::PgExecutor<'_>,
    ids: &[Uuid],
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE herald.deliveries SET status = 'pending', next_retry_at = NULL, updated_at = now(),
             ordering = CASE WHEN ordering IS NULL THEN NULL ELSE 'out_of_order' END
         WHERE id = ANY($1) AND status = 'failed'",
    )
    .bind(ids)
    .execute(executor)
    .await?;
    Ok(done.rows_affected())
}

/// Marks a finished delivery `pending` again for a new attempt on request; in the
/// caller's transaction, which commits once the task is confirmed. 0 when the delivery
/// is not finished (already queued).
pub async fn mark_requeued(
    executor: impl sqlx::PgExecutor<'_>,
    id: Uuid,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE herald.deliveries SET status = 'pending', next_retry_at = NULL, updated_at = now(),
             dead_reason = NULL, dead_at = NULL, purged_at = NULL,
             -- Sent again on request after its key moved on: out of order.
             ordering = CASE WHEN ordering IS NULL THEN NULL ELSE 'out_of_order' END
         WHERE id = $1 AND status IN ('success', 'failed')",
    )
    .bind(id)
    .execute(executor)
    .await?;
    Ok(done.rows_affected())
}

/// Of `ids`, those of deliveries to endpoints of `scope` (every one when `None`).
pub async fn owned(
    pool: &PgPool,
    scope: Option<&str>,
    ids: &[Uuid],
) -> Result<std::collections::HashSet<Uuid>, sqlx::Error> {
    let rows: Vec<Uuid> = sqlx::query_scalar(
        "SELECT d.id FROM herald.deliveries d JOIN herald.endpoints ep ON ep.id = d.endpoint_id
         WHERE d.id = ANY($1) AND ($2::text IS NULL OR ep.tenant_id = $2)",
    )
    .bind(ids)
    .bind(scope)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Every endpoint of a tenant, deleted ones included (their deliveries are its own).
pub async fn endpoints_of_tenant(
    pool: &PgPool,
    tenant: &str,
) -> Result<std::collections::HashSet<Uuid>, sqlx::Error> {
    let rows: Vec<Uuid> =
        sqlx::query_scalar("SELECT id FROM herald.endpoints WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().collect())
}

/// Count of deliveries per status, for tests and the CLI.
pub async fn count_by_status(pool: &PgPool) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT status, count(*) FROM herald.deliveries GROUP BY status ORDER BY status")
        .fetch_all(pool)
        .await
}
