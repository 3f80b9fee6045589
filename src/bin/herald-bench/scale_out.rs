//! The scale-out scenario of issue 19 (not run by default): Herald as separate
//! `herald serve --role ingest` and `--role deliver` processes against the three-node
//! cluster of `make cluster` (quorum queues with a member on every node; each process,
//! and the load generator, connects to a random node), two of each compared with one of
//! each, runs alternated (1 + 1 first). `scale-out-throughput`: one endpoint, events as
//! fast as possible; `scale-out-latency`: a fixed offered rate to 5 endpoints. On one
//! machine the processes share its cores, so this shows what the second pair costs,
//! not what it gains.
//!
//! The cluster is `HERALD_BENCH_CLUSTER_URL` (comma-separated node URLs), else the
//! three nodes at `HERALD_CLUSTER_PORTS` (first AMQP port, default 5681) and the two
//! after it, as deploy/local/cluster.sh starts them.

use std::time::{Duration, Instant};
use uuid::Uuid;

use crate::latency::median_latency;
use crate::process::Herald;
use crate::row::{Row, Size};
use crate::run::{Bench, RunOutcome, RunSpec};
use crate::shared::{check, median, print_stalls, round, spread, timeout};
use crate::{now_us, process};

/// The scenarios `scale-out` stands for.
pub const SCENARIOS: [&str; 2] = ["scale-out-throughput", "scale-out-latency"];

/// `amqp.url` of the cluster: every node, comma-separated.
fn cluster_url() -> String {
    if let Ok(url) = std::env::var("HERALD_BENCH_CLUSTER_URL") {
        return url;
    }
    let base: u16 = std::env::var("HERALD_CLUSTER_PORTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5681);
    (0..3)
        .map(|i| format!("amqp://guest:guest@127.0.0.1:{}/%2f", base + i))
        .collect::<Vec<_>>()
        .join(",")
}

/// The processes of one run: `ingest` of `--role ingest`, `deliver` of `--role deliver`.
#[derive(Debug, Clone, Copy)]
struct Fleet {
    ingest: usize,
    deliver: usize,
}

impl Fleet {
    fn label(self) -> String {
        format!("{}+{}", self.ingest, self.deliver)
    }
}

/// What one fleet run measured beyond the receiver's figures: each process's largest
/// resident memory sample (MiB), by role.
struct FleetRun {
    outcome: RunOutcome,
    rss_max: Vec<(&'static str, f64)>,
}

/// One run of `fleet` on the cluster bench: fresh database and topology, processes
/// started and ready, load published, wait for every pair and every row `success`.
async fn run_fleet(bench: &Bench, spec: &RunSpec, fleet: Fleet) -> anyhow::Result<FleetRun> {
    let tag = bench.next_tag();
    let exchange = format!("{tag}.events");
    let world = bench.world(&tag, &exchange, &spec.retry_schedule);
    let settings = world.settings()?;
    settings.validate()?;
    let topology = herald::delivery::topology(&settings);

    bench.fresh_database().await?;
    process::migrate(&bench.herald_config(&tag, world.clone())).await?;
    let pool = bench.pool().await?;
    let secrets = bench.insert_endpoints(&pool, &spec.endpoints).await?;
    topology.declare(&bench.channel).await?;

    let result = async {
        let roles = std::iter::repeat_n("ingest", fleet.ingest)
            .chain(std::iter::repeat_n("deliver", fleet.deliver));
        let mut processes: Vec<(&'static str, Herald)> = Vec::new();
        for (i, role) in roles.enumerate() {
            let config = bench.herald_config(&format!("{tag}-{role}-{i}"), world.clone());
            processes.push((role, Herald::spawn_role(&config, role).await?));
        }
        let started = Instant::now();
        for (_, herald) in &mut processes {
            herald.wait_ready(Duration::from_secs(60)).await?;
        }
        let ready = started.elapsed();
        let start_us = now_us();
        bench
            .receiver
            .reset(bench.behaviors(spec, Some(&secrets), start_us));
        let publish =
            crate::load::publish(&bench.publisher, bench.load(spec, &tag, &exchange)).await?;
        let deadline = Instant::now() + spec.timeout;
        let finished = bench
            .wait_done(Uuid::nil(), spec.expected, deadline, Some(&pool), None)
            .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let exited: Vec<&str> = processes
            .iter_mut()
            .filter_map(|(role, h)| (!h.still_running()).then_some(*role))
            .collect();
        let mut rss_max = Vec::new();
        let mut all_rss = Vec::new();
        for (role, herald) in processes {
            let rss = herald.stop().await?;
            rss_max.push((role, rss.iter().copied().fold(0.0, f64::max)));
            all_rss.extend(rss);
        }
        anyhow::ensure!(exited.is_empty(), "{exited:?} exited during the run");
        let finished = finished?;
        let record = bench.receiver.reset(Vec::new());
        let outcome = Bench::outcome(
            &record,
            start_us,
            spec.expected,
            publish,
            finished,
            all_rss,
            Some(ready),
        );
        anyhow::Ok(FleetRun { outcome, rss_max })
    }
    .await;

    if let Err(error) = topology.delete(&bench.channel).await {
        eprintln!("cleanup: deleting queues of {tag}: {error}");
    }
    bench.delete_exchange(&exchange).await;
    pool.close().await;
    result
}

fn spec(size: Size, latency: bool) -> RunSpec {
    if latency {
        // Below what 1 + 1 sustains on the cluster here, so the tail is not a queue.
        let (rate, seconds) = size.pick((200.0, 60), (200.0, 10), (20.0, 1));
        crate::shared::at_rate(rate, seconds, 5)
    } else {
        let count = size.pick(30_000, 5_000, 200);
        RunSpec {
            timeout: timeout(count, Duration::from_secs(60)),
            ..crate::shared::as_fast_as_possible(count)
        }
    }
}

fn describe(run: &FleetRun) -> String {
    let g = &run.outcome.groups[0];
    let rss: Vec<String> = run
        .rss_max
        .iter()
        .map(|(role, mib)| format!("{role} {mib:.0}"))
        .collect();
    format!(
        "{:.0}/s, p50/p99/max {:.1}/{:.1}/{:.0} ms, RSS MiB {}",
        g.deliveries_per_s,
        g.latency_ms.p50,
        g.latency_ms.p99,
        g.latency_ms.max,
        rss.join(", ")
    )
}

fn median_of(runs: &[FleetRun], f: impl Fn(&RunOutcome) -> f64) -> f64 {
    median(&mut runs.iter().map(|r| f(&r.outcome)).collect::<Vec<_>>())
}

/// `scale-out-throughput` or `scale-out-latency`: `reps` pairs of 1 + 1 then 2 + 2.
pub async fn run(bench: &Bench, name: &str, size: Size, reps: usize) -> anyhow::Result<Row> {
    let latency = match name {
        "scale-out-throughput" => false,
        "scale-out-latency" => true,
        other => anyhow::bail!("unknown scale-out scenario `{other}`"),
    };
    let url = cluster_url();
    let cluster = Bench::new(
        url.clone(),
        bench.database_base_url.clone(),
        bench.database.clone(),
        bench.herald_binary.clone(),
        bench.receiver.clone(),
        bench.concurrency,
        bench.log_dir.clone(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e:#} (the cluster: `make cluster`; {url})"))?;
    let spec = spec(size, latency);
    let (one, two) = (
        Fleet {
            ingest: 1,
            deliver: 1,
        },
        Fleet {
            ingest: 2,
            deliver: 2,
        },
    );
    let (mut ones, mut twos) = (Vec::new(), Vec::new());
    for rep in 0..reps {
        for (fleet, runs) in [(one, &mut ones), (two, &mut twos)] {
            let run = run_fleet(&cluster, &spec, fleet).await?;
            let label = format!("{name} {} #{rep}", fleet.label());
            check(&run.outcome, &label);
            eprintln!("  {label}: {}", describe(&run));
            print_stalls(&label, &spec, &run.outcome);
            runs.push(run);
        }
    }
    let rate = |r: &RunOutcome| r.groups[0].deliveries_per_s;
    let latency_of = |runs: &[FleetRun]| {
        median_latency(
            &runs
                .iter()
                .map(|r| r.outcome.groups[0].latency_ms)
                .collect::<Vec<_>>(),
        )
    };
    let (two_rate, one_rate) = (median_of(&twos, rate), median_of(&ones, rate));
    let (two_latency, one_latency) = (latency_of(&twos), latency_of(&ones));
    let rates = |runs: &[FleetRun]| runs.iter().map(|r| rate(&r.outcome)).collect::<Vec<_>>();
    let pair_ratios: Vec<f64> = ones
        .iter()
        .zip(&twos)
        .map(|(o, t)| {
            let (o, t) = (&o.outcome.groups[0], &t.outcome.groups[0]);
            if latency {
                t.latency_ms.p99 / o.latency_ms.p99.max(f64::MIN_POSITIVE)
            } else {
                t.deliveries_per_s / o.deliveries_per_s.max(f64::MIN_POSITIVE)
            }
        })
        .map(|r| (r * 100.0).round() / 100.0)
        .collect();
    let rss_max = |runs: &[FleetRun], role: &str| {
        runs.iter()
            .flat_map(|r| &r.rss_max)
            .filter(|(r, _)| *r == role)
            .map(|(_, mib)| *mib)
            .fold(0.0, f64::max)
    };
    let g = &twos
        .last()
        .ok_or_else(|| anyhow::anyhow!("no run"))?
        .outcome
        .groups[0];
    let what = if latency {
        format!(
            "{} ev/s for {} s to 5 endpoints",
            spec.load.rate.unwrap_or_default(),
            spec.load.count / spec.load.rate.unwrap_or(1.0).max(1.0) as usize
        )
    } else {
        format!(
            "1 endpoint, {} × 500 B as fast as possible",
            spec.load.count
        )
    };
    let figure = if latency {
        "2+2 p99 ÷ 1+1 p99"
    } else {
        "2+2 ÷ 1+1 deliveries/s"
    };
    let mut pair_ratios_sorted = pair_ratios.clone();
    Ok(Row {
        name: name.to_string(),
        deliveries: g.deliveries,
        seconds: (g.seconds * 100.0).round() / 100.0,
        deliveries_per_s: round(two_rate),
        baseline_per_s: Some(round(one_rate)),
        ratio: (one_rate > 0.0).then(|| ((two_rate / one_rate) * 100.0).round() / 100.0),
        latency_ms: two_latency,
        rss_mib_max: Some(round(
            rss_max(&twos, "ingest").max(rss_max(&twos, "deliver")),
        )),
        duplicates: twos.iter().chain(&ones).map(|r| r.outcome.duplicates).sum(),
        lost: twos.iter().chain(&ones).map(|r| r.outcome.lost).sum(),
        spread_per_s: spread(&rates(&twos)),
        baseline_spread_per_s: spread(&rates(&ones)),
        runs: twos.len(),
        notes: format!(
            "three-node cluster, {what}; figures of 2 ingest + 2 deliver processes, baseline = \
             1 + 1, runs alternated ({reps} pair(s), 1 + 1 first); 1 + 1 p50 / p99 / max {} / {} \
             / {} ms; {figure}: {} (pairs: {}); on one machine this shows the overhead of the \
             second pair, not a speed-up",
            one_latency.p50,
            one_latency.p99,
            one_latency.max,
            median(&mut pair_ratios_sorted),
            pair_ratios
                .iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        detail: serde_json::json!({
            "cluster_nodes": url.split(',').count(),
            "baseline_latency_ms": one_latency,
            "baseline_lost": ones.iter().map(|r| r.outcome.lost).sum::<u64>(),
            "pair_ratios": pair_ratios,
            "one_each": ones.iter().map(|r| &r.outcome.groups[0]).collect::<Vec<_>>(),
            "two_each": twos.iter().map(|r| &r.outcome.groups[0]).collect::<Vec<_>>(),
            "rss_mib_max": {
                "one_each": { "ingest": rss_max(&ones, "ingest"), "deliver": rss_max(&ones, "deliver") },
                "two_each": { "ingest": rss_max(&twos, "ingest"), "deliver": rss_max(&twos, "deliver") },
            },
            "ready_s": twos.iter().filter_map(|r| r.outcome.ready_s).reduce(f64::max),
            "signatures_bad": twos.iter().chain(&ones).map(|r| r.outcome.signatures_bad).sum::<u64>(),
            "timed_out": twos.iter().chain(&ones).any(|r| r.outcome.timed_out),
            "timeline_two_each": g.timeline,
        }),
    })
}
