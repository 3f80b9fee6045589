//! Ordered delivery per key, on the deliverer's side (docs/ordering.md): a task that
//! carries an ordering key is sent only while its delivery is its key's head
//! ([`store::ordering`]), and once it is finished — delivered, or dead-lettered and so
//! skipped — the key moves on and the next waiting delivery's task is published.
//!
//! A task of an unordered delivery never reaches this module: the engine's one test
//! is `task.ordering_key.is_some()`.

use sqlx::PgPool;
use uuid::Uuid;

use super::settle::Unsettled;
use super::task::DeliveryTask;
use crate::broker::Publisher;
use crate::store::ordering::{Next, Turn};
use crate::topology::Topology;

/// Sends again the heads whose task was lost: a head never attempted and untouched
/// for `older_than` (only a broker losing a quorum queue's majority loses a task).
/// A copy of a task still queued is harmless: it is checked before it is sent.
/// Returns how many were sent again.
pub async fn resend_stranded(
    pool: &PgPool,
    topology: &Topology,
    publisher: &Publisher,
    older_than: std::time::Duration,
) -> Result<usize, Unsettled> {
    let stranded = ordering::stranded(pool, older_than).await?;
    let count = stranded.len();
    for (endpoint_id, key, next) in stranded {
        tracing::warn!(delivery_id = %next.delivery_id, %endpoint_id,
            "an ordered key's head was never attempted; sending its task again");
        dispatch(pool, topology, publisher, endpoint_id, &key, next).await?;
    }
    Ok(count)
}
use crate::store::{events, ordering};

/// Whether the task is to be sent now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Go {
    Send,
    /// Not now, or not again: the task is done with (acknowledged) unsent.
    Skip,
}

/// Before an attempt of an ordered task: send it if it is its key's head. A copy of a
/// task already finished (after a crash) is not sent again; instead it finishes what
/// the crash may have left undone: moving the key on, or publishing the head's task.
pub async fn before_attempt(
    pool: &PgPool,
    topology: &Topology,
    publisher: &Publisher,
    task: &DeliveryTask,
    key: &str,
) -> Result<Go, Unsettled> {
    match ordering::turn(pool, task.delivery_id).await? {
        Turn::Now | Turn::Unordered => Ok(Go::Send),
        Turn::Waiting => {
            tracing::debug!("not its key's turn yet; it is sent when its key reaches it");
            Ok(Go::Skip)
        }
        Turn::Finished {
            still_head,
            stranded,
        } => {
            tracing::info!("a copy of a finished ordered delivery; not sent again");
            if still_head {
                let finished = task.delivery_id;
                move_on(
                    pool,
                    topology,
                    publisher,
                    task.endpoint_id,
                    key,
                    finished,
                    true,
                )
                .await?;
            } else if let Some(next) = stranded {
                dispatch(pool, topology, publisher, task.endpoint_id, key, next).await?;
            }
            Ok(Go::Skip)
        }
    }
}

/// After the task's delivery is finished and its outcome durable: its key moves on.
/// `skipped` when it was dead-lettered (its record then says so).
pub async fn after_finish(
    pool: &PgPool,
    topology: &Topology,
    publisher: &Publisher,
    task: &DeliveryTask,
    skipped: bool,
) -> Result<(), Unsettled> {
    if let Some(key) = &task.ordering_key {
        let (endpoint, finished) = (task.endpoint_id, task.delivery_id);
        move_on(pool, topology, publisher, endpoint, key, finished, skipped).await?;
    }
    Ok(())
}

async fn move_on(
    pool: &PgPool,
    topology: &Topology,
    publisher: &Publisher,
    endpoint_id: Uuid,
    key: &str,
    finished: Uuid,
    skipped: bool,
) -> Result<(), Unsettled> {
    let next = ordering::advance(pool, endpoint_id, key, finished, skipped).await?;
    if let Some(next) = next {
        dispatch(pool, topology, publisher, endpoint_id, key, next).await?;
    }
    Ok(())
}

/// Publishes the task of `next`, its key's head now, to the work queue.
pub async fn dispatch(
    pool: &PgPool,
    topology: &Topology,
    publisher: &Publisher,
    endpoint_id: Uuid,
    key: &str,
    next: Next,
) -> Result<(), Unsettled> {
    let Some(event) = events::load(pool, &next.tenant_key, &next.event_id).await? else {
        // Its event is gone (it cannot be while the delivery exists): nothing to send;
        // the key stays at this head, which an operator sees in `ordering_heads`.
        tracing::error!(delivery_id = %next.delivery_id, "the event of an ordered delivery is missing");
        return Ok(());
    };
    let mut task = DeliveryTask::resend(
        next.delivery_id,
        event.id.clone(),
        endpoint_id,
        next.attempts,
        event.webhook_body().into(),
    );
    task.received_at_ms = next.created_at.timestamp_millis();
    task.ordering_key = Some(key.to_string());
    let exchange = topology.work_exchange();
    publisher.publish(task.to_work(&exchange)).await?;
    tracing::debug!(next = %next.delivery_id, "its key moved on; the next delivery is dispatched");
    Ok(())
}
