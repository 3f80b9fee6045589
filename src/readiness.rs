//! What a process does (its [`Role`]) and whether it is ready for traffic, as
//! `/readyz` reports it. Set by the consumers, read by the HTTP side.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

/// What a process does (`herald serve --role`); every role serves health and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    All,
    Ingest,
    Deliver,
    Api,
}

impl Role {
    pub fn ingests(self) -> bool {
        matches!(self, Role::All | Role::Ingest)
    }
    pub fn delivers(self) -> bool {
        matches!(self, Role::All | Role::Deliver)
    }
    pub fn serves_admin_api(self) -> bool {
        matches!(self, Role::All | Role::Api)
    }
}

/// Readiness as `/readyz` reports it: the consumers this role runs are consuming, and
/// the process is not stopping.
#[derive(Clone)]
pub struct Readiness(Arc<ReadinessState>);

struct ReadinessState {
    role: Role,
    ingest: AtomicBool,
    deliver: AtomicBool,
    /// The application's shutdown token: stopping the moment it is cancelled.
    shutdown: CancellationToken,
}

impl Readiness {
    pub fn new(role: Role, shutdown: CancellationToken) -> Self {
        Self(Arc::new(ReadinessState {
            role,
            ingest: AtomicBool::new(false),
            deliver: AtomicBool::new(false),
            shutdown,
        }))
    }
    pub fn set_ingest(&self, up: bool) {
        self.0.ingest.store(up, Ordering::Relaxed);
    }
    pub fn set_deliver(&self, up: bool) {
        self.0.deliver.store(up, Ordering::Relaxed);
    }
    pub fn stopping(&self) -> bool {
        self.0.shutdown.is_cancelled()
    }
    /// Every consumer this role needs is running (broker connected).
    pub fn consumers_up(&self) -> bool {
        (!self.0.role.ingests() || self.0.ingest.load(Ordering::Relaxed))
            && (!self.0.role.delivers() || self.0.deliver.load(Ordering::Relaxed))
    }
}
