//! What the scenarios share: the event they publish, their time limits, medians and
//! spreads, the check of a run's outcome and the report of its stalled seconds. A leaf
//! below `scenarios` and the scenario files it dispatches to.

use std::time::Duration;

use crate::run::{EndpointSpec, LoadSpec, RunOutcome, RunSpec};

pub const EVENT: &str = "bench.order.created";

pub fn kinds() -> Vec<(String, Option<String>)> {
    vec![(EVENT.to_string(), None)]
}

/// One endpoint for every event, `count` events of 500 B as fast as possible (steady).
pub fn as_fast_as_possible(count: usize) -> RunSpec {
    RunSpec {
        endpoints: vec![EndpointSpec::simple("#", 0)],
        load: LoadSpec {
            count,
            rate: None,
            body_bytes: 500,
            kinds: kinds(),
            ordering_keys: None,
        },
        expected: count,
        retry_schedule: "1s,2s,5s".into(),
        backlog: false,
        timeout: timeout(count, Duration::ZERO),
    }
}

/// `endpoints` endpoints on every event, `rate` events/s of 500 B for `seconds` (latency).
pub fn at_rate(rate: f64, seconds: usize, endpoints: usize) -> RunSpec {
    let count = rate as usize * seconds;
    RunSpec {
        endpoints: (0..endpoints)
            .map(|_| EndpointSpec::simple("bench.#", 0))
            .collect(),
        load: LoadSpec {
            count,
            rate: Some(rate),
            body_bytes: 500,
            kinds: kinds(),
            ordering_keys: None,
        },
        expected: count * endpoints,
        retry_schedule: "1s,2s,5s".into(),
        backlog: false,
        timeout: timeout(count * endpoints, Duration::from_secs(seconds as u64)),
    }
}

pub fn timeout(pairs: usize, extra: Duration) -> Duration {
    Duration::from_secs(60) + Duration::from_millis(pairs as u64) + extra
}

pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

pub fn spread(values: &[f64]) -> Option<[f64; 2]> {
    let min = values.iter().copied().reduce(f64::min)?;
    let max = values.iter().copied().reduce(f64::max)?;
    Some([round(min), round(max)])
}

pub fn round(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

pub fn check(run: &RunOutcome, what: &str) {
    if run.timed_out || run.lost > 0 || run.signatures_bad > 0 {
        eprintln!(
            "  ! {what}: unique {}/{} lost {} dup {} db_success {:?} bad signatures {} timed out {}",
            run.unique,
            run.expected,
            run.lost,
            run.duplicates,
            run.db_success,
            run.signatures_bad,
            run.timed_out
        );
    }
}

/// At a fixed offered rate, names the seconds of publishing whose p99 was over 50 ms:
/// whether a tail is a few stalls or steady queueing, and whether Herald and the
/// relay stall at the same moments.
pub fn print_stalls(label: &str, spec: &RunSpec, run: &RunOutcome) {
    if spec.load.rate.is_none() {
        return;
    }
    let stalls: Vec<String> = run.groups[0]
        .timeline
        .iter()
        .filter(|s| s.p99_ms > 50.0)
        .map(|s| format!("{}s p99 {:.0} max {:.0}", s.s, s.p99_ms, s.max_ms))
        .collect();
    if !stalls.is_empty() {
        eprintln!("  {label}: seconds with p99 > 50 ms: {}", stalls.join("; "));
    }
}
