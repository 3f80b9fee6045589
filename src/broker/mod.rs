//! RabbitMQ: connections, confirmed publishing, the consumer lifecycle
//! ([`consumer`]), header codecs ([`headers`]) and parking ([`park`]).
//!
//! Every publish Herald makes waits for the broker's confirm before the message that
//! caused it is acknowledged; unroutable messages (`mandatory`) count as failures, so a
//! missing queue can never swallow a delivery.

pub mod consumer;
pub mod headers;
pub mod park;

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::publisher_confirm::Confirmation;
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;

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
    let mut backoff = Backoff::new(Duration::from_millis(100), max_backoff);
    loop {
        match connect(url, name).await {
            Ok(connection) => return Some(connection),
            Err(error) => {
                tracing::warn!(%error, retry_in = ?backoff.next_delay(),
                    "broker unreachable; waiting to reconnect");
                if !backoff.wait(shutdown).await {
                    return None;
                }
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
