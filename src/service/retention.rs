//! Retention (docs/retention.md): every process creates the coming days' partitions
//! when it starts; the `api` role, every `retention.check_interval`, creates them ahead
//! and drops the days older than `retention.window` whose deliveries are all finished.

use std::sync::Arc;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::store::retention::{self, Dropped};

/// At start: the coming days' partitions, so the first rows of a day never wait for them.
pub async fn prepare(pool: PgPool) {
    if let Err(error) = retention::ensure_partitions(&pool).await {
        tracing::warn!(%error, "cannot create the coming days' partitions yet; ingest creates a missing day when it needs it");
    }
}

/// Until `shutdown`: one [`check`] every `retention.check_interval`.
pub async fn keep(settings: Arc<Settings>, pool: PgPool, shutdown: CancellationToken) {
    super::background::every(settings.retention.check_interval, &shutdown, || async {
        if let Err(error) = check(&settings, &pool).await {
            tracing::warn!(%error, "retention check failed; trying again at the next one");
        }
    })
    .await;
}

/// What one check did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Checked {
    /// Days whose partitions were created.
    pub created: i32,
    /// Days dropped (their names).
    pub dropped: Vec<String>,
    /// Days past the window kept for their unfinished deliveries: (name, how many).
    pub kept: Vec<(String, i64)>,
}

/// Creates the coming days and drops the expired ones; one day's failure (a lock not
/// granted in time) stops the round, the next check takes it up again.
pub async fn check(settings: &Settings, pool: &PgPool) -> Result<Checked, sqlx::Error> {
    let mut checked = Checked {
        created: retention::ensure_partitions(pool).await?,
        ..Checked::default()
    };
    let cutoff = retention::cutoff(settings.retention.window);
    for day in retention::expired(pool, cutoff).await? {
        match retention::drop_day(pool, &day).await? {
            Dropped::Dropped => {
                tracing::info!(day = %day.name, ends = %day.ends, "records older than retention.window removed");
                checked.dropped.push(day.name);
            }
            Dropped::Kept { unfinished } => {
                tracing::warn!(day = %day.name, unfinished,
                    "day past retention.window kept: some of its deliveries are not finished");
                checked.kept.push((day.name, unfinished));
            }
            Dropped::Busy => break,
        }
    }
    Ok(checked)
}
