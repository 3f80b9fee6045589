//! The `growth` scenario (issue 19): steady on a database already holding N deliveries
//! (10,000,000 full, 200,000 quick, 4,000 tiny) with their events and attempts,
//! alternated with steady on an empty database; then the admin API's list routes on
//! that history (`growth_lists`).
//!
//! The history is seeded once (`growth_seed`) into its own database,
//! `<bench database>_growth_<N>`, kept between invocations (drop it by hand to seed
//! again: it is about 10 GB at 10,000,000) and brought to the current schema with
//! `herald migrate` at every invocation — which measures an upgrade's migration on that
//! history — then vacuumed and analyzed, as autovacuum would have. The seeded runs use
//! it as it is (a copy per run would double the disk it takes): each adds its own
//! deliveries, 1 % of the history at full size, told apart by their ids.

use std::time::{Duration, Instant};

use herald::testkit;
use sqlx::PgPool;

use crate::growth_lists::{self, ADMIN_TOKEN};
use crate::growth_seed::{self, Seeded};
use crate::process::{self, Herald};
use crate::row::{Row, Size};
use crate::run::{Bench, RunOutcome};
use crate::shared::{as_fast_as_possible, check, median};

/// Bumped when the seeded rows change: a history of another version is seeded again.
const SEED_VERSION: i32 = 1;

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

async fn connect(bench: &Bench, database: &str) -> anyhow::Result<PgPool> {
    Ok(sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&testkit::with_database(&bench.database_base_url, database))
        .await?)
}

/// What the history holds, if it holds a complete seed of `deliveries`.
async fn seeded_already(
    bench: &Bench,
    history: &str,
    deliveries: i64,
) -> anyhow::Result<Option<Seeded>> {
    let mut admin = testkit::database::admin(&bench.database_base_url).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(history)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        return Ok(None);
    }
    let pool = connect(bench, history).await?;
    let marker: Option<(i32, i64, serde_json::Value)> = sqlx::query_as(
        "SELECT version, deliveries, seeded FROM public.herald_bench_growth
         WHERE to_regclass('public.herald_bench_growth') IS NOT NULL",
    )
    .fetch_optional(&pool)
    .await
    .unwrap_or(None);
    pool.close().await;
    Ok(marker
        .filter(|(version, n, _)| *version == SEED_VERSION && *n == deliveries)
        .and_then(|(_, _, seeded)| serde_json::from_value(seeded).ok()))
}

/// What preparing the history took, seconds.
#[derive(Debug, Clone, Copy, serde::Serialize)]
struct Prepared {
    migrate_s: f64,
    vacuum_s: f64,
}

/// Seeds the history unless it already holds this seed; then migrates and vacuums it.
async fn history(bench: &Bench, deliveries: i64) -> anyhow::Result<(String, Seeded, Prepared)> {
    let name = format!("{}_growth_{deliveries}", bench.database);
    testkit::database::check_name(&name)?;
    let tag = bench.next_tag();
    let mut world = bench.world(&tag, &format!("{tag}.events"), "1s,2s,5s");
    world.database_url = testkit::with_database(&bench.database_base_url, &name);
    let config = bench.herald_config(&tag, world);
    let seeded = match seeded_already(bench, &name, deliveries).await? {
        Some(seeded) => {
            eprintln!(
                "  growth: reusing {name} ({} deliveries)",
                seeded.deliveries
            );
            seeded
        }
        None => {
            eprintln!("  growth: seeding {name} with {deliveries} deliveries …");
            testkit::database::create(&bench.database_base_url, &name, true).await?;
            process::migrate(&config).await?;
            let pool = connect(bench, &name).await?;
            let seeded = growth_seed::seed(bench, &pool, deliveries).await?;
            sqlx::query(
                "CREATE TABLE public.herald_bench_growth
                     (version int4 NOT NULL, deliveries int8 NOT NULL, seeded jsonb NOT NULL)",
            )
            .execute(&pool)
            .await?;
            sqlx::query("INSERT INTO public.herald_bench_growth VALUES ($1, $2, $3)")
                .bind(SEED_VERSION)
                .bind(deliveries)
                .bind(serde_json::to_value(seeded)?)
                .execute(&pool)
                .await?;
            pool.close().await;
            eprintln!("  growth: seeded {seeded:?}");
            seeded
        }
    };
    // This build's migrations on the history (a no-op when it is at this schema).
    let migrating = Instant::now();
    process::migrate(&config).await?;
    let migrate_s = migrating.elapsed().as_secs_f64();
    let vacuuming = Instant::now();
    let pool = connect(bench, &name).await?;
    sqlx::query(
        "VACUUM (ANALYZE) herald.events, herald.deliveries, herald.delivery_attempts, \
         herald.event_keys",
    )
    .execute(&pool)
    .await?;
    pool.close().await;
    let vacuum_s = vacuuming.elapsed().as_secs_f64();
    eprintln!("  growth: herald migrate on {name}: {migrate_s:.1} s; vacuum {vacuum_s:.1} s");
    Ok((
        name,
        seeded,
        Prepared {
            migrate_s,
            vacuum_s,
        },
    ))
}

/// Deletes the endpoints earlier runs added to the history (each run adds its own, and
/// theirs would receive its events too: twice the fan-out).
async fn retire_bench_endpoints(bench: &Bench, history: &str) -> anyhow::Result<()> {
    let pool = connect(bench, history).await?;
    sqlx::query(
        "UPDATE herald.endpoints SET deleted_at = now()
         WHERE event_types = '{#}' AND deleted_at IS NULL",
    )
    .execute(&pool)
    .await?;
    pool.close().await;
    Ok(())
}

fn report(label: &str, rep: usize, run: &RunOutcome) {
    eprintln!(
        "  growth {label} #{rep}: {:.0}/s, p99 {:.1} ms, lost {}, dup {}{}",
        run.groups[0].deliveries_per_s,
        run.groups[0].latency_ms.p99,
        run.lost,
        run.duplicates,
        if run.timed_out { ", TIMED OUT" } else { "" }
    );
}

/// The list figures of a Herald serving the history.
async fn lists(
    bench: &Bench,
    history: &str,
    rounds: usize,
    limit: Option<usize>,
) -> anyhow::Result<Vec<growth_lists::ListFigure>> {
    let tag = bench.next_tag();
    let mut world = bench.world(&tag, &format!("{tag}.events"), "1s,2s,5s");
    world.database_url = testkit::with_database(&bench.database_base_url, history);
    let settings = world.settings()?;
    let topology = herald::delivery::topology(&settings);
    let mut config = bench.herald_config(&tag, world);
    config
        .extra_env
        .push(("HERALD__API__ADMIN_TOKEN", ADMIN_TOKEN.to_string()));
    let pool = connect(bench, history).await?;
    let endpoint: uuid::Uuid = sqlx::query_scalar(
        "SELECT id FROM herald.endpoints WHERE tenant_id = 'tenant-3' ORDER BY url LIMIT 1",
    )
    .fetch_one(&pool)
    .await?;
    pool.close().await;
    topology.declare(&bench.channel).await?;
    let result = async {
        let mut herald = Herald::spawn(&config).await?;
        herald.wait_ready(Duration::from_secs(60)).await?;
        let figures = growth_lists::measure(
            herald.api(),
            endpoint,
            &format!("tenant-{}", growth_seed::TENANTS - 1),
            rounds,
            limit,
        )
        .await;
        herald.stop().await?;
        figures
    }
    .await;
    if let Err(error) = topology.delete(&bench.channel).await {
        eprintln!("cleanup: deleting queues of {tag}: {error}");
    }
    result
}

pub async fn growth(bench: &Bench, size: Size, reps: usize) -> anyhow::Result<Row> {
    let deliveries: i64 = size.pick(10_000_000, 200_000, 4_000);
    let (history, seeded, prepared) = history(bench, deliveries).await?;
    let count = size.pick(100_000, 5_000, 200);
    let spec = as_fast_as_possible(count);

    // Pairs alternated, the order swapped every pair.
    let (mut empty, mut full) = (Vec::new(), Vec::new());
    for rep in 0..reps {
        for seeded_first in [rep % 2 == 1, rep % 2 == 0] {
            if seeded_first {
                retire_bench_endpoints(bench, &history).await?;
                let run = bench.run_herald_on(&spec, Some(&history)).await?;
                report("seeded", rep, &run);
                check(&run, "growth seeded");
                full.push(run);
            } else {
                let run = bench.run_herald(&spec).await?;
                report("empty", rep, &run);
                check(&run, "growth empty");
                empty.push(run);
            }
        }
    }
    let rate = |r: &RunOutcome| r.groups[0].deliveries_per_s;
    let mut pair_ratios: Vec<f64> = full
        .iter()
        .zip(&empty)
        .map(|(f, e)| rate(f) / rate(e).max(1.0))
        .collect();
    let mut full_rates: Vec<f64> = full.iter().map(rate).collect();
    let mut empty_rates: Vec<f64> = empty.iter().map(rate).collect();
    let pairs = pair_ratios.clone();
    let ratio = median(&mut pair_ratios);
    let full_median = median(&mut full_rates);
    let empty_median = median(&mut empty_rates);
    let representative = full
        .iter()
        .min_by(|a, b| {
            (rate(a) - full_median)
                .abs()
                .total_cmp(&(rate(b) - full_median).abs())
        })
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no run"))?;

    let rounds = size.pick(50, 50, 3);
    // Tiny histories have too few rows per filter for pages of 100.
    let limit = (size == Size::Tiny).then_some(10);
    let figures = lists(bench, &history, rounds, limit).await?;
    for f in &figures {
        eprintln!(
            "  growth list {:<42} p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms  ({} rows, {} samples)",
            f.query, f.latency_ms.p50, f.latency_ms.p99, f.latency_ms.max, f.rows, f.samples
        );
    }
    let worst = figures
        .iter()
        .max_by(|a, b| a.latency_ms.p99.total_cmp(&b.latency_ms.p99))
        .map(|f| format!("{} p99 {:.1} ms", f.query, f.latency_ms.p99))
        .unwrap_or_default();

    let g = &representative.groups[0];
    let row = Row {
        name: "growth".into(),
        deliveries: g.deliveries,
        seconds: round2(g.seconds),
        deliveries_per_s: (full_median * 10.0).round() / 10.0,
        baseline_per_s: Some((empty_median * 10.0).round() / 10.0),
        ratio: Some(round2(ratio)),
        latency_ms: g.latency_ms,
        rss_mib_max: full.iter().filter_map(RunOutcome::rss_max).reduce(f64::max),
        duplicates: full.iter().chain(&empty).map(|r| r.duplicates).sum(),
        lost: full.iter().chain(&empty).map(|r| r.lost).sum(),
        spread_per_s: full_rates
            .first()
            .zip(full_rates.last())
            .map(|(a, b)| [*a, *b]),
        baseline_spread_per_s: empty_rates
            .first()
            .zip(empty_rates.last())
            .map(|(a, b)| [*a, *b]),
        runs: full.len(),
        notes: format!(
            "steady ({count} × 500 B, 1 endpoint) on {} deliveries, {} events, {} attempts \
             already recorded over 20 days; baseline = the same on an empty database, runs \
             alternated; ratio = median of pairs; slowest list: {worst}",
            seeded.deliveries, seeded.events, seeded.attempts
        ),
        detail: serde_json::json!({
            "seeded": seeded,
            "prepared": prepared,
            "pair_ratios": pairs.iter().map(|r| round2(*r)).collect::<Vec<_>>(),
            "lists": figures,
            "list_rounds": rounds,
        }),
    };
    Ok(row)
}
