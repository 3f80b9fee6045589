//! The `features` scenario (issue 19): what each endpoint option of the tenants and
//! receivers issues costs at steady. One endpoint, as fast as possible, as `steady`,
//! once plain and once with each option switched on — a tenant (the endpoint's and
//! the events'), a payload filter every event passes, three static headers, secrets
//! sealed at rest — and once with all of them. Each rep runs every variant in turn; a
//! variant's ratio is its rate over the plain run of the same rep, median of the reps.
//!
//! Endpoint stats and the circuit breaker cannot be switched off: they are measured
//! only as part of every variant (docs/benchmarks.md states their cost from the code).

use serde_json::json;

use crate::row::{Row, Size};
use crate::run::{Bench, EndpointSpec, Extras, RunOutcome, RunSpec};

use crate::shared::EVENT;
const TENANT: &str = "tenant-bench";

/// The variants, plain first.
const VARIANTS: [&str; 6] = ["plain", "tenant", "filter", "headers", "sealed", "all"];

fn endpoint(variant: &str) -> EndpointSpec {
    let on = |option: &str| variant == option || variant == "all";
    EndpointSpec {
        tenant: on("tenant").then(|| TENANT.to_string()),
        extras: Extras {
            // The bench's data is {"sent_at_us": …, "pad": "…"}: every event passes.
            filter: on("filter").then(|| json!({ "data.sent_at_us": { "$gt": 0 } })),
            headers: on("headers").then(|| {
                json!({ "x-erp-source": "herald-bench", "x-erp-region": "eu-1",
                        "x-api-key": "k-0123456789abcdef" })
            }),
            sealed: on("sealed"),
        },
        ..EndpointSpec::simple("#", 0)
    }
}

fn spec(variant: &str, count: usize) -> RunSpec {
    let tenant = (variant == "tenant" || variant == "all").then(|| TENANT.to_string());
    let mut spec = crate::shared::as_fast_as_possible(count);
    spec.endpoints = vec![endpoint(variant)];
    spec.load.kinds = vec![(EVENT.to_string(), tenant)];
    spec
}

fn median(mut values: Vec<f64>) -> f64 {
    crate::shared::median(&mut values)
}

pub async fn features(bench: &Bench, size: Size, reps: usize) -> anyhow::Result<Row> {
    let count = size.pick(100_000, 5_000, 200);
    // rates[v][rep]
    let mut rates = vec![Vec::new(); VARIANTS.len()];
    let mut runs: Vec<RunOutcome> = Vec::new();
    for rep in 0..reps {
        for (v, variant) in VARIANTS.iter().enumerate() {
            let run = bench.run_herald(&spec(variant, count)).await?;
            anyhow::ensure!(
                run.lost == 0 && !run.timed_out && run.signatures_bad == 0,
                "features {variant} #{rep}: lost {}, timed out {}, bad signatures {}",
                run.lost,
                run.timed_out,
                run.signatures_bad
            );
            let rate = run.groups[0].deliveries_per_s;
            eprintln!("  features {variant} #{rep}: {rate:.0}/s");
            rates[v].push(rate);
            runs.push(run);
        }
    }
    let ratios: Vec<(String, f64, f64)> = VARIANTS
        .iter()
        .enumerate()
        .map(|(v, variant)| {
            let pairs: Vec<f64> = rates[v]
                .iter()
                .zip(&rates[0])
                .map(|(r, plain)| r / plain)
                .collect();
            (
                variant.to_string(),
                (median(rates[v].clone()) * 10.0).round() / 10.0,
                (median(pairs) * 1000.0).round() / 1000.0,
            )
        })
        .collect();
    let plain = median(rates[0].clone());
    let all = median(rates[VARIANTS.len() - 1].clone());
    let summary: Vec<String> = ratios
        .iter()
        .skip(1)
        .map(|(v, _, ratio)| format!("{v} {ratio:.3}"))
        .collect();
    let representative = &runs[runs.len() - 1].groups[0];
    Ok(Row {
        name: "features".into(),
        deliveries: representative.deliveries,
        seconds: (representative.seconds * 100.0).round() / 100.0,
        deliveries_per_s: (all * 10.0).round() / 10.0,
        baseline_per_s: Some((plain * 10.0).round() / 10.0),
        ratio: ratios.last().map(|(_, _, r)| (r * 100.0).round() / 100.0),
        latency_ms: representative.latency_ms,
        rss_mib_max: runs.iter().filter_map(RunOutcome::rss_max).reduce(f64::max),
        duplicates: runs.iter().map(|r| r.duplicates).sum(),
        lost: runs.iter().map(|r| r.lost).sum(),
        spread_per_s: None,
        baseline_spread_per_s: None,
        runs: reps,
        notes: format!(
            "all options vs plain Herald (not the relay); per option ÷ plain: {}",
            summary.join(", ")
        ),
        detail: json!({
            "variants": ratios.iter().map(|(v, rate, ratio)| json!({
                "variant": v, "median_per_s": rate, "pair_ratio_to_plain": ratio,
            })).collect::<Vec<_>>(),
            "per_rep_per_s": VARIANTS.iter().zip(&rates)
                .map(|(v, r)| (v.to_string(), json!(r)))
                .collect::<serde_json::Map<_, _>>(),
        }),
    })
}
