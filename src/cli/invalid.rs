//! `herald invalid list|reingest|purge`: the parking queue `<prefix>.invalid`
//! (`crate::service::invalid`), locally or through the admin API (`--api`). Reingest
//! and purge are jobs (`crate::service::invalid_jobs`): run in the foreground locally,
//! followed through the API; either way their progress goes to stderr and the finished
//! job to stdout as JSON.

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::json;
use uuid::Uuid;

use super::print_json;
use super::progress::Progress;
use super::remote::Call;
use crate::config::Settings;
use crate::service::invalid;
use crate::service::invalid_jobs::{self as jobs, Kind};
use crate::service::{Caller, PageRequest};
use crate::store::invalid_jobs::{Job, Selected};

#[derive(Subcommand)]
pub enum InvalidCommand {
    /// Parked messages in queue order, without taking them: reason, error, origin,
    /// properties, headers and the first KiB of the body.
    List {
        /// Only messages parked for this reason (`not_json`, `too_large`, …).
        #[arg(long)]
        reason: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Send parked messages back through ingest, once the publisher or Herald is fixed.
    Reingest(Which),
    /// Drop parked messages for good; needs `--yes`.
    Purge {
        #[command(flatten)]
        which: Which,
        /// Yes, drop them.
        #[arg(long)]
        yes: bool,
    },
}

/// Exactly one of `--all`, `--id ID…`, `--reason R`.
#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct Which {
    #[arg(long)]
    all: bool,
    /// A parked message's id (from `herald invalid list`); repeatable.
    #[arg(long = "id", num_args = 1..)]
    ids: Vec<Uuid>,
    #[arg(long)]
    reason: Option<String>,
}

impl Which {
    fn selected(&self) -> Selected {
        Selected {
            all: self.all,
            ids: self.ids.clone(),
            reason: self.reason.clone(),
        }
    }

    fn body(&self) -> serde_json::Value {
        json!({ "all": self.all, "ids": self.ids, "reason": self.reason })
    }
}

/// How far a parking-queue job is: messages looked at of the queue's depth, and what
/// it did with them. The same for a job run here and one followed through the API.
pub fn gauge(job: &serde_json::Value) -> (u64, u64, String) {
    let count = |key: &str| job[key].as_u64().unwrap_or(0);
    let note = if job["kind"] == "purge" {
        format!("{} purged", count("purged"))
    } else {
        format!(
            "{} reingested, {} skipped",
            count("reingested"),
            count("skipped")
        )
    };
    (count("seen"), count("depth"), note)
}

/// Runs a parking-queue job in the foreground: progress on stderr, the finished job on
/// stdout; fails when ids asked for were not in the queue.
async fn job(
    settings: &Settings,
    pool: &sqlx::PgPool,
    kind: Kind,
    which: &Which,
    confirmed: bool,
) -> anyhow::Result<()> {
    let job = jobs::start(pool, &Caller::Admin, kind, which.selected(), confirmed).await?;
    let mut progress = Progress::new(format!("{} {}", job.kind, job.id), 0);
    let mut show = |job: &Job, end: bool| {
        let (done, total, note) = gauge(&serde_json::to_value(job).unwrap_or_default());
        progress.set_total(total);
        if end {
            progress.finish(done, &note);
        } else {
            progress.update(done, &note);
        }
    };
    let done = jobs::run(settings, pool, job, |job| show(job, false)).await?;
    show(&done, true);
    print_json(&done)?;
    if !done.not_found.is_empty() {
        anyhow::bail!("{} id(s) not in the parking queue", done.not_found.len());
    }
    Ok(())
}

pub async fn run(
    settings: &Settings,
    pool: &sqlx::PgPool,
    command: InvalidCommand,
) -> anyhow::Result<()> {
    let admin = &Caller::Admin;
    match command {
        InvalidCommand::List { reason, limit } => {
            let mut rows = Vec::new();
            let mut cursor = None;
            loop {
                let want = (limit - rows.len()).clamp(1, 1_000) as i64;
                let page = PageRequest::new(Some(want), cursor)?;
                let next = invalid::list(settings, admin, reason.clone(), page).await?;
                rows.extend(next.data);
                cursor = next.next_cursor;
                if cursor.is_none() || rows.len() >= limit {
                    break;
                }
            }
            print_json(&rows)
        }
        InvalidCommand::Reingest(which) => job(settings, pool, Kind::Reingest, &which, false).await,
        InvalidCommand::Purge { which, yes } => {
            if !yes {
                anyhow::bail!("purge drops messages for good: add --yes");
            }
            job(settings, pool, Kind::Purge, &which, yes).await
        }
    }
}

/// The API call that does what `command` does locally (`--api`).
pub fn remote_call(command: &InvalidCommand) -> anyhow::Result<Call> {
    Ok(match command {
        InvalidCommand::List { reason, limit } => Call::new(Method::GET, "/invalid")
            .query("reason", reason.as_ref())
            .list(Some(*limit)),
        InvalidCommand::Reingest(which) => Call::new(Method::POST, "/invalid/reingest")
            .body(which.body())
            .follow("/invalid/jobs", gauge),
        InvalidCommand::Purge { which, yes } => {
            if !yes {
                anyhow::bail!("purge drops messages for good: add --yes");
            }
            let mut body = which.body();
            body["confirm"] = json!(true);
            Call::new(Method::POST, "/invalid/purge")
                .body(body)
                .follow("/invalid/jobs", gauge)
        }
    })
}
