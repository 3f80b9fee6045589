//! RabbitMQ: connections, confirmed publishing, the consumer lifecycle
//! ([`consumer`]), header codecs ([`headers`]), parking ([`park`]) and parked messages
//! read back ([`parked`]).
//!
//! Every publish Herald makes waits for the broker's confirm before the message that
//! caused it is acknowledged; unroutable messages (`mandatory`) count as failures, so a
//! missing queue can never swallow a delivery.

pub mod consumer;
pub mod headers;
pub mod park;
pub mod parked;

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::publisher_confirm::Confirmation;
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use rand::Rng;
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

/// The frame size a connection receiving publishers' messages asks for: RabbitMQ's own
/// default `frame_max`, the largest a publisher can send to a broker left at its
/// defaults. A message's properties and headers travel in one frame, so a consumer
/// with smaller frames cannot take a message whose headers are larger — the broker
/// closes its connection, returns the message, and the next consumer dies on it the
/// same way: one such message would stall ingest for good.
pub const PUBLISHERS_FRAME_MAX: u32 = 128 * 1024;

/// Whose messages a connection receives, which sets the frame size it asks for (a
/// `?frame_max=` in the URL wins over both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frames {
    /// Herald's own messages — tasks, parked copies (their headers cut to 8 KiB):
    /// [`DEFAULT_FRAME_MAX`].
    Own,
    /// Publishers' messages, the ingest queue: [`PUBLISHERS_FRAME_MAX`].
    Publishers,
}

impl Frames {
    fn frame_max(self) -> u32 {
        match self {
            Frames::Own => DEFAULT_FRAME_MAX,
            Frames::Publishers => PUBLISHERS_FRAME_MAX,
        }
    }
}

/// How long a TCP connect to one node may take, unless the URL says
/// (`?connection_timeout=` in ms). A node that is down refuses at once; a host that is
/// gone drops the SYN, and without a bound Linux retries it for about two minutes
/// (tcp_syn_retries = 6) before the walk could move on to the next node.
pub const DEFAULT_CONNECTION_TIMEOUT_MS: u64 = 5_000;

/// How long opening a connection to one node may take in all: TCP, TLS and the AMQP
/// handshake. `connection_timeout` bounds only the TCP connect; a node that accepts the
/// socket and then stalls (overloaded, partitioned, half-closed by a proxy) would
/// otherwise hold the walk — and a reconnecting role — forever.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// How long closing a channel or connection may take. Closing waits for the broker's
/// close-ok; on a connection that is already broken it may never come.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens a connection, driven by the tokio runtime, to one node of `urls` — `amqp.url`:
/// one URL, or several comma-separated URLs of one cluster's nodes
/// ([`crate::config::node_urls`]). The nodes are tried in turn, each once, starting at a
/// random one: processes spread over the cluster, and a reconnect after a node failed
/// starts anywhere and walks on past it. The error is the last node's.
///
/// Every connection Herald makes comes through here (the ingest, deliver and api roles
/// via [`connect_with_backoff`], the publish and dlq redrive commands directly).
pub async fn connect(urls: &str, name: &str) -> lapin::Result<Connection> {
    connect_for(urls, name, Frames::Own).await
}

/// [`connect`] for a connection that receives `frames`' messages.
pub async fn connect_for(urls: &str, name: &str, frames: Frames) -> lapin::Result<Connection> {
    let nodes = crate::config::node_urls(urls);
    let start = if nodes.len() > 1 {
        rand::thread_rng().gen_range(0..nodes.len())
    } else {
        0
    };
    let mut last_error = None;
    for index in walk(nodes.len(), start) {
        let url = nodes[index];
        match connect_node(url, name, frames).await {
            Ok(connection) => {
                tracing::debug!(node = %node_address(url), connection = name, "connected to the broker");
                return Ok(connection);
            }
            Err(error) => {
                if nodes.len() > 1 {
                    tracing::warn!(node = %node_address(url), %error, connection = name,
                        "broker node unreachable; trying the next");
                }
                last_error = Some(error);
            }
        }
    }
    Err(last_error.unwrap_or_else(|| invalid_input("amqp.url names no broker")))
}

/// The order in which `count` nodes are tried, starting at `start`: each once.
fn walk(count: usize, start: usize) -> impl Iterator<Item = usize> {
    (0..count).map(move |step| (start + step) % count)
}

async fn connect_node(url: &str, name: &str, frames: Frames) -> lapin::Result<Connection> {
    // The parser's message may repeat the URL, password included: not passed on.
    let mut uri: AMQPUri = url
        .parse()
        .map_err(|_: String| invalid_input("an element of amqp.url is not an AMQP URI"))?;
    uri.query.frame_max.get_or_insert(frames.frame_max());
    uri.query
        .connection_timeout
        .get_or_insert(DEFAULT_CONNECTION_TIMEOUT_MS);
    let properties = ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio)
        .with_connection_name(name.into());
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, Connection::connect_uri(uri, properties)).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no AMQP handshake within {HANDSHAKE_TIMEOUT:?}"),
        )
        .into()),
    }
}

/// Closes `connection`, waiting at most [`CLOSE_TIMEOUT`] for the broker: dropping it
/// afterwards releases the socket either way.
pub async fn close_connection(connection: &Connection) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, connection.close(200, "closing")).await;
}

/// Closes `channel`, waiting at most [`CLOSE_TIMEOUT`] for the broker.
pub async fn close_channel(channel: &Channel) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, channel.close(200, "done")).await;
}

/// `host:port` of a node URL, for logs: never the credentials.
pub fn node_address(url: &str) -> String {
    match url.parse::<AMQPUri>() {
        Ok(uri) => format!("{}:{}", uri.authority.host, uri.authority.port),
        Err(_) => String::from("(not an AMQP URI)"),
    }
}

fn invalid_input(message: &str) -> lapin::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, message.to_string()).into()
}

/// Connects (see [`connect`]), retrying with exponential backoff while no node is
/// reachable; `None` when shutdown came first.
pub async fn connect_with_backoff(
    urls: &str,
    name: &str,
    frames: Frames,
    max_backoff: Duration,
    shutdown: &CancellationToken,
) -> Option<Connection> {
    let mut backoff = Backoff::new(Duration::from_millis(100), max_backoff);
    loop {
        match connect_for(urls, name, frames).await {
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
        self.publish_confirmed(messages, true).await
    }

    /// As [`Self::publish_all`], for messages that may route nowhere (operational events
    /// on an exchange no queue is bound to yet): the broker confirms and drops them.
    pub async fn publish_all_unrouted_ok(
        &self,
        messages: Vec<Outgoing<'_>>,
    ) -> Result<(), PublishError> {
        self.publish_confirmed(messages, false).await
    }

    async fn publish_confirmed(
        &self,
        messages: Vec<Outgoing<'_>>,
        mandatory: bool,
    ) -> Result<(), PublishError> {
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
                        mandatory,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_node_is_tried_once_from_the_start_on() {
        let order = |count, start| walk(count, start).collect::<Vec<_>>();
        assert_eq!(order(1, 0), [0]);
        assert_eq!(order(3, 0), [0, 1, 2]);
        assert_eq!(order(3, 1), [1, 2, 0]);
        assert_eq!(order(3, 2), [2, 0, 1]);
        assert!(order(0, 0).is_empty());
    }

    #[test]
    fn node_addresses_in_logs_carry_no_credentials() {
        assert_eq!(
            node_address("amqp://guest:s3cret@127.0.0.1:5682/%2f"),
            "127.0.0.1:5682"
        );
        assert_eq!(
            node_address("amqps://u:p@broker.example/%2f"),
            "broker.example:5671"
        );
        assert!(!node_address("http://u:s3cret@x").contains("s3cret"));
    }
}
