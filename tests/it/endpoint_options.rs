//! Per-endpoint timeout and retry schedule through the real broker and database: an
//! endpoint's own timeout cuts a slow receiver short while another endpoint's default
//! waits it out, an endpoint's own schedule decides how many attempts it gets before
//! the dead-letter queue, and values the configuration does not allow are refused by
//! the API (422 field errors) and the command line.

use std::time::Duration;

use herald::Role;
use reqwest::Method;
use serde_json::{json, Value};

use crate::common::receiver::{Receiver, Reply};
use crate::common::{amqp_header, eventually, wait_ready, TestEnv};

const ADMIN: &str = "test-admin-token";

/// The tests' extra delays: an endpoint's schedule may use these and the configured
/// schedule's (50ms, 100ms).
fn with_extra_delays(settings: &mut herald::config::Settings) {
    settings.delivery.retry_delays = vec![Duration::from_millis(20), Duration::from_millis(30)];
    settings.delivery.max_timeout = Duration::from_secs(15);
}

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

/// Creates an endpoint through the API; its id.
async fn create(base: &str, body: Value) -> String {
    let (status, created) = call(base, Method::POST, "/endpoints", Some(body)).await;
    assert_eq!(status, 201, "{created}");
    created["id"].as_str().unwrap().to_string()
}

/// (status, attempts, error class of each attempt) of the one delivery to `endpoint`.
async fn delivery_of(env: &TestEnv, endpoint: &str) -> (String, i32, Vec<Option<String>>) {
    let (status, attempts): (String, i32) = sqlx::query_as(
        "SELECT status, attempts FROM herald.deliveries WHERE endpoint_id = $1::uuid",
    )
    .bind(endpoint)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    let errors: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT a.error FROM herald.delivery_attempts a
           JOIN herald.deliveries d ON d.id = a.delivery_id
          WHERE d.endpoint_id = $1::uuid ORDER BY a.attempt",
    )
    .bind(endpoint)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    (status, attempts, errors)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoints_own_timeout_cuts_a_slow_receiver_short_while_the_default_waits() {
    let env = TestEnv::with(with_extra_delays).await;
    // Both answer after 1.5 s; the deployment's timeout is 10 s.
    let receiver = Receiver::scripted(|_, _| Reply::ok_after(Duration::from_millis(1500))).await;
    let app = env.start_ready().await;
    let base = format!("http://{}/api/v1", app.address());
    let hasty = create(
        &base,
        json!({"url": receiver.url("/hasty"), "event_types": ["sales.#"],
               "timeout": "300ms", "retry_schedule": []}),
    )
    .await;
    let patient = create(
        &base,
        json!({"url": receiver.url("/patient"), "event_types": ["sales.#"]}),
    )
    .await;
    let (_, shown) = call(&base, Method::GET, &format!("/endpoints/{hasty}"), None).await;
    assert_eq!(shown["timeout"], "300ms", "{shown}");
    assert_eq!(shown["retry_schedule"], json!([]), "{shown}");
    let (_, shown) = call(&base, Method::GET, &format!("/endpoints/{patient}"), None).await;
    assert_eq!(
        (&shown["timeout"], &shown["retry_schedule"]),
        (&Value::Null, &Value::Null),
        "the deployment's: {shown}"
    );
    // The API process's cache reloads on the change notification; wait for it.
    eventually("both endpoints cached", Duration::from_secs(10), || async {
        app.subscriptions().snapshot().len() == 2
    })
    .await;

    env.publish("sales.order.created", Some("evt-slow-1"), None, b"{}")
        .await;
    eventually(
        "both deliveries settled",
        Duration::from_secs(20),
        || async {
            env.count(
                "SELECT count(*) FROM herald.deliveries WHERE status IN ('success', 'failed')",
            )
            .await
                == 2
        },
    )
    .await;
    let (status, attempts, errors) = delivery_of(&env, &hasty).await;
    assert_eq!(
        (status.as_str(), attempts, errors),
        ("failed", 1, vec![Some("timeout".to_string())]),
        "300 ms was not enough, and no retry was asked for"
    );
    let (status, attempts, errors) = delivery_of(&env, &patient).await;
    assert_eq!(
        (status.as_str(), attempts, errors),
        ("success", 1, vec![None])
    );
    let duration: i32 = sqlx::query_scalar(
        "SELECT a.duration_ms FROM herald.delivery_attempts a
           JOIN herald.deliveries d ON d.id = a.delivery_id WHERE d.endpoint_id = $1::uuid",
    )
    .bind(&hasty)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!(
        (250..1400).contains(&duration),
        "cut short at its own timeout: {duration} ms"
    );
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoints_own_schedule_decides_its_retries_before_the_dead_letter_queue() {
    let env = TestEnv::with(with_extra_delays).await;
    let receiver = Receiver::scripted(|_, _| Reply::status(500)).await;
    let app = env.start_ready().await;
    let base = format!("http://{}/api/v1", app.address());
    // Four retries from the configured schedule's delays and the extra ones.
    let own = create(
        &base,
        json!({"url": receiver.url("/own"), "event_types": ["sales.#"],
               "retry_schedule": ["20ms", "30ms", "50ms", "20ms"]}),
    )
    .await;
    // The configured schedule: two retries.
    let configured = create(
        &base,
        json!({"url": receiver.url("/configured"), "event_types": ["sales.#"]}),
    )
    .await;
    eventually("both endpoints cached", Duration::from_secs(10), || async {
        app.subscriptions().snapshot().len() == 2
    })
    .await;
    env.publish("sales.order.created", Some("evt-own-1"), None, b"{}")
        .await;
    eventually("both dead-lettered", Duration::from_secs(20), || async {
        env.count("SELECT count(*) FROM herald.deliveries WHERE status = 'failed'")
            .await
            == 2
    })
    .await;
    // Give a surplus retry the chance to show up before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        receiver.received_at("/own").len(),
        5,
        "the first attempt and four retries"
    );
    assert_eq!(
        receiver.received_at("/configured").len(),
        3,
        "the first and two retries"
    );
    assert_eq!(delivery_of(&env, &own).await.1, 5);
    assert_eq!(delivery_of(&env, &configured).await.1, 3);
    let parked = env.drain(&env.topology().dlq()).await;
    let mut reasons: Vec<(String, String)> = parked
        .iter()
        .map(|m| {
            (
                amqp_header(m, "x-herald-endpoint-id").unwrap_or_default(),
                amqp_header(m, "x-herald-attempts").unwrap_or_default(),
            )
        })
        .collect();
    reasons.sort();
    let mut expected = vec![
        (own.clone(), "5".to_string()),
        (configured, "3".to_string()),
    ];
    expected.sort();
    assert_eq!(reasons, expected, "both parked, with their attempt counts");
    assert!(parked
        .iter()
        .all(|m| amqp_header(m, "x-herald-reason").as_deref() == Some("retries_exhausted")));

    // Back to the deployment's schedule (`null`), through the API.
    let (status, changed) = call(
        &base,
        Method::PATCH,
        &format!("/endpoints/{own}"),
        Some(json!({"retry_schedule": null, "timeout": "2s"})),
    )
    .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(
        (&changed["retry_schedule"], &changed["timeout"]),
        (&Value::Null, &json!("2s"))
    );
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_and_schedules_the_configuration_does_not_allow_are_refused_as_field_errors() {
    let env = TestEnv::with(with_extra_delays).await;
    let api = env.start(Role::Api).await;
    wait_ready(&api).await;
    let base = format!("http://{}/api/v1", api.address());
    let endpoint = |extra: Value| {
        let mut body = json!({"url": "http://127.0.0.1:9/x", "event_types": ["a.b"]});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    let too_long: Vec<&str> = vec!["20ms"; 21];
    let cases: Vec<(Value, Vec<&str>, &str)> = vec![
        (
            json!({"timeout": "1m"}),
            vec!["timeout"],
            "delivery.max_timeout",
        ),
        (json!({"timeout": "0s"}), vec!["timeout"], "from 1ms"),
        (
            json!({"timeout": "soon"}),
            vec!["timeout"],
            "not a duration",
        ),
        (
            json!({"retry_schedule": ["20ms", "2m"]}),
            vec!["retry_schedule[1]"],
            "has no delay queue: one of 20ms, 30ms, 50ms, 100ms",
        ),
        (
            json!({"retry_schedule": too_long}),
            vec!["retry_schedule"],
            "at most 20",
        ),
        (
            json!({"timeout": "1h", "retry_schedule": ["later"]}),
            vec!["timeout", "retry_schedule[0]"],
            "",
        ),
    ];
    for (extra, fields, message) in cases {
        let (status, problem) = call(
            &base,
            Method::POST,
            "/endpoints",
            Some(endpoint(extra.clone())),
        )
        .await;
        assert_eq!(status, 422, "{extra}: {problem}");
        let got: Vec<&str> = problem["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert_eq!(got, fields, "{extra}: {problem}");
        let text = problem["errors"][0]["message"].as_str().unwrap();
        assert!(text.contains(message), "{extra}: {problem}");
    }
    assert_eq!(env.count("SELECT count(*) FROM herald.endpoints").await, 0);

    // An update with an invalid value changes nothing.
    let id = create(
        &base,
        endpoint(json!({"timeout": "5s", "retry_schedule": ["50ms"]})),
    )
    .await;
    let (status, problem) = call(
        &base,
        Method::PATCH,
        &format!("/endpoints/{id}"),
        Some(json!({"timeout": "20s", "retry_schedule": ["100ms"]})),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "timeout", "{problem}");
    let (_, shown) = call(&base, Method::GET, &format!("/endpoints/{id}"), None).await;
    assert_eq!(
        (&shown["timeout"], &shown["retry_schedule"]),
        (&json!("5s"), &json!(["50ms"]))
    );
    api.stop().await;

    // The command line: accepted, refused, and back to the defaults.
    let herald = |args: &[&str]| {
        let out = env
            .herald_command()
            .env("HERALD__DELIVERY__RETRY_DELAYS", "20ms,30ms")
            .env("HERALD__DELIVERY__MAX_TIMEOUT", "15s")
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
    let (ok, added, stderr) = add(&["--timeout", "5s", "--retry-schedule", "20ms,30ms,100ms"]);
    assert!(ok, "{stderr}");
    assert_eq!(added["timeout"], "5s");
    assert_eq!(added["retry_schedule"], json!(["20ms", "30ms", "100ms"]));
    let (ok, _, stderr) = add(&["--retry-schedule", "1m,5m"]);
    assert!(!ok, "delays without queues are refused");
    assert!(stderr.contains("retry_schedule[0]"), "{stderr}");
    let (ok, _, stderr) = add(&["--timeout", "16s"]);
    assert!(!ok && stderr.contains("delivery.max_timeout"), "{stderr}");
    let id = added["id"].as_str().unwrap();
    let (ok, updated, stderr) = herald(&["endpoint", "update", id, "--retry-schedule", "none"]);
    assert!(ok, "{stderr}");
    assert_eq!(updated["retry_schedule"], json!([]), "none: no retry");
    let (ok, updated, stderr) = herald(&[
        "endpoint",
        "update",
        id,
        "--default-timeout",
        "--default-retry-schedule",
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(
        (&updated["timeout"], &updated["retry_schedule"]),
        (&Value::Null, &Value::Null)
    );
    env.cleanup().await;
}

#[tokio::test]
async fn endpoints_of_a_database_from_before_the_options_keep_the_deployments() {
    let env = TestEnv::unmigrated().await;
    let before = sqlx::migrate::Migrator {
        migrations: std::borrow::Cow::Owned(
            herald::store::MIGRATOR
                .iter()
                .filter(|m| m.version < 20261207000004)
                .cloned()
                .collect(),
        ),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    before.run(&env.pool).await.expect("the earlier migrations");
    sqlx::query(
        "INSERT INTO herald.endpoints (id, url, event_types, secret)
         VALUES ($1, 'https://example.com/hook', '{sales.#}', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw')",
    )
    .bind(uuid::Uuid::new_v4())
    .execute(&env.pool)
    .await
    .unwrap();
    herald::store::migrate(&env.pool)
        .await
        .expect("migrate to the latest");
    let active = herald::store::endpoints::load_active(&env.pool, &env.keys())
        .await
        .unwrap();
    assert_eq!(active.len(), 1);
    assert!(active[0].delivery.is_none(), "no options: the deployment's");
    assert_eq!(
        (active[0].timeout(), active[0].retry_schedule()),
        (None, None)
    );
    // The database refuses what the edge would (a zero or negative delay).
    let refused = sqlx::query("UPDATE herald.endpoints SET retry_schedule_ms = '{1000,0}'")
        .execute(&env.pool)
        .await;
    assert!(refused.is_err(), "a zero delay is refused by the CHECK");
    env.cleanup().await;
}
