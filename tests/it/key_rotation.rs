//! A key rotation with traffic flowing loses nothing: while events are published and
//! delivered, the deployment moves to a new first key (a rolling restart), `herald
//! secrets reencrypt` rewrites every stored secret under it, and the old key is taken
//! away (another restart) — and every event still reaches every endpoint once, signed
//! with the endpoint's secret and carrying its static header.

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use herald::domain::{parse_header, Secret, SignatureScheme, Signing, StaticHeaders};
use herald::store::endpoints::{self, NewEndpoint};
use serde_json::Value;

use crate::common::receiver::{Received, Receiver};
use crate::common::{eventually, wait_ready, TestEnv, TEST_KEYS};
use crate::receivers::old_receiver_accepts;

const ENDPOINTS: usize = 6;
/// Events published in each of the four stages.
const PER_STAGE: usize = 75;

/// What a receiver knows of its endpoint: how it signs, with what, and its header.
struct Expected {
    scheme: SignatureScheme,
    secret: String,
    api_key: String,
}

fn verifies(expected: &Expected, request: &Received) -> bool {
    let signed = match expected.scheme {
        SignatureScheme::Legacy => old_receiver_accepts(&expected.secret, request),
        _ => standardwebhooks::Webhook::new(&expected.secret)
            .unwrap()
            .verify(&request.body, &request.headers)
            .is_ok(),
    };
    signed && request.header("x-api-key") == expected.api_key
}

/// Publishes events `from..from + PER_STAGE`, a few milliseconds apart.
async fn publish_stage(env: &TestEnv, from: usize) {
    for n in from..from + PER_STAGE {
        env.publish(
            "sales.order.created",
            Some(&format!("evt-rot-{n}")),
            None,
            format!("{{\"n\": {n}}}").as_bytes(),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(4)).await;
    }
}

/// A Herald process of this test's world holding `keys`.
async fn start_with(env: &TestEnv, keys: &str) -> herald::App {
    let mut settings = env.settings.clone();
    settings.secrets.keys = Secret::new(keys);
    let app = herald::App::build(settings, herald::Role::All)
        .await
        .expect("starts with these keys");
    wait_ready(&app).await;
    app
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotation_with_traffic_flowing_loses_nothing() {
    let b64 = |bytes: [u8; 32]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let env = TestEnv::new().await; // endpoints sealed under test-1
    let receiver = Receiver::start().await;
    let mut expected: HashMap<String, Expected> = HashMap::new();
    for i in 0..ENDPOINTS {
        let path = format!("/e{i}");
        let (scheme, signing) = if i % 3 == 2 {
            let text = format!("the old service's secret {i}");
            let signing = Signing::new(SignatureScheme::Legacy, &text, None).unwrap();
            (SignatureScheme::Legacy, signing)
        } else {
            let signing = Signing::generate(SignatureScheme::Standard);
            (SignatureScheme::Standard, signing)
        };
        let api_key = format!("api-key-{i}");
        let secret = signing.current_text();
        endpoints::insert(
            &env.pool,
            &env.keys(),
            NewEndpoint {
                url: receiver.url(&path).parse().unwrap(),
                event_types: vec!["sales.#".parse().unwrap()],
                tenant_id: None,
                signing,
                headers: StaticHeaders::new(vec![parse_header("X-Api-Key", &api_key).unwrap()])
                    .unwrap(),
                rate_limit: None,
                filter: None,
                timeout: None,
                retry_schedule: None,
                batch: None,
                ordering: false,
                name: None,
                description: None,
            },
        )
        .await
        .unwrap();
        expected.insert(
            path,
            Expected {
                scheme,
                secret,
                api_key,
            },
        );
    }
    let new_key = format!("test-2:{}", b64([42; 32]));
    let both = format!("{new_key},{TEST_KEYS}");

    // 1. The old key alone, traffic flowing.
    let old = start_with(&env, TEST_KEYS).await;
    publish_stage(&env, 0).await;
    // 2. A rolling restart onto the new first key (the old one still opens).
    let rolled = start_with(&env, &both).await;
    old.stop().await;
    publish_stage(&env, PER_STAGE).await;
    // 3. Every secret sealed again under the new key, while events keep coming.
    let reencrypt = env
        .herald_command()
        .env("HERALD__SECRETS__KEYS", &both)
        .args(["secrets", "reencrypt"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("herald runs");
    publish_stage(&env, 2 * PER_STAGE).await;
    let out = tokio::task::spawn_blocking(move || reencrypt.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let result: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert_eq!(result["rewritten"], ENDPOINTS, "{result} {stderr}");
    assert_eq!(
        env.count("SELECT count(*) FROM herald.endpoints WHERE secret LIKE 'enc:v1:test-2:%'")
            .await,
        ENDPOINTS as i64
    );
    // 4. The old key taken away: another rolling restart.
    let new_only = start_with(&env, &new_key).await;
    rolled.stop().await;
    publish_stage(&env, 3 * PER_STAGE).await;

    let total = 4 * PER_STAGE * ENDPOINTS;
    eventually(
        "every delivery recorded as success",
        Duration::from_secs(60),
        || async { env.delivery_statuses().await == vec![("success".to_string(), total as i64)] },
    )
    .await;
    let received = receiver.received();
    let mut pairs = HashSet::new();
    for request in &received {
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        let pair = (request.path.clone(), body["data"]["n"].as_i64().unwrap());
        assert!(
            verifies(&expected[&request.path], request),
            "{pair:?} does not verify with its endpoint's secret and header"
        );
        pairs.insert(pair);
    }
    assert_eq!(pairs.len(), total, "every event reached every endpoint");
    println!(
        "key rotation under traffic: {} requests for {total} deliveries, all verified",
        received.len()
    );
    new_only.stop().await;
    env.cleanup().await;
}
