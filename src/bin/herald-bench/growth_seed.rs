//! The growth scenario's history: N deliveries with their events and attempts written
//! by set-based SQL as Herald writes them, over the last 20 UTC days (docs/retention.md:
//! events by `received_at`, deliveries and attempts by UUIDv7 id, event keys in the
//! idempotency ring), one day per statement so that each insert fills one partition.
//!
//! What the rows look like: 40 endpoints of 20 tenants (tenant `t` has a share of the
//! events that falls with `t`, from 29 % down to 2 %) and 4 without a tenant (4 % of
//! the events); 12 event types from 30 % down to 0.5 %; two deliveries per event; 96 % `success` (one
//! attempt, 5 % of them two), 3.5 % `failed` and dead-lettered after six attempts, and in
//! the last 6 hours 0.5 % `retrying` (two attempts so far). No endpoint matches the
//! bench's own `bench.*` events, so the measured runs fan out as on an empty database.

use std::time::Instant;

use chrono::{DateTime, Utc};

use sqlx::PgPool;

use crate::run::{Bench, EndpointSpec};

pub const TYPES: [&str; 12] = [
    "sales.order.created",
    "sales.order.updated",
    "billing.invoice.issued",
    "billing.invoice.paid",
    "inventory.stock.moved",
    "sales.order.shipped",
    "crm.contact.updated",
    "billing.payment.failed",
    "hr.employee.hired",
    "sales.quote.sent",
    "inventory.item.created",
    "hr.payroll.closed",
];

/// Each type's share of the events, ‰ (in the order of `TYPES`).
pub const TYPE_SHARES: [i32; 12] = [300, 180, 120, 100, 80, 60, 50, 40, 30, 20, 15, 5];

/// Where each type's share ends in 0..1000, but the last's.
fn type_bounds() -> Vec<i32> {
    TYPE_SHARES
        .iter()
        .scan(0, |sum, share| {
            *sum += share;
            Some(*sum)
        })
        .take(TYPE_SHARES.len() - 1)
        .collect()
}

pub const TENANTS: usize = 20;
const DAYS: i64 = 20;

/// Endpoints of the seeded history: two per tenant, then four without a tenant; their
/// patterns match seeded types only.
pub fn endpoints() -> Vec<EndpointSpec> {
    let with = |patterns: &[&str], tenant: Option<String>| EndpointSpec {
        patterns: patterns.iter().map(|p| p.to_string()).collect(),
        tenant,
        ..EndpointSpec::simple("", 0)
    };
    (0..TENANTS * 2)
        .map(|i| {
            let tenant = Some(format!("tenant-{}", i / 2));
            if i % 2 == 0 {
                with(&["sales.#", "crm.#"], tenant)
            } else {
                with(&["billing.#", "inventory.#", "hr.#"], tenant)
            }
        })
        .chain((0..4).map(|_| with(&["sales.#", "billing.#", "inventory.#"], None)))
        .collect()
}

/// What was seeded, and how long it took.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct Seeded {
    pub events: i64,
    pub deliveries: i64,
    pub attempts: i64,
    pub seconds: f64,
    pub analyze_seconds: f64,
}

/// Seeds `deliveries` deliveries (rounded to an even number) into the migrated
/// database behind `pool`.
pub async fn seed(bench: &Bench, pool: &PgPool, deliveries: i64) -> anyhow::Result<Seeded> {
    let started = Instant::now();
    bench.insert_endpoints(pool, &endpoints()).await?;
    let events = deliveries / 2;
    sqlx::query("SELECT herald.create_partitions(now() - $1 * interval '1 day', now())")
        .bind(DAYS + 1)
        .execute(pool)
        .await?;
    // As the first ingest batch does: the ring's current slot takes the keys.
    sqlx::query("SELECT herald.rotate_event_keys(now(), interval '30 days')")
        .execute(pool)
        .await?;
    let base = Utc::now();
    let per_day = (events / DAYS).max(1);
    for day in 0..DAYS {
        let first = day * per_day + 1;
        let last = if day == DAYS - 1 {
            events
        } else {
            first + per_day - 1
        };
        seed_day(pool, first, last, events, base).await?;
        eprintln!(
            "  growth: seeded day {}/{DAYS} ({:.0?})",
            day + 1,
            started.elapsed()
        );
    }
    let seconds = started.elapsed().as_secs_f64();
    let analyzed = Instant::now();
    // What autovacuum has long done on a database with 20 days of history: statistics
    // and visibility maps (index-only scans).
    sqlx::query("VACUUM (ANALYZE) herald.events, herald.deliveries, herald.delivery_attempts, herald.event_keys")
        .execute(pool)
        .await?;
    let count = |table: &'static str| async move {
        sqlx::query_scalar::<_, i64>(&format!("SELECT count(*) FROM herald.{table}"))
            .fetch_one(pool)
            .await
    };
    Ok(Seeded {
        events: count("events").await?,
        deliveries: count("deliveries").await?,
        attempts: count("delivery_attempts").await?,
        seconds,
        analyze_seconds: analyzed.elapsed().as_secs_f64(),
    })
}

/// Events `first..=last` of `total` in one statement (events → keys → deliveries →
/// attempts, chained by `RETURNING`): event `n` received at `base − 20 days − 10 min +
/// n/total × 20 days`; `h`, `h2` are stable hashes of `n` in 0..1000 that pick tenant
/// and type, a hash of (event, k) the status of its delivery `k`.
async fn seed_day(
    pool: &PgPool,
    first: i64,
    last: i64,
    total: i64,
    base: DateTime<Utc>,
) -> anyhow::Result<()> {
    sqlx::query(
        r#"WITH ev AS (
             INSERT INTO herald.events
                 (id, type, tenant_id, source, occurred_at, payload, received_at, dispatched_at)
             SELECT 'seed-' || n, ($5::text[])[1 + (SELECT count(*) FROM unnest($6::int4[]) AS c WHERE c <= h2)::int],
                    CASE WHEN h < 40 THEN NULL
                         ELSE 'tenant-' || floor(20 * power((h - 40) / 960.0, 2.5))::int END,
                    '/erp/seed', at - interval '80 ms',
                    ('{"order":' || n || ',"customer":"c-' || (h * 7 % 997)
                      || '","lines":[{"sku":"sku-' || h2 || '","qty":' || (1 + h % 9)
                      || ',"price":"' || (h2 * 13 % 10000) || '.00"}],"note":"'
                      || repeat('x', 180) || '"}')::json,
                    at, at + interval '40 ms'
             FROM (SELECT n, abs(hashint8(n)) % 1000 AS h, abs(hashint8(n + 7919)) % 1000 AS h2,
                          $4::timestamptz - interval '20 days' - interval '10 minutes'
                            + (n::float8 / $3) * interval '20 days' AS at
                   FROM generate_series($1::int8, $2::int8) AS n) s
             RETURNING id, tenant_id, tenant_key, received_at
         ), keys AS (
             INSERT INTO herald.event_keys (slot, tenant_key, id, received_at)
             SELECT (SELECT slot FROM herald.event_key_slots ORDER BY ends DESC LIMIT 1),
                    tenant_key, id, received_at
             FROM ev
         ), eps AS (
             SELECT id, tenant_id,
                    row_number() OVER (PARTITION BY tenant_id ORDER BY url) - 1 AS k
             FROM herald.endpoints
         ), del AS (
             INSERT INTO herald.deliveries
                 (id, tenant_key, event_id, endpoint_id, status, attempts, next_retry_at,
                  last_status_code, last_error, created_at, updated_at, delivered_at,
                  dead_reason, dead_at)
             SELECT herald.uuid_v7(e.received_at), e.tenant_key, e.id, ep.id, st.status,
                    CASE st.status WHEN 'failed' THEN 6 WHEN 'retrying' THEN 2
                                   ELSE 1 + (st.h % 20 = 0)::int END,
                    CASE WHEN st.status = 'retrying' THEN $4 + interval '10 minutes' END,
                    CASE st.status WHEN 'success' THEN 200 ELSE 503 END,
                    CASE st.status WHEN 'failed' THEN 'retries_exhausted: HTTP 503'
                                   WHEN 'retrying' THEN 'HTTP 503' END,
                    e.received_at,
                    e.received_at + CASE st.status
                        WHEN 'failed' THEN interval '5 hours 21 minutes'
                        WHEN 'retrying' THEN interval '6 minutes'
                        ELSE interval '35 ms' END,
                    CASE WHEN st.status = 'success' THEN e.received_at + interval '35 ms' END,
                    CASE WHEN st.status = 'failed' THEN 'retries_exhausted' END,
                    CASE WHEN st.status = 'failed'
                         THEN e.received_at + interval '5 hours 21 minutes' END
             FROM ev e
             CROSS JOIN generate_series(0, 1) AS kk(k)
             JOIN eps ep ON ep.tenant_id IS NOT DISTINCT FROM e.tenant_id
                        AND ep.k = CASE WHEN e.tenant_id IS NULL
                                        THEN (abs(hashtext(e.id)) % 2) * 2 + kk.k
                                        ELSE kk.k END
             CROSS JOIN LATERAL (SELECT abs(hashtext(e.id || kk.k)) % 1000 AS h) hh
             CROSS JOIN LATERAL (
                 SELECT hh.h,
                        CASE WHEN hh.h < 35 THEN 'failed'
                             WHEN hh.h < 40 AND e.received_at > $4 - interval '6 hours'
                                 THEN 'retrying'
                             ELSE 'success' END AS status) st
             RETURNING id, status, attempts, created_at
         )
         INSERT INTO herald.delivery_attempts
             (delivery_id, attempt, status_code, error, duration_ms, response_body,
              attempted_at, request_headers)
         SELECT d.id, a,
                CASE WHEN a = d.attempts AND d.status = 'success' THEN 200 ELSE 503 END,
                NULL, 12 + a * 3,
                CASE WHEN a = d.attempts AND d.status = 'success' THEN 'ok'
                     ELSE 'unavailable' END,
                d.created_at + (a - 1) * interval '1 minute',
                '{"content-type":"application/json","user-agent":"Herald/0.1.0","webhook-id":"seed","webhook-signature":"v1,[redacted]","webhook-timestamp":"1765000000"}'::jsonb
         FROM del d CROSS JOIN LATERAL generate_series(1, d.attempts) AS a"#,
    )
    .bind(first)
    .bind(last)
    .bind(total as f64)
    .bind(base)
    .bind(TYPES.map(String::from).to_vec())
    .bind(type_bounds())
    .execute(pool)
    .await?;
    Ok(())
}
