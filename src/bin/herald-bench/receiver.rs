//! The webhook receiver: a real axum HTTP server on loopback (keep-alive, HTTP/1.1)
//! that plays every endpoint of a run at `/e/<index>`. It records the arrival of each
//! request, deduplicates (event, endpoint) pairs by `webhook-id`, derives latency from
//! the `sent_at_us` stamp the load generator put into the event's data, verifies a
//! sample of Standard Webhooks signatures, and answers as the run's script says
//! (200, 500 until a deadline, or 200 after a delay).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use hdrhistogram::Histogram;
use herald::domain::SigningSecret;
use herald::testkit::receiver::{self, header};
use tokio_util::sync::CancellationToken;

use crate::now_us;

/// How one endpoint answers.
#[derive(Debug, Clone, Default)]
pub struct Behavior {
    /// Answer 500 while the wall clock (µs since the epoch) is before this.
    pub fail_until_us: Option<u64>,
    /// Answer 200 only after this long.
    pub delay: Duration,
    /// Which statistics group the endpoint's deliveries count in.
    pub group: usize,
    /// The endpoint's signing secret; `None` skips verification (baseline relay).
    pub secret: Option<SigningSecret>,
    /// The load's ordering keys (event `n` has key `n mod K`): count events that
    /// arrive after a later event of the same key.
    pub order_keys: Option<u64>,
}

/// Counters of one group of endpoints.
pub struct GroupStats {
    pub delivered: u64,
    pub first_us: u64,
    pub last_us: u64,
    pub latency_us: Histogram<u64>,
    /// Latency by the second the event was published in (µs since the epoch ÷ 10⁶):
    /// shows whether a tail is steady queueing or a few stalls.
    pub by_second: BTreeMap<u64, Histogram<u64>>,
}

impl GroupStats {
    fn new() -> Self {
        Self {
            delivered: 0,
            first_us: u64::MAX,
            last_us: 0,
            // 1 µs .. 1 hour, 3 significant digits.
            latency_us: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("static histogram bounds are valid"),
            by_second: BTreeMap::new(),
        }
    }
}

/// Everything recorded during one run.
pub struct RunRecord {
    pub behaviors: Vec<Behavior>,
    pub seen: HashSet<(u64, u32)>,
    pub duplicates: u64,
    pub groups: Vec<GroupStats>,
    pub failed_answers: u64,
    pub signatures_checked: u64,
    pub signatures_bad: u64,
    pub malformed: u64,
    /// Per (endpoint, key), the highest event number that arrived.
    pub last_per_key: HashMap<(u32, u64), u64>,
    /// First arrivals of an event after a later one of its key (endpoint by endpoint).
    pub out_of_order: u64,
}

impl RunRecord {
    fn new(behaviors: Vec<Behavior>) -> Self {
        let groups = behaviors.iter().map(|b| b.group).max().unwrap_or(0) + 1;
        Self {
            behaviors,
            seen: HashSet::new(),
            duplicates: 0,
            groups: (0..groups).map(|_| GroupStats::new()).collect(),
            failed_answers: 0,
            signatures_checked: 0,
            signatures_bad: 0,
            malformed: 0,
            last_per_key: HashMap::new(),
            out_of_order: 0,
        }
    }
}

struct Shared {
    run: Mutex<RunRecord>,
    requests: AtomicU64,
    sample_every: u64,
}

/// The running receiver; `reset` starts a new run's record.
#[derive(Clone)]
pub struct Receiver {
    address: SocketAddr,
    shared: Arc<Shared>,
}

impl Receiver {
    /// Binds a loopback port and serves until `stop`.
    pub async fn start(sample_every: u64, stop: CancellationToken) -> anyhow::Result<Self> {
        let shared = Arc::new(Shared {
            run: Mutex::new(RunRecord::new(Vec::new())),
            requests: AtomicU64::new(0),
            sample_every: sample_every.max(1),
        });
        let app = Router::new()
            .route("/e/{index}", post(receive))
            .with_state(shared.clone());
        let address = receiver::serve(app, stop).await?;
        Ok(Self { address, shared })
    }

    pub fn url(&self, index: usize) -> String {
        format!("http://{}/e/{index}", self.address)
    }

    /// Starts a fresh record with these endpoint behaviours; returns the previous one.
    pub fn reset(&self, behaviors: Vec<Behavior>) -> RunRecord {
        let mut run = self.shared.run.lock().expect("receiver lock");
        std::mem::replace(&mut *run, RunRecord::new(behaviors))
    }

    /// Distinct (event, endpoint) pairs answered with 200 so far.
    pub fn unique(&self) -> usize {
        self.shared.run.lock().expect("receiver lock").seen.len()
    }
}

/// `"sent_at_us":<digits>` anywhere in the body (Herald's envelope keeps the data
/// byte for byte; the baseline relay posts the data itself).
fn sent_at(body: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"sent_at_us\":";
    let start = body.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits: &[u8] = &body[start..];
    let end = digits
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

/// The event number: the load generator's ids end in `-<n>`.
fn event_number(id: &str) -> Option<u64> {
    id.rsplit('-').next()?.parse().ok()
}

async fn receive(
    State(shared): State<Arc<Shared>>,
    Path(index): Path<u32>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let arrived = now_us();
    let n = shared.requests.fetch_add(1, Ordering::Relaxed);
    let behavior = {
        let run = shared.run.lock().expect("receiver lock");
        run.behaviors.get(index as usize).cloned()
    };
    let Some(behavior) = behavior else {
        return StatusCode::NOT_FOUND;
    };
    if behavior.fail_until_us.is_some_and(|until| arrived < until) {
        shared.run.lock().expect("receiver lock").failed_answers += 1;
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    if !behavior.delay.is_zero() {
        tokio::time::sleep(behavior.delay).await;
    }
    let id = header(&headers, "webhook-id");
    let signature_ok = match &behavior.secret {
        Some(secret) if n % shared.sample_every == 0 => {
            let timestamp = header(&headers, "webhook-timestamp").parse::<i64>().ok();
            Some(timestamp.is_some_and(|ts| {
                let expected = herald::signing::sign(secret, id, ts, &body);
                header(&headers, "webhook-signature")
                    .split(' ')
                    .any(|s| s == expected)
            }))
        }
        _ => None,
    };
    let mut run = shared.run.lock().expect("receiver lock");
    match signature_ok {
        Some(true) => run.signatures_checked += 1,
        Some(false) => {
            run.signatures_checked += 1;
            run.signatures_bad += 1;
        }
        None => {}
    }
    let (Some(event), Some(sent)) = (event_number(id), sent_at(&body)) else {
        run.malformed += 1;
        return StatusCode::OK;
    };
    if !run.seen.insert((event, index)) {
        run.duplicates += 1;
        return StatusCode::OK;
    }
    if let Some(keys) = behavior.order_keys {
        let last = run
            .last_per_key
            .entry((index, event % keys.max(1)))
            .or_insert(event);
        if event < *last {
            run.out_of_order += 1;
        } else {
            *last = event;
        }
    }
    if let Some(group) = run.groups.get_mut(behavior.group) {
        group.delivered += 1;
        group.first_us = group.first_us.min(arrived);
        group.last_us = group.last_us.max(arrived);
        let latency = arrived.saturating_sub(sent).clamp(1, 3_600_000_000);
        let _ = group.latency_us.record(latency);
        let _ = group
            .by_second
            .entry(sent / 1_000_000)
            .or_insert_with(|| {
                Histogram::new_with_bounds(1, 3_600_000_000, 2)
                    .expect("static histogram bounds are valid")
            })
            .record(latency);
    }
    StatusCode::OK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_stamp_in_an_envelope() {
        let body = br#"{"id":"r1-7","data":{"sent_at_us":1712345678901234,"pad":"xx"}}"#;
        assert_eq!(sent_at(body), Some(1712345678901234));
        assert_eq!(event_number("r1-7"), Some(7));
        assert_eq!(sent_at(b"{}"), None);
    }
}
