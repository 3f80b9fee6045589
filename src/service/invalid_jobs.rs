//! Reingest and purge of the parking queue as jobs (issue 15): started here and
//! recorded (`herald.invalid_jobs`), then walked by the process that started them — in
//! the background of the API (which answers `202` with the job to poll), in the
//! foreground of the CLI — writing their progress after every chunk, so that any `api`
//! process answers for a job.
//!
//! A job is never resumed: the state of its walk (every message looked at is held,
//! unacknowledged, until the end) lives in its process's channel, and when that
//! process dies the broker returns what it held. What was reingested or purged stays
//! done; the rest is back in the queue, perhaps out of order. A fresh walk over that
//! queue could not continue the old one: messages a reingest sent that ingest refused
//! again are parked with new ids behind the walk, and a second walk would send them
//! once more and count them twice; and a process that is only slow (a publish waiting
//! out a broker alarm) would walk the queue alongside its "successor". So a running
//! job not moved for [`STALE`] is marked `failed` by a sweep every `api` process runs
//! ([`fail_stale`]), with an error that says to run it again; and a process that was
//! only slow finds its job failed at its next chunk and stops, returning what it holds.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::invalid::{self, Observer, Progress, Selection};
use super::{Caller, ServiceError};
use crate::config::Settings;
use crate::store::invalid_jobs::{self as jobs, Counts, Job, Selected};

/// A running job not moved for this long lost its process. A walk moves after every
/// chunk of at most [`invalid::CHUNK`] messages looked at: about a second at the 600
/// messages a second measured (docs/operations.md).
pub const STALE: Duration = Duration::from_secs(60);
/// How often each `api` process looks for stale jobs.
const SWEEP_EVERY: Duration = Duration::from_secs(15);
/// The error of a job whose process stopped.
pub const STALE_ERROR: &str = "no progress for a minute: the process running the job \
    stopped. What it reingested or purged stays done; the messages it held went back to \
    the parking queue (perhaps out of order): run the job again for the rest";

/// Send back through ingest, or drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Reingest,
    Purge,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Reingest => "reingest",
            Kind::Purge => "purge",
        }
    }
}

/// Checks and records a job; the caller runs it ([`run`]). A purge must be
/// `confirmed`.
pub async fn start(
    pool: &PgPool,
    caller: &Caller,
    kind: Kind,
    given: Selected,
    confirmed: bool,
) -> Result<Job, ServiceError> {
    caller.require_admin()?;
    let selection = Selection::of(&given)?;
    match kind {
        Kind::Reingest => invalid::check_reingest(caller, &selection)?,
        Kind::Purge => invalid::check_purge(caller, confirmed)?,
    }
    let job = jobs::insert(pool, kind.as_str(), &given).await?;
    tracing::info!(job_id = %job.id, kind = job.kind, "parking-queue job started");
    Ok(job)
}

/// One job; the admin's only, like the parking queue.
pub async fn get(pool: &PgPool, caller: &Caller, id: Uuid) -> Result<Job, ServiceError> {
    caller.require_admin()?;
    jobs::get(pool, id).await?.ok_or(ServiceError::NotFound)
}

/// Walks the queue for a job to its end; `progress` sees the job after every chunk
/// and finished. A failure is recorded on the job (`failed`, with the error) as well
/// as returned.
pub async fn run(
    settings: &Settings,
    pool: &PgPool,
    job: Job,
    progress: impl FnMut(&Job) + Send,
) -> Result<Job, ServiceError> {
    let id = job.id;
    let mut recorder = Recorder {
        pool,
        id,
        counts: Counts::default(),
        progress,
    };
    let worked = walk(settings, &job, &mut recorder).await;
    let finished = match &worked {
        Ok(not_found) => jobs::finish(pool, id, Ok((&recorder.counts, not_found))).await,
        Err(error) => {
            tracing::warn!(job_id = %id, %error, "parking-queue job failed");
            jobs::finish(pool, id, Err(&error.to_string())).await
        }
    };
    let not_found = worked?;
    let Some(job) = finished? else {
        return Err(stopped(id));
    };
    tracing::info!(job_id = %id, kind = job.kind, taken = job.taken(), skipped = job.skipped,
        not_found = not_found.len(), "parking-queue job done");
    (recorder.progress)(&job);
    Ok(job)
}

/// The walk of `job`; the requested ids not found.
async fn walk(
    settings: &Settings,
    job: &Job,
    recorder: &mut impl Observer,
) -> Result<Vec<Uuid>, ServiceError> {
    let selection = Selection::of(&job.selection)?;
    let admin = &Caller::Admin;
    match job.kind.as_str() {
        "reingest" => Ok(invalid::reingest(settings, admin, selection, recorder)
            .await?
            .not_found),
        _ => Ok(invalid::purge(settings, admin, selection, true, recorder)
            .await?
            .not_found),
    }
}

fn stopped(id: Uuid) -> ServiceError {
    ServiceError::Conflict(format!(
        "job {id} is no longer running (marked failed: no progress for a minute)"
    ))
}

/// Writes a job's progress after each chunk; stops the walk when the job was marked
/// failed meanwhile.
struct Recorder<'a, F> {
    pool: &'a PgPool,
    id: Uuid,
    counts: Counts,
    progress: F,
}

impl<F: FnMut(&Job) + Send> Observer for Recorder<'_, F> {
    async fn progress(&mut self, progress: Progress) -> Result<(), ServiceError> {
        self.counts = counts(progress);
        let Some(job) = jobs::advance(self.pool, self.id, &self.counts).await? else {
            return Err(stopped(self.id));
        };
        (self.progress)(&job);
        Ok(())
    }
}

fn counts(progress: Progress) -> Counts {
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    Counts {
        depth: progress.depth.into(),
        seen: progress.seen.into(),
        taken: count(progress.taken),
        skipped: count(progress.skipped),
        by_reason: progress
            .by_reason
            .into_iter()
            .map(|(reason, n)| (reason, count(n)))
            .collect(),
    }
}

/// Marks `failed` the jobs whose process stopped, now and then, until `shutdown`. Run
/// by every `api` role process.
pub async fn fail_stale(pool: PgPool, shutdown: CancellationToken) {
    let stale = chrono::Duration::from_std(STALE).expect("a minute");
    super::background::every(SWEEP_EVERY, &shutdown, || async {
        match jobs::fail_stale(&pool, stale, STALE_ERROR).await {
            Ok(ids) => {
                for id in ids {
                    tracing::warn!(job_id = %id, "parking-queue job failed: its process stopped");
                }
            }
            Err(error) => tracing::debug!(%error, "stale parking-queue jobs not swept"),
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn a_walks_progress_is_recorded_as_counts() {
        let progress = Progress {
            seen: 7,
            depth: 9,
            taken: 3,
            skipped: 1,
            by_reason: BTreeMap::from([("not_json".to_string(), 3)]),
        };
        assert_eq!(
            counts(progress),
            Counts {
                depth: 9,
                seen: 7,
                taken: 3,
                skipped: 1,
                by_reason: BTreeMap::from([("not_json".to_string(), 3)]),
            }
        );
    }

    #[tokio::test]
    async fn a_tenant_an_unsendable_reingest_and_an_unconfirmed_purge_record_no_job() {
        // Nothing listens here: each is refused before the database is asked.
        let pool = PgPool::connect_lazy("postgres://herald@127.0.0.1:1/none").unwrap();
        let all = Selected {
            all: true,
            ..Selected::default()
        };
        let malformed = Selected {
            reason: Some("malformed_task".into()),
            ..Selected::default()
        };
        let tenant = Caller::Tenant("acme".into());
        let admin = Caller::Admin;
        let cases = [
            (&tenant, Kind::Reingest, all.clone(), true, "forbidden"),
            (&tenant, Kind::Purge, Selected::default(), true, "forbidden"),
            (&admin, Kind::Reingest, malformed, false, "reason"),
            (&admin, Kind::Purge, all.clone(), false, "confirm"),
            (&admin, Kind::Purge, Selected::default(), true, "ids"),
        ];
        for (caller, kind, given, confirmed, refusal) in cases {
            let got = match start(&pool, caller, kind, given.clone(), confirmed).await {
                Err(ServiceError::Forbidden) => "forbidden".to_string(),
                Err(ServiceError::Invalid(fields)) => fields[0].field.clone(),
                other => panic!("{kind:?} {given:?}: {other:?}"),
            };
            assert_eq!(got, refusal, "{kind:?} {given:?}");
        }
    }
}
