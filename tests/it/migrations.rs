//! `herald migrate` as operators run it: again and again on one database, as the user
//! `herald` (whose default `search_path` starts with a schema of that name), and on
//! databases left by earlier versions of Herald.

use herald::store::{self, MIGRATOR};
use sqlx::PgPool;

use crate::common::TestEnv;

/// Where the migration records are: rows in `herald._sqlx_migrations` and whether a
/// `public._sqlx_migrations` exists.
async fn records(pool: &PgPool) -> (i64, bool) {
    let exists: bool =
        sqlx::query_scalar("SELECT to_regclass('herald._sqlx_migrations') IS NOT NULL")
            .fetch_one(pool)
            .await
            .unwrap();
    let herald: i64 = if exists {
        sqlx::query_scalar("SELECT count(*) FROM herald._sqlx_migrations WHERE success")
            .fetch_one(pool)
            .await
            .unwrap()
    } else {
        -1
    };
    let public: bool =
        sqlx::query_scalar("SELECT to_regclass('public._sqlx_migrations') IS NOT NULL")
            .fetch_one(pool)
            .await
            .unwrap();
    (herald, public)
}

#[tokio::test]
async fn migrate_run_three_times_by_the_herald_user_is_a_no_op_after_the_first() {
    let env = TestEnv::unmigrated().await;
    // The test databases are reached as user `herald`, the contract's default.
    let user: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(user, "herald");
    for run in 1..=3 {
        let output = env.herald_command().arg("migrate").output().unwrap();
        assert!(
            output.status.success(),
            "run {run} of `herald migrate` failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert_eq!(
        records(&env.pool).await,
        (MIGRATOR.iter().count() as i64, false)
    );
    assert_eq!(env.count("SELECT count(*) FROM herald.endpoints").await, 0);
    env.cleanup().await;
}

#[tokio::test]
async fn a_database_an_earlier_version_could_no_longer_migrate_is_repaired() {
    let env = TestEnv::unmigrated().await;
    // What versions before the fix did: the migrator with the session's own
    // search_path, in a process of its own (a failed run keeps its session's advisory
    // lock until the connection closes). The first run records into public (schema
    // herald not there yet)…
    let old = store::pool(&env.settings.database).unwrap();
    MIGRATOR.run(&old).await.expect("first run of the old way");
    assert_eq!(records(&env.pool).await, (-1, true));
    // …and the second, finding schema herald, starts over there and fails.
    let again = MIGRATOR.run(&old).await;
    assert!(again.is_err(), "the old way should fail the second time");
    old.close().await;
    assert_eq!(
        records(&env.pool).await.0,
        0,
        "empty herald table left behind"
    );
    // Another application's migration record in public must survive the repair.
    sqlx::query(
        "INSERT INTO public._sqlx_migrations
             (version, description, success, checksum, execution_time)
         VALUES (1, 'someone else''s', true, '\\x00', 1)",
    )
    .execute(&env.pool)
    .await
    .unwrap();

    for _ in 0..2 {
        store::migrate(&env.pool)
            .await
            .expect("migrate repairs and runs");
    }
    assert_eq!(
        records(&env.pool).await,
        (MIGRATOR.iter().count() as i64, true)
    );
    let left: Vec<i64> = sqlx::query_scalar("SELECT version FROM public._sqlx_migrations")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    assert_eq!(
        left,
        vec![1],
        "only the other application's row stays in public"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn a_database_migrated_once_by_an_earlier_version_moves_its_records() {
    let env = TestEnv::unmigrated().await;
    MIGRATOR.run(&env.pool).await.expect("old way, once");
    store::migrate(&env.pool).await.expect("new way");
    store::migrate(&env.pool).await.expect("new way, again");
    assert_eq!(
        records(&env.pool).await,
        (MIGRATOR.iter().count() as i64, false)
    );
    env.cleanup().await;
}

#[tokio::test]
async fn events_recorded_before_tenants_counted_in_their_identity_keep_their_deliveries() {
    let env = TestEnv::unmigrated().await;
    // The schema as the first two migrations left it, with data in it.
    let before = sqlx::migrate::Migrator {
        migrations: std::borrow::Cow::Owned(MIGRATOR.iter().take(2).cloned().collect()),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    before.run(&env.pool).await.expect("the earlier migrations");
    let endpoint = uuid::Uuid::new_v4();
    sqlx::raw_sql(&format!(
        "INSERT INTO herald.endpoints (id, url, event_types, secret)
             VALUES ('{endpoint}', 'https://example.com/hook', '{{#}}', 'whsec_x');
         INSERT INTO herald.events (id, type, tenant_id, occurred_at, payload)
             VALUES ('order-1', 'sales.order.created', 'acme', now(), '{{}}'),
                    ('order-2', 'sales.order.created', NULL, now(), '{{}}');
         INSERT INTO herald.deliveries (id, event_id, endpoint_id, status)
             VALUES ('{}', 'order-1', '{endpoint}', 'success'),
                    ('{}', 'order-2', '{endpoint}', 'failed');",
        uuid::Uuid::now_v7(),
        uuid::Uuid::now_v7(),
    ))
    .execute(&env.pool)
    .await
    .unwrap();

    store::migrate(&env.pool)
        .await
        .expect("migrate to the latest");
    let kept: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT d.tenant_key, d.event_id, d.status FROM herald.deliveries d
         JOIN herald.events e ON e.tenant_key = d.tenant_key AND e.id = d.event_id
         ORDER BY d.event_id",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        kept,
        [
            ("acme".into(), "order-1".into(), "success".into()),
            (String::new(), "order-2".into(), "failed".into())
        ]
    );
    // Another tenant may now use the same id; the same tenant still may not.
    let insert = |tenant: &'static str| {
        sqlx::query(
            "INSERT INTO herald.events (id, type, tenant_id, occurred_at, payload)
             VALUES ('order-1', 'sales.order.created', $1, now(), '{}')",
        )
        .bind(tenant)
        .execute(&env.pool)
    };
    insert("globex").await.expect("another tenant's order-1");
    assert!(insert("acme").await.is_err(), "acme's order-1 twice");
    env.cleanup().await;
}

/// An upgrade of a database with history to the lists' schema (migration
/// `20261208000020_delivery_lists.sql` and src/store/upgrade.rs): the migration only
/// changes the catalog; `herald migrate` then fills the deliveries' event type in
/// batches and builds every day partition's index (concurrently on a day of some
/// size), and drops the indexes they replace, passing over a row another transaction
/// holds rather than waiting for it. Twice is a no-op.
#[tokio::test]
async fn upgrading_a_recorded_history_fills_event_types_in_batches_and_builds_the_list_indexes() {
    let env = TestEnv::unmigrated().await;
    let latest = MIGRATOR
        .iter()
        .position(|m| m.version == 20261208000020)
        .expect("the lists' migration");
    let before = sqlx::migrate::Migrator {
        migrations: std::borrow::Cow::Owned(MIGRATOR.iter().take(latest).cloned().collect()),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    // Recorded in schema herald (as `herald migrate` does), so that the schema step
    // of the lists' migration can be applied on its own below.
    sqlx::query("CREATE SCHEMA herald")
        .execute(&env.pool)
        .await
        .unwrap();
    let mut conn = env.pool.acquire().await.unwrap();
    sqlx::query("SET search_path TO herald")
        .execute(&mut *conn)
        .await
        .unwrap();
    before
        .run(&mut *conn)
        .await
        .expect("the earlier migrations");
    // Three days of history: 60,000 deliveries two days ago (a day of more than 8 MiB:
    // its indexes are built concurrently), 2,000 yesterday; two of today's deliveries
    // are of a two-day-old event (a replay), one of an event no longer recorded.
    let endpoint = uuid::Uuid::new_v4();
    sqlx::raw_sql(&format!(
        "SELECT herald.create_partitions(now() - interval '3 days', now());
         INSERT INTO herald.endpoints (id, url, event_types, secret)
             VALUES ('{endpoint}', 'https://example.com/hook', '{{#}}', 'whsec_x');
         INSERT INTO herald.events (id, type, tenant_id, occurred_at, payload, received_at)
             SELECT 'old-' || n, 'sales.order.t' || (n % 7), NULL, now(), '{{}}',
                    now() - interval '2 days' + n * interval '1 ms'
             FROM generate_series(1, 60000) n;
         INSERT INTO herald.events (id, type, tenant_id, occurred_at, payload, received_at)
             SELECT 'new-' || n, 'billing.invoice.paid', 'acme', now(), '{{}}',
                    now() - interval '1 day' + n * interval '1 ms'
             FROM generate_series(1, 2000) n;
         INSERT INTO herald.deliveries (id, tenant_key, event_id, endpoint_id, status, created_at)
             SELECT herald.uuid_v7(e.received_at), e.tenant_key, e.id, '{endpoint}',
                    'success', e.received_at
             FROM herald.events e;
         INSERT INTO herald.deliveries (id, tenant_key, event_id, endpoint_id, status)
             VALUES (herald.uuid_v7(now()), '', 'old-7', '{endpoint}', 'pending'),
                    (herald.uuid_v7(now()), '', 'gone', '{endpoint}', 'failed');"
    ))
    .execute(&env.pool)
    .await
    .unwrap();

    // The schema step alone (what `herald migrate` runs first, in one transaction)…
    MIGRATOR
        .run(&mut *conn)
        .await
        .expect("the lists' schema migration");
    sqlx::query("RESET search_path")
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    // …then, as the hot path would, another transaction holds one recorded delivery
    // while the backfill runs: the backfill passes over it instead of waiting. (It is let
    // go once the backfill is done: the concurrent index builds wait for older
    // transactions.)
    let mut holder = env.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM herald.deliveries WHERE event_id = 'old-3' FOR UPDATE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let release_when_filled = async {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        let done = || {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM herald.upgrade_steps WHERE done_at IS NOT NULL",
            )
            .fetch_one(&env.pool)
        };
        while done().await.unwrap_or(0) == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the backfill waited for the held row"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        holder.commit().await.unwrap();
    };
    let (migrated, ()) = tokio::join!(store::migrate(&env.pool), release_when_filled);
    migrated.expect("herald migrate");
    store::migrate(&env.pool)
        .await
        .expect("herald migrate, again");
    let unfilled: Vec<String> = sqlx::query_scalar(
        "SELECT event_id FROM herald.deliveries WHERE event_type IS NULL ORDER BY event_id",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        unfilled,
        ["gone", "old-3"],
        "only the delivery without its event, and the one held meanwhile"
    );
    let wrong = env
        .count(
            "SELECT count(*) FROM herald.deliveries d JOIN herald.events e
                 ON e.tenant_key = d.tenant_key AND e.id = d.event_id
             WHERE d.event_type <> e.type",
        )
        .await;
    assert_eq!(wrong, 0, "every filled type is its event's");
    let done = env
        .count("SELECT count(*) FROM herald.upgrade_steps WHERE done_at IS NOT NULL")
        .await;
    assert_eq!(done, 1);
    // Every partition has each list index, and the parents' are valid.
    let indexes: Vec<(String, bool, i64)> = sqlx::query_as(
        "SELECT c.relname::text, x.indisvalid,
                (SELECT count(*) FROM pg_inherits i WHERE i.inhparent = c.oid)
         FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid
         WHERE c.relname IN ('deliveries_by_endpoint_id', 'deliveries_unfinished_by_id',
                             'deliveries_by_event_type', 'deliveries_by_tenant',
                             'events_by_arrival', 'events_by_tenant_arrival')
         ORDER BY 1",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let days = env
        .count("SELECT count(*) FROM pg_inherits WHERE inhparent = 'herald.deliveries'::regclass")
        .await;
    assert_eq!(indexes.len(), 6, "{indexes:?}");
    for (name, valid, partitions) in &indexes {
        assert!(valid, "{name} is valid");
        assert_eq!(*partitions, days, "{name} has an index on every day");
    }
    let replaced = env
        .count(
            "SELECT count(*) FROM pg_class WHERE relname IN
                 ('deliveries_by_endpoint', 'deliveries_not_succeeded', 'events_by_received_at')",
        )
        .await;
    assert_eq!(replaced, 0, "the replaced indexes are dropped");
    // A row written without its type (by the previous version) gets it on insert.
    sqlx::raw_sql(&format!(
        "INSERT INTO herald.deliveries (id, tenant_key, event_id, endpoint_id, status)
             VALUES (herald.uuid_v7(now()), 'acme', 'new-5', '{endpoint}', 'pending')"
    ))
    .execute(&env.pool)
    .await
    .unwrap();
    let typed = env
        .count(
            "SELECT count(*) FROM herald.deliveries
             WHERE event_id = 'new-5' AND event_type = 'billing.invoice.paid'",
        )
        .await;
    assert_eq!(typed, 2);
    env.cleanup().await;
}
