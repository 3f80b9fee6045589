//! The admin API's record lists (`/deliveries`, `/events`, `/dlq`) over several UTC day
//! partitions: five past days seeded as an earlier version wrote them (no event type
//! on the delivery rows: the database fills it in) plus today's events through the real
//! broker; every filter selects exactly its rows and `next_cursor` pages walk them
//! newest first, each row once, across the days.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Duration as Days, Utc};
use reqwest::Method;
use serde_json::json;
use uuid::Uuid;

use crate::common::receiver::Receiver;
use crate::common::{eventually, TestEnv};
use crate::tenants::{Api, ADMIN};

/// What one seeded or published event is.
struct Seeded {
    id: String,
    event_type: &'static str,
    tenant: Option<&'static str>,
    endpoint: Uuid,
    failed: bool,
    at: DateTime<Utc>,
}

/// One event and its delivery (with one attempt), as Herald writes them on `at`'s day.
async fn seed(env: &TestEnv, s: &Seeded) {
    let tenant = s.tenant.map_or("NULL".to_string(), |t| format!("'{t}'"));
    let (status, dead) = if s.failed {
        ("failed", "'retries_exhausted', '{at}'")
    } else {
        ("success", "NULL, NULL")
    };
    let dead = dead.replace("{at}", &s.at.to_rfc3339());
    sqlx::raw_sql(&format!(
        "INSERT INTO herald.events (id, type, tenant_id, occurred_at, payload, received_at)
             VALUES ('{id}', '{ty}', {tenant}, '{at}', '{{}}', '{at}');
         WITH d AS (
             INSERT INTO herald.deliveries (id, tenant_key, event_id, endpoint_id, status, attempts,
                                            last_status_code, created_at, updated_at,
                                            dead_reason, dead_at)
             VALUES (herald.uuid_v7('{at}'), coalesce({tenant}, ''), '{id}', '{endpoint}',
                     '{status}', 1, 500, '{at}', '{at}', {dead})
             RETURNING id)
         INSERT INTO herald.delivery_attempts (delivery_id, attempt, status_code, duration_ms, attempted_at)
             SELECT id, 1, 500, 3, '{at}' FROM d;",
        id = s.id,
        ty = s.event_type,
        at = s.at.to_rfc3339(),
        endpoint = s.endpoint,
    ))
    .execute(&env.pool)
    .await
    .expect("seed a day");
}

/// Every row of a list, following `next_cursor` pages of `limit`; the rows' `key`s, in
/// the order answered, and how many pages it took.
async fn walk(api: &Api, token: &str, path: &str, limit: usize, key: &str) -> (Vec<String>, usize) {
    let sep = if path.contains('?') { '&' } else { '?' };
    let first = format!("{path}{sep}limit={limit}");
    let (mut rows, mut pages, mut next) = (Vec::new(), 0, first.clone());
    loop {
        let page = api.ok(Method::GET, &next, token, None).await;
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= limit, "{next}: {page}");
        rows.extend(data.iter().map(|r| r[key].as_str().unwrap().to_string()));
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(cursor) => next = format!("{first}&cursor={cursor}"),
            None => break,
        }
        assert!(pages < 100, "{path}: no end");
    }
    (rows, pages)
}

/// The event ids of `events` that `keep` selects, newest first.
fn newest_first(events: &[Seeded], keep: impl Fn(&Seeded) -> bool) -> Vec<String> {
    let mut picked: Vec<&Seeded> = events.iter().filter(|s| keep(s)).collect();
    picked.sort_by(|a, b| b.at.cmp(&a.at).then(b.id.cmp(&a.id)));
    picked.iter().map(|s| s.id.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_lists_filter_and_page_across_day_partitions() {
    let env = TestEnv::new().await;
    let receiver = Receiver::start().await;
    let acme = env
        .add_endpoint(&receiver.url("/acme"), &["sales.#"], Some("acme"))
        .await
        .endpoint
        .id;
    let globex = env
        .add_endpoint(&receiver.url("/globex"), &["billing.#"], Some("globex"))
        .await
        .endpoint
        .id;
    let shared = env
        .add_endpoint(&receiver.url("/shared"), &["inventory.#"], None)
        .await
        .endpoint
        .id;
    let now = Utc::now();
    herald::store::retention::create_partitions(&env.pool, now - Days::days(5), now)
        .await
        .unwrap();
    // Days 5 to 1 back: per day acme's order, globex's invoice (dead-lettered) and an
    // inventory event of no tenant, a minute apart.
    let mut events = Vec::new();
    for day in (1..=5).rev() {
        let at = now - Days::days(day);
        events.push(Seeded {
            id: format!("d{day}-order"),
            event_type: "sales.order.created",
            tenant: Some("acme"),
            endpoint: acme,
            failed: false,
            at,
        });
        events.push(Seeded {
            id: format!("d{day}-invoice"),
            event_type: "billing.invoice.paid",
            tenant: Some("globex"),
            endpoint: globex,
            failed: true,
            at: at + Days::minutes(1),
        });
        events.push(Seeded {
            id: format!("d{day}-stock"),
            event_type: "inventory.stock.moved",
            tenant: None,
            endpoint: shared,
            failed: false,
            at: at + Days::minutes(2),
        });
    }
    for s in &events {
        seed(&env, s).await;
    }

    let app = env.start_ready().await;
    let api = Api::new(&app);
    for n in 0..2 {
        let id = format!("today-order-{n}");
        env.publish("sales.order.created", Some(&id), Some("acme"), b"{}")
            .await;
        // Received in publish order: a separate ingest batch each.
        eventually("today's order recorded", Duration::from_secs(15), || {
            let env = &env;
            let id = id.clone();
            async move {
                env.count(&format!(
                    "SELECT count(*) FROM herald.deliveries
                     WHERE event_id = '{id}' AND status = 'success'"
                ))
                .await
                    == 1
            }
        })
        .await;
        let at: DateTime<Utc> =
            sqlx::query_scalar("SELECT received_at FROM herald.events WHERE id = $1")
                .bind(&id)
                .fetch_one(&env.pool)
                .await
                .unwrap();
        events.push(Seeded {
            id,
            event_type: "sales.order.created",
            tenant: Some("acme"),
            endpoint: acme,
            failed: false,
            at,
        });
    }

    // Every delivery once, newest first, over pages of 2 that cross the days.
    let (all, pages) = walk(&api, ADMIN, "/deliveries", 2, "event_id").await;
    assert_eq!(all, newest_first(&events, |_| true));
    assert_eq!(pages, 9, "17 rows in pages of 2");
    let listed = api
        .ok(Method::GET, "/deliveries?limit=100", ADMIN, None)
        .await;
    for row in listed["data"].as_array().unwrap() {
        let s = events.iter().find(|s| s.id == row["event_id"]).unwrap();
        assert_eq!(row["event_type"], s.event_type, "{row}");
        assert_eq!(row["tenant_id"], json!(s.tenant), "{row}");
        assert_eq!(row["endpoint_id"], s.endpoint.to_string(), "{row}");
    }

    // Each filter, alone and together, paged.
    let since = (now - Days::days(3) - Days::minutes(30))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let until = (now - Days::days(1) - Days::minutes(30))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let cases: Vec<(String, Vec<String>)> = vec![
        (
            "/deliveries?status=failed".into(),
            newest_first(&events, |s| s.failed),
        ),
        (
            "/deliveries?status=success".into(),
            newest_first(&events, |s| !s.failed),
        ),
        ("/deliveries?status=retrying".into(), Vec::new()),
        (
            format!("/deliveries?endpoint_id={acme}"),
            newest_first(&events, |s| s.endpoint == acme),
        ),
        (
            "/deliveries?event_type=billing.invoice.paid".into(),
            newest_first(&events, |s| s.event_type == "billing.invoice.paid"),
        ),
        (
            "/deliveries?tenant_id=acme".into(),
            newest_first(&events, |s| s.tenant == Some("acme")),
        ),
        (
            format!("/deliveries?since={since}&until={until}"),
            newest_first(&events, |s| {
                s.at >= now - Days::days(3) - Days::minutes(30)
                    && s.at < now - Days::days(1) - Days::minutes(30)
            }),
        ),
        (
            format!("/deliveries?since={since}&tenant_id=globex&status=failed"),
            newest_first(&events, |s| {
                s.tenant == Some("globex") && s.at >= now - Days::days(3) - Days::minutes(30)
            }),
        ),
        (
            "/deliveries?event_type=sales.order.created&tenant_id=acme&http_status=500".into(),
            newest_first(&events, |s| {
                s.id.starts_with('d') && s.tenant == Some("acme")
            }),
        ),
        (
            "/deliveries?event_id=d2-stock".into(),
            vec!["d2-stock".to_string()],
        ),
    ];
    for (path, expected) in &cases {
        let (rows, _) = walk(&api, ADMIN, path, 2, "event_id").await;
        assert_eq!(&rows, expected, "{path}");
    }

    // A tenant token: its endpoints' deliveries only, whatever it asks.
    let token = api
        .ok(
            Method::POST,
            "/tokens",
            ADMIN,
            Some(json!({"tenant_id": "acme", "name": "lists"})),
        )
        .await["token"]
        .as_str()
        .unwrap()
        .to_string();
    let (mine, _) = walk(&api, &token, "/deliveries", 3, "event_id").await;
    assert_eq!(mine, newest_first(&events, |s| s.endpoint == acme));
    let (none, _) = walk(&api, &token, "/deliveries?tenant_id=globex", 3, "event_id").await;
    assert!(none.is_empty(), "{none:?}");

    // Events: newest first over the days, by type pattern and tenant.
    let (all_events, _) = walk(&api, ADMIN, "/events", 4, "id").await;
    assert_eq!(all_events, newest_first(&events, |_| true));
    let (billing, _) = walk(&api, ADMIN, "/events?type=billing.%23", 2, "id").await;
    assert_eq!(
        billing,
        newest_first(&events, |s| s.event_type.starts_with("billing."))
    );
    let (acme_events, _) = walk(&api, ADMIN, "/events?tenant_id=acme", 2, "id").await;
    assert_eq!(
        acme_events,
        newest_first(&events, |s| s.tenant == Some("acme"))
    );
    let (window, _) = walk(
        &api,
        ADMIN,
        &format!("/events?since={since}&until={until}"),
        2,
        "id",
    )
    .await;
    assert_eq!(
        window,
        newest_first(&events, |s| s.at >= now - Days::days(3) - Days::minutes(30)
            && s.at < now - Days::days(1) - Days::minutes(30))
    );

    // The dead-letter queue: globex's five, newest first, and by endpoint and type.
    let (dead, _) = walk(&api, ADMIN, "/dlq", 2, "event_id").await;
    assert_eq!(dead, newest_first(&events, |s| s.failed));
    let (dead_of, _) = walk(
        &api,
        ADMIN,
        &format!("/dlq?endpoint_id={globex}&event_type=billing.invoice.paid"),
        2,
        "event_id",
    )
    .await;
    assert_eq!(dead_of, newest_first(&events, |s| s.failed));
    let dlq = api
        .ok(
            Method::GET,
            "/dlq?event_type=sales.order.created",
            ADMIN,
            None,
        )
        .await;
    assert_eq!(dlq["data"], json!([]), "{dlq}");

    // One event with its delivery, from a past day.
    let event = api.ok(Method::GET, "/events/d4-invoice", ADMIN, None).await;
    let deliveries = event["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 1, "{event}");
    assert_eq!(deliveries[0]["event_type"], "billing.invoice.paid");
    let ids: BTreeSet<&str> = all.iter().map(String::as_str).collect();
    assert_eq!(ids.len(), all.len(), "no row twice");

    app.stop().await;
    env.cleanup().await;
}
