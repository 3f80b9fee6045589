//! Ordered delivery per key (issue 18, docs/ordering.md), through the real broker and
//! database: an endpoint with `ordering` receives each key's events in publish order,
//! one at a time, while keys go in parallel and an unordered endpoint beside it is
//! unaffected; a dead-lettered head lets its key move on; the order holds across two
//! deliver processes; a head whose task was lost is sent again, and counted on the api
//! role's `/metrics` as stranded until it is attempted.

use std::collections::BTreeMap;
use std::time::Duration;

use herald::service::dlq::{JobRequest, Kind};
use herald::store::dlq::Filter;
use herald::Role;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;
use uuid::Uuid;

use crate::common::receiver::{Received, Receiver, Reply};
use crate::common::{amqp_header, eventually, wait_ready, TestEnv};

/// Publishes `rounds` events for each of `keys` keys, round by round (so one key's
/// events are interleaved with every other key's, as an ERP publishing fast does).
async fn publish_keyed(env: &TestEnv, keys: usize, rounds: usize) {
    for round in 0..rounds {
        for key in 0..keys {
            let mut headers = FieldTable::default();
            headers.insert(
                "x-ordering-key".into(),
                AMQPValue::LongString(LongString::from(format!("order-{key}"))),
            );
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_message_id(format!("order-{key}-{round}").into())
                .with_headers(headers);
            let body = serde_json::json!({ "key": format!("order-{key}"), "n": round });
            env.publish_raw(
                "sales.order.changed",
                body.to_string().as_bytes(),
                properties,
            )
            .await;
        }
    }
}

/// Per key, the event numbers of the requests that `path` answered 200, in the order
/// they arrived.
fn delivered_per_key(received: &[Received], path: &str) -> BTreeMap<String, Vec<u64>> {
    let mut per_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for r in received
        .iter()
        .filter(|r| r.path == path && r.status == 200)
    {
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let data = &body["data"];
        per_key
            .entry(data["key"].as_str().unwrap().to_string())
            .or_default()
            .push(data["n"].as_u64().unwrap());
    }
    per_key
}

/// Each key's delivered events in strictly rising order (a subsequence of the publish
/// order: an event dead-lettered after its last retry is skipped), and every event
/// either delivered or recorded as skipped in order.
async fn assert_in_order(
    env: &TestEnv,
    received: &[Received],
    path: &str,
    endpoint: Uuid,
    keys: usize,
    rounds: u64,
) {
    let per_key = delivered_per_key(received, path);
    // A dead-lettered head is marked skipped just after its outcome is recorded.
    eventually(
        "every dead-lettered delivery marked skipped",
        Duration::from_secs(15),
        || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM herald.deliveries
                 WHERE endpoint_id = $1 AND status = 'failed' AND ordering = 'in_order'",
            )
            .bind(endpoint)
            .fetch_one(&env.pool)
            .await
            .unwrap()
                == 0
        },
    )
    .await;
    let skipped: Vec<String> = sqlx::query_scalar(
        "SELECT event_id FROM herald.deliveries
         WHERE endpoint_id = $1 AND status = 'failed' AND ordering = 'skipped'",
    )
    .bind(endpoint)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    for key in 0..keys {
        let key = format!("order-{key}");
        let numbers = per_key.get(&key).cloned().unwrap_or_default();
        assert!(
            numbers.windows(2).all(|w| w[0] < w[1]),
            "{key}: delivered in publish order, each once: {numbers:?}"
        );
        for n in 0..rounds {
            let id = format!("{key}-{n}");
            assert!(
                numbers.contains(&n) != skipped.contains(&id),
                "{id}: delivered, or else dead-lettered and skipped ({numbers:?})"
            );
        }
    }
}

/// Waits until every delivery of `endpoint` is finished (delivered or dead-lettered).
async fn all_finished(env: &TestEnv, endpoint: Uuid, total: i64, limit: Duration) {
    let sql = format!(
        "SELECT count(*) FROM herald.deliveries WHERE endpoint_id = '{endpoint}'
           AND status IN ('success', 'failed')"
    );
    eventually("every delivery finished", limit, || async {
        env.count(&sql).await >= total
    })
    .await;
}

/// How many requests the receiver answered 200.
fn successes(receiver: &Receiver) -> usize {
    receiver
        .received()
        .iter()
        .filter(|r| r.status == 200)
        .count()
}

/// Sends again, at once, every head never attempted.
async fn resend_stranded(env: &TestEnv) -> usize {
    herald::delivery::order::resend_stranded(
        &env.pool,
        &env.topology(),
        env.publisher(),
        Duration::ZERO,
    )
    .await
    .unwrap()
}

/// Waits until ingest has recorded `n` deliveries to `endpoint` (its batches committed).
async fn recorded(env: &TestEnv, endpoint: Uuid, n: i64) {
    eventually(
        "the deliveries recorded",
        Duration::from_secs(15),
        || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM herald.deliveries WHERE endpoint_id = $1",
            )
            .bind(endpoint)
            .fetch_one(&env.pool)
            .await
            .unwrap()
                == n
        },
    )
    .await;
}

async fn make_ordered(env: &TestEnv, endpoint: Uuid) {
    sqlx::query("UPDATE herald.endpoints SET ordering = true WHERE id = $1")
        .bind(endpoint)
        .execute(&env.pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn an_ordered_endpoint_gets_each_keys_events_in_publish_order_despite_failures_and_an_unordered_one_beside_it_gets_them_all(
) {
    let env = TestEnv::new().await;
    // Every fifth request to the ordered endpoint fails: first attempts of many
    // events, and some retries.
    let receiver = Receiver::scripted(|path, nth| {
        if path == "/ordered" && nth % 5 == 0 {
            Reply::status(500)
        } else {
            Reply::status(200)
        }
    })
    .await;
    let ordered = env
        .add_endpoint(&receiver.url("/ordered"), &["sales.#"], None)
        .await;
    make_ordered(&env, ordered.endpoint.id).await;
    env.add_endpoint(&receiver.url("/plain"), &["sales.#"], None)
        .await;
    let app = env.start_ready().await;

    publish_keyed(&env, 100, 3).await;
    all_finished(&env, ordered.endpoint.id, 300, Duration::from_secs(60)).await;
    eventually(
        "300 successes at the plain endpoint",
        Duration::from_secs(30),
        || async {
            let got = receiver.received();
            got.iter()
                .filter(|r| r.path == "/plain" && r.status == 200)
                .count()
                >= 300
        },
    )
    .await;

    let received = receiver.received();
    assert_in_order(&env, &received, "/ordered", ordered.endpoint.id, 100, 3).await;
    let failures = received
        .iter()
        .filter(|r| r.path == "/ordered" && r.status == 500)
        .count();
    assert!(failures >= 50, "the receiver failed {failures} requests");
    let plain = delivered_per_key(&received, "/plain");
    assert_eq!(plain.values().map(Vec::len).sum::<usize>(), 300);
    // Unordered: nothing holds the plain endpoint's events back, so some key's
    // events are not in publish order, or they all are by chance: not asserted.

    assert_eq!(
        env.count(&format!(
            "SELECT count(*) FROM herald.deliveries WHERE endpoint_id = '{}'
               AND ordering IN ('in_order', 'skipped') AND ordering_key LIKE 'order-%'",
            ordered.endpoint.id
        ))
        .await,
        300
    );
    assert_eq!(
        env.count("SELECT count(*) FROM herald.deliveries WHERE ordering_key IS NOT NULL AND endpoint_id <> (SELECT id FROM herald.endpoints WHERE ordering)").await,
        0,
        "the unordered endpoint's deliveries carry no key"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM herald.ordering_heads")
            .await,
        0,
        "every key went idle"
    );
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn keys_go_in_parallel_on_an_ordered_endpoint() {
    let env = TestEnv::new().await;
    let receiver = Receiver::scripted(|_, _| Reply::ok_after(Duration::from_millis(100))).await;
    let ordered = env
        .add_endpoint(&receiver.url("/ordered"), &["sales.#"], None)
        .await;
    make_ordered(&env, ordered.endpoint.id).await;
    let app = env.start_ready().await;

    publish_keyed(&env, 20, 2).await;
    eventually("40 successes", Duration::from_secs(30), || async {
        receiver.count() >= 40
    })
    .await;
    // One key at a time, but not one request at a time: 20 keys were in flight
    // together (each request takes 100 ms).
    let peak = receiver.peak_in_flight();
    assert!(peak >= 10, "peak requests in flight: {peak}");
    for (key, numbers) in delivered_per_key(&receiver.received(), "/ordered") {
        assert_eq!(numbers, vec![0, 1], "{key}");
    }
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_dead_lettered_head_lets_its_key_move_on_and_its_redrive_is_marked_out_of_order() {
    let env = TestEnv::new().await;
    // The retry schedule is two retries: the first three requests are the head's
    // three attempts, all refused.
    let receiver = Receiver::scripted(|_, nth| {
        if nth <= 3 {
            Reply::status(500)
        } else {
            Reply::status(200)
        }
    })
    .await;
    let ordered = env
        .add_endpoint(&receiver.url("/ordered"), &["sales.#"], None)
        .await;
    make_ordered(&env, ordered.endpoint.id).await;
    let app = env.start_ready().await;

    publish_keyed(&env, 1, 3).await;
    eventually(
        "the two later events delivered",
        Duration::from_secs(30),
        || async { successes(&receiver) >= 2 },
    )
    .await;
    let received = receiver.received();
    let numbers: Vec<u64> = received
        .iter()
        .map(|r| {
            serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["data"]["n"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(
        numbers,
        vec![0, 0, 0, 1, 2],
        "the head's three attempts, then the rest in order"
    );
    let (status, ordering): (String, Option<String>) = sqlx::query_as(
        "SELECT status, ordering FROM herald.deliveries WHERE event_id = 'order-0-0'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        (status.as_str(), ordering.as_deref()),
        ("failed", Some("skipped"))
    );

    let job = env
        .dlq_job(JobRequest {
            kind: Kind::Redrive,
            all: true,
            filter: Filter::default(),
            enable_endpoints: false,
        })
        .await;
    assert_eq!((job.matched, job.processed), (1, 1));
    eventually(
        "the redriven head delivered",
        Duration::from_secs(30),
        || async { successes(&receiver) >= 3 },
    )
    .await;
    let last = receiver.received().pop().unwrap();
    let body: serde_json::Value = serde_json::from_slice(&last.body).unwrap();
    assert_eq!(
        body["data"]["n"], 0,
        "the redriven event arrives after its successors"
    );
    let (status, ordering): (String, Option<String>) = sqlx::query_as(
        "SELECT status, ordering FROM herald.deliveries WHERE event_id = 'order-0-0'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        (status.as_str(), ordering.as_deref()),
        ("success", Some("out_of_order"))
    );
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn two_deliver_processes_keep_each_keys_order() {
    let env = TestEnv::new().await;
    let receiver = Receiver::scripted(|_, nth| {
        if nth % 4 == 0 {
            Reply::status(503)
        } else {
            Reply::ok_after(Duration::from_millis(2))
        }
    })
    .await;
    let ordered = env
        .add_endpoint(&receiver.url("/ordered"), &["sales.#"], None)
        .await;
    make_ordered(&env, ordered.endpoint.id).await;
    // One ingest, two deliverers: separate apps, each with its own connections.
    let ingest = env.start(Role::Ingest).await;
    let first = env.start(Role::Deliver).await;
    let second = env.start(Role::Deliver).await;
    for app in [&ingest, &first, &second] {
        wait_ready(app).await;
    }

    publish_keyed(&env, 50, 4).await;
    all_finished(&env, ordered.endpoint.id, 200, Duration::from_secs(60)).await;
    assert_in_order(
        &env,
        &receiver.received(),
        "/ordered",
        ordered.endpoint.id,
        50,
        4,
    )
    .await;
    for app in [ingest, first, second] {
        app.stop().await;
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_keeps_each_keys_order() {
    const KEYS: usize = 100;
    const ROUNDS: usize = 5;
    let env = TestEnv::new().await;
    let receiver = Receiver::scripted(|_, _| Reply::ok_after(Duration::from_millis(5))).await;
    let ordered = env
        .add_endpoint(&receiver.url("/ordered"), &["sales.#"], None)
        .await;
    make_ordered(&env, ordered.endpoint.id).await;
    publish_keyed(&env, KEYS, ROUNDS).await;

    let spawn = || {
        env.herald_command()
            .arg("serve")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("herald binary starts")
    };
    let mut first = spawn();
    eventually("deliveries under way", Duration::from_secs(60), || async {
        receiver.count() >= 150
    })
    .await;
    first.kill().expect("SIGKILL");
    first.wait().unwrap();
    let at_kill = receiver.count();
    assert!(
        at_kill < KEYS * ROUNDS,
        "killed mid-stream ({at_kill} delivered)"
    );

    let mut second = spawn();
    all_finished(
        &env,
        ordered.endpoint.id,
        (KEYS * ROUNDS) as i64,
        Duration::from_secs(120),
    )
    .await;
    // At least once: an event may come again after the crash, but never after a
    // later event of its key.
    let per_key = delivered_per_key(&receiver.received(), "/ordered");
    let mut again = 0;
    for key in 0..KEYS {
        let key = format!("order-{key}");
        let numbers = &per_key[&key];
        assert!(
            numbers.windows(2).all(|w| w[0] <= w[1]),
            "{key}: never an event after a later one: {numbers:?}"
        );
        let mut unique = numbers.clone();
        unique.dedup();
        assert_eq!(unique, (0..ROUNDS as u64).collect::<Vec<_>>(), "{key}");
        again += numbers.len() - unique.len();
    }
    println!("ordering sigkill: {at_kill} delivered before the kill, {again} sent again after it");
    let _ = second.kill();
    second.wait().unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn a_head_whose_task_was_lost_is_sent_again_and_its_key_goes_on_in_order() {
    let env = TestEnv::new().await;
    let receiver = Receiver::start().await;
    let ordered = env
        .add_endpoint(&receiver.url("/ordered"), &["sales.#"], None)
        .await;
    make_ordered(&env, ordered.endpoint.id).await;
    // Ingest alone: the key's head task waits in the work queue, the rest in the records.
    let ingest = env.start(Role::Ingest).await;
    wait_ready(&ingest).await;
    publish_keyed(&env, 1, 3).await;
    let work = env.topology().work_queue();
    eventually(
        "the head's task queued",
        Duration::from_secs(15),
        || async { env.queue_depth(&work).await == 1 },
    )
    .await;
    // Every batch committed: a later batch of the key holds its head row locked until
    // then, and the resend skips a locked head (the next round takes it).
    recorded(&env, ordered.endpoint.id, 3).await;
    // Lost, as only a broker losing a quorum queue's majority would lose it.
    assert_eq!(env.drain(&work).await.len(), 1);
    let sent = resend_stranded(&env).await;
    assert_eq!(sent, 1, "the stranded head is sent again");

    let deliver = env.start(Role::Deliver).await;
    wait_ready(&deliver).await;
    all_finished(&env, ordered.endpoint.id, 3, Duration::from_secs(30)).await;
    let per_key = delivered_per_key(&receiver.received(), "/ordered");
    assert_eq!(per_key["order-0"], vec![0, 1, 2]);
    let again = resend_stranded(&env).await;
    assert_eq!(again, 0, "nothing stranded once the key is idle");
    for app in [ingest, deliver] {
        app.stop().await;
    }
    env.cleanup().await;
}

/// The value of the unlabelled series `name` on the app's `/metrics`.
async fn gauge(app: &herald::App, name: &str) -> Option<i64> {
    let text = reqwest::get(format!("http://{}/metrics", app.address()))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Starts an api process, whose ordering watch samples at once, and waits until its
/// `/metrics` says `active` busy keys and `stranded` stranded heads.
async fn api_sampling(env: &TestEnv, active: i64, stranded: i64) -> herald::App {
    let api = env.start(Role::Api).await;
    wait_ready(&api).await;
    eventually(
        &format!("herald_ordering_keys_active {active}, herald_ordering_heads_stranded {stranded}"),
        Duration::from_secs(15),
        || async {
            gauge(&api, "herald_ordering_keys_active").await == Some(active)
                && gauge(&api, "herald_ordering_heads_stranded").await == Some(stranded)
        },
    )
    .await;
    api
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranded_head_is_counted_on_metrics_until_it_is_attempted_even_after_its_task_was_sent_again(
) {
    let env = TestEnv::new().await;
    let receiver = Receiver::start().await;
    let ordered = env
        .add_endpoint(&receiver.url("/ordered"), &["sales.#"], None)
        .await;
    make_ordered(&env, ordered.endpoint.id).await;
    // Ingest alone: each key's head task waits in the work queue, the rest in the records.
    let ingest = env.start(Role::Ingest).await;
    wait_ready(&ingest).await;
    publish_keyed(&env, 2, 3).await;
    let work = env.topology().work_queue();
    eventually(
        "both heads' tasks queued",
        Duration::from_secs(15),
        || async { env.queue_depth(&work).await == 2 },
    )
    .await;
    recorded(&env, ordered.endpoint.id, 6).await;
    // Both tasks lost; order-0's head then sits unattempted for 20 minutes, order-1's
    // only for a moment.
    assert_eq!(env.drain(&work).await.len(), 2);
    for table in [
        "herald.ordering_heads SET since",
        "herald.deliveries SET updated_at",
    ] {
        sqlx::query(&format!(
            "UPDATE {table} = now() - interval '20 minutes' WHERE ordering_key = 'order-0'"
        ))
        .execute(&env.pool)
        .await
        .unwrap();
    }

    // The watch counts both keys busy, order-0 stranded, and sends its task again.
    let api = api_sampling(&env, 2, 1).await;
    eventually(
        "the stranded head's task sent again",
        Duration::from_secs(15),
        || async { env.queue_depth(&work).await == 1 },
    )
    .await;
    api.stop().await;
    let resent = env.drain(&work).await;
    let keys: Vec<_> = resent
        .iter()
        .map(|m| amqp_header(m, "x-herald-ordering-key"))
        .collect();
    assert_eq!(keys, [Some("order-0".to_string())]);

    // That copy lost too: the key is still stranded (the alert's case), though its task
    // is not sent again before another 15 minutes.
    let api = api_sampling(&env, 2, 1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        env.queue_depth(&work).await,
        0,
        "sent again once per 15 minutes"
    );
    api.stop().await;

    // Delivered at last: nothing busy, nothing stranded.
    let deliver = env.start(Role::Deliver).await;
    wait_ready(&deliver).await;
    assert_eq!(resend_stranded(&env).await, 2);
    all_finished(&env, ordered.endpoint.id, 6, Duration::from_secs(30)).await;
    let per_key = delivered_per_key(&receiver.received(), "/ordered");
    assert_eq!(per_key["order-0"], vec![0, 1, 2]);
    assert_eq!(per_key["order-1"], vec![0, 1, 2]);
    // A key's head is released just after its last delivery is recorded.
    eventually("every key idle", Duration::from_secs(15), || async {
        let counts = herald::store::ordering::head_counts(&env.pool, Duration::ZERO)
            .await
            .unwrap();
        (counts.active, counts.stranded, counts.due) == (0, 0, 0)
    })
    .await;
    for app in [ingest, deliver] {
        app.stop().await;
    }
    env.cleanup().await;
}
