//! The dead-letter queue as the records hold it: deliveries `failed` with a time of
//! death (`dead_at`) and not purged. Lists, counts and the chunks that redrive and
//! purge jobs work through, by one filter; and `herald.dlq_jobs`, the jobs themselves.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgArguments;
use sqlx::{Arguments, FromRow, PgExecutor, PgPool};
use uuid::Uuid;

/// What a list or a job selects; `None` means any. Every field narrows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = DlqSelection)]
pub struct Filter {
    /// The caller's tenant: deliveries to its endpoints only (a tenant token).
    #[serde(skip)]
    #[schema(ignore)]
    pub scope: Option<String>,
    /// The event's tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_id: Option<Uuid>,
    /// `retries_exhausted`, `gone`, `endpoint_disabled`, `endpoint_deleted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    /// Dead-lettered at or after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
    /// Dead-lettered before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_ids: Option<Vec<Uuid>>,
}

/// The rows a filter selects; parameters `$1`…`$8`, see [`Filter::arguments`].
/// A delivery carries its event's type and tenant key (migration
/// `20261208000020_delivery_lists.sql`): no probe of the events' day partitions.
const SELECTED: &str = "FROM herald.deliveries d
    JOIN herald.endpoints ep ON ep.id = d.endpoint_id
    WHERE d.status = 'failed' AND d.dead_at IS NOT NULL AND d.purged_at IS NULL
      AND ($1::text IS NULL OR ep.tenant_id = $1)
      AND ($2::text IS NULL OR d.tenant_key = $2)
      AND ($3::uuid IS NULL OR d.endpoint_id = $3)
      AND ($4::text IS NULL OR d.dead_reason = $4)
      AND ($5::text IS NULL OR d.event_type = $5)
      AND ($6::timestamptz IS NULL OR d.dead_at >= $6)
      AND ($7::timestamptz IS NULL OR d.dead_at < $7)
      AND ($8::uuid[] IS NULL OR d.id = ANY($8))";

impl Filter {
    fn arguments(&self) -> PgArguments {
        let mut args = PgArguments::default();
        let added = (|| {
            args.add(self.scope.as_deref())?;
            args.add(self.tenant_id.as_deref())?;
            args.add(self.endpoint_id)?;
            args.add(self.reason.as_deref())?;
            args.add(self.event_type.as_deref())?;
            args.add(self.since)?;
            args.add(self.until)?;
            args.add(self.delivery_ids.as_deref())?;
            Ok::<_, sqlx::error::BoxDynError>(())
        })();
        added.expect("these types always encode");
        args
    }

    fn with(
        &self,
        more: impl FnOnce(&mut PgArguments) -> Result<(), sqlx::error::BoxDynError>,
    ) -> PgArguments {
        let mut args = self.arguments();
        more(&mut args).expect("these types always encode");
        args
    }
}

/// A dead delivery as SREs see it in the dead-letter queue.
#[derive(Debug, Clone, Serialize, FromRow, utoipa::ToSchema)]
#[schema(as = DeadLetter)]
pub struct DeadView {
    pub id: Uuid,
    pub event_id: String,
    pub event_type: String,
    #[schema(required = true)]
    pub tenant_id: Option<String>,
    pub endpoint_id: Uuid,
    pub url: String,
    /// `enabled`, `failing`… as now: `disabled` deliveries are refused by a redrive
    /// unless it enables their endpoint.
    pub endpoint_enabled: bool,
    /// `retries_exhausted`, `gone`, `endpoint_disabled`, `endpoint_deleted`.
    #[schema(required = true)]
    pub reason: Option<String>,
    pub attempts: i32,
    #[schema(required = true)]
    pub last_status_code: Option<i32>,
    #[schema(required = true)]
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub dead_at: DateTime<Utc>,
}

/// Dead deliveries newest first, below `before` (the last id of the page before).
pub async fn list(
    pool: &PgPool,
    filter: &Filter,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<DeadView>, sqlx::Error> {
    let sql = format!(
        "SELECT d.id, d.event_id, coalesce(d.event_type, (SELECT e.type FROM herald.events e
            WHERE e.tenant_key = d.tenant_key AND e.id = d.event_id LIMIT 1), '') AS event_type,
                NULLIF(d.tenant_key, '') AS tenant_id, d.endpoint_id, ep.url,
                ep.enabled AS endpoint_enabled, d.dead_reason AS reason, d.attempts,
                d.last_status_code, d.last_error, d.created_at, d.dead_at
         {SELECTED} AND ($9::uuid IS NULL OR d.id < $9)
         ORDER BY d.id DESC LIMIT $10"
    );
    let args = filter.with(|a| {
        a.add(before)?;
        a.add(limit.clamp(1, 10_001))
    });
    sqlx::query_as_with(&sql, args).fetch_all(pool).await
}

/// How many dead deliveries the filter selects.
pub async fn count(pool: &PgPool, filter: &Filter) -> Result<i64, sqlx::Error> {
    let sql = format!("SELECT count(*) {SELECTED}");
    sqlx::query_scalar_with(&sql, filter.arguments())
        .fetch_one(pool)
        .await
}

/// Every delivery in the dead-letter queue, for deciding whether its copies need a
/// sweep.
pub async fn total(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM herald.deliveries
         WHERE status = 'failed' AND dead_at IS NOT NULL AND purged_at IS NULL",
    )
    .fetch_one(pool)
    .await
}

/// A dead delivery a job works on, with what a redrive needs to know of its endpoint.
#[derive(Debug, Clone, FromRow)]
pub struct Dead {
    pub id: Uuid,
    pub event_id: String,
    pub tenant_key: String,
    pub endpoint_id: Uuid,
    pub attempts: i32,
    pub endpoint_enabled: bool,
    pub endpoint_deleted: bool,
}

/// The next `limit` dead deliveries after `after`, oldest id first; only those whose
/// event is still recorded (a redrive rebuilds the webhook from it).
pub async fn chunk(
    pool: &PgPool,
    filter: &Filter,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Dead>, sqlx::Error> {
    let sql = format!(
        "SELECT d.id, d.event_id, d.tenant_key, d.endpoint_id, d.attempts,
                ep.enabled AS endpoint_enabled, ep.deleted_at IS NOT NULL AS endpoint_deleted
         {SELECTED} AND ($9::uuid IS NULL OR d.id > $9)
           AND EXISTS (SELECT 1 FROM herald.events e
                       WHERE e.tenant_key = d.tenant_key AND e.id = d.event_id)
         ORDER BY d.id LIMIT $10"
    );
    let args = filter.with(|a| {
        a.add(after)?;
        a.add(limit)
    });
    sqlx::query_as_with(&sql, args).fetch_all(pool).await
}

/// Marks dead deliveries `pending` again, in the redrive's transaction (which commits
/// once their tasks are confirmed); returns those that were still dead.
pub async fn mark_redriven(
    executor: impl PgExecutor<'_>,
    ids: &[Uuid],
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE herald.deliveries SET status = 'pending', next_retry_at = NULL, updated_at = now(),
             dead_reason = NULL, dead_at = NULL,
             -- Its key moved on without it: from now on it is delivered out of order.
             ordering = CASE WHEN ordering IS NULL THEN NULL ELSE 'out_of_order' END
         WHERE id = ANY($1) AND status = 'failed' AND dead_at IS NOT NULL AND purged_at IS NULL
         RETURNING id",
    )
    .bind(ids)
    .fetch_all(executor)
    .await
}

/// Notes that dead deliveries were purged (they stay `failed`); returns how many were
/// still in the queue.
pub async fn mark_purged(executor: impl PgExecutor<'_>, ids: &[Uuid]) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE herald.deliveries SET purged_at = now()
         WHERE id = ANY($1) AND status = 'failed' AND dead_at IS NOT NULL AND purged_at IS NULL",
    )
    .bind(ids)
    .execute(executor)
    .await?;
    Ok(done.rows_affected())
}

/// What the records say of a delivery whose copy sits in the dead-letter queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordOfCopy {
    /// `failed`, not purged: still in the dead-letter queue.
    pub dead: bool,
    pub attempts: i32,
    /// Its time of death in ms since the epoch.
    pub dead_at_ms: Option<i64>,
}

/// The records of `ids`; a delivery without a record is absent.
pub async fn records_of_copies(
    pool: &PgPool,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, RecordOfCopy>, sqlx::Error> {
    let rows: Vec<(Uuid, bool, i32, Option<i64>)> = sqlx::query_as(
        "SELECT id, status = 'failed' AND dead_at IS NOT NULL AND purged_at IS NULL, attempts,
                floor(extract(epoch FROM dead_at) * 1000)::int8
         FROM herald.deliveries WHERE id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, dead, attempts, dead_at_ms)| {
            (
                id,
                RecordOfCopy {
                    dead,
                    attempts,
                    dead_at_ms,
                },
            )
        })
        .collect())
}
