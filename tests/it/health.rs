//! Endpoint health through the real broker and database: the circuit breaker opening on
//! a failing receiver, holding its tasks back with one probe at a time, shared by two
//! processes, and closing when the receiver recovers; auto-disable after
//! `delivery.disable_after`; re-enabling; and the operational events of each on a
//! queue bound to `<prefix>.ops`, field by field.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use herald::broker;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use reqwest::Method;
use serde_json::{json, Value};

use crate::common::receiver::{Receiver, Reply};
use crate::common::{amqp_url, eventually, TestEnv};
use crate::tenants::{Api, ADMIN};

/// Operational events as a queue bound to `<prefix>.ops` with `#` receives them.
struct OpsWatch {
    _connection: lapin::Connection,
    seen: Arc<Mutex<Vec<(String, String, Value)>>>,
}

impl OpsWatch {
    async fn start(env: &TestEnv) -> Self {
        let connection = broker::connect(&amqp_url(), "herald-test-ops")
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        let queue = channel
            .queue_declare(
                "",
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                queue.name().as_str(),
                &env.topology().ops_exchange(),
                "#",
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut consumer = channel
            .basic_consume(
                queue.name().as_str(),
                "",
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Some(Ok(message)) = consumer.next().await {
                let content_type = message
                    .properties
                    .content_type()
                    .as_ref()
                    .map(|c| c.to_string())
                    .unwrap_or_default();
                let event: Value = serde_json::from_slice(&message.data).unwrap();
                log.lock()
                    .unwrap()
                    .push((message.routing_key.to_string(), content_type, event));
            }
        });
        Self {
            _connection: connection,
            seen,
        }
    }

    fn of_type(&self, kind: &str) -> Vec<Value> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, _, e)| e["type"] == kind)
            .map(|(_, _, e)| e.clone())
            .collect()
    }

    async fn wait_for(&self, kind: &str, limit: Duration) -> Value {
        eventually(&format!("an operational event {kind}"), limit, || async {
            !self.of_type(kind).is_empty()
        })
        .await;
        let (routing_key, content_type, event) = self
            .seen
            .lock()
            .unwrap()
            .iter()
            .find(|(_, _, e)| e["type"] == kind)
            .cloned()
            .unwrap();
        assert_eq!(routing_key, kind, "routing key = type");
        assert_eq!(content_type, "application/cloudevents+json");
        event
    }
}

/// A receiver answering 500 while `failing` is set, 200 after.
async fn switchable_receiver() -> (Receiver, Arc<AtomicBool>) {
    let failing = Arc::new(AtomicBool::new(true));
    let flag = failing.clone();
    let receiver = Receiver::scripted(move |_, _| {
        if flag.load(Ordering::SeqCst) {
            Reply::status(500)
        } else {
            Reply::status(200)
        }
    })
    .await;
    (receiver, failing)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

async fn breaker_open(env: &TestEnv, endpoint: uuid::Uuid) -> bool {
    env.count(&format!(
        "SELECT count(*) FROM herald.endpoint_health \
         WHERE endpoint_id = '{endpoint}' AND open_since IS NOT NULL"
    ))
    .await
        == 1
}

async fn publish_events(env: &TestEnv, prefix: &str, count: usize, tenant: Option<&str>) {
    for n in 0..count {
        env.publish(
            "inventory.stock.changed",
            Some(&format!("{prefix}-{n}")),
            tenant,
            format!(r#"{{"n":{n}}}"#).as_bytes(),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_is_held_back_probed_once_a_second_and_resumes_when_it_recovers() {
    let env = TestEnv::with(|s| {
        // Retries every 200 ms for long enough that nothing is dead-lettered meanwhile:
        // with the breaker gate taken out, 20 events cost 380 requests in these 4 s.
        s.delivery.retry_schedule = vec![ms(200); 40];
        s.delivery.breaker_failures = 3;
        s.delivery.probe_interval = Duration::from_secs(1);
    })
    .await;
    let ops = OpsWatch::start(&env).await;
    let (receiver, failing) = switchable_receiver().await;
    let endpoint = env
        .add_endpoint(&receiver.url("/hook"), &["inventory.#"], Some("acme"))
        .await;
    let app = env.start_ready().await;
    publish_events(&env, "cb", 20, Some("acme")).await;

    eventually("the breaker to open", Duration::from_secs(20), || async {
        breaker_open(&env, endpoint.id).await
    })
    .await;
    let opened = ops
        .wait_for("herald.endpoint.failing", Duration::from_secs(10))
        .await;
    assert_eq!(opened["specversion"], "1.0");
    assert_eq!(opened["tenantid"], "acme");
    assert_eq!(opened["datacontenttype"], "application/json");
    assert_eq!(
        opened["source"],
        format!("/herald/{}", env.topology().prefix())
    );
    assert_eq!(opened["data"]["endpoint_id"], endpoint.id.to_string());
    assert_eq!(opened["data"]["last_status"], 500);
    assert_eq!(opened["data"]["consecutive_failures"], 3);
    assert!(opened["data"]["reason"]
        .as_str()
        .unwrap()
        .contains("3 failed"));
    let api = Api::new(&app);
    let shown = api
        .ok(
            Method::GET,
            &format!("/endpoints/{}", endpoint.id),
            ADMIN,
            None,
        )
        .await;
    assert_eq!(shown["state"], "failing");

    // While open: about one probe a second, not the retry schedule's pace.
    let before = receiver.count();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let during = receiver.count() - before;
    println!("breaker open: {during} requests in 4 s");
    assert!(
        during <= 7,
        "{during} requests in 4 s while the breaker was open"
    );
    assert!(during >= 2, "probes go out while open ({during})");
    assert_eq!(
        env.count("SELECT count(*) FROM herald.deliveries WHERE status = 'success'")
            .await,
        0
    );

    // The receiver recovers: the next probe closes the breaker, the held tasks follow.
    failing.store(false, Ordering::SeqCst);
    let recovered = ops
        .wait_for("herald.endpoint.recovered", Duration::from_secs(10))
        .await;
    assert_eq!(recovered["tenantid"], "acme");
    assert_eq!(recovered["data"]["endpoint_id"], endpoint.id.to_string());
    eventually("all 20 delivered", Duration::from_secs(90), || async {
        env.delivery_statuses().await == vec![("success".to_string(), 20)]
    })
    .await;
    assert!(!breaker_open(&env, endpoint.id).await);
    let shown = api
        .ok(
            Method::GET,
            &format!("/endpoints/{}", endpoint.id),
            ADMIN,
            None,
        )
        .await;
    assert_eq!(shown["state"], "enabled");
    // One state change per endpoint, not one event per attempt.
    assert_eq!(ops.of_type("herald.endpoint.failing").len(), 1);
    assert_eq!(ops.of_type("herald.endpoint.recovered").len(), 1);
    assert!(ops.of_type("herald.delivery.dead_lettered").is_empty());
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_one_breaker_and_send_one_probe_at_a_time() {
    let env = TestEnv::with(|s| {
        s.delivery.retry_schedule = vec![ms(200); 40];
        s.delivery.breaker_failures = 3;
        s.delivery.probe_interval = Duration::from_secs(1);
    })
    .await;
    let (receiver, failing) = switchable_receiver().await;
    let endpoint = env
        .add_endpoint(&receiver.url("/shared"), &["inventory.#"], None)
        .await;
    let first = env.start_ready().await;
    let second = env.start_ready().await;
    publish_events(&env, "two", 30, None).await;
    eventually("the breaker to open", Duration::from_secs(20), || async {
        breaker_open(&env, endpoint.id).await
    })
    .await;
    // Let the second process's cache (read each second) and the in-flight attempts settle.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = receiver.count();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let during = receiver.count() - before;
    println!("breaker open, two processes: {during} requests in 4 s");
    assert!(
        during <= 6,
        "{during} requests in 4 s from two processes while the breaker was open"
    );
    failing.store(false, Ordering::SeqCst);
    eventually("all 30 delivered", Duration::from_secs(90), || async {
        env.delivery_statuses().await == vec![("success".to_string(), 30)]
    })
    .await;
    first.stop().await;
    second.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_failing_for_disable_after_is_disabled_and_enabling_it_closes_the_breaker() {
    let env = TestEnv::with(|s| {
        s.delivery.retry_schedule = vec![ms(200); 40];
        s.delivery.breaker_failures = 2;
        s.delivery.probe_interval = ms(300);
        s.delivery.disable_after = Duration::from_secs(2);
    })
    .await;
    let ops = OpsWatch::start(&env).await;
    let (receiver, _failing) = switchable_receiver().await;
    let endpoint = env
        .add_endpoint(&receiver.url("/dead"), &["inventory.#"], Some("globex"))
        .await;
    let app = env.start_ready().await;
    publish_events(&env, "ad", 5, Some("globex")).await;

    let disabled = ops
        .wait_for("herald.endpoint.disabled", Duration::from_secs(30))
        .await;
    assert_eq!(disabled["tenantid"], "globex");
    assert_eq!(disabled["data"]["endpoint_id"], endpoint.id.to_string());
    assert_eq!(disabled["data"]["last_status"], 500);
    let reason = disabled["data"]["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("failing continuously"), "{reason}");
    let api = Api::new(&app);
    let path = format!("/endpoints/{}", endpoint.id);
    let shown = api.ok(Method::GET, &path, ADMIN, None).await;
    assert_eq!(shown["state"], "disabled");
    assert_eq!(shown["disabled_reason"], reason.as_str());
    // Its held tasks end dead-lettered, each reported once.
    eventually("all 5 dead-lettered", Duration::from_secs(30), || async {
        env.delivery_statuses().await == vec![("failed".to_string(), 5)]
    })
    .await;
    eventually(
        "5 dead_lettered events",
        Duration::from_secs(10),
        || async { ops.of_type("herald.delivery.dead_lettered").len() == 5 },
    )
    .await;
    let dead = &ops.of_type("herald.delivery.dead_lettered")[0];
    assert_eq!(dead["tenantid"], "globex");
    assert_eq!(dead["data"]["endpoint_id"], endpoint.id.to_string());
    assert_eq!(dead["data"]["event_type"], "inventory.stock.changed");
    assert!(dead["data"]["delivery_id"].is_string());
    assert!(dead["data"]["reason"].is_string());
    assert_eq!(ops.of_type("herald.endpoint.failing").len(), 1);
    assert_eq!(ops.of_type("herald.endpoint.disabled").len(), 1);

    // Its owner enables it again: the breaker is closed, and that is reported too.
    let enabled = api
        .ok(Method::PATCH, &path, ADMIN, Some(json!({"enabled": true})))
        .await;
    assert_eq!(enabled["state"], "enabled");
    assert_eq!(enabled["disabled_reason"], Value::Null);
    let event = ops
        .wait_for("herald.endpoint.enabled", Duration::from_secs(10))
        .await;
    assert_eq!(event["data"]["endpoint_id"], endpoint.id.to_string());
    assert_eq!(
        env.count(&format!(
            "SELECT count(*) FROM herald.endpoint_health WHERE endpoint_id = '{}'",
            endpoint.id
        ))
        .await,
        0
    );
    // Enabling an enabled endpoint changes nothing and reports nothing.
    api.ok(Method::PATCH, &path, ADMIN, Some(json!({"enabled": true})))
        .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(ops.of_type("herald.endpoint.enabled").len(), 1);
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_message_is_reported_and_a_410_disables_with_its_event() {
    let env = TestEnv::new().await;
    let ops = OpsWatch::start(&env).await;
    let receiver = Receiver::scripted(|_, _| Reply::status(410)).await;
    let endpoint = env
        .add_endpoint(&receiver.url("/gone"), &["inventory.#"], None)
        .await;
    let app = env.start_ready().await;
    env.publish_raw(
        "inventory.stock.changed",
        b"not json at all",
        lapin::BasicProperties::default()
            .with_content_type("application/json".into())
            .with_message_id("bad-1".into()),
    )
    .await;
    let parked = ops
        .wait_for("herald.message.parked", Duration::from_secs(20))
        .await;
    assert_eq!(parked["data"]["reason"], "not_json");
    assert_eq!(parked["data"]["message_id"], "bad-1");
    assert_eq!(parked["data"]["routing_key"], "inventory.stock.changed");
    assert_eq!(parked["data"]["queue"], env.topology().invalid_queue());
    assert!(
        parked["data"]["parked_id"].is_string(),
        "the id to reingest or purge it by: {parked}"
    );
    assert!(parked.get("tenantid").is_none());

    env.publish("inventory.stock.changed", Some("g-1"), None, b"{}")
        .await;
    let disabled = ops
        .wait_for("herald.endpoint.disabled", Duration::from_secs(20))
        .await;
    assert_eq!(disabled["data"]["endpoint_id"], endpoint.id.to_string());
    assert_eq!(disabled["data"]["reason"], "receiver answered 410 Gone");
    assert_eq!(disabled["data"]["last_status"], 410);
    app.stop().await;
    env.cleanup().await;
}
