//! Retention (docs/retention.md): days older than `retention.window` are removed by
//! dropping their partitions, days with unfinished deliveries are kept, an event id is
//! remembered across the idempotency ring's rotation for one to two windows, and a
//! replay cannot reach past the window.

use std::time::Duration;

use chrono::{DateTime, Utc};
use herald::store::retention;
use serde_json::{json, Value};

use crate::common::receiver::Receiver;
use crate::common::{eventually, TestEnv};

/// One event with one delivery (and, when finished, one attempt) recorded on `day`,
/// written as Herald writes them: the delivery id a UUIDv7 of its creation.
async fn seed(env: &TestEnv, endpoint: uuid::Uuid, id: &str, at: DateTime<Utc>, status: &str) {
    sqlx::raw_sql(&format!(
        "INSERT INTO herald.events (id, type, occurred_at, payload, received_at)
             VALUES ('{id}', 'sales.order.created', '{at}', '{{}}', '{at}');
         WITH d AS (
             INSERT INTO herald.deliveries (id, tenant_key, event_id, endpoint_id, status, attempts, created_at)
             VALUES (herald.uuid_v7('{at}'), '', '{id}', '{endpoint}', '{status}', 1, '{at}')
             RETURNING id)
         INSERT INTO herald.delivery_attempts (delivery_id, attempt, status_code, duration_ms, attempted_at)
             SELECT id, 1, 500, 3, '{at}' FROM d;"
    ))
    .execute(&env.pool)
    .await
    .expect("seed a day");
}

async fn table_exists(env: &TestEnv, name: &str) -> bool {
    sqlx::query_scalar::<_, bool>("SELECT to_regclass($1) IS NOT NULL")
        .bind(format!("herald.{name}"))
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

/// Whether each of a day's three partitions exists.
async fn day_tables(env: &TestEnv, day: DateTime<Utc>) -> Vec<bool> {
    let mut exist = Vec::new();
    for table in ["events", "deliveries", "delivery_attempts"] {
        exist.push(table_exists(env, &format!("{table}_{}", day_name(day))).await);
    }
    exist
}

fn day_name(at: DateTime<Utc>) -> String {
    at.format("%Y%m%d").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn days_past_the_window_are_dropped_whole_and_a_day_with_unfinished_deliveries_waits() {
    // The api role's own check, every second (at start, then each interval).
    let env = TestEnv::with(|s| s.retention.check_interval = Duration::from_secs(1)).await;
    let receiver = Receiver::start().await;
    let endpoint = env
        .add_endpoint(&receiver.url("/r"), &["sales.#"], None)
        .await
        .endpoint
        .id;
    let now = Utc::now();
    let (old, older) = (
        now - chrono::Duration::days(39),
        now - chrono::Duration::days(40),
    );
    assert_eq!(
        retention::create_partitions(&env.pool, older, old)
            .await
            .unwrap(),
        2,
        "the two past days get their partitions"
    );
    seed(&env, endpoint, "older-done", older, "success").await;
    seed(&env, endpoint, "old-done", old, "success").await;
    seed(&env, endpoint, "old-retrying", old, "retrying").await;
    let day_gone = |day: DateTime<Utc>| {
        let env = &env;
        move || async move { day_tables(env, day).await == [false; 3] }
    };

    let app = env.start_ready().await;
    env.publish("sales.order.created", Some("today"), None, b"{}")
        .await;
    eventually(
        "today's event delivered",
        Duration::from_secs(15),
        || async { receiver.count() == 1 },
    )
    .await;
    eventually(
        "the day 40 days back dropped",
        Duration::from_secs(10),
        day_gone(older),
    )
    .await;
    // Three more checks: the day with a retrying delivery stays, whole.
    tokio::time::sleep(Duration::from_millis(3_200)).await;
    assert_eq!(day_tables(&env, old).await, [true; 3]);
    let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM herald.events ORDER BY id")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    assert_eq!(ids, ["old-done", "old-retrying", "today"]);
    assert_eq!(
        env.count("SELECT count(*) FROM herald.delivery_attempts")
            .await,
        3,
        "the kept day's two attempts and today's"
    );
    // What the check reports of it.
    let checked = herald::service::retention::check(&env.settings, &env.pool)
        .await
        .unwrap();
    assert!(checked.dropped.is_empty(), "{checked:?}");

    // Once its last delivery is finished, the kept day goes at the next check.
    sqlx::query("UPDATE herald.deliveries SET status = 'failed' WHERE event_id = 'old-retrying'")
        .execute(&env.pool)
        .await
        .unwrap();
    eventually(
        "the kept day dropped once finished",
        Duration::from_secs(10),
        day_gone(old),
    )
    .await;
    assert_eq!(env.count("SELECT count(*) FROM herald.events").await, 1);
    // Days ahead exist, so tomorrow's first event has its partition waiting.
    let tomorrow = day_name(now + chrono::Duration::days(1));
    assert!(table_exists(&env, &format!("deliveries_{tomorrow}")).await);

    // And Herald goes on recording and delivering.
    env.publish("sales.order.created", Some("after"), None, b"{}")
        .await;
    eventually(
        "the next event delivered",
        Duration::from_secs(15),
        || async { receiver.count() == 2 },
    )
    .await;
    app.stop().await;
    env.cleanup().await;
}

/// Starts the idempotency ring's next span now, as the end of the current one would.
async fn rotate(env: &TestEnv) {
    sqlx::query(
        "SELECT herald.rotate_event_keys(
             (SELECT max(ends) FROM herald.event_key_slots), make_interval(secs => $1))",
    )
    .bind(env.settings.retention.window.as_secs_f64())
    .execute(&env.pool)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_id_is_remembered_for_one_more_window_after_its_slot_and_forgotten_after_two() {
    let env = TestEnv::new().await;
    let receiver = Receiver::start().await;
    env.add_endpoint(&receiver.url("/r"), &["sales.#"], None)
        .await;
    let app = env.start_ready().await;
    let publish = || env.publish("sales.order.created", Some("evt-1"), None, b"{}");
    let deliveries = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM herald.deliveries WHERE event_id = 'evt-1'",
        )
        .fetch_one(&env.pool)
        .await
        .unwrap()
    };
    // What ingest did with each copy: a delivery recorded, or a duplicate counted.
    let duplicates = || async {
        let text = reqwest::get(format!("http://{}/metrics", app.address()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| {
                l.strip_prefix("herald_events_duplicate_total ")?
                    .parse()
                    .ok()
            })
            .unwrap_or(0_u64)
    };

    publish().await;
    eventually(
        "the first copy recorded",
        Duration::from_secs(15),
        || async { deliveries().await == 1 },
    )
    .await;

    rotate(&env).await; // evt-1's slot is now the previous one: still known
    publish().await;
    eventually(
        "a republish one window later counted a duplicate",
        Duration::from_secs(15),
        || async { duplicates().await == 1 },
    )
    .await;
    assert_eq!(deliveries().await, 1, "and not delivered again");

    rotate(&env).await; // two windows on: its slot is emptied
    publish().await;
    eventually(
        "two windows later it is a new event",
        Duration::from_secs(15),
        || async { deliveries().await == 2 },
    )
    .await;
    assert_eq!(duplicates().await, 1);
    eventually("evt-1 delivered twice", Duration::from_secs(15), || async {
        receiver
            .received()
            .iter()
            .filter(|r| r.header("webhook-id") == "evt-1")
            .count()
            == 2
    })
    .await;
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_reaching_past_the_retention_window_is_refused_with_the_field_and_the_limit() {
    let env = TestEnv::with(|s| s.retention.window = Duration::from_secs(7 * 24 * 3600)).await;
    let receiver = Receiver::start().await;
    let endpoint = env
        .add_endpoint(&receiver.url("/r"), &["sales.#"], None)
        .await
        .endpoint
        .id;
    let app = env.start_ready().await;
    let url = format!(
        "http://{}/api/v1/endpoints/{endpoint}/replay",
        app.address()
    );
    let http = reqwest::Client::new();
    let replay = |since: DateTime<Utc>| {
        http.post(&url)
            .bearer_auth("test-admin-token")
            .json(&json!({ "since": since }))
            .send()
    };

    let refused = replay(Utc::now() - chrono::Duration::days(8))
        .await
        .unwrap();
    assert_eq!(refused.status(), 422);
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = refused.json().await.unwrap();
    let errors = problem["errors"].as_array().expect("field errors");
    assert_eq!(errors[0]["field"], "since", "{problem}");
    let message = errors[0]["message"].as_str().unwrap();
    assert!(message.contains("retention.window (7days)"), "{message}");

    let accepted = replay(Utc::now() - chrono::Duration::days(6))
        .await
        .unwrap();
    assert_eq!(accepted.status(), 202, "inside the window");
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_of_a_day_without_partitions_gets_them_and_is_delivered_not_parked() {
    let env = TestEnv::new().await;
    let receiver = Receiver::start().await;
    env.add_endpoint(&receiver.url("/r"), &["sales.#"], None)
        .await;
    let app = env.start_ready().await;
    // As if no process had run for days: today has no partitions.
    let today = day_name(Utc::now());
    sqlx::raw_sql(&format!(
        "DROP TABLE herald.delivery_attempts_{today}, herald.deliveries_{today}, herald.events_{today};
         DELETE FROM herald.partitions WHERE name = '{today}';"
    ))
    .execute(&env.pool)
    .await
    .unwrap();

    env.publish("sales.order.created", Some("e-1"), None, b"{}")
        .await;
    eventually("the event delivered", Duration::from_secs(15), || async {
        receiver.count() == 1
    })
    .await;
    assert!(table_exists(&env, &format!("events_{today}")).await);
    assert_eq!(
        env.queue_depth(&env.topology().invalid_queue()).await,
        0,
        "nothing parked"
    );
    app.stop().await;
    env.cleanup().await;
}

/// Whether a day's table is a partition of its parent, with its detach pending or not;
/// `None` when it is not one.
async fn detach_pending(env: &TestEnv, table: &str) -> Option<bool> {
    sqlx::query_scalar(
        "SELECT i.inhdetachpending FROM pg_inherits i WHERE i.inhrelid = to_regclass($1)",
    )
    .bind(format!("herald.{table}"))
    .fetch_optional(&env.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_stopped_half_way_is_finished_by_the_next_check_and_a_kept_day_is_put_back() {
    let env = TestEnv::new().await;
    let receiver = Receiver::start().await;
    let endpoint = env
        .add_endpoint(&receiver.url("/r"), &["sales.#"], None)
        .await
        .endpoint
        .id;
    let day = Utc::now() - chrono::Duration::days(40);
    let name = day_name(day);
    retention::create_partitions(&env.pool, day, day)
        .await
        .unwrap();
    seed(&env, endpoint, "done", day, "success").await;
    seed(&env, endpoint, "waiting", day, "retrying").await;

    // Stopped after detaching the day's deliveries, before counting them.
    sqlx::raw_sql(&format!(
        "ALTER TABLE herald.deliveries DETACH PARTITION herald.deliveries_{name}"
    ))
    .execute(&env.pool)
    .await
    .unwrap();
    let checked = herald::service::retention::check(&env.settings, &env.pool)
        .await
        .unwrap();
    assert_eq!(checked.kept, [(name.clone(), 1)], "{checked:?}");
    assert!(checked.dropped.is_empty(), "{checked:?}");
    assert_eq!(
        detach_pending(&env, &format!("deliveries_{name}")).await,
        Some(false),
        "the kept day's deliveries are a partition again"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM herald.deliveries WHERE event_id IN ('done', 'waiting')")
            .await,
        2
    );

    // Finished now; and the day's events stopped between the two steps of a concurrent
    // detach (cancelled while it waited for a reader), left pending.
    sqlx::query("UPDATE herald.deliveries SET status = 'failed' WHERE event_id = 'waiting'")
        .execute(&env.pool)
        .await
        .unwrap();
    let mut reader = env.pool.begin().await.unwrap();
    sqlx::query("SELECT count(*) FROM herald.events")
        .execute(&mut *reader)
        .await
        .unwrap();
    let mut detacher = env.pool.acquire().await.unwrap();
    detacher.close_on_drop();
    sqlx::raw_sql("SET statement_timeout = '500ms'")
        .execute(&mut *detacher)
        .await
        .unwrap();
    let detach = sqlx::raw_sql(&format!(
        "ALTER TABLE herald.events DETACH PARTITION herald.events_{name} CONCURRENTLY"
    ))
    .execute(&mut *detacher)
    .await
    .expect_err("the detach waits for the reader");
    assert_eq!(
        detach.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("57014"),
        "cancelled by the timeout: {detach}"
    );
    drop(detacher);
    reader.rollback().await.unwrap();
    assert_eq!(
        detach_pending(&env, &format!("events_{name}")).await,
        Some(true)
    );

    let checked = herald::service::retention::check(&env.settings, &env.pool)
        .await
        .unwrap();
    assert_eq!(checked.dropped, [name.as_str()], "{checked:?}");
    assert_eq!(day_tables(&env, day).await, [false; 3]);
    assert_eq!(
        env.count(&format!(
            "SELECT count(*) FROM herald.partitions WHERE name = '{name}'"
        ))
        .await,
        0
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_a_day_waits_for_no_transaction_writing_the_records() {
    let env = TestEnv::new().await;
    // A hot transaction in flight: an event written, not yet committed.
    let mut hot = env.pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO herald.events (id, type, occurred_at, payload, received_at)
         VALUES ('in-flight', 'sales.order.created', now(), '{}', now())",
    )
    .execute(&mut *hot)
    .await
    .unwrap();
    // A day created meanwhile is attached, not created as a partition: no ACCESS
    // EXCLUSIVE lock on the parents, so it neither waits for the writer nor blocks
    // the statements behind it (a 1 s lock timeout would fail it otherwise).
    let day = Utc::now() + chrono::Duration::days(10);
    let mut conn = env.pool.acquire().await.unwrap();
    conn.close_on_drop();
    sqlx::raw_sql("SET lock_timeout = '1s'")
        .execute(&mut *conn)
        .await
        .unwrap();
    let made: i32 = sqlx::query_scalar("SELECT herald.create_partitions($1, $1)")
        .bind(day)
        .fetch_one(&mut *conn)
        .await
        .expect("created without waiting for the writer");
    assert_eq!(made, 1);
    hot.commit().await.unwrap();
    assert_eq!(day_tables(&env, day).await, [true; 3]);
    // Rows of that day land in it, through the parent.
    sqlx::query(
        "INSERT INTO herald.events (id, type, occurred_at, payload, received_at)
         VALUES ('later', 'sales.order.created', now(), '{}', $1)",
    )
    .bind(day)
    .execute(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        env.count(&format!(
            "SELECT count(*) FROM herald.events_{} WHERE id = 'later'",
            day_name(day)
        ))
        .await,
        1
    );
    env.cleanup().await;
}
