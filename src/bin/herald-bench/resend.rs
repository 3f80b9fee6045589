//! The `redrive` and `replay` scenarios (issues 15 and 14): a million stored events
//! (written straight into the records, as months of history would leave them) sent
//! again to one endpoint while live traffic flows to another — as dead deliveries
//! redriven with `herald dlq redrive --all`, or as events replayed with `herald replay`.
//! They measure how long the job and the deliveries take, the command's peak memory
//! (a job must not hold its selection in memory), the work queue's depth (a redrive's
//! cap; a replay's pace) and the live endpoint's latency before and during the job.

use std::time::{Duration, Instant};

use herald::domain::SigningSecret;

use crate::load::{self, Load};
use crate::now_us;
use crate::process::{self, Herald};
use crate::receiver::Behavior;
use crate::row::{Row, Size};
use crate::run::{Bench, EndpointSpec, Latency};

const LIVE: &str = "bench.order.created";
const STORED: &str = "bench.order.failed";

fn behaviors(secrets: &[SigningSecret]) -> Vec<Behavior> {
    secrets
        .iter()
        .enumerate()
        .map(|(group, secret)| Behavior {
            group,
            secret: Some(secret.clone()),
            ..Behavior::default()
        })
        .collect()
}

/// What is sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resend {
    /// Dead deliveries, by `herald dlq redrive --all`.
    Redrive,
    /// Stored events without deliveries, by `herald replay`.
    Replay,
}

pub async fn resend(bench: &Bench, size: Size, kind: Resend) -> anyhow::Result<Row> {
    let name = match kind {
        Resend::Redrive => "redrive",
        Resend::Replay => "replay",
    };
    let dead: i64 = match size {
        Size::Full => 1_000_000,
        Size::Quick => 100_000,
        Size::Tiny => 2_000,
    };
    let live_rate = if size == Size::Tiny { 20.0 } else { 200.0 };
    let tag = bench.next_tag();
    let exchange = format!("{tag}.events");
    let world = bench.world(&tag, &exchange, "1s,2s,5s");
    let settings = world.settings()?;
    let topology = herald::delivery::topology(&settings);
    let config = bench.herald_config(&tag, world);
    bench.fresh_database().await?;
    process::migrate(&config).await?;
    let pool = bench.pool().await?;
    // The receiver finds `"sent_at_us":<digits>` in the body, so the data is written as
    // text (json_build_object would space it out). Each event has its own arrival time,
    // as ingest's batches give them: a million sharing one would make every page of a
    // replay scan them all (its keyset index is on received_at alone).
    // Endpoint 0 is sent the stored events (its pattern matches nothing live), 1 the
    // live one.
    let endpoints = [
        EndpointSpec::simple(STORED, 0),
        EndpointSpec::simple(LIVE, 1),
    ];
    let secrets = bench.insert_endpoints(&pool, &endpoints).await?;
    let dead_endpoint: uuid::Uuid = sqlx::query_scalar(
        "SELECT id FROM herald.endpoints WHERE event_types = '{bench.order.failed}'",
    )
    .fetch_one(&pool)
    .await?;
    // Seeded an hour back: in the first hour of a UTC day that is yesterday, whose
    // partitions a fresh database does not have.
    let now = chrono::Utc::now();
    herald::store::retention::create_partitions(&pool, now - chrono::Duration::hours(2), now)
        .await?;
    let seeded = Instant::now();
    sqlx::query(
        r#"INSERT INTO herald.events (id, type, occurred_at, payload, received_at)
         SELECT 'dead-' || n, 'bench.order.failed', now() - interval '1 hour',
                ('{"sent_at_us":' || $2::int8 || ',"pad":"' || repeat('x', 400) || '"}')::json,
                now() - interval '1 hour' + n * interval '1 microsecond'
         FROM generate_series(1, $1) AS n"#,
    )
    .bind(dead)
    .bind(now_us() as i64)
    .execute(&pool)
    .await?;
    if kind == Resend::Redrive {
        sqlx::query(
            "INSERT INTO herald.deliveries (id, tenant_key, event_id, endpoint_id, status, attempts,
                 last_status_code, last_error, dead_reason, dead_at)
             SELECT herald.uuid_v7(now()), '', 'dead-' || n, $2, 'failed', 4, 503,
                    'retries_exhausted: HTTP 503', 'retries_exhausted', now()
             FROM generate_series(1, $1) AS n",
        )
        .bind(dead)
        .bind(dead_endpoint)
        .execute(&pool)
        .await?;
    }
    // Statistics of what was seeded only: ANALYZE of the still empty deliveries table
    // (a replay) records it as empty, and every backend's foreign-key check of the
    // attempts then plans a sequential scan of it — which the replay makes grow by 2,000
    // rows a second, until autovacuum analyzes it again (measured: 40,302 sequential
    // scans reading 661 million rows for 40,039 attempts).
    let seeded_tables = match kind {
        Resend::Redrive => "ANALYZE herald.events, herald.deliveries",
        Resend::Replay => "ANALYZE herald.events",
    };
    sqlx::query(seeded_tables).execute(&pool).await?;
    eprintln!(
        "  {name}: {dead} stored events seeded in {:.1?}",
        seeded.elapsed()
    );
    topology.declare(&bench.channel).await?;
    bench.declare_exchange(&exchange).await?;

    let result = async {
        let mut herald = Herald::spawn(&config).await?;
        herald.wait_ready(Duration::from_secs(60)).await?;
        let live = |first: usize, count: usize| Load {
            exchange: exchange.clone(),
            tag: tag.clone(),
            first,
            count,
            rate: Some(live_rate),
            body_bytes: 500,
            kinds: vec![(LIVE.to_string(), None)],
            ordering_keys: None,
        };
        // Live traffic alone: the latency to compare with.
        let alone = (live_rate * if size == Size::Tiny { 2.0 } else { 10.0 }) as usize;
        bench.receiver.reset(behaviors(&secrets));
        load::publish(&bench.publisher, live(0, alone)).await?;
        let settle = Instant::now();
        while bench.receiver.unique() < alone && settle.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let before = bench.receiver.reset(behaviors(&secrets));
        let live_before = Latency::of(&before.groups[1].latency_us);

        // The redrive, with live traffic a second at a time until it ends.
        let start_us = now_us();
        let started = Instant::now();
        let redrive = {
            let config = config.clone();
            let endpoint = dead_endpoint.to_string();
            // The seeded events were received just now; a replay cannot reach past
            // retention.window, so "everything" is the last day.
            let since = (chrono::Utc::now() - chrono::Duration::days(1)).to_rfc3339();
            tokio::spawn(async move {
                let args: &[&str] = match kind {
                    Resend::Redrive => &["dlq", "redrive", "--all"],
                    Resend::Replay => &[
                        "replay",
                        "--endpoint",
                        &endpoint,
                        "--since",
                        &since,
                    ],
                };
                process::run_once(&config, args).await
            })
        };
        let mut published = alone;
        let mut max_queued = 0u32;
        while !redrive.is_finished() {
            load::publish(&bench.publisher, live(published, live_rate as usize)).await?;
            published += live_rate as usize;
            let queued = herald::topology::queue_depth(&bench.channel, &topology.work_queue()).await?;
            max_queued = max_queued.max(queued);
        }
        let job_s = started.elapsed().as_secs_f64();
        let (stdout, cli_rss) = redrive.await??;
        let job: serde_json::Value = serde_json::from_str(&stdout)?;
        let expected = dead as usize + (published - alone);
        let deadline = Instant::now()
            + Duration::from_secs(if size == Size::Tiny { 60 } else { 900 });
        while bench.receiver.unique() < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let rss = herald.stop().await?;
        let during = bench.receiver.reset(Vec::new());
        let drained = &during.groups[0];
        let seconds = drained.last_us.saturating_sub(start_us) as f64 / 1e6;
        let unique = during.seen.len();
        let live_during = Latency::of(&during.groups[1].latency_us);
        eprintln!(
            "  {name}: job {job_s:.1} s, all delivered after {seconds:.1} s, command peak RSS {cli_rss:.1} MiB, \
             work queue at most {max_queued}, live p99 {:.1} → {:.1} ms",
            live_before.p99, live_during.p99
        );
        anyhow::Ok(Row {
            name: name.into(),
            deliveries: drained.delivered,
            seconds: (seconds * 100.0).round() / 100.0,
            deliveries_per_s: if seconds > 0.0 { (drained.delivered as f64 / seconds).round() } else { 0.0 },
            baseline_per_s: None,
            ratio: None,
            latency_ms: live_during,
            rss_mib_max: rss.iter().copied().reduce(f64::max),
            duplicates: during.duplicates,
            lost: expected.saturating_sub(unique) as u64,
            spread_per_s: None,
            baseline_spread_per_s: None,
            runs: 1,
            notes: format!(
                "{dead} {} with {live_rate} live ev/s to another endpoint; latency = the live \
                 endpoint's during the job (alone: p99 {:.1} ms); job {job_s:.1} s, command peak \
                 RSS {cli_rss:.1} MiB, work queue ≤ {max_queued}",
                match kind {
                    Resend::Redrive => "dead deliveries redriven by `herald dlq redrive --all`",
                    Resend::Replay => "stored events replayed by `herald replay`",
                },
                live_before.p99
            ),
            detail: serde_json::json!({
                "job": job,
                "job_s": job_s,
                "command_rss_mib_max": cli_rss,
                "work_queue_max": max_queued,
                "live_latency_before_ms": live_before,
                "live_latency_during_ms": live_during,
            }),
        })
    }
    .await;
    if let Err(error) = topology.delete(&bench.channel).await {
        eprintln!("cleanup: deleting queues of {tag}: {error}");
    }
    bench.delete_exchange(&exchange).await;
    pool.close().await;
    result
}
