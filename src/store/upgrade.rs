//! The part of an upgrade that is proportional to the history, run by `herald migrate`
//! after the schema migrations and never inside one transaction: on 10,000,000
//! deliveries a single `UPDATE` of every row held its write lock for 16 minutes, and a
//! `CREATE INDEX` on a partitioned table blocks writes to all of it while it builds.
//!
//! Migration `20261208000020_delivery_lists.sql` only changes the catalog (a nullable
//! column, a trigger for rows written without it, the lists' indexes declared on the
//! parents `ON ONLY`). This then, in order:
//! 1. fills `deliveries.event_type` of the rows recorded before, in batches of
//!    [`BATCH`] rows by id, each its own short transaction, the position kept in
//!    `herald.upgrade_steps` (a stopped run goes on from there; a finished one is
//!    skipped); rows another transaction holds are skipped, not waited for;
//! 2. builds each day partition's index for every parent index that lacks one —
//!    `CREATE INDEX CONCURRENTLY` on a partition of some size, a plain one (milliseconds
//!    of a write lock on that day alone) on a small one — and attaches it, which makes
//!    the parent index valid once every partition has its own;
//! 3. drops the indexes the new ones replace.
//!
//! Every step looks at what is there first, so running it twice, or two at once, or
//! while Herald serves, is safe. See docs/operations.md "Upgrading a large database".

use std::time::Instant;

use sqlx::PgPool;
use uuid::Uuid;

/// Deliveries looked at per backfill transaction: at 10M rows a batch takes tens of
/// milliseconds and locks at most this many rows (docs/benchmarks.md "Growth").
pub const BATCH: i64 = 5_000;

/// Partitions smaller than this get their index in one plain statement: a write lock
/// on that one day for the few milliseconds it takes, instead of the three passes and
/// the waits for every open transaction of `CREATE INDEX CONCURRENTLY` (which on a
/// fresh database's ~35 empty days would take seconds).
const SMALL_PARTITION_BYTES: i64 = 8 << 20;

/// An index declared on a partitioned table `ON ONLY` by a migration.
struct PartitionedIndex {
    /// The parent index, in schema `herald`.
    name: &'static str,
    /// Appended to a partition's name for its own index.
    suffix: &'static str,
    /// Column list and predicate, as in `CREATE INDEX … ON table <definition>`.
    definition: &'static str,
}

/// The indexes of migration `20261208000020_delivery_lists.sql`.
const INDEXES: [PartitionedIndex; 6] = [
    PartitionedIndex {
        name: "deliveries_by_endpoint_id",
        suffix: "by_endpoint_id",
        definition: "(endpoint_id, id)",
    },
    PartitionedIndex {
        name: "deliveries_unfinished_by_id",
        suffix: "unfinished_by_id",
        definition: "(status, id) WHERE status IN ('pending', 'retrying', 'failed')",
    },
    PartitionedIndex {
        name: "deliveries_by_event_type",
        suffix: "by_event_type",
        definition: "(event_type, id)",
    },
    PartitionedIndex {
        name: "deliveries_by_tenant",
        suffix: "by_tenant",
        definition: "(tenant_key, id)",
    },
    PartitionedIndex {
        name: "events_by_arrival",
        suffix: "by_arrival",
        definition: "(received_at, tenant_key, id)",
    },
    PartitionedIndex {
        name: "events_by_tenant_arrival",
        suffix: "by_tenant_arrival",
        definition: "(tenant_key, received_at, id)",
    },
];

/// Indexes the ones above replace: in another order than the lists', or a prefix.
const REPLACED: [&str; 3] = [
    "deliveries_by_endpoint",
    "deliveries_not_succeeded",
    "events_by_received_at",
];

const BACKFILL: &str = "deliveries.event_type";

/// SQLSTATE of a `lock_timeout` that ran out.
const LOCK_NOT_AVAILABLE: &str = "55P03";

/// Steps 1–3 above; a no-op (a few catalog reads) on a database where they are done.
pub async fn finish(pool: &PgPool) -> Result<(), sqlx::Error> {
    backfill_event_types(pool).await?;
    for index in &INDEXES {
        build_partition_indexes(pool, index).await?;
    }
    drop_replaced(pool).await
}

/// Fills `event_type` of deliveries recorded without it, oldest first, [`BATCH`] ids a
/// transaction. The event is looked for in the days around the delivery's creation
/// first (a few partitions), then anywhere (a replay of an old event); a delivery
/// whose event is gone keeps NULL.
async fn backfill_event_types(pool: &PgPool) -> Result<(), sqlx::Error> {
    let (cursor, done): (Option<Uuid>, bool) = sqlx::query_as(
        "SELECT cursor, done_at IS NOT NULL FROM herald.upgrade_steps WHERE name = $1",
    )
    .bind(BACKFILL)
    .fetch_optional(pool)
    .await?
    .unwrap_or_default();
    if done {
        return Ok(());
    }
    let started = Instant::now();
    let mut cursor = cursor.unwrap_or(Uuid::nil());
    let (mut looked_at, mut filled, mut batches) = (0u64, 0u64, 0u64);
    loop {
        let mut tx = pool.begin().await?;
        let window: Vec<(Uuid, bool)> = sqlx::query_as(
            "SELECT id, event_type IS NULL FROM herald.deliveries
             WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(cursor)
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await?;
        let Some(&(last, _)) = window.last() else {
            tx.rollback().await?;
            break;
        };
        let missing: Vec<Uuid> = window
            .iter()
            .filter_map(|&(id, missing)| missing.then_some(id))
            .collect();
        if !missing.is_empty() {
            // The id bounds let the planner read one or two day partitions.
            let typed: Vec<(Uuid, String)> = sqlx::query_as(
                "SELECT d.id, coalesce(near.type, far.type)
                 FROM herald.deliveries d
                 LEFT JOIN LATERAL (
                     SELECT e.type FROM herald.events e
                     WHERE e.tenant_key = d.tenant_key AND e.id = d.event_id
                       AND e.received_at > d.created_at - interval '1 day'
                       AND e.received_at <= d.created_at + interval '1 hour'
                     LIMIT 1) near ON true
                 LEFT JOIN LATERAL (
                     SELECT e.type FROM herald.events e
                     WHERE near.type IS NULL
                       AND e.tenant_key = d.tenant_key AND e.id = d.event_id
                     LIMIT 1) far ON true
                 WHERE d.id = ANY($1) AND d.id >= $2 AND d.id <= $3
                   AND d.event_type IS NULL AND coalesce(near.type, far.type) IS NOT NULL
                 FOR UPDATE OF d SKIP LOCKED",
            )
            .bind(&missing)
            .bind(missing[0])
            .bind(last)
            .fetch_all(&mut *tx)
            .await?;
            if !typed.is_empty() {
                let (ids, types): (Vec<Uuid>, Vec<String>) = typed.into_iter().unzip();
                filled += sqlx::query(
                    "UPDATE herald.deliveries d SET event_type = t.type
                     FROM UNNEST($1::uuid[], $2::text[]) AS t(id, type)
                     WHERE d.id = t.id AND d.id >= $3 AND d.id <= $4",
                )
                .bind(&ids)
                .bind(&types)
                .bind(missing[0])
                .bind(last)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            }
        }
        save_cursor(&mut tx, last, false).await?;
        tx.commit().await?;
        cursor = last;
        looked_at += window.len() as u64;
        batches += 1;
        if batches % 200 == 0 {
            tracing::info!(
                looked_at,
                filled,
                seconds = started.elapsed().as_secs(),
                "upgrade: filling deliveries.event_type"
            );
        }
    }
    let mut tx = pool.begin().await?;
    save_cursor(&mut tx, cursor, true).await?;
    tx.commit().await?;
    if looked_at > 0 {
        tracing::info!(
            looked_at,
            filled,
            batches,
            seconds = started.elapsed().as_secs_f64(),
            "upgrade: deliveries.event_type filled"
        );
    }
    Ok(())
}

async fn save_cursor(
    tx: &mut sqlx::PgConnection,
    cursor: Uuid,
    done: bool,
) -> Result<(), sqlx::Error> {
    // GREATEST: two runs at once each move it forward only.
    sqlx::query(
        "INSERT INTO herald.upgrade_steps (name, cursor, done_at)
         VALUES ($1, $2, CASE WHEN $3 THEN now() END)
         ON CONFLICT (name) DO UPDATE SET cursor = GREATEST(upgrade_steps.cursor, EXCLUDED.cursor),
             done_at = coalesce(upgrade_steps.done_at, EXCLUDED.done_at)",
    )
    .bind(BACKFILL)
    .bind(cursor)
    .bind(done)
    .execute(tx)
    .await?;
    Ok(())
}

/// Each partition of the index's table that has no index attached to it gets one,
/// built beside the writers, and it is attached.
async fn build_partition_indexes(
    pool: &PgPool,
    index: &PartitionedIndex,
) -> Result<(), sqlx::Error> {
    // Partitions without an index attached to the parent index: their name, size, and
    // whether an index of the name this would give is there already (valid or not:
    // an interrupted `CREATE INDEX CONCURRENTLY` leaves an invalid one).
    let todo: Vec<(String, i64, Option<bool>)> = sqlx::query_as(
        "SELECT part.relname::text, pg_relation_size(part.oid),
                (SELECT x.indisvalid FROM pg_index x JOIN pg_class xc ON xc.oid = x.indexrelid
                 WHERE x.indrelid = part.oid AND xc.relname = part.relname || '_' || $2)
         FROM pg_index pi
         JOIN pg_class parent_index ON parent_index.oid = pi.indexrelid
         JOIN pg_namespace n ON n.oid = parent_index.relnamespace
         JOIN pg_inherits inh ON inh.inhparent = pi.indrelid
         JOIN pg_class part ON part.oid = inh.inhrelid
         WHERE n.nspname = 'herald' AND parent_index.relname = $1
           AND NOT EXISTS (
               SELECT 1 FROM pg_inherits ii JOIN pg_index ci ON ci.indexrelid = ii.inhrelid
               WHERE ii.inhparent = pi.indexrelid AND ci.indrelid = part.oid)
         ORDER BY part.relname",
    )
    .bind(index.name)
    .bind(index.suffix)
    .fetch_all(pool)
    .await?;
    for (partition, bytes, existing) in todo {
        let own = format!("{partition}_{}", index.suffix);
        let started = Instant::now();
        let result = async {
            if existing == Some(false) {
                sqlx::raw_sql(&format!("DROP INDEX CONCURRENTLY IF EXISTS herald.{own}"))
                    .execute(pool)
                    .await?;
            }
            if existing != Some(true) {
                let concurrently = if bytes < SMALL_PARTITION_BYTES {
                    ""
                } else {
                    "CONCURRENTLY"
                };
                sqlx::raw_sql(&format!(
                    "CREATE INDEX {concurrently} IF NOT EXISTS {own}
                     ON herald.{partition} {}",
                    index.definition
                ))
                .execute(pool)
                .await?;
            }
            sqlx::raw_sql(&format!(
                "ALTER INDEX herald.{} ATTACH PARTITION herald.{own}",
                index.name
            ))
            .execute(pool)
            .await?;
            Ok::<_, sqlx::Error>(())
        }
        .await;
        if let Err(error) = result {
            // Retention may have detached and dropped the day meanwhile.
            let still_there: Option<String> =
                sqlx::query_scalar("SELECT to_regclass('herald.' || $1)::text")
                    .bind(&partition)
                    .fetch_one(pool)
                    .await?;
            if still_there.is_some() {
                return Err(error);
            }
            continue;
        }
        if bytes >= SMALL_PARTITION_BYTES {
            tracing::info!(
                index = own,
                mib = bytes >> 20,
                seconds = started.elapsed().as_secs_f64(),
                "upgrade: partition index built"
            );
        }
    }
    Ok(())
}

/// Drops the replaced indexes once every new one is valid (all partitions have theirs).
async fn drop_replaced(pool: &PgPool) -> Result<(), sqlx::Error> {
    let names: Vec<String> = INDEXES.iter().map(|i| i.name.to_string()).collect();
    let invalid: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid
         JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'herald' AND c.relname = ANY($1) AND NOT x.indisvalid",
    )
    .bind(&names)
    .fetch_one(pool)
    .await?;
    if invalid > 0 {
        return Ok(());
    }
    let present: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'herald' AND c.relname = ANY($1)",
    )
    .bind(REPLACED.map(String::from).to_vec())
    .fetch_all(pool)
    .await?;
    for name in present {
        // A partitioned index has no DROP … CONCURRENTLY: the drop takes the tables'
        // ACCESS EXCLUSIVE lock for a moment; waiting for it at most 5 s keeps the hot
        // path from queueing behind a long wait (the next `herald migrate` retries).
        let mut tx = pool.begin().await?;
        sqlx::raw_sql("SET LOCAL lock_timeout = '5s'")
            .execute(&mut *tx)
            .await?;
        let dropped = sqlx::raw_sql(&format!("DROP INDEX IF EXISTS herald.{name}"))
            .execute(&mut *tx)
            .await;
        match dropped {
            Ok(_) => tx.commit().await?,
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(LOCK_NOT_AVAILABLE) => {
                tracing::warn!(
                    index = name,
                    "upgrade: not dropped (the table stayed busy for 5 s); \
                     the next `herald migrate` drops it"
                );
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
