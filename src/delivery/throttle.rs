//! Per-endpoint fairness and rate limits, so one slow or limited endpoint cannot take
//! the whole process's delivery slots.
//!
//! - Concurrency: at most `delivery.max_in_flight_per_endpoint` requests at once to an
//!   endpoint that is slow (or not yet heard from), four times as many (at most
//!   `delivery.concurrency`) to one that answers fast. A task that finds its endpoint
//!   at its cap waits for a slot: up to a second while the endpoint answers fast (its
//!   slots turn over quickly), a moment while it is not yet known, not at all once it
//!   is known to be slow. A slow endpoint may borrow beyond its cap (up to the fast
//!   cap) while more than half of the process's slots are idle, so a lone slow
//!   endpoint still drains at a useful pace. If no slot frees up, the task
//!   is put off through a defer queue instead of holding a process slot, until its turn:
//!   put-off tasks take turns on a per-endpoint clock that runs at the endpoint's pace
//!   (slots ÷ average request time), so they come back about when a slot frees instead
//!   of cycling through the queues. A task carries its turn, not a time: when the pace
//!   changes (the endpoint slows down, or may borrow idle slots) every turn still ahead
//!   comes due at the new pace.
//! - Rate: an endpoint's `rate_limit` (requests per minute for the whole deployment) is
//!   enforced with GCRA, each process at its share of the limit: the limit divided by
//!   the live number of processes delivering ([`super::share`]). A task over the
//!   process's share reserves the next free slot and is put off until then
//!   (`x-herald-not-before-ms`); when it comes back — to whichever process — it goes
//!   without queueing again, so a backlog drains at the limit rather than churning,
//!   and every slot is reserved in one process only.
//!
//! Putting a task off is not an attempt: nothing is sent or recorded.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use super::share::{share_interval, Senders};

/// Longest a task waits in-process (for a rate slot, or a slow endpoint's concurrency
/// slot) before it is put off through a defer queue instead.
pub const MAX_INLINE_WAIT: Duration = Duration::from_millis(50);

/// Longest a task waits for a concurrency slot of an endpoint that answers fast:
/// waiting in the process is cheaper than a round trip through a defer queue.
pub const FAST_ENDPOINT_WAIT: Duration = Duration::from_secs(1);

/// How many more requests than a slow endpoint a fast one may have in flight.
pub const FAST_FACTOR: usize = 4;

/// An endpoint whose recent requests took longer than this on average is slow.
pub const SLOW_ENDPOINT: Duration = Duration::from_millis(250);

/// Longest a task put off for a busy endpoint stays away, even when its turn is later:
/// tasks taken early (a slot was free) leave gaps in the turns, and returning tasks
/// fill them; a turn handed out by another process (or before a restart) means little
/// here. Put-offs travel in bulk, so checking back costs little.
pub const BUSY_RECHECK: Duration = Duration::from_secs(5);

/// How long a task for a rate-limited endpoint is put off while this process does not
/// know its share of the limit (it is not counted among the senders yet).
pub const SHARE_UNKNOWN_DELAY: Duration = Duration::from_secs(1);

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

/// The turns of tasks put off because an endpoint was busy: positions on a clock that
/// advances one turn per `interval`, the time the endpoint takes to free a slot. The
/// clock follows the endpoint's pace: when the interval changes, turns still ahead come
/// due at the new one.
#[derive(Debug, Clone, Copy)]
pub struct TurnClock {
    /// Turns due by `since`, and the pace from then on.
    due: f64,
    since: Instant,
    interval: Duration,
    /// The next turn to hand out.
    next: u64,
}

impl TurnClock {
    pub fn new(now: Instant) -> Self {
        Self {
            due: 0.0,
            since: now,
            interval: Duration::from_secs(1),
            next: 0,
        }
    }

    /// Sets the pace from `now` on.
    fn pace(&mut self, interval: Duration, now: Instant) {
        let interval = interval.max(Duration::from_micros(1));
        if interval != self.interval {
            self.due = self.due_at(now);
            self.since = now;
            self.interval = interval;
        }
    }

    fn due_at(&self, now: Instant) -> f64 {
        self.due
            + now.saturating_duration_since(self.since).as_secs_f64() / self.interval.as_secs_f64()
    }

    /// Hands out the next turn at a pace of one per `interval`: the turn, and how long
    /// until it (at least a fraction of an interval: the slot just due is taken).
    pub fn take(&mut self, interval: Duration, now: Instant) -> (u64, Duration) {
        self.pace(interval, now);
        let turn = self.next.max(self.due_at(now).floor() as u64 + 1);
        self.next = turn + 1;
        (turn, self.until(turn, now))
    }

    /// How long until `turn` comes due at the pace of one per `interval` (zero if due).
    pub fn wait_for(&mut self, turn: u64, interval: Duration, now: Instant) -> Duration {
        self.pace(interval, now);
        self.until(turn, now)
    }

    fn until(&self, turn: u64, now: Instant) -> Duration {
        let ahead = turn as f64 - self.due_at(now);
        if ahead > 0.0 {
            self.interval.mul_f64(ahead.min(1e9))
        } else {
            Duration::ZERO
        }
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
        self.reserve_every(share_interval(per_minute, 1), now)
    }

    /// How long the next slot is away, reserving nothing.
    pub fn peek(&self, now: Instant) -> Duration {
        self.tat.saturating_duration_since(now)
    }

    /// Reserves the next slot, one per `interval`, and returns how long to wait for it.
    pub fn reserve_every(&mut self, interval: Duration, now: Instant) -> Duration {
        let slot = self.tat.max(now);
        self.tat = slot + interval;
        slot - now
    }
}

struct EndpointLimits {
    /// `max_in_flight_per_endpoint`: what the endpoint may hold while slow or unknown.
    narrow: Arc<Semaphore>,
    /// `FAST_FACTOR` times that (at most `delivery.concurrency`): what it may hold while
    /// it answers fast.
    wide: Arc<Semaphore>,
    rate: Mutex<Gcra>,
    /// Turns handed to tasks put off because the endpoint was busy, spaced at the rate
    /// it serves requests, so they come back when a slot is likely free instead of
    /// cycling through the defer queues.
    turns: Mutex<TurnClock>,
    /// Moving average of the endpoint's request durations, milliseconds; `UNKNOWN`
    /// until its first request is done.
    recent_ms: AtomicU64,
}

const UNKNOWN: u64 = u64::MAX;

impl EndpointLimits {
    fn answers_fast(&self) -> bool {
        self.recent_ms.load(Ordering::Relaxed) <= SLOW_ENDPOINT.as_millis() as u64
    }

    /// How long a task may wait for one of the endpoint's slots. An endpoint known to
    /// answer fast turns its slots over quickly: worth waiting for. One not yet heard
    /// from may be slow, and waiting tasks hold the process's slots: a moment. One known
    /// to be slow: not at all (its other tasks would only pile up behind it).
    fn patience(&self) -> Duration {
        match self.recent_ms.load(Ordering::Relaxed) {
            UNKNOWN => MAX_INLINE_WAIT,
            ms if ms <= SLOW_ENDPOINT.as_millis() as u64 => FAST_ENDPOINT_WAIT,
            _ => Duration::ZERO,
        }
    }
}

/// Moves the average a quarter of the way towards the new sample; the first sample is
/// the average.
fn smoothed(average_ms: u64, sample_ms: u64) -> u64 {
    if average_ms == UNKNOWN {
        sample_ms
    } else {
        (average_ms * 3 + sample_ms) / 4
    }
}

/// One of an endpoint's concurrency slots, held for the duration of a request; the
/// request's duration feeds the endpoint's average when the slot is dropped.
pub struct Slot {
    _narrow: Option<OwnedSemaphorePermit>,
    _wide: OwnedSemaphorePermit,
    limits: Arc<EndpointLimits>,
    in_flight: Arc<AtomicUsize>,
    taken: Instant,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        let sample = self.taken.elapsed().as_millis() as u64;
        // A lost race between two updates only drops one sample.
        let average = self.limits.recent_ms.load(Ordering::Relaxed);
        self.limits
            .recent_ms
            .store(smoothed(average, sample), Ordering::Relaxed);
    }
}

/// Decides, per task, whether it may be sent now.
pub struct Throttle {
    max_in_flight: usize,
    fast_max_in_flight: usize,
    /// Requests in flight to any endpoint, and how many above which a slow endpoint
    /// may no longer borrow beyond its cap (half of `delivery.concurrency`).
    in_flight: Arc<AtomicUsize>,
    borrow_below: usize,
    endpoints: Mutex<HashMap<Uuid, Arc<EndpointLimits>>>,
    /// How many processes share each rate limit.
    senders: Arc<Senders>,
}

/// What to do with a task.
pub enum Admission {
    /// Send it now, holding the slot until the request is done.
    Go(Slot),
    /// Put it off: `not_before` is a reserved rate slot to keep (Unix ms), `turn` its
    /// place in the line of a busy endpoint, `delay` how long to put it off.
    Defer {
        delay: Duration,
        not_before_ms: Option<i64>,
        turn: Option<u64>,
        reason: &'static str,
    },
}

impl Throttle {
    /// `max_in_flight` requests to a slow (or not yet known) endpoint, four times as
    /// many (at most `concurrency`) to one that answers fast.
    pub fn new(max_in_flight: usize, concurrency: usize) -> Self {
        let max_in_flight = max_in_flight.max(1);
        Self {
            max_in_flight,
            fast_max_in_flight: concurrency
                .min(FAST_FACTOR * max_in_flight)
                .max(max_in_flight),
            in_flight: Arc::new(AtomicUsize::new(0)),
            borrow_below: concurrency / 2,
            endpoints: Mutex::new(HashMap::new()),
            senders: Senders::alone(),
        }
    }

    /// Rate limits shared with the other processes `senders` counts (the whole limit
    /// is this process's own without it).
    pub fn sharing(mut self, senders: Arc<Senders>) -> Self {
        self.senders = senders;
        self
    }

    fn limits(&self, endpoint: Uuid) -> Arc<EndpointLimits> {
        self.endpoints
            .lock()
            .expect("lock not poisoned")
            .entry(endpoint)
            .or_insert_with(|| {
                Arc::new(EndpointLimits {
                    narrow: Arc::new(Semaphore::new(self.max_in_flight)),
                    wide: Arc::new(Semaphore::new(self.fast_max_in_flight)),
                    rate: Mutex::new(Gcra::new(Instant::now())),
                    turns: Mutex::new(TurnClock::new(Instant::now())),
                    recent_ms: AtomicU64::new(UNKNOWN),
                })
            })
            .clone()
    }

    /// Would a task for this endpoint get a rate slot of this process's share at once
    /// (always, without a `rate_limit`)? Reserves nothing.
    pub fn has_rate_slot(&self, endpoint: Uuid, rate_limit: Option<i32>) -> bool {
        if rate_limit.is_none_or(|r| r <= 0) {
            return true;
        }
        self.senders.count().is_some()
            && self
                .limits(endpoint)
                .rate
                .lock()
                .expect("lock not poisoned")
                .peek(Instant::now())
                <= MAX_INLINE_WAIT
    }

    /// Waits (at most `MAX_INLINE_WAIT` for a rate slot or a turn, the endpoint's
    /// patience for a concurrency slot) for the endpoint to take one more request, or
    /// says how long to put the task off. `not_before_ms` is a rate slot reserved
    /// earlier, `turn` a place in the line handed out when the endpoint was busy.
    pub async fn admit(
        &self,
        endpoint: Uuid,
        rate_limit: Option<i32>,
        not_before_ms: Option<i64>,
        turn: Option<u64>,
    ) -> Admission {
        let limits = self.limits(endpoint);
        let now_ms = chrono::Utc::now().timestamp_millis();
        // A slot reserved earlier is kept; otherwise reserve one now.
        let wait = match (not_before_ms, rate_limit) {
            (Some(at), _) => Duration::from_millis(u64::try_from(at - now_ms).unwrap_or(0)),
            (None, Some(per_minute)) if per_minute > 0 => {
                let Some(senders) = self.senders.count() else {
                    return Admission::Defer {
                        delay: SHARE_UNKNOWN_DELAY,
                        not_before_ms: None,
                        turn,
                        reason: "rate_limit",
                    };
                };
                limits
                    .rate
                    .lock()
                    .expect("lock not poisoned")
                    .reserve_every(share_interval(per_minute as u32, senders), Instant::now())
            }
            _ => Duration::ZERO,
        };
        if wait > MAX_INLINE_WAIT {
            return match rate_limit {
                // A reserved rate slot is waited for to the end.
                Some(_) => Admission::Defer {
                    delay: wait,
                    not_before_ms: Some(now_ms + wait.as_millis() as i64),
                    turn,
                    reason: "rate_limit",
                },
                // A busy turn as a time, as tasks put off by an earlier version carry.
                None => self.early(&limits, wait, None, turn).await,
            };
        }
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let mut patience = limits.patience();
        if let Some(turn) = turn {
            let ahead = match self.turn_interval(&limits) {
                Some(interval) => limits.turns.lock().expect("lock not poisoned").wait_for(
                    turn,
                    interval,
                    Instant::now(),
                ),
                None => Duration::ZERO,
            };
            if ahead > MAX_INLINE_WAIT {
                return self.early(&limits, ahead, not_before_ms, Some(turn)).await;
            }
            if !ahead.is_zero() {
                tokio::time::sleep(ahead).await;
            }
        }
        if not_before_ms.is_some() || turn.is_some() {
            // The task's turn has come: give it a moment even at a slow endpoint.
            patience = patience.max(MAX_INLINE_WAIT);
        }
        match self.slot(&limits, patience).await {
            Some(slot) => Admission::Go(slot),
            None => self.busy(&limits, rate_limit, now_ms),
        }
    }

    /// A task back before its turn. The turn only guesses when a slot frees: one free
    /// now is as good; otherwise it checks back within `BUSY_RECHECK`, keeping its turn
    /// (and its rate slot, if any).
    async fn early(
        &self,
        limits: &Arc<EndpointLimits>,
        ahead: Duration,
        not_before_ms: Option<i64>,
        turn: Option<u64>,
    ) -> Admission {
        match self.slot(limits, Duration::ZERO).await {
            Some(slot) => Admission::Go(slot),
            None => Admission::Defer {
                delay: ahead.min(BUSY_RECHECK),
                not_before_ms,
                turn,
                reason: "endpoint_busy",
            },
        }
    }

    /// One of the endpoint's slots, now or within `patience`. A fast endpoint turns its
    /// slots over quickly and may hold more of them; a slow or unknown one is held to
    /// `max_in_flight`, unless the process is mostly idle.
    async fn slot(&self, limits: &Arc<EndpointLimits>, patience: Duration) -> Option<Slot> {
        let narrow = if limits.answers_fast() {
            None
        } else {
            match take(&limits.narrow, patience).await {
                Some(permit) => Some(permit),
                None if self.mostly_idle() => None,
                None => return None,
            }
        };
        let wide = take(&limits.wide, patience).await?;
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(Slot {
            _narrow: narrow,
            _wide: wide,
            limits: limits.clone(),
            in_flight: self.in_flight.clone(),
            taken: Instant::now(),
        })
    }

    /// Fewer than half of the process's slots are taken: an endpoint at its cap may
    /// borrow one (a request to a slow endpoint holds it for a while, so never more).
    fn mostly_idle(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) < self.borrow_below
    }

    /// Puts off a task that found the endpoint busy, until its turn. While the
    /// endpoint's speed is unknown it has no turn (the caller backs off instead).
    fn busy(&self, limits: &EndpointLimits, rate_limit: Option<i32>, now_ms: i64) -> Admission {
        let (turn, until) = match self.turn_interval(limits) {
            Some(interval) => {
                let (turn, until) = limits
                    .turns
                    .lock()
                    .expect("lock not poisoned")
                    .take(interval, Instant::now());
                (Some(turn), until)
            }
            None => (None, Duration::ZERO),
        };
        Admission::Defer {
            delay: until.min(BUSY_RECHECK),
            // The rate slot (if any) the task used up is kept: a busy endpoint does not
            // charge it twice.
            not_before_ms: rate_limit.map(|_| now_ms),
            turn,
            reason: "endpoint_busy",
        }
    }

    /// The time between two turns at the endpoint: an endpoint with `slots` requests of
    /// `recent_ms` each in flight frees a slot every `recent_ms / slots`. `None` while
    /// its speed is unknown.
    fn turn_interval(&self, limits: &EndpointLimits) -> Option<Duration> {
        let recent_ms = limits.recent_ms.load(Ordering::Relaxed);
        if recent_ms == UNKNOWN {
            return None;
        }
        let slots = if limits.answers_fast() || self.mostly_idle() {
            self.fast_max_in_flight
        } else {
            self.max_in_flight
        };
        Some(Duration::from_millis(recent_ms.max(1)) / slots as u32)
    }
}

/// A permit now, or within `patience`.
async fn take(semaphore: &Arc<Semaphore>, patience: Duration) -> Option<OwnedSemaphorePermit> {
    // The common case costs no timer: a free permit is taken at once.
    if let Ok(permit) = semaphore.clone().try_acquire_owned() {
        return Some(permit);
    }
    if patience.is_zero() {
        return None;
    }
    tokio::time::timeout(patience, semaphore.clone().acquire_owned())
        .await
        .ok()?
        .ok()
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
    fn the_average_request_time_follows_an_endpoint_that_turns_slow() {
        let slow = SLOW_ENDPOINT.as_millis() as u64;
        assert!(UNKNOWN > slow, "an endpoint not heard from counts as slow");
        assert_eq!(smoothed(UNKNOWN, 5), 5, "the first answer is the average");
        let mut average = 5;
        let mut samples = 0;
        while average <= slow {
            average = smoothed(average, 2000);
            samples += 1;
        }
        assert_eq!(samples, 1, "one 2 s answer marks a fast endpoint slow");
        let mut samples = 0;
        while average > slow {
            average = smoothed(average, 5);
            samples += 1;
        }
        assert_eq!(samples, 3, "a few fast answers make it fast again");
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
        // Concurrency 4: with 2 requests in flight the process is not idle enough for
        // the busy endpoint to borrow.
        let throttle = Throttle::new(2, 4);
        let slow = Uuid::new_v4();
        let fast = Uuid::new_v4();
        let held: Vec<_> = [
            throttle.admit(slow, None, None, None).await,
            throttle.admit(slow, None, None, None).await,
        ]
        .into_iter()
        .map(|a| match a {
            Admission::Go(p) => p,
            Admission::Defer { .. } => panic!("under the cap"),
        })
        .collect();
        assert!(matches!(
            throttle.admit(slow, None, None, None).await,
            Admission::Defer {
                reason: "endpoint_busy",
                ..
            }
        ));
        assert!(matches!(
            throttle.admit(fast, None, None, None).await,
            Admission::Go(_)
        ));
        drop(held);
        assert!(matches!(
            throttle.admit(slow, None, None, None).await,
            Admission::Go(_)
        ));
    }

    #[tokio::test]
    async fn tasks_put_off_by_a_slow_endpoint_come_back_at_its_pace() {
        let throttle = Throttle::new(2, 4);
        let slow = Uuid::new_v4();
        let held: Vec<_> = [
            throttle.admit(slow, None, None, None).await,
            throttle.admit(slow, None, None, None).await,
        ]
        .into_iter()
        .map(|a| match a {
            Admission::Go(slot) => slot,
            Admission::Defer { .. } => panic!("under the cap"),
        })
        .collect();
        // Two slots of 2 s requests: a slot frees about every second.
        throttle
            .limits(slow)
            .recent_ms
            .store(2000, Ordering::Relaxed);
        let mut delays = Vec::new();
        let mut turns = Vec::new();
        for _ in 0..7 {
            match throttle.admit(slow, None, None, None).await {
                Admission::Defer {
                    delay,
                    turn: Some(turn),
                    reason: "endpoint_busy",
                    ..
                } => {
                    delays.push(delay.as_millis().div_ceil(100) * 100);
                    turns.push(turn);
                }
                _ => panic!("the endpoint is busy; the task gets a turn"),
            }
        }
        // Every task checks back within BUSY_RECHECK, keeping its place in the line.
        assert_eq!(delays, [1000, 2000, 3000, 4000, 5000, 5000, 5000]);
        assert_eq!(turns, [1, 2, 3, 4, 5, 6, 7]);
        // Back before its turn, a task keeps it while the endpoint is busy…
        match throttle.admit(slow, None, None, Some(7)).await {
            Admission::Defer { delay, turn, .. } => {
                assert_eq!(turn, Some(7));
                assert_eq!(delay, BUSY_RECHECK);
            }
            Admission::Go(_) => panic!("no slot is free"),
        }
        // …and takes a slot that is free anyway.
        drop(held);
        assert!(matches!(
            throttle.admit(slow, None, None, Some(5)).await,
            Admission::Go(_)
        ));
    }

    #[test]
    fn turns_ahead_come_due_at_the_pace_of_the_moment() {
        let ms = Duration::from_millis;
        let start = Instant::now();
        let mut clock = TurnClock::new(start);
        let handed: Vec<(u64, u128)> = (0..3)
            .map(|_| clock.take(ms(1000), start))
            .map(|(turn, until)| (turn, until.as_millis()))
            .collect();
        assert_eq!(handed, [(1, 1000), (2, 2000), (3, 3000)]);
        // 1.5 s later the endpoint frees slots four times as fast: turn 3, 1.5 turns
        // ahead, is 375 ms away (not 1.5 s), and turn 1 is due.
        let later = start + ms(1500);
        assert_eq!(clock.wait_for(3, ms(250), later).as_millis(), 375);
        assert_eq!(clock.wait_for(1, ms(250), later), Duration::ZERO);
        // New turns join the line after the ones handed out.
        let (turn, until) = clock.take(ms(250), later);
        assert_eq!((turn, until.as_millis()), (4, 625));
        // A turn from another process (or before a restart) far ahead is only far.
        assert!(clock.wait_for(u64::MAX, ms(250), later) > ms(1_000_000));
    }

    #[tokio::test]
    async fn turns_handed_out_while_the_process_was_busy_come_sooner_once_it_is_idle() {
        // Cap 2 for the slow endpoint, 8 while it may borrow; borrowing stops at 16.
        let throttle = Throttle::new(2, 32);
        let slow = Uuid::new_v4();
        throttle
            .limits(slow)
            .recent_ms
            .store(2000, Ordering::Relaxed);
        let go = |a: Admission| match a {
            Admission::Go(slot) => slot,
            Admission::Defer { .. } => panic!("under the cap"),
        };
        let mut busy = Vec::new();
        for _ in 0..2 {
            let fast = Uuid::new_v4();
            throttle.limits(fast).recent_ms.store(5, Ordering::Relaxed);
            for _ in 0..8 {
                busy.push(go(throttle.admit(fast, None, None, None).await));
            }
        }
        let mut held = vec![
            go(throttle.admit(slow, None, None, None).await),
            go(throttle.admit(slow, None, None, None).await),
        ];
        // Busy process: 2 slots of 2 s, a turn a second.
        let mut last = None;
        for expected in [1000, 2000, 3000, 4000] {
            match throttle.admit(slow, None, None, None).await {
                Admission::Defer {
                    delay,
                    turn: Some(turn),
                    ..
                } => {
                    assert_eq!(delay.as_millis().div_ceil(100) * 100, expected);
                    last = Some(turn);
                }
                _ => panic!("busy: the task gets a turn"),
            }
        }
        // The fast endpoints are done: the slow one borrows all 8 slots it may hold,
        // and frees one every 250 ms.
        drop(busy);
        for _ in 0..6 {
            held.push(go(throttle.admit(slow, None, None, None).await));
        }
        match throttle.admit(slow, None, None, last).await {
            Admission::Defer { delay, turn, .. } => {
                assert_eq!(turn, last, "the task keeps its place");
                assert!(
                    delay > Duration::from_millis(900) && delay <= Duration::from_millis(1000),
                    "4 turns ahead at 250 ms, not 4 s: {delay:?}"
                );
            }
            Admission::Go(_) => panic!("every slot the endpoint may hold is taken"),
        }
    }

    #[tokio::test]
    async fn a_fast_endpoint_may_hold_more_requests_than_a_slow_one() {
        let throttle = Throttle::new(2, 8);
        let (fast, slow) = (Uuid::new_v4(), Uuid::new_v4());
        throttle.limits(fast).recent_ms.store(5, Ordering::Relaxed);
        throttle
            .limits(slow)
            .recent_ms
            .store(2000, Ordering::Relaxed);
        let mut held = Vec::new();
        for _ in 0..8 {
            match throttle.admit(fast, None, None, None).await {
                Admission::Go(slot) => held.push(slot),
                Admission::Defer { .. } => panic!("a fast endpoint goes up to 8"),
            }
        }
        assert!(matches!(
            throttle.admit(fast, None, None, None).await,
            Admission::Defer { .. }
        ));
        let first = throttle.admit(slow, None, None, None).await;
        let second = throttle.admit(slow, None, None, None).await;
        assert!(matches!(first, Admission::Go(_)) && matches!(second, Admission::Go(_)));
        assert!(
            matches!(
                throttle.admit(slow, None, None, None).await,
                Admission::Defer { .. }
            ),
            "a slow endpoint holds at most 2"
        );
    }

    #[tokio::test]
    async fn a_slow_endpoint_borrows_slots_only_while_the_process_is_mostly_idle() {
        // Cap 2 for a slow endpoint, 8 for a fast one; borrowing stops at 8 of 16 taken.
        let throttle = Throttle::new(2, 16);
        let slow = Uuid::new_v4();
        throttle
            .limits(slow)
            .recent_ms
            .store(2000, Ordering::Relaxed);
        let mut held = Vec::new();
        while let Admission::Go(slot) = throttle.admit(slow, None, None, None).await {
            held.push(slot);
            assert!(held.len() <= 8, "never beyond the fast cap");
        }
        assert_eq!(
            held.len(),
            8,
            "an idle process lends a slow endpoint its slots"
        );
        held.truncate(2);
        // Another endpoint now keeps the process busy: no more borrowing.
        let fast = Uuid::new_v4();
        throttle.limits(fast).recent_ms.store(5, Ordering::Relaxed);
        for _ in 0..6 {
            match throttle.admit(fast, None, None, None).await {
                Admission::Go(slot) => held.push(slot),
                Admission::Defer { .. } => panic!("the fast endpoint is under its cap"),
            }
        }
        assert!(
            matches!(
                throttle.admit(slow, None, None, None).await,
                Admission::Defer { .. }
            ),
            "at its cap in a busy process, a slow endpoint's task is put off"
        );
    }

    #[tokio::test]
    async fn over_the_rate_a_task_reserves_a_later_slot() {
        let throttle = Throttle::new(10, 10);
        let endpoint = Uuid::new_v4();
        assert!(matches!(
            throttle.admit(endpoint, Some(6), None, None).await,
            Admission::Go(_)
        ));
        match throttle.admit(endpoint, Some(6), None, None).await {
            Admission::Defer {
                delay,
                not_before_ms,
                reason,
                ..
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
            throttle.admit(endpoint, Some(6), Some(now), None).await,
            Admission::Go(_)
        ));
    }

    #[tokio::test]
    async fn a_process_takes_its_share_of_the_rate_and_waits_while_it_does_not_know_it() {
        let senders = Senders::unknown();
        let throttle = Throttle::new(10, 10).sharing(senders.clone());
        let endpoint = Uuid::new_v4();
        match throttle.admit(endpoint, Some(60), None, None).await {
            Admission::Defer {
                delay,
                not_before_ms,
                reason,
                ..
            } => {
                assert_eq!((delay, reason), (SHARE_UNKNOWN_DELAY, "rate_limit"));
                assert_eq!(not_before_ms, None, "no slot reserved without a share");
            }
            Admission::Go(_) => panic!("not counted: its share is unknown"),
        }
        // A slot reserved earlier (by any process) is still kept.
        let now = chrono::Utc::now().timestamp_millis();
        assert!(matches!(
            throttle.admit(endpoint, Some(60), Some(now), None).await,
            Admission::Go(_)
        ));
        // Unlimited endpoints never wait for the count.
        assert!(matches!(
            throttle.admit(Uuid::new_v4(), None, None, None).await,
            Admission::Go(_)
        ));
        // Three processes: 60 a minute is one every 3 s for each.
        assert!(!throttle.has_rate_slot(endpoint, Some(60)), "share unknown");
        assert!(throttle.has_rate_slot(endpoint, None));
        senders.set_for_test(3);
        assert!(throttle.has_rate_slot(endpoint, Some(60)));
        assert!(matches!(
            throttle.admit(endpoint, Some(60), None, None).await,
            Admission::Go(_)
        ));
        assert!(
            !throttle.has_rate_slot(endpoint, Some(60)),
            "the next slot is 3 s away"
        );
        match throttle.admit(endpoint, Some(60), None, None).await {
            Admission::Defer { delay, .. } => assert!(
                delay > Duration::from_millis(2900) && delay <= Duration::from_secs(3),
                "{delay:?}"
            ),
            Admission::Go(_) => panic!("a third of 60 a minute"),
        }
    }
}
