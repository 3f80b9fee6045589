//! The endpoint option `ordering` (issue 18) through the real database and app: set on
//! create, shown on every read, changed by PATCH, loaded by the subscription cache
//! (`ActiveEndpoint.ordering`), refused together with `batch` (422 problem+json naming
//! the field, also against the stored endpoint on PATCH), and the command line's
//! `--ordered` / `--unordered`, locally and through the API.

use std::collections::HashSet;
use std::sync::Arc;

use herald::subscriptions::Subscriptions;
use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::common::{wait_ready, TestEnv};

const ADMIN: &str = "test-admin-token";

/// Calls the admin API as the admin: (status, content type, body as JSON).
async fn call(base: &str, method: Method, path: &str, body: Option<Value>) -> (u16, String, Value) {
    let mut request = reqwest::Client::new()
        .request(method, format!("{base}{path}"))
        .bearer_auth(ADMIN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (
        status,
        content_type,
        response.json().await.unwrap_or(Value::Null),
    )
}

/// Asserts a 422 problem+json whose one field error is on `field`; its message.
fn refused(
    what: &str,
    (status, content_type, problem): (u16, String, Value),
    field: &str,
) -> String {
    assert_eq!(status, 422, "{what}: {problem}");
    assert_eq!(content_type, "application/problem+json", "{what}");
    assert_eq!(
        problem["type"], "urn:herald:problem:validation",
        "{what}: {problem}"
    );
    let fields: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: {problem}"))
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, [field], "{what}: {problem}");
    problem["errors"][0]["message"]
        .as_str()
        .unwrap()
        .to_string()
}

fn endpoint(extra: Value) -> Value {
    let mut body = json!({"url": "http://127.0.0.1:9/hook", "event_types": ["sales.#"]});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    body
}

/// A batching option within the default bounds.
fn batch() -> Value {
    json!({"max_events": 10, "window": "200ms"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordering_is_set_shown_changed_cached_and_refused_with_batch() {
    let env = TestEnv::new().await;
    let app = env.start(herald::Role::Api).await;
    wait_ready(&app).await;
    let base = format!("http://{}/api/v1", app.address());

    // Created ordered: shown on the answer, on GET and in the list.
    let (status, _, created) = call(
        &base,
        Method::POST,
        "/endpoints",
        Some(endpoint(json!({"ordering": true}))),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["ordering"], true, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let path = format!("/endpoints/{id}");
    let (status, _, shown) = call(&base, Method::GET, &path, None).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["ordering"], true, "{shown}");
    // Left out: unordered.
    let (status, _, plain) =
        call(&base, Method::POST, "/endpoints", Some(endpoint(json!({})))).await;
    assert_eq!(status, 201, "{plain}");
    assert_eq!(plain["ordering"], false, "{plain}");
    let (_, _, listed) = call(&base, Method::GET, "/endpoints", None).await;
    let by_id = |wanted: &str| {
        listed["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == wanted)
            .cloned()
            .unwrap()
    };
    assert_eq!(by_id(&id)["ordering"], true, "{listed}");
    assert_eq!(
        by_id(plain["id"].as_str().unwrap())["ordering"],
        false,
        "{listed}"
    );

    // The subscription cache carries it.
    let uuid: Uuid = id.parse().unwrap();
    let cache = Subscriptions::new(env.pool.clone(), Arc::new(env.keys()));
    cache.reload().await.unwrap();
    assert!(cache.snapshot().get(&uuid).unwrap().ordering);
    let plain_id: Uuid = plain["id"].as_str().unwrap().parse().unwrap();
    assert!(!cache.snapshot().get(&plain_id).unwrap().ordering);

    // Ordered and batched at once, on create: refused, nothing stored.
    let message = refused(
        "create with both",
        call(
            &base,
            Method::POST,
            "/endpoints",
            Some(endpoint(json!({"ordering": true, "batch": batch()}))),
        )
        .await,
        "ordering",
    );
    assert!(message.contains("batch"), "{message}");
    assert_eq!(env.count("SELECT count(*) FROM herald.endpoints").await, 2);

    // PATCH: batch added to the ordered endpoint, refused; unchanged.
    let patch = |body: Value| call(&base, Method::PATCH, &path, Some(body));
    let message = refused(
        "batch on an ordered endpoint",
        patch(json!({"batch": batch()})).await,
        "batch",
    );
    assert!(message.contains("ordering"), "{message}");
    let (_, _, shown) = call(&base, Method::GET, &path, None).await;
    assert_eq!(
        (shown["ordering"].clone(), shown["batch"].clone()),
        (json!(true), Value::Null),
        "unchanged: {shown}"
    );
    // Both on in one PATCH: refused too.
    refused(
        "both in one patch",
        patch(json!({"ordering": true, "batch": batch()})).await,
        "ordering",
    );

    // Off again; the cache takes the change.
    let (status, _, changed) = patch(json!({"ordering": false})).await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["ordering"], false, "{changed}");
    let (_, _, shown) = call(&base, Method::GET, &path, None).await;
    assert_eq!(shown["ordering"], false, "{shown}");
    cache.refresh(&HashSet::from([uuid])).await.unwrap();
    assert!(!cache.snapshot().get(&uuid).unwrap().ordering);
    // A field left out stays.
    let (status, _, changed) = patch(json!({"name": "renamed"})).await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["ordering"], false, "{changed}");

    // Batching now: making it ordered needs the batch removed in the same request.
    let (status, _, changed) = patch(json!({"batch": batch()})).await;
    assert_eq!(status, 200, "{changed}");
    let message = refused(
        "ordering on a batching endpoint",
        patch(json!({"ordering": true})).await,
        "ordering",
    );
    assert!(message.contains("batch"), "{message}");
    let (status, _, changed) = patch(json!({"ordering": true, "batch": null})).await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(
        (changed["ordering"].clone(), changed["batch"].clone()),
        (json!(true), Value::Null),
        "{changed}"
    );
    // And back, switching both in one request.
    let (status, _, changed) = patch(json!({"ordering": false, "batch": batch()})).await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["ordering"], false, "{changed}");
    assert_eq!(changed["batch"], batch(), "{changed}");
    assert_eq!(
        env.count(
            "SELECT count(*) FROM herald.endpoints WHERE ordering AND batch_max_events IS NOT NULL"
        )
        .await,
        0,
        "never both"
    );

    // The UPDATE itself never leaves a row both (a change racing the check): with the
    // ordering turned on behind Herald's back, a PATCH keeping the batch is refused.
    sqlx::query("UPDATE herald.endpoints SET ordering = true WHERE id = $1")
        .bind(uuid)
        .execute(&env.pool)
        .await
        .unwrap();
    refused(
        "a change keeping both",
        patch(json!({"name": "again"})).await,
        "ordering",
    );
    let (status, _, changed) = patch(json!({"batch": null})).await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["ordering"], true, "{changed}");

    // Not a boolean: refused at the edge.
    let (status, _, problem) = patch(json!({"ordering": "yes"})).await;
    assert!(status == 400 || status == 422, "{status}: {problem}");
    // A missing endpoint stays a 404.
    let (status, _, _) = call(
        &base,
        Method::PATCH,
        &format!("/endpoints/{}", Uuid::nil()),
        Some(json!({"ordering": true})),
    )
    .await;
    assert_eq!(status, 404);
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_sets_ordering_locally_and_through_the_api() {
    let env = TestEnv::new().await;
    let herald = |args: &[&str]| {
        let out = env
            .herald_command()
            .args(args)
            .output()
            .expect("herald runs");
        (
            out.status.success(),
            serde_json::from_slice::<Value>(&out.stdout).unwrap_or(Value::Null),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let add = |extra: &[&str]| {
        let mut args = vec![
            "endpoint",
            "add",
            "--url",
            "http://127.0.0.1:9/cli",
            "--event-type",
            "a.b",
        ];
        args.extend_from_slice(extra);
        herald(&args)
    };
    let (ok, added, stderr) = add(&["--ordered"]);
    assert!(ok, "{stderr}");
    assert_eq!(added["ordering"], true, "{added}");
    let id = added["id"].as_str().unwrap().to_string();
    let (ok, shown, stderr) = herald(&["endpoint", "get", &id]);
    assert!(ok, "{stderr}");
    assert_eq!(shown["ordering"], true, "{shown}");
    let (ok, plain, stderr) = add(&[]);
    assert!(ok, "{stderr}");
    assert_eq!(plain["ordering"], false, "{plain}");
    // Refused by the flags themselves.
    let (ok, _, stderr) = add(&["--ordered", "--batch-max", "10", "--batch-window", "200ms"]);
    assert!(!ok && stderr.contains("--ordered"), "{stderr}");
    let (ok, _, stderr) = herald(&["endpoint", "update", &id, "--ordered", "--unordered"]);
    assert!(!ok && stderr.contains("--unordered"), "{stderr}");
    // Refused against the stored endpoint.
    let (ok, _, stderr) = herald(&[
        "endpoint",
        "update",
        &id,
        "--batch-max",
        "10",
        "--batch-window",
        "200ms",
    ]);
    assert!(!ok && stderr.contains("batch"), "{stderr}");
    let (ok, updated, stderr) = herald(&["endpoint", "update", &id, "--unordered"]);
    assert!(ok, "{stderr}");
    assert_eq!(updated["ordering"], false, "{updated}");

    // Through the API.
    let app = env.start(herald::Role::Api).await;
    wait_ready(&app).await;
    let remote = format!("http://{}", app.address());
    let api = |args: &[&str]| {
        let mut all = vec!["--api", remote.as_str(), "--token", ADMIN];
        all.extend_from_slice(args);
        herald(&all)
    };
    let (ok, added, stderr) = api(&[
        "endpoint",
        "add",
        "--url",
        "http://127.0.0.1:9/remote",
        "--event-type",
        "a.b",
        "--ordered",
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(added["ordering"], true, "{added}");
    let remote_id = added["id"].as_str().unwrap().to_string();
    let (ok, _, stderr) = api(&[
        "endpoint",
        "update",
        &remote_id,
        "--batch-max",
        "10",
        "--batch-window",
        "200ms",
    ]);
    assert!(
        !ok && stderr.contains("422") && stderr.contains("batch"),
        "{stderr}"
    );
    let (ok, updated, stderr) = api(&["endpoint", "update", &remote_id, "--unordered"]);
    assert!(ok, "{stderr}");
    assert_eq!(updated["ordering"], false, "{updated}");
    let (ok, updated, stderr) = api(&["endpoint", "update", &id, "--ordered"]);
    assert!(ok, "{stderr}");
    assert_eq!(updated["ordering"], true, "{updated}");
    app.stop().await;
    env.cleanup().await;
}
