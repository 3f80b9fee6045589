//! The retry schedule: which delay queue a failed attempt goes to, or none when the
//! schedule is exhausted. Pure; the worker supplies the randomness.
//!
//! Jitter without per-message TTLs: every delay `d` is served by `JITTER_STEPS` queues
//! spread evenly from `d` to `d × (1 + jitter)`, and a retry picks one at random, so
//! the retries of one outage come back spread out rather than as one wave.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use rand::Rng;

use crate::config::DeliverySettings;

const JITTER_STEPS: u32 = 4;

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    schedule: Vec<Duration>,
    jitter: f64,
}

impl RetryPolicy {
    pub fn new(schedule: Vec<Duration>, jitter: f64) -> Self {
        Self { schedule, jitter }
    }

    pub fn from_settings(settings: &DeliverySettings) -> Self {
        Self::new(settings.retry_schedule.clone(), settings.jitter)
    }

    /// Attempts a delivery gets in one run of the schedule: the first plus one per delay.
    pub fn max_attempts(&self) -> u32 {
        self.schedule.len() as u32 + 1
    }

    fn step(&self, delay: Duration, step: u32) -> Duration {
        if self.jitter == 0.0 || JITTER_STEPS < 2 {
            return delay;
        }
        let spread =
            delay.as_secs_f64() * self.jitter * f64::from(step) / f64::from(JITTER_STEPS - 1);
        let ms = (delay.as_secs_f64() + spread) * 1000.0;
        Duration::from_millis(ms.round() as u64)
    }

    /// Every delay a retry can be given: one queue each.
    pub fn delay_queues(&self) -> BTreeSet<Duration> {
        self.schedule
            .iter()
            .flat_map(|d| (0..JITTER_STEPS).map(move |s| (*d, s)))
            .map(|(d, s)| self.step(d, s))
            .collect()
    }

    /// The delay before the next attempt, after `retries_done` retries in this run of
    /// the schedule; `None` when the schedule is exhausted. A receiver's `Retry-After`
    /// moves the retry to the first delay at least that long (the longest if none is).
    pub fn next_delay(
        &self,
        retries_done: u32,
        retry_after: Option<Duration>,
        rng: &mut impl Rng,
    ) -> Option<Duration> {
        let scheduled = *self.schedule.get(retries_done as usize)?;
        let tier = match retry_after {
            Some(wanted) if wanted > scheduled => self
                .schedule
                .iter()
                .copied()
                .find(|d| *d >= wanted)
                .unwrap_or_else(|| *self.schedule.iter().max().expect("schedule is not empty")),
            _ => scheduled,
        };
        Some(self.step(tier, rng.gen_range(0..JITTER_STEPS)))
    }
}

/// `Retry-After` as delay-seconds or as an HTTP date (RFC 9110 §10.2.3), the wait
/// from `now`; a date already past is no wait, anything else is absent.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn policy(jitter: f64) -> RetryPolicy {
        let schedule = ["1m", "5m", "15m", "1h", "4h"]
            .iter()
            .map(|s| humantime::parse_duration(s).unwrap())
            .collect();
        RetryPolicy::new(schedule, jitter)
    }

    #[test]
    fn follows_the_schedule_then_stops() {
        let p = policy(0.0);
        let mut rng = StdRng::seed_from_u64(1);
        let delays: Vec<_> = (0..6).map(|n| p.next_delay(n, None, &mut rng)).collect();
        assert_eq!(
            delays,
            vec![
                Some(Duration::from_secs(60)),
                Some(Duration::from_secs(300)),
                Some(Duration::from_secs(900)),
                Some(Duration::from_secs(3600)),
                Some(Duration::from_secs(14400)),
                None
            ]
        );
        assert_eq!(p.max_attempts(), 6);
        assert_eq!(p.delay_queues().len(), 5);
    }

    #[test]
    fn jitter_spreads_each_delay_over_a_few_queues_within_bounds() {
        let p = policy(0.2);
        assert_eq!(p.delay_queues().len(), 20);
        let mut rng = StdRng::seed_from_u64(7);
        let seen: BTreeSet<_> = (0..200)
            .map(|_| p.next_delay(0, None, &mut rng).unwrap())
            .collect();
        assert!(seen.len() > 1, "jitter picks different queues");
        assert!(seen
            .iter()
            .all(|d| *d >= Duration::from_secs(60) && *d <= Duration::from_secs(72)));
        assert!(seen.iter().all(|d| p.delay_queues().contains(d)));
    }

    #[test]
    fn retry_after_moves_the_retry_to_a_later_tier() {
        let p = policy(0.0);
        let mut rng = StdRng::seed_from_u64(3);
        assert_eq!(
            p.next_delay(0, Some(Duration::from_secs(120)), &mut rng),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            p.next_delay(0, Some(Duration::from_secs(86400)), &mut rng),
            Some(Duration::from_secs(14400))
        );
        // A shorter Retry-After never makes a retry earlier than scheduled.
        assert_eq!(
            p.next_delay(2, Some(Duration::from_secs(1)), &mut rng),
            Some(Duration::from_secs(900))
        );
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        for (header, wait) in [
            (" 120 ", Some(120)),
            ("Wed, 21 Oct 2015 07:30:00 GMT", Some(120)),
            ("Wed, 21 Oct 2015 07:00:00 GMT", Some(0)),
            ("Wednesday, 21-Oct-15 07:29:00 GMT", Some(60)),
            ("soon", None),
            ("-5", None),
        ] {
            assert_eq!(
                parse_retry_after(header, now),
                wait.map(Duration::from_secs),
                "{header}"
            );
        }
    }
}
