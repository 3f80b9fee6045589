//! Samples Herald's queues on the broker for the metrics SREs alert on: messages ready
//! in the ingest, work, dead-letter and invalid queues, and their consumers.
//!
//! Only passive declares: a message is never taken and put back to look at it. On
//! RabbitMQ 4 every return counts towards a quorum queue's delivery limit (20 by
//! default), past which the broker drops the message, so peeking at a queue's head
//! every few seconds would silently empty the parked queues. How late consumers are is
//! reported by the consumers themselves
//! (`herald_queue_taken_enqueued_timestamp_seconds`).

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::broker;
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::topology::{queue_counts, Topology};

/// Runs until `shutdown`, reconnecting as needed.
pub async fn sample_queues(
    settings: Arc<Settings>,
    topology: Topology,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let queues = [
        ("ingest", topology.ingest_queue()),
        ("work", topology.work_queue()),
        ("dlq", topology.dlq()),
        ("invalid", topology.invalid_queue()),
    ];
    while !shutdown.is_cancelled() {
        let Some(connection) = broker::connect_with_backoff(
            settings.amqp.url.expose(),
            &format!("{}-monitor", settings.topology.prefix),
            broker::Frames::Own,
            settings.amqp.reconnect_max_backoff,
            &shutdown,
        )
        .await
        else {
            return;
        };
        loop {
            let result = async {
                let channel = connection.create_channel().await?;
                for (label, queue) in &queues {
                    let (messages, consumers) = queue_counts(&channel, queue).await?;
                    metrics
                        .queue_messages
                        .with_label_values(&[label])
                        .set(i64::from(messages));
                    metrics
                        .queue_consumers
                        .with_label_values(&[label])
                        .set(i64::from(consumers));
                }
                channel.close(200, "sampled").await
            }
            .await;
            if let Err(error) = result {
                // A queue not declared yet closes the channel: try again next round.
                tracing::debug!(%error, "queue sampling incomplete");
                if !connection.status().connected() {
                    break;
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => {
                    broker::close_connection(&connection).await;
                    return;
                }
                _ = tokio::time::sleep(settings.telemetry.queue_sample_interval) => {}
            }
        }
    }
}
