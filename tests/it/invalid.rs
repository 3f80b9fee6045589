//! The parking queue `<prefix>.invalid` from an SRE's side, through the real broker and
//! database: listing leaves it as it was, reingest after a fix delivers exactly once and
//! takes only what it names, purge needs confirmation, both are jobs the API answers
//! `202` for at once and any `api` process follows, a job whose process stopped is
//! failed and stays so, the command line does the same locally and through the API,
//! and bad input is a problem.

use std::time::Duration;

use herald::{App, Role};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;
use reqwest::Method;
use serde_json::{json, Value};

use crate::admin_api::herald as cli;
use crate::common::receiver::Receiver;
use crate::common::{eventually, wait_ready, TestEnv};
use crate::tenants::{Api, ADMIN};

/// A limit the test's too-large message is over, and one it is under (the "fix").
const SMALL_LIMIT: usize = 1024;
const RAISED_LIMIT: usize = 64 * 1024;

fn properties(id: &str, headers: &[(&str, &str)]) -> BasicProperties {
    let mut table = FieldTable::default();
    for (name, value) in headers {
        table.insert(
            (*name).into(),
            AMQPValue::LongString(LongString::from(*value)),
        );
    }
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(id.into())
        .with_headers(table)
}

fn too_large_body() -> Vec<u8> {
    format!("{{\"blob\":\"{}\"}}", "x".repeat(2000)).into_bytes()
}

/// Publishes one message of each refusal (not JSON, too large, no type) and one good
/// one, and waits until the good one is delivered and the three are parked.
async fn park_three(env: &TestEnv, receiver: &Receiver) {
    env.publish_raw(
        "sales.order.created",
        b"{not json",
        properties("bad-json", &[("x-custom", "kept")]),
    )
    .await;
    env.publish_raw(
        "sales.order.created",
        &too_large_body(),
        properties("too-big", &[]),
    )
    .await;
    env.publish_raw("", b"{}", properties("no-type", &[])).await;
    env.publish("sales.order.created", Some("good"), None, b"{}")
        .await;
    eventually(
        "the good event delivered",
        Duration::from_secs(15),
        || async { receiver.count() == 1 },
    )
    .await;
    let invalid = env.topology().invalid_queue();
    eventually("three parked", Duration::from_secs(10), || async {
        env.queue_depth(&invalid).await == 3
    })
    .await;
}

fn by_message_id<'a>(list: &'a Value, id: &str) -> &'a Value {
    list.as_array()
        .unwrap_or_else(|| panic!("a list: {list}"))
        .iter()
        .find(|m| m["message_id"] == id)
        .unwrap_or_else(|| panic!("{id} listed: {list}"))
}

/// Waits until the parking queue holds `n` messages ready: a quorum queue applies
/// returns and acknowledgements a moment after the channel sent them.
async fn depth_settles_at(env: &TestEnv, n: u32) {
    let invalid = env.topology().invalid_queue();
    eventually(
        &format!("{n} messages parked"),
        Duration::from_secs(5),
        || async { env.queue_depth(&invalid).await == n },
    )
    .await;
}

/// A listing without the broker's delivery counts (each listing adds one).
fn without_counts(list: &Value) -> Value {
    let mut list = list.clone();
    for message in list.as_array_mut().unwrap() {
        message.as_object_mut().unwrap().remove("delivery_count");
    }
    list
}

/// Starts a reingest or purge job through the API and polls it until it ends.
async fn finished_job(api: &Api, path: &str, body: Value) -> Value {
    let (status, job) = api.call(Method::POST, path, Some(ADMIN), Some(body)).await;
    assert_eq!(status, 202, "{path}: {job}");
    follow(api, job).await
}

/// Polls a parking-queue job until it is no longer running.
async fn follow(api: &Api, mut job: Value) -> Value {
    let path = format!("/invalid/jobs/{}", job["id"].as_str().unwrap());
    let started = std::time::Instant::now();
    while job["state"] == "running" {
        assert!(started.elapsed() < Duration::from_secs(30), "{job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        job = api.ok(Method::GET, &path, ADMIN, None).await;
    }
    assert_eq!(job["state"], "done", "{job}");
    job
}

/// The same app settings with the size limit raised: the fix.
async fn restart_fixed(env: &TestEnv, app: App) -> App {
    app.stop().await;
    let mut fixed = env.settings.clone();
    fixed.ingest.max_body_bytes = RAISED_LIMIT;
    let app = App::build(fixed, Role::All).await.expect("app starts");
    wait_ready(&app).await;
    app
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_shows_each_parked_message_and_leaves_the_queue_as_it_was() {
    let env = TestEnv::with(|s| s.ingest.max_body_bytes = SMALL_LIMIT).await;
    let receiver = Receiver::start().await;
    env.add_endpoint(&receiver.url("/all"), &["#"], None).await;
    let app = env.start_ready().await;
    let api = Api::new(&app);
    park_three(&env, &receiver).await;

    let page = api.ok(Method::GET, "/invalid", ADMIN, None).await;
    assert_eq!(page["next_cursor"], Value::Null, "{page}");
    let listed = &page["data"];
    assert_eq!(listed.as_array().unwrap().len(), 3, "{listed}");
    let bad = by_message_id(listed, "bad-json");
    assert_eq!(bad["reason"], "not_json");
    assert!(
        bad["error"].as_str().unwrap().starts_with("not_json: "),
        "{bad}"
    );
    assert_eq!(bad["exchange"], env.exchange.as_str());
    assert_eq!(bad["routing_key"], "sales.order.created");
    assert_eq!(bad["headers"], json!({"x-custom": "kept"}));
    assert_eq!(bad["content_type"], "application/json");
    assert_eq!(bad["body_prefix"], "{not json");
    assert_eq!(bad["body_bytes"], 9);
    assert_eq!(bad["derived_id"], false);
    let big = by_message_id(listed, "too-big");
    assert_eq!(big["reason"], "too_large");
    assert_eq!(big["body_bytes"], too_large_body().len());
    assert_eq!(big["body_truncated"], true);
    assert_eq!(big["body_prefix"].as_str().unwrap().len(), 1024);
    assert!(big["body_prefix"]
        .as_str()
        .unwrap()
        .starts_with("{\"blob\":\"xxx"));
    let none = by_message_id(listed, "no-type");
    assert_eq!(
        (&none["reason"], &none["routing_key"]),
        (&json!("no_type"), &json!(""))
    );
    assert!(none["timestamp"].is_string(), "the arrival time: {none}");

    // Nothing was taken or reordered: the same list again, the same depth.
    let again = api.ok(Method::GET, "/invalid", ADMIN, None).await;
    assert_eq!(without_counts(&again["data"]), without_counts(listed));
    assert_eq!(again["data"].as_array().unwrap().len(), 3);
    assert!(
        again["data"][0]["delivery_count"].as_i64() > listed[0]["delivery_count"].as_i64(),
        "the broker counts the return of a listed message: {again}"
    );
    depth_settles_at(&env, 3).await;

    // One reason; and pages of one, following the cursor.
    let only = api
        .ok(Method::GET, "/invalid?reason=too_large", ADMIN, None)
        .await;
    assert_eq!(only["data"].as_array().unwrap().len(), 1);
    assert_eq!(only["data"][0]["id"], big["id"]);
    let mut paged = Vec::new();
    let mut path = "/invalid?limit=1".to_string();
    loop {
        let page = api.ok(Method::GET, &path, ADMIN, None).await;
        paged.extend(
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["id"].clone()),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/invalid?limit=1&cursor={cursor}"),
            None => break,
        }
    }
    let all: Vec<Value> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].clone())
        .collect();
    assert_eq!(paged, all);
    depth_settles_at(&env, 3).await;
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_reingested_after_the_fix_reaches_the_receiver_exactly_once() {
    let env = TestEnv::with(|s| s.ingest.max_body_bytes = SMALL_LIMIT).await;
    let receiver = Receiver::start().await;
    env.add_endpoint(&receiver.url("/all"), &["#"], None).await;
    let app = env.start_ready().await;
    park_three(&env, &receiver).await;
    let app = restart_fixed(&env, app).await;
    let api = Api::new(&app);
    let before = api.ok(Method::GET, "/invalid", ADMIN, None).await["data"].clone();

    // By reason: only the too-large one goes, and now it is accepted.
    let done = finished_job(&api, "/invalid/reingest", json!({"reason": "too_large"})).await;
    assert_eq!(done["reingested"], 1, "{done}");
    assert_eq!(done["by_reason"], json!({"too_large": 1}));
    eventually(
        "the fixed message delivered",
        Duration::from_secs(15),
        || async { receiver.count() == 2 },
    )
    .await;
    let sent = receiver
        .received()
        .into_iter()
        .find(|r| r.header("webhook-id") == "too-big")
        .expect("delivered with its own id");
    let body: Value = serde_json::from_slice(&sent.body).unwrap();
    assert_eq!(
        body["type"], "sales.order.created",
        "its original routing key"
    );
    assert_eq!(body["data"]["blob"].as_str().unwrap().len(), 2000);

    // By id: the not-JSON one goes back, is refused again and parked with a new id; an
    // unknown id is reported.
    let bad_id = by_message_id(&before, "bad-json")["id"].clone();
    let unknown = uuid::Uuid::now_v7();
    let done = finished_job(&api, "/invalid/reingest", json!({"ids": [bad_id, unknown]})).await;
    assert_eq!(done["reingested"], 1, "{done}");
    assert_eq!(done["not_found"], json!([unknown]));
    let invalid = env.topology().invalid_queue();
    eventually("parked again", Duration::from_secs(10), || async {
        let now = api.ok(Method::GET, "/invalid", ADMIN, None).await["data"].clone();
        now.as_array().unwrap().len() == 2
            && now
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["message_id"] == "bad-json")
    })
    .await;
    let after = api.ok(Method::GET, "/invalid", ADMIN, None).await["data"].clone();
    let again = by_message_id(&after, "bad-json");
    assert_ne!(again["id"], bad_id, "parked again with a new id");
    assert_eq!(again["reason"], "not_json");
    assert_eq!(again["exchange"], env.exchange.as_str(), "its origin kept");
    assert_eq!(again["routing_key"], "sales.order.created");
    assert_eq!(again["headers"], json!({"x-custom": "kept"}));
    assert_eq!(
        by_message_id(&after, "no-type")["id"],
        by_message_id(&before, "no-type")["id"],
        "what was not selected stayed"
    );
    depth_settles_at(&env, 2).await;

    // All: what is still refused comes back; a message of the work queue that is no
    // delivery task is no event, and stays.
    let work = env.topology().work_exchange();
    env.publisher()
        .publish(herald::broker::Outgoing {
            exchange: &work,
            routing_key: herald::topology::WORK_ROUTING_KEY,
            body: b"not a task",
            properties: BasicProperties::default().with_message_id("junk-task".into()),
        })
        .await
        .unwrap();
    eventually("the junk task parked", Duration::from_secs(10), || async {
        env.queue_depth(&invalid).await == 3
    })
    .await;
    let done = finished_job(&api, "/invalid/reingest", json!({"all": true})).await;
    assert_eq!(
        (&done["reingested"], &done["skipped"]),
        (&json!(2), &json!(1)),
        "{done}"
    );
    eventually("refused again", Duration::from_secs(10), || async {
        env.queue_depth(&invalid).await == 3
    })
    .await;
    let now = api.ok(Method::GET, "/invalid", ADMIN, None).await["data"].clone();
    assert_eq!(by_message_id(&now, "junk-task")["reason"], "malformed_task");
    assert_eq!(by_message_id(&now, "no-type")["reason"], "no_type");

    // Reingesting what was already delivered delivers nothing new.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.count(), 2, "exactly once");
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_needs_confirmation_and_takes_only_what_it_names() {
    let env = TestEnv::with(|s| s.ingest.max_body_bytes = SMALL_LIMIT).await;
    let receiver = Receiver::start().await;
    env.add_endpoint(&receiver.url("/all"), &["#"], None).await;
    let app = env.start_ready().await;
    let api = Api::new(&app);
    park_three(&env, &receiver).await;
    // One parked by an earlier Herald: no id of its own.
    let invalid = env.topology().invalid_queue();
    let old = properties(
        "old",
        &[
            ("x-herald-error", "not_json: expected value"),
            ("x-herald-reason", "not_json"),
            ("x-herald-exchange", &env.exchange),
            ("x-herald-routing-key", "sales.order.created"),
        ],
    );
    env.publisher()
        .publish(herald::broker::Outgoing {
            exchange: "",
            routing_key: &invalid,
            body: b"old{",
            properties: old,
        })
        .await
        .unwrap();
    let listed = api.ok(Method::GET, "/invalid", ADMIN, None).await["data"].clone();
    let old = by_message_id(&listed, "old");
    assert_eq!(old["derived_id"], true, "{old}");
    let relisted = api.ok(Method::GET, "/invalid", ADMIN, None).await["data"].clone();
    assert_eq!(by_message_id(&relisted, "old")["id"], old["id"], "stable");

    let (status, problem) = api
        .call(
            Method::POST,
            "/invalid/purge",
            Some(ADMIN),
            Some(json!({"all": true})),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["type"], "urn:herald:problem:validation");
    assert_eq!(problem["errors"][0]["field"], "confirm");
    depth_settles_at(&env, 4).await;

    let by_id = finished_job(
        &api,
        "/invalid/purge",
        json!({"ids": [old["id"]], "confirm": true}),
    )
    .await;
    assert_eq!(by_id["purged"], 1, "{by_id}");
    let by_reason = finished_job(
        &api,
        "/invalid/purge",
        json!({"reason": "not_json", "confirm": true}),
    )
    .await;
    assert_eq!(by_reason["purged"], 1, "{by_reason}");
    let left = api.ok(Method::GET, "/invalid", ADMIN, None).await["data"].clone();
    let mut reasons: Vec<&str> = left
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["reason"].as_str().unwrap())
        .collect();
    reasons.sort();
    assert_eq!(reasons, ["no_type", "too_large"]);
    let rest = finished_job(
        &api,
        "/invalid/purge",
        json!({"all": true, "confirm": true}),
    )
    .await;
    assert_eq!(rest["purged"], 2);
    assert_eq!(rest["by_reason"], json!({"no_type": 1, "too_large": 1}));
    depth_settles_at(&env, 0).await;
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_on_the_invalid_routes_is_a_problem_and_a_tenant_token_is_refused() {
    let env = TestEnv::new().await;
    let app = env.start_ready().await;
    let api = Api::new(&app);
    let cases = [
        (Method::GET, "/invalid?reason=nope", None, 422, "validation"),
        (Method::GET, "/invalid?limit=0", None, 422, "validation"),
        (Method::GET, "/invalid?cursor=!!", None, 422, "validation"),
        (Method::GET, "/invalid?colour=red", None, 422, "validation"),
        (
            Method::POST,
            "/invalid/reingest",
            Some(json!({})),
            422,
            "validation",
        ),
        (
            Method::POST,
            "/invalid/reingest",
            Some(json!({"all": true, "reason": "not_json"})),
            422,
            "validation",
        ),
        (
            Method::POST,
            "/invalid/reingest",
            Some(json!({"ids": ["not-a-uuid"]})),
            422,
            "validation",
        ),
        (
            Method::POST,
            "/invalid/purge",
            Some(json!({"reason": "nope", "confirm": true})),
            422,
            "validation",
        ),
        (
            Method::POST,
            "/invalid/reingest",
            Some(json!({"reason": "malformed_task"})),
            422,
            "validation",
        ),
        (
            Method::GET,
            &format!("/invalid/jobs/{}", uuid::Uuid::now_v7()),
            None,
            404,
            "not-found",
        ),
        (
            Method::GET,
            "/invalid/jobs/not-a-uuid",
            None,
            404,
            "not-found",
        ),
    ];
    for (method, path, body, status, kind) in cases {
        let (got, problem) = api.call(method.clone(), path, Some(ADMIN), body).await;
        assert_eq!(
            (got.as_u16(), problem["type"].as_str()),
            (status, Some(format!("urn:herald:problem:{kind}").as_str())),
            "{method} {path}: {problem}"
        );
    }
    let created = api
        .ok(
            Method::POST,
            "/tokens",
            ADMIN,
            Some(json!({"tenant_id": "acme"})),
        )
        .await;
    let tenant = created["token"].as_str().unwrap();
    let (status, job) = api
        .call(
            Method::POST,
            "/invalid/purge",
            Some(ADMIN),
            Some(json!({"ids": [uuid::Uuid::now_v7()], "confirm": true})),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    let job_path = format!("/invalid/jobs/{}", job["id"].as_str().unwrap());
    for (method, path, body) in [
        (Method::GET, "/invalid", None),
        (Method::GET, job_path.as_str(), None),
        (
            Method::POST,
            "/invalid/reingest",
            Some(json!({"all": true})),
        ),
        (
            Method::POST,
            "/invalid/purge",
            Some(json!({"all": true, "confirm": true})),
        ),
    ] {
        let (status, problem) = api.call(method.clone(), path, Some(tenant), body).await;
        assert_eq!(status, 403, "{method} {path}: {problem}");
        assert_eq!(problem["type"], "urn:herald:problem:forbidden");
    }
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_lists_reingests_and_purges_parked_messages() {
    let env = TestEnv::with(|s| s.ingest.max_body_bytes = SMALL_LIMIT).await;
    let receiver = Receiver::start().await;
    env.add_endpoint(&receiver.url("/all"), &["#"], None).await;
    let app = env.start_ready().await;
    park_three(&env, &receiver).await;

    let (ok, listed, err) = cli(&env, &["invalid", "list", "--reason", "too_large"]);
    assert!(ok, "{err}");
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["message_id"], "too-big");
    // Through the API, the same list.
    let api_url = format!("http://{}", app.address());
    let (ok, remote, err) = cli(
        &env,
        &[
            "--api",
            &api_url,
            "--token",
            ADMIN,
            "invalid",
            "list",
            "--reason",
            "too_large",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(without_counts(&remote), without_counts(&listed));

    let app = restart_fixed(&env, app).await;
    let api_url = format!("http://{}", app.address());
    let (ok, done, err) = cli(
        &env,
        &[
            "invalid",
            "reingest",
            "--id",
            listed[0]["id"].as_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(
        (&done["state"], &done["reingested"], &done["seen"]),
        (&json!("done"), &json!(1), &json!(3)),
        "{done}"
    );
    assert!(
        err.contains(&format!(
            "reingest {}: 3/3 1 reingested, 0 skipped, finished",
            done["id"].as_str().unwrap()
        )),
        "progress: {err}"
    );
    eventually(
        "the fixed message delivered",
        Duration::from_secs(15),
        || async {
            receiver
                .received()
                .iter()
                .filter(|r| r.header("webhook-id") == "too-big")
                .count()
                == 1
        },
    )
    .await;

    let (ok, _, err) = cli(&env, &["invalid", "purge", "--all"]);
    assert!(!ok && err.contains("--yes"), "{err}");
    let (ok, _, err) = cli(
        &env,
        &["invalid", "purge", "--all", "--reason", "no_type", "--yes"],
    );
    assert!(!ok, "one selection at a time: {err}");
    let (ok, purged, err) = cli(
        &env,
        &[
            "--api", &api_url, "--token", ADMIN, "invalid", "purge", "--reason", "no_type", "--yes",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(
        (&purged["state"], &purged["purged"]),
        (&json!("done"), &json!(1)),
        "followed to its end: {purged}"
    );
    assert!(err.contains("1 purged, finished"), "progress: {err}");
    let (ok, purged, err) = cli(&env, &["invalid", "purge", "--all", "--yes"]);
    assert!(ok, "{err}");
    assert_eq!(purged["purged"], 1, "{purged}");
    depth_settles_at(&env, 0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        receiver.count(),
        2,
        "the good event and the fixed one, once each"
    );
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reingest_is_answered_202_at_once_and_another_api_process_follows_it_to_done() {
    let env = TestEnv::with(|s| s.ingest.max_body_bytes = SMALL_LIMIT).await;
    let receiver = Receiver::start().await;
    env.add_endpoint(&receiver.url("/all"), &["#"], None).await;
    let app = env.start_ready().await;
    park_three(&env, &receiver).await;
    let app = restart_fixed(&env, app).await;
    // A second api process, sharing only the database and the broker.
    let other = env.start(Role::Api).await;
    wait_ready(&other).await;

    let response = reqwest::Client::new()
        .post(format!("http://{}/api/v1/invalid/reingest", app.address()))
        .bearer_auth(ADMIN)
        .json(&json!({"all": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let job: Value = response.json().await.unwrap();
    assert_eq!(
        location,
        format!("/api/v1/invalid/jobs/{}", job["id"].as_str().unwrap())
    );
    assert_eq!(
        (&job["kind"], &job["state"], &job["reingested"]),
        (&json!("reingest"), &json!("running"), &json!(0)),
        "answered before the walk: {job}"
    );
    assert_eq!(
        job["selection"],
        json!({"all": true, "ids": [], "reason": null})
    );

    let done = follow(&Api::new(&other), job).await;
    assert_eq!(
        (
            &done["depth"],
            &done["seen"],
            &done["reingested"],
            &done["purged"],
            &done["skipped"]
        ),
        (&json!(3), &json!(3), &json!(3), &json!(0), &json!(0)),
        "{done}"
    );
    assert_eq!(
        done["by_reason"],
        json!({"not_json": 1, "too_large": 1, "no_type": 1})
    );
    assert_eq!(done["not_found"], json!([]));
    assert_eq!(done["error"], Value::Null);
    assert!(done["finished_at"].is_string(), "{done}");
    // The one the fix lets through is delivered; the two still refused are parked again.
    eventually(
        "the fixed message delivered",
        Duration::from_secs(15),
        || async { receiver.count() == 2 },
    )
    .await;
    depth_settles_at(&env, 2).await;
    other.stop().await;
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_failed_for_want_of_progress_stays_failed_when_its_slow_process_comes_back() {
    use herald::service::invalid_jobs::{self, Kind, STALE, STALE_ERROR};
    use herald::store::invalid_jobs::{self as store, Selected};

    let env = TestEnv::with(|s| s.ingest.max_body_bytes = SMALL_LIMIT).await;
    let receiver = Receiver::start().await;
    env.add_endpoint(&receiver.url("/all"), &["#"], None).await;
    let app = env.start_ready().await;
    let api = Api::new(&app);
    park_three(&env, &receiver).await;

    let given = Selected {
        ids: vec![uuid::Uuid::now_v7()],
        ..Selected::default()
    };
    let admin = herald::service::Caller::Admin;
    let job = invalid_jobs::start(&env.pool, &admin, Kind::Purge, given, true)
        .await
        .unwrap();
    let stale = chrono::Duration::from_std(STALE).unwrap();
    assert!(
        store::fail_stale(&env.pool, stale, STALE_ERROR)
            .await
            .unwrap()
            .is_empty(),
        "a job just started is not stale"
    );
    // Its process went quiet for two minutes.
    sqlx::query(
        "UPDATE herald.invalid_jobs SET updated_at = now() - interval '2 minutes' WHERE id = $1",
    )
    .bind(job.id)
    .execute(&env.pool)
    .await
    .unwrap();
    let swept = store::fail_stale(&env.pool, stale, STALE_ERROR)
        .await
        .unwrap();
    assert_eq!(swept, vec![job.id]);
    let path = format!("/invalid/jobs/{}", job.id);
    let failed = api.ok(Method::GET, &path, ADMIN, None).await;
    assert_eq!(
        (&failed["state"], &failed["error"]),
        (&json!("failed"), &json!(STALE_ERROR)),
        "{failed}"
    );

    // The process was only slow: at its next chunk it finds the job failed and stops.
    let resumed = invalid_jobs::run(&env.settings, &env.pool, job, |_| {}).await;
    assert!(
        matches!(resumed, Err(herald::service::ServiceError::Conflict(_))),
        "{resumed:?}"
    );
    let after = api.ok(Method::GET, &path, ADMIN, None).await;
    assert_eq!(after, failed, "still failed, as the sweep left it");
    depth_settles_at(&env, 3).await;
    app.stop().await;
    env.cleanup().await;
}
