//! The parking queue `<prefix>.invalid` from an SRE's side (`herald invalid …`,
//! `/api/v1/invalid…`): list what is parked, send it back through ingest once the
//! publisher or Herald is fixed (reingest), or drop it (purge). The admin's only: a
//! parked message has no tenant one could trust.
//!
//! Each operation walks the queue as it is when it starts, taking one message at a time
//! with `basic_get` and holding it unacknowledged. A message taken (reingested, purged)
//! is acknowledged once it is done with; every other one goes back at the end, in its
//! order, with one `nack` (requeue, multiple) — not a `reject` or a closed channel,
//! which RabbitMQ 4.3 and later count towards a quorum queue's delivery limit (see
//! `crate::dlq`). Listing therefore changes nothing in the queue but the broker's
//! delivery count of each message (`ParkedMessage::delivery_count`).
//!
//! A walk goes to the end of the queue as it was, even for a listing whose page is full:
//! a quorum queue of RabbitMQ before 4.0 puts a returned message at its back, and only
//! returning every one keeps the order. It ends when the queue has none ready or, past
//! its depth at the start, at a message parked after the walk began (by the time in its
//! UUIDv7 id); such messages are neither taken nor listed. The depth alone is no bound:
//! a quorum queue applies the returns of a walk that just ended a moment later, and may
//! not count them yet. What the process holds is bounded: a listing keeps only the page
//! it answers (a prefix of each body), a reingest one chunk of bodies ([`CHUNK`],
//! [`CHUNK_BYTES`]).
//!
//! Reingest publishes each chunk to Herald's own ingest queue with confirms and only
//! then acknowledges the parked copies: a crash in between leaves both, and ingest
//! recognises the repeat by its event id. A message still refused is parked again by
//! ingest, with a new id, behind the ones being walked, so it is not walked again.
//!
//! Reingest and purge run as jobs (`crate::service::invalid_jobs`): an [`Observer`]
//! records their progress after each chunk and may stop them.
//!
//! The walk holds what it has not yet given back until it ends: on a very large queue
//! that must end within the broker's `consumer_timeout` (30 minutes by default), or the
//! broker closes the channel and returns them itself.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions};
use lapin::{Channel, Connection};
use serde::Serialize;
use uuid::Uuid;

use super::{Caller, Page, PageRequest, ServiceError};
use crate::broker::parked::{self, ParkedMessage};
use crate::broker::{self, Outgoing, Publisher};
use crate::config::Settings;
use crate::envelope::ParkReason;
use crate::store::invalid_jobs::Selected;
use crate::topology;

/// Most messages republished per confirm round.
pub const CHUNK: usize = 500;
/// Most body bytes a reingest holds at once (a chunk ends early when it reaches them).
pub const CHUNK_BYTES: usize = 8 * 1024 * 1024;

/// Which parked messages an operation takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    All,
    Ids(HashSet<Uuid>),
    Reason(String),
}

impl Selection {
    /// Exactly one of: every message, these ids, this reason.
    pub fn new(all: bool, ids: Vec<Uuid>, reason: Option<String>) -> Result<Self, ServiceError> {
        match (all, ids.is_empty(), reason) {
            (true, true, None) => Ok(Selection::All),
            (false, false, None) => Ok(Selection::Ids(ids.into_iter().collect())),
            (false, true, Some(reason)) => {
                check_reason(&reason)?;
                Ok(Selection::Reason(reason))
            }
            _ => Err(ServiceError::invalid(
                "ids",
                "give exactly one of \"all\": true, a non-empty \"ids\" or a \"reason\"",
            )),
        }
    }

    /// The selection a job was given (`crate::store::invalid_jobs::Selected`).
    pub fn of(given: &Selected) -> Result<Self, ServiceError> {
        Self::new(given.all, given.ids.clone(), given.reason.clone())
    }

    fn takes(&self, id: Uuid, reason: Option<&str>) -> bool {
        match self {
            Selection::All => true,
            Selection::Ids(ids) => ids.contains(&id),
            Selection::Reason(wanted) => reason == Some(wanted.as_str()),
        }
    }
}

/// Every reason Herald parks for.
fn reasons() -> impl Iterator<Item = &'static str> {
    ParkReason::ALL
        .iter()
        .map(|r| r.as_str())
        .chain([parked::MALFORMED_TASK])
}

/// A reason must be one Herald parks for.
pub fn check_reason(reason: &str) -> Result<(), ServiceError> {
    if reasons().any(|r| r == reason) {
        return Ok(());
    }
    let known: Vec<&str> = reasons().collect();
    Err(ServiceError::invalid(
        "reason",
        format!("unknown reason `{reason}`; one of {}", known.join(", ")),
    ))
}

/// How far a reingest or purge is, reported after each chunk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// Messages looked at so far.
    pub seen: u32,
    /// Messages in the queue when the operation started.
    pub depth: u32,
    /// Messages reingested or purged so far.
    pub taken: u64,
    /// Selected messages a reingest left (`malformed_task`).
    pub skipped: u64,
    /// Taken so far, by reason.
    pub by_reason: BTreeMap<String, u64>,
}

/// Sees a reingest or purge after each chunk (and at its end, once the held messages
/// are back). An error stops it: the messages it holds go back to the queue, and the
/// operation returns that error.
pub trait Observer: Send {
    fn progress(
        &mut self,
        progress: Progress,
    ) -> impl Future<Output = Result<(), ServiceError>> + Send;
}

/// A closure sees the progress and never stops the walk.
impl<F: FnMut(Progress) + Send> Observer for F {
    async fn progress(&mut self, progress: Progress) -> Result<(), ServiceError> {
        self(progress);
        Ok(())
    }
}

/// What a reingest did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReingestReport {
    /// Messages sent back through ingest.
    pub reingested: u64,
    /// Selected messages left in the queue because they are no events
    /// (`malformed_task`: purge them).
    pub skipped: u64,
    /// The same, by reason.
    pub by_reason: BTreeMap<String, u64>,
    /// Requested ids with no message in the parking queue.
    pub not_found: Vec<Uuid>,
}

/// What a purge did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PurgeReport {
    /// Messages dropped.
    pub purged: u64,
    /// The same, by reason.
    pub by_reason: BTreeMap<String, u64>,
    /// Requested ids with no message in the parking queue.
    pub not_found: Vec<Uuid>,
}

/// Lists parked messages in queue order, optionally of one reason; the queue is left
/// as it was. The cursor is a position in the queue.
pub async fn list(
    settings: &Settings,
    caller: &Caller,
    reason: Option<String>,
    page: PageRequest,
) -> Result<Page<ParkedMessage>, ServiceError> {
    caller.require_admin()?;
    if let Some(reason) = &reason {
        check_reason(reason)?;
    }
    let start = page.after::<u64>()?.map_or(0, |last| last + 1);
    let wanted = page.fetch() as usize;
    let mut walk = Walk::open(settings).await?;
    let mut rows = Vec::new();
    let listed = async {
        let mut position = 0u64;
        // To the end of the walk even once the page is full: a quorum queue of RabbitMQ
        // before 4.0 puts a returned message at its back, so only returning all of them
        // keeps the order.
        while let Some(message) = walk.next().await? {
            if position >= start && rows.len() < wanted {
                let shown = ParkedMessage::read(&message.properties, &message.data, position);
                if reason.is_none() || shown.reason == reason {
                    rows.push(shown);
                }
            }
            position += 1;
        }
        Ok::<_, ServiceError>(())
    }
    .await;
    walk.finish(listed.is_ok()).await?;
    listed?;
    Ok(Page::of(rows, &page, |m| m.position))
}

/// A reingest may start: the admin asks, and not for what cannot go through ingest.
pub fn check_reingest(caller: &Caller, selection: &Selection) -> Result<(), ServiceError> {
    caller.require_admin()?;
    if *selection == Selection::Reason(parked::MALFORMED_TASK.into()) {
        return Err(ServiceError::invalid(
            "reason",
            "a malformed delivery task is no event and cannot go through ingest; purge it",
        ));
    }
    Ok(())
}

/// A purge may start: the admin asks, and confirmed it (`--yes`, `"confirm": true`).
pub fn check_purge(caller: &Caller, confirmed: bool) -> Result<(), ServiceError> {
    caller.require_admin()?;
    if !confirmed {
        return Err(ServiceError::invalid(
            "confirm",
            "purging drops messages for good: confirm it (`--yes`, \"confirm\": true)",
        ));
    }
    Ok(())
}

/// Sends the selected messages back through ingest, each with its original body and
/// properties (without the parking headers), confirmed before its parked copy goes.
pub async fn reingest(
    settings: &Settings,
    caller: &Caller,
    selection: Selection,
    observer: &mut impl Observer,
) -> Result<ReingestReport, ServiceError> {
    check_reingest(caller, &selection)?;
    let mut walk = Walk::open(settings).await?;
    let ingest_queue = crate::delivery::topology(settings).ingest_queue();
    let mut tally = Tally::default();
    let done = async {
        let mut chunk: Vec<(Delivery, Option<String>)> = Vec::new();
        let mut bytes = 0;
        loop {
            let next = walk.next().await?;
            let end = next.is_none();
            if let Some(message) = next {
                match tally.select(&selection, &message) {
                    Some(Some(reason)) if reason == parked::MALFORMED_TASK => tally.skipped += 1,
                    Some(reason) => {
                        bytes += message.data.len();
                        chunk.push((message, reason));
                    }
                    None => {}
                }
            }
            if !chunk.is_empty() && (end || chunk.len() >= CHUNK || bytes >= CHUNK_BYTES) {
                let properties: Vec<_> = chunk
                    .iter()
                    .map(|(m, _)| parked::reingest_properties(&m.properties))
                    .collect();
                walk.publisher
                    .publish_all(
                        chunk
                            .iter()
                            .zip(properties)
                            .map(|((m, _), properties)| Outgoing {
                                exchange: "",
                                routing_key: &ingest_queue,
                                body: &m.data,
                                properties,
                            })
                            .collect(),
                    )
                    .await
                    .map_err(|e| ServiceError::Unavailable(format!("broker: {e}")))?;
                for (message, reason) in chunk.drain(..) {
                    walk.ack(message.delivery_tag).await?;
                    tally.count(reason);
                }
                bytes = 0;
                observer.progress(walk.progress(&tally)).await?;
            } else if walk.seen % CHUNK as u32 == 0 && !end {
                observer.progress(walk.progress(&tally)).await?;
            }
            if end {
                return Ok::<_, ServiceError>(());
            }
        }
    }
    .await;
    let last = walk.progress(&tally);
    walk.finish(done.is_ok()).await?;
    done?;
    observer.progress(last).await?;
    tracing::info!(reingested = tally.taken, "parked messages reingested");
    let skipped = tally.skipped;
    let (reingested, by_reason, not_found) = tally.report(&selection);
    Ok(ReingestReport {
        reingested,
        skipped,
        by_reason,
        not_found,
    })
}

/// Drops the selected messages; `confirmed` must be `true` (the CLI's `--yes`).
pub async fn purge(
    settings: &Settings,
    caller: &Caller,
    selection: Selection,
    confirmed: bool,
    observer: &mut impl Observer,
) -> Result<PurgeReport, ServiceError> {
    check_purge(caller, confirmed)?;
    let mut walk = Walk::open(settings).await?;
    let mut tally = Tally::default();
    let done = async {
        while let Some(message) = walk.next().await? {
            if let Some(reason) = tally.select(&selection, &message) {
                walk.ack(message.delivery_tag).await?;
                tally.count(reason);
            }
            if walk.seen % CHUNK as u32 == 0 {
                observer.progress(walk.progress(&tally)).await?;
            }
        }
        Ok::<_, ServiceError>(())
    }
    .await;
    let last = walk.progress(&tally);
    walk.finish(done.is_ok()).await?;
    done?;
    observer.progress(last).await?;
    tracing::info!(purged = tally.taken, "parked messages purged");
    let (purged, by_reason, not_found) = tally.report(&selection);
    Ok(PurgeReport {
        purged,
        by_reason,
        not_found,
    })
}

/// What an operation took so far.
#[derive(Default)]
struct Tally {
    taken: u64,
    skipped: u64,
    by_reason: BTreeMap<String, u64>,
    found: HashSet<Uuid>,
}

impl Tally {
    /// The message's reason (itself maybe unknown) when `selection` takes it.
    fn select(&mut self, selection: &Selection, message: &Delivery) -> Option<Option<String>> {
        let (id, _) = parked::parked_id(&message.properties, &message.data);
        let headers = message.properties.headers().clone().unwrap_or_default();
        let reason = parked::reason(&headers);
        if !selection.takes(id, reason.as_deref()) {
            return None;
        }
        self.found.insert(id);
        Some(reason)
    }

    fn count(&mut self, reason: Option<String>) {
        self.taken += 1;
        *self
            .by_reason
            .entry(reason.unwrap_or_else(|| "unknown".into()))
            .or_default() += 1;
    }

    fn report(self, selection: &Selection) -> (u64, BTreeMap<String, u64>, Vec<Uuid>) {
        let mut not_found: Vec<Uuid> = match selection {
            Selection::Ids(ids) => ids.difference(&self.found).copied().collect(),
            _ => Vec::new(),
        };
        not_found.sort();
        (self.taken, self.by_reason, not_found)
    }
}

/// One walk through the parking queue as it was when the walk began.
struct Walk {
    connection: Connection,
    channel: Channel,
    publisher: Publisher,
    queue: String,
    depth: u32,
    seen: u32,
    /// When the walk began, Unix milliseconds.
    started_ms: u64,
    /// Some message is held, to be returned.
    held: bool,
}

impl Walk {
    async fn open(settings: &Settings) -> Result<Self, ServiceError> {
        let topology = crate::delivery::topology(settings);
        let connection = broker::connect(settings.amqp.url.expose(), "herald-invalid").await?;
        let opened = async {
            let channel = connection.create_channel().await?;
            topology.declare(&channel).await?;
            let publisher = Publisher::open(&connection).await?;
            let queue = topology.invalid_queue();
            let depth = topology::queue_depth(&channel, &queue).await?;
            Ok::<_, lapin::Error>((channel, publisher, queue, depth))
        }
        .await;
        match opened {
            Ok((channel, publisher, queue, depth)) => Ok(Self {
                connection,
                channel,
                publisher,
                queue,
                depth,
                seen: 0,
                started_ms: chrono::Utc::now().timestamp_millis() as u64,
                held: false,
            }),
            Err(error) => {
                broker::close_connection(&connection).await;
                Err(error.into())
            }
        }
    }

    /// The next message parked before the walk began, held unacknowledged; `None` at
    /// the end of the walk (see the module's comment).
    async fn next(&mut self) -> Result<Option<Delivery>, ServiceError> {
        loop {
            let got = self
                .channel
                .basic_get(&self.queue, BasicGetOptions { no_ack: false })
                .await?;
            let Some(got) = got else {
                return Ok(None);
            };
            self.held = true;
            let message = got.delivery;
            if !parked::parked_since(&message.properties, self.started_ms) {
                self.seen += 1;
                return Ok(Some(message));
            }
            if self.seen >= self.depth {
                return Ok(None);
            }
            // Parked meanwhile, ahead of a return still to be applied: held, skipped.
        }
    }

    async fn ack(&self, tag: u64) -> Result<(), ServiceError> {
        self.channel
            .basic_ack(tag, BasicAckOptions::default())
            .await?;
        Ok(())
    }

    fn progress(&self, tally: &Tally) -> Progress {
        Progress {
            seen: self.seen,
            depth: self.depth,
            taken: tally.taken,
            skipped: tally.skipped,
            by_reason: tally.by_reason.clone(),
        }
    }

    /// Returns every message still held to the queue, in its order, and closes. After
    /// a failure (`ok` false) the broker returns them when the connection closes.
    async fn finish(self, ok: bool) -> Result<(), ServiceError> {
        let returned = if ok && self.held {
            self.channel
                .basic_nack(
                    0,
                    BasicNackOptions {
                        multiple: true,
                        requeue: true,
                    },
                )
                .await
        } else {
            Ok(())
        };
        broker::close_channel(&self.channel).await;
        broker::close_connection(&self.connection).await;
        returned.map_err(ServiceError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_selection_is_exactly_one_of_all_ids_or_a_reason() {
        let id = Uuid::now_v7();
        assert_eq!(Selection::new(true, vec![], None).unwrap(), Selection::All);
        assert_eq!(
            Selection::new(false, vec![id], None).unwrap(),
            Selection::Ids(HashSet::from([id]))
        );
        assert_eq!(
            Selection::new(false, vec![], Some("too_large".into())).unwrap(),
            Selection::Reason("too_large".into())
        );
        for (all, ids, reason) in [
            (false, vec![], None),
            (true, vec![id], None),
            (true, vec![], Some("not_json".to_string())),
            (false, vec![id], Some("not_json".to_string())),
        ] {
            assert!(
                matches!(
                    Selection::new(all, ids, reason),
                    Err(ServiceError::Invalid(_))
                ),
                "{all}"
            );
        }
        let Err(ServiceError::Invalid(fields)) = Selection::new(false, vec![], Some("nope".into()))
        else {
            panic!("an unknown reason is refused")
        };
        assert_eq!(fields[0].field, "reason");
        assert!(
            fields[0].message.contains("too_large"),
            "{}",
            fields[0].message
        );
    }

    #[test]
    fn a_selection_takes_what_it_names() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let ids = Selection::Ids(HashSet::from([a]));
        let reason = Selection::Reason("not_json".into());
        let cases = [
            (&Selection::All, b, None, true),
            (&ids, a, Some("x"), true),
            (&ids, b, Some("x"), false),
            (&reason, b, Some("not_json"), true),
            (&reason, a, Some("too_large"), false),
            (&reason, a, None, false),
        ];
        for (selection, id, why, takes) in cases {
            assert_eq!(
                selection.takes(id, why),
                takes,
                "{selection:?} {id} {why:?}"
            );
        }
    }

    #[tokio::test]
    async fn malformed_tasks_are_never_reingested_by_reason() {
        let selection = Selection::new(false, vec![], Some("malformed_task".into())).unwrap();
        let Err(ServiceError::Invalid(fields)) = reingest(
            &Settings::default(),
            &Caller::Admin,
            selection,
            &mut |_: Progress| {},
        )
        .await
        else {
            panic!("refused before the broker is asked")
        };
        assert_eq!(fields[0].field, "reason");
    }

    #[tokio::test]
    async fn only_the_admin_reaches_the_parking_queue() {
        let settings = Settings::default();
        let tenant = Caller::Tenant("acme".into());
        let page = PageRequest::new(None, None).unwrap();
        assert!(matches!(
            list(&settings, &tenant, None, page).await,
            Err(ServiceError::Forbidden)
        ));
        assert!(matches!(
            reingest(&settings, &tenant, Selection::All, &mut |_: Progress| {}).await,
            Err(ServiceError::Forbidden)
        ));
        assert!(matches!(
            purge(
                &settings,
                &tenant,
                Selection::All,
                true,
                &mut |_: Progress| {}
            )
            .await,
            Err(ServiceError::Forbidden)
        ));
    }
}
