//! Endpoint health in a delivering process: which endpoints have a failure streak or an
//! open breaker (a cache of `herald.endpoint_health`, read whole every second, so every
//! process of a deployment follows the same breaker), and the writes an attempt's
//! outcome makes there. A healthy endpoint costs an attempt one map lookup; only
//! failures, held tasks and the first success after a streak reach the database.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::breaker::{after_failure, AfterFailure, BreakerPolicy, Streak};
use crate::store::health::{self, Passage};

/// How often the cache is read again from the database.
const REFRESH: Duration = Duration::from_secs(1);

/// What an attempt's failure changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    Opened,
    Disabled,
}

pub struct Health {
    pool: PgPool,
    pub policy: BreakerPolicy,
    /// Endpoints with a streak → whether their breaker is open.
    troubled: RwLock<HashMap<Uuid, bool>>,
}

impl Health {
    pub fn new(pool: PgPool, policy: BreakerPolicy) -> Arc<Self> {
        Arc::new(Self {
            pool,
            policy,
            troubled: RwLock::new(HashMap::new()),
        })
    }

    /// Reads the shared state every second until `shutdown`.
    pub async fn keep_fresh(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match health::troubled(&self.pool).await {
                Ok(rows) => {
                    let map = rows.into_iter().map(|t| (t.endpoint_id, t.open)).collect();
                    *self.troubled.write().expect("not poisoned") = map;
                }
                Err(error) => tracing::debug!(%error, "endpoint health not refreshed"),
            }
        }
    }

    /// The endpoint's breaker is open, as far as this process knows.
    pub fn is_open(&self, endpoint_id: Uuid) -> bool {
        self.troubled
            .read()
            .expect("not poisoned")
            .get(&endpoint_id)
            .copied()
            .unwrap_or(false)
    }

    fn has_streak(&self, endpoint_id: Uuid) -> bool {
        self.troubled
            .read()
            .expect("not poisoned")
            .contains_key(&endpoint_id)
    }

    fn note(&self, endpoint_id: Uuid, open: Option<bool>) {
        let mut troubled = self.troubled.write().expect("not poisoned");
        match open {
            Some(open) => troubled.insert(endpoint_id, open),
            None => troubled.remove(&endpoint_id),
        };
    }

    /// For a task of an endpoint whose breaker is open: send it (the probe, or the
    /// breaker closed meanwhile) or hold it back for the returned time.
    pub async fn pass(&self, endpoint_id: Uuid) -> Result<Option<Duration>, sqlx::Error> {
        match health::pass(&self.pool, endpoint_id, self.policy.probe_interval).await? {
            Passage::Probe => Ok(None),
            Passage::Closed => {
                self.note(endpoint_id, None);
                Ok(None)
            }
            Passage::Hold(wait) => Ok(Some(wait)),
        }
    }

    /// An attempt succeeded: ends the endpoint's streak, if it has one. `true` when
    /// this closed its breaker.
    pub async fn succeeded(&self, endpoint_id: Uuid) -> Result<bool, sqlx::Error> {
        if !self.has_streak(endpoint_id) {
            return Ok(false);
        }
        let recovered = health::succeeded(&self.pool, endpoint_id).await?;
        self.note(endpoint_id, None);
        Ok(recovered)
    }

    /// An attempt failed: counts it, and opens the breaker or disables the endpoint
    /// when the streak calls for it, each change with its operational event.
    pub async fn failed(
        &self,
        endpoint_id: Uuid,
        status: Option<u16>,
        error: &str,
    ) -> Result<Change, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let Some(counted) = health::count_failure(&mut tx, endpoint_id, status, error).await?
        else {
            // Disabled or deleted meanwhile: no streak to count.
            return Ok(Change::None);
        };
        let streak = Streak {
            failures: u32::try_from(counted.failures).unwrap_or(0),
            failing_for: Duration::from_secs_f64(counted.failing_for_s.max(0.0)),
            open: counted.open,
        };
        let change = match after_failure(&self.policy, streak) {
            AfterFailure::Nothing => Change::None,
            AfterFailure::Open => {
                let opened = health::open(
                    &mut tx,
                    endpoint_id,
                    self.policy.probe_interval,
                    counted.failures,
                    status,
                    error,
                )
                .await?;
                if opened {
                    Change::Opened
                } else {
                    Change::None
                }
            }
            AfterFailure::Disable => {
                let reason = format!(
                    "failing continuously for {} (delivery.disable_after)",
                    humantime::format_duration(Duration::from_secs(streak.failing_for.as_secs()))
                );
                let data = json!({
                    "by": "herald",
                    "consecutive_failures": counted.failures,
                    "last_status": status,
                    "last_error": error,
                });
                if health::disable(&mut tx, endpoint_id, &reason, data).await? {
                    Change::Disabled
                } else {
                    Change::None
                }
            }
        };
        tx.commit().await?;
        self.note(
            endpoint_id,
            match change {
                Change::Disabled => None,
                Change::Opened => Some(true),
                Change::None => Some(counted.open),
            },
        );
        Ok(change)
    }

    /// The receiver answered `410 Gone`: disables the endpoint now.
    pub async fn gone(&self, endpoint_id: Uuid, status: u16) -> Result<bool, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let data = json!({ "by": "herald", "last_status": status });
        let disabled =
            health::disable(&mut tx, endpoint_id, "receiver answered 410 Gone", data).await?;
        tx.commit().await?;
        self.note(endpoint_id, None);
        Ok(disabled)
    }
}
