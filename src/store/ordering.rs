//! Ordered delivery per key (docs/ordering.md): which delivery of an ordered
//! endpoint's key may be sent now — its head, one row of `herald.ordering_heads` per
//! busy (endpoint, key) — and how the key moves on once the head is finished.
//!
//! The protocol, under PostgreSQL's READ COMMITTED:
//! - ingest inserts the key's new deliveries (`pending`, `ordering = 'in_order'`, each
//!   with its place `ordering_seq`) and, in the same transaction, claims the head with
//!   an upsert that takes the row's lock even when the row exists. The delivery it
//!   names is the head; if that is the new one, ingest dispatches it, else it waits.
//! - once a head is finished (delivered, or dead-lettered: `skipped`), the deliverer
//!   locks the row (`FOR UPDATE`) and then, in a new statement — so it sees whatever
//!   the ingest that held the lock committed — names the next waiting delivery, or
//!   deletes the row when none waits. So a new delivery is either seen by the
//!   deliverer or finds the row gone and claims it: never stranded.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

/// A new ordered delivery of a batch: its endpoint, key and id, in publish order.
pub struct Queued<'a> {
    pub endpoint_id: Uuid,
    pub key: &'a str,
    pub delivery_id: Uuid,
}

/// The places (`ordering_seq`) for `n` new ordered deliveries, ascending: taken from
/// one sequence, so later batches get later places.
pub async fn places(tx: &mut Transaction<'_, Postgres>, n: usize) -> Result<Vec<i64>, sqlx::Error> {
    let mut seq: Vec<i64> =
        sqlx::query_scalar("SELECT nextval('herald.ordering_seq') FROM generate_series(1, $1)")
            .bind(n as i64)
            .fetch_all(&mut **tx)
            .await?;
    seq.sort_unstable();
    Ok(seq)
}

/// Inserts the batch's ordered deliveries (in publish order) and claims the head of
/// each of their keys; returns the new deliveries that are heads now (to dispatch).
pub async fn enqueue(
    tx: &mut Transaction<'_, Postgres>,
    queued: &[Queued<'_>],
    tenant_keys: &[&str],
    event_ids: &[&str],
    event_types: &[&str],
    received_at: DateTime<Utc>,
) -> Result<HashSet<Uuid>, sqlx::Error> {
    if queued.is_empty() {
        return Ok(HashSet::new());
    }
    let places = places(tx, queued.len()).await?;
    sqlx::query(
        "INSERT INTO herald.deliveries
             (id, tenant_key, event_id, endpoint_id, event_type, created_at, updated_at,
              ordering_key, ordering_seq, ordering)
         SELECT id, tenant_key, event_id, endpoint_id, event_type, $5, $5, key, seq, 'in_order'
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::uuid[], $6::text[], $7::bigint[],
                     $8::text[])
              AS t(id, tenant_key, event_id, endpoint_id, key, seq, event_type)",
    )
    .bind(queued.iter().map(|q| q.delivery_id).collect::<Vec<_>>())
    .bind(tenant_keys)
    .bind(event_ids)
    .bind(queued.iter().map(|q| q.endpoint_id).collect::<Vec<_>>())
    .bind(received_at)
    .bind(queued.iter().map(|q| q.key).collect::<Vec<_>>())
    .bind(&places)
    .bind(event_types)
    .execute(&mut **tx)
    .await?;
    // The first new delivery of each key in the batch is the candidate head; the
    // rows are locked in one order (endpoint, key) to keep two batches from deadlock.
    let mut seen = HashSet::new();
    let mut candidates: Vec<&Queued> = queued
        .iter()
        .filter(|q| seen.insert((q.endpoint_id, q.key)))
        .collect();
    candidates.sort_by(|a, b| (a.endpoint_id, a.key).cmp(&(b.endpoint_id, b.key)));
    let heads: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO herald.ordering_heads (endpoint_id, ordering_key, delivery_id)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::uuid[])
         ON CONFLICT (endpoint_id, ordering_key)
             DO UPDATE SET delivery_id = herald.ordering_heads.delivery_id
         RETURNING delivery_id",
    )
    .bind(candidates.iter().map(|q| q.endpoint_id).collect::<Vec<_>>())
    .bind(candidates.iter().map(|q| q.key).collect::<Vec<_>>())
    .bind(candidates.iter().map(|q| q.delivery_id).collect::<Vec<_>>())
    .fetch_all(&mut **tx)
    .await?;
    let ours: HashSet<Uuid> = candidates.iter().map(|q| q.delivery_id).collect();
    Ok(heads.into_iter().filter(|id| ours.contains(id)).collect())
}

/// The delivery that comes next in its key, to dispatch.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Next {
    pub delivery_id: Uuid,
    pub tenant_key: String,
    pub event_id: String,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
}

/// Moves `endpoint_id`'s `key` on past `finished` (its head, now delivered or
/// dead-lettered; `skipped` when dead-lettered): the next waiting delivery becomes
/// the head and is returned, or the key goes idle. `None` too when `finished` is not
/// the head any more (someone moved the key on already).
pub async fn advance(
    pool: &PgPool,
    endpoint_id: Uuid,
    key: &str,
    finished: Uuid,
    skipped: bool,
) -> Result<Option<Next>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let head: Option<Uuid> = sqlx::query_scalar(
        "SELECT delivery_id FROM herald.ordering_heads
         WHERE endpoint_id = $1 AND ordering_key = $2 FOR UPDATE",
    )
    .bind(endpoint_id)
    .bind(key)
    .fetch_optional(&mut *tx)
    .await?;
    if skipped {
        sqlx::query(
            "UPDATE herald.deliveries SET ordering = 'skipped'
             WHERE id = $1 AND status = 'failed' AND ordering = 'in_order'",
        )
        .bind(finished)
        .execute(&mut *tx)
        .await?;
    }
    if head != Some(finished) {
        tx.commit().await?;
        return Ok(None);
    }
    // A new statement after the lock: it sees what a concurrent ingest committed.
    let next: Option<Next> = sqlx::query_as(
        "SELECT id AS delivery_id, tenant_key, event_id, attempts, created_at
         FROM herald.deliveries
         WHERE endpoint_id = $1 AND ordering_key = $2 AND status = 'pending'
           AND ordering = 'in_order' AND id <> $3
         ORDER BY ordering_seq LIMIT 1",
    )
    .bind(endpoint_id)
    .bind(key)
    .bind(finished)
    .fetch_optional(&mut *tx)
    .await?;
    match &next {
        Some(next) => {
            sqlx::query(
                "UPDATE herald.ordering_heads SET delivery_id = $3, since = now()
                 WHERE endpoint_id = $1 AND ordering_key = $2",
            )
            .bind(endpoint_id)
            .bind(key)
            .bind(next.delivery_id)
            .execute(&mut *tx)
            .await?;
        }
        None => {
            sqlx::query(
                "DELETE FROM herald.ordering_heads WHERE endpoint_id = $1 AND ordering_key = $2",
            )
            .bind(endpoint_id)
            .bind(key)
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await?;
    Ok(next)
}

/// Heads never attempted, their key's head for `older_than` and their delivery
/// untouched as long (their task lost), at most 1,000. Each delivery's `updated_at` is
/// set to now, so it is not taken again for `older_than`; the head's `since` stays
/// when it became the head, so [`head_counts`] (and an operator's look at `since`)
/// still sees the key stuck if sending it again does not help.
pub async fn stranded(
    pool: &PgPool,
    older_than: std::time::Duration,
) -> Result<Vec<(Uuid, String, Next)>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        endpoint_id: Uuid,
        ordering_key: String,
        #[sqlx(flatten)]
        next: Next,
    }
    let older_than = chrono::Duration::from_std(older_than).unwrap_or(chrono::Duration::MAX);
    let rows: Vec<Row> = sqlx::query_as(
        "WITH old AS (
             SELECT h.endpoint_id, h.ordering_key, h.delivery_id FROM herald.ordering_heads h
             JOIN herald.deliveries d ON d.id = h.delivery_id
             WHERE d.status = 'pending' AND d.attempts = 0
               AND h.since <= now() - $1 AND d.updated_at <= now() - $1
             LIMIT 1000 FOR UPDATE OF h SKIP LOCKED)
         UPDATE herald.deliveries d SET updated_at = now()
         FROM old
         WHERE d.id = old.delivery_id
         RETURNING old.endpoint_id, old.ordering_key, d.id AS delivery_id, d.tenant_key,
                   d.event_id, d.attempts, d.created_at",
    )
    .bind(older_than)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.endpoint_id, r.ordering_key, r.next))
        .collect())
}

/// The ordered keys at a glance (the api role's gauges, docs/ordering.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct HeadCounts {
    /// Busy keys: one head row each, a delivery in flight or waiting.
    pub active: i64,
    /// Heads their key's head for `older_than` and never attempted: stuck, whether or
    /// not their task was sent again already.
    pub stranded: i64,
    /// Of those, the ones whose delivery is untouched for `older_than` too: what
    /// [`stranded`] would send again now.
    pub due: i64,
}

/// Counts the ordered keys (see [`HeadCounts`]) in one statement, nothing marked. The
/// heads table holds one row per busy key and is read whole (an index on `since` would
/// cost every move-on its HOT update, for a table this small); only the heads older
/// than `older_than` are looked up in `deliveries`, by its primary key.
pub async fn head_counts(
    pool: &PgPool,
    older_than: std::time::Duration,
) -> Result<HeadCounts, sqlx::Error> {
    let older_than = chrono::Duration::from_std(older_than).unwrap_or(chrono::Duration::MAX);
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM herald.ordering_heads) AS active,
                count(*) AS stranded,
                count(*) FILTER (WHERE d.updated_at <= now() - $1) AS due
         FROM herald.ordering_heads h
         JOIN herald.deliveries d ON d.id = h.delivery_id
         WHERE h.since <= now() - $1 AND d.status = 'pending' AND d.attempts = 0",
    )
    .bind(older_than)
    .fetch_one(pool)
    .await
}

/// Where an ordered task's delivery stands when the task comes to be attempted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Turn {
    /// It is its key's head and not finished: send it.
    Now,
    /// It is finished (a copy of an earlier task, after a crash). `still_head`: the
    /// key was not moved on past it yet. `stranded`: the key's head is another
    /// delivery never attempted, whose task may have been lost with the crash.
    Finished {
        still_head: bool,
        stranded: Option<Next>,
    },
    /// Not its turn yet: it is dispatched when its key reaches it.
    Waiting,
    /// No such delivery, or no longer in order (redriven): sent as any other.
    Unordered,
}

/// Where `delivery_id` stands in its key (see [`Turn`]).
pub async fn turn(pool: &PgPool, delivery_id: Uuid) -> Result<Turn, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        status: String,
        ordering: Option<String>,
        head: Option<Uuid>,
        head_status: Option<String>,
        head_attempts: Option<i32>,
        head_tenant_key: Option<String>,
        head_event_id: Option<String>,
        head_created_at: Option<DateTime<Utc>>,
    }
    let row: Option<Row> = sqlx::query_as(
        "SELECT d.status, d.ordering, h.delivery_id AS head, n.status AS head_status,
                n.attempts AS head_attempts, n.tenant_key AS head_tenant_key,
                n.event_id AS head_event_id, n.created_at AS head_created_at
         FROM herald.deliveries d
         LEFT JOIN herald.ordering_heads h
                ON h.endpoint_id = d.endpoint_id AND h.ordering_key = d.ordering_key
         LEFT JOIN herald.deliveries n ON n.id = h.delivery_id
         WHERE d.id = $1",
    )
    .bind(delivery_id)
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else {
        return Ok(Turn::Unordered);
    };
    if row.ordering.as_deref() != Some("in_order") {
        return Ok(Turn::Unordered);
    }
    let finished = matches!(row.status.as_str(), "success" | "failed");
    let is_head = row.head == Some(delivery_id);
    Ok(match (finished, is_head) {
        (false, true) => Turn::Now,
        (false, false) => Turn::Waiting,
        (true, true) => Turn::Finished {
            still_head: true,
            stranded: None,
        },
        (true, false) => {
            let stranded = match (row.head, row.head_tenant_key, row.head_event_id) {
                (Some(id), Some(tenant_key), Some(event_id))
                    if row.head_status.as_deref() == Some("pending")
                        && row.head_attempts == Some(0) =>
                {
                    Some(Next {
                        delivery_id: id,
                        tenant_key,
                        event_id,
                        attempts: 0,
                        created_at: row.head_created_at.unwrap_or_else(Utc::now),
                    })
                }
                _ => None,
            };
            Turn::Finished {
                still_head: false,
                stranded,
            }
        }
    })
}
