//! The SSRF guard with real receivers on loopback: `delivery.allowed_networks` exempting
//! one address through the whole pipeline (broker, database, receiver), and DNS
//! rebinding — a name that resolved to an allowed address and then to a forbidden one
//! is refused on the later connect.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herald::config::DeliverySettings;
use herald::delivery::client::{FailureClass, Lookup, Response, WebhookClient};
use reqwest::header::HeaderMap;

use crate::common::receiver::{Receiver, Reply};
use crate::common::{eventually, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_network_is_reached_and_its_neighbours_are_still_refused() {
    let env = TestEnv::with(|s| {
        s.delivery.allow_private_networks = false;
        s.delivery.allowed_networks = vec!["127.0.0.1/32".parse().unwrap()];
        s.delivery.retry_schedule = vec![];
    })
    .await;
    let receiver = Receiver::start().await;
    let port = receiver.url("").rsplit(':').next().unwrap().to_string();
    env.add_endpoint(&receiver.url("/allowed"), &["#"], None)
        .await;
    // 127.0.0.2 is loopback too, outside the allowed /32: refused before any connect.
    env.add_endpoint(&format!("http://127.0.0.2:{port}/neighbour"), &["#"], None)
        .await;
    let app = env.start_ready().await;
    env.publish("a.b", Some("evt-allowed"), None, b"{}").await;
    eventually(
        "both deliveries to end",
        Duration::from_secs(15),
        || async {
            env.delivery_statuses().await
                == vec![("failed".to_string(), 1), ("success".to_string(), 1)]
        },
    )
    .await;
    assert_eq!(receiver.received_at("/allowed").len(), 1);
    assert_eq!(receiver.count(), 1);
    let classes: Vec<String> =
        sqlx::query_scalar("SELECT error FROM herald.delivery_attempts WHERE error IS NOT NULL")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(classes, ["refused_address"]);
    app.stop().await;
    env.cleanup().await;
}

/// A resolver that answers `first` once, then `later`.
fn rebinding(first: IpAddr, later: IpAddr, calls: Arc<AtomicUsize>) -> Lookup {
    Arc::new(move |_host: String| {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move { Ok(vec![if n == 0 { first } else { later }]) })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_rebound_to_a_forbidden_address_is_refused_on_the_next_connect() {
    // The receiver closes each connection, so every request connects (and resolves) anew.
    let receiver = Receiver::scripted(|_, _| Reply {
        headers: vec![("connection", "close".into())],
        ..Reply::status(200)
    })
    .await;
    let port = receiver.url("").rsplit(':').next().unwrap().to_string();
    let settings = DeliverySettings {
        allow_private_networks: false,
        allowed_networks: vec!["127.0.0.1/32".parse().unwrap()],
        ..Default::default()
    };
    let calls = Arc::new(AtomicUsize::new(0));
    let client = WebhookClient::with_lookup(
        &settings,
        rebinding(
            "127.0.0.1".parse().unwrap(),
            "127.0.0.2".parse().unwrap(),
            calls.clone(),
        ),
    )
    .unwrap();
    let url = format!("http://rebind.example:{port}/r").parse().unwrap();

    let first = client
        .post(&url, HeaderMap::new(), bytes::Bytes::from_static(b"{}"))
        .await;
    assert!(
        matches!(first.response, Response::Answered { status: 200, .. }),
        "{:?}",
        first.response
    );
    let second = client
        .post(&url, HeaderMap::new(), bytes::Bytes::from_static(b"{}"))
        .await;
    match &second.response {
        Response::Failed { class, message } => {
            assert_eq!(*class, FailureClass::RefusedAddress, "{message}");
            assert!(message.contains("127.0.0.2"), "{message}");
        }
        other => panic!("the rebound name was reached: {other:?}"),
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2, "resolved once per connect");
    assert_eq!(receiver.count(), 1, "only the first request arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_destination_is_refused_when_the_endpoint_is_created_or_changed() {
    use crate::tenants::{Api, ADMIN};
    use reqwest::Method;
    use serde_json::json;

    let env = TestEnv::with(|s| {
        s.delivery.allow_private_networks = false;
        // Creating an endpoint resolves and checks, it does not connect: any address will do.
        s.delivery.allowed_networks = vec!["127.0.0.3/32".parse().unwrap()];
    })
    .await;
    let app = env.start_ready().await;
    let api = Api::new(&app);
    for url in [
        "http://127.0.0.2:9/literal",
        "http://localhost:9/by-name-to-loopback",
        "http://[::1]:9/v6-loopback",
        "http://10.1.2.3/private",
        "http://169.254.169.254/latest/meta-data",
        "http://[64:ff9b::a9fe:a9fe]/nat64-of-metadata",
    ] {
        let (status, problem) = api
            .call(
                Method::POST,
                "/endpoints",
                Some(ADMIN),
                Some(json!({"url": url, "event_types": ["#"]})),
            )
            .await;
        assert_eq!(status, 422, "{url}: {problem}");
        assert_eq!(problem["errors"][0]["field"], "url", "{url}: {problem}");
        let detail = problem["errors"][0]["detail"]
            .as_str()
            .or(problem["errors"][0]["message"].as_str())
            .unwrap_or_default()
            .to_string();
        assert!(detail.contains("private"), "{url}: {problem}");
    }
    assert_eq!(env.count("SELECT count(*) FROM herald.endpoints").await, 0);
    // The allowed network is accepted; changing its URL to a forbidden one is refused.
    let created = api
        .ok(
            Method::POST,
            "/endpoints",
            ADMIN,
            Some(json!({"url": "http://127.0.0.3:9/allowed", "event_types": ["#"]})),
        )
        .await;
    let path = format!("/endpoints/{}", created["id"].as_str().unwrap());
    let (status, problem) = api
        .call(
            Method::PATCH,
            &path,
            Some(ADMIN),
            Some(json!({"url": "http://192.168.0.10/moved"})),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    let shown = api.ok(Method::GET, &path, ADMIN, None).await;
    assert_eq!(shown["url"], "http://127.0.0.3:9/allowed");
    app.stop().await;
    env.cleanup().await;
}
