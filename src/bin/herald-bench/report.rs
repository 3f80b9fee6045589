//! Output: the Markdown table (stdout and `docs/benchmarks.md`, with date, CPU model,
//! RabbitMQ and PostgreSQL versions) and `results.json`.

use std::path::Path;

use anyhow::Context;
use sqlx::{Connection as _, PgConnection};

use crate::row::Row;

/// Where and on what the figures were measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct System {
    pub date: String,
    pub cpu: String,
    pub cores: usize,
    pub rabbitmq: String,
    pub postgresql: String,
    pub mode: String,
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

async fn rabbitmq_version(management_url: &str) -> String {
    let url = format!("{}/api/overview", management_url.trim_end_matches('/'));
    let fetched = async {
        let overview: serde_json::Value = reqwest::Client::new()
            .get(&url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        anyhow::Ok(
            overview["rabbitmq_version"]
                .as_str()
                .unwrap_or("unknown")
                .to_string(),
        )
    };
    fetched.await.unwrap_or_else(|_| "unknown".into())
}

async fn postgresql_version(database_url: &str) -> String {
    let fetched = async {
        let mut connection = PgConnection::connect(database_url).await?;
        let version: String = sqlx::query_scalar("SHOW server_version")
            .fetch_one(&mut connection)
            .await?;
        let _ = connection.close().await;
        anyhow::Ok(version)
    };
    fetched.await.unwrap_or_else(|_| "unknown".into())
}

pub async fn system(management_url: &str, database_url: &str, mode: &str) -> System {
    System {
        date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        cpu: cpu_model(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        rabbitmq: rabbitmq_version(management_url).await,
        postgresql: postgresql_version(database_url).await,
        mode: mode.to_string(),
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{v}"))
}

/// The results table in Markdown.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| scenario | deliveries | s | deliveries/s (spread) | baseline/s (spread) | ratio | p50 ms | p90 ms | p99 ms | max ms | RSS MiB | dup | lost |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let spread = |s: Option<[f64; 2]>| {
            s.filter(|[a, b]| a != b)
                .map_or_else(String::new, |[a, b]| format!(" ({a}–{b})"))
        };
        out.push_str(&format!(
            "| {} | {} | {} | {}{} | {}{} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.name,
            r.deliveries,
            r.seconds,
            r.deliveries_per_s,
            spread(r.spread_per_s),
            opt(r.baseline_per_s),
            spread(r.baseline_spread_per_s),
            opt(r.ratio),
            r.latency_ms.p50,
            r.latency_ms.p90,
            r.latency_ms.p99,
            r.latency_ms.max,
            opt(r.rss_mib_max),
            r.duplicates,
            r.lost,
        ));
    }
    out.push('\n');
    for r in rows {
        out.push_str(&format!(
            "- **{}** ({} run(s)): {}\n",
            r.name, r.runs, r.notes
        ));
    }
    out
}

pub fn write_json(path: &Path, system: &System, rows: &[Row]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let json = serde_json::json!({ "system": system, "scenarios": rows });
    std::fs::write(path, serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// Replaces the generated section of `docs/benchmarks.md` (between markers), keeping
/// the hand-written analysis around it.
pub fn write_docs(path: &Path, system: &System, rows: &[Row]) -> anyhow::Result<()> {
    const BEGIN: &str = "<!-- herald-bench:begin -->";
    const END: &str = "<!-- herald-bench:end -->";
    let generated = format!(
        "{BEGIN}\n## Latest run ({mode})\n\n{date} · {cpu} ({cores} cores) · RabbitMQ {rabbit} · \
         PostgreSQL {pg}\n\n{table}{END}",
        mode = system.mode,
        date = system.date,
        cpu = system.cpu,
        cores = system.cores,
        rabbit = system.rabbitmq,
        pg = system.postgresql,
        table = table(rows),
    );
    let existing = std::fs::read_to_string(path).unwrap_or_default();
    let text = match (existing.find(BEGIN), existing.find(END)) {
        (Some(b), Some(e)) if b < e => format!(
            "{}{generated}{}",
            &existing[..b],
            &existing[e + END.len()..]
        ),
        _ if existing.is_empty() => format!("# Benchmarks\n\n{generated}\n"),
        _ => format!("{existing}\n{generated}\n"),
    };
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
