//! What receivers need (issue 16): the old service's signatures for receivers that
//! move over unchanged, both schemes for the migration window — each checked by a
//! receiver verifying as its real counterpart does.

use std::time::Duration;

use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::common::receiver::{Received, Receiver};
use crate::common::{eventually, TestEnv};
use crate::tenants::{self, ADMIN};

/// The admin API of one running app, always as the admin (`crate::tenants::Api`).
pub struct Api(tenants::Api);

impl Api {
    pub fn new(app: &herald::App) -> Self {
        Self(tenants::Api::new(app))
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.0.call(method, path, Some(ADMIN), body).await
    }

    pub async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        self.0.ok(method, path, ADMIN, body).await
    }

    /// A request the API must refuse as invalid, naming `field`; the field's message.
    pub async fn refused(&self, method: Method, path: &str, body: Value, field: &str) -> String {
        let (status, problem) = self.call(method, path, Some(body.clone())).await;
        assert_eq!(status, 422, "{body} is refused: {problem}");
        assert_eq!(
            problem["type"], "urn:herald:problem:validation",
            "{problem}"
        );
        problem["errors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["field"] == field)
            .unwrap_or_else(|| panic!("{body}: no error on `{field}`: {problem}"))["message"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

/// As the old service's receivers verify: HMAC-SHA256 of the raw body keyed by the
/// shared secret, compared in constant time with the hex of `X-Signature: sha256=…`.
pub fn old_receiver_accepts(secret: &str, request: &Received) -> bool {
    let Some(hex) = request
        .header("x-signature")
        .strip_prefix("sha256=")
        .map(String::from)
    else {
        return false;
    };
    let Some(given) = decode_hex(&hex) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(&request.body);
    let expected = mac.finalize().into_bytes();
    given.len() == expected.len() && bool::from(given.ct_eq(&expected[..]))
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.len() % 2 != 0 || hex.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect()
}

fn reference_accepts(secret: &str, request: &Received) -> bool {
    standardwebhooks::Webhook::new(secret)
        .unwrap()
        .verify(&request.body, &request.headers)
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_and_both_endpoints_verify_as_the_old_receivers_and_the_reference_library_do() {
    let env = TestEnv::new().await;
    let receiver = Receiver::start().await;
    let app = env.start_ready().await;
    let api = Api::new(&app);
    let old_secret = "old service's secret, kept as is: ~#1";

    let legacy = api
        .ok(
            Method::POST,
            "/endpoints",
            Some(
                json!({"url": receiver.url("/legacy"), "event_types": ["sales.#"],
                        "signature": "legacy", "secret": old_secret}),
            ),
        )
        .await;
    assert_eq!(legacy["signature"], "legacy");
    assert_eq!(
        legacy["secret"], old_secret,
        "the old receiver's secret is kept"
    );
    let both = api
        .ok(
            Method::POST,
            "/endpoints",
            Some(
                json!({"url": receiver.url("/both"), "event_types": ["sales.#"],
                        "signature": "both"}),
            ),
        )
        .await;
    let both_secret = both["secret"].as_str().unwrap().to_string();
    assert!(both_secret.starts_with("whsec_"));
    let standard = api
        .ok(
            Method::POST,
            "/endpoints",
            Some(json!({"url": receiver.url("/standard"), "event_types": ["sales.#"]})),
        )
        .await;
    assert_eq!(standard["signature"], "standard", "the default scheme");
    let standard_secret = standard["secret"].as_str().unwrap().to_string();

    // Secrets that do not suit their scheme, and schemes that do not exist.
    for (body, field, says) in [
        (
            json!({"url": receiver.url("/x"), "event_types": ["a"], "signature": "legacy", "secret": "short"}),
            "secret",
            "8 to 256 printable ASCII",
        ),
        (
            json!({"url": receiver.url("/x"), "event_types": ["a"], "signature": "legacy", "secret": "tab\there!"}),
            "secret",
            "printable ASCII",
        ),
        (
            json!({"url": receiver.url("/x"), "event_types": ["a"], "secret": old_secret}),
            "secret",
            "legacy",
        ),
        (
            json!({"url": receiver.url("/x"), "event_types": ["a"], "signature": "both", "secret": old_secret}),
            "secret",
            "whsec_",
        ),
        (
            json!({"url": receiver.url("/x"), "event_types": ["a"], "signature": "v1a"}),
            "signature",
            "standard",
        ),
    ] {
        let message = api.refused(Method::POST, "/endpoints", body, field).await;
        assert!(message.contains(says), "{message}");
    }

    eventually(
        "three endpoints cached",
        Duration::from_secs(10),
        || async { app.subscriptions().snapshot().len() == 3 },
    )
    .await;
    env.publish(
        "sales.order.created",
        Some("evt-legacy-1"),
        None,
        r#"{"order":42,"note":"\"quoted\" ü"}"#.as_bytes(),
    )
    .await;
    eventually("three deliveries", Duration::from_secs(15), || async {
        receiver.count() == 3
    })
    .await;

    let request = &receiver.received_at("/legacy")[0];
    assert!(
        old_receiver_accepts(old_secret, request),
        "{:?}",
        request.headers
    );
    assert_eq!(request.header("x-event"), "sales.order.created");
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        assert!(
            !request.headers.contains_key(name),
            "legacy sends no {name}"
        );
    }
    assert!(!old_receiver_accepts("another secret entirely", request));
    let mut tampered = request.clone();
    tampered.body = bytes::Bytes::from(request.body.to_vec().repeat(2));
    assert!(
        !old_receiver_accepts(old_secret, &tampered),
        "the body is signed"
    );

    let request = &receiver.received_at("/both")[0];
    assert!(reference_accepts(&both_secret, request));
    assert!(
        old_receiver_accepts(&both_secret, request),
        "under `both` the legacy HMAC is keyed by the full whsec_ text"
    );
    assert_eq!(request.header("x-event"), "sales.order.created");

    let request = &receiver.received_at("/standard")[0];
    assert!(reference_accepts(&standard_secret, request));
    assert!(!request.headers.contains_key("x-signature"));
    assert!(!request.headers.contains_key("x-event"));

    // The migration path (docs/receivers.md): a legacy secret cannot sign standard
    // signatures, so `both` waits for a whsec_ secret from rotate-secret.
    let id = legacy["id"].as_str().unwrap();
    let message = api
        .refused(
            Method::PATCH,
            &format!("/endpoints/{id}"),
            json!({"signature": "both"}),
            "signature",
        )
        .await;
    assert!(message.contains("rotate"), "{message}");
    let rotated = api
        .ok(
            Method::POST,
            &format!("/endpoints/{id}/rotate-secret"),
            Some(json!({"grace_hours": 0})),
        )
        .await;
    let new_secret = rotated["secret"].as_str().unwrap().to_string();
    let patched = api
        .ok(
            Method::PATCH,
            &format!("/endpoints/{id}"),
            Some(json!({"signature": "both"})),
        )
        .await;
    assert_eq!(patched["signature"], "both");
    let shown = api.ok(Method::GET, &format!("/endpoints/{id}"), None).await;
    assert_eq!(shown["signature"], "both");
    eventually(
        "the change reaches the cache",
        Duration::from_secs(10),
        || async {
            app.subscriptions()
                .snapshot()
                .get(&id.parse().unwrap())
                .is_some_and(|e| e.signing.scheme() == herald::domain::SignatureScheme::Both)
        },
    )
    .await;
    env.publish("sales.order.created", Some("evt-legacy-2"), None, b"{}")
        .await;
    eventually("the second delivery", Duration::from_secs(15), || async {
        receiver.received_at("/legacy").len() == 2
    })
    .await;
    let request = &receiver.received_at("/legacy")[1];
    assert!(reference_accepts(&new_secret, request));
    assert!(old_receiver_accepts(&new_secret, request));
    assert!(!old_receiver_accepts(old_secret, request));

    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_adds_a_legacy_endpoint_with_the_old_secret() {
    let env = TestEnv::new().await;
    let (ok, added, err) = crate::admin_api::herald(
        &env,
        &[
            "endpoint",
            "add",
            "--url",
            "http://127.0.0.1:9/old",
            "--event-type",
            "sales.#",
            "--signature",
            "legacy",
            "--secret",
            "the old one, 8+ chars",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(added["signature"], "legacy");
    assert_eq!(added["secret"], "the old one, 8+ chars");
    let (ok, _, err) = crate::admin_api::herald(
        &env,
        &[
            "endpoint",
            "add",
            "--url",
            "http://127.0.0.1:9/old",
            "--event-type",
            "sales.#",
            "--secret",
            "the old one, 8+ chars",
        ],
    );
    assert!(
        !ok && err.contains("secret") && err.contains("legacy"),
        "{err}"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_headers_are_sent_with_every_request_and_never_shown_again() {
    let env = TestEnv::new().await;
    let receiver = Receiver::start().await;
    let app = env.start_ready().await;
    let api = Api::new(&app);

    let created = api
        .ok(
            Method::POST,
            "/endpoints",
            Some(
                json!({"url": receiver.url("/keyed"), "event_types": ["sales.#"],
                        "headers": {"X-Api-Key": "k3y-one-two", "Authorization": "Bearer t0ken"}}),
            ),
        )
        .await;
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(
        created["header_names"],
        json!(["authorization", "x-api-key"])
    );
    let shown = [
        created.to_string(),
        api.ok(Method::GET, &format!("/endpoints/{id}"), None)
            .await
            .to_string(),
        api.ok(Method::GET, "/endpoints", None).await.to_string(),
    ];
    for text in &shown {
        assert!(
            !text.contains("k3y-one-two") && !text.contains("t0ken"),
            "values are write-only: {text}"
        );
    }

    let many: serde_json::Map<String, Value> =
        (0..21).map(|n| (format!("x-h{n}"), json!("v"))).collect();
    for (headers, field, says) in [
        (
            json!({"Content-Type": "text/plain"}),
            "headers.Content-Type",
            "reserved",
        ),
        (
            json!({"Webhook-Signature": "v1,forged"}),
            "headers.Webhook-Signature",
            "reserved",
        ),
        (
            json!({"X-Signature": "sha256=00"}),
            "headers.X-Signature",
            "reserved",
        ),
        (
            json!({"X-Herald-Attempt": "1"}),
            "headers.X-Herald-Attempt",
            "reserved",
        ),
        (json!({"Host": "evil.example"}), "headers.Host", "reserved"),
        (json!({"bad name": "v"}), "headers.bad name", "header name"),
        (
            json!({"X-A": "line\r\nX-Injected: 1"}),
            "headers.X-A",
            "printable ASCII",
        ),
        (json!({"X-A": "a", "x-a": "b"}), "headers", "twice"),
        (Value::Object(many), "headers", "at most 20"),
    ] {
        let body = json!({"url": receiver.url("/x"), "event_types": ["a"], "headers": headers});
        let message = api.refused(Method::POST, "/endpoints", body, field).await;
        assert!(message.contains(says), "{field}: {message}");
    }

    eventually("the endpoint cached", Duration::from_secs(10), || async {
        app.subscriptions().snapshot().len() == 1
    })
    .await;
    env.publish("sales.order.created", Some("evt-h-1"), None, b"{}")
        .await;
    eventually("a delivery", Duration::from_secs(15), || async {
        receiver.count() == 1
    })
    .await;
    let request = &receiver.received()[0];
    assert_eq!(request.header("x-api-key"), "k3y-one-two");
    assert_eq!(request.header("authorization"), "Bearer t0ken");
    assert!(request.header("webhook-signature").starts_with("v1,"));

    // A change replaces the whole set.
    let patched = api
        .ok(
            Method::PATCH,
            &format!("/endpoints/{id}"),
            Some(json!({"headers": {"X-Api-Key": "k3y-three"}})),
        )
        .await;
    assert_eq!(patched["header_names"], json!(["x-api-key"]));
    assert!(!patched.to_string().contains("k3y-three"));
    eventually("the change cached", Duration::from_secs(10), || async {
        app.subscriptions()
            .snapshot()
            .get(&id.parse().unwrap())
            .is_some_and(|e| e.headers.len() == 1)
    })
    .await;
    env.publish("sales.order.created", Some("evt-h-2"), None, b"{}")
        .await;
    eventually("a second delivery", Duration::from_secs(15), || async {
        receiver.count() == 2
    })
    .await;
    let request = &receiver.received()[1];
    assert_eq!(request.header("x-api-key"), "k3y-three");
    assert!(!request.headers.contains_key("authorization"));

    app.stop().await;
    env.cleanup().await;
}

/// Every stored row of `herald.endpoints`, as text: what a backup of it holds.
async fn endpoint_rows(env: &TestEnv) -> String {
    let rows: Vec<String> =
        sqlx::query_scalar("SELECT row_to_json(e)::text FROM herald.endpoints e")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    rows.join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_stored_sealed_and_deliveries_still_verify() {
    let env = TestEnv::new().await;
    let receiver = Receiver::start().await;
    let app = env.start_ready().await;
    let api = Api::new(&app);
    let whsec = herald::domain::SigningSecret::generate().expose();
    let old_secret = "the-old-service-secret-42";
    let standard = api
        .ok(
            Method::POST,
            "/endpoints",
            Some(
                json!({"url": receiver.url("/standard"), "event_types": ["sales.#"],
                        "secret": whsec, "headers": {"X-Api-Key": "k3y-at-rest"}}),
            ),
        )
        .await;
    api.ok(
        Method::POST,
        "/endpoints",
        Some(
            json!({"url": receiver.url("/legacy"), "event_types": ["sales.#"],
                    "signature": "legacy", "secret": old_secret}),
        ),
    )
    .await;
    let rotated = api
        .ok(
            Method::POST,
            &format!(
                "/endpoints/{}/rotate-secret",
                standard["id"].as_str().unwrap()
            ),
            None,
        )
        .await;
    let new_secret = rotated["secret"].as_str().unwrap().to_string();

    let rows = endpoint_rows(&env).await;
    for secret in [
        &whsec["whsec_".len()..],
        &new_secret["whsec_".len()..],
        old_secret,
        "k3y-at-rest",
    ] {
        assert!(
            !rows.contains(secret),
            "a secret in clear in the database: {rows}"
        );
    }
    let sealed: Vec<(String, Option<String>, Value)> =
        sqlx::query_as("SELECT secret, previous_secret, headers FROM herald.endpoints")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    for (secret, previous, headers) in &sealed {
        assert!(secret.starts_with("enc:v1:test-1:"), "{secret}");
        assert!(previous
            .as_deref()
            .is_none_or(|p| p.starts_with("enc:v1:test-1:")));
        for value in headers.as_object().unwrap().values() {
            assert!(
                value.as_str().unwrap().starts_with("enc:v1:test-1:"),
                "{value}"
            );
        }
    }
    assert!(
        sealed
            .iter()
            .any(|(_, p, h)| p.is_some() && !h.as_object().unwrap().is_empty()),
        "the rotated endpoint keeps a sealed previous secret and header"
    );

    eventually("both cached", Duration::from_secs(10), || async {
        app.subscriptions().snapshot().len() == 2
    })
    .await;
    env.publish("sales.order.created", Some("evt-sealed"), None, b"{}")
        .await;
    eventually("two deliveries", Duration::from_secs(15), || async {
        receiver.count() == 2
    })
    .await;
    let request = &receiver.received_at("/standard")[0];
    assert!(reference_accepts(&new_secret, request));
    assert!(
        reference_accepts(&whsec, request),
        "the previous secret signs alongside"
    );
    assert_eq!(request.header("x-api-key"), "k3y-at-rest");
    assert!(old_receiver_accepts(
        old_secret,
        &receiver.received_at("/legacy")[0]
    ));

    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotation_reencrypts_every_secret_and_a_wrong_or_missing_key_refuses_to_start() {
    use base64::Engine;
    let b64 = |bytes: [u8; 32]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let env = TestEnv::new().await;
    let receiver = Receiver::start().await;

    // A row from before encryption, in plain text, and one sealed under test-1.
    let plain_secret = herald::domain::SigningSecret::generate().expose();
    sqlx::query(
        "INSERT INTO herald.endpoints (id, url, event_types, secret, headers)
         VALUES ($1, $2, ARRAY['sales.#'], $3, '{\"x-api-key\": \"plain-value\"}')",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(receiver.url("/plain"))
    .bind(&plain_secret)
    .execute(&env.pool)
    .await
    .unwrap();
    let (ok, added, err) = crate::admin_api::herald(
        &env,
        &[
            "endpoint",
            "add",
            "--url",
            &receiver.url("/sealed"),
            "--event-type",
            "sales.#",
            "--header",
            "X-Api-Key: sealed-value",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(added["header_names"], json!(["x-api-key"]));
    let sealed_secret = added["secret"].as_str().unwrap().to_string();

    // A new first key: reencrypt seals everything under it, once.
    let new_key = format!("test-2:{}", b64([42; 32]));
    let rotation = format!("{new_key},{}", crate::common::TEST_KEYS);
    let reencrypt = |keys: &str| {
        let out = env
            .herald_command()
            .env("HERALD__SECRETS__KEYS", keys)
            .args(["secrets", "reencrypt"])
            .output()
            .unwrap();
        let stdout: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (
            out.status.success(),
            stdout,
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, result, err) = reencrypt(&rotation);
    assert!(ok, "{err}");
    assert_eq!(result, json!({"rewritten": 2}));
    assert!(err.contains("rewritten"), "progress on stderr: {err}");
    let (ok, again, _) = reencrypt(&rotation);
    assert!(ok);
    assert_eq!(
        again,
        json!({"rewritten": 0}),
        "running it again rewrites nothing"
    );
    let rows = endpoint_rows(&env).await;
    for secret in [
        &plain_secret["whsec_".len()..],
        &sealed_secret["whsec_".len()..],
        "plain-value",
        "sealed-value",
    ] {
        assert!(!rows.contains(secret), "{rows}");
    }
    assert_eq!(
        env.count(
            "SELECT count(*) FROM herald.endpoints WHERE secret LIKE 'enc:v1:test-2:%'
               AND headers->>'x-api-key' LIKE 'enc:v1:test-2:%'"
        )
        .await,
        2
    );

    // A wrong key of the same id, a key id the rows are not under, no key at all.
    for (keys, says) in [
        (format!("test-2:{}", b64([7; 32])), "key `test-2`"),
        (crate::common::TEST_KEYS.to_string(), "`test-2`"),
        (String::new(), "not set"),
    ] {
        let mut settings = env.settings.clone();
        settings.secrets.keys = herald::domain::Secret::new(keys.clone());
        let error = match herald::App::build(settings, herald::Role::All).await {
            Ok(app) => {
                app.stop().await;
                panic!("started with secrets.keys = {keys:?}");
            }
            Err(error) => format!("{error:#}"),
        };
        assert!(
            error.contains("secrets.keys") && error.contains(says),
            "{error}"
        );
    }

    // The old key gone, the new one alone: every endpoint still delivers, verified.
    let mut settings = env.settings.clone();
    settings.secrets.keys = herald::domain::Secret::new(new_key);
    let app = herald::App::build(settings, herald::Role::All)
        .await
        .unwrap();
    crate::common::wait_ready(&app).await;
    eventually("both cached", Duration::from_secs(10), || async {
        app.subscriptions().snapshot().len() == 2
    })
    .await;
    env.publish("sales.order.created", Some("evt-rotated"), None, b"{}")
        .await;
    eventually("two deliveries", Duration::from_secs(15), || async {
        receiver.count() == 2
    })
    .await;
    let plain = &receiver.received_at("/plain")[0];
    assert!(reference_accepts(&plain_secret, plain));
    assert_eq!(plain.header("x-api-key"), "plain-value");
    let sealed = &receiver.received_at("/sealed")[0];
    assert!(reference_accepts(&sealed_secret, sealed));
    assert_eq!(sealed.header("x-api-key"), "sealed-value");

    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_require_https_an_http_url_is_refused_at_creation_and_change() {
    let env = TestEnv::with(|s| s.delivery.require_https = true).await;
    let app = env.start(herald::Role::Api).await;
    crate::common::wait_ready(&app).await;
    let api = Api::new(&app);
    let message = api
        .refused(
            Method::POST,
            "/endpoints",
            json!({"url": "http://erp.example.com/hooks", "event_types": ["a"]}),
            "url",
        )
        .await;
    assert!(
        message.contains("https") && message.contains("delivery.require_https"),
        "{message}"
    );
    let created = api
        .ok(
            Method::POST,
            "/endpoints",
            Some(json!({"url": "https://erp.example.com/hooks", "event_types": ["a"]})),
        )
        .await;
    let id = created["id"].as_str().unwrap();
    api.refused(
        Method::PATCH,
        &format!("/endpoints/{id}"),
        json!({"url": "http://erp.example.com/other"}),
        "url",
    )
    .await;
    let out = env
        .herald_command()
        .env("HERALD__DELIVERY__REQUIRE_HTTPS", "true")
        .args([
            "endpoint",
            "add",
            "--url",
            "http://erp.example.com/cli",
            "--event-type",
            "a",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("url") && err.contains("https"),
        "{err}"
    );
    app.stop().await;
    env.cleanup().await;
}
