//! The `<prefix>.dlq` queue kept in step with the records. The records are the
//! dead-letter queue's truth (`crate::store::dlq`): lists, redrives and purges work on
//! them, so choosing a few deliveries out of a million is an index lookup, not a scan
//! of the queue. Each dead delivery also has a copy in the queue, for operators who
//! look at RabbitMQ and for the queue-depth alert; a redrive or a purge leaves those
//! copies stale, and a sweep takes them out.
//!
//! A sweep consumes the queue once round: every message that was in it when the sweep
//! began is looked up in the records (a chunk at a time); a stale copy is acknowledged
//! (gone), a current one is published again to the tail of the queue, confirmed, then
//! acknowledged — so the queue keeps its order, nothing is returned to it (RabbitMQ 4
//! counts returns against a quorum queue's delivery limit) and nothing current is
//! lost. One sweep runs at a time across a deployment (a PostgreSQL advisory lock).

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::broker::headers::{header_int, header_text};
use crate::broker::{self, Outgoing, Publisher};
use crate::config::Settings;
use crate::delivery::task::DEAD_AT_MS;
use crate::store::dlq::{self as records, RecordOfCopy};
use crate::topology;

/// Messages looked up and settled per round.
const CHUNK: u16 = 500;
/// The advisory lock that makes sweeps take turns.
const SWEEP_LOCK: i64 = 0x4845_5241_4c44_0d1e;
/// Below this depth a sweep is always cheap enough.
const ALWAYS_SWEEP_BELOW: i64 = 100_000;

/// What a sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Swept {
    pub looked_at: u64,
    /// Stale copies taken out.
    pub dropped: u64,
    pub kept: u64,
}

/// Whether a sweep pays: the queue holds `depth` messages and the records `dead`
/// deliveries, so about `depth - dead` copies are stale. A long queue is swept once a
/// tenth of it is stale (a redrive of three out of a million waits for more).
pub fn worth_sweeping(depth: i64, dead: i64) -> bool {
    let stale = depth - dead;
    stale > 0 && (depth < ALWAYS_SWEEP_BELOW || stale * 10 >= depth)
}

/// What a copy in the queue says of itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Copy {
    pub delivery_id: Uuid,
    pub attempt: i64,
    pub dead_at_ms: Option<i64>,
}

impl Copy {
    fn read(headers: Option<&FieldTable>) -> Option<Copy> {
        let headers = headers?;
        Some(Copy {
            delivery_id: header_text(headers, "x-herald-delivery-id")?.parse().ok()?,
            attempt: header_int(headers, "x-herald-attempt")?,
            dead_at_ms: header_int(headers, DEAD_AT_MS),
        })
    }
}

/// Whether a copy still stands for its delivery's record: the delivery is dead (not
/// redriven, retried or purged since) and died when the copy says — or, for copies of
/// earlier versions without a time, has made no attempt after the copy's. A copy with
/// no record is kept: nothing says it is stale.
pub fn is_current(copy: &Copy, record: Option<&RecordOfCopy>) -> bool {
    match record {
        None => true,
        Some(record) if !record.dead => false,
        Some(record) => match (copy.dead_at_ms, record.dead_at_ms) {
            (Some(copy_at), Some(record_at)) => copy_at == record_at,
            _ => i64::from(record.attempts) <= copy.attempt,
        },
    }
}

/// Sweeps when [`worth_sweeping`]; `None` when it did not (or another sweep runs).
pub async fn sweep_if_worth_it(
    settings: &Settings,
    pool: &PgPool,
) -> anyhow::Result<Option<Swept>> {
    let topology = crate::delivery::topology(settings);
    let connection = broker::connect(settings.amqp.url.expose(), "herald-dlq-sweep").await?;
    let result = async {
        let channel = connection.create_channel().await?;
        topology.declare(&channel).await?;
        let depth = i64::from(topology::queue_depth(&channel, &topology.dlq()).await?);
        let dead = records::total(pool).await?;
        if !worth_sweeping(depth, dead) {
            return Ok(None);
        }
        let mut lock = pool.acquire().await?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(SWEEP_LOCK)
            .fetch_one(&mut *lock)
            .await?;
        if !locked {
            return Ok(None);
        }
        let swept = sweep(&connection, &channel, &topology.dlq(), pool).await;
        let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(SWEEP_LOCK)
            .execute(&mut *lock)
            .await;
        swept.map(Some)
    }
    .await;
    broker::close_connection(&connection).await;
    result
}

async fn sweep(
    connection: &lapin::Connection,
    channel: &lapin::Channel,
    dlq: &str,
    pool: &PgPool,
) -> anyhow::Result<Swept> {
    let publisher = Publisher::open(connection).await?;
    let depth = u64::from(topology::queue_depth(channel, dlq).await?);
    let mut swept = Swept::default();
    if depth == 0 {
        return Ok(swept);
    }
    let first = depth.min(u64::from(CHUNK)) as u16;
    channel.basic_qos(first, BasicQosOptions::default()).await?;
    let mut consumer = channel
        .basic_consume(
            dlq,
            "herald-dlq-sweep",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    while swept.looked_at < depth {
        let want = (depth - swept.looked_at).min(u64::from(CHUNK)) as usize;
        let mut chunk = Vec::with_capacity(want);
        while chunk.len() < want {
            match consumer.next().await {
                Some(delivery) => chunk.push(delivery?),
                None => anyhow::bail!("the broker ended the sweep's consumer"),
            }
        }
        swept.looked_at += chunk.len() as u64;
        let left = depth - swept.looked_at;
        if left == 0 {
            // Nothing past the messages of this round may come in.
            channel
                .basic_cancel("herald-dlq-sweep", BasicCancelOptions::default())
                .await?;
        } else {
            let next = left.min(u64::from(CHUNK)) as u16;
            channel.basic_qos(next, BasicQosOptions::default()).await?;
        }
        let copies: Vec<Option<Copy>> = chunk
            .iter()
            .map(|d| Copy::read(d.properties.headers().as_ref()))
            .collect();
        let ids: Vec<Uuid> = copies.iter().flatten().map(|c| c.delivery_id).collect();
        let records = records::records_of_copies(pool, &ids).await?;
        let kept: Vec<Outgoing<'_>> = chunk
            .iter()
            .zip(&copies)
            .filter(|(_, copy)| match copy {
                Some(copy) => is_current(copy, records.get(&copy.delivery_id)),
                None => true,
            })
            .map(|(delivery, _)| Outgoing {
                exchange: "",
                routing_key: dlq,
                body: &delivery.data,
                properties: delivery.properties.clone(),
            })
            .collect();
        let kept_count = kept.len() as u64;
        publisher.publish_all(kept).await?;
        let last = chunk.last().expect("a chunk is never empty").delivery_tag;
        channel
            .basic_ack(last, BasicAckOptions { multiple: true })
            .await?;
        swept.kept += kept_count;
        swept.dropped += chunk.len() as u64 - kept_count;
    }
    tracing::info!(
        looked_at = swept.looked_at,
        dropped = swept.dropped,
        "dead-letter queue swept of stale copies"
    );
    Ok(swept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sweep_pays_when_the_queue_is_short_or_a_tenth_of_it_is_stale() {
        for (depth, dead, worth) in [
            (0, 0, false),
            (10, 10, false),
            (10, 12, false),
            (10, 9, true),
            (99_999, 99_998, true),
            (1_000_000, 999_997, false),
            (1_000_000, 900_000, true),
            (1_000_000, 0, true),
        ] {
            assert_eq!(worth_sweeping(depth, dead), worth, "{depth} {dead}");
        }
    }

    #[test]
    fn a_copy_is_current_while_its_record_died_when_it_says() {
        let id = Uuid::now_v7();
        let copy = |attempt, dead_at_ms| Copy {
            delivery_id: id,
            attempt,
            dead_at_ms,
        };
        let record = |dead, attempts, dead_at_ms| RecordOfCopy {
            dead,
            attempts,
            dead_at_ms,
        };
        let cases = [
            (
                copy(6, Some(1_000)),
                Some(record(true, 6, Some(1_000))),
                true,
            ),
            // Redriven and dead again since: the record died later.
            (
                copy(6, Some(1_000)),
                Some(record(true, 6, Some(2_000))),
                false,
            ),
            // Redriven (pending, success) or purged.
            (copy(6, Some(1_000)), Some(record(false, 7, None)), false),
            // Dead without an attempt (disabled endpoint): attempts = copy's - 1.
            (copy(3, None), Some(record(true, 2, Some(5))), true),
            // An earlier version's copy: later attempts make it stale.
            (copy(3, None), Some(record(true, 9, Some(5))), false),
            (copy(3, Some(1)), None, true),
        ];
        for (copy, record, current) in cases {
            assert_eq!(
                is_current(&copy, record.as_ref()),
                current,
                "{copy:?} {record:?}"
            );
        }
    }
}
