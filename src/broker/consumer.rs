//! One consumer's life, written once for the ingest and deliver roles: connect (with
//! backoff while the broker is away) → declare the topology and start consuming →
//! take messages until shutdown or a broker failure → cancel the consumer → let the
//! work in flight finish within the grace period → close; then reconnect unless
//! stopping.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{connect_with_backoff, Frames, Publisher};
use crate::backoff::Backoff;
use crate::config::AmqpSettings;
use crate::topology::Topology;

/// Pause between the last acknowledgement and closing the channel on shutdown.
const SETTLE_PAUSE: Duration = Duration::from_millis(300);

/// A consumer on one queue of the declared topology, with its channel (prefetch set),
/// a confirm-mode publisher on the same connection for what the consumed messages
/// cause, and a tracker for the work in flight that still has to acknowledge.
pub struct Consuming {
    channel: Channel,
    consumer: lapin::Consumer,
    pub publisher: Publisher,
    pub in_flight: TaskTracker,
}

impl Consuming {
    /// Declares the topology, then starts consuming `queue` with at most `prefetch`
    /// unacknowledged messages.
    pub async fn start(
        connection: &Connection,
        topology: &Topology,
        queue: &str,
        prefetch: u16,
    ) -> lapin::Result<Self> {
        let channel = connection.create_channel().await?;
        topology.declare(&channel).await?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let publisher = Publisher::open(connection).await?;
        let consumer = channel
            .basic_consume(
                queue,
                "",
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(Self {
            channel,
            consumer,
            publisher,
            in_flight: TaskTracker::new(),
        })
    }

    /// The next message; `None` once `shutdown` fires; an error when the channel or
    /// connection fails.
    pub async fn next(&mut self, shutdown: &CancellationToken) -> lapin::Result<Option<Delivery>> {
        tokio::select! {
            _ = shutdown.cancelled() => Ok(None),
            next = self.consumer.next() => match next {
                Some(delivery) => delivery.map(Some),
                None => Err(lapin::Error::InvalidChannelState(lapin::ChannelState::Closed)),
            }
        }
    }

    /// A message the broker has already handed over, without waiting.
    pub fn ready(&mut self) -> lapin::Result<Option<Delivery>> {
        match self.consumer.next().now_or_never() {
            Some(Some(delivery)) => delivery.map(Some),
            _ => Ok(None),
        }
    }

    /// Takes no more messages, lets the work in flight finish within `grace`, then
    /// closes the channel. Whatever is unacknowledged then goes back to the queue.
    pub async fn finish(self, grace: Duration) {
        let tag = self.consumer.tag();
        let cancel = self
            .channel
            .basic_cancel(tag.as_str(), BasicCancelOptions::default());
        let _ = tokio::time::timeout(super::CLOSE_TIMEOUT, cancel).await;
        drain(&self.in_flight, grace).await;
        super::close_channel(&self.channel).await;
    }
}

/// Lets the work tracked by `tracker` finish within `grace`, then pauses for its
/// acknowledgements to settle. Call before closing the channel they ack on.
async fn drain(tracker: &TaskTracker, grace: Duration) {
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            unfinished = tracker.len(),
            ?grace,
            "deliveries still in flight after the grace period; they will be redelivered"
        );
    }
    // RabbitMQ applies a quorum queue's acknowledgements asynchronously: closing the
    // channel right after the last ack can let the broker return just-acknowledged
    // messages to the queue (seen as duplicate sends after a graceful stop). A short
    // pause lets the acks settle first.
    tokio::time::sleep(SETTLE_PAUSE).await;
}

/// What `keep_consuming` runs on each connection.
pub type ConsumeFuture<'c, E> = Pin<Box<dyn Future<Output = Result<(), E>> + Send + 'c>>;

/// Keeps one consumer running until `shutdown`: connects (waiting with backoff while
/// the broker is away), runs `consume` on the connection, and when it fails calls
/// `down` and reconnects after a growing delay. `consume` returning `Ok` means it
/// stopped for shutdown.
pub async fn keep_consuming<E: std::fmt::Display>(
    settings: &AmqpSettings,
    name: &str,
    frames: Frames,
    shutdown: &CancellationToken,
    down: impl Fn(),
    consume: impl for<'c> Fn(&'c Connection) -> ConsumeFuture<'c, E>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), settings.reconnect_max_backoff);
    loop {
        let Some(connection) = connect_with_backoff(
            settings.url.expose(),
            name,
            frames,
            settings.reconnect_max_backoff,
            shutdown,
        )
        .await
        else {
            return;
        };
        let result = consume(&connection).await;
        down();
        super::close_connection(&connection).await;
        match result {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(%error, consumer = name, retry_in = ?backoff.next_delay(),
                    "consumer stopped; reconnecting");
                if !backoff.wait(shutdown).await {
                    return;
                }
            }
        }
    }
}
