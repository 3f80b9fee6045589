//! An endpoint's own delivery options: how long one request may take (`timeout`) and
//! the delays of its retries (`retry_schedule`), each bounded by the deployment. A
//! schedule is drawn from the delays the topology declares a queue for
//! (`delivery.retry_schedule` ∪ `delivery.retry_delays`), so no queue is ever created
//! for an endpoint. Pure: parsed and checked once at the edge, trusted inside.

use std::collections::BTreeSet;
use std::time::Duration;

use super::{Batching, InvalidValue};

/// Most retries one endpoint's schedule may hold.
pub const MAX_RETRY_STEPS: usize = 20;

/// What the configuration lets an endpoint ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryBounds {
    /// `delivery.max_timeout`.
    pub max_timeout: Duration,
    /// Every delay with a delay queue: `delivery.retry_schedule` ∪ `delivery.retry_delays`.
    pub delays: BTreeSet<Duration>,
}

/// Why a retry schedule was refused: the step at fault (`None`: the list as a whole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleError {
    pub step: Option<usize>,
    pub problem: InvalidValue,
}

impl DeliveryBounds {
    /// A request timeout, above 0 and at most `delivery.max_timeout`.
    pub fn timeout(&self, text: &str) -> Result<Duration, InvalidValue> {
        let timeout = parse(text)?;
        if timeout.is_zero() || timeout > self.max_timeout {
            return Err(InvalidValue(format!(
                "from 1ms to {} (delivery.max_timeout)",
                format(self.max_timeout)
            )));
        }
        Ok(timeout)
    }

    /// A retry schedule: at most [`MAX_RETRY_STEPS`] delays, each one the deployment
    /// declares a delay queue for. Empty: no retry, the first failure dead-letters.
    pub fn retry_schedule(&self, steps: &[String]) -> Result<Box<[Duration]>, ScheduleError> {
        if steps.len() > MAX_RETRY_STEPS {
            return Err(ScheduleError {
                step: None,
                problem: InvalidValue(format!("at most {MAX_RETRY_STEPS} retries")),
            });
        }
        steps
            .iter()
            .enumerate()
            .map(|(step, text)| {
                let refused = |problem| ScheduleError {
                    step: Some(step),
                    problem,
                };
                let delay = parse(text).map_err(refused)?;
                if self.delays.contains(&delay) {
                    Ok(delay)
                } else {
                    Err(refused(InvalidValue(format!(
                        "`{text}` has no delay queue: one of {} (delivery.retry_schedule and \
                         delivery.retry_delays)",
                        self.delays
                            .iter()
                            .map(|d| format(*d))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))))
                }
            })
            .collect()
    }
}

/// An endpoint's options; `None` in a field: the deployment's setting.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryOptions {
    pub timeout: Option<Duration>,
    pub retry_schedule: Option<Box<[Duration]>>,
    /// Its events gathered into requests of several (docs/receivers.md, Batches).
    pub batch: Option<Batching>,
}

impl DeliveryOptions {
    /// Boxed, or `None` when the endpoint keeps every default: an endpoint without
    /// options costs one pointer in the subscription cache.
    pub fn boxed(
        timeout: Option<Duration>,
        retry_schedule: Option<Box<[Duration]>>,
        batch: Option<Batching>,
    ) -> Option<Box<Self>> {
        (timeout.is_some() || retry_schedule.is_some() || batch.is_some()).then(|| {
            Box::new(Self {
                timeout,
                retry_schedule,
                batch,
            })
        })
    }
}

/// `250ms`, `5s`, `1m`, `1h30m`.
fn parse(text: &str) -> Result<Duration, InvalidValue> {
    humantime::parse_duration(text.trim())
        .map_err(|_| InvalidValue(format!("`{text}` is not a duration like 500ms, 5s or 1m")))
}

/// A duration as the API shows it and [`DeliveryBounds`] reads it back: `5s`, `1m`,
/// `1h 30m`.
pub fn format(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds() -> DeliveryBounds {
        DeliveryBounds {
            max_timeout: Duration::from_secs(30),
            delays: [1, 60, 300, 1800]
                .map(Duration::from_secs)
                .into_iter()
                .collect(),
        }
    }

    #[test]
    fn a_timeout_is_taken_up_to_the_configured_maximum() {
        let cases: &[(&str, Option<u64>)] = &[
            ("5s", Some(5_000)),
            ("250ms", Some(250)),
            (" 30s ", Some(30_000)),
            ("30001ms", None),
            ("1m", None),
            ("0s", None),
            ("fast", None),
            ("", None),
        ];
        for (text, expected) in cases {
            let got = bounds().timeout(text).ok().map(|d| d.as_millis() as u64);
            assert_eq!(got, *expected, "{text:?}");
        }
        let err = bounds().timeout("1m").unwrap_err().0;
        assert!(
            err.contains("delivery.max_timeout") && err.contains("30s"),
            "{err}"
        );
    }

    #[test]
    fn a_schedule_is_drawn_from_the_declared_delays_only() {
        let strings = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        /// The steps given; the delays taken (s), or the step refused (`None`: the list).
        type Case = (
            &'static [&'static str],
            Result<&'static [u64], Option<usize>>,
        );
        let cases: &[Case] = &[
            (&["1m", "5m", "30m"], Ok(&[60, 300, 1800])),
            (&["1s", "1s", "1s"], Ok(&[1, 1, 1])),
            (&["30m", "1m"], Ok(&[1800, 60])),
            (&["60s", "300000ms"], Ok(&[60, 300])),
            (&[], Ok(&[])),
            (&["1m", "2m"], Err(Some(1))),
            (&["soon"], Err(Some(0))),
            (&["0s"], Err(Some(0))),
            (&["1s"; MAX_RETRY_STEPS + 1], Err(None)),
        ];
        for (steps, expected) in cases {
            let got = bounds().retry_schedule(&strings(steps));
            match (got, expected) {
                (Ok(got), Ok(want)) => {
                    let want: Vec<Duration> =
                        want.iter().map(|s| Duration::from_secs(*s)).collect();
                    assert_eq!(&*got, &want[..], "{steps:?}");
                }
                (Err(got), Err(step)) => assert_eq!(got.step, *step, "{steps:?}"),
                (got, want) => panic!("{steps:?}: {got:?}, expected {want:?}"),
            }
        }
        let err = bounds().retry_schedule(&strings(&["2m"])).unwrap_err();
        assert!(err.problem.0.contains("1s, 1m, 5m, 30m"), "{}", err.problem);
    }

    #[test]
    fn shown_durations_read_back_as_the_same() {
        for secs in [1, 60, 90, 300, 5400, 14_400] {
            let d = Duration::from_secs(secs);
            assert_eq!(parse(&format(d)).unwrap(), d, "{}", format(d));
        }
        assert_eq!(format(Duration::from_millis(250)), "250ms");
    }

    #[test]
    fn an_endpoint_keeping_every_default_carries_nothing() {
        assert!(DeliveryOptions::boxed(None, None, None).is_none());
        let own = DeliveryOptions::boxed(Some(Duration::from_secs(5)), None, None).unwrap();
        assert_eq!(own.timeout, Some(Duration::from_secs(5)));
        assert!(DeliveryOptions::boxed(None, Some(Box::new([])), None).is_some());
    }
}
