//! The latency scenarios (issue 19): events offered at a fixed rate to 5 endpoints,
//! the bare relay and Herald alternated in pairs (relay, Herald, relay, Herald, …) in
//! one invocation, so that each Herald run has a relay run at the same offered rate,
//! fan-out and moment beside it. Reported: both sides' p50 / p99 / max (medians over
//! the runs) and Herald's p99 ÷ the relay's p99, per pair and its median.

use serde::Serialize;

use crate::row::{Row, Size};
use crate::run::{Bench, Latency, RunOutcome};
use crate::shared::{check, median, print_stalls, round, spread};

/// One relay run and the Herald run after it.
#[derive(Debug, Clone, Serialize)]
struct Pair {
    relay: Latency,
    herald: Latency,
    relay_per_s: f64,
    herald_per_s: f64,
    /// Herald's p99 ÷ the relay's p99.
    p99_ratio: f64,
    /// Seconds of publishing whose p99 was over 50 ms, each side (UTC, `HH:MM:SS`).
    relay_stall_seconds: Vec<String>,
    herald_stall_seconds: Vec<String>,
}

fn stall_seconds(run: &RunOutcome) -> Vec<String> {
    run.groups[0]
        .timeline
        .iter()
        .filter(|s| s.p99_ms > 50.0)
        .filter_map(|s| chrono::DateTime::from_timestamp(s.unix_s as i64, 0))
        .map(|t| t.format("%H:%M:%S").to_string())
        .collect()
}

/// The median of each figure on its own over `runs` (to 0.01 ms).
pub fn median_latency(runs: &[Latency]) -> Latency {
    let of = |f: fn(&Latency) -> f64| round_2(median(&mut runs.iter().map(f).collect::<Vec<_>>()));
    Latency {
        p50: of(|l| l.p50),
        p90: of(|l| l.p90),
        p99: of(|l| l.p99),
        max: of(|l| l.max),
    }
}

/// `rate` events/s offered to 5 endpoints for a minute (10 s quick, 1 s tiny), `reps`
/// relay/Herald pairs.
pub async fn latency(
    bench: &Bench,
    size: Size,
    name: &str,
    rate: f64,
    reps: usize,
) -> anyhow::Result<Row> {
    let seconds = size.pick(60, 10, 1);
    let endpoints = 5;
    let spec = crate::shared::at_rate(rate, seconds, endpoints);
    let mut pairs = Vec::new();
    let mut herald_runs = Vec::new();
    let (mut relay_lost, mut relay_duplicates) = (0, 0);
    for rep in 0..reps {
        let relay = bench.run_baseline(&spec).await?;
        check(&relay, &format!("{name} relay"));
        print_stalls(&format!("{name} relay #{rep}"), &spec, &relay);
        relay_lost += relay.lost;
        relay_duplicates += relay.duplicates;
        let herald = bench.run_herald(&spec).await?;
        check(&herald, name);
        print_stalls(&format!("{name} herald #{rep}"), &spec, &herald);
        let (r, h) = (&relay.groups[0], &herald.groups[0]);
        let pair = Pair {
            relay: r.latency_ms,
            herald: h.latency_ms,
            relay_per_s: round(r.deliveries_per_s),
            herald_per_s: round(h.deliveries_per_s),
            p99_ratio: if r.latency_ms.p99 > 0.0 {
                (h.latency_ms.p99 / r.latency_ms.p99 * 100.0).round() / 100.0
            } else {
                0.0
            },
            relay_stall_seconds: stall_seconds(&relay),
            herald_stall_seconds: stall_seconds(&herald),
        };
        eprintln!(
            "  {name} pair #{rep}: relay p50/p99/max {:.1}/{:.1}/{:.0} ms, herald {:.1}/{:.1}/{:.0} \
             ms, p99 ratio {:.2}, rss {:?} MiB; stalls (UTC) relay {:?} herald {:?}",
            pair.relay.p50,
            pair.relay.p99,
            pair.relay.max,
            pair.herald.p50,
            pair.herald.p99,
            pair.herald.max,
            pair.p99_ratio,
            herald.rss_max(),
            pair.relay_stall_seconds,
            pair.herald_stall_seconds
        );
        pairs.push(pair);
        herald_runs.push(herald);
    }
    let herald_latency = median_latency(&pairs.iter().map(|p| p.herald).collect::<Vec<_>>());
    let relay_latency = median_latency(&pairs.iter().map(|p| p.relay).collect::<Vec<_>>());
    let p99_ratio = round_2(median(
        &mut pairs.iter().map(|p| p.p99_ratio).collect::<Vec<_>>(),
    ));
    let mut herald_rates: Vec<f64> = pairs.iter().map(|p| p.herald_per_s).collect();
    let mut relay_rates: Vec<f64> = pairs.iter().map(|p| p.relay_per_s).collect();
    let (herald_spread, relay_spread) = (spread(&herald_rates), spread(&relay_rates));
    let (herald_rate, relay_rate) = (median(&mut herald_rates), median(&mut relay_rates));
    // The Herald run whose p99 is closest to the median supplies the timeline.
    let representative = herald_runs
        .iter()
        .min_by(|a, b| {
            (a.groups[0].latency_ms.p99 - herald_latency.p99)
                .abs()
                .total_cmp(&(b.groups[0].latency_ms.p99 - herald_latency.p99).abs())
        })
        .ok_or_else(|| anyhow::anyhow!("no run"))?;
    let g = &representative.groups[0];
    let per_pair: Vec<String> = pairs
        .iter()
        .map(|p| format!("{:.2}", p.p99_ratio))
        .collect();
    Ok(Row {
        name: name.to_string(),
        deliveries: g.deliveries,
        seconds: (g.seconds * 100.0).round() / 100.0,
        deliveries_per_s: round(herald_rate),
        baseline_per_s: Some(round(relay_rate)),
        ratio: (relay_rate > 0.0).then(|| round_2(herald_rate / relay_rate)),
        latency_ms: herald_latency,
        rss_mib_max: herald_runs
            .iter()
            .filter_map(RunOutcome::rss_max)
            .reduce(f64::max)
            .map(round),
        duplicates: herald_runs.iter().map(|r| r.duplicates).sum(),
        lost: herald_runs.iter().map(|r| r.lost).sum(),
        spread_per_s: herald_spread,
        baseline_spread_per_s: relay_spread,
        runs: herald_runs.len(),
        notes: format!(
            "{rate} ev/s for {seconds} s, {endpoints} endpoints; relay and Herald alternated \
             ({reps} pair(s), relay first); latency = medians over the runs; relay p50 / p99 / \
             max {} / {} / {} ms; **Herald p99 ÷ relay p99 {p99_ratio}** (pairs: {})",
            relay_latency.p50,
            relay_latency.p99,
            relay_latency.max,
            per_pair.join(", ")
        ),
        detail: serde_json::json!({
            "relay_latency_ms": relay_latency,
            "p99_ratio": p99_ratio,
            "pairs": pairs,
            "baseline_latency_ms": relay_latency,
            "baseline_lost": relay_lost,
            "baseline_duplicates": relay_duplicates,
            "timeline": g.timeline,
            "signatures_checked": herald_runs.iter().map(|r| r.signatures_checked).sum::<u64>(),
            "signatures_bad": herald_runs.iter().map(|r| r.signatures_bad).sum::<u64>(),
            "timed_out": herald_runs.iter().any(|r| r.timed_out),
        }),
    })
}

fn round_2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}
