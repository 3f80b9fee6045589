//! `herald.ops_events`: the outbox of operational events (contract §9). An event is
//! written in the transaction that makes the change it reports, so there is never a
//! change without its event nor an event without its change; `crate::ops` publishes
//! what is unpublished, with confirms, and marks it.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgExecutor, Postgres, Transaction};
use uuid::Uuid;

/// Event types of contract §9 that are not about an endpoint's state
/// (those are in `super::health`).
pub const DEAD_LETTERED: &str = "herald.delivery.dead_lettered";
pub const PARKED: &str = "herald.message.parked";

/// The SQL that records an event of type `$2` about endpoint `$3`, with id `$1`: the
/// endpoint's tenant and name come from its row, `$4` (a JSON object) adds to `data`.
pub(crate) const ABOUT_ENDPOINT: &str = "INSERT INTO herald.ops_events (id, type, tenant_id, data)
    SELECT $1, $2, e.tenant_id,
           jsonb_build_object('endpoint_id', e.id, 'endpoint_name', e.name) || $4::jsonb
    FROM herald.endpoints e WHERE e.id = $3";

/// Records an event about an endpoint (nothing when the endpoint does not exist).
pub async fn about_endpoint<'e>(
    executor: impl PgExecutor<'e>,
    kind: &str,
    endpoint_id: Uuid,
    data: serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(ABOUT_ENDPOINT)
        .bind(Uuid::now_v7())
        .bind(kind)
        .bind(endpoint_id)
        .bind(data)
        .execute(executor)
        .await?;
    Ok(())
}

/// Records an event about no endpoint (a parked message).
pub async fn record<'e>(
    executor: impl PgExecutor<'e>,
    kind: &str,
    tenant_id: Option<&str>,
    data: serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO herald.ops_events (id, type, tenant_id, data) VALUES ($1, $2, $3, $4)",
    )
    .bind(Uuid::now_v7())
    .bind(kind)
    .bind(tenant_id)
    .bind(data)
    .execute(executor)
    .await?;
    Ok(())
}

/// Records one event per element of `data`, all of type `kind` and no tenant, in one
/// statement.
pub async fn record_many(
    pool: &sqlx::PgPool,
    kind: &str,
    data: Vec<serde_json::Value>,
) -> Result<(), sqlx::Error> {
    let ids: Vec<Uuid> = data.iter().map(|_| Uuid::now_v7()).collect();
    sqlx::query(
        "INSERT INTO herald.ops_events (id, type, data)
         SELECT id, $2, data FROM UNNEST($1::uuid[], $3::jsonb[]) AS t (id, data)",
    )
    .bind(ids)
    .bind(kind)
    .bind(data)
    .execute(pool)
    .await?;
    Ok(())
}

/// One recorded event.
#[derive(Debug, Clone, FromRow)]
pub struct OpsRow {
    pub seq: i64,
    pub id: Uuid,
    #[sqlx(rename = "type")]
    pub kind: String,
    pub tenant_id: Option<String>,
    pub data: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

/// The oldest unpublished events, locked for this transaction; events another process
/// is publishing are skipped.
pub async fn take_unpublished(
    tx: &mut Transaction<'_, Postgres>,
    limit: i64,
) -> Result<Vec<OpsRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT seq, id, type, tenant_id, data, created_at FROM herald.ops_events
         WHERE published_at IS NULL ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut **tx)
    .await
}

pub async fn mark_published(
    tx: &mut Transaction<'_, Postgres>,
    seqs: &[i64],
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE herald.ops_events SET published_at = now() WHERE seq = ANY($1)")
        .bind(seqs)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Deletes published events older than `keep`.
pub async fn prune(pool: &sqlx::PgPool, keep: std::time::Duration) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM herald.ops_events WHERE published_at IS NOT NULL AND published_at < now() - $1",
    )
    .bind(chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::days(7)))
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
