//! The admin API as the ERP's admin panel and each tenant's integration page use it:
//! tenant tokens, isolation on every route of the router's own table, problem+json
//! errors for careless input, keyset pagination under inserts, and the CLI's tokens.

use std::time::Duration;

use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

use crate::admin_api::herald;
use crate::common::receiver::Receiver;
use crate::common::{eventually, TestEnv};

pub const ADMIN: &str = "test-admin-token";

pub struct Api {
    pub base: String,
    http: Client,
}

impl Api {
    pub fn new(app: &herald::App) -> Self {
        Self {
            base: format!("http://{}/api/v1", app.address()),
            http: Client::new(),
        }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("the API answers");
        let status = response.status();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn ok(&self, method: Method, path: &str, token: &str, body: Option<Value>) -> Value {
        let (status, value) = self.call(method.clone(), path, Some(token), body).await;
        assert!(status.is_success(), "{method} {path}: {status} {value}");
        value
    }

    async fn token(&self, tenant: &str) -> (String, String) {
        let created = self
            .ok(
                Method::POST,
                "/tokens",
                ADMIN,
                Some(json!({"tenant_id": tenant, "name": "page"})),
            )
            .await;
        (
            created["id"].as_str().unwrap().to_string(),
            created["token"].as_str().unwrap().to_string(),
        )
    }
}

fn ids(list: &Value) -> Vec<String> {
    list["data"]
        .as_array()
        .unwrap_or_else(|| panic!("a list: {list}"))
        .iter()
        .map(|item| item["id"].as_str().unwrap().to_string())
        .collect()
}

/// A resource of tenant B that tenant A must never see or change.
struct Theirs {
    token_id: String,
    replay_id: String,
    dlq_job_id: String,
    /// The admin's: a parking-queue job is no tenant's.
    invalid_job_id: String,
    endpoint_id: String,
    event_id: String,
    delivery_id: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_token_reaches_only_its_own_tenant_on_every_route() {
    let env = TestEnv::new().await;
    let receiver = Receiver::start().await;
    let app = env.start_ready().await;
    let api = Api::new(&app);
    let (_, token_a) = api.token("tenant-a").await;
    let (token_b_id, token_b) = api.token("tenant-b").await;

    // Each tenant subscribes through its own token, and gets one delivery.
    let mut endpoint_of = std::collections::HashMap::new();
    for (tenant, token) in [("tenant-a", &token_a), ("tenant-b", &token_b)] {
        let created = api
            .ok(
                Method::POST,
                "/endpoints",
                token,
                Some(
                    json!({"url": receiver.url(&format!("/{tenant}")), "event_types": ["sales.#"]}),
                ),
            )
            .await;
        assert_eq!(
            created["tenant_id"], tenant,
            "what a tenant creates is its own"
        );
        endpoint_of.insert(tenant, created["id"].as_str().unwrap().to_string());
    }
    eventually("both endpoints cached", Duration::from_secs(10), || async {
        app.subscriptions().snapshot().len() == 2
    })
    .await;
    for tenant in ["tenant-a", "tenant-b"] {
        env.publish("sales.order.created", Some("order-1"), Some(tenant), b"{}")
            .await;
    }
    env.publish(
        "sales.order.created",
        Some("b-only"),
        Some("tenant-b"),
        b"{}",
    )
    .await;
    eventually("all delivered", Duration::from_secs(15), || async {
        env.delivery_statuses().await == vec![("success".to_string(), 3)]
    })
    .await;
    let b_deliveries = api.ok(Method::GET, "/deliveries", &token_b, None).await;
    let replay = api
        .ok(
            Method::POST,
            &format!("/endpoints/{}/replay", endpoint_of["tenant-b"]),
            &token_b,
            Some(json!({"since": chrono::Utc::now() - chrono::Duration::days(1), "only_failed": true})),
        )
        .await;
    let dlq_job = api
        .ok(
            Method::POST,
            "/dlq/redrive",
            &token_b,
            Some(json!({"all": true})),
        )
        .await;
    let invalid_job = api
        .ok(
            Method::POST,
            "/invalid/purge",
            ADMIN,
            Some(json!({"ids": [uuid::Uuid::now_v7()], "confirm": true})),
        )
        .await;
    let theirs = Theirs {
        replay_id: replay["id"].as_str().unwrap().to_string(),
        dlq_job_id: dlq_job["id"].as_str().unwrap().to_string(),
        invalid_job_id: invalid_job["id"].as_str().unwrap().to_string(),
        token_id: token_b_id,
        endpoint_id: endpoint_of["tenant-b"].clone(),
        event_id: "b-only".into(),
        delivery_id: ids(&b_deliveries)[0].clone(),
    };
    let b_endpoint_before = api
        .ok(
            Method::GET,
            &format!("/endpoints/{}", theirs.endpoint_id),
            ADMIN,
            None,
        )
        .await;

    let routes = herald::api::routes();
    assert!(
        routes.len() >= 15,
        "the table holds every route: {routes:?}"
    );
    for route in &routes {
        let path = route
            .path
            .replace(
                "/endpoints/{id}",
                &format!("/endpoints/{}", theirs.endpoint_id),
            )
            .replace("/events/{id}", &format!("/events/{}", theirs.event_id))
            .replace(
                "/deliveries/{id}",
                &format!("/deliveries/{}", theirs.delivery_id),
            )
            .replace("/tokens/{id}", &format!("/tokens/{}", theirs.token_id))
            .replace("/replays/{id}", &format!("/replays/{}", theirs.replay_id))
            .replace(
                "/dlq/jobs/{id}",
                &format!("/dlq/jobs/{}", theirs.dlq_job_id),
            )
            .replace(
                "/invalid/jobs/{id}",
                &format!("/invalid/jobs/{}", theirs.invalid_job_id),
            );
        assert!(
            !path.contains('{'),
            "no isolation case substitutes {}",
            route.path
        );
        let method = Method::from_bytes(route.method.as_str().as_bytes()).unwrap();
        let body = match (route.method.as_str(), route.path) {
            ("POST", "/endpoints") => Some(
                json!({"url": receiver.url("/x"), "event_types": ["a"], "tenant_id": "tenant-b"}),
            ),
            ("PATCH", _) => Some(json!({"enabled": false, "url": receiver.url("/stolen")})),
            ("POST", "/dlq/redrive") => Some(json!({"delivery_ids": [theirs.delivery_id]})),
            ("POST", "/dlq/purge") => {
                Some(json!({"delivery_ids": [theirs.delivery_id], "confirm": true}))
            }
            ("POST", "/tokens") => Some(json!({"tenant_id": "tenant-a"})),
            ("POST", p) if p.ends_with("/replay") => {
                Some(json!({"since": chrono::Utc::now() - chrono::Duration::days(1)}))
            }
            ("POST", _) => Some(json!({})),
            _ => None,
        };

        for token in [
            None,
            Some("wrong"),
            Some("hrld_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        ] {
            let (status, problem) = api.call(method.clone(), &path, token, body.clone()).await;
            assert_eq!(
                status, 401,
                "{} {} with {token:?}: {problem}",
                route.method, route.path
            );
            assert_eq!(problem["type"], "urn:herald:problem:unauthorized");
        }

        let (status, answer) = api
            .call(method.clone(), &path, Some(&token_a), body.clone())
            .await;
        let what = format!(
            "{} {} with tenant A's token: {status} {answer}",
            route.method, route.path
        );
        match (route.method.as_str(), route.path) {
            ("GET", "/endpoints" | "/events" | "/deliveries" | "/dlq") => {
                assert_eq!(status, 200, "{what}");
                let listed = answer.to_string();
                for id in [&theirs.endpoint_id, &theirs.delivery_id] {
                    assert!(!listed.contains(id.as_str()), "{what}");
                }
                // Asking for the other tenant by name shows nothing either.
                let (status, other) = api
                    .call(
                        Method::GET,
                        &format!("{path}?tenant_id=tenant-b"),
                        Some(&token_a),
                        None,
                    )
                    .await;
                assert_eq!(
                    (status, other["data"].as_array().map(Vec::len)),
                    (StatusCode::OK, Some(0)),
                    "{what}"
                );
            }
            ("POST", "/endpoints") => {
                assert_eq!(status, 422, "{what}");
                assert_eq!(answer["errors"][0]["field"], "tenant_id", "{what}");
            }
            ("POST", "/dlq/redrive" | "/dlq/purge") => {
                assert_eq!(status, 202, "{what}");
                assert_eq!(answer["matched"], 0, "{what}");
                assert_eq!(answer["not_found"], json!([theirs.delivery_id]), "{what}");
            }
            ("GET" | "PATCH" | "DELETE" | "POST", p)
                if [
                    "/endpoints/",
                    "/events/",
                    "/deliveries/",
                    "/replays/",
                    "/dlq/jobs/",
                ]
                .iter()
                .any(|prefix| p.starts_with(prefix)) =>
            {
                assert_eq!(status, 404, "{what}");
                assert_eq!(answer["type"], "urn:herald:problem:not-found", "{what}");
            }
            (_, p) if p.starts_with("/tokens") => {
                assert_eq!(status, 403, "tokens are the admin's: {what}");
            }
            (_, p) if p.starts_with("/invalid") => {
                assert_eq!(status, 403, "the parking queue is the admin's: {what}");
                assert_eq!(answer["type"], "urn:herald:problem:forbidden", "{what}");
            }
            _ => panic!(
                "route {} {} has no isolation case: add one",
                route.method, route.path
            ),
        }
    }

    // Nothing of B's changed: its endpoint, its delivery, its token.
    let b_endpoint_after = api
        .ok(
            Method::GET,
            &format!("/endpoints/{}", theirs.endpoint_id),
            ADMIN,
            None,
        )
        .await;
    assert_eq!(b_endpoint_before, b_endpoint_after);
    let delivery = api
        .ok(
            Method::GET,
            &format!("/deliveries/{}", theirs.delivery_id),
            &token_b,
            None,
        )
        .await;
    assert_eq!(delivery["status"], "success");
    let events = api.ok(Method::GET, "/events", &token_b, None).await;
    assert_eq!(events["data"].as_array().unwrap().len(), 2);
    assert!(events["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["tenant_id"] == "tenant-b"));
    // The admin sees both, and may narrow to one tenant.
    let all = api.ok(Method::GET, "/deliveries", ADMIN, None).await;
    assert_eq!(ids(&all).len(), 3);
    let only_b = api
        .ok(Method::GET, "/deliveries?tenant_id=tenant-b", ADMIN, None)
        .await;
    assert_eq!(ids(&only_b), ids(&b_deliveries));
    let event = api
        .ok(
            Method::GET,
            "/events/order-1?tenant_id=tenant-a",
            ADMIN,
            None,
        )
        .await;
    assert_eq!(event["deliveries"].as_array().unwrap().len(), 1);
    let (status, ambiguous) = api
        .call(Method::GET, "/events/order-1", Some(ADMIN), None)
        .await;
    assert_eq!(status, 409, "two tenants used order-1: {ambiguous}");

    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_refused_at_once_and_tokens_are_shown_only_when_created() {
    let env = TestEnv::new().await;
    let app = env.start_ready().await;
    let api = Api::new(&app);
    let (id, token) = api.token("acme").await;
    assert!(token.starts_with("hrld_"));
    api.ok(Method::GET, "/endpoints", &token, None).await;
    let listed = api.ok(Method::GET, "/tokens", ADMIN, None).await;
    assert_eq!(ids(&listed), vec![id.clone()]);
    assert!(
        !listed.to_string().contains(&token[5..]),
        "a list never shows the token"
    );
    let stored: i64 = env
        .count(&format!(
            "SELECT count(*) FROM herald.api_tokens WHERE token_hash::text LIKE '%{}%' OR name = '{token}'",
            &token[5..15]
        ))
        .await;
    assert_eq!(stored, 0, "only a hash is stored");

    let revoked = api
        .ok(Method::DELETE, &format!("/tokens/{id}"), ADMIN, None)
        .await;
    assert!(revoked["revoked_at"].is_string());
    let (status, _) = api
        .call(Method::GET, "/endpoints", Some(&token), None)
        .await;
    assert_eq!(status, 401, "revocation holds at once");

    // An all-digit admin token (configuration takes it verbatim) is compared in full.
    let (status, _) = api
        .call(Method::GET, "/tokens", Some("test-admin-toke"), None)
        .await;
    assert_eq!(status, 401);
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn careless_input_gets_a_problem_never_a_5xx_and_changes_nothing() {
    let env = TestEnv::new().await;
    let app = env.start_ready().await;
    let api = Api::new(&app);
    let http = Client::new();
    let url = |path: &str| format!("{}{path}", api.base);
    let good = json!({"url": "http://127.0.0.1:9/x", "event_types": ["a.b"]});

    let raw = |method: Method, path: &str| http.request(method, url(path)).bearer_auth(ADMIN);
    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str, Option<&str>)> = vec![
        ("not JSON", raw(Method::POST, "/endpoints").header("content-type", "application/json").body("{oops"), 400, "malformed-request", None),
        ("no content type", raw(Method::POST, "/endpoints").body(good.to_string()), 415, "unsupported-media-type", None),
        ("text/plain", raw(Method::POST, "/endpoints").header("content-type", "text/plain").body(good.to_string()), 415, "unsupported-media-type", None),
        ("wrong field type", raw(Method::POST, "/endpoints").json(&json!({"url": "http://127.0.0.1:9/x", "event_types": ["a"], "rate_limit": "fast"})), 422, "validation", Some("rate_limit")),
        ("negative rate limit", raw(Method::POST, "/endpoints").json(&json!({"url": "http://127.0.0.1:9/x", "event_types": ["a"], "rate_limit": -5})), 422, "validation", Some("rate_limit")),
        ("huge rate limit", raw(Method::POST, "/endpoints").json(&json!({"url": "http://127.0.0.1:9/x", "event_types": ["a"], "rate_limit": 1u64 << 40})), 422, "validation", Some("rate_limit")),
        ("missing field", raw(Method::POST, "/endpoints").json(&json!({"event_types": ["a"]})), 422, "validation", Some("url")),
        ("unknown field", raw(Method::POST, "/endpoints").json(&json!({"url": "http://127.0.0.1:9/x", "event_types": ["a"], "colour": "red"})), 422, "validation", Some("colour")),
        ("bad pattern", raw(Method::POST, "/endpoints").json(&json!({"url": "http://127.0.0.1:9/x", "event_types": ["a b"]})), 422, "validation", Some("event_types[0]")),
        ("no patterns", raw(Method::POST, "/endpoints").json(&json!({"url": "http://127.0.0.1:9/x", "event_types": []})), 422, "validation", Some("event_types")),
        ("5 MiB body", raw(Method::POST, "/endpoints").header("content-type", "application/json").body(vec![b' '; 5 << 20]), 413, "payload-too-large", None),
        ("bad uuid in path", raw(Method::GET, "/endpoints/not-a-uuid"), 404, "not-found", None),
        ("no such endpoint", raw(Method::GET, &format!("/endpoints/{}", uuid::Uuid::nil())), 404, "not-found", None),
        ("unknown route", raw(Method::GET, "/nothing/here"), 404, "not-found", None),
        ("wrong method", raw(Method::PUT, "/endpoints"), 405, "method-not-allowed", None),
        ("limit too big", raw(Method::GET, "/deliveries?limit=5000"), 422, "validation", Some("limit")),
        ("limit not a number", raw(Method::GET, "/deliveries?limit=lots"), 422, "validation", Some("limit")),
        ("foreign cursor", raw(Method::GET, "/endpoints?cursor=garbage"), 422, "validation", Some("cursor")),
        ("bad status filter", raw(Method::GET, "/deliveries?status=meh"), 422, "validation", Some("status")),
        ("bad endpoint filter", raw(Method::GET, "/deliveries?endpoint_id=7"), 422, "validation", Some("endpoint_id")),
        ("bad time", raw(Method::GET, "/events?since=yesterday"), 422, "validation", Some("since")),
        ("bad type pattern", raw(Method::GET, "/events?type=a%20b"), 422, "validation", Some("type")),
        ("redrive without selection", raw(Method::POST, "/dlq/redrive").json(&json!({})), 422, "validation", Some("all")),
        ("purge without confirm", raw(Method::POST, "/dlq/purge").json(&json!({"all": true})), 422, "validation", Some("confirm")),
        ("bad dlq reason", raw(Method::GET, "/dlq?reason=bored"), 422, "validation", Some("reason")),
        ("grace too long", raw(Method::POST, &format!("/endpoints/{}/rotate-secret", uuid::Uuid::nil())).json(&json!({"grace_hours": 100000})), 422, "validation", Some("grace_hours")),
        ("token without tenant", raw(Method::POST, "/tokens").json(&json!({"name": "x"})), 422, "validation", Some("tenant_id")),
        ("tenant with spaces", raw(Method::POST, "/tokens").json(&json!({"tenant_id": "a b"})), 422, "validation", Some("tenant_id")),
    ];
    for (what, request, status, kind, field) in cases {
        let response = request
            .header("x-request-id", format!("case-{}", what.replace(' ', "-")))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(response.status().as_u16(), status, "{what}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{what}"
        );
        assert_eq!(
            response.headers()["x-request-id"].to_str().unwrap(),
            format!("case-{}", what.replace(' ', "-")),
            "{what}: the caller's request id comes back"
        );
        let problem: Value = response.json().await.unwrap();
        assert_eq!(
            problem["type"],
            format!("urn:herald:problem:{kind}"),
            "{what}: {problem}"
        );
        assert_eq!(problem["status"], status, "{what}");
        assert!(
            problem["title"].is_string() && problem["detail"].is_string(),
            "{what}: {problem}"
        );
        assert!(problem["request_id"].is_string(), "{what}: {problem}");
        if let Some(field) = field {
            assert_eq!(problem["errors"][0]["field"], field, "{what}: {problem}");
        }
    }
    let (_, listed) = api.call(Method::GET, "/endpoints", Some(ADMIN), None).await;
    assert_eq!(ids(&listed).len(), 0, "no bad request created anything");

    // A request without an id gets one.
    let response = http
        .get(url("/endpoints"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert!(!response.headers()["x-request-id"].is_empty());
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_are_stable_while_rows_are_added_between_them() {
    let env = TestEnv::new().await;
    let app = env.start_ready().await;
    let api = Api::new(&app);
    let create = |n: usize| {
        let api = &api;
        async move {
            api.ok(
                Method::POST,
                "/endpoints",
                ADMIN,
                Some(json!({"url": format!("http://127.0.0.1:9/{n}"), "event_types": ["a"], "name": format!("n{n}")})),
            )
            .await["id"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let mut first = Vec::new();
    for n in 0..8 {
        first.push(create(n).await);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/endpoints?limit=3&cursor={c}"),
            None => "/endpoints?limit=3".to_string(),
        };
        let page = api.ok(Method::GET, &path, ADMIN, None).await;
        seen.extend(ids(&page));
        pages += 1;
        // Rows added meanwhile are newer: they never shift the pages that follow.
        create(100 + pages).await;
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    first.reverse();
    assert_eq!(seen, first, "every row once, newest first");
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_manages_tokens_and_endpoints_through_the_same_operations() {
    let env = TestEnv::new().await;
    let app = env.start_ready().await;
    let api = Api::new(&app);
    let (ok, created, err) = herald(
        &env,
        &["token", "create", "--tenant", "acme", "--name", "erp"],
    );
    assert!(ok, "{err}");
    let token = created["token"].as_str().unwrap();
    let (ok, listed, _) = herald(&env, &["token", "list"]);
    assert!(ok);
    assert_eq!(listed[0]["id"], created["id"]);
    assert!(listed[0].get("token").is_none());

    let (ok, endpoint, err) = herald(
        &env,
        &[
            "endpoint",
            "add",
            "--url",
            "http://127.0.0.1:9/a",
            "--event-type",
            "a.#",
            "--tenant",
            "acme",
            "--name",
            "Billing",
        ],
    );
    assert!(ok, "{err}");
    let id = endpoint["id"].as_str().unwrap();
    let seen = api
        .ok(Method::GET, &format!("/endpoints/{id}"), token, None)
        .await;
    assert_eq!(seen["name"], "Billing");
    assert_eq!(seen["stats"]["deliveries_total"], 0);
    let (ok, updated, err) = herald(
        &env,
        &[
            "endpoint",
            "update",
            id,
            "--enabled",
            "false",
            "--rate-limit",
            "60",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(
        (updated["state"].as_str(), updated["rate_limit"].as_i64()),
        (Some("disabled"), Some(60))
    );
    let (ok, _, err) = herald(&env, &["endpoint", "update", id, "--rate-limit=-5"]);
    assert!(
        !ok && err.contains("rate_limit"),
        "one line naming the field: {err}"
    );
    let (ok, rotated, err) = herald(&env, &["endpoint", "rotate-secret", id]);
    assert!(
        ok && rotated["secret"].as_str().unwrap().starts_with("whsec_"),
        "{err}"
    );
    // Through the API with the tenant's token alone: the same operations, the same rules.
    let remote = format!("http://{}", app.address());
    let (ok, mine, err) = herald(
        &env,
        &["--api", &remote, "--token", token, "endpoint", "list"],
    );
    assert!(ok, "{err}");
    assert_eq!(mine.as_array().map(Vec::len), Some(1), "{mine}");
    let (ok, _, err) = herald(
        &env,
        &[
            "--api",
            &remote,
            "--token",
            token,
            "endpoint",
            "add",
            "--url",
            "http://127.0.0.1:9/b",
            "--event-type",
            "a",
            "--tenant",
            "other",
        ],
    );
    assert!(
        !ok && err.contains("422") && err.contains("tenant_id"),
        "{err}"
    );
    let (ok, _, err) = herald(&env, &["--api", &remote, "--token", token, "token", "list"]);
    assert!(!ok && err.contains("403"), "{err}");
    let (ok, _, err) = herald(&env, &["token", "revoke", created["id"].as_str().unwrap()]);
    assert!(ok, "{err}");
    let (status, _) = api.call(Method::GET, "/endpoints", Some(token), None).await;
    assert_eq!(status, 401);
    let (ok, _, err) = herald(&env, &["endpoint", "get", &uuid::Uuid::nil().to_string()]);
    assert!(!ok && err.contains("not found"), "{err}");
    app.stop().await;
    env.cleanup().await;
}
