//! Sending again on request through the API: the test send, the retry of one delivery,
//! and secret rotation with both signatures verifying meanwhile.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::common::receiver::{Receiver, Reply};
use crate::common::{eventually, TestEnv};
use crate::tenants::{Api, ADMIN};

fn verify(secret: &str, request: &crate::common::receiver::Received) -> bool {
    standardwebhooks::Webhook::new(secret)
        .unwrap()
        .verify(&request.body, &request.headers)
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_send_reaches_the_receiver_signed_and_reports_its_answer() {
    let env = TestEnv::new().await;
    let receiver = Receiver::scripted(|path, _| {
        Reply::with_body(if path == "/ok" { 200 } else { 503 }, b"busy")
    })
    .await;
    let app = env.start_ready().await;
    let api = Api::new(&app);
    let ok = api
        .ok(
            Method::POST,
            "/endpoints",
            ADMIN,
            Some(json!({"url": receiver.url("/ok"), "event_types": ["a.b"]})),
        )
        .await;
    let outcome = api
        .ok(
            Method::POST,
            &format!("/endpoints/{}/test", ok["id"].as_str().unwrap()),
            ADMIN,
            None,
        )
        .await;
    assert_eq!(
        (
            outcome["success"].as_bool(),
            outcome["status_code"].as_u64()
        ),
        (Some(true), Some(200)),
        "{outcome}"
    );
    let got = &receiver.received_at("/ok")[0];
    assert!(
        verify(ok["secret"].as_str().unwrap(), got),
        "signed like every delivery"
    );
    let body: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(body["type"], "herald.test");
    assert_eq!(
        got.header("webhook-id"),
        outcome["event_id"].as_str().unwrap()
    );

    let bad = api
        .ok(
            Method::POST,
            "/endpoints",
            ADMIN,
            Some(json!({"url": receiver.url("/bad"), "event_types": ["a.b"]})),
        )
        .await;
    let outcome = api
        .ok(
            Method::POST,
            &format!("/endpoints/{}/test", bad["id"].as_str().unwrap()),
            ADMIN,
            None,
        )
        .await;
    assert_eq!(outcome["success"], false);
    assert_eq!(outcome["status_code"], 503);
    assert_eq!(outcome["response_body"], "busy");
    assert_eq!(
        env.count("SELECT count(*) FROM herald.deliveries").await,
        0,
        "a test send is not a delivery"
    );
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_delivery_gets_its_next_attempt_with_the_same_webhook_id() {
    let env = TestEnv::with(|s| s.delivery.retry_schedule = vec![]).await;
    let receiver = Receiver::scripted(|_, n| Reply::status(if n == 1 { 500 } else { 200 })).await;
    let app = env.start_ready().await;
    let api = Api::new(&app);
    api.ok(
        Method::POST,
        "/endpoints",
        ADMIN,
        Some(json!({"url": receiver.url("/r"), "event_types": ["a.b"]})),
    )
    .await;
    eventually("cached", Duration::from_secs(10), || async {
        app.subscriptions().snapshot().len() == 1
    })
    .await;
    env.publish("a.b", Some("evt-retry"), None, b"{\"n\":1}")
        .await;
    eventually("failed once", Duration::from_secs(15), || async {
        env.delivery_statuses().await == vec![("failed".to_string(), 1)]
    })
    .await;
    let list = api.ok(Method::GET, "/deliveries", ADMIN, None).await;
    let id = list["data"][0]["id"].as_str().unwrap().to_string();
    let (status, retried) = api
        .call(
            Method::POST,
            &format!("/deliveries/{id}/retry"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(status, 202, "{retried}");
    assert_eq!(retried["attempt"], 2);
    eventually(
        "delivered by the retry",
        Duration::from_secs(15),
        || async { env.delivery_statuses().await == vec![("success".to_string(), 1)] },
    )
    .await;
    let got = receiver.received();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].header("webhook-id"), got[1].header("webhook-id"));
    assert_eq!(got[1].header("x-herald-attempt"), "2");
    assert_eq!(got[0].body, got[1].body, "the same webhook body");
    let detail = api
        .ok(Method::GET, &format!("/deliveries/{id}"), ADMIN, None)
        .await;
    let attempts: Vec<_> = detail["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status_code"].clone())
        .collect();
    assert_eq!(attempts, vec![json!(500), json!(200)]);

    // A delivery still queued is not queued twice.
    receiver.set_script(|_, _| Reply::ok_after(Duration::from_secs(3)));
    let (status, _) = api
        .call(
            Method::POST,
            &format!("/deliveries/{id}/retry"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(status, 202);
    let (status, conflict) = api
        .call(
            Method::POST,
            &format!("/deliveries/{id}/retry"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(status, 409, "{conflict}");
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_a_rotation_both_secrets_verify_and_after_it_only_the_new_one() {
    let env = TestEnv::new().await;
    let receiver = Receiver::start().await;
    let app = env.start_ready().await;
    let api = Api::new(&app);
    let created = api
        .ok(
            Method::POST,
            "/endpoints",
            ADMIN,
            Some(json!({"url": receiver.url("/rot"), "event_types": ["a.b"]})),
        )
        .await;
    let id = created["id"].as_str().unwrap();
    let old = created["secret"].as_str().unwrap().to_string();
    let rotated = api
        .ok(
            Method::POST,
            &format!("/endpoints/{id}/rotate-secret"),
            ADMIN,
            None,
        )
        .await;
    let new = rotated["secret"].as_str().unwrap().to_string();
    assert_ne!(old, new);
    assert_eq!(rotated["previous_valid_hours"], 24);
    eventually(
        "the rotation in the cache",
        Duration::from_secs(10),
        || async {
            app.subscriptions()
                .snapshot()
                .get(&id.parse().unwrap())
                .is_some_and(
                    |e| matches!(&e.signing, herald::domain::Signing::Standard(s) if s.len() == 2),
                )
        },
    )
    .await;
    env.publish("a.b", Some("during"), None, b"{}").await;
    eventually("delivered", Duration::from_secs(15), || async {
        receiver.count() == 1
    })
    .await;
    let during = &receiver.received()[0];
    assert_eq!(during.header("webhook-signature").split(' ').count(), 2);
    assert!(
        verify(&old, during) && verify(&new, during),
        "both verify with the reference library"
    );

    // Without a grace period the old secret stops at once.
    api.ok(
        Method::POST,
        &format!("/endpoints/{id}/rotate-secret"),
        ADMIN,
        Some(json!({"grace_hours": 0})),
    )
    .await;
    eventually(
        "the second rotation in the cache",
        Duration::from_secs(10),
        || async {
            app.subscriptions()
                .snapshot()
                .get(&id.parse().unwrap())
                .is_some_and(|e| matches!(&e.signing, herald::domain::Signing::Standard(s) if s.len() == 1 && s[0].expose() != new))
        },
    )
    .await;
    env.publish("a.b", Some("after"), None, b"{}").await;
    eventually("delivered", Duration::from_secs(15), || async {
        receiver.count() == 2
    })
    .await;
    let after = &receiver.received()[1];
    assert!(!verify(&new, after) && !verify(&old, after));
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_sends_stored_events_to_an_endpoint_created_after_them() {
    let env = TestEnv::new().await;
    let receiver = Receiver::start().await;
    let app = env.start_ready().await;
    let api = Api::new(&app);
    for n in 0..3 {
        env.publish(
            "sales.order.created",
            Some(&format!("old-{n}")),
            None,
            format!("{{\"n\":{n}}}").as_bytes(),
        )
        .await;
    }
    env.publish("crm.lead.created", Some("other-type"), None, b"{}")
        .await;
    eventually("stored", Duration::from_secs(10), || async {
        env.count("SELECT count(*) FROM herald.events").await == 4
    })
    .await;
    let created = api
        .ok(
            Method::POST,
            "/endpoints",
            ADMIN,
            Some(json!({"url": receiver.url("/late"), "event_types": ["sales.#"]})),
        )
        .await;
    let id = created["id"].as_str().unwrap();
    let since = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let (status, started) = api
        .call(
            Method::POST,
            &format!("/endpoints/{id}/replay"),
            Some(ADMIN),
            Some(json!({"since": since})),
        )
        .await;
    assert_eq!(status, 202, "{started}");
    assert_eq!(
        started["queued"], 3,
        "the three sales events, not the CRM one"
    );
    let job = started["id"].as_str().unwrap().to_string();
    eventually(
        "replayed and delivered",
        Duration::from_secs(45),
        || async { receiver.count() == 3 },
    )
    .await;
    let mut ids: Vec<String> = receiver
        .received()
        .iter()
        .map(|r| r.header("webhook-id"))
        .collect();
    ids.sort();
    assert_eq!(ids, ["old-0", "old-1", "old-2"]);
    assert!(verify(
        created["secret"].as_str().unwrap(),
        &receiver.received()[0]
    ));
    eventually("the job done", Duration::from_secs(10), || async {
        api.ok(Method::GET, &format!("/replays/{job}"), ADMIN, None)
            .await["state"]
            == "done"
    })
    .await;
    let done = api
        .ok(Method::GET, &format!("/replays/{job}"), ADMIN, None)
        .await;
    assert_eq!(
        (done["sent"].as_i64(), done["skipped"].as_i64()),
        (Some(3), Some(0))
    );

    eventually("recorded", Duration::from_secs(10), || async {
        env.delivery_statuses().await == vec![("success".to_string(), 3)]
    })
    .await;
    // Nothing failed: an only-failed replay has nothing to send. The CLI runs one in
    // the foreground and prints the job.
    let (ok, out, err) = crate::admin_api::herald(
        &env,
        &[
            "replay",
            "--endpoint",
            id,
            "--since",
            &since,
            "--only-failed",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(
        (out["queued"].as_i64(), out["state"].as_str()),
        (Some(0), Some("done"))
    );
    // A full replay again sends each once more, as the next attempt of its delivery.
    let (ok, out, err) =
        crate::admin_api::herald(&env, &["replay", "--endpoint", id, "--since", &since]);
    assert!(ok, "{err}");
    assert_eq!(out["sent"], 3);
    assert!(err.contains("3 sent"), "progress on stderr: {err}");
    // Generous: under a loaded CI machine the second round once took longer than 15 s.
    eventually("delivered again", Duration::from_secs(45), || async {
        receiver.count() == 6
    })
    .await;
    assert_eq!(
        env.count("SELECT count(*) FROM herald.deliveries").await,
        3,
        "no second delivery row"
    );
    assert_eq!(receiver.received()[5].header("x-herald-attempt"), "2");
    app.stop().await;
    env.cleanup().await;
}
