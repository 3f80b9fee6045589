//! Group commit of delivery outcomes: attempts from many concurrent deliveries are
//! written in one transaction. Whatever queued up while the previous write ran goes
//! into the next one, so batches grow with load and cost no latency when idle.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::store::deliveries::{self, Outcome};
use crate::store::{self};

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
        let results = write_isolating(&pool, &outcomes, &stop).await;
        for ((_, done), result) in batch.drain(..).zip(results) {
            let _ = done.send(result);
        }
    }
}

/// Writes the outcomes; one whose content PostgreSQL refuses is isolated (see
/// [`store::write_isolating`]) and written once more without its free text (the
/// receiver's body, the error message). Every other outcome of the batch is recorded:
/// one receiver's reply never holds up the rest. One result per outcome, in order.
async fn write_isolating(
    pool: &PgPool,
    outcomes: &[Outcome],
    stop: &CancellationToken,
) -> Vec<Result<(), RecordError>> {
    let written = store::write_isolating(outcomes.len(), |part| async move {
        let rows = part.len();
        write_while_away(pool, &outcomes[part], stop).await?;
        Ok(vec![(); rows])
    })
    .await;
    let written = match written {
        Ok(written) => written,
        Err(error) => {
            let error = RecordError(error.to_string().into());
            return outcomes.iter().map(|_| Err(error.clone())).collect();
        }
    };
    let mut results = Vec::with_capacity(outcomes.len());
    for (outcome, result) in outcomes.iter().zip(written) {
        results.push(match result {
            Ok(()) => Ok(()),
            Err(refused) => {
                let bare = without_free_text(outcome);
                tracing::warn!(error = %refused, delivery_id = %bare.delivery_id,
                    "the database refused an outcome; recording it without its text");
                write_while_away(pool, std::slice::from_ref(&bare), stop)
                    .await
                    .map_err(|e| RecordError(e.to_string().into()))
            }
        });
    }
    results
}

/// The outcome with nothing a receiver or a library wrote: the parts that can carry
/// content PostgreSQL refuses.
fn without_free_text(outcome: &Outcome) -> Outcome {
    let mut bare = outcome.clone();
    if let Some(attempt) = &mut bare.attempt {
        attempt.response_body = None;
    }
    bare.last_error = bare.last_error.map(|e| {
        e.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect()
    });
    bare
}

/// Writes one batch, retrying with backoff while the database is away; a refusal of
/// its content, or any error once `stop` has fired, is returned.
async fn write_while_away(
    pool: &PgPool,
    outcomes: &[Outcome],
    stop: &CancellationToken,
) -> Result<(), sqlx::Error> {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        match deliveries::record_outcomes(pool, outcomes).await {
            Ok(()) => return Ok(()),
            Err(error) if store::refused_content(&error) || stop.is_cancelled() => {
                return Err(error)
            }
            Err(error) => {
                tracing::warn!(%error, outcomes = outcomes.len(), retry_in = ?backoff.next_delay(),
                    "cannot record delivery outcomes; holding them until the database is back");
                backoff.wait(stop).await;
            }
        }
    }
}
