//! Events reach exactly the endpoints subscribed to them, signed per Standard Webhooks.

use std::time::Duration;

use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;

use crate::common::receiver::{Receiver, Reply};
use crate::common::{eventually, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_event_reaches_every_matching_endpoint_with_a_verifiable_signature() {
    let env = TestEnv::new().await;
    let receiver = Receiver::start().await;
    let star = env
        .add_endpoint(&receiver.url("/star"), &["sales.order.*"], None)
        .await;
    let hash = env
        .add_endpoint(&receiver.url("/hash"), &["sales.#"], None)
        .await;
    let suffix = env
        .add_endpoint(
            &receiver.url("/suffix"),
            &["#.created", "sales.order.*"],
            None,
        )
        .await;
    env.add_endpoint(&receiver.url("/billing"), &["billing.#"], None)
        .await;
    env.add_endpoint(&receiver.url("/deeper"), &["sales.order.*.*"], None)
        .await;
    let app = env.start_ready().await;

    // The publisher's trace context, as an instrumented ERP service would send it.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut headers = FieldTable::default();
    headers.insert(
        "traceparent".into(),
        AMQPValue::LongString(format!("00-{trace_id}-00f067aa0ba902b7-01").into()),
    );
    env.publish_raw(
        "sales.order.created",
        br#"{"order": 42, "lines": [1, 2]}"#,
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id("evt-fan-1".into())
            .with_headers(headers),
    )
    .await;
    eventually("three deliveries", Duration::from_secs(15), || async {
        receiver.count() >= 3
    })
    .await;
    // Give a wrongly matched endpoint the chance to show up before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let received = receiver.received();
    let mut paths: Vec<&str> = received.iter().map(|r| r.path.as_str()).collect();
    paths.sort();
    assert_eq!(
        paths,
        ["/hash", "/star", "/suffix"],
        "only matching endpoints, each once"
    );

    for (endpoint, path) in [(&star, "/star"), (&hash, "/hash"), (&suffix, "/suffix")] {
        let request = &receiver.received_at(path)[0];
        assert_eq!(request.header("webhook-id"), "evt-fan-1");
        assert_eq!(request.header("content-type"), "application/json");
        assert_eq!(request.header("x-herald-attempt"), "1");
        assert!(request.header("user-agent").starts_with("Herald/"));
        let traceparent = request.header("traceparent");
        let parts: Vec<&str> = traceparent.split('-').collect();
        assert_eq!(parts.len(), 4, "W3C traceparent: {traceparent}");
        assert_eq!(
            parts[1], trace_id,
            "the receiver joins the publisher's trace"
        );
        assert_ne!(parts[2], "00f067aa0ba902b7", "Herald's own hop");
        standardwebhooks::Webhook::new(&endpoint.secret)
            .unwrap()
            .verify(&request.body, &request.headers)
            .expect("signature verifies with the reference library");
        let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(body["id"], "evt-fan-1");
        assert_eq!(body["type"], "sales.order.created");
        assert!(body.get("tenant_id").is_none());
        assert!(chrono::DateTime::parse_from_rfc3339(body["timestamp"].as_str().unwrap()).is_ok());
        // The publisher's data, byte for byte.
        assert!(std::str::from_utf8(&request.body)
            .unwrap()
            .ends_with(r#""data":{"order": 42, "lines": [1, 2]}}"#));
    }

    eventually(
        "deliveries recorded as success",
        Duration::from_secs(10),
        || async { env.delivery_statuses().await == vec![("success".to_string(), 3)] },
    )
    .await;
    assert_eq!(
        env.count("SELECT count(*) FROM herald.delivery_attempts WHERE status_code = 200")
            .await,
        3
    );
    assert_eq!(env.count("SELECT count(*) FROM herald.events").await, 1);
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_with_a_tenant_receives_only_that_tenants_events() {
    let env = TestEnv::new().await;
    let receiver = Receiver::start().await;
    env.add_endpoint(&receiver.url("/acme"), &["billing.#"], Some("acme"))
        .await;
    env.add_endpoint(&receiver.url("/all"), &["billing.#"], None)
        .await;
    let app = env.start_ready().await;

    env.publish(
        "billing.invoice.paid",
        Some("evt-t-1"),
        Some("globex"),
        b"{}",
    )
    .await;
    env.publish("billing.invoice.paid", Some("evt-t-2"), Some("acme"), b"{}")
        .await;
    env.publish("billing.invoice.paid", Some("evt-t-3"), None, b"{}")
        .await;
    eventually("four deliveries", Duration::from_secs(15), || async {
        receiver.count() >= 4
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let ids = |path: &str| {
        let mut ids: Vec<String> = receiver
            .received_at(path)
            .iter()
            .map(|r| r.header("webhook-id"))
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(ids("/acme"), ["evt-t-2"]);
    assert_eq!(ids("/all"), ["evt-t-1", "evt-t-2", "evt-t-3"]);
    let acme: serde_json::Value =
        serde_json::from_slice(&receiver.received_at("/acme")[0].body).unwrap();
    assert_eq!(acme["tenant_id"], "acme");
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_added_while_running_receives_the_next_events() {
    let env = TestEnv::new().await;
    let receiver = Receiver::start().await;
    let app = env.start_ready().await;
    env.publish("product.low_stock", Some("evt-before"), None, b"{}")
        .await;
    eventually(
        "the unmatched event to be recorded",
        Duration::from_secs(10),
        || async { env.count("SELECT count(*) FROM herald.events").await == 1 },
    )
    .await;

    let endpoint = env
        .add_endpoint(&receiver.url("/late"), &["product.*"], None)
        .await;
    // LISTEN/NOTIFY refreshes the running process's subscriptions.
    eventually(
        "the cache to learn the new endpoint",
        Duration::from_secs(10),
        || async { app.subscriptions().snapshot().get(&endpoint.id).is_some() },
    )
    .await;
    env.publish("product.low_stock", Some("evt-after"), None, b"{}")
        .await;
    eventually("one delivery", Duration::from_secs(15), || async {
        receiver.count() >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ids: Vec<String> = receiver
        .received()
        .iter()
        .map(|r| r.header("webhook-id"))
        .collect();
    assert_eq!(
        ids,
        ["evt-after"],
        "recorded events are not fanned out retroactively"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM herald.events").await,
        2,
        "unmatched events are recorded too"
    );
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_spanning_many_amqp_frames_arrives_whole_first_time_and_on_retry() {
    let env = TestEnv::new().await;
    // The first request to /retried fails, so its copy goes through the retry queues.
    let receiver = Receiver::scripted(|path, nth| {
        Reply::status(if path == "/retried" && nth == 1 {
            500
        } else {
            200
        })
    })
    .await;
    let direct = env
        .add_endpoint(&receiver.url("/direct"), &["catalog.#"], None)
        .await;
    let retried = env
        .add_endpoint(&receiver.url("/retried"), &["catalog.#"], None)
        .await;
    let app = env.start_ready().await;

    // 200 KiB of data: about thirteen frames of Herald's default 16 KiB.
    let data = format!(r#"{{"blob":"{}"}}"#, "0123456789abcdef".repeat(12_800));
    assert!(data.len() > 12 * herald::broker::DEFAULT_FRAME_MAX as usize);
    env.publish(
        "catalog.export.ready",
        Some("evt-big"),
        None,
        data.as_bytes(),
    )
    .await;
    eventually("both deliveries", Duration::from_secs(20), || async {
        receiver.received_at("/direct").len() == 1 && receiver.received_at("/retried").len() == 2
    })
    .await;
    for (endpoint, request) in [
        (&direct, &receiver.received_at("/direct")[0]),
        (&retried, &receiver.received_at("/retried")[1]),
    ] {
        assert_eq!(request.header("webhook-id"), "evt-big");
        assert!(std::str::from_utf8(&request.body)
            .unwrap()
            .ends_with(&format!(r#""data":{data}}}"#)));
        standardwebhooks::Webhook::new(&endpoint.secret)
            .unwrap()
            .verify(&request.body, &request.headers)
            .expect("signature verifies over the whole body");
    }
    app.stop().await;
    env.cleanup().await;
}
