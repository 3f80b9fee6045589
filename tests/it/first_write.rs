//! A first attempt made by ingest writes its delivery's row once, with its outcome
//! (issue 19, docs/benchmarks.md "Round 3"): no `pending` row then an update. A slow
//! one is shown `pending` while it lasts; one lost with its process is made again when
//! the event's message comes back, and still makes one row.

use std::time::Duration;

use crate::common::receiver::{Receiver, Reply};
use herald::Role;

use crate::common::{eventually, wait_ready, TestEnv};

/// Rows inserted into and updated in `herald.deliveries` (all its partitions), as the
/// database's statistics count them.
async fn deliveries_written(env: &TestEnv) -> (i64, i64) {
    sqlx::query_as(
        "SELECT coalesce(sum(n_tup_ins), 0)::int8, coalesce(sum(n_tup_upd), 0)::int8
         FROM pg_stat_user_tables
         WHERE schemaname = 'herald' AND relname LIKE 'deliveries%'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_attempt_that_succeeds_writes_its_delivery_once_without_an_update() {
    const EVENTS: i64 = 40;
    let env = TestEnv::new().await;
    let receiver = Receiver::start().await;
    env.add_endpoint(&receiver.url("/a"), &["sales.#"], None)
        .await;
    let app = env.start_ready().await;
    for n in 0..EVENTS {
        env.publish(
            "sales.order.created",
            Some(&format!("evt-once-{n}")),
            None,
            br#"{"n":1}"#,
        )
        .await;
    }
    eventually(
        "every delivery a success",
        Duration::from_secs(30),
        || async { env.delivery_statuses().await == vec![("success".to_string(), EVENTS)] },
    )
    .await;
    // Statistics reach the shared counters within a second or so of a transaction.
    eventually(
        "the statistics to count every row written",
        Duration::from_secs(30),
        || async { deliveries_written(&env).await.0 >= EVENTS },
    )
    .await;
    assert_eq!(
        deliveries_written(&env).await,
        (EVENTS, 0),
        "one insert per delivery, no update"
    );
    let attempts = env
        .count("SELECT count(*) FROM herald.delivery_attempts WHERE status_code = 200")
        .await;
    assert_eq!(attempts, EVENTS);
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_first_attempt_shows_its_delivery_pending_while_it_lasts() {
    let env = TestEnv::new().await;
    let receiver = Receiver::scripted(|_, _| Reply::ok_after(Duration::from_secs(6))).await;
    env.add_endpoint(&receiver.url("/slow"), &["sales.#"], None)
        .await;
    let app = env.start_ready().await;
    env.publish("sales.order.created", Some("evt-slow"), None, b"{}")
        .await;
    eventually("the request to arrive", Duration::from_secs(10), || async {
        receiver.peak_in_flight() >= 1
    })
    .await;
    eventually(
        "the delivery shown pending while its attempt lasts",
        Duration::from_secs(4),
        || async {
            receiver.count() == 0
                && env
                    .count(
                        "SELECT count(*) FROM herald.deliveries
                         WHERE status = 'pending' AND attempts = 0",
                    )
                    .await
                    == 1
        },
    )
    .await;
    eventually(
        "the attempt to succeed",
        Duration::from_secs(20),
        || async { env.delivery_statuses().await == vec![("success".to_string(), 1)] },
    )
    .await;
    let (attempts, delivered): (i32, bool) =
        sqlx::query_as("SELECT attempts, delivered_at IS NOT NULL FROM herald.deliveries")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!((attempts, delivered), (1, true));
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_attempt_lost_with_its_process_is_made_again_and_its_delivery_written_once() {
    let env = TestEnv::new().await;
    // The first request hangs until its process is gone; the next one is answered.
    let receiver = Receiver::scripted(|_, nth| {
        if nth == 1 {
            Reply::ok_after(Duration::from_secs(60))
        } else {
            Reply::status(200)
        }
    })
    .await;
    env.add_endpoint(&receiver.url("/a"), &["sales.#"], None)
        .await;
    env.add_endpoint(&receiver.url("/b"), &["sales.#"], None)
        .await;
    let spawn = || {
        env.herald_command()
            .arg("serve")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("herald binary starts")
    };
    let mut first = spawn();
    env.publish("sales.order.created", Some("evt-lost"), None, b"{}")
        .await;
    eventually(
        "both first attempts to be made",
        Duration::from_secs(60),
        || async { receiver.peak_in_flight() >= 2 },
    )
    .await;
    first.kill().expect("SIGKILL");
    first.wait().unwrap();
    // Killed within the second a first attempt may take before its row is written.
    assert_eq!(
        env.count("SELECT count(*) FROM herald.deliveries").await,
        0,
        "the attempts in flight had written no row"
    );
    assert_eq!(env.count("SELECT count(*) FROM herald.events").await, 1);

    let mut second = spawn();
    eventually(
        "both deliveries made again and recorded",
        Duration::from_secs(60),
        || async { env.delivery_statuses().await == vec![("success".to_string(), 2)] },
    )
    .await;
    let rows: Vec<(String, i32)> = sqlx::query_as(
        "SELECT e.url, d.attempts FROM herald.deliveries d
         JOIN herald.endpoints e ON e.id = d.endpoint_id ORDER BY e.url",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![(receiver.url("/a"), 1), (receiver.url("/b"), 1)],
        "one row per endpoint"
    );
    let answered: Vec<String> = receiver
        .received()
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.header("webhook-id"))
        .collect();
    assert!(answered.iter().all(|id| id == "evt-lost"), "{answered:?}");
    let _ = second.kill();
    second.wait().unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_recorded_before_the_failed_first_attempt_that_sent_it_still_counts() {
    const ENDPOINTS: usize = 40;
    // A retry 1 ms after a failed first attempt races the first outcome to the records.
    let env = TestEnv::with(|s| {
        s.delivery.retry_schedule = vec![Duration::from_millis(1), Duration::from_millis(1)];
    })
    .await;
    let receiver =
        Receiver::scripted(|_, nth| Reply::status(if nth == 1 { 500 } else { 200 })).await;
    for n in 0..ENDPOINTS {
        env.add_endpoint(
            &receiver.url(&format!("/p{n}")),
            &[&format!("sales.p{n}")],
            None,
        )
        .await;
    }
    // Apart, as deployed: the retry's outcome is recorded by another process's writer.
    let ingest = env.start(Role::Ingest).await;
    let deliver = env.start(Role::Deliver).await;
    wait_ready(&ingest).await;
    wait_ready(&deliver).await;
    for n in 0..ENDPOINTS {
        env.publish(
            &format!("sales.p{n}"),
            Some(&format!("evt-race-{n}")),
            None,
            b"{}",
        )
        .await;
    }
    eventually(
        "every delivery a success after one retry",
        Duration::from_secs(30),
        || async {
            env.delivery_statuses().await == vec![("success".to_string(), ENDPOINTS as i64)]
        },
    )
    .await;
    let rows: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT d.attempts, count(a.*) FROM herald.deliveries d
         JOIN herald.delivery_attempts a ON a.delivery_id = d.id GROUP BY d.id, d.attempts",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), ENDPOINTS);
    assert!(
        rows.iter().all(|r| *r == (2, 2)),
        "attempts per delivery: {rows:?}"
    );
    ingest.stop().await;
    deliver.stop().await;
    env.cleanup().await;
}
