//! Rate limits that hold for the whole deployment: each process that delivers takes an
//! equal share of an endpoint's `rate_limit`, sized by how many such processes are
//! live, which the broker reports — every one holds a consumer on `<prefix>.senders`
//! (nothing is ever published there) and samples that queue's consumer count every
//! [`SAMPLE_INTERVAL`] with a passive declare. A delivery reads the count from memory
//! (one atomic load): no round trip to the broker or the database per delivery.
//!
//! While a process is not counted (starting, or its presence lost with its broker
//! connection) it does not know its share: it sends nothing to rate-limited endpoints
//! until it is counted again, rather than the whole limit. A process that joins is
//! counted by the others within one sample: until then the deployment may send up to
//! `(n + 1) / n` of the limit, for at most [`SAMPLE_INTERVAL`].

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::Connection;
use tokio_util::sync::CancellationToken;

use crate::broker;
use crate::config::Settings;
use crate::topology::{queue_counts, Topology};

/// How often the count of processes is sampled: a joining process is taken into
/// account by the others this late at most (≈ 3 % of a minute's requests over at
/// three processes, well inside the 10 % the deployment's limit allows).
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(2);

/// After losing the broker, how long before trying to be counted again.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// How many processes share each endpoint's rate limit; `None` while this process is
/// not counted itself.
#[derive(Debug)]
pub struct Senders {
    /// 0: not known.
    count: AtomicU32,
}

impl Senders {
    /// The one process sending: the whole limit is its own (a process alone, tests).
    pub fn alone() -> Arc<Self> {
        Arc::new(Self {
            count: AtomicU32::new(1),
        })
    }

    /// Not counted yet: [`keep_counted`] fills it in.
    pub fn unknown() -> Arc<Self> {
        Arc::new(Self {
            count: AtomicU32::new(0),
        })
    }

    pub fn count(&self) -> Option<u32> {
        match self.count.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        }
    }

    /// Sets the count (0: not known); the one before.
    fn set(&self, count: u32) -> u32 {
        self.count.swap(count, Ordering::Relaxed)
    }

    #[cfg(test)]
    pub(crate) fn set_for_test(&self, count: u32) {
        self.set(count);
    }
}

/// The time between two of this process's requests to an endpoint limited to
/// `per_minute`, when `senders` processes share the limit equally. Pure.
pub fn share_interval(per_minute: u32, senders: u32) -> Duration {
    Duration::from_secs(60) * senders.max(1) / per_minute.max(1)
}

/// Keeps this process counted among the senders, and `senders` current, until
/// `shutdown`; reconnects when the broker goes away (not counted meanwhile).
pub async fn keep_counted(
    senders: Arc<Senders>,
    settings: Arc<Settings>,
    topology: Topology,
    shutdown: CancellationToken,
) {
    while !shutdown.is_cancelled() {
        let Some(connection) = broker::connect_with_backoff(
            settings.amqp.url.expose(),
            &format!("{}-senders", settings.topology.prefix),
            broker::Frames::Own,
            settings.amqp.reconnect_max_backoff,
            &shutdown,
        )
        .await
        else {
            break;
        };
        let result = be_counted(&connection, &senders, &topology, &shutdown).await;
        senders.set(0);
        broker::close_connection(&connection).await;
        if let Err(error) = result {
            tracing::warn!(%error, "not counted among the senders: rate-limited endpoints wait");
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(RETRY_PAUSE) => {}
            }
        }
    }
    senders.set(0);
}

/// Holds a consumer on `<prefix>.senders` and samples its consumer count.
async fn be_counted(
    connection: &Connection,
    senders: &Senders,
    topology: &Topology,
    shutdown: &CancellationToken,
) -> lapin::Result<()> {
    let queue = topology.senders_queue();
    let channel = connection.create_channel().await?;
    topology.declare(&channel).await?;
    channel.basic_qos(1, BasicQosOptions::default()).await?;
    let mut presence = channel
        .basic_consume(
            &queue,
            "",
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let mut sample = tokio::time::interval(SAMPLE_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = sample.tick() => {
                let (_, count) = queue_counts(&channel, &queue).await?;
                // This process's own consumer is among them.
                let count = count.max(1);
                if senders.set(count) != count {
                    tracing::info!(senders = count, "processes sharing each endpoint's rate limit");
                }
            }
            // Nothing is published there; anything that is, is dropped (no ack).
            next = presence.next() => match next {
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(error),
                None => return Err(lapin::Error::InvalidChannelState(lapin::ChannelState::Closed)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_process_takes_an_equal_share_of_the_limit() {
        let ms = Duration::from_millis;
        // (requests per minute, processes, time between this process's requests)
        let cases = [
            (120, 1, ms(500)),
            (120, 3, ms(1500)),
            (60, 2, ms(2000)),
            (1, 3, ms(180_000)),
            (6000, 4, ms(40)),
            (120, 0, ms(500)), // not known is never divided by
        ];
        for (per_minute, senders, interval) in cases {
            assert_eq!(
                share_interval(per_minute, senders),
                interval,
                "{per_minute}/min over {senders}"
            );
        }
    }

    #[test]
    fn a_process_not_counted_does_not_know_its_share() {
        let senders = Senders::unknown();
        assert_eq!(senders.count(), None);
        assert_eq!(senders.set(3), 0);
        assert_eq!(senders.count(), Some(3));
        assert_eq!(Senders::alone().count(), Some(1));
    }
}
