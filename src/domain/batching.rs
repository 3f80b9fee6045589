//! An endpoint's batching option: up to `max_events` of its events in one request,
//! gathered for at most `window` after the first is ready. Bounded by the deployment
//! (`delivery.batch_max_events`, `delivery.batch_max_window`). Pure: parsed and
//! checked once at the edge, trusted inside.

use std::time::Duration;

use super::InvalidValue;

/// The fewest events a batch may be asked to hold: one is no batch.
pub const MIN_BATCH_EVENTS: u16 = 2;
/// The most events any deployment lets one request carry.
pub const MAX_BATCH_EVENTS: u16 = 100;

/// How an endpoint's events are gathered into requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// Most events in one request.
    pub max_events: u16,
    /// Longest the first event of a batch waits for others.
    pub window: Duration,
}

/// What the configuration lets an endpoint ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchBounds {
    /// `delivery.batch_max_events` (at most [`MAX_BATCH_EVENTS`]).
    pub max_events: u16,
    /// `delivery.batch_max_window`.
    pub max_window: Duration,
}

/// Why a batching option was refused: the field at fault and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchError {
    /// `max_events` or `window`.
    pub field: &'static str,
    pub problem: InvalidValue,
}

impl BatchBounds {
    /// A batching option from its two fields; both are checked, the first fault is
    /// returned per field.
    pub fn batching(&self, max_events: i64, window: &str) -> Result<Batching, Vec<BatchError>> {
        let mut errors = Vec::new();
        let events = u16::try_from(max_events)
            .ok()
            .filter(|n| (MIN_BATCH_EVENTS..=self.max_events).contains(n));
        if events.is_none() {
            errors.push(BatchError {
                field: "max_events",
                problem: InvalidValue(format!(
                    "from {MIN_BATCH_EVENTS} to {} (delivery.batch_max_events)",
                    self.max_events
                )),
            });
        }
        let window = match humantime::parse_duration(window.trim()) {
            Ok(w) if !w.is_zero() && w <= self.max_window => Some(w),
            Ok(_) => {
                errors.push(BatchError {
                    field: "window",
                    problem: InvalidValue(format!(
                        "from 1ms to {} (delivery.batch_max_window)",
                        humantime::format_duration(self.max_window)
                    )),
                });
                None
            }
            Err(_) => {
                errors.push(BatchError {
                    field: "window",
                    problem: InvalidValue(format!("`{window}` is not a duration like 200ms or 1s")),
                });
                None
            }
        };
        match (events, window) {
            (Some(max_events), Some(window)) => Ok(Batching { max_events, window }),
            _ => Err(errors),
        }
    }
}

impl Batching {
    /// The option within `bounds`: an endpoint stored under wider bounds than the
    /// deployment's now (the configuration was lowered since) gets the deployment's.
    pub fn within(self, bounds: BatchBounds) -> Batching {
        Batching {
            max_events: self.max_events.min(bounds.max_events.max(MIN_BATCH_EVENTS)),
            window: self.window.min(bounds.max_window),
        }
    }

    /// As stored: the number of events and the window in whole milliseconds.
    pub fn stored(&self) -> (i32, i32) {
        (
            i32::from(self.max_events),
            i32::try_from(self.window.as_millis()).unwrap_or(i32::MAX),
        )
    }

    /// From what was stored: both columns set, or neither.
    pub fn from_stored(
        max_events: Option<i32>,
        window_ms: Option<i32>,
    ) -> Result<Option<Self>, InvalidValue> {
        match (max_events, window_ms) {
            (None, None) => Ok(None),
            (Some(events), Some(ms)) => {
                let max_events = u16::try_from(events)
                    .ok()
                    .filter(|n| *n >= MIN_BATCH_EVENTS)
                    .ok_or_else(|| InvalidValue(format!("a stored batch of {events} events")))?;
                let window = u64::try_from(ms)
                    .ok()
                    .filter(|ms| *ms > 0)
                    .map(Duration::from_millis)
                    .ok_or_else(|| InvalidValue(format!("a stored batch window of {ms} ms")))?;
                Ok(Some(Self { max_events, window }))
            }
            _ => Err(InvalidValue(
                "a stored batch option with one of its two fields".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds() -> BatchBounds {
        BatchBounds {
            max_events: 50,
            max_window: Duration::from_secs(1),
        }
    }

    #[test]
    fn a_batch_is_taken_within_the_configured_bounds() {
        type Case = (
            i64,
            &'static str,
            Result<(u16, u64), &'static [&'static str]>,
        );
        let cases: &[Case] = &[
            (10, "200ms", Ok((10, 200))),
            (2, "1ms", Ok((2, 1))),
            (50, " 1s ", Ok((50, 1000))),
            (1, "200ms", Err(&["max_events"])),
            (51, "200ms", Err(&["max_events"])),
            (-3, "200ms", Err(&["max_events"])),
            (70_000, "200ms", Err(&["max_events"])),
            (10, "1001ms", Err(&["window"])),
            (10, "0s", Err(&["window"])),
            (10, "soon", Err(&["window"])),
            (0, "2s", Err(&["max_events", "window"])),
        ];
        for (events, window, expected) in cases {
            let got = bounds().batching(*events, window);
            match (got, expected) {
                (Ok(b), Ok((n, ms))) => {
                    assert_eq!((b.max_events, b.window.as_millis() as u64), (*n, *ms));
                }
                (Err(errors), Err(fields)) => {
                    let got: Vec<_> = errors.iter().map(|e| e.field).collect();
                    assert_eq!(&got, fields, "{events} {window}");
                }
                (got, want) => panic!("{events} {window}: {got:?}, expected {want:?}"),
            }
        }
        let errors = bounds().batching(51, "2s").unwrap_err();
        assert!(errors[0].problem.0.contains("delivery.batch_max_events"));
        assert!(errors[1].problem.0.contains("1s"), "{}", errors[1].problem);
    }

    #[test]
    fn a_stored_batch_is_held_to_bounds_lowered_since() {
        let stored = Batching {
            max_events: 80,
            window: Duration::from_secs(5),
        };
        assert_eq!(
            stored.within(bounds()),
            Batching {
                max_events: 50,
                window: Duration::from_secs(1)
            }
        );
        let small = Batching {
            max_events: 3,
            window: Duration::from_millis(10),
        };
        assert_eq!(small.within(bounds()), small);
    }

    #[test]
    fn a_stored_batch_reads_back_as_it_was() {
        let batch = Batching {
            max_events: 10,
            window: Duration::from_millis(200),
        };
        let (events, ms) = batch.stored();
        assert_eq!(
            Batching::from_stored(Some(events), Some(ms)),
            Ok(Some(batch))
        );
        assert_eq!(Batching::from_stored(None, None), Ok(None));
        assert!(Batching::from_stored(Some(10), None).is_err());
        assert!(Batching::from_stored(Some(1), Some(200)).is_err());
        assert!(Batching::from_stored(Some(10), Some(0)).is_err());
    }
}
