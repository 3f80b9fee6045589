//! What an attempt's answer means for its delivery: done, retried at a delay, or
//! dead-lettered with a reason. Pure: the attempt engine asks, then carries it out.

use std::time::{Duration, SystemTime};

use rand::Rng;

use super::client::Response;
use super::retry::{parse_retry_after, RetryPolicy};

/// Why a delivery ends `failed`; `as_str` is the metric label and the DLQ reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterReason {
    /// Its endpoint was disabled before this attempt.
    EndpointDisabled,
    /// Its endpoint was deleted before this attempt.
    EndpointDeleted,
    /// The receiver answered `410 Gone`: the endpoint is disabled too.
    Gone,
    /// Every attempt of the retry schedule failed.
    RetriesExhausted,
}

impl DeadLetterReason {
    pub const ALL: [DeadLetterReason; 4] = [
        DeadLetterReason::EndpointDisabled,
        DeadLetterReason::EndpointDeleted,
        DeadLetterReason::Gone,
        DeadLetterReason::RetriesExhausted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::EndpointDisabled => "endpoint_disabled",
            DeadLetterReason::EndpointDeleted => "endpoint_deleted",
            DeadLetterReason::Gone => "gone",
            DeadLetterReason::RetriesExhausted => "retries_exhausted",
        }
    }

    /// The endpoint must receive nothing more.
    pub fn disables_endpoint(self) -> bool {
        self == DeadLetterReason::Gone
    }
}

/// What to do with a delivery after one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A 2xx: delivered.
    Done,
    /// Failed; the next attempt after `delay`, through that delay's queue.
    Retry { delay: Duration },
    /// Failed for good.
    DeadLetter(DeadLetterReason),
}

/// The decision for `response`, after `retries_done` retries of this run of the
/// schedule: the endpoint's `own` schedule when it has one, else the configured one.
/// A `Retry-After` counts on 429 and 503 only; `now` dates its HTTP-date form.
pub fn decide(
    response: &Response,
    retries_done: u32,
    retry: &RetryPolicy,
    own: Option<&[Duration]>,
    now: SystemTime,
    rng: &mut impl Rng,
) -> Decision {
    let retry_after = match response {
        Response::Answered { status, .. } if (200..300).contains(status) => return Decision::Done,
        Response::Answered { status: 410, .. } => {
            return Decision::DeadLetter(DeadLetterReason::Gone)
        }
        Response::Answered {
            status: 429 | 503,
            retry_after,
            ..
        } => retry_after
            .as_deref()
            .and_then(|value| parse_retry_after(value, now)),
        Response::Answered { .. } | Response::Failed { .. } => None,
    };
    let next = match own {
        Some(schedule) => retry.next_delay_in(schedule, retries_done, retry_after, rng),
        None => retry.next_delay(retries_done, retry_after, rng),
    };
    match next {
        Some(delay) => Decision::Retry { delay },
        None => Decision::DeadLetter(DeadLetterReason::RetriesExhausted),
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;
    use crate::delivery::client::FailureClass;

    fn answered(status: u16, retry_after: Option<&str>) -> Response {
        Response::Answered {
            status,
            retry_after: retry_after.map(String::from),
            body: String::new(),
        }
    }

    #[test]
    fn each_answer_leads_to_its_decision() {
        let retry = RetryPolicy::new(vec![Duration::from_secs(60), Duration::from_secs(300)], 0.0)
            .with_delays([Duration::from_secs(10)]);
        let own: &[Duration] = &[Duration::from_secs(10)];
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let failed = Response::Failed {
            class: FailureClass::Timeout,
            message: "timed out".into(),
        };
        let retry_in = |s| Decision::Retry {
            delay: Duration::from_secs(s),
        };
        let cases: Vec<(&str, Response, u32, Decision)> = vec![
            ("200 is done", answered(200, None), 0, Decision::Done),
            ("own: 200 is done", answered(200, None), 0, Decision::Done),
            (
                "own: 500 retries on its schedule",
                answered(500, None),
                0,
                retry_in(10),
            ),
            (
                "own: its schedule runs out",
                answered(500, None),
                1,
                Decision::DeadLetter(DeadLetterReason::RetriesExhausted),
            ),
            (
                "own: 410 is gone at once",
                answered(410, None),
                0,
                Decision::DeadLetter(DeadLetterReason::Gone),
            ),
            ("204 is done", answered(204, None), 1, Decision::Done),
            ("299 is done", answered(299, None), 2, Decision::Done),
            ("500 retries", answered(500, None), 0, retry_in(60)),
            ("302 retries", answered(302, None), 0, retry_in(60)),
            ("a timeout retries", failed.clone(), 1, retry_in(300)),
            (
                "retries run out",
                answered(500, None),
                2,
                Decision::DeadLetter(DeadLetterReason::RetriesExhausted),
            ),
            (
                "and also for failures",
                failed,
                2,
                Decision::DeadLetter(DeadLetterReason::RetriesExhausted),
            ),
            (
                "410 is gone at once",
                answered(410, None),
                0,
                Decision::DeadLetter(DeadLetterReason::Gone),
            ),
            (
                "429 Retry-After moves later",
                answered(429, Some("120")),
                0,
                retry_in(300),
            ),
            (
                "503 Retry-After as a date",
                answered(503, Some("Mon, 12 Jan 1970 13:48:40 GMT")),
                0,
                retry_in(300),
            ),
            (
                "Retry-After on a 500 is ignored",
                answered(500, Some("120")),
                0,
                retry_in(60),
            ),
        ];
        for (what, response, retries_done, expected) in cases {
            let mut rng = StdRng::seed_from_u64(1);
            let own = what.starts_with("own:").then_some(own);
            assert_eq!(
                decide(&response, retries_done, &retry, own, now, &mut rng),
                expected,
                "{what}"
            );
        }
    }

    #[test]
    fn only_gone_disables_the_endpoint() {
        for reason in DeadLetterReason::ALL {
            assert_eq!(
                reason.disables_endpoint(),
                reason == DeadLetterReason::Gone,
                "{}",
                reason.as_str()
            );
        }
    }
}
