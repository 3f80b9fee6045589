//! The HTTP surface: health, readiness, metrics after real deliveries, the admin API
//! behind its token, and the command line.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::receiver::{Receiver, Reply};
use crate::common::{eventually, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_reflect_real_deliveries() {
    let env = TestEnv::with(|s| s.delivery.retry_schedule = vec![]).await;
    let receiver =
        Receiver::scripted(|path, _| Reply::status(if path == "/ok" { 200 } else { 500 })).await;
    env.add_endpoint(&receiver.url("/ok"), &["*.*.created"], None)
        .await;
    env.add_endpoint(&receiver.url("/bad"), &["sales.#"], None)
        .await;
    let app = env.start_ready().await;
    let base = format!("http://{}", app.address());
    assert_eq!(
        reqwest::get(format!("{base}/healthz"))
            .await
            .unwrap()
            .status(),
        200
    );
    let ready: Value = reqwest::get(format!("{base}/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["ready"], true);

    env.publish("sales.order.created", Some("m-1"), None, b"{}")
        .await;
    env.publish("crm.lead.created", Some("m-2"), None, b"{}")
        .await;
    env.publish("nobody.listens", Some("m-3"), None, b"{}")
        .await;
    env.publish("x", Some("m-4"), None, b"not json").await;
    eventually(
        "three deliveries settled",
        Duration::from_secs(15),
        || async {
            env.delivery_statuses().await
                == vec![("failed".to_string(), 1), ("success".to_string(), 2)]
        },
    )
    .await;

    let expected: &[(&str, f64)] = &[
        (r#"webhook_deliveries_total{status="success"}"#, 2.0),
        (r#"webhook_deliveries_total{status="failure"}"#, 1.0),
        (r#"webhook_delivery_http_status{code="500"}"#, 1.0),
        (
            r#"herald_deliveries_dead_lettered_total{reason="retries_exhausted"}"#,
            1.0,
        ),
        ("herald_events_ingested_total", 3.0),
        ("herald_events_unmatched_total", 1.0),
        (r#"herald_messages_parked_total{reason="not_json"}"#, 1.0),
        ("webhook_delivery_duration_seconds_count", 3.0),
        (r#"webhook_retries_total{reason="http_5xx"}"#, 0.0),
    ];
    let value = |metrics: &str, series: &str| -> Option<f64> {
        metrics
            .lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };
    // Counters lag the database by a moment: wait for the values, then check each.
    let mut metrics = String::new();
    for _ in 0..200 {
        metrics = reqwest::get(format!("{base}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if expected.iter().all(|(s, v)| value(&metrics, s) == Some(*v)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (series, v) in expected {
        assert_eq!(value(&metrics, series), Some(*v), "{series} in\n{metrics}");
    }

    let stopping = app.shutdown_token();
    stopping.cancel();
    app.stopped().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_manages_endpoints_and_shows_deliveries_behind_its_token() {
    let env = TestEnv::new().await;
    let receiver = Receiver::start().await;
    let app = env.start_ready().await;
    let base = format!("http://{}/api/v1", app.address());
    let http = reqwest::Client::new();

    let denied = http.get(format!("{base}/endpoints")).send().await.unwrap();
    assert_eq!(denied.status(), 401);
    let wrong = http
        .get(format!("{base}/endpoints"))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    let bad = http
        .post(format!("{base}/endpoints"))
        .bearer_auth("test-admin-token")
        .json(&json!({"url": "ftp://x", "event_types": ["a.b"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);

    let created: Value = http
        .post(format!("{base}/endpoints"))
        .bearer_auth("test-admin-token")
        .json(&json!({"url": receiver.url("/api"), "event_types": ["crm.*.created"], "description": "CRM sync"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    assert!(created["secret"].as_str().unwrap().starts_with("whsec_"));

    let listed: Value = http
        .get(format!("{base}/endpoints"))
        .bearer_auth("test-admin-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);
    assert!(
        listed["data"][0].get("secret").is_none(),
        "secrets are shown once, at creation"
    );

    let uuid: uuid::Uuid = id.parse().unwrap();
    eventually(
        "the new endpoint in the cache",
        Duration::from_secs(10),
        || async { app.subscriptions().snapshot().get(&uuid).is_some() },
    )
    .await;
    env.publish("crm.lead.created", Some("api-1"), None, b"{}")
        .await;
    eventually("delivered", Duration::from_secs(15), || async {
        receiver.count() == 1
    })
    .await;
    eventually("recorded", Duration::from_secs(10), || async {
        env.delivery_statuses().await == vec![("success".to_string(), 1)]
    })
    .await;

    let deliveries: Value = http
        .get(format!("{base}/deliveries?event_id=api-1"))
        .bearer_auth("test-admin-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(deliveries["data"][0]["status"], "success");
    let delivery_id = deliveries["data"][0]["id"].as_str().unwrap();
    let detail: Value = http
        .get(format!("{base}/deliveries/{delivery_id}"))
        .bearer_auth("test-admin-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(detail["attempts"][0]["status_code"], 200);

    let disabled: Value = http
        .patch(format!("{base}/endpoints/{id}"))
        .bearer_auth("test-admin-token")
        .json(&json!({"enabled": false}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(disabled["enabled"], false);
    eventually(
        "the running process to drop the disabled endpoint",
        Duration::from_secs(10),
        || async { app.subscriptions().snapshot().get(&uuid).is_none() },
    )
    .await;
    let deleted = http
        .delete(format!("{base}/endpoints/{id}"))
        .bearer_auth("test-admin-token")
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let gone = http
        .get(format!("{base}/endpoints/{id}"))
        .bearer_auth("test-admin-token")
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);
    app.stop().await;
    env.cleanup().await;
}

/// Runs the `herald` binary against `env`: (success, stdout as JSON, stderr).
pub fn herald(env: &TestEnv, args: &[&str]) -> (bool, Value, String) {
    let out = env
        .herald_command()
        .args(args)
        .output()
        .expect("herald runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (
        out.status.success(),
        json,
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_adds_endpoints_publishes_and_lists_dead_letters() {
    let env = TestEnv::with(|s| {
        s.delivery.retry_schedule = vec![Duration::from_millis(50), Duration::from_millis(100)]
    })
    .await;
    let receiver =
        Receiver::scripted(|path, _| Reply::status(if path == "/cli" { 200 } else { 500 })).await;
    let (ok, added, err) = herald(
        &env,
        &[
            "endpoint",
            "add",
            "--url",
            &receiver.url("/cli"),
            "--event-type",
            "sales.order.*",
            "--event-type",
            "sales.quote.*",
        ],
    );
    assert!(ok, "{err}");
    assert!(added["id"].is_string());
    assert!(added["secret"].as_str().unwrap().starts_with("whsec_"));
    let (ok, _, _) = herald(
        &env,
        &[
            "endpoint",
            "add",
            "--url",
            &receiver.url("/broken"),
            "--event-type",
            "sales.#",
        ],
    );
    assert!(ok);
    let (ok, _, err) = herald(
        &env,
        &["endpoint", "add", "--url", "not-a-url", "--event-type", "a"],
    );
    assert!(!ok && err.contains("url"), "bad input fails loudly: {err}");
    let (ok, listed, _) = herald(&env, &["endpoint", "list"]);
    assert!(ok);
    assert_eq!(listed.as_array().unwrap().len(), 2);

    let app = env.start_ready().await;
    let (ok, published, err) = herald(
        &env,
        &[
            "publish",
            "--routing-key",
            "sales.order.created",
            "--data",
            r#"{"a":1}"#,
            "--id",
            "cli-1",
            "--tenant",
            "acme",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(published["id"], "cli-1");
    eventually(
        "the CLI event at the good endpoint",
        Duration::from_secs(15),
        || async { !receiver.received_at("/cli").is_empty() },
    )
    .await;
    let request = &receiver.received_at("/cli")[0];
    standardwebhooks::Webhook::new(added["secret"].as_str().unwrap())
        .unwrap()
        .verify(&request.body, &request.headers)
        .unwrap();
    eventually(
        "the broken endpoint's delivery to fail",
        Duration::from_secs(15),
        || async {
            env.delivery_statuses().await
                == vec![("failed".to_string(), 1), ("success".to_string(), 1)]
        },
    )
    .await;
    let (ok, dead, _) = herald(&env, &["dlq", "list"]);
    assert!(ok);
    assert_eq!(dead["total"], 1);
    let dead = &dead["data"];
    assert_eq!(dead.as_array().unwrap().len(), 1);
    assert_eq!(dead[0]["event_id"], "cli-1");
    assert_eq!(dead[0]["last_status_code"], 500);
    assert_eq!(dead[0]["reason"], "retries_exhausted");

    eventually(
        "the dead letter parked and recorded",
        Duration::from_secs(10),
        || async { env.dead_letters_parked_and_recorded(1).await },
    )
    .await;
    receiver.set_script(|_, _| Reply::status(200));
    let (ok, report, err) = herald(&env, &["dlq", "redrive", "--all"]);
    assert!(ok, "{err}");
    assert_eq!(report["state"], "done");
    assert_eq!(report["processed"], 1);
    eventually(
        "redriven and delivered",
        Duration::from_secs(15),
        || async { env.delivery_statuses().await == vec![("success".to_string(), 2)] },
    )
    .await;
    let (ok, _, err) = herald(
        &env,
        &["publish", "--routing-key", "a.b", "--data", "{oops"],
    );
    assert!(!ok && err.contains("JSON"), "{err}");
    app.stop().await;
    env.cleanup().await;
}

#[test]
fn a_bad_configuration_stops_startup_naming_the_key() {
    for (key, value) in [
        ("HERALD__DELIVERY__TIMEOUT", "soon"),
        ("HERALD__DELIVERY__RETRY_SCHEDULE", "1m,often"),
        ("HERALD__TOPOLOGY__PREFIX", "has space"),
        ("HERALD__AMQP__URL", "http://not-amqp"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["serve", "--role", "api"])
            .env(key, value)
            .output()
            .expect("herald runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{key}={value} must stop startup");
        let dotted = key
            .trim_start_matches("HERALD__")
            .replace("__", ".")
            .to_lowercase();
        assert!(
            stderr.contains(&dotted),
            "{key}: the message names `{dotted}`: {stderr}"
        );
    }
}
