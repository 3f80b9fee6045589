//! The dead-letter queue from an SRE's side: redrive, sending dead deliveries again
//! with a fresh retry schedule (what failed and why is listed from the records,
//! `crate::service::deliveries`).
//!
//! Redrive reads `<prefix>.dlq` itself, so the queue and the records stay in step: for
//! each chunk of selected messages a transaction marks their deliveries `pending`
//! again, the fresh tasks are republished to the work exchange (confirmed), the
//! transaction commits, and only then are the messages acknowledged; messages not
//! selected are held until the end and returned to the queue in their order (`nack`
//! with requeue).
//!
//! The mark comes first and commits last so that a record always tells the truth: a
//! redriven task that fails again at once (its endpoint disabled) has its `failed`
//! written after the `pending` — its write waits on the row lock until the commit —
//! never before it; and a publish that fails, or a crash, rolls the mark back while the
//! message stays parked.

use std::collections::HashSet;

use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::broker::{self, Publisher};
use crate::config::Settings;
use crate::delivery::task::DeliveryTask;
use crate::store::deliveries;
use crate::topology;

/// Messages republished per confirm round.
const CHUNK: usize = 500;

#[derive(Debug, Clone)]
pub enum Selection {
    All,
    Deliveries(Vec<Uuid>),
    /// Every dead delivery to these endpoints (a tenant's "all").
    Endpoints(HashSet<Uuid>),
}

/// What a redrive did: the deliveries sent again, and those asked for but not in the
/// dead-letter queue (or not the caller's).
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct RedriveReport {
    pub redriven: Vec<Uuid>,
    /// Requested deliveries with no message in the dead-letter queue.
    pub not_found: Vec<Uuid>,
}

pub async fn redrive(
    settings: &Settings,
    pool: &PgPool,
    selection: Selection,
) -> anyhow::Result<RedriveReport> {
    let topology = crate::delivery::topology(settings);
    let connection = broker::connect(settings.amqp.url.expose(), "herald-dlq-redrive").await?;
    let channel = connection.create_channel().await?;
    topology.declare(&channel).await?;
    let publisher = Publisher::open(&connection).await?;
    let dlq = topology.dlq();
    let work_exchange = topology.work_exchange();
    let wanted: Option<HashSet<Uuid>> = match &selection {
        Selection::Deliveries(ids) => Some(ids.iter().copied().collect()),
        Selection::All | Selection::Endpoints(_) => None,
    };
    let selected = |task: &DeliveryTask| match &selection {
        Selection::All => true,
        Selection::Deliveries(_) => wanted
            .as_ref()
            .is_some_and(|w| w.contains(&task.delivery_id)),
        Selection::Endpoints(endpoints) => endpoints.contains(&task.endpoint_id),
    };

    // Only what is in the queue now: redriven messages that fail again come back later.
    let depth = topology::queue_depth(&channel, &dlq).await?;
    let mut report = RedriveReport::default();
    let mut seen = 0u32;
    while seen < depth {
        let mut chunk = Vec::new();
        while chunk.len() < CHUNK && seen < depth {
            let Some(message) = channel
                .basic_get(&dlq, BasicGetOptions { no_ack: false })
                .await?
            else {
                seen = depth;
                break;
            };
            seen += 1;
            let delivery = message.delivery;
            let task = match DeliveryTask::from_amqp(&delivery.properties, delivery.data.clone()) {
                Ok(task) => task,
                Err(error) => {
                    tracing::warn!(%error, "unreadable message left in the dead-letter queue");
                    continue;
                }
            };
            if selected(&task) {
                chunk.push((delivery.delivery_tag, task));
            }
        }
        if chunk.is_empty() {
            continue;
        }
        let fresh: Vec<DeliveryTask> = chunk
            .iter()
            .map(|(_, task)| DeliveryTask {
                attempt: task.attempt + 1,
                schedule_start: task.attempt + 1,
                not_before_ms: None,
                turn: None,
                deferrals: 0,
                ..task.clone()
            })
            .collect();
        let ids: Vec<Uuid> = fresh.iter().map(|t| t.delivery_id).collect();
        let mut marked = pool.begin().await?;
        deliveries::mark_redriven(&mut *marked, &ids).await?;
        publisher
            .publish_all(fresh.iter().map(|t| t.to_work(&work_exchange)).collect())
            .await?;
        marked.commit().await?;
        for (tag, _) in &chunk {
            channel.basic_ack(*tag, BasicAckOptions::default()).await?;
        }
        report.redriven.extend(ids);
    }
    if let Some(wanted) = wanted {
        let done: HashSet<Uuid> = report.redriven.iter().copied().collect();
        report.not_found = wanted.difference(&done).copied().collect();
    }
    // Every message held but not selected goes back. A `nack` with requeue, not a
    // `reject` or a closed channel: RabbitMQ 4.3 and later do not count it towards a
    // quorum queue's delivery limit, so selective redrives never use the others up.
    channel
        .basic_nack(
            0,
            BasicNackOptions {
                multiple: true,
                requeue: true,
            },
        )
        .await?;
    broker::close_channel(&channel).await;
    broker::close_connection(&connection).await;
    tracing::info!(
        redriven = report.redriven.len(),
        "dead-letter queue redriven"
    );
    Ok(report)
}
