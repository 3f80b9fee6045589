//! The SRE's dead-letter workflow through the real broker and database: listing by
//! every filter with a total, purging (records kept, copies swept), redriving by
//! tenant and with endpoints enabled, and a long redrive's progress from the CLI,
//! locally and through the API.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

use herald::service::dlq;
use herald::service::{Caller, PageRequest};
use herald::store::dlq::Filter;

use crate::admin_api::herald;
use crate::common::receiver::{Receiver, Reply};
use crate::common::{amqp_header, eventually, TestEnv};
use crate::tenants::{Api, ADMIN};

async fn total(env: &TestEnv, filter: Filter) -> i64 {
    dlq::list(&env.pool, &Caller::Admin, filter, PageRequest::default())
        .await
        .unwrap()
        .total
}

/// Polls a job through the API until it ends.
async fn finished(api: &Api, token: &str, job: &Value) -> Value {
    let path = format!("/dlq/jobs/{}", job["id"].as_str().unwrap());
    let mut job = job.clone();
    let started = std::time::Instant::now();
    while job["state"] == "running" {
        assert!(started.elapsed() < Duration::from_secs(60), "{job}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        job = api.ok(Method::GET, &path, token, None).await;
    }
    job
}

/// Six dead deliveries: three of acme's orders to A (retries exhausted), acme's
/// inventory event to C, an endpoint of no tenant (retries exhausted), and two of
/// globex's invoices to B: the first fails once and waits for its retry, the second
/// answers 410 (gone: B disabled), so the retry of the first finds B disabled.
struct Dead {
    a: Uuid,
    b: Uuid,
    c: Uuid,
}

/// One retry, a second later.
fn one_retry(s: &mut herald::config::Settings) {
    s.delivery.retry_schedule = vec![Duration::from_secs(1)];
}

fn replies(path: &str, nth: usize) -> Reply {
    match (path, nth) {
        ("/b", 1) => Reply::status(500),
        ("/b", _) => Reply::status(410),
        _ => Reply::status(500),
    }
}

async fn six_dead(env: &TestEnv, receiver: &Receiver) -> Dead {
    let a = env
        .add_endpoint(&receiver.url("/a"), &["sales.#"], Some("acme"))
        .await
        .id;
    let b = env
        .add_endpoint(&receiver.url("/b"), &["billing.#"], Some("globex"))
        .await
        .id;
    let c = env
        .add_endpoint(&receiver.url("/c"), &["inventory.#"], None)
        .await
        .id;
    for n in 0..3 {
        env.publish(
            "sales.order.created",
            Some(&format!("o-{n}")),
            Some("acme"),
            b"{}",
        )
        .await;
    }
    env.publish("inventory.low", Some("i-1"), Some("acme"), b"{}")
        .await;
    env.publish("billing.invoice.paid", Some("inv-1"), Some("globex"), b"{}")
        .await;
    eventually("inv-1 tried once", Duration::from_secs(15), || async {
        receiver.received_at("/b").len() == 1
    })
    .await;
    env.publish("billing.invoice.paid", Some("inv-2"), Some("globex"), b"{}")
        .await;
    eventually("six dead", Duration::from_secs(20), || async {
        env.delivery_statuses().await == vec![("failed".to_string(), 6)]
    })
    .await;
    let dlq = env.topology().dlq();
    eventually("six copies parked", Duration::from_secs(10), || async {
        env.queue_depth(&dlq).await == 6
    })
    .await;
    Dead { a, b, c }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dead_letter_queue_lists_by_each_filter_and_a_purge_keeps_the_records() {
    let env = TestEnv::with(one_retry).await;
    let receiver = Receiver::scripted(replies).await;
    let app = env.start_ready().await;
    let dead = six_dead(&env, &receiver).await;
    let after_all = chrono::Utc::now();

    let by = |f: fn(&mut Filter)| {
        let mut filter = Filter::default();
        f(&mut filter);
        filter
    };
    let cases: Vec<(&str, Filter, i64)> = vec![
        ("everything", Filter::default(), 6),
        (
            "endpoint A",
            Filter {
                endpoint_id: Some(dead.a),
                ..Filter::default()
            },
            3,
        ),
        (
            "endpoint C",
            Filter {
                endpoint_id: Some(dead.c),
                ..Filter::default()
            },
            1,
        ),
        ("tenant acme", by(|f| f.tenant_id = Some("acme".into())), 4),
        (
            "tenant globex",
            by(|f| f.tenant_id = Some("globex".into())),
            2,
        ),
        ("gone", by(|f| f.reason = Some("gone".into())), 1),
        (
            "disabled",
            by(|f| f.reason = Some("endpoint_disabled".into())),
            1,
        ),
        (
            "exhausted",
            by(|f| f.reason = Some("retries_exhausted".into())),
            4,
        ),
        (
            "event type",
            by(|f| f.event_type = Some("inventory.low".into())),
            1,
        ),
        (
            "since later",
            Filter {
                since: Some(after_all),
                ..Filter::default()
            },
            0,
        ),
        (
            "until later",
            Filter {
                until: Some(after_all),
                ..Filter::default()
            },
            6,
        ),
        (
            "acme's orders to A",
            Filter {
                tenant_id: Some("acme".into()),
                endpoint_id: Some(dead.a),
                event_type: Some("sales.order.created".into()),
                ..Filter::default()
            },
            3,
        ),
    ];
    for (what, filter, expected) in cases {
        assert_eq!(total(&env, filter).await, expected, "{what}");
    }

    // Through the API: pages of two, the total on each, newest first, with reasons.
    let api = Api::new(&app);
    let mut seen = Vec::new();
    let mut path = "/dlq?limit=2".to_string();
    loop {
        let page = api.ok(Method::GET, &path, ADMIN, None).await;
        assert_eq!(page["total"], 6, "{page}");
        for row in page["data"].as_array().unwrap() {
            assert!(
                row["reason"].is_string() && row["dead_at"].is_string(),
                "{row}"
            );
            seen.push(row["id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/dlq?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort_by(|x, y| y.cmp(x));
    assert_eq!(
        (seen.len(), &seen),
        (6, &sorted),
        "every one once, newest first"
    );
    let gone = api.ok(Method::GET, "/dlq?reason=gone", ADMIN, None).await;
    assert_eq!(gone["data"][0]["endpoint_id"], dead.b.to_string());
    assert_eq!(gone["data"][0]["endpoint_enabled"], false);
    let (status, problem) = api
        .call(
            Method::GET,
            "/dlq?since=2030-01-01T00:00:00Z&until=2020-01-01T00:00:00Z",
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(
        (status.as_u16(), &problem["errors"][0]["field"]),
        (422, &json!("until"))
    );

    // Purge A's three: their records stay failed, noting when; their copies go.
    let job = api
        .ok(
            Method::POST,
            "/dlq/purge",
            ADMIN,
            Some(json!({"endpoint_id": dead.a, "reason": "retries_exhausted", "confirm": true})),
        )
        .await;
    assert_eq!(job["matched"], 3);
    let job = finished(&api, ADMIN, &job).await;
    assert_eq!(
        (&job["state"], &job["processed"], &job["swept"]),
        (&json!("done"), &json!(3), &json!(3)),
        "{job}"
    );
    assert_eq!(
        env.count(&format!(
            "SELECT count(*) FROM herald.deliveries
             WHERE endpoint_id = '{}' AND status = 'failed' AND purged_at IS NOT NULL",
            dead.a
        ))
        .await,
        3
    );
    assert_eq!(total(&env, Filter::default()).await, 3);
    let left: Vec<String> = env
        .drain(&env.topology().dlq())
        .await
        .iter()
        .filter_map(|m| amqp_header(m, "x-herald-endpoint-id"))
        .collect();
    let mut left = left;
    left.sort();
    let mut expected = vec![dead.b.to_string(), dead.b.to_string(), dead.c.to_string()];
    expected.sort();
    assert_eq!(left, expected, "the other copies stay parked");
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_redrives_only_its_own_and_a_disabled_endpoint_only_when_enabling_it() {
    let env = TestEnv::with(one_retry).await;
    let receiver = Receiver::scripted(replies).await;
    let app = env.start_ready().await;
    let dead = six_dead(&env, &receiver).await;
    let api = Api::new(&app);
    let token = |tenant: &'static str| {
        let api = &api;
        async move {
            api.ok(
                Method::POST,
                "/tokens",
                ADMIN,
                Some(json!({"tenant_id": tenant})),
            )
            .await["token"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let (acme, globex) = (token("acme").await, token("globex").await);
    receiver.set_script(|_, _| Reply::status(200));

    // acme's "all" is every dead delivery to acme's endpoints: A's three, not C's.
    let job = api
        .ok(
            Method::POST,
            "/dlq/redrive",
            &acme,
            Some(json!({"all": true})),
        )
        .await;
    let job = finished(&api, &acme, &job).await;
    assert_eq!(
        (&job["matched"], &job["processed"]),
        (&json!(3), &json!(3)),
        "{job}"
    );
    eventually("A's three delivered", Duration::from_secs(15), || async {
        receiver.received_at("/a").len() == 9
    })
    .await;
    // A purge by another tenant's token selects nothing of acme's or C's.
    let job = api
        .ok(
            Method::POST,
            "/dlq/purge",
            &globex,
            Some(json!({"tenant_id": "acme", "confirm": true})),
        )
        .await;
    assert_eq!(job["matched"], 0);
    assert_eq!(total(&env, Filter::default()).await, 3);
    let (status, _) = api
        .call(
            Method::GET,
            &format!("/dlq/jobs/{}", job["id"].as_str().unwrap()),
            Some(&acme),
            None,
        )
        .await;
    assert_eq!(status, 404, "another tenant's job is not found");

    // globex's: B is disabled (410), so refused with the reason…
    let job = api
        .ok(
            Method::POST,
            "/dlq/redrive",
            &globex,
            Some(json!({"all": true})),
        )
        .await;
    let job = finished(&api, &globex, &job).await;
    assert_eq!(
        (&job["processed"], &job["refused"]),
        (&json!(0), &json!(2)),
        "{job}"
    );
    assert_eq!(
        job["refusals"][dead.b.to_string()],
        json!({"reason": "endpoint_disabled", "deliveries": 2})
    );
    // …until the redrive enables it.
    let job = api
        .ok(
            Method::POST,
            "/dlq/redrive",
            &globex,
            Some(json!({"all": true, "enable_endpoints": true})),
        )
        .await;
    let job = finished(&api, &globex, &job).await;
    assert_eq!(
        (&job["processed"], &job["refused"]),
        (&json!(2), &json!(0)),
        "{job}"
    );
    assert_eq!(job["enabled_endpoints"], json!([dead.b]));
    eventually("B's two delivered", Duration::from_secs(15), || async {
        receiver.received_at("/b").len() == 4
    })
    .await;
    let b = api
        .ok(Method::GET, &format!("/endpoints/{}", dead.b), ADMIN, None)
        .await;
    assert_eq!(b["state"], "enabled", "{b}");
    eventually("only C's copy left", Duration::from_secs(10), || async {
        env.queue_depth(&env.topology().dlq()).await == 1
    })
    .await;
    assert_eq!(total(&env, Filter::default()).await, 1);
    app.stop().await;
    env.cleanup().await;
}

/// Dead deliveries written straight into the records (no copies in the queue), as a
/// large dead-letter queue would hold them.
async fn seed_dead(env: &TestEnv, endpoint: Uuid, prefix: &str, count: i64) {
    sqlx::query(
        "INSERT INTO herald.events (id, type, tenant_id, occurred_at, payload, received_at)
         SELECT $2 || n, 'sales.order.created', NULL, now(), '{}'::json, now()
         FROM generate_series(1, $1) AS n",
    )
    .bind(count)
    .bind(prefix)
    .execute(&env.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO herald.deliveries
             (id, tenant_key, event_id, endpoint_id, status, attempts, last_error, dead_reason, dead_at)
         SELECT herald.uuid_v7(now()), '', $3 || n, $2, 'failed', 3,
                'retries_exhausted: HTTP 500', 'retries_exhausted', now()
         FROM generate_series(1, $1) AS n",
    )
    .bind(count)
    .bind(endpoint)
    .bind(prefix)
    .execute(&env.pool)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_redrive_shows_its_progress_and_prints_the_finished_job() {
    let env = TestEnv::new().await;
    let receiver = Receiver::start().await;
    let endpoint = env
        .add_endpoint(&receiver.url("/r"), &["sales.#"], None)
        .await;
    let app = env.start_ready().await;
    seed_dead(&env, endpoint.id, "seed-", 12_000).await;

    let started = std::time::Instant::now();
    let (ok, job, stderr) = herald(&env, &["dlq", "redrive", "--all"]);
    assert!(ok, "{stderr}");
    assert_eq!(
        (&job["state"], &job["matched"], &job["processed"]),
        (&json!("done"), &json!(12_000), &json!(12_000)),
        "{job}"
    );
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("redrive "))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("/12000") && !l.contains(" 12000/") && !l.contains(" 0/")),
        "progress while it ran: {lines:?}"
    );
    assert!(
        lines
            .last()
            .is_some_and(|l| l.contains("12000/12000") && l.ends_with("finished")),
        "{lines:?}"
    );
    eprintln!("redrive of 12,000 took {:?}", started.elapsed());
    eventually(
        "every one delivered once",
        Duration::from_secs(60),
        || async { env.delivery_statuses().await == vec![("success".to_string(), 12_000)] },
    )
    .await;
    assert_eq!(receiver.received_at("/r").len(), 12_000, "none twice");

    // Through the API, the CLI follows the job the same way.
    seed_dead(&env, endpoint.id, "more-", 5).await;
    let base = format!("http://{}", app.address());
    let (ok, job, stderr) = herald(
        &env,
        &[
            "--api",
            &base,
            "--token",
            crate::tenants::ADMIN,
            "dlq",
            "redrive",
            "--reason",
            "retries_exhausted",
        ],
    );
    assert!(ok, "{stderr}");
    assert_eq!(
        (&job["state"], &job["processed"]),
        (&json!("done"), &json!(5)),
        "{job}"
    );
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("5/5") && l.ends_with("finished")),
        "{stderr}"
    );
    let (ok, _, stderr) = herald(&env, &["dlq", "purge", "--all"]);
    assert!(!ok && stderr.contains("--yes"), "{stderr}");
    app.stop().await;
    env.cleanup().await;
}
