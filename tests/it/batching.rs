//! Event batching per endpoint through the real broker and database: a batching
//! endpoint gets its events a few requests at a time, each request one body signed as a
//! whole and verified by the reference Standard Webhooks library, every event exactly
//! once and every delivery recorded with its attempt; an endpoint beside it that does
//! not batch still gets one request per event. A batch the receiver refuses is retried
//! and delivered, and counts one failure in the endpoint's health, not one per event.
//! Options outside the configured bounds are refused (422 field errors, the command
//! line).

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::common::receiver::{Received, Receiver, Reply};
use crate::common::{eventually, TestEnv};

const ADMIN: &str = "test-admin-token";

/// Calls the admin API as the admin: (status, body as JSON).
async fn call(base: &str, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .request(method, format!("{base}{path}"))
        .bearer_auth(ADMIN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Creates an endpoint through the API: (id, secret).
async fn create(base: &str, body: Value) -> (String, String) {
    let (status, created) = call(base, Method::POST, "/endpoints", Some(body)).await;
    assert_eq!(status, 201, "{created}");
    (
        created["id"].as_str().unwrap().to_string(),
        created["secret"].as_str().unwrap().to_string(),
    )
}

fn reference_accepts(secret: &str, request: &Received) -> bool {
    standardwebhooks::Webhook::new(secret)
        .unwrap()
        .verify(&request.body, &request.headers)
        .is_ok()
}

/// The event ids a batch request carries, checking its format on the way: a
/// `herald.batch` body whose `data` holds each event's webhook body, as many as
/// `x-herald-batch-size` says, under a `webhook-id` of the batch's own.
fn batch_events(request: &Received) -> Vec<String> {
    let body: Value = serde_json::from_slice(&request.body).expect("a batch is JSON");
    assert_eq!(body["type"], "herald.batch", "{body}");
    let data = body["data"].as_array().expect("data is an array");
    assert_eq!(
        request.header("x-herald-batch-size"),
        data.len().to_string(),
        "{body}"
    );
    assert!(
        request.header("webhook-id").starts_with("batch_"),
        "{}",
        request.header("webhook-id")
    );
    data.iter()
        .map(|event| {
            assert_eq!(event["type"], "sales.order.created", "{event}");
            event["id"].as_str().unwrap().to_string()
        })
        .collect()
}

/// (status, attempts, attempt rows) of every delivery to `endpoint`.
async fn deliveries_of(env: &TestEnv, endpoint: &str) -> Vec<(String, i32, i64)> {
    sqlx::query_as(
        "SELECT d.status, d.attempts,
                (SELECT count(*) FROM herald.delivery_attempts a WHERE a.delivery_id = d.id)
           FROM herald.deliveries d WHERE d.endpoint_id = $1::uuid",
    )
    .bind(endpoint)
    .fetch_all(&env.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batching_endpoint_gets_25_first_attempts_from_ingest_in_a_few_signed_requests() {
    twenty_five_events_batched_beside_one_request_each(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batching_endpoint_gets_25_tasks_of_the_work_queue_in_a_few_signed_requests() {
    twenty_five_events_batched_beside_one_request_each(false).await;
}

/// 25 events to an endpoint batching 10 at a time and to one that does not batch, the
/// first attempts made by the ingest role or by the deliver role from the work queue.
async fn twenty_five_events_batched_beside_one_request_each(first_attempt_in_ingest: bool) {
    let env = TestEnv::with(|s| s.ingest.deliver_first_attempt = first_attempt_in_ingest).await;
    let receiver = Receiver::start().await;
    let app = env.start_ready().await;
    let base = format!("http://{}/api/v1", app.address());
    let (batched, batched_secret) = create(
        &base,
        json!({"url": receiver.url("/batched"), "event_types": ["sales.#"],
               "batch": {"max_events": 10, "window": "500ms"}}),
    )
    .await;
    let (plain, plain_secret) = create(
        &base,
        json!({"url": receiver.url("/plain"), "event_types": ["sales.#"]}),
    )
    .await;
    let (_, shown) = call(&base, Method::GET, &format!("/endpoints/{batched}"), None).await;
    assert_eq!(
        shown["batch"],
        json!({"max_events": 10, "window": "500ms"}),
        "{shown}"
    );
    let (_, shown) = call(&base, Method::GET, &format!("/endpoints/{plain}"), None).await;
    assert_eq!(shown["batch"], Value::Null, "{shown}");
    eventually("both endpoints cached", Duration::from_secs(10), || async {
        app.subscriptions().snapshot().len() == 2
    })
    .await;

    let ids: Vec<String> = (0..25).map(|n| format!("evt-batch-{n:02}")).collect();
    for (n, id) in ids.iter().enumerate() {
        env.publish(
            "sales.order.created",
            Some(id),
            None,
            format!(r#"{{"n":{n}}}"#).as_bytes(),
        )
        .await;
    }
    eventually(
        "all 50 deliveries done",
        Duration::from_secs(30),
        || async {
            env.count("SELECT count(*) FROM herald.deliveries WHERE status = 'success'")
                .await
                == 50
        },
    )
    .await;

    let requests = receiver.received_at("/batched");
    assert!(
        (3..=4).contains(&requests.len()),
        "25 events at 10 a request: {} requests",
        requests.len()
    );
    let mut seen = Vec::new();
    for request in &requests {
        assert!(
            reference_accepts(&batched_secret, request),
            "the reference library verifies the batch as one body"
        );
        let events = batch_events(request);
        assert!(events.len() <= 10, "{events:?}");
        seen.extend(events);
    }
    seen.sort();
    assert_eq!(seen, ids, "every event exactly once");
    let records = deliveries_of(&env, &batched).await;
    assert_eq!(records.len(), 25);
    assert!(
        records
            .iter()
            .all(|(status, attempts, rows)| status == "success" && *attempts == 1 && *rows == 1),
        "{records:?}"
    );

    // The endpoint that does not batch: one request per event, as before.
    let singles = receiver.received_at("/plain");
    assert_eq!(singles.len(), 25);
    let mut seen: Vec<String> = singles
        .iter()
        .map(|request| {
            assert!(reference_accepts(&plain_secret, request));
            assert_eq!(request.header("x-herald-batch-size"), "");
            let body: Value = serde_json::from_slice(&request.body).unwrap();
            assert_eq!(request.header("webhook-id"), body["id"].as_str().unwrap());
            body["id"].as_str().unwrap().to_string()
        })
        .collect();
    seen.sort();
    assert_eq!(seen, ids);
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_batch_is_retried_and_delivered_and_counts_one_failure() {
    let env = TestEnv::new().await;
    // The first request to each path fails; later ones succeed on /flaky only.
    let receiver = Receiver::scripted(|path, n| match (path, n) {
        (_, 1) => Reply::status(500),
        ("/flaky", _) => Reply::status(200),
        _ => Reply::status(503),
    })
    .await;
    let app = env.start_ready().await;
    let base = format!("http://{}/api/v1", app.address());
    let (flaky, secret) = create(
        &base,
        json!({"url": receiver.url("/flaky"), "event_types": ["sales.#"],
               "batch": {"max_events": 10, "window": "300ms"}}),
    )
    .await;
    // No retries: the one failed request is all its health hears of.
    let (down, _) = create(
        &base,
        json!({"url": receiver.url("/down"), "event_types": ["sales.#"],
               "retry_schedule": [], "batch": {"max_events": 10, "window": "300ms"}}),
    )
    .await;
    eventually("both endpoints cached", Duration::from_secs(10), || async {
        app.subscriptions().snapshot().len() == 2
    })
    .await;

    let ids: Vec<String> = (0..5).map(|n| format!("evt-retry-{n}")).collect();
    for id in &ids {
        env.publish("sales.order.created", Some(id), None, b"{}")
            .await;
    }
    eventually(
        "every delivery settled",
        Duration::from_secs(30),
        || async {
            env.count(
                "SELECT count(*) FROM herald.deliveries WHERE status IN ('success', 'failed')",
            )
            .await
                == 10
        },
    )
    .await;

    let requests = receiver.received_at("/flaky");
    assert!(requests.len() >= 2, "{} requests", requests.len());
    assert!(requests.iter().all(|r| reference_accepts(&secret, r)));
    let mut first = batch_events(&requests[0]);
    first.sort();
    assert_eq!(first, ids, "the first request held all five");
    let mut retried: Vec<String> = requests[1..].iter().flat_map(batch_events).collect();
    retried.sort();
    assert_eq!(retried, ids, "each retried once, batched again");
    let records = deliveries_of(&env, &flaky).await;
    assert!(
        records
            .iter()
            .all(|(status, attempts, rows)| status == "success" && *attempts == 2 && *rows == 2),
        "{records:?}"
    );
    let statuses: Vec<(i32, Option<i32>)> = sqlx::query_as(
        "SELECT a.attempt, a.status_code FROM herald.delivery_attempts a
           JOIN herald.deliveries d ON d.id = a.delivery_id
          WHERE d.endpoint_id = $1::uuid ORDER BY a.attempt",
    )
    .bind(&flaky)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        statuses,
        [vec![(1, Some(500)); 5], vec![(2, Some(200)); 5]].concat()
    );

    // The endpoint that never recovers: five deliveries failed by one request, which
    // its failure streak counts once.
    assert_eq!(receiver.received_at("/down").len(), 1);
    let records = deliveries_of(&env, &down).await;
    assert_eq!(records.len(), 5);
    assert!(
        records
            .iter()
            .all(|(status, attempts, rows)| status == "failed" && *attempts == 1 && *rows == 1),
        "{records:?}"
    );
    eventually("the failure counted", Duration::from_secs(10), || async {
        env.count(&format!(
            "SELECT COALESCE(max(consecutive_failures), 0)::bigint FROM herald.endpoint_health
              WHERE endpoint_id = '{down}'"
        ))
        .await
            > 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let streak = env
        .count(&format!(
            "SELECT consecutive_failures::bigint FROM herald.endpoint_health
              WHERE endpoint_id = '{down}'"
        ))
        .await;
    assert_eq!(streak, 1, "one failure per request, not per event");
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_options_outside_the_configured_bounds_are_refused() {
    let env = TestEnv::with(|s| {
        s.delivery.batch_max_events = 50;
        s.delivery.batch_max_window = Duration::from_secs(1);
    })
    .await;
    let app = env.start(herald::Role::Api).await;
    crate::common::wait_ready(&app).await;
    let base = format!("http://{}/api/v1", app.address());
    let endpoint = |batch: Value| json!({"url": "http://127.0.0.1:9/hook", "event_types": ["a.b"], "batch": batch});
    let cases: Vec<(Value, Vec<&str>, &str)> = vec![
        (
            json!({"max_events": 1, "window": "200ms"}),
            vec!["batch.max_events"],
            "from 2 to 50 (delivery.batch_max_events)",
        ),
        (
            json!({"max_events": 51, "window": "200ms"}),
            vec!["batch.max_events"],
            "from 2 to 50",
        ),
        (
            json!({"max_events": 10, "window": "2s"}),
            vec!["batch.window"],
            "delivery.batch_max_window",
        ),
        (
            json!({"max_events": 0, "window": "soon"}),
            vec!["batch.max_events", "batch.window"],
            "",
        ),
    ];
    for (batch, fields, message) in cases {
        let (status, problem) = call(
            &base,
            Method::POST,
            "/endpoints",
            Some(endpoint(batch.clone())),
        )
        .await;
        assert_eq!(status, 422, "{batch}: {problem}");
        let got: Vec<&str> = problem["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert_eq!(got, fields, "{batch}: {problem}");
        let text = problem["errors"][0]["message"].as_str().unwrap();
        assert!(text.contains(message), "{batch}: {problem}");
    }
    // Half an option is no option.
    let (status, problem) = call(
        &base,
        Method::POST,
        "/endpoints",
        Some(endpoint(json!({"max_events": 10}))),
    )
    .await;
    assert_eq!(status, 422, "a batch without its window: {problem}");
    assert_eq!(env.count("SELECT count(*) FROM herald.endpoints").await, 0);
    // The database keeps the pair whole, whatever writes it.
    let half = sqlx::query(
        "INSERT INTO herald.endpoints (id, url, event_types, secret, batch_max_events)
         VALUES (gen_random_uuid(), 'https://example.com/h', '{a.b}', 'whsec_x', 10)",
    )
    .execute(&env.pool)
    .await;
    assert!(
        half.is_err(),
        "a batch without its window is refused by the CHECK"
    );

    // Set, changed, refused without a change, and removed again.
    let (id, _) = create(&base, endpoint(json!({"max_events": 5, "window": "1s"}))).await;
    let patch = |body: Value| {
        let base = base.clone();
        let id = id.clone();
        async move {
            call(
                &base,
                Method::PATCH,
                &format!("/endpoints/{id}"),
                Some(body),
            )
            .await
        }
    };
    let (status, changed) = patch(json!({"batch": {"max_events": 50, "window": "250ms"}})).await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(
        changed["batch"],
        json!({"max_events": 50, "window": "250ms"})
    );
    let (status, problem) = patch(json!({"batch": {"max_events": 100, "window": "250ms"}})).await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "batch.max_events");
    let (_, shown) = call(&base, Method::GET, &format!("/endpoints/{id}"), None).await;
    assert_eq!(shown["batch"]["max_events"], 50, "unchanged: {shown}");
    let (status, changed) = patch(json!({"batch": null})).await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["batch"], Value::Null);
    app.stop().await;

    // The command line: accepted, refused, and off again.
    let herald = |args: &[&str]| {
        let out = env
            .herald_command()
            .env("HERALD__DELIVERY__BATCH_MAX_EVENTS", "50")
            .args(args)
            .output()
            .expect("herald runs");
        (
            out.status.success(),
            serde_json::from_slice::<Value>(&out.stdout).unwrap_or(Value::Null),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let add = |extra: &[&str]| {
        let mut args = vec![
            "endpoint",
            "add",
            "--url",
            "http://127.0.0.1:9/cli",
            "--event-type",
            "a.b",
        ];
        args.extend_from_slice(extra);
        herald(&args)
    };
    let (ok, added, stderr) = add(&["--batch-max", "20", "--batch-window", "200ms"]);
    assert!(ok, "{stderr}");
    assert_eq!(added["batch"], json!({"max_events": 20, "window": "200ms"}));
    let (ok, _, stderr) = add(&["--batch-max", "51", "--batch-window", "200ms"]);
    assert!(!ok && stderr.contains("batch.max_events"), "{stderr}");
    let (ok, _, stderr) = add(&["--batch-max", "20"]);
    assert!(!ok && stderr.contains("--batch-window"), "{stderr}");
    let id = added["id"].as_str().unwrap();
    let (ok, updated, stderr) = herald(&["endpoint", "update", id, "--no-batch"]);
    assert!(ok, "{stderr}");
    assert_eq!(updated["batch"], Value::Null);
    assert_eq!(
        env.count("SELECT count(*) FROM herald.endpoints WHERE batch_max_events IS NOT NULL")
            .await,
        0,
        "both are back to one event per request"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_signed_as_one_body_under_both_schemes_and_a_test_send_is_a_batch_of_one() {
    let env = TestEnv::new().await;
    let receiver = Receiver::start().await;
    let app = env.start_ready().await;
    let base = format!("http://{}/api/v1", app.address());
    let (id, secret) = create(
        &base,
        json!({"url": receiver.url("/both"), "event_types": ["sales.#"], "signature": "both",
               "batch": {"max_events": 10, "window": "300ms"}}),
    )
    .await;
    eventually("the endpoint cached", Duration::from_secs(10), || async {
        app.subscriptions().snapshot().len() == 1
    })
    .await;
    let ids: Vec<String> = (0..4).map(|n| format!("evt-both-{n}")).collect();
    for id in &ids {
        env.publish("sales.order.created", Some(id), None, b"{\"k\":\"v\"}")
            .await;
    }
    eventually("all delivered", Duration::from_secs(20), || async {
        env.count("SELECT count(*) FROM herald.deliveries WHERE status = 'success'")
            .await
            == 4
    })
    .await;
    let requests = receiver.received_at("/both");
    let mut seen = Vec::new();
    for request in &requests {
        assert!(reference_accepts(&secret, request), "webhook-signature");
        assert!(
            crate::receivers::old_receiver_accepts(&secret, request),
            "X-Signature over the same body"
        );
        assert_eq!(request.header("x-event"), "herald.batch");
        seen.extend(batch_events(request));
    }
    seen.sort();
    assert_eq!(seen, ids);
    assert!(requests.len() <= 2, "{} requests", requests.len());

    // `herald endpoint test` sends what the receiver always gets: a batch (of one).
    let (status, outcome) = call(&base, Method::POST, &format!("/endpoints/{id}/test"), None).await;
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(outcome["success"], true, "{outcome}");
    let test = receiver.received_at("/both").pop().unwrap();
    assert!(reference_accepts(&secret, &test));
    let body: Value = serde_json::from_slice(&test.body).unwrap();
    assert_eq!(body["type"], "herald.batch");
    assert_eq!(body["data"][0]["type"], "herald.test", "{body}");
    assert_eq!(test.header("x-herald-batch-size"), "1");
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_answered_410_fails_every_event_and_disables_the_endpoint() {
    let env = TestEnv::new().await;
    let receiver = Receiver::scripted(|_, _| Reply::status(410)).await;
    let app = env.start_ready().await;
    let base = format!("http://{}/api/v1", app.address());
    let (id, _) = create(
        &base,
        json!({"url": receiver.url("/gone"), "event_types": ["sales.#"],
               "batch": {"max_events": 10, "window": "300ms"}}),
    )
    .await;
    eventually("the endpoint cached", Duration::from_secs(10), || async {
        app.subscriptions().snapshot().len() == 1
    })
    .await;
    for n in 0..3 {
        env.publish(
            "sales.order.created",
            Some(&format!("evt-gone-{n}")),
            None,
            b"{}",
        )
        .await;
    }
    eventually("all failed", Duration::from_secs(20), || async {
        env.count("SELECT count(*) FROM herald.deliveries WHERE status = 'failed'")
            .await
            == 3
    })
    .await;
    assert_eq!(
        receiver.received_at("/gone").len(),
        1,
        "one request for all three"
    );
    let (_, shown) = call(&base, Method::GET, &format!("/endpoints/{id}"), None).await;
    assert_eq!(shown["state"], "disabled", "{shown}");
    assert_eq!(
        env.count("SELECT count(*) FROM herald.deliveries WHERE dead_reason = 'gone'")
            .await,
        3
    );
    app.stop().await;
    env.cleanup().await;
}
