//! Waiting between tries while something Herald depends on is away (the broker, the
//! database): exponential delays up to a ceiling, cut short by shutdown. Every retry
//! loop of the process waits through this one type.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// The delays of one run of tries: `first`, then doubling, never above `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            next: first.min(max),
            max,
        }
    }

    /// The delay the next [`Backoff::wait`] will sleep.
    pub fn next_delay(&self) -> Duration {
        self.next
    }

    /// Sleeps the next delay and doubles it; `false` if `shutdown` came first.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn delays_double_up_to_the_ceiling() {
        let stop = CancellationToken::new();
        let mut backoff = Backoff::new(Duration::from_millis(1), Duration::from_millis(5));
        let mut seen = Vec::new();
        for _ in 0..5 {
            seen.push(backoff.next_delay().as_millis());
            assert!(backoff.wait(&stop).await);
        }
        assert_eq!(seen, [1, 2, 4, 5, 5]);
    }

    #[tokio::test]
    async fn shutdown_cuts_the_wait_short() {
        let stop = CancellationToken::new();
        stop.cancel();
        let mut backoff = Backoff::new(Duration::from_secs(60), Duration::from_secs(60));
        assert!(!backoff.wait(&stop).await);
    }
}
