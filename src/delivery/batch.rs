//! Gathering a batching endpoint's tasks into batches, and the body a batch is sent
//! as (docs/receivers.md, Batches).
//!
//! A task for an endpoint with a `batch` option joins the endpoint's open batch in this
//! process, or opens one and leads it: the leader waits for the window to pass or the
//! batch to fill, seals it, makes the one request and hands every member its own
//! result. Each member's caller then acknowledges its own message exactly as for a
//! task sent alone: nothing is acknowledged before its outcome is recorded. Nothing is
//! read from the database to form a batch.
//!
//! The body is `{"type":"herald.batch","data":[<webhook body>,…]}`, each webhook body
//! byte for byte what the event alone would have been sent as.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{oneshot, Notify};
use uuid::Uuid;

use super::settle::{Origin, Unsettled};
use super::task::DeliveryTask;
use crate::domain::Batching;

/// The event type of a batch's body (`type`), and what legacy signatures send as
/// `X-Event`.
pub const BATCH_TYPE: &str = "herald.batch";

/// Most bytes of webhook bodies in one batch: a batch that would grow past it is sent
/// as it is and the task opens the next one. (An event alone may be larger; it then
/// travels in a batch of its own.)
pub const MAX_BATCH_BYTES: usize = 1 << 20;

const PREFIX: &[u8] = br#"{"type":"herald.batch","data":["#;
const SUFFIX: &[u8] = b"]}";

/// The body of a batch: its members' webhook bodies in a JSON array under `data`.
pub fn batch_body<'a>(bodies: impl IntoIterator<Item = &'a Bytes>) -> Bytes {
    let bodies: Vec<&Bytes> = bodies.into_iter().collect();
    let size = PREFIX.len() + SUFFIX.len() + bodies.iter().map(|b| b.len() + 1).sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(PREFIX);
    for (n, body) in bodies.into_iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        out.extend_from_slice(body);
    }
    out.extend_from_slice(SUFFIX);
    Bytes::from(out)
}

/// Can this body go into a batch's array as it is? Herald's own bodies always can;
/// anything else is sent alone rather than break the batch's JSON.
pub fn fits_in_batch(body: &[u8]) -> bool {
    serde_json::from_slice::<&serde_json::value::RawValue>(body).is_ok()
}

/// What a task joining an endpoint's open batch does to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Join {
    /// It joins; the batch stays open.
    Add,
    /// It joins and fills the batch: seal it now.
    AddAndSeal,
    /// It would take the batch past [`MAX_BATCH_BYTES`]: seal the batch without it; the
    /// task opens the next one.
    SealAndOpen,
}

/// Decides [`Join`] for a batch of `members` tasks holding `bytes` of bodies.
pub fn join(members: usize, bytes: usize, body: usize, batching: Batching) -> Join {
    if members > 0 && bytes + body > MAX_BATCH_BYTES {
        Join::SealAndOpen
    } else if members + 1 >= usize::from(batching.max_events) || bytes + body >= MAX_BATCH_BYTES {
        Join::AddAndSeal
    } else {
        Join::Add
    }
}

/// One task of a batch, with where to send its result.
pub struct Member {
    pub task: DeliveryTask,
    pub origin: Origin,
    pub done: oneshot::Sender<Result<(), Unsettled>>,
}

/// A batch still taking tasks.
#[derive(Default)]
pub struct Open {
    members: Mutex<Gathered>,
    /// Told when the batch is full (it is then out of the endpoint's place already).
    full: Notify,
}

#[derive(Default)]
struct Gathered {
    members: Vec<Member>,
    bytes: usize,
}

impl Open {
    /// Waits for the batch to fill, or `window` to pass.
    pub async fn gathered(&self, batching: Batching) {
        tokio::select! {
            _ = tokio::time::sleep(batching.window) => {}
            _ = self.full.notified() => {}
        }
    }
}

/// What joining made of a task: it leads a new batch, or waits for its leader.
pub enum Joined {
    Leader(Arc<Open>),
    Member,
}

/// Every endpoint's open batch in this process.
#[derive(Default)]
pub struct Batches {
    open: Mutex<HashMap<Uuid, Arc<Open>>>,
}

impl Batches {
    /// Puts `member` into its endpoint's open batch, or opens one it leads.
    pub fn join(&self, endpoint: Uuid, batching: Batching, member: Member) -> Joined {
        let body = member.task.body.len();
        let mut open = self.open.lock().expect("lock not poisoned");
        if let Some(batch) = open.get(&endpoint).cloned() {
            let mut gathered = batch.members.lock().expect("lock not poisoned");
            match join(gathered.members.len(), gathered.bytes, body, batching) {
                Join::Add => {
                    gathered.bytes += body;
                    gathered.members.push(member);
                    return Joined::Member;
                }
                Join::AddAndSeal => {
                    gathered.bytes += body;
                    gathered.members.push(member);
                    open.remove(&endpoint);
                    batch.full.notify_one();
                    return Joined::Member;
                }
                Join::SealAndOpen => {
                    open.remove(&endpoint);
                    batch.full.notify_one();
                }
            }
        }
        let batch = Arc::new(Open::default());
        {
            let mut gathered = batch.members.lock().expect("lock not poisoned");
            gathered.bytes = body;
            gathered.members.push(member);
        }
        if usize::from(batching.max_events) > 1 && body < MAX_BATCH_BYTES {
            open.insert(endpoint, batch.clone());
        }
        Joined::Leader(batch)
    }

    /// Closes `batch` to new members and hands over the ones it has. Called by its
    /// leader once gathered, or when the leader is dropped (its members then hear
    /// that their batch was abandoned, and their messages come back).
    pub fn seal(&self, endpoint: Uuid, batch: &Arc<Open>) -> Vec<Member> {
        let mut open = self.open.lock().expect("lock not poisoned");
        if open.get(&endpoint).is_some_and(|b| Arc::ptr_eq(b, batch)) {
            open.remove(&endpoint);
        }
        let mut gathered = batch.members.lock().expect("lock not poisoned");
        gathered.bytes = 0;
        std::mem::take(&mut gathered.members)
    }
}

/// Seals a leader's batch if the leader goes away before it does.
pub struct Leading<'a> {
    pub batches: &'a Batches,
    pub endpoint: Uuid,
    pub batch: Arc<Open>,
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        // Normally empty by now; otherwise the members' senders drop with them.
        drop(self.batches.seal(self.endpoint, &self.batch));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn batching(max_events: u16) -> Batching {
        Batching {
            max_events,
            window: Duration::from_millis(200),
        }
    }

    #[test]
    fn a_task_joins_seals_or_opens_the_next_batch() {
        const MB: usize = MAX_BATCH_BYTES;
        type Case = (usize, usize, usize, u16, Join);
        let cases: &[Case] = &[
            (0, 0, 100, 10, Join::Add),
            (8, 800, 100, 10, Join::Add),
            (9, 900, 100, 10, Join::AddAndSeal),
            (1, 100, 100, 2, Join::AddAndSeal),
            (3, MB - 100, 100, 10, Join::AddAndSeal),
            (3, MB - 100, 101, 10, Join::SealAndOpen),
            (0, 0, MB + 1, 10, Join::AddAndSeal),
            (1, 10, MB, 10, Join::SealAndOpen),
        ];
        for (members, bytes, body, max, expected) in cases {
            assert_eq!(
                join(*members, *bytes, *body, batching(*max)),
                *expected,
                "{members} members, {bytes} bytes, +{body}, max {max}"
            );
        }
    }

    #[test]
    fn a_batch_body_is_json_holding_each_webhook_body_unchanged() {
        let bodies = [
            Bytes::from_static(br#"{"id":"e1","type":"a.b","data":{"n":1}}"#),
            Bytes::from_static(br#"{"id":"e2","type":"a.c","data":{"q":"\"x\" \u00fc"}}"#),
        ];
        let body = batch_body(&bodies);
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed["type"], BATCH_TYPE);
        let data = parsed["data"].as_array().unwrap();
        assert_eq!(data.len(), 2);
        for (got, sent) in data.iter().zip(&bodies) {
            assert_eq!(
                got,
                &serde_json::from_slice::<serde_json::Value>(sent).unwrap()
            );
        }
        let one = batch_body(&bodies[..1]);
        assert_eq!(
            &one[..],
            &br#"{"type":"herald.batch","data":[{"id":"e1","type":"a.b","data":{"n":1}}]}"#[..]
        );
        assert!(fits_in_batch(&bodies[1]));
        assert!(!fits_in_batch(b"not json"));
        assert!(!fits_in_batch(b"{} {}"));
    }

    fn member(n: usize) -> (Member, oneshot::Receiver<Result<(), Unsettled>>) {
        let (done, wait) = oneshot::channel();
        let task = DeliveryTask::resend(
            Uuid::now_v7(),
            format!("e{n}"),
            Uuid::nil(),
            0,
            Bytes::from_static(b"{}"),
        );
        (
            Member {
                task,
                origin: Origin::WorkQueue,
                done,
            },
            wait,
        )
    }

    #[test]
    fn tasks_of_one_endpoint_gather_until_the_batch_is_full() {
        let batches = Batches::default();
        let endpoint = Uuid::now_v7();
        let (first, _) = member(0);
        let Joined::Leader(lead) = batches.join(endpoint, batching(3), first) else {
            panic!("the first task leads")
        };
        assert!(matches!(
            batches.join(endpoint, batching(3), member(1).0),
            Joined::Member
        ));
        assert!(matches!(
            batches.join(endpoint, batching(3), member(2).0),
            Joined::Member
        ));
        // Full: the next task leads a new batch.
        let Joined::Leader(next) = batches.join(endpoint, batching(3), member(3).0) else {
            panic!("a full batch takes no more")
        };
        let sealed = batches.seal(endpoint, &lead);
        let ids: Vec<_> = sealed.iter().map(|m| m.task.event_id.as_str()).collect();
        assert_eq!(ids, ["e0", "e1", "e2"]);
        assert_eq!(batches.seal(endpoint, &next).len(), 1);
        // Another endpoint has batches of its own.
        assert!(matches!(
            batches.join(Uuid::now_v7(), batching(3), member(4).0),
            Joined::Leader(_)
        ));
    }

    #[tokio::test]
    async fn members_of_a_batch_dropped_by_its_leader_hear_it_was_abandoned() {
        let batches = Batches::default();
        let endpoint = Uuid::now_v7();
        let Joined::Leader(batch) = batches.join(endpoint, batching(5), member(0).0) else {
            panic!()
        };
        let (second, wait) = member(1);
        assert!(matches!(
            batches.join(endpoint, batching(5), second),
            Joined::Member
        ));
        drop(Leading {
            batches: &batches,
            endpoint,
            batch,
        });
        assert!(wait.await.is_err(), "the member's sender is gone");
        // The endpoint's place is free: the next task leads.
        assert!(matches!(
            batches.join(endpoint, batching(5), member(2).0),
            Joined::Leader(_)
        ));
    }
}
