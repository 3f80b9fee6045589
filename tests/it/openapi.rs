//! The OpenAPI document: served without a token, 3.1, the same as `docs/openapi.json`,
//! an operation for every route of the router's table (so a route added without docs
//! fails), and real answers of the running API conforming to it.

use std::collections::BTreeSet;

use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

use crate::common::receiver::Receiver;
use crate::common::TestEnv;
use crate::tenants::ADMIN;

const PREFIX: &str = "/api/v1";

/// A route of the table, the method, the path called, the token and the body.
type Case<'a> = (&'a str, Method, String, Option<&'a str>, Option<Value>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_document_describes_every_route_and_what_they_answer() {
    let env = TestEnv::new().await;
    let receiver = Receiver::start().await;
    let app = env.start_ready().await;
    let base = format!("http://{}", app.address());
    let http = Client::new();

    // Public: no token needed, JSON, 3.1.
    let response = http
        .get(format!("{base}{PREFIX}/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "{response:?}"
    );
    let text = response.text().await.unwrap();
    let doc: Value = serde_json::from_str(&text).expect("the document is JSON");
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(text, herald::api::openapi_json(), "served as generated");
    let checked_in =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json"))
            .unwrap_or_default();
    assert!(
        checked_in == text,
        "docs/openapi.json is stale: run `make openapi` and commit it"
    );
    // Another method on it is a problem like any other route's.
    let (status, problem, _) = call(&http, &base, Method::POST, "/openapi.json", None, None).await;
    assert_eq!(status, 405);
    assert_eq!(problem["type"], "urn:herald:problem:method-not-allowed");

    // Every route of the table is documented, with its method, and nothing else is.
    let mut routes = BTreeSet::new();
    for route in herald::api::routes() {
        let method = route.method.as_str().to_ascii_lowercase();
        let path = format!("{PREFIX}{}", route.path);
        assert!(
            doc["paths"][&path][&method].is_object(),
            "{} {path} has no operation in the OpenAPI document: add #[utoipa::path] \
             to its handler and list it in src/api/v1/doc.rs",
            route.method
        );
        routes.insert((method, path));
    }
    routes.insert(("get".into(), format!("{PREFIX}/openapi.json")));
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.insert((method.clone(), path.clone()));
        }
    }
    assert_eq!(documented, routes, "documented operations are the routes");
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"],
        json!({"type": "http", "scheme": "bearer", "description": doc["components"]["securitySchemes"]["bearer"]["description"]})
    );

    // Real answers conform: successes, and the problems of careless calls.
    let check = |route: &str, method: Method, status: StatusCode, value: &Value, ct: &str| {
        conforms(&doc, route, &method, status, ct, value);
    };
    let token = &call(
        &http,
        &base,
        Method::POST,
        "/tokens",
        Some(ADMIN),
        Some(json!({"tenant_id": "t1", "name": "page"})),
    )
    .await;
    check("/tokens", Method::POST, token.0, &token.1, &token.2);
    let tenant_token = token.1["token"].as_str().unwrap().to_string();
    let mut cases: Vec<Case> = vec![
        ("/tokens", Method::GET, "/tokens".into(), Some(ADMIN), None),
        (
            "/tokens",
            Method::GET,
            "/tokens".into(),
            Some(&tenant_token),
            None,
        ),
        (
            "/endpoints",
            Method::POST,
            "/endpoints".into(),
            Some(&tenant_token),
            Some(json!({"url": receiver.url("/hook"), "event_types": ["sales.#"], "name": "n"})),
        ),
        (
            "/endpoints",
            Method::POST,
            "/endpoints".into(),
            Some(ADMIN),
            Some(json!({"url": "not a url", "event_types": [], "colour": 1})),
        ),
        ("/endpoints", Method::GET, "/endpoints".into(), None, None),
        (
            "/endpoints",
            Method::GET,
            "/endpoints?limit=5000".into(),
            Some(ADMIN),
            None,
        ),
    ];
    let mut endpoint_id = String::new();
    for (route, method, path, token, body) in cases.drain(..) {
        let (status, value, ct) = call(&http, &base, method.clone(), &path, token, body).await;
        check(route, method.clone(), status, &value, &ct);
        if status == StatusCode::CREATED && route == "/endpoints" {
            endpoint_id = value["id"].as_str().unwrap().to_string();
        }
    }
    assert!(!endpoint_id.is_empty());
    let one = format!("/endpoints/{endpoint_id}");
    let nil = uuid::Uuid::nil();
    for (route, method, path, body) in [
        ("/endpoints", Method::GET, "/endpoints".to_string(), None),
        ("/endpoints/{id}", Method::GET, one.clone(), None),
        (
            "/endpoints/{id}",
            Method::PATCH,
            one.clone(),
            Some(json!({"rate_limit": null, "description": "d"})),
        ),
        (
            "/endpoints/{id}/rotate-secret",
            Method::POST,
            format!("{one}/rotate-secret"),
            None,
        ),
        (
            "/endpoints/{id}/test",
            Method::POST,
            format!("{one}/test"),
            None,
        ),
        (
            "/endpoints/{id}/replay",
            Method::POST,
            format!("{one}/replay"),
            Some(json!({"since": "2020-01-01T00:00:00Z"})),
        ),
        (
            "/endpoints/{id}",
            Method::GET,
            format!("/endpoints/{nil}"),
            None,
        ),
        ("/events", Method::GET, "/events".into(), None),
        (
            "/deliveries",
            Method::GET,
            "/deliveries?status=failed".into(),
            None,
        ),
        ("/dlq", Method::GET, "/dlq".into(), None),
        (
            "/dlq/redrive",
            Method::POST,
            "/dlq/redrive".into(),
            Some(json!({"delivery_ids": [nil]})),
        ),
        (
            "/dlq/purge",
            Method::POST,
            "/dlq/purge".into(),
            Some(json!({"reason": "gone", "confirm": true})),
        ),
        (
            "/dlq/jobs/{id}",
            Method::GET,
            format!("/dlq/jobs/{nil}"),
            None,
        ),
        (
            "/deliveries/{id}",
            Method::GET,
            format!("/deliveries/{nil}"),
            None,
        ),
        (
            "/replays/{id}",
            Method::GET,
            format!("/replays/{nil}"),
            None,
        ),
        ("/tokens", Method::POST, "/tokens".into(), Some(json!({}))),
    ] {
        let (status, value, ct) = call(
            &http,
            &base,
            method.clone(),
            &path,
            Some(&tenant_token),
            body,
        )
        .await;
        check(route, method, status, &value, &ct);
    }
    let (status, value, ct) = call(&http, &base, Method::DELETE, &one, Some(ADMIN), None).await;
    check("/endpoints/{id}", Method::DELETE, status, &value, &ct);

    // The parking queue, the admin's: a job started, followed to its end, and refusals.
    let (status, job, ct) = call(
        &http,
        &base,
        Method::POST,
        "/invalid/reingest",
        Some(ADMIN),
        Some(json!({"ids": [nil]})),
    )
    .await;
    check("/invalid/reingest", Method::POST, status, &job, &ct);
    assert_eq!(status, 202, "{job}");
    let job_path = format!("/invalid/jobs/{}", job["id"].as_str().unwrap());
    let mut finished = job;
    while finished["state"] == "running" {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let (status, value, ct) =
            call(&http, &base, Method::GET, &job_path, Some(ADMIN), None).await;
        check("/invalid/jobs/{id}", Method::GET, status, &value, &ct);
        finished = value;
    }
    assert_eq!(finished["not_found"], json!([nil]), "{finished}");
    for (route, method, path, token, body) in [
        ("/invalid", Method::GET, "/invalid".to_string(), ADMIN, None),
        (
            "/invalid",
            Method::GET,
            "/invalid".to_string(),
            tenant_token.as_str(),
            None,
        ),
        (
            "/invalid/purge",
            Method::POST,
            "/invalid/purge".to_string(),
            ADMIN,
            Some(json!({"all": true, "confirm": true})),
        ),
        (
            "/invalid/purge",
            Method::POST,
            "/invalid/purge".to_string(),
            ADMIN,
            Some(json!({"all": true})),
        ),
        (
            "/invalid/reingest",
            Method::POST,
            "/invalid/reingest".to_string(),
            tenant_token.as_str(),
            Some(json!({"all": true})),
        ),
        (
            "/invalid/jobs/{id}",
            Method::GET,
            job_path.clone(),
            tenant_token.as_str(),
            None,
        ),
        (
            "/invalid/jobs/{id}",
            Method::GET,
            format!("/invalid/jobs/{nil}"),
            ADMIN,
            None,
        ),
    ] {
        let (status, value, ct) =
            call(&http, &base, method.clone(), &path, Some(token), body).await;
        check(route, method, status, &value, &ct);
    }

    app.stop().await;
    env.cleanup().await;
}

async fn call(
    http: &Client,
    base: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value, String) {
    let mut request = http.request(method, format!("{base}{PREFIX}{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("the API answers");
    let status = response.status();
    let ct = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let text = response.text().await.unwrap();
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("JSON: {text}"))
    };
    (status, value, ct)
}

/// The answer `status`/`value` of `method route` is one the document declares, with
/// its content type, and matches its schema, with no property the schema lacks.
fn conforms(
    doc: &Value,
    route: &str,
    method: &Method,
    status: StatusCode,
    ct: &str,
    value: &Value,
) {
    let what = format!("{method} {route} → {status} {value}");
    let operation = &doc["paths"][format!("{PREFIX}{route}")][method.as_str().to_ascii_lowercase()];
    assert!(operation.is_object(), "{what}: no operation");
    let mut response = &operation["responses"][status.as_str()];
    assert!(response.is_object(), "{what}: status not documented");
    if let Some(name) = response["$ref"].as_str() {
        response = resolve(doc, name);
    }
    let Some(content) = response["content"].as_object() else {
        assert!(value.is_null(), "{what}: a body where none is documented");
        return;
    };
    let media = content
        .get(ct)
        .unwrap_or_else(|| panic!("{what}: content type {ct} not documented"));
    let mut errors = Vec::new();
    check(doc, &media["schema"], value, "$", true, &mut errors);
    assert!(errors.is_empty(), "{what}: {errors:#?}");
}

fn resolve<'a>(doc: &'a Value, reference: &str) -> &'a Value {
    let mut at = doc;
    for part in reference
        .strip_prefix("#/")
        .expect("a local $ref")
        .split('/')
    {
        at = &at[part];
    }
    assert!(!at.is_null(), "{reference} resolves");
    at
}

/// A small JSON Schema check of the keywords the document uses (any other fails).
/// `closed`: an object may hold only the properties the schema declares (through
/// `allOf` too), so that an undocumented field of an answer is found.
fn check(
    doc: &Value,
    schema: &Value,
    value: &Value,
    at: &str,
    closed: bool,
    errors: &mut Vec<String>,
) {
    const KNOWN: [&str; 15] = [
        "$ref",
        "propertyNames",
        "allOf",
        "oneOf",
        "type",
        "enum",
        "properties",
        "required",
        "items",
        "additionalProperties",
        "description",
        "format",
        "minimum",
        "maximum",
        "example",
    ];
    let Some(map) = schema.as_object() else {
        return errors.push(format!("{at}: schema {schema} is not an object"));
    };
    if let Some(unknown) = map.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        panic!("the check does not know the keyword {unknown} ({at})");
    }
    if let Some(reference) = map.get("$ref").and_then(Value::as_str) {
        return check(doc, resolve(doc, reference), value, at, closed, errors);
    }
    if let Some(all) = map.get("allOf").and_then(Value::as_array) {
        for part in all {
            check(doc, part, value, at, false, errors);
        }
        if closed {
            if let (Some(object), Some(declared)) = (value.as_object(), declared(doc, schema)) {
                for key in object.keys().filter(|k| !declared.contains(*k)) {
                    errors.push(format!("{at}.{key}: not in the schema"));
                }
            }
        }
        return;
    }
    if let Some(one) = map.get("oneOf").and_then(Value::as_array) {
        let passing = one
            .iter()
            .filter(|part| {
                let mut e = Vec::new();
                check(doc, part, value, at, closed, &mut e);
                e.is_empty()
            })
            .count();
        if passing != 1 {
            errors.push(format!("{at}: {passing} of oneOf match"));
        }
        return;
    }
    if let Some(allowed) = map.get("enum").and_then(Value::as_array) {
        if !allowed.contains(value) {
            errors.push(format!("{at}: {value} not in {allowed:?}"));
        }
    }
    if let Some(types) = map.get("type") {
        let types: Vec<&str> = match types {
            Value::String(t) => vec![t.as_str()],
            Value::Array(list) => list.iter().filter_map(Value::as_str).collect(),
            _ => panic!("type {types}"),
        };
        let fits = types.iter().any(|t| match *t {
            "null" => value.is_null(),
            "boolean" => value.is_boolean(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "string" => value.is_string(),
            "array" => value.is_array(),
            "object" => value.is_object(),
            other => panic!("type {other}"),
        });
        if !fits {
            return errors.push(format!("{at}: {value} is not {types:?}"));
        }
    }
    if let Some(min) = map.get("minimum").and_then(Value::as_f64) {
        if value.as_f64().is_some_and(|v| v < min) {
            errors.push(format!("{at}: {value} < {min}"));
        }
    }
    if let Some(max) = map.get("maximum").and_then(Value::as_f64) {
        if value.as_f64().is_some_and(|v| v > max) {
            errors.push(format!("{at}: {value} > {max}"));
        }
    }
    if let (Some(object), Some(names)) = (value.as_object(), map.get("propertyNames")) {
        for key in object.keys() {
            check(
                doc,
                names,
                &json!(key),
                &format!("{at}[{key}]"),
                true,
                errors,
            );
        }
    }
    if let Some(object) = value.as_object() {
        for name in map
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if !object.contains_key(name.as_str().unwrap()) {
                errors.push(format!("{at}: required {name} missing"));
            }
        }
        let properties = map.get("properties").and_then(Value::as_object);
        for (key, item) in object {
            match properties.and_then(|p| p.get(key)) {
                Some(property) => check(doc, property, item, &format!("{at}.{key}"), true, errors),
                None if (closed || map.get("additionalProperties") == Some(&json!(false)))
                    && properties.is_some() =>
                {
                    errors.push(format!("{at}.{key}: not in the schema"));
                }
                None => {}
            }
        }
    }
    if let (Some(items), Some(list)) = (map.get("items"), value.as_array()) {
        for (n, item) in list.iter().enumerate() {
            check(doc, items, item, &format!("{at}[{n}]"), true, errors);
        }
    }
}

/// The properties an object schema declares, through `$ref` and `allOf`.
fn declared(doc: &Value, schema: &Value) -> Option<BTreeSet<String>> {
    if let Some(reference) = schema["$ref"].as_str() {
        return declared(doc, resolve(doc, reference));
    }
    let mut names: BTreeSet<String> = schema["properties"]
        .as_object()
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default();
    for part in schema["allOf"].as_array().into_iter().flatten() {
        names.extend(declared(doc, part)?);
    }
    Some(names)
}

#[test]
fn the_check_finds_missing_extra_and_mistyped_fields() {
    let doc: Value = serde_json::from_str(&herald::api::openapi_json()).unwrap();
    let token = json!({"$ref": "#/components/schemas/CreatedToken"});
    let good = json!({"id": uuid::Uuid::nil(), "tenant_id": "t", "name": null,
        "created_at": "2026-01-01T00:00:00Z", "revoked_at": null, "token": "hrld_x"});
    let mut errors = Vec::new();
    check(&doc, &token, &good, "$", true, &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    for (change, expected) in [
        (json!({"extra": 1}), "not in the schema"),
        (json!({"name": 5}), "is not"),
        (json!({"token": null}), "is not"),
    ] {
        let mut bad = good.clone();
        bad.as_object_mut()
            .unwrap()
            .extend(change.as_object().unwrap().clone());
        let mut errors = Vec::new();
        check(&doc, &token, &bad, "$", true, &mut errors);
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "{change}: {errors:?}"
        );
    }
    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("revoked_at");
    let mut errors = Vec::new();
    check(&doc, &token, &missing, "$", true, &mut errors);
    assert!(errors.iter().any(|e| e.contains("required")), "{errors:?}");
}
