//! Retention of the records (docs/retention.md): the day partitions of `herald.events`,
//! `herald.deliveries` and `herald.delivery_attempts` (catalogue `herald.partitions`),
//! created ahead and dropped once older than `retention.window`, and the ring of
//! idempotency slots (`herald.event_keys`) that remembers event ids across days.
//!
//! The partitions and the slots' rotation are SQL functions of migration
//! `20261207000008_retention.sql`; this module calls them and decides what to drop.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{Executor, PgConnection, PgPool};

/// How far ahead day partitions are kept: every process creates them at start and the
/// api role every check, so a day always has its partitions before its first row.
pub const DAYS_AHEAD: i32 = 3;

/// Creates the day partitions from today to [`DAYS_AHEAD`] days on that are missing;
/// returns how many days it created.
pub async fn ensure_partitions(pool: &PgPool) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar("SELECT herald.create_partitions(now(), now() + make_interval(days => $1))")
        .bind(DAYS_AHEAD)
        .fetch_one(pool)
        .await
}

/// Creates the day partitions between two moments that are missing (tests, and
/// operators restoring old records).
pub async fn create_partitions(
    pool: &PgPool,
    first: DateTime<Utc>,
    last: DateTime<Utc>,
) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar("SELECT herald.create_partitions($1, $2)")
        .bind(first)
        .bind(last)
        .fetch_one(pool)
        .await
}

/// One day of partitions: its name suffix (`YYYYMMDD` or `legacy`) and its end.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Day {
    pub name: String,
    pub ends: DateTime<Utc>,
}

/// The days whose end is at or before `cutoff`, oldest first.
pub async fn expired(pool: &PgPool, cutoff: DateTime<Utc>) -> Result<Vec<Day>, sqlx::Error> {
    sqlx::query_as("SELECT name, ends FROM herald.partitions WHERE ends <= $1 ORDER BY ends")
        .bind(cutoff)
        .fetch_all(pool)
        .await
}

/// What became of one expired day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dropped {
    /// Its three partitions were dropped.
    Dropped,
    /// Kept: this many of its deliveries are not finished (pending or retrying).
    Kept { unfinished: i64 },
    /// Another process is removing days (or just removed this one): left to it.
    Busy,
}

/// How long each step of removing a day may wait for a lock before it gives up until
/// the next check.
const LOCK_TIMEOUT: &str = "2s";

/// The three tables of a day, deliveries first: its deliveries are checked once they
/// are detached, and put back if one is not finished.
const TABLES: [&str; 3] = ["deliveries", "delivery_attempts", "events"];

/// Removes one day, unless one of its deliveries is not finished. Each partition is
/// detached with `DETACH PARTITION … CONCURRENTLY`, which never takes more than a
/// SHARE UPDATE EXCLUSIVE lock on the parent table, so ingest and recording go on
/// meanwhile (a plain `DROP` would lock the parent and stall them); the detached tables
/// are then dropped. Its deliveries are counted once detached, when nothing can change
/// them any more, and attached again if one is pending or retrying. A step left half
/// done (a crash, a lock not granted in time) is finished by the next call.
///
/// Runs on a connection of its own under a session advisory lock, and closes it after:
/// `DETACH … CONCURRENTLY` cannot run inside a transaction.
pub async fn drop_day(pool: &PgPool, day: &Day) -> Result<Dropped, sqlx::Error> {
    let name = checked_name(&day.name)?;
    let mut conn = pool.acquire().await?;
    // Closing the connection ends its session, releasing the lock and the setting.
    conn.close_on_drop();
    let ours: bool =
        sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext('herald retention'))")
            .fetch_one(&mut *conn)
            .await?;
    let listed: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM herald.partitions WHERE name = $1)")
            .bind(&day.name)
            .fetch_one(&mut *conn)
            .await?;
    if !ours || !listed {
        return Ok(Dropped::Busy);
    }
    let sql = format!("SET lock_timeout = '{LOCK_TIMEOUT}'");
    conn.execute(sql.as_str()).await?;
    let [deliveries, rest @ ..] = TABLES;
    detach(&mut conn, deliveries, name).await?;
    let unfinished = unfinished(&mut conn, name).await?;
    if unfinished > 0 {
        attach_deliveries(&mut conn, name).await?;
        return Ok(Dropped::Kept { unfinished });
    }
    for table in rest {
        detach(&mut conn, table, name).await?;
    }
    let sql = format!(
        "DROP TABLE IF EXISTS herald.delivery_attempts_{name}, herald.deliveries_{name},
                              herald.events_{name}"
    );
    conn.execute(sql.as_str()).await?;
    sqlx::query("DELETE FROM herald.partitions WHERE name = $1")
        .bind(&day.name)
        .execute(&mut *conn)
        .await?;
    Ok(Dropped::Dropped)
}

/// Where one day's table stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Partition {
    Attached,
    /// A `DETACH … CONCURRENTLY` interrupted between its two transactions.
    DetachPending,
    Detached,
    Missing,
}

async fn partition(
    conn: &mut PgConnection,
    table: &str,
    name: &str,
) -> Result<Partition, sqlx::Error> {
    let row: Option<(Option<bool>,)> = sqlx::query_as(
        "SELECT i.inhdetachpending FROM (SELECT to_regclass($1) AS oid) c
         LEFT JOIN pg_inherits i ON i.inhrelid = c.oid WHERE c.oid IS NOT NULL",
    )
    .bind(format!("herald.{table}_{name}"))
    .fetch_optional(&mut *conn)
    .await?;
    Ok(match row {
        None => Partition::Missing,
        Some((None,)) => Partition::Detached,
        Some((Some(true),)) => Partition::DetachPending,
        Some((Some(false),)) => Partition::Attached,
    })
}

/// Detaches one day's table from its parent, or finishes an interrupted detach.
async fn detach(conn: &mut PgConnection, table: &str, name: &str) -> Result<(), sqlx::Error> {
    let how = match partition(conn, table, name).await? {
        Partition::Attached => "CONCURRENTLY",
        Partition::DetachPending => "FINALIZE",
        Partition::Detached | Partition::Missing => return Ok(()),
    };
    let sql = format!("ALTER TABLE herald.{table} DETACH PARTITION herald.{table}_{name} {how}");
    conn.execute(sql.as_str()).await?;
    Ok(())
}

/// The day's pending and retrying deliveries (none when its table is gone).
async fn unfinished(conn: &mut PgConnection, name: &str) -> Result<i64, sqlx::Error> {
    if partition(conn, "deliveries", name).await? == Partition::Missing {
        return Ok(0);
    }
    sqlx::query_scalar(&format!(
        "SELECT count(*) FROM herald.deliveries_{name} WHERE status IN ('pending', 'retrying')"
    ))
    .fetch_one(&mut *conn)
    .await
}

/// Puts a kept day's deliveries back, with the bounds its catalogue row gives. The
/// check constraint `DETACH … CONCURRENTLY` left on the table spares the scan.
async fn attach_deliveries(conn: &mut PgConnection, name: &str) -> Result<(), sqlx::Error> {
    if partition(conn, "deliveries", name).await? != Partition::Detached {
        return Ok(());
    }
    let (from, to): (String, String) = sqlx::query_as(
        "SELECT CASE WHEN starts = '-infinity' THEN 'MINVALUE'
                     ELSE quote_literal(herald.uuid_v7_floor(starts)) END,
                quote_literal(herald.uuid_v7_floor(ends))
         FROM herald.partitions WHERE name = $1",
    )
    .bind(name)
    .fetch_one(&mut *conn)
    .await?;
    let sql = format!(
        "ALTER TABLE herald.deliveries ATTACH PARTITION herald.deliveries_{name}
             FOR VALUES FROM ({from}) TO ({to})"
    );
    conn.execute(sql.as_str()).await?;
    Ok(())
}

/// A day's name goes into DDL: only the forms the migration makes are accepted.
fn checked_name(name: &str) -> Result<&str, sqlx::Error> {
    let dated = name.len() == 8 && name.bytes().all(|b| b.is_ascii_digit());
    if dated || name == "legacy" {
        Ok(name)
    } else {
        Err(sqlx::Error::Protocol(format!(
            "herald.partitions holds an unexpected name `{name}`"
        )))
    }
}

/// The moment before which records are past `window`: removed, or about to be.
pub fn cutoff(window: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(window)
        .ok()
        .and_then(|w| Utc::now().checked_sub_signed(w))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// The idempotency ring's current slot end, cached so that an ingest batch calls
/// `herald.rotate_event_keys` only when the slot's span may be over.
#[derive(Debug)]
pub struct EventKeys {
    span: Duration,
    current_ends_ms: AtomicI64,
}

impl EventKeys {
    /// `span` is `retention.window`: an event id is remembered for one to two spans.
    pub fn new(span: Duration) -> Self {
        Self {
            span,
            current_ends_ms: AtomicI64::new(i64::MIN),
        }
    }

    /// Makes sure the current slot's span contains `at`, rotating the ring when it is
    /// over. A database round trip once per span (and at start); a comparison otherwise.
    pub async fn ready(&self, pool: &PgPool, at: DateTime<Utc>) -> Result<(), sqlx::Error> {
        if at.timestamp_millis() < self.current_ends_ms.load(Ordering::Relaxed) {
            return Ok(());
        }
        let ends: DateTime<Utc> =
            sqlx::query_scalar("SELECT herald.rotate_event_keys($1, make_interval(secs => $2))")
                .bind(at)
                .bind(self.span.as_secs_f64())
                .fetch_one(pool)
                .await?;
        self.current_ends_ms
            .store(ends.timestamp_millis(), Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_names_the_migration_makes_reach_ddl() {
        for (name, ok) in [
            ("20261207", true),
            ("legacy", true),
            ("2026120", false),
            ("2026120x", false),
            ("x; DROP TABLE herald.endpoints", false),
            ("", false),
        ] {
            assert_eq!(checked_name(name).is_ok(), ok, "{name}");
        }
    }
}
