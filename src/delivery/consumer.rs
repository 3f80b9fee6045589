//! The deliver role: consume `<prefix>.work` and settle each message — one task, or
//! several put off together (see [`super::put_off`]) — through the attempt engine;
//! acknowledge once every task of it is settled, return it to the queue otherwise. A
//! message that is not a task is parked in `<prefix>.invalid`.

use std::sync::Arc;

use chrono::Utc;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::Connection;
use tokio_util::sync::CancellationToken;

use super::engine::{attempt, Deliverer, Origin};
use super::task::{unpack, DeliveryTask};
use crate::broker::consumer::{keep_consuming, Consuming};
use crate::broker::headers::entered_queue_at;
use crate::broker::park::{park, Refused};
use crate::broker::Publisher;
use crate::readiness::Readiness;

/// Most tasks of one bulk message in progress at once (each holds an attempt's state).
const TASKS_AT_ONCE: usize = 64;

/// Runs the deliver role until `shutdown`, reconnecting whenever the broker goes away.
pub async fn run(deliverer: Arc<Deliverer>, readiness: Readiness, shutdown: CancellationToken) {
    let settings = deliverer.settings.clone();
    keep_consuming(
        &settings.amqp,
        &format!("{}-deliver", settings.topology.prefix),
        crate::broker::Frames::Own,
        &shutdown,
        || readiness.set_deliver(false),
        |connection| {
            let (deliverer, readiness, shutdown) =
                (deliverer.clone(), readiness.clone(), shutdown.clone());
            Box::pin(async move { consume(&deliverer, connection, &readiness, &shutdown).await })
        },
    )
    .await;
}

async fn consume(
    deliverer: &Arc<Deliverer>,
    connection: &Connection,
    readiness: &Readiness,
    shutdown: &CancellationToken,
) -> lapin::Result<()> {
    // The broker hands out no more tasks than the process keeps in progress at once:
    // requests in flight (`delivery.concurrency`) and outcomes being recorded.
    let mut consuming = Consuming::start(
        connection,
        &deliverer.topology,
        &deliverer.topology.work_queue(),
        u16::try_from(deliverer.settings.delivery.attempts_in_progress()).unwrap_or(u16::MAX),
    )
    .await?;
    readiness.set_deliver(true);
    tracing::info!(queue = %deliverer.topology.work_queue(), "delivering");
    let result = loop {
        match consuming.next(shutdown).await {
            Ok(Some(delivery)) => {
                let deliverer = deliverer.clone();
                let publisher = consuming.publisher.clone();
                consuming
                    .in_flight
                    .spawn(async move { settle_message(&deliverer, &publisher, delivery).await });
            }
            Ok(None) => break Ok(()),
            Err(error) => break Err(error),
        }
    };
    readiness.set_deliver(false);
    consuming
        .finish(deliverer.settings.delivery.shutdown_grace)
        .await;
    result
}

/// Settles one message from the work queue — one task, or several put off together —
/// ack when every task is done, nack (requeue) otherwise.
async fn settle_message(deliverer: &Deliverer, publisher: &Publisher, mut delivery: Delivery) {
    if let Some(entered) = entered_queue_at(&delivery.properties) {
        deliverer
            .metrics
            .queue_taken_enqueued_at
            .with_label_values(&["work"])
            .set(entered);
    }
    let acker = delivery.acker.clone();
    // Shared with the tasks, not copied.
    let body = bytes::Bytes::from(std::mem::take(&mut delivery.data));
    let tasks = match unpack(&delivery.properties, body.clone()) {
        Ok(tasks) => tasks,
        Err(error) => {
            delivery.data = body.to_vec();
            // Not ours, or damaged: park it where an SRE sees it rather than retry forever.
            tracing::error!(%error, "malformed delivery task; parking it");
            let refused = Refused {
                message: &delivery,
                reason: crate::broker::parked::MALFORMED_TASK,
                detail: error.to_string(),
            };
            let parked = park(
                publisher,
                &deliverer.topology.invalid_queue(),
                &[refused],
                Utc::now().timestamp() as u64,
            )
            .await;
            if parked.is_ok() {
                deliverer
                    .metrics
                    .parked
                    .with_label_values(&[crate::broker::parked::MALFORMED_TASK])
                    .inc();
            }
            let _ = match parked {
                Ok(_) => acker.ack(BasicAckOptions::default()).await,
                Err(_) => acker.nack(requeue()).await,
            };
            return;
        }
    };
    let settled = match tasks.as_slice() {
        [task] => {
            let _permit = deliverer.attempt_permit().await;
            attempt(deliverer, publisher, task, Origin::WorkQueue)
                .await
                .is_ok()
        }
        // Put off together: each goes on (or is put off again) on its own, a bounded
        // number at a time; the message is done when all of them are. If one fails, all
        // come back (at least once).
        _ => attempt_all(deliverer, publisher, &tasks).await,
    };
    if settled {
        if let Err(error) = acker.ack(BasicAckOptions::default()).await {
            tracing::warn!(%error, tasks = tasks.len(),
                "ack failed; the task will be redelivered");
        }
    } else {
        let _ = acker.nack(requeue()).await;
    }
}

/// Attempts every task, at most `TASKS_AT_ONCE` at a time and each only once it has
/// one of the process's attempt permits (an attempt's state is allocated only then);
/// `true` if all were settled.
async fn attempt_all(deliverer: &Deliverer, publisher: &Publisher, tasks: &[DeliveryTask]) -> bool {
    let mut waiting = tasks.iter().peekable();
    let mut running = futures_util::stream::FuturesUnordered::new();
    let mut settled = true;
    loop {
        if running.len() < TASKS_AT_ONCE && waiting.peek().is_some() {
            tokio::select! {
                permit = deliverer.attempt_permit() => {
                    let task = waiting.next().expect("peeked");
                    running.push(async move {
                        let result = attempt(deliverer, publisher, task, Origin::WorkQueue).await;
                        drop(permit);
                        result
                    });
                }
                Some(result) = running.next(), if !running.is_empty() => {
                    settled &= result.is_ok();
                }
            }
            continue;
        }
        match running.next().await {
            Some(result) => settled &= result.is_ok(),
            None => return settled,
        }
    }
}

fn requeue() -> BasicNackOptions {
    BasicNackOptions {
        requeue: true,
        ..Default::default()
    }
}
