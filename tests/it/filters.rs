//! Payload filters through the real broker and database: an endpoint with a filter
//! receives only the events it passes, a change of filter through the API reaches the
//! subscription cache of another process, and an invalid filter is refused by the API
//! and the command line alike.

use std::time::Duration;

use herald::Role;
use reqwest::Method;
use serde_json::{json, Value};

use crate::admin_api::herald;
use crate::common::receiver::Receiver;
use crate::common::{eventually, wait_ready, TestEnv};

const ADMIN: &str = "test-admin-token";

/// Calls the admin API as the admin: (status, body as JSON).
async fn call(base: &str, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .request(method, format!("{base}{path}"))
        .bearer_auth(ADMIN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The `data.n` of every event a path received, sorted.
fn numbers(receiver: &Receiver, path: &str) -> Vec<i64> {
    let mut n: Vec<i64> = receiver
        .received_at(path)
        .iter()
        .map(|r| {
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            body["data"]["n"].as_i64().unwrap_or(-1)
        })
        .collect();
    n.sort();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_with_a_filter_receives_only_what_passes_and_a_new_filter_reaches_every_process(
) {
    let env = TestEnv::new().await;
    let receiver = Receiver::start().await;
    // The API in one process, ingest (and first attempts) in another: the change of
    // filter has to travel through the database to the other's subscription cache.
    let api = env.start(Role::Api).await;
    wait_ready(&api).await;
    let base = format!("http://{}/api/v1", api.address());
    let (status, all) = call(
        &base,
        Method::POST,
        "/endpoints",
        Some(json!({"url": receiver.url("/all"), "event_types": ["sales.order.*"]})),
    )
    .await;
    assert_eq!(status, 201, "{all}");
    assert_eq!(all["filter"], Value::Null);
    let filter = json!({"data.amount": {"$gte": 1000}, "data.currency": {"$in": ["EUR", "USD"]}});
    let (status, big) = call(
        &base,
        Method::POST,
        "/endpoints",
        Some(
            json!({"url": receiver.url("/big"), "event_types": ["sales.order.*"],
                    "filter": filter}),
        ),
    )
    .await;
    assert_eq!(status, 201, "{big}");
    assert_eq!(big["filter"], filter);
    let big_id = big["id"].as_str().unwrap().to_string();
    let ingest = env.start(Role::Ingest).await;
    wait_ready(&ingest).await;

    let events = [
        json!({"n": 1, "amount": 1500, "currency": "EUR"}),
        json!({"n": 2, "amount": 999, "currency": "EUR"}),
        json!({"n": 3, "amount": 1000.0, "currency": "USD"}),
        json!({"n": 4, "amount": 5000, "currency": "GBP"}),
        json!({"n": 5, "amount": "1500", "currency": "EUR"}),
        json!({"n": 6, "currency": "EUR"}),
    ];
    for (n, data) in events.iter().enumerate() {
        let id = format!("evt-f-{}", n + 1);
        env.publish(
            "sales.order.created",
            Some(&id),
            None,
            data.to_string().as_bytes(),
        )
        .await;
    }
    eventually("eight deliveries", Duration::from_secs(15), || async {
        receiver.count() >= 8
    })
    .await;
    // Give a wrongly passed event the chance to show up before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(numbers(&receiver, "/all"), [1, 2, 3, 4, 5, 6]);
    assert_eq!(
        numbers(&receiver, "/big"),
        [1, 3],
        "at least 1000, in EUR or USD, a number"
    );
    let recorded = env
        .count(&format!(
            "SELECT count(*) FROM herald.deliveries WHERE endpoint_id = '{big_id}'"
        ))
        .await;
    assert_eq!(recorded, 2, "an event the filter refuses makes no delivery");
    let metrics = reqwest::get(format!("http://{}/metrics", ingest.address()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "herald_deliveries_filtered_total 4"),
        "four events refused by the filter, counted by the ingest process:\n{metrics}"
    );

    // A new filter through the API: the ingest process follows.
    let gbp = json!({"data.currency": "GBP"});
    let (status, changed) = call(
        &base,
        Method::PATCH,
        &format!("/endpoints/{big_id}"),
        Some(json!({"filter": gbp})),
    )
    .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["filter"], gbp);
    probe_until(&env, &receiver, "/big", 100, json!({"currency": "GBP"})).await;
    let before = receiver.received_at("/big").len();
    for (n, data) in [
        json!({"n": 7, "amount": 10, "currency": "GBP"}),
        json!({"n": 8, "amount": 1500, "currency": "EUR"}),
    ]
    .iter()
    .enumerate()
    {
        let id = format!("evt-f-{}", n + 7);
        env.publish(
            "sales.order.created",
            Some(&id),
            None,
            data.to_string().as_bytes(),
        )
        .await;
    }
    eventually("two more at /all", Duration::from_secs(15), || async {
        {
            let all = numbers(&receiver, "/all");
            all.contains(&7) && all.contains(&8)
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after: Vec<i64> = numbers(&receiver, "/big")
        .into_iter()
        .filter(|n| *n < 100)
        .collect();
    assert_eq!(after, [1, 3, 7], "the new filter alone");
    assert_eq!(receiver.received_at("/big").len(), before + 1);

    // `null` removes the filter: every event of its types again.
    let (status, cleared) = call(
        &base,
        Method::PATCH,
        &format!("/endpoints/{big_id}"),
        Some(json!({"filter": null})),
    )
    .await;
    assert_eq!(status, 200, "{cleared}");
    assert_eq!(cleared["filter"], Value::Null);
    probe_until(&env, &receiver, "/big", 200, json!({"currency": "JPY"})).await;

    ingest.stop().await;
    api.stop().await;
    env.cleanup().await;
}

/// Publishes events `data` (numbered from `first`) until one reaches `path`: the
/// ingest process's cache has taken the change.
async fn probe_until(env: &TestEnv, receiver: &Receiver, path: &str, first: i64, data: Value) {
    let mut n = first;
    eventually(
        "the change to reach ingest",
        Duration::from_secs(15),
        || {
            n += 1;
            let mut data = data.clone();
            data["n"] = json!(n);
            async move {
                env.publish(
                    "sales.order.created",
                    Some(&format!("evt-probe-{n}")),
                    None,
                    data.to_string().as_bytes(),
                )
                .await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                numbers(receiver, path).iter().any(|m| *m > first)
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_filter_is_refused_by_the_api_and_the_command_line_naming_the_clause() {
    let env = TestEnv::new().await;
    let api = env.start(Role::Api).await;
    wait_ready(&api).await;
    let base = format!("http://{}/api/v1", api.address());
    let invalid = json!({"$or": [{"data.amount": {"$regex": "^1"}}]});
    let (status, problem) = call(
        &base,
        Method::POST,
        "/endpoints",
        Some(json!({"url": "http://127.0.0.1:9/x", "event_types": ["a.b"], "filter": invalid})),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "filter", "{problem}");
    let message = problem["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("`$or[0].data.amount.$regex`") && message.contains("unknown operator"),
        "{problem}"
    );
    assert_eq!(env.count("SELECT count(*) FROM herald.endpoints").await, 0);

    // An update with an invalid filter changes nothing.
    let kept = json!({"type": "a.b"});
    let (status, created) = call(
        &base,
        Method::POST,
        "/endpoints",
        Some(json!({"url": "http://127.0.0.1:9/x", "event_types": ["a.b"], "filter": kept})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let (status, problem) = call(
        &base,
        Method::PATCH,
        &format!("/endpoints/{id}"),
        Some(json!({"filter": {"data.a": {}}, "name": "renamed"})),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "filter", "{problem}");
    let (_, shown) = call(&base, Method::GET, &format!("/endpoints/{id}"), None).await;
    assert_eq!((&shown["filter"], &shown["name"]), (&kept, &Value::Null));
    api.stop().await;

    // The command line: refused (non-zero exit, the reason on stderr), accepted, removed.
    let add = |filter: &str| {
        herald(
            &env,
            &[
                "endpoint",
                "add",
                "--url",
                "http://127.0.0.1:9/cli",
                "--event-type",
                "a.b",
                "--filter",
                filter,
            ],
        )
    };
    let (ok, _, stderr) = add(r#"{"amount": {"$gte": 5}}"#);
    assert!(!ok, "an unknown root is refused");
    assert!(
        stderr.contains("filter") && stderr.contains("`amount`"),
        "{stderr}"
    );
    let (ok, _, stderr) = add("{not json");
    assert!(!ok, "text that is not JSON is refused");
    assert!(stderr.contains("not JSON"), "{stderr}");
    assert_eq!(env.count("SELECT count(*) FROM herald.endpoints").await, 1);
    let (ok, added, stderr) = add(r#"{"data.amount": {"$gte": 5}}"#);
    assert!(ok, "{stderr}");
    assert_eq!(added["filter"], json!({"data.amount": {"$gte": 5}}));
    let id = added["id"].as_str().unwrap();
    let (ok, updated, stderr) = herald(&env, &["endpoint", "update", id, "--no-filter"]);
    assert!(ok, "{stderr}");
    assert_eq!(updated["filter"], Value::Null);
    env.cleanup().await;
}

#[tokio::test]
async fn endpoints_of_a_database_from_before_filters_load_without_one() {
    let env = TestEnv::unmigrated().await;
    let before = sqlx::migrate::Migrator {
        migrations: std::borrow::Cow::Owned(
            herald::store::MIGRATOR
                .iter()
                .filter(|m| m.version < 20261207000002)
                .cloned()
                .collect(),
        ),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    before.run(&env.pool).await.expect("the earlier migrations");
    let id = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO herald.endpoints (id, url, event_types, secret)
         VALUES ($1, 'https://example.com/hook', '{sales.#}', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw')",
    )
    .bind(id)
    .execute(&env.pool)
    .await
    .unwrap();
    herald::store::migrate(&env.pool)
        .await
        .expect("migrate to the latest");
    let active = herald::store::endpoints::load_active(&env.pool, &env.keys())
        .await
        .unwrap();
    assert_eq!(active.len(), 1);
    assert_eq!((active[0].id, active[0].filter.is_none()), (id, true));
    // The column takes an object only.
    let refused = sqlx::query("UPDATE herald.endpoints SET filter = '[1]'::jsonb")
        .execute(&env.pool)
        .await;
    assert!(refused.is_err(), "a filter is a JSON object");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_sends_only_the_stored_events_the_endpoints_filter_passes() {
    let env = TestEnv::new().await;
    let receiver = Receiver::start().await;
    let app = env.start_ready().await;
    for n in 0..4 {
        let data = json!({ "n": n });
        env.publish(
            "sales.order.created",
            Some(&format!("old-{n}")),
            None,
            data.to_string().as_bytes(),
        )
        .await;
    }
    eventually("stored", Duration::from_secs(10), || async {
        env.count("SELECT count(*) FROM herald.events").await == 4
    })
    .await;
    let (ok, added, stderr) = herald(
        &env,
        &[
            "endpoint",
            "add",
            "--url",
            &receiver.url("/late"),
            "--event-type",
            "sales.#",
            "--filter",
            r#"{"data.n": {"$in": [1, 3]}}"#,
        ],
    );
    assert!(ok, "{stderr}");
    let id = added["id"].as_str().unwrap();
    let since = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let (ok, done, stderr) = herald(&env, &["replay", "--endpoint", id, "--since", &since]);
    assert!(ok, "{stderr}");
    assert_eq!(
        (&done["matched"], &done["sent"], &done["skipped"]),
        (&json!(4), &json!(2), &json!(2)),
        "matched by type; the filter's refusals skipped"
    );
    eventually("two replayed", Duration::from_secs(30), || async {
        receiver.count() >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(numbers(&receiver, "/late"), [1, 3]);
    assert_eq!(env.count("SELECT count(*) FROM herald.deliveries").await, 2);
    app.stop().await;
    env.cleanup().await;
}
