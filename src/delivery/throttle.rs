//! Per-endpoint fairness and rate limits, so one slow or limited endpoint cannot take
//! the whole process's delivery slots.
//!
//! - Concurrency: at most `delivery.max_in_flight_per_endpoint` requests to one endpoint
//!   at once. A task that finds its endpoint at the cap waits a moment for a slot; if
//!   none frees up (the endpoint is slow), the task is put off through a short defer
//!   queue instead of holding a slot.
//! - Rate: an endpoint's `rate_limit` (requests per minute, per deliver process) is
//!   enforced with GCRA. A task over the limit reserves the next free slot and is put
//!   off until then (`x-herald-not-before-ms`); when it comes back it goes without
//!   queueing again, so a backlog drains at the limit rather than churning.
//!
//! Putting a task off is not an attempt: nothing is sent or recorded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

/// Longest a task waits in-process (for a rate slot or a concurrency slot) before it
/// is put off through a defer queue instead.
pub const MAX_INLINE_WAIT: Duration = Duration::from_millis(50);

/// Delays of the defer queues.
pub const DEFER_TIERS: [Duration; 5] = [
    Duration::from_millis(250),
    Duration::from_secs(1),
    Duration::from_secs(5),
    Duration::from_secs(30),
    Duration::from_secs(300),
];

/// The defer queue for a wanted delay: the longest tier not past it (the task comes
/// back a little early and waits out the rest, so reserved slots are kept to the
/// queue's precision instead of bunching up), at least the shortest.
pub fn defer_tier(wanted: Duration) -> Duration {
    DEFER_TIERS
        .iter()
        .rev()
        .copied()
        .find(|d| *d <= wanted)
        .unwrap_or(DEFER_TIERS[0])
}

/// Backoff for a busy endpoint: 1 s, then 5 s while the task keeps finding it busy.
pub fn busy_delay(deferrals: u32) -> Duration {
    if deferrals == 0 {
        DEFER_TIERS[1]
    } else {
        DEFER_TIERS[2]
    }
}

/// GCRA state of one endpoint: the theoretical arrival time of the next request.
#[derive(Debug, Clone, Copy)]
pub struct Gcra {
    tat: Instant,
}

impl Gcra {
    pub fn new(now: Instant) -> Self {
        Self { tat: now }
    }

    /// Reserves the next slot for `per_minute` requests a minute (bursts of one) and
    /// returns how long to wait for it.
    pub fn reserve(&mut self, per_minute: u32, now: Instant) -> Duration {
        let interval = Duration::from_secs(60) / per_minute.max(1);
        let slot = self.tat.max(now);
        self.tat = slot + interval;
        slot - now
    }
}

struct EndpointLimits {
    slots: Arc<Semaphore>,
    rate: Mutex<Gcra>,
}

/// Decides, per task, whether it may be sent now.
pub struct Throttle {
    max_in_flight: usize,
    endpoints: Mutex<HashMap<Uuid, Arc<EndpointLimits>>>,
}

/// What to do with a task.
pub enum Admission {
    /// Send it now, holding the permit until the attempt is done.
    Go(OwnedSemaphorePermit),
    /// Put it off: `not_before` is a reserved rate slot to keep (Unix ms), `delay` how
    /// long to put it off.
    Defer {
        delay: Duration,
        not_before_ms: Option<i64>,
        reason: &'static str,
    },
}

impl Throttle {
    pub fn new(max_in_flight: usize) -> Self {
        Self {
            max_in_flight: max_in_flight.max(1),
            endpoints: Mutex::new(HashMap::new()),
        }
    }

    fn limits(&self, endpoint: Uuid) -> Arc<EndpointLimits> {
        self.endpoints
            .lock()
            .expect("lock not poisoned")
            .entry(endpoint)
            .or_insert_with(|| {
                Arc::new(EndpointLimits {
                    slots: Arc::new(Semaphore::new(self.max_in_flight)),
                    rate: Mutex::new(Gcra::new(Instant::now())),
                })
            })
            .clone()
    }

    /// Waits (at most `MAX_INLINE_WAIT` per limit) for the endpoint to take one more
    /// request, or says how long to put the task off.
    pub async fn admit(
        &self,
        endpoint: Uuid,
        rate_limit: Option<i32>,
        not_before_ms: Option<i64>,
    ) -> Admission {
        let limits = self.limits(endpoint);
        let now_ms = chrono::Utc::now().timestamp_millis();
        // A slot reserved earlier is kept; otherwise reserve one now.
        let wait = match (not_before_ms, rate_limit) {
            (Some(at), _) => Duration::from_millis(u64::try_from(at - now_ms).unwrap_or(0)),
            (None, Some(per_minute)) if per_minute > 0 => limits
                .rate
                .lock()
                .expect("lock not poisoned")
                .reserve(per_minute as u32, Instant::now()),
            _ => Duration::ZERO,
        };
        if wait > MAX_INLINE_WAIT {
            return Admission::Defer {
                delay: wait,
                not_before_ms: Some(now_ms + wait.as_millis() as i64),
                reason: "rate_limit",
            };
        }
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        // The common case costs no timer: a free slot is taken at once.
        if let Ok(permit) = limits.slots.clone().try_acquire_owned() {
            return Admission::Go(permit);
        }
        match tokio::time::timeout(MAX_INLINE_WAIT, limits.slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Admission::Go(permit),
            _ => Admission::Defer {
                delay: Duration::ZERO,
                // The rate slot (if any) was used up: a busy endpoint is not also
                // charged a second slot when the task comes back.
                not_before_ms: rate_limit.map(|_| now_ms),
                reason: "endpoint_busy",
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_spaces_requests_at_the_rate() {
        let start = Instant::now();
        let mut gcra = Gcra::new(start);
        // 120 a minute: one every 500 ms.
        let waits: Vec<Duration> = (0..4).map(|_| gcra.reserve(120, start)).collect();
        assert_eq!(
            waits,
            [0, 500, 1000, 1500].map(Duration::from_millis).to_vec()
        );
        // After a quiet spell the limiter does not bank credit beyond one request.
        let later = start + Duration::from_secs(60);
        assert_eq!(gcra.reserve(120, later), Duration::ZERO);
        assert_eq!(gcra.reserve(120, later), Duration::from_millis(500));
    }

    #[test]
    fn defer_tiers_never_overshoot_a_reserved_slot() {
        let ms = Duration::from_millis;
        assert_eq!(defer_tier(ms(60)), ms(250));
        assert_eq!(defer_tier(ms(300)), ms(250));
        assert_eq!(defer_tier(ms(4000)), ms(1000));
        assert_eq!(defer_tier(ms(5000)), ms(5000));
        assert_eq!(defer_tier(ms(3_600_000)), ms(300_000));
        assert_eq!(busy_delay(0), ms(1000));
        assert_eq!(busy_delay(9), ms(5000));
    }

    #[tokio::test]
    async fn a_busy_endpoint_defers_only_its_own_tasks() {
        let throttle = Throttle::new(2);
        let slow = Uuid::new_v4();
        let fast = Uuid::new_v4();
        let held: Vec<_> = [
            throttle.admit(slow, None, None).await,
            throttle.admit(slow, None, None).await,
        ]
        .into_iter()
        .map(|a| match a {
            Admission::Go(p) => p,
            Admission::Defer { .. } => panic!("under the cap"),
        })
        .collect();
        assert!(matches!(
            throttle.admit(slow, None, None).await,
            Admission::Defer {
                reason: "endpoint_busy",
                ..
            }
        ));
        assert!(matches!(
            throttle.admit(fast, None, None).await,
            Admission::Go(_)
        ));
        drop(held);
        assert!(matches!(
            throttle.admit(slow, None, None).await,
            Admission::Go(_)
        ));
    }

    #[tokio::test]
    async fn over_the_rate_a_task_reserves_a_later_slot() {
        let throttle = Throttle::new(10);
        let endpoint = Uuid::new_v4();
        assert!(matches!(
            throttle.admit(endpoint, Some(6), None).await,
            Admission::Go(_)
        ));
        match throttle.admit(endpoint, Some(6), None).await {
            Admission::Defer {
                delay,
                not_before_ms,
                reason,
            } => {
                assert_eq!(reason, "rate_limit");
                assert!(delay > Duration::from_secs(9) && delay <= Duration::from_secs(10));
                assert!(not_before_ms.is_some());
            }
            Admission::Go(_) => panic!("6 a minute allows one request per 10 s"),
        }
        // A task coming back at its reserved slot goes at once.
        let now = chrono::Utc::now().timestamp_millis();
        assert!(matches!(
            throttle.admit(endpoint, Some(6), Some(now)).await,
            Admission::Go(_)
        ));
    }
}
