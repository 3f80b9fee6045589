//! `herald.endpoint_health`: each endpoint's failure streak and circuit breaker, shared
//! by every process of a deployment; and the endpoint state changes that go with it
//! (disable, enable), each written with its operational event in one transaction.
//! The decisions are `crate::delivery::breaker`'s; these are the writes.

use std::time::Duration;

use serde_json::json;
use sqlx::{FromRow, PgPool};
use uuid::Uuid;

use super::ops;

/// Event types of contract §9.
pub const FAILING: &str = "herald.endpoint.failing";
pub const RECOVERED: &str = "herald.endpoint.recovered";
pub const DISABLED: &str = "herald.endpoint.disabled";
pub const ENABLED: &str = "herald.endpoint.enabled";

/// An endpoint with a failure streak, as every process caches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromRow)]
pub struct Troubled {
    pub endpoint_id: Uuid,
    pub open: bool,
}

/// Every endpoint with a failure streak: few, so read whole.
pub async fn troubled(pool: &PgPool) -> Result<Vec<Troubled>, sqlx::Error> {
    sqlx::query_as("SELECT endpoint_id, open_since IS NOT NULL AS open FROM herald.endpoint_health")
        .fetch_all(pool)
        .await
}

/// The streak after one more failure was counted.
#[derive(Debug, Clone, Copy, FromRow)]
pub struct CountedFailure {
    pub failures: i32,
    pub failing_for_s: f64,
    pub open: bool,
}

/// Counts a failed attempt (starting a streak when there is none) in `tx`; `None` when
/// the endpoint is disabled or deleted: an attempt that was in flight when it was
/// disabled starts no new streak (which would open its breaker, and report it, again).
pub async fn count_failure(
    tx: &mut sqlx::PgConnection,
    endpoint_id: Uuid,
    status: Option<u16>,
    error: &str,
) -> Result<Option<CountedFailure>, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO herald.endpoint_health AS h
            (endpoint_id, consecutive_failures, last_status_code, last_error)
         SELECT $1, 1, $2, $3 FROM herald.endpoints
         WHERE id = $1 AND enabled AND deleted_at IS NULL
         ON CONFLICT (endpoint_id) DO UPDATE SET
            consecutive_failures = h.consecutive_failures + 1,
            last_status_code = EXCLUDED.last_status_code,
            last_error = EXCLUDED.last_error,
            updated_at = now()
         RETURNING consecutive_failures AS failures,
            EXTRACT(EPOCH FROM now() - failing_since)::float8 AS failing_for_s,
            open_since IS NOT NULL AS open",
    )
    .bind(endpoint_id)
    .bind(status.map(i32::from))
    .bind(error)
    .fetch_optional(tx)
    .await
}

/// Opens the breaker (once: `false` when another process did first) and records
/// `herald.endpoint.failing`.
pub async fn open(
    tx: &mut sqlx::PgConnection,
    endpoint_id: Uuid,
    probe_interval: Duration,
    failures: i32,
    last_status: Option<u16>,
    last_error: &str,
) -> Result<bool, sqlx::Error> {
    let opened = sqlx::query(
        "UPDATE herald.endpoint_health SET open_since = now(), next_probe_at = now() + $2
         WHERE endpoint_id = $1 AND open_since IS NULL",
    )
    .bind(endpoint_id)
    .bind(interval(probe_interval))
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if opened {
        let data = json!({
            "reason": format!("{failures} failed attempts in a row"),
            "consecutive_failures": failures,
            "last_status": last_status,
            "last_error": last_error,
        });
        ops::about_endpoint(&mut *tx, FAILING, endpoint_id, data).await?;
    }
    Ok(opened)
}

/// What an open breaker lets a task do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Passage {
    /// The breaker is closed (another process closed it): send as usual.
    Closed,
    /// This task is the probe: send it.
    Probe,
    /// Wait this long, until the next probe is due.
    Hold(Duration),
}

/// Claims the probe when it is due (one task of the whole deployment per interval).
pub async fn pass(
    pool: &PgPool,
    endpoint_id: Uuid,
    probe_interval: Duration,
) -> Result<Passage, sqlx::Error> {
    let (probe, wait_s): (bool, Option<f64>) = sqlx::query_as(
        "WITH claim AS (
            UPDATE herald.endpoint_health SET next_probe_at = now() + $2
            WHERE endpoint_id = $1 AND open_since IS NOT NULL AND next_probe_at <= now()
            RETURNING 1)
         SELECT EXISTS (SELECT 1 FROM claim),
            (SELECT GREATEST(EXTRACT(EPOCH FROM next_probe_at - now()), 0)::float8
             FROM herald.endpoint_health WHERE endpoint_id = $1 AND open_since IS NOT NULL)",
    )
    .bind(endpoint_id)
    .bind(interval(probe_interval))
    .fetch_one(pool)
    .await?;
    Ok(match (probe, wait_s) {
        (true, _) => Passage::Probe,
        (false, None) => Passage::Closed,
        (false, Some(wait)) => Passage::Hold(Duration::from_secs_f64(wait)),
    })
}

/// A success ends the streak; when the breaker was open, records
/// `herald.endpoint.recovered`. One statement: the delete and its event together.
pub async fn succeeded(pool: &PgPool, endpoint_id: Uuid) -> Result<bool, sqlx::Error> {
    let recovered: Option<(i32,)> = sqlx::query_as(
        "WITH gone AS (
            DELETE FROM herald.endpoint_health WHERE endpoint_id = $1
            RETURNING open_since, failing_since, consecutive_failures)
         INSERT INTO herald.ops_events (id, type, tenant_id, data)
         SELECT $2, $3, e.tenant_id, jsonb_build_object(
                'endpoint_id', e.id, 'endpoint_name', e.name,
                'reason', 'an attempt succeeded',
                'failing_since', g.failing_since, 'failing_from', g.open_since,
                'consecutive_failures', g.consecutive_failures)
         FROM gone g JOIN herald.endpoints e ON e.id = $1
         WHERE g.open_since IS NOT NULL
         RETURNING 1",
    )
    .bind(endpoint_id)
    .bind(Uuid::now_v7())
    .bind(RECOVERED)
    .fetch_optional(pool)
    .await?;
    Ok(recovered.is_some())
}

/// Disables an endpoint with `reason` (once: `false` when it was disabled already),
/// ends its streak and records `herald.endpoint.disabled`.
pub async fn disable(
    tx: &mut sqlx::PgConnection,
    endpoint_id: Uuid,
    reason: &str,
    data: serde_json::Value,
) -> Result<bool, sqlx::Error> {
    let changed = sqlx::query(
        "UPDATE herald.endpoints SET enabled = false, disabled_reason = $2, updated_at = now()
         WHERE id = $1 AND enabled AND deleted_at IS NULL",
    )
    .bind(endpoint_id)
    .bind(reason)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    sqlx::query("DELETE FROM herald.endpoint_health WHERE endpoint_id = $1")
        .bind(endpoint_id)
        .execute(&mut *tx)
        .await?;
    if changed {
        let mut data = data;
        data["reason"] = json!(reason);
        ops::about_endpoint(&mut *tx, DISABLED, endpoint_id, data).await?;
    }
    Ok(changed)
}

/// Enables or disables an endpoint of `scope` (any, for `None`) by an owner's request:
/// when the state changes, records `herald.endpoint.enabled` or `…disabled`; enabling
/// closes the breaker. `None` when there is no such endpoint.
pub async fn set_enabled(
    pool: &PgPool,
    scope: Option<&str>,
    endpoint_id: Uuid,
    enabled: bool,
    reason: &str,
) -> Result<Option<bool>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let was: Option<(bool,)> = sqlx::query_as(
        "SELECT enabled FROM herald.endpoints
         WHERE id = $1 AND deleted_at IS NULL AND ($2::text IS NULL OR tenant_id = $2)
         FOR UPDATE",
    )
    .bind(endpoint_id)
    .bind(scope)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((was,)) = was else {
        return Ok(None);
    };
    let changed = was != enabled;
    if changed && !enabled {
        disable(&mut tx, endpoint_id, reason, json!({ "by": "owner" })).await?;
    } else if changed {
        sqlx::query(
            "UPDATE herald.endpoints SET enabled = true, disabled_reason = NULL, updated_at = now()
             WHERE id = $1",
        )
        .bind(endpoint_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM herald.endpoint_health WHERE endpoint_id = $1")
            .bind(endpoint_id)
            .execute(&mut *tx)
            .await?;
        let data = json!({ "reason": reason, "by": "owner" });
        ops::about_endpoint(&mut *tx, ENABLED, endpoint_id, data).await?;
    }
    tx.commit().await?;
    Ok(Some(changed))
}

/// Endpoints per state (`enabled`, `failing`, `disabled`), deleted ones left out.
pub async fn state_counts(pool: &PgPool) -> Result<[(&'static str, i64); 3], sqlx::Error> {
    let (enabled, failing, disabled): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE e.enabled AND h.open_since IS NULL),
                count(*) FILTER (WHERE e.enabled AND h.open_since IS NOT NULL),
                count(*) FILTER (WHERE NOT e.enabled)
         FROM herald.endpoints e LEFT JOIN herald.endpoint_health h ON h.endpoint_id = e.id
         WHERE e.deleted_at IS NULL",
    )
    .fetch_one(pool)
    .await?;
    Ok([
        ("enabled", enabled),
        ("failing", failing),
        ("disabled", disabled),
    ])
}

fn interval(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}
