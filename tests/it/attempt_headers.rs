//! The request headers of every attempt (issue 14): recorded as Herald sent them, with
//! static header values and signatures redacted, and shown with the delivery and in a
//! test send's answer.

use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use crate::common::receiver::Receiver;
use crate::common::{eventually, TestEnv};
use crate::receivers::Api;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_shows_the_headers_sent_with_static_values_and_signatures_redacted() {
    let env = TestEnv::new().await;
    let receiver = Receiver::start().await;
    let app = env.start_ready().await;
    let api = Api::new(&app);
    let created = api
        .ok(
            Method::POST,
            "/endpoints",
            Some(
                serde_json::json!({"url": receiver.url("/keyed"), "event_types": ["sales.#"],
                    "signature": "both", "headers": {"X-Api-Key": "s3cret"}}),
            ),
        )
        .await;
    let endpoint_id = created["id"].as_str().unwrap().to_string();
    let whsec = created["secret"].as_str().unwrap().to_string();
    assert!(whsec.starts_with("whsec_"), "{created}");
    eventually("the endpoint cached", Duration::from_secs(10), || async {
        app.subscriptions().snapshot().len() == 1
    })
    .await;

    env.publish("sales.order.created", Some("evt-hdrs-1"), None, b"{}")
        .await;
    eventually("delivered", Duration::from_secs(15), || async {
        receiver.count() == 1
    })
    .await;
    eventually("recorded", Duration::from_secs(10), || async {
        env.delivery_statuses().await == vec![("success".to_string(), 1)]
    })
    .await;
    let sent = &receiver.received()[0];
    assert_eq!(sent.header("x-api-key"), "s3cret");

    let listed = api
        .ok(Method::GET, "/deliveries?event_id=evt-hdrs-1", None)
        .await;
    let delivery_id = listed["data"][0]["id"].as_str().unwrap().to_string();
    let detail = api
        .ok(Method::GET, &format!("/deliveries/{delivery_id}"), None)
        .await;
    let headers = &detail["attempts"][0]["request_headers"];
    assert!(headers.is_object(), "{detail}");
    let shown = |name: &str| headers[name].as_str().unwrap_or_default().to_string();

    assert_eq!(shown("webhook-id"), "evt-hdrs-1", "{headers}");
    assert_eq!(shown("webhook-id"), sent.header("webhook-id"));
    assert_eq!(shown("webhook-timestamp"), sent.header("webhook-timestamp"));
    assert_eq!(shown("x-herald-attempt"), "1");
    assert_eq!(shown("x-event"), "sales.order.created");
    assert_eq!(shown("traceparent"), sent.header("traceparent"));
    assert_eq!(shown("content-type"), sent.header("content-type"));
    assert_eq!(shown("user-agent"), sent.header("user-agent"));
    assert_eq!(shown("x-api-key"), "[redacted]");
    assert_eq!(shown("webhook-signature"), "v1,[redacted]");
    assert_eq!(shown("x-signature"), "sha256=[redacted]");

    // No secret, and no signature that went out, anywhere in the answer.
    let real_signature = sent.header("webhook-signature");
    let real_legacy = sent.header("x-signature");
    assert!(real_signature.starts_with("v1,") && real_legacy.starts_with("sha256="));
    let text = detail.to_string();
    for secret in [
        "s3cret",
        whsec.as_str(),
        &whsec["whsec_".len()..],
        &real_signature["v1,".len()..],
        &real_legacy["sha256=".len()..],
    ] {
        assert!(!text.contains(secret), "`{secret}` shown: {text}");
    }

    // The test send answers with the headers it sent, redacted alike.
    let outcome = api
        .ok(
            Method::POST,
            &format!("/endpoints/{endpoint_id}/test"),
            None,
        )
        .await;
    assert_eq!(outcome["success"], true, "{outcome}");
    let tested = &outcome["request_headers"];
    assert_eq!(tested["webhook-id"], outcome["event_id"]);
    assert_eq!(tested["x-api-key"], "[redacted]");
    assert_eq!(tested["webhook-signature"], "v1,[redacted]");
    assert_eq!(tested["x-signature"], "sha256=[redacted]");
    let text = outcome.to_string();
    assert!(!text.contains("s3cret") && !text.contains(&whsec["whsec_".len()..]));

    // An attempt recorded before Herald kept its headers shows `null`.
    sqlx::query("UPDATE herald.delivery_attempts SET request_headers = NULL")
        .execute(&env.pool)
        .await
        .unwrap();
    let detail = api
        .ok(Method::GET, &format!("/deliveries/{delivery_id}"), None)
        .await;
    assert_eq!(detail["attempts"][0]["request_headers"], Value::Null);
    assert_eq!(detail["attempts"][0]["status_code"], 200);
    env.cleanup().await;
}
