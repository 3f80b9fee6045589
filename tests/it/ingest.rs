//! What comes in: idempotency on the event id, the accepted forms, and refusals parked
//! in `<prefix>.invalid` while everything else still flows.

use std::time::Duration;

use lapin::BasicProperties;

use crate::common::receiver::Receiver;
use crate::common::{amqp_header, eventually, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_id_published_twice_is_delivered_once_per_endpoint() {
    let env = TestEnv::new().await;
    let receiver = Receiver::start().await;
    env.add_endpoint(&receiver.url("/one"), &["sales.#"], None)
        .await;
    env.add_endpoint(&receiver.url("/two"), &["sales.order.created"], None)
        .await;
    let app = env.start_ready().await;

    env.publish("sales.order.created", Some("evt-dup"), None, br#"{"v":1}"#)
        .await;
    env.publish("sales.order.created", Some("evt-dup"), None, br#"{"v":2}"#)
        .await;
    // No message id: the id derived from the content recognises the copy.
    env.publish("sales.order.created", None, None, br#"{"no-id":true}"#)
        .await;
    env.publish("sales.order.created", None, None, br#"{"no-id":true}"#)
        .await;
    // A later event proves the earlier ones were all processed.
    env.publish("sales.order.created", Some("evt-marker"), None, b"{}")
        .await;

    eventually(
        "the marker at both endpoints",
        Duration::from_secs(15),
        || async {
            receiver
                .received()
                .iter()
                .filter(|r| r.header("webhook-id") == "evt-marker")
                .count()
                == 2
        },
    )
    .await;
    eventually(
        "six deliveries recorded",
        Duration::from_secs(10),
        || async { env.delivery_statuses().await == vec![("success".to_string(), 6)] },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.count(), 6, "three events × two endpoints");
    // One copy is recorded (which one is a race between competing consumers, as it is
    // between replicas) and that copy is what every endpoint receives.
    let sent: Vec<serde_json::Value> = receiver
        .received()
        .iter()
        .filter(|r| r.header("webhook-id") == "evt-dup")
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0]["data"], sent[1]["data"], "the same copy everywhere");
    let stored: String =
        sqlx::query_scalar("SELECT payload::text FROM herald.events WHERE id = 'evt-dup'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    let stored: serde_json::Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(sent[0]["data"], stored, "the recorded copy");
    assert_eq!(env.count("SELECT count(*) FROM herald.events").await, 3);
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacceptable_messages_are_parked_with_a_reason_and_the_rest_still_flows() {
    let env = TestEnv::with(|s| s.ingest.max_body_bytes = 1024).await;
    let receiver = Receiver::start().await;
    env.add_endpoint(&receiver.url("/all"), &["#"], None).await;
    let app = env.start_ready().await;

    env.publish("sales.order.created", Some("bad-json"), None, b"{not json")
        .await;
    env.publish(
        "sales.order.created",
        Some("too-big"),
        None,
        format!("[\"{}\"]", "x".repeat(2000)).as_bytes(),
    )
    .await;
    env.publish("", Some("no-type"), None, b"{}").await;
    env.publish("sales..created", Some("bad-type"), None, b"{}")
        .await;
    env.publish("sales.order.created", Some("good"), None, b"{}")
        .await;

    eventually(
        "the good event delivered",
        Duration::from_secs(15),
        || async { receiver.count() == 1 },
    )
    .await;
    let invalid = env.topology().invalid_queue();
    eventually("four parked messages", Duration::from_secs(10), || async {
        env.queue_depth(&invalid).await == 4
    })
    .await;
    let parked = env.drain(&invalid).await;
    let mut reasons: Vec<(String, String)> = parked
        .iter()
        .map(|m| {
            (
                m.properties.message_id().as_ref().unwrap().to_string(),
                amqp_header(m, "x-herald-error").unwrap(),
            )
        })
        .collect();
    reasons.sort();
    assert_eq!(reasons.len(), 4);
    assert!(
        reasons[0].0 == "bad-json" && reasons[0].1.starts_with("not_json: "),
        "{reasons:?}"
    );
    assert!(
        reasons[1].0 == "bad-type" && reasons[1].1.starts_with("bad_type: "),
        "{reasons:?}"
    );
    assert!(
        reasons[2].0 == "no-type" && reasons[2].1.starts_with("no_type: "),
        "{reasons:?}"
    );
    assert!(
        reasons[3].0 == "too-big" && reasons[3].1.starts_with("too_large: "),
        "{reasons:?}"
    );
    // The parked copy is the original, so it can be fixed and republished.
    let bad = parked
        .iter()
        .find(|m| m.properties.message_id().as_ref().unwrap().as_str() == "bad-json")
        .unwrap();
    assert_eq!(bad.data, b"{not json");
    assert_eq!(
        amqp_header(bad, "x-herald-routing-key").as_deref(),
        Some("sales.order.created")
    );
    assert_eq!(env.count("SELECT count(*) FROM herald.events").await, 1);
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_cloudevents_are_accepted_with_their_own_id_type_and_tenant() {
    let env = TestEnv::new().await;
    let receiver = Receiver::start().await;
    env.add_endpoint(&receiver.url("/ce"), &["payments.#"], Some("acme"))
        .await;
    let app = env.start_ready().await;
    let body = br#"{"specversion":"1.0","id":"ce-42","type":"payments.refund.issued","source":"/payments","time":"2026-11-01T10:00:00Z","tenantid":"acme","data":{"refund":7}}"#;
    env.publish_raw(
        "ignored.routing.key",
        body,
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/cloudevents+json".into()),
    )
    .await;
    eventually(
        "the CloudEvent delivered",
        Duration::from_secs(15),
        || async { receiver.count() == 1 },
    )
    .await;
    let request = &receiver.received()[0];
    assert_eq!(request.header("webhook-id"), "ce-42");
    let webhook: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(webhook["type"], "payments.refund.issued");
    assert_eq!(webhook["tenant_id"], "acme");
    assert_eq!(webhook["timestamp"], "2026-11-01T10:00:00.000Z");
    assert_eq!(webhook["data"]["refund"], 7);
    let source: Option<String> =
        sqlx::query_scalar("SELECT source FROM herald.events WHERE id = 'ce-42'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(source.as_deref(), Some("/payments"));
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_id_from_two_tenants_is_two_events_and_each_reaches_its_endpoints() {
    let env = TestEnv::new().await;
    let receiver = Receiver::start().await;
    env.add_endpoint(&receiver.url("/acme"), &["sales.#"], Some("acme"))
        .await;
    env.add_endpoint(&receiver.url("/globex"), &["sales.#"], Some("globex"))
        .await;
    // No tenant: it receives every tenant's events.
    env.add_endpoint(&receiver.url("/all"), &["sales.#"], None)
        .await;
    let app = env.start_ready().await;

    env.publish(
        "sales.order.created",
        Some("order-1"),
        Some("acme"),
        br#"{"t":"acme"}"#,
    )
    .await;
    env.publish(
        "sales.order.created",
        Some("order-1"),
        Some("globex"),
        br#"{"t":"globex"}"#,
    )
    .await;
    env.publish(
        "sales.order.created",
        Some("order-1"),
        None,
        br#"{"t":null}"#,
    )
    .await;
    // The same id again from one tenant is still the same event. Republished after the
    // first was taken: two ingest consumers may take two copies in flight in either order.
    eventually(
        "the three order-1 events recorded",
        Duration::from_secs(15),
        || async {
            env.count("SELECT count(*) FROM herald.events WHERE id = 'order-1'")
                .await
                == 3
        },
    )
    .await;
    env.publish(
        "sales.order.created",
        Some("order-1"),
        Some("acme"),
        br#"{"t":"again"}"#,
    )
    .await;
    env.publish("sales.order.created", Some("marker"), Some("acme"), b"{}")
        .await;

    eventually("the marker delivered", Duration::from_secs(15), || async {
        receiver
            .received()
            .iter()
            .filter(|r| r.header("webhook-id") == "marker")
            .count()
            == 2
    })
    .await;
    eventually("seven deliveries", Duration::from_secs(10), || async {
        env.delivery_statuses().await == vec![("success".to_string(), 7)]
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let tenants_at = |path: &str| -> Vec<String> {
        let mut seen: Vec<String> = receiver
            .received_at(path)
            .iter()
            .filter(|r| r.header("webhook-id") == "order-1")
            .map(|r| {
                let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                body["data"]["t"].as_str().unwrap_or("none").to_string()
            })
            .collect();
        seen.sort();
        seen
    };
    assert_eq!(tenants_at("/acme"), ["acme"]);
    assert_eq!(tenants_at("/globex"), ["globex"]);
    assert_eq!(tenants_at("/all"), ["acme", "globex", "none"]);
    assert_eq!(
        env.count("SELECT count(*) FROM herald.events WHERE id = 'order-1'")
            .await,
        3
    );
    app.stop().await;
    env.cleanup().await;
}

/// A structured CloudEvent whose `source` holds a zero byte: the envelope takes it,
/// PostgreSQL refuses to store it (`invalid byte sequence for encoding "UTF8": 0x00`).
fn refused_by_the_database() -> (Vec<u8>, BasicProperties) {
    let body =
        br#"{"id":"poison","type":"inventory.stock.changed","source":"/a\u0000b","data":{}}"#;
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/cloudevents+json".into());
    (body.to_vec(), properties)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_inside_a_batch_are_parked_and_every_good_one_is_delivered() {
    const GOOD: usize = 600;
    let env = TestEnv::new().await;
    let receiver = Receiver::start().await;
    env.add_endpoint(&receiver.url("/stock"), &["inventory.#"], None)
        .await;
    // Published before Herald starts, so they arrive together in full batches.
    let (poison, poison_properties) = refused_by_the_database();
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    for n in 0..GOOD {
        if n == GOOD / 3 {
            env.publish_raw(
                "inventory.stock.changed",
                &poison,
                poison_properties.clone(),
            )
            .await;
        }
        if n == GOOD / 2 {
            env.publish(
                "inventory.stock.changed",
                Some("deep"),
                None,
                deep.as_bytes(),
            )
            .await;
        }
        env.publish(
            "inventory.stock.changed",
            Some(&format!("good-{n}")),
            None,
            br#"{"sku":"A-1"}"#,
        )
        .await;
    }
    let app = env.start_ready().await;
    eventually(
        "every good event delivered",
        Duration::from_secs(60),
        || async { env.delivery_statuses().await == vec![("success".to_string(), GOOD as i64)] },
    )
    .await;
    let ingest = env.topology().ingest_queue();
    eventually(
        "the ingest queue empty",
        Duration::from_secs(10),
        || async { env.queue_depth(&ingest).await == 0 },
    )
    .await;
    app.stop().await;
    let mut parked: Vec<(String, String)> = env
        .drain(&env.topology().invalid_queue())
        .await
        .iter()
        .map(|m| {
            (
                amqp_header(m, "x-herald-reason").unwrap_or_default(),
                amqp_header(m, "x-herald-error").unwrap_or_default(),
            )
        })
        .collect();
    parked.sort();
    assert_eq!(parked.len(), 2, "{parked:?}");
    assert_eq!(parked[0].0, "refused_by_database");
    assert!(parked[0].1.contains("0x00"), "{}", parked[0].1);
    assert_eq!(parked[1].0, "too_deep");
    assert_eq!(
        env.count("SELECT count(*) FROM herald.events WHERE id IN ('poison', 'deep')")
            .await,
        0
    );
    assert_eq!(receiver.count(), GOOD);
    env.cleanup().await;
}
