//! Group commit of delivery outcomes: attempts from many concurrent deliveries are
//! written in one transaction. Whatever queued up while the previous write ran goes
//! into the next one, so batches grow with load and cost no latency when idle.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::store::deliveries::{self, Outcome};

/// Most outcomes written in one transaction.
const MAX_BATCH: usize = 512;

#[derive(Debug, Clone, thiserror::Error)]
#[error("outcome not recorded: {0}")]
pub struct RecordError(Arc<str>);

type Request = (Outcome, oneshot::Sender<Result<(), RecordError>>);

/// Handle to the writer task; clone it into every delivery.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Request>,
}

impl Recorder {
    /// Starts the writer. It runs until every `Recorder` clone is dropped; while the
    /// database is away it retries with backoff, and gives up only once `stop` fires
    /// (the callers then leave their messages to be redelivered).
    pub fn spawn(pool: PgPool, stop: CancellationToken) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(MAX_BATCH * 4);
        let handle = tokio::spawn(write_batches(pool, rx, stop));
        (Self { tx }, handle)
    }

    /// Returns once the outcome is committed.
    pub async fn record(&self, outcome: Outcome) -> Result<(), RecordError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send((outcome, done))
            .await
            .map_err(|_| RecordError("recorder stopped".into()))?;
        wait.await
            .map_err(|_| RecordError("recorder stopped".into()))?
    }
}

async fn write_batches(pool: PgPool, mut rx: mpsc::Receiver<Request>, stop: CancellationToken) {
    let mut batch: Vec<Request> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        let outcomes: Vec<Outcome> = batch.iter().map(|(o, _)| o.clone()).collect();
        let result = write_with_retry(&pool, &outcomes, &stop).await;
        for (_, done) in batch.drain(..) {
            let _ = done.send(result.clone());
        }
    }
}

async fn write_with_retry(
    pool: &PgPool,
    outcomes: &[Outcome],
    stop: &CancellationToken,
) -> Result<(), RecordError> {
    let mut delay = Duration::from_millis(100);
    loop {
        match deliveries::record_outcomes(pool, outcomes).await {
            Ok(()) => return Ok(()),
            Err(error) if stop.is_cancelled() => {
                return Err(RecordError(error.to_string().into()));
            }
            Err(error) => {
                tracing::warn!(%error, outcomes = outcomes.len(), retry_in = ?delay,
                    "cannot record delivery outcomes; holding them until the database is back");
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
