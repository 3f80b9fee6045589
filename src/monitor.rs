//! Samples Herald's queues on the broker for the metrics SREs alert on: depth and age
//! of the oldest message of the ingest, work, dead-letter and invalid queues.
//!
//! Depth comes from a passive declare. Age comes from a peek at the head message (get,
//! then reject with requeue, so it stays at the head): its AMQP `timestamp` property,
//! or for a retry back from a delay queue the time the broker dead-lettered it
//! (`x-death`). A head message without either (a publisher that sets no timestamp)
//! reports age 0.

use std::sync::Arc;

use lapin::options::{BasicGetOptions, BasicRejectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use tokio_util::sync::CancellationToken;

use crate::broker;
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::topology::{queue_depth, Topology};

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
                    let depth = queue_depth(&channel, queue).await?;
                    metrics
                        .queue_messages
                        .with_label_values(&[label])
                        .set(i64::from(depth));
                    let age = if depth == 0 {
                        0.0
                    } else {
                        head_age(&channel, queue).await?
                    };
                    metrics
                        .queue_oldest_age
                        .with_label_values(&[label])
                        .set(age);
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
                    let _ = connection.close(200, "shutdown").await;
                    return;
                }
                _ = tokio::time::sleep(settings.telemetry.queue_sample_interval) => {}
            }
        }
    }
}

/// Seconds since the head message entered its queue; it is put back untouched.
async fn head_age(channel: &Channel, queue: &str) -> lapin::Result<f64> {
    let Some(message) = channel
        .basic_get(queue, BasicGetOptions { no_ack: false })
        .await?
    else {
        return Ok(0.0);
    };
    let since = entered_queue_at(&message.delivery.properties);
    message
        .delivery
        .acker
        .reject(BasicRejectOptions { requeue: true })
        .await?;
    let now = chrono::Utc::now().timestamp();
    Ok(since.map(|t| (now - t).max(0) as f64).unwrap_or(0.0))
}

/// Unix seconds at which a message entered its current queue, if it says.
pub fn entered_queue_at(properties: &BasicProperties) -> Option<i64> {
    let dead_lettered = properties
        .headers()
        .as_ref()
        .and_then(|h: &FieldTable| h.inner().get("x-death"))
        .and_then(|v| match v {
            AMQPValue::FieldArray(deaths) => deaths.as_slice().first().cloned(),
            _ => None,
        })
        .and_then(|death| match death {
            AMQPValue::FieldTable(t) => match t.inner().get("time") {
                Some(AMQPValue::Timestamp(ts)) => i64::try_from(*ts).ok(),
                _ => None,
            },
            _ => None,
        });
    dead_lettered.or_else(|| properties.timestamp().and_then(|t| i64::try_from(t).ok()))
}
