//! The circuit breaker's decisions, pure: what a failure streak means for an endpoint
//! (nothing yet, open the breaker, disable it), how long a task held back by an open
//! breaker waits, and why an attempt failed as a bounded metric label. The state lives
//! in PostgreSQL, shared by every process ([`super::health`]); this module only decides.

use std::time::Duration;

use super::client::Response;
use super::throttle::DEFER_TIERS;
use crate::config::DeliverySettings;

/// When an endpoint is `failing` and when it is disabled (contract §2, §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Failed attempts in a row that open the breaker.
    pub failures: u32,
    /// Time between probe attempts while open.
    pub probe_interval: Duration,
    /// A streak this long disables the endpoint.
    pub disable_after: Duration,
}

impl BreakerPolicy {
    pub fn from_settings(settings: &DeliverySettings) -> Self {
        Self {
            failures: settings.breaker_failures,
            probe_interval: settings.probe_interval,
            disable_after: settings.disable_after,
        }
    }
}

/// A failure streak as the database holds it after one more failure was counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Streak {
    /// Failed attempts since the last success.
    pub failures: u32,
    /// Since the streak's first failure.
    pub failing_for: Duration,
    /// The breaker is open already.
    pub open: bool,
}

/// What a failure streak calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Nothing changes.
    Nothing,
    /// Open the breaker: the endpoint becomes `failing`.
    Open,
    /// The endpoint has failed continuously for `disable_after`: disable it.
    Disable,
}

pub fn after_failure(policy: &BreakerPolicy, streak: Streak) -> AfterFailure {
    if streak.failing_for >= policy.disable_after {
        AfterFailure::Disable
    } else if !streak.open && streak.failures >= policy.failures {
        AfterFailure::Open
    } else {
        AfterFailure::Nothing
    }
}

/// How long a task held back by an open breaker waits before it looks again: until the
/// next probe is due, and longer each time it was put off already (1 s, 2 s, 4 s … up
/// to the longest defer queue), so that a long outage costs the broker little. After
/// recovery the tasks come back spread over their waits, not at once.
pub fn held_delay(until_probe: Duration, deferrals: u32) -> Duration {
    let longest = DEFER_TIERS[DEFER_TIERS.len() - 1];
    let grown = Duration::from_secs(1u64 << deferrals.min(16)).min(longest);
    until_probe.max(grown).max(DEFER_TIERS[1]).min(longest)
}

/// Why an attempt failed, as the bounded `reason` label of `webhook_retries_total`: the
/// status class (`http_5xx`, `http_4xx`, `http_429`, `http_3xx`) or the error class.
pub fn failure_reason(response: &Response) -> &'static str {
    match response {
        Response::Answered { status: 429, .. } => "http_429",
        Response::Answered { status, .. } => match status / 100 {
            5 => "http_5xx",
            4 => "http_4xx",
            3 => "http_3xx",
            2 => "none",
            _ => "http_other",
        },
        Response::Failed { class, .. } => class.as_str(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::client::FailureClass;
    use crate::metrics::RETRY_REASONS;

    const POLICY: BreakerPolicy = BreakerPolicy {
        failures: 5,
        probe_interval: Duration::from_secs(30),
        disable_after: Duration::from_secs(3600),
    };

    fn streak(failures: u32, failing_for_s: u64, open: bool) -> Streak {
        Streak {
            failures,
            failing_for: Duration::from_secs(failing_for_s),
            open,
        }
    }

    #[test]
    fn a_streak_opens_the_breaker_once_and_disables_after_its_time() {
        let cases = [
            ("one failure", streak(1, 0, false), AfterFailure::Nothing),
            ("just below", streak(4, 10, false), AfterFailure::Nothing),
            ("at the threshold", streak(5, 10, false), AfterFailure::Open),
            ("past it, closed", streak(9, 10, false), AfterFailure::Open),
            ("open already", streak(9, 10, true), AfterFailure::Nothing),
            (
                "open long enough",
                streak(40, 3600, true),
                AfterFailure::Disable,
            ),
            (
                "rare failures, long",
                streak(2, 7200, false),
                AfterFailure::Disable,
            ),
            ("just short", streak(40, 3599, true), AfterFailure::Nothing),
        ];
        for (what, s, expected) in cases {
            assert_eq!(after_failure(&POLICY, s), expected, "{what}");
        }
    }

    #[test]
    fn held_tasks_wait_for_the_probe_and_longer_the_more_they_waited() {
        let s = Duration::from_secs;
        let cases = [
            ("probe soon, first wait", s(0), 0, s(1)),
            ("probe in 20 s", s(20), 0, s(20)),
            ("grows with each wait", s(0), 3, s(8)),
            ("the probe is later still", s(25), 3, s(25)),
            ("capped at the longest defer queue", s(0), 12, s(300)),
            ("a far probe is capped too", s(3600), 0, s(300)),
            ("huge counts do not overflow", s(0), u32::MAX, s(300)),
        ];
        for (what, until_probe, deferrals, expected) in cases {
            assert_eq!(held_delay(until_probe, deferrals), expected, "{what}");
        }
    }

    #[test]
    fn retry_reasons_are_a_few_classes() {
        let answered = |status| Response::Answered {
            status,
            retry_after: None,
            body: String::new(),
        };
        let cases = [
            (answered(500), "http_5xx"),
            (answered(503), "http_5xx"),
            (answered(404), "http_4xx"),
            (answered(429), "http_429"),
            (answered(302), "http_3xx"),
            (
                Response::Failed {
                    class: FailureClass::Timeout,
                    message: String::new(),
                },
                "timeout",
            ),
        ];
        for (response, expected) in cases {
            assert_eq!(failure_reason(&response), expected, "{response:?}");
            assert!(RETRY_REASONS.contains(&expected), "{expected} is listed");
        }
        for class in [
            FailureClass::Timeout,
            FailureClass::Connect,
            FailureClass::Dns,
            FailureClass::Tls,
            FailureClass::RefusedAddress,
            FailureClass::Other,
        ] {
            assert!(
                RETRY_REASONS.contains(&class.as_str()),
                "{class:?} is listed"
            );
        }
    }
}
