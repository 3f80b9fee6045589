//! `herald-bench`: measures Herald against this machine's limit and a minimal relay.
//!
//! Starts a loopback webhook receiver, then for each scenario runs `herald serve` as a
//! separate process against the local RabbitMQ and PostgreSQL (its own database,
//! topology prefix and exchange per run), publishes load with pipelined confirms,
//! counts lost and duplicated (event, endpoint) pairs, and alternates with the
//! baseline relay. Prints a Markdown table, writes `results.json` and optionally
//! `docs/benchmarks.md`. `make bench` runs it; `BENCH_QUICK=1` picks the quick sizes.

mod features;
mod growth;
mod growth_lists;
mod growth_seed;
mod heap;
mod latency;
mod leftovers;
mod load;
mod process;
mod receiver;
mod relay;
mod report;
mod resend;
mod row;
mod run;
mod scale_out;
mod scenarios;
mod shared;

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;

use crate::row::Size;

/// Counts heap bytes per thread (`heap::thread_net_bytes`) for the snapshot's size.
#[global_allocator]
static ALLOCATOR: heap::Counting = heap::Counting;

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

#[derive(Debug, Parser)]
#[command(
    name = "herald-bench",
    about = "Herald benchmarks against a minimal relay"
)]
struct Args {
    /// Scenario sizes: full (issue 4), quick (BENCH_QUICK=1), tiny (smoke test).
    #[arg(long, value_enum, default_value = "full")]
    mode: Size,
    /// Comma-separated scenarios; default all but `ordered` (ordered-1, -10, -1000) and
    /// `scale-out` (scale-out-throughput, -latency; needs `make cluster`).
    #[arg(long, value_delimiter = ',', default_values_t = scenarios::ALL.map(String::from))]
    scenarios: Vec<String>,
    #[arg(
        long,
        env = "HERALD__AMQP__URL",
        default_value = "amqp://guest:guest@127.0.0.1:5673/%2f"
    )]
    amqp_url: String,
    /// Any database of the server; the bench creates and drops its own next to it.
    #[arg(
        long,
        env = "HERALD__DATABASE__URL",
        default_value = "postgres://herald:herald@127.0.0.1:5433/herald"
    )]
    database_url: String,
    /// The bench's own database (dropped and recreated for every run).
    #[arg(long, default_value = "herald_bench")]
    database: String,
    #[arg(
        long,
        env = "HERALD_AMQP_MGMT_URL",
        default_value = "http://guest:guest@127.0.0.1:15673"
    )]
    management_url: String,
    /// The herald binary; default: next to this one.
    #[arg(long)]
    herald: Option<PathBuf>,
    /// Herald/baseline run pairs for steady, fan-out, latency and scale-out (default: 3
    /// in full mode, else 1).
    #[arg(long)]
    reps: Option<usize>,
    /// Herald's delivery.concurrency (and the relay's requests in flight).
    #[arg(long, default_value_t = 256)]
    concurrency: u16,
    /// Verify one signature in this many requests.
    #[arg(long, default_value_t = 20)]
    sample_every: u64,
    /// Where results.json goes.
    #[arg(long, default_value = "target/bench/results.json")]
    json: PathBuf,
    /// Also rewrite the generated section of this Markdown file.
    #[arg(long)]
    docs: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let herald = match args.herald {
        Some(path) => path,
        None => std::env::current_exe()?.with_file_name("herald"),
    };
    anyhow::ensure!(
        herald.exists(),
        "{} not found: build it first (cargo build --release --bins)",
        herald.display()
    );
    let names: Vec<String> = args
        .scenarios
        .iter()
        .flat_map(|n| scenarios::expand(n))
        .collect();
    for name in &names {
        anyhow::ensure!(
            scenarios::known(name),
            "unknown scenario `{name}` (known: {}, {}, ordered-<keys>)",
            scenarios::ALL.join(", "),
            scenarios::EXTRA.join(", ")
        );
    }
    herald::testkit::database::check_name(&args.database).context("--database")?;
    let stop = CancellationToken::new();
    let receiver = receiver::Receiver::start(args.sample_every, stop.clone()).await?;
    let bench = run::Bench::new(
        args.amqp_url.clone(),
        args.database_url.clone(),
        args.database.clone(),
        herald,
        receiver,
        args.concurrency,
        args.json
            .parent()
            .map_or_else(|| PathBuf::from("."), PathBuf::from)
            .join("logs"),
    )
    .await?;
    let mode = format!("{:?}", args.mode).to_lowercase();
    let system = report::system(&args.management_url, &args.database_url, &mode).await;
    eprintln!(
        "herald-bench ({mode}): {} · RabbitMQ {} · PostgreSQL {}",
        system.cpu, system.rabbitmq, system.postgresql
    );
    let _live = leftovers::Live::mark(&bench.tag_base)?;
    match leftovers::delete_queues(&args.management_url).await {
        Ok(0) => {}
        Ok(n) => eprintln!("deleted {n} queues left by earlier aborted bench runs"),
        Err(error) => eprintln!("cannot look for queues left by earlier runs: {error:#}"),
    }

    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for name in &names {
        eprintln!("scenario {name} …");
        match scenarios::run(&bench, name, args.mode, args.reps).await {
            Ok(row) => rows.push(row),
            Err(error) => {
                eprintln!("scenario {name} failed: {error:#}");
                failures.push(format!("{name}: {error:#}"));
            }
        }
        // Partial results survive a later failure.
        report::write_json(&args.json, &system, &rows)?;
    }
    if let Err(error) = bench.drop_database().await {
        eprintln!("cleanup: dropping {}: {error:#}", args.database);
    }
    stop.cancel();

    let table = report::table(&rows);
    println!("{table}");
    report::write_json(&args.json, &system, &rows)?;
    eprintln!("wrote {}", args.json.display());
    if let Some(docs) = &args.docs {
        report::write_docs(docs, &system, &rows)
            .with_context(|| format!("updating {}", docs.display()))?;
        eprintln!("wrote {}", docs.display());
    }
    anyhow::ensure!(failures.is_empty(), "failed: {}", failures.join("; "));
    Ok(())
}
