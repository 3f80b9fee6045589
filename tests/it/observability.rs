//! What SREs rely on: the dashboard and alerts query only metrics Herald exports.

use herald::metrics::Metrics;

/// Every `herald_*` / `webhook_*` identifier in a text, histogram suffixes removed.
fn metric_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = text.as_bytes();
    let is_word = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut i = 0;
    while i < bytes.len() {
        if is_word(bytes[i]) && (i == 0 || !is_word(bytes[i - 1])) {
            let start = i;
            while i < bytes.len() && is_word(bytes[i]) {
                i += 1;
            }
            let word = &text[start..i];
            if (word.starts_with("herald_") || word.starts_with("webhook_")) && !word.ends_with('_')
            {
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| word.strip_suffix(s))
                    .unwrap_or(word);
                names.push(base.to_string());
            }
        } else {
            i += 1;
        }
    }
    names.sort();
    names.dedup();
    names
}

#[test]
fn the_dashboard_and_alert_rules_query_only_exported_metrics() {
    let exported = Metrics::new(true).names().to_vec();
    let root = env!("CARGO_MANIFEST_DIR");
    let dashboard = std::fs::read_to_string(format!("{root}/deploy/grafana/herald.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard is JSON");
    let mut exprs = Vec::new();
    fn collect(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    if k == "expr" {
                        out.push(v.as_str().unwrap_or_default().to_string());
                    } else {
                        collect(v, out);
                    }
                }
            }
            serde_json::Value::Array(list) => list.iter().for_each(|v| collect(v, out)),
            _ => {}
        }
    }
    collect(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "the dashboard has its queries");
    let alerts: String = std::fs::read_to_string(format!("{root}/deploy/prometheus/alerts.yml"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");

    let used_by_dashboard = metric_names(&exprs.join("\n"));
    let used_by_alerts = metric_names(&alerts);
    assert!(used_by_alerts.len() >= 5);
    for name in used_by_dashboard.iter().chain(&used_by_alerts) {
        assert!(
            exported.contains(name),
            "`{name}` is queried but Herald does not export it"
        );
    }
    // And the headline series are on the dashboard.
    for needed in [
        "webhook_deliveries_total",
        "webhook_delivery_duration_seconds",
        "herald_queue_messages",
    ] {
        assert!(
            used_by_dashboard.iter().any(|n| n == needed),
            "{needed} missing from the dashboard"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_are_sampled_without_touching_a_message_and_consumers_report_their_lag() {
    use std::time::Duration;

    use lapin::BasicProperties;

    use crate::common::receiver::Receiver;
    use crate::common::{eventually, TestEnv};

    let env = TestEnv::with(|s| {
        s.telemetry.queue_sample_interval = Duration::from_millis(100);
        // Every delivery through the work queue, so its consumer reports too.
        s.ingest.deliver_first_attempt = false;
    })
    .await;
    let receiver = Receiver::start().await;
    env.add_endpoint(&receiver.url("/hook"), &["sales.#"], None)
        .await;
    let app = env.start_ready().await;
    let started = chrono::Utc::now().timestamp();
    // Two refusals and one event, published "100 s ago" by the publisher's clock.
    let then = started - 100;
    let old = || BasicProperties::default().with_timestamp(then as u64);
    for _ in 0..2 {
        env.publish_raw("sales.order.created", b"not json", old())
            .await;
    }
    env.publish_raw(
        "sales.order.created",
        br#"{"id":"evt-lag","type":"sales.order.created","data":{}}"#,
        old(),
    )
    .await;
    let url = format!("http://{}/metrics", app.address());
    let sample = |text: &str, series: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };
    eventually(
        "queues sampled and consumers reporting",
        Duration::from_secs(20),
        || async {
            let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
            sample(&text, r#"herald_queue_messages{queue="invalid"}"#) == Some(2.0)
                && sample(&text, r#"herald_queue_consumers{queue="ingest"}"#)
                    .is_some_and(|n| n >= 1.0)
                && sample(&text, r#"herald_queue_consumers{queue="work"}"#)
                    .is_some_and(|n| n >= 1.0)
                && sample(
                    &text,
                    r#"herald_queue_taken_enqueued_timestamp_seconds{queue="ingest"}"#,
                ) == Some(then as f64)
                && sample(
                    &text,
                    r#"herald_queue_taken_enqueued_timestamp_seconds{queue="work"}"#,
                )
                .is_some_and(|t| t >= started as f64)
                && receiver.count() == 1
        },
    )
    .await;
    let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
    assert_eq!(
        sample(&text, r#"herald_queue_messages{queue="dlq"}"#),
        Some(0.0)
    );
    assert!(
        !text.contains("herald_queue_taken_enqueued_timestamp_seconds{queue=\"dlq\"}"),
        "nobody consumes the dead-letter queue"
    );
    // Many sampling rounds later, the parked messages were never taken and put back:
    // on RabbitMQ 4 each return counts towards the delivery limit, past which the
    // broker drops the message.
    tokio::time::sleep(Duration::from_secs(1)).await;
    app.stop().await;
    let parked = env.drain(&env.topology().invalid_queue()).await;
    assert_eq!(parked.len(), 2);
    assert!(
        parked.iter().all(|m| !m.redelivered),
        "a sampled message was returned to its queue"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_turns_false_while_draining_and_health_stays_up() {
    use std::time::Duration;

    use crate::common::receiver::{Receiver, Reply};
    use crate::common::{eventually, TestEnv};

    let env = TestEnv::new().await;
    let receiver = Receiver::scripted(|_, _| Reply::ok_after(Duration::from_secs(2))).await;
    env.add_endpoint(&receiver.url("/slow"), &["#"], None).await;
    let app = env.start_ready().await;
    let base = format!("http://{}", app.address());
    env.publish("a.b", Some("evt-drain"), None, b"{}").await;
    eventually(
        "the delivery in flight",
        Duration::from_secs(10),
        || async {
            let text = reqwest::get(format!("{base}/metrics"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            text.lines().any(|l| l == "herald_deliveries_in_flight 1")
        },
    )
    .await;

    let stop = app.shutdown_token();
    stop.cancel();
    // While the slow delivery finishes, the process is alive but not ready.
    let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["stopping"], true);
    assert_eq!(
        reqwest::get(format!("{base}/healthz"))
            .await
            .unwrap()
            .status(),
        200
    );
    app.stopped().await;
    assert_eq!(receiver.count(), 1, "the in-flight delivery finished");
    assert_eq!(
        env.delivery_statuses().await,
        vec![("success".to_string(), 1)]
    );
    env.cleanup().await;
}
