//! How a task's attempt ends when it cannot be settled: [`Unsettled`] says why (the
//! task will be tried again), [`Origin`] where the task came from, which decides the
//! order of the writes after an attempt. Shared by the engine and the batcher.

use super::put_off::PutOffError;
use super::recorder::RecordError;
use crate::broker::PublishError;

/// Why a task was not settled; it will be tried again (see [`Origin`]).
#[derive(Debug, thiserror::Error)]
pub enum Unsettled {
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    PutOff(#[from] PutOffError),
    /// The batch the task was in was dropped unsent (the process is stopping).
    #[error("the task's batch was abandoned")]
    BatchAbandoned,
}

/// Where a task came from, which decides the order of the writes after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A message of `<prefix>.work`: if settling fails, the task itself comes back.
    /// The outcome is recorded first, then the retry or dead letter is published.
    WorkQueue,
    /// A first attempt made by the ingest role: if settling fails, the event's message
    /// comes back and only deliveries still `pending` are tried again. The retry or
    /// dead letter is published first, then the outcome recorded, so a delivery is never
    /// left `retrying` without a task to retry it.
    Ingest,
}
