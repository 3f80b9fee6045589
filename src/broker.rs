//! RabbitMQ connections and confirmed publishing.
//!
//! Every publish Herald makes waits for the broker's confirm before the message that
//! caused it is acknowledged; unroutable messages (`mandatory`) count as failures, so a
//! missing queue can never swallow a delivery.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::publisher_confirm::Confirmation;
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio_util::sync::CancellationToken;

/// Why a publish did not become durable on the broker.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("broker refused the message (nack)")]
    Nacked,
    #[error("no queue is bound for exchange `{exchange}` / routing key `{routing_key}`")]
    Unroutable {
        exchange: String,
        routing_key: String,
    },
}

/// The largest AMQP frame Herald asks for when the URL does not say (`?frame_max=`).
/// lapin keeps 32 frames of receive and 32 of send buffer per connection, all of it
/// resident once used: with RabbitMQ's default of 128 KiB that is 8 MiB a connection
/// (about half of Herald's memory under load), with 16 KiB 1 MiB. A larger message is
/// sent as several frames, 8 bytes of overhead each (docs/benchmarks.md, round 5).
pub const DEFAULT_FRAME_MAX: u32 = 16 * 1024;

/// Opens a connection driven by the tokio runtime.
pub async fn connect(url: &str, name: &str) -> lapin::Result<Connection> {
    let mut uri: AMQPUri = url
        .parse()
        .map_err(|e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    uri.query.frame_max.get_or_insert(DEFAULT_FRAME_MAX);
    let properties = ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio)
        .with_connection_name(name.into());
    Connection::connect_uri(uri, properties).await
}

/// Connects, retrying with exponential backoff while the broker is away; `None` when
/// shutdown came first.
pub async fn connect_with_backoff(
    url: &str,
    name: &str,
    max_backoff: Duration,
    shutdown: &CancellationToken,
) -> Option<Connection> {
    let mut delay = Duration::from_millis(100);
    loop {
        match connect(url, name).await {
            Ok(connection) => return Some(connection),
            Err(error) => {
                tracing::warn!(%error, retry_in = ?delay, "broker unreachable; waiting to reconnect");
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(max_backoff);
            }
        }
    }
}

/// A consumer on a queue of the declared topology, its channel (prefetch set), and a
/// confirm-mode publisher on the same connection for what the consumed messages cause.
pub struct ConsumerSetup {
    pub channel: Channel,
    pub consumer: lapin::Consumer,
    pub publisher: Publisher,
}

/// Declares the topology, then starts consuming `queue` with `prefetch` unacked
/// messages at most.
pub async fn start_consumer(
    connection: &Connection,
    topology: &crate::topology::Topology,
    queue: &str,
    prefetch: u16,
) -> lapin::Result<ConsumerSetup> {
    let channel = connection.create_channel().await?;
    topology.declare(&channel).await?;
    channel
        .basic_qos(prefetch, lapin::options::BasicQosOptions::default())
        .await?;
    let publisher = Publisher::open(connection).await?;
    let consumer = channel
        .basic_consume(
            queue,
            "",
            lapin::options::BasicConsumeOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await?;
    Ok(ConsumerSetup {
        channel,
        consumer,
        publisher,
    })
}

/// What `keep_consuming` runs on each connection.
pub type ConsumeFuture<'c, E> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), E>> + Send + 'c>>;

/// Keeps one consumer running until `shutdown`: connects (waiting with backoff while
/// the broker is away), runs `consume` on the connection, and when it fails calls
/// `down` and reconnects after a growing delay. `consume` returning `Ok` means it
/// stopped for shutdown.
pub async fn keep_consuming<E: std::fmt::Display>(
    settings: &crate::config::AmqpSettings,
    name: &str,
    shutdown: &CancellationToken,
    down: impl Fn(),
    consume: impl for<'c> Fn(&'c Connection) -> ConsumeFuture<'c, E>,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let Some(connection) = connect_with_backoff(
            settings.url.expose(),
            name,
            settings.reconnect_max_backoff,
            shutdown,
        )
        .await
        else {
            return;
        };
        let result = consume(&connection).await;
        down();
        let _ = connection.close(200, "closing").await;
        match result {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(%error, consumer = name, retry_in = ?backoff, "consumer stopped; reconnecting");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(settings.reconnect_max_backoff);
            }
        }
    }
}

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Outgoing<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub body: &'a [u8],
    pub properties: BasicProperties,
}

/// A channel in confirm mode, shared by every task of a process role.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
}

impl Publisher {
    pub async fn open(connection: &Connection) -> lapin::Result<Self> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self { channel })
    }

    pub fn is_open(&self) -> bool {
        self.channel.status().connected()
    }

    /// Publishes one message and waits for the broker's confirm.
    pub async fn publish(&self, message: Outgoing<'_>) -> Result<(), PublishError> {
        self.publish_all(vec![message]).await
    }

    /// Publishes every message, then waits for all confirms: many in flight at once,
    /// never one publish waiting for one confirm. At most `MAX_UNCONFIRMED` are
    /// outstanding, which bounds the memory a large fan-out holds in send buffers.
    pub async fn publish_all(&self, messages: Vec<Outgoing<'_>>) -> Result<(), PublishError> {
        let mut pending = Vec::with_capacity(messages.len().min(MAX_UNCONFIRMED));
        for m in messages {
            if pending.len() == MAX_UNCONFIRMED {
                settle(std::mem::take(&mut pending)).await?;
            }
            let confirm = self
                .channel
                .basic_publish(
                    m.exchange,
                    m.routing_key,
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    m.body,
                    m.properties,
                )
                .await?;
            pending.push((confirm, m.exchange, m.routing_key));
        }
        settle(pending).await
    }
}

/// Most publishes awaiting their confirm at once.
const MAX_UNCONFIRMED: usize = 1024;

async fn settle(
    pending: Vec<(lapin::publisher_confirm::PublisherConfirm, &str, &str)>,
) -> Result<(), PublishError> {
    for (confirm, exchange, routing_key) in pending {
        match confirm.await? {
            Confirmation::Ack(None) | Confirmation::NotRequested => {}
            Confirmation::Ack(Some(_returned)) => {
                return Err(PublishError::Unroutable {
                    exchange: exchange.to_string(),
                    routing_key: routing_key.to_string(),
                })
            }
            Confirmation::Nack(_) => return Err(PublishError::Nacked),
        }
    }
    Ok(())
}
