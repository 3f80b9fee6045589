//! The retry schedule: which delay queue a failed attempt goes to, or none when the
//! schedule is exhausted. Pure; the worker supplies the randomness.
//!
//! An endpoint may carry a schedule of its own ([`RetryPolicy::next_delay_in`]), drawn
//! from the delays the topology declares (`delivery.retry_schedule` ∪
//! `delivery.retry_delays`): it is the same queues, picked in another order.
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
    /// Every delay with delay queues: the schedule's and the extra ones.
    declared: BTreeSet<Duration>,
}

impl RetryPolicy {
    pub fn new(schedule: Vec<Duration>, jitter: f64) -> Self {
        let declared = schedule.iter().copied().collect();
        Self {
            schedule,
            jitter,
            declared,
        }
    }

    /// Declares queues for `delays` too, for endpoints' own schedules.
    pub fn with_delays(mut self, delays: impl IntoIterator<Item = Duration>) -> Self {
        self.declared.extend(delays);
        self
    }

    pub fn from_settings(settings: &DeliverySettings) -> Self {
        Self::new(settings.retry_schedule.clone(), settings.jitter)
            .with_delays(settings.retry_delays.iter().copied())
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
        self.declared
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
        self.next_delay_in(&self.schedule, retries_done, retry_after, rng)
    }

    /// As [`Self::next_delay`], following `schedule` (an endpoint's own) instead of
    /// the configured one. A step without queues (its delay was taken out of the
    /// configuration after the endpoint chose it) goes to the next longer declared
    /// delay, or the longest: a retry is never published to a queue that is not there.
    pub fn next_delay_in(
        &self,
        schedule: &[Duration],
        retries_done: u32,
        retry_after: Option<Duration>,
        rng: &mut impl Rng,
    ) -> Option<Duration> {
        let scheduled = *schedule.get(retries_done as usize)?;
        let tier = match retry_after {
            Some(wanted) if wanted > scheduled => schedule
                .iter()
                .copied()
                .find(|d| *d >= wanted)
                .unwrap_or_else(|| *schedule.iter().max().expect("schedule is not empty")),
            _ => scheduled,
        };
        let tier = self.declared_tier(tier)?;
        Some(self.step(tier, rng.gen_range(0..JITTER_STEPS)))
    }

    /// `tier` if it has queues, else the next longer declared delay, else the longest;
    /// `None` only when nothing is declared.
    fn declared_tier(&self, tier: Duration) -> Option<Duration> {
        if self.declared.contains(&tier) {
            return Some(tier);
        }
        self.declared
            .range(tier..)
            .next()
            .or_else(|| self.declared.last())
            .copied()
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
    fn an_endpoints_own_schedule_uses_the_declared_queues_only() {
        let p = policy(0.2).with_delays([Duration::from_secs(30), Duration::from_secs(1800)]);
        assert_eq!(p.delay_queues().len(), 28, "7 delays × 4 jitter steps");
        let s = |secs: &[u64]| {
            secs.iter()
                .map(|s| Duration::from_secs(*s))
                .collect::<Vec<_>>()
        };
        let mut rng = StdRng::seed_from_u64(5);
        /// Own schedule (s), retries done, Retry-After (s), the tier expected (s) or none.
        type Case = (&'static [u64], u32, Option<u64>, Option<u64>);
        let cases: &[Case] = &[
            (&[30, 1800], 0, None, Some(30)),
            (&[30, 1800], 1, None, Some(1800)),
            (&[30, 1800], 2, None, None),
            (&[], 0, None, None),
            (&[30, 30, 30], 2, None, Some(30)),
            (&[30, 1800], 0, Some(120), Some(1800)),
            (&[30, 1800], 0, Some(86_400), Some(1800)),
            // Taken out of the configuration since: the next longer declared delay.
            (&[45], 0, None, Some(60)),
            (&[90_000], 0, None, Some(14_400)),
        ];
        for (own, done, after, tier) in cases {
            let delay = p.next_delay_in(&s(own), *done, after.map(Duration::from_secs), &mut rng);
            match (delay, tier) {
                (None, None) => {}
                (Some(delay), Some(tier)) => {
                    let tier = Duration::from_secs(*tier);
                    assert!(
                        delay >= tier && delay <= tier.mul_f64(1.2) + Duration::from_millis(1),
                        "{own:?} after {done}: {delay:?} is not in {tier:?}'s band"
                    );
                    assert!(p.delay_queues().contains(&delay), "{delay:?} has a queue");
                }
                (delay, tier) => panic!("{own:?} after {done}: {delay:?}, expected {tier:?}"),
            }
        }
        // The configured schedule is unchanged by the extra delays.
        assert_eq!(p.max_attempts(), 6);
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
