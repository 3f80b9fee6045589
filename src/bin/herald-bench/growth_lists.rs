//! The growth scenario's admin API figures: each list route of `/api/v1` with the
//! filters the API offers, and pages 2 to 6 reached through `next_cursor`, asked in
//! turn (one round asks every query once) of a Herald serving the seeded database;
//! latency measured at the client, per query.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chrono::Utc;
use hdrhistogram::Histogram;
use serde::Serialize;
use uuid::Uuid;

use crate::growth_seed::TYPES;
use crate::run::Latency;

pub const ADMIN_TOKEN: &str = "bench-admin-token";

/// The time one query may take over all its rounds before it is asked no more.
const BUDGET: Duration = Duration::from_secs(20);

/// One query's figures.
#[derive(Debug, Clone, Serialize)]
pub struct ListFigure {
    pub query: String,
    pub latency_ms: Latency,
    pub samples: u64,
    /// Rows on the first page answered (or on each followed page).
    pub rows: usize,
}

/// A query: a path with its query string, and how many pages after the first it
/// follows (each followed page is one sample; the first page is not counted then).
struct Query {
    name: String,
    path: String,
    follow: usize,
    /// A tenant token's view instead of the admin's.
    as_tenant: bool,
}

fn queries(endpoint: Uuid, small_tenant: &str) -> Vec<Query> {
    let since =
        (Utc::now() - chrono::Duration::days(3)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let one = |name: &str, path: String| Query {
        name: name.to_string(),
        path,
        follow: 0,
        as_tenant: false,
    };
    let pages = |name: &str, path: String| Query {
        name: name.to_string(),
        path,
        follow: 5,
        as_tenant: false,
    };
    let tenant = |query: Query| Query {
        as_tenant: true,
        ..query
    };
    vec![
        one("deliveries", "/deliveries".into()),
        pages("deliveries pages 2-6", "/deliveries".into()),
        one(
            "deliveries status=failed",
            "/deliveries?status=failed".into(),
        ),
        pages(
            "deliveries status=failed pages 2-6",
            "/deliveries?status=failed".into(),
        ),
        one(
            "deliveries status=retrying",
            "/deliveries?status=retrying".into(),
        ),
        one(
            "deliveries endpoint_id=",
            format!("/deliveries?endpoint_id={endpoint}"),
        ),
        pages(
            "deliveries endpoint_id= pages 2-6",
            format!("/deliveries?endpoint_id={endpoint}"),
        ),
        one(
            "deliveries event_type=(30 %)",
            format!("/deliveries?event_type={}", TYPES[0]),
        ),
        one(
            "deliveries event_type=(0.5 %)",
            format!("/deliveries?event_type={}", TYPES[11]),
        ),
        one(
            "deliveries tenant_id=(small)",
            format!("/deliveries?tenant_id={small_tenant}"),
        ),
        pages(
            "deliveries tenant_id=(small) pages 2-6",
            format!("/deliveries?tenant_id={small_tenant}"),
        ),
        one(
            "deliveries since=3 days",
            format!("/deliveries?since={since}"),
        ),
        one(
            "deliveries status=failed&tenant_id=",
            format!("/deliveries?status=failed&tenant_id={small_tenant}"),
        ),
        tenant(one(
            "deliveries, tenant token (small)",
            "/deliveries".into(),
        )),
        tenant(pages(
            "deliveries, tenant token (small) pages 2-6",
            "/deliveries".into(),
        )),
        one("events", "/events".into()),
        pages("events pages 2-6", "/events".into()),
        one("events type=billing.#", "/events?type=billing.%23".into()),
        one(
            "events tenant_id=(small)",
            format!("/events?tenant_id={small_tenant}"),
        ),
        pages(
            "events tenant_id=(small) pages 2-6",
            format!("/events?tenant_id={small_tenant}"),
        ),
        one("events since=3 days", format!("/events?since={since}")),
        one("dlq", "/dlq".into()),
        pages("dlq pages 2-6", "/dlq".into()),
        one("dlq endpoint_id=", format!("/dlq?endpoint_id={endpoint}")),
        // Not a list: its stats count every delivery of the endpoint (for comparison).
        one(
            "endpoint with stats (not a list)",
            format!("/endpoints/{endpoint}"),
        ),
    ]
}

/// Asks every query `rounds` times of the API at `api` (after one unmeasured warm-up
/// round), pages of `limit` (the API's default, 100, when `None`).
pub async fn measure(
    api: SocketAddr,
    endpoint: Uuid,
    small_tenant: &str,
    rounds: usize,
    limit: Option<usize>,
) -> anyhow::Result<Vec<ListFigure>> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let base = format!("http://{api}/api/v1");
    let created: serde_json::Value = client
        .post(format!("{base}/tokens"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"tenant_id": small_tenant, "name": "growth bench"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let tenant_token = created["token"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no token in {created}"))?
        .to_string();
    let mut queries = queries(endpoint, small_tenant);
    if let Some(limit) = limit {
        for q in queries
            .iter_mut()
            .filter(|q| !q.path.starts_with("/endpoints/"))
        {
            let sep = if q.path.contains('?') { '&' } else { '?' };
            q.path = format!("{}{sep}limit={limit}", q.path);
        }
    }
    let mut histograms: Vec<Histogram<u64>> = queries
        .iter()
        .map(|_| Histogram::new(3).expect("histogram"))
        .collect();
    let mut rows = vec![0usize; queries.len()];
    let mut spent = vec![Duration::ZERO; queries.len()];
    for round in 0..=rounds {
        for (i, q) in queries.iter().enumerate() {
            // A query slow enough to take the whole run stops at five samples.
            if spent[i] > BUDGET && histograms[i].len() >= 5 {
                continue;
            }
            let mut path = q.path.clone();
            for page in 0..=q.follow {
                let started = Instant::now();
                let response = client
                    .get(format!("{base}{path}"))
                    .bearer_auth(if q.as_tenant {
                        tenant_token.as_str()
                    } else {
                        ADMIN_TOKEN
                    })
                    .send()
                    .await?;
                let status = response.status();
                let body: serde_json::Value = response.json().await?;
                let took = started.elapsed();
                spent[i] += took;
                anyhow::ensure!(status.is_success(), "{} answered {status}: {body}", q.name);
                if round > 0 && (q.follow == 0 || page > 0) {
                    histograms[i].record(took.as_micros() as u64)?;
                }
                if round == 0 && page <= 1 {
                    rows[i] = body["data"].as_array().map_or(0, Vec::len);
                }
                match body["next_cursor"].as_str() {
                    Some(cursor) if page < q.follow => {
                        let sep = if q.path.contains('?') { '&' } else { '?' };
                        path = format!("{}{sep}cursor={cursor}", q.path);
                    }
                    _ => break,
                }
            }
        }
    }
    Ok(queries
        .iter()
        .zip(histograms)
        .zip(rows)
        .map(|((q, h), rows)| ListFigure {
            query: q.name.clone(),
            latency_ms: Latency::of(&h),
            samples: h.len(),
            rows,
        })
        .collect())
}
