//! Nothing is lost when a process stops: gracefully (no duplicates either) or killed
//! outright with SIGKILL (at-least-once: every pair delivered, duplicates counted).

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use herald::broker::Outgoing;
use lapin::BasicProperties;

use crate::common::receiver::{Receiver, Reply};
use crate::common::{database_base_url, eventually, TestEnv};

/// Publishes `count` events with pipelined confirms.
async fn publish_many(env: &TestEnv, prefix: &str, count: usize) {
    let bodies: Vec<(String, Vec<u8>)> = (0..count)
        .map(|n| {
            (
                format!("{prefix}-{n}"),
                format!(r#"{{"n":{n}}}"#).into_bytes(),
            )
        })
        .collect();
    for chunk in bodies.chunks(500) {
        let messages = chunk
            .iter()
            .map(|(id, body)| Outgoing {
                exchange: &env.exchange,
                routing_key: "inventory.stock.changed",
                body,
                properties: BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_message_id(id.as_str().into()),
            })
            .collect();
        env.publisher()
            .publish_all(messages)
            .await
            .expect("confirmed");
    }
}

fn pairs(receiver: &Receiver) -> (HashSet<(String, String)>, usize) {
    let received = receiver.received();
    let total = received.len();
    let unique = received
        .into_iter()
        .map(|r| (r.header("webhook-id"), r.path.clone()))
        .collect::<HashSet<_>>();
    (unique, total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_finishes_in_flight_deliveries_and_loses_nothing() {
    let env = TestEnv::new().await;
    let receiver = Receiver::scripted(|_, _| Reply {
        status: 200,
        delay: Duration::from_millis(20),
        headers: vec![],
        body: None,
    })
    .await;
    env.add_endpoint(&receiver.url("/slow"), &["inventory.#"], None)
        .await;
    publish_many(&env, "evt-g", 400).await;

    let app = env.start_ready().await;
    eventually("some deliveries", Duration::from_secs(30), || async {
        receiver.count() >= 50
    })
    .await;
    app.stop().await;
    let seen_at_stop = receiver.count();
    let recorded = env
        .count("SELECT count(*) FROM herald.deliveries WHERE status = 'success'")
        .await;
    assert_eq!(
        recorded as usize, seen_at_stop,
        "every answered request was recorded before exit"
    );

    let app = env.start_ready().await;
    eventually("all 400 delivered", Duration::from_secs(60), || async {
        env.delivery_statuses().await == vec![("success".to_string(), 400)]
    })
    .await;
    let (unique, total) = pairs(&receiver);
    assert_eq!(unique.len(), 400);
    let mut seen = HashMap::new();
    for r in receiver.received() {
        seen.entry(r.header("webhook-id"))
            .or_insert_with(Vec::new)
            .push(r.header("x-herald-attempt"));
    }
    seen.retain(|_, attempts| attempts.len() > 1);
    assert_eq!(
        total, 400,
        "a graceful stop sends nothing twice; sent again: {seen:?}"
    );
    app.stop().await;
    env.cleanup().await;
}

fn spawn_herald(env: &TestEnv) -> Child {
    env.herald_command()
        .arg("serve")
        .stdout(Stdio::null())
        .spawn()
        .expect("herald binary starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_in_the_middle_of_thousands_of_deliveries_loses_none() {
    const EVENTS: usize = 1500;
    let env = TestEnv::new().await;
    let receiver = Receiver::start().await;
    env.add_endpoint(&receiver.url("/a"), &["inventory.#"], None)
        .await;
    env.add_endpoint(&receiver.url("/b"), &["*.stock.*"], None)
        .await;
    publish_many(&env, "evt-k", EVENTS).await;

    let mut first = spawn_herald(&env);
    eventually("deliveries under way", Duration::from_secs(60), || async {
        receiver.count() >= 600
    })
    .await;
    first.kill().expect("SIGKILL");
    first.wait().unwrap();
    let at_kill = receiver.count();
    assert!(
        at_kill < 2 * EVENTS,
        "killed mid-flight ({at_kill} delivered)"
    );

    let mut second = spawn_herald(&env);
    eventually(
        "every delivery recorded as success",
        Duration::from_secs(120),
        || async {
            env.delivery_statuses().await == vec![("success".to_string(), 2 * EVENTS as i64)]
        },
    )
    .await;
    let (unique, total) = pairs(&receiver);
    let expected: HashSet<(String, String)> = (0..EVENTS)
        .flat_map(|n| {
            [
                (format!("evt-k-{n}"), "/a".to_string()),
                (format!("evt-k-{n}"), "/b".to_string()),
            ]
        })
        .collect();
    assert_eq!(unique, expected, "every (event, endpoint) pair delivered");
    let duplicates = total - unique.len();
    println!("sigkill: {at_kill} delivered before the kill, {duplicates} duplicate requests after restart");
    let per_event: HashMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
        "SELECT event_id, count(*) FROM herald.deliveries GROUP BY event_id",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    assert_eq!(per_event.len(), EVENTS);
    assert!(
        per_event.values().all(|n| *n == 2),
        "one delivery row per (event, endpoint)"
    );

    // SIGTERM: a clean exit.
    Command::new("kill")
        .arg("-TERM")
        .arg(second.id().to_string())
        .status()
        .unwrap();
    let status = tokio::task::spawn_blocking(move || second.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "SIGTERM exits 0, got {status}");
    env.cleanup().await;
}

fn management_api() -> String {
    let port = std::env::var("HERALD_AMQP_MGMT_PORT").unwrap_or_else(|_| "15673".into());
    format!("http://127.0.0.1:{port}/api/connections")
}

/// The broker's names of the connections this test's Herald opened (the management
/// API lists a connection a few seconds after it opens).
async fn herald_connections(prefix: &str) -> Vec<String> {
    let list: serde_json::Value = reqwest::Client::new()
        .get(management_api())
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .expect("management API reachable")
        .json()
        .await
        .unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .filter(|c| {
            c["client_properties"]["connection_name"]
                .as_str()
                .is_some_and(|n| n.starts_with(&format!("{prefix}-")))
        })
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

/// Closes connections as a broker restart or a network cut would.
async fn cut_broker_connections(names: &[String]) {
    let http = reqwest::Client::new();
    for name in names {
        let encoded = name
            .replace(' ', "%20")
            .replace('>', "%3E")
            .replace(':', "%3A");
        let status = http
            .delete(format!("{}/{encoded}", management_api()))
            .basic_auth("guest", Some("guest"))
            .send()
            .await
            .unwrap()
            .status();
        assert!(status.is_success(), "closing {name}: {status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_broker_connection_mid_stream_loses_nothing() {
    // Few deliveries at a time, so the cut lands in the middle of the stream.
    let env = TestEnv::with(|s| s.delivery.concurrency = 8).await;
    let receiver = Receiver::scripted(|_, _| Reply {
        status: 200,
        delay: Duration::from_millis(20),
        headers: vec![],
        body: None,
    })
    .await;
    env.add_endpoint(&receiver.url("/r"), &["inventory.#"], None)
        .await;
    let app = env.start_ready().await;
    let prefix = env.topology().prefix().to_string();
    eventually(
        "the broker to list Herald's connections",
        Duration::from_secs(30),
        || async { herald_connections(&prefix).await.len() >= 3 },
    )
    .await;
    publish_many(&env, "evt-b", 600).await;
    eventually("deliveries under way", Duration::from_secs(30), || async {
        receiver.count() >= 60
    })
    .await;
    cut_broker_connections(&herald_connections(&prefix).await).await;
    let at_cut = receiver.count();
    assert!(at_cut < 600, "cut mid-stream ({at_cut} delivered)");
    // Not ready while reconnecting (at least the 200 ms backoff), ready again after.
    let readyz = format!("http://{}/readyz", app.address());
    let status = || async { reqwest::get(&readyz).await.unwrap().status().as_u16() };
    eventually(
        "readiness to drop while reconnecting",
        Duration::from_secs(10),
        || async { status().await == 503 },
    )
    .await;
    eventually("readiness to return", Duration::from_secs(30), || async {
        status().await == 200
    })
    .await;
    eventually(
        "all 600 delivered after reconnecting",
        Duration::from_secs(90),
        || async { env.delivery_statuses().await == vec![("success".to_string(), 600)] },
    )
    .await;
    let (unique, total) = pairs(&receiver);
    assert_eq!(unique.len(), 600);
    println!("broker cut: {} duplicate requests", total - unique.len());
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_holds_work_until_it_returns_and_loses_nothing() {
    let env = TestEnv::new().await;
    let receiver = Receiver::start().await;
    env.add_endpoint(&receiver.url("/db"), &["inventory.#"], None)
        .await;
    let app = env.start_ready().await;

    // The database goes away: no new connections, existing ones terminated.
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&database_base_url())
        .await
        .unwrap();
    let db = env.database.clone();
    sqlx::query(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS false"))
        .execute(&mut admin)
        .await
        .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(&db)
        .execute(&mut admin)
        .await
        .unwrap();

    publish_many(&env, "evt-d", 200).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.count(), 0, "nothing is sent before it is recorded");
    let ingest = env.topology().ingest_queue();
    assert_eq!(
        env.queue_depth(&ingest).await,
        0,
        "the batch is held (unacked), not requeued in a loop"
    );

    sqlx::query(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true"))
        .execute(&mut admin)
        .await
        .unwrap();
    eventually(
        "all 200 delivered once the database is back",
        Duration::from_secs(60),
        || async { env.delivery_statuses().await == vec![("success".to_string(), 200)] },
    )
    .await;
    let (unique, _) = pairs(&receiver);
    assert_eq!(unique.len(), 200);
    app.stop().await;
    env.cleanup().await;
}
