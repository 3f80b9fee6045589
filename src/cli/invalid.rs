//! `herald invalid list|reingest|purge`: the parking queue `<prefix>.invalid`
//! (`crate::service::invalid`), locally or through the admin API (`--api`). Progress
//! goes to stderr, the summary to stdout as JSON.

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::json;
use uuid::Uuid;

use super::print_json;
use super::remote::Call;
use crate::config::Settings;
use crate::service::invalid::{self, Progress, Selection};
use crate::service::{Caller, PageRequest};

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
    fn selection(&self) -> anyhow::Result<Selection> {
        Ok(Selection::new(
            self.all,
            self.ids.clone(),
            self.reason.clone(),
        )?)
    }

    fn body(&self) -> serde_json::Value {
        json!({ "all": self.all, "ids": self.ids, "reason": self.reason })
    }
}

fn report(verb: &'static str) -> impl FnMut(Progress) {
    move |p: Progress| {
        eprintln!(
            "invalid {verb}: {} of {} looked at, {} taken",
            p.seen, p.depth, p.taken
        )
    }
}

pub async fn run(settings: &Settings, command: InvalidCommand) -> anyhow::Result<()> {
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
        InvalidCommand::Reingest(which) => {
            let done =
                invalid::reingest(settings, admin, which.selection()?, report("reingest")).await?;
            print_json(&done)?;
            if !done.not_found.is_empty() {
                anyhow::bail!("{} id(s) not in the parking queue", done.not_found.len());
            }
            Ok(())
        }
        InvalidCommand::Purge { which, yes } => {
            if !yes {
                anyhow::bail!("purge drops messages for good: add --yes");
            }
            let selection = which.selection()?;
            let done = invalid::purge(settings, admin, selection, yes, report("purge")).await?;
            print_json(&done)?;
            if !done.not_found.is_empty() {
                anyhow::bail!("{} id(s) not in the parking queue", done.not_found.len());
            }
            Ok(())
        }
    }
}

/// The API call that does what `command` does locally (`--api`).
pub fn remote_call(command: &InvalidCommand) -> anyhow::Result<Call> {
    Ok(match command {
        InvalidCommand::List { reason, limit } => Call::new(Method::GET, "/invalid")
            .query("reason", reason.as_ref())
            .list(Some(*limit)),
        InvalidCommand::Reingest(which) => {
            Call::new(Method::POST, "/invalid/reingest").body(which.body())
        }
        InvalidCommand::Purge { which, yes } => {
            if !yes {
                anyhow::bail!("purge drops messages for good: add --yes");
            }
            let mut body = which.body();
            body["confirm"] = json!(true);
            Call::new(Method::POST, "/invalid/purge").body(body)
        }
    })
}
