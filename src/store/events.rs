//! `herald.events` and the creation of deliveries: one transaction per ingest batch.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::envelope::Event;

/// One event of a batch and the endpoints it matched.
pub struct FanOut<'a> {
    pub event: &'a Event,
    pub endpoints: Vec<Uuid>,
    /// The broker flagged the message as redelivered: a previous consumer may have
    /// committed the event and died before its tasks were confirmed.
    pub redelivered: bool,
}

/// A delivery that needs a task on the work queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery {
    pub delivery_id: Uuid,
    pub endpoint_id: Uuid,
}

/// What the database made of one event of the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// First time seen: these deliveries were created.
    New(Vec<NewDelivery>),
    /// Already recorded. For a redelivered message whose event was never marked
    /// dispatched, the deliveries still pending with no attempt: their tasks may never
    /// have reached the broker. Empty otherwise.
    Duplicate(Vec<NewDelivery>),
}

/// Records a batch of events and their deliveries in one transaction, idempotent on
/// the event id. Returns one `Recorded` per input, in order.
pub async fn record_fan_out(
    pool: &PgPool,
    batch: &[FanOut<'_>],
    received_at: DateTime<Utc>,
) -> Result<Vec<Recorded>, sqlx::Error> {
    let mut tx = pool.begin().await?;

    let inserted: HashSet<String> = sqlx::query_scalar(
        "INSERT INTO herald.events (id, type, tenant_id, source, occurred_at, payload, received_at)
         SELECT id, type, tenant_id, source, occurred_at, payload::json, $7
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[])
              AS t(id, type, tenant_id, source, occurred_at, payload)
         ON CONFLICT (id) DO NOTHING
         RETURNING id",
    )
    .bind(
        batch
            .iter()
            .map(|f| f.event.id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        batch
            .iter()
            .map(|f| f.event.event_type.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        batch
            .iter()
            .map(|f| f.event.tenant_id.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(
        batch
            .iter()
            .map(|f| f.event.source.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(
        batch
            .iter()
            .map(|f| f.event.occurred_at)
            .collect::<Vec<_>>(),
    )
    .bind(batch.iter().map(|f| f.event.data.get()).collect::<Vec<_>>())
    .bind(received_at)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();

    let mut results = Vec::with_capacity(batch.len());
    let (mut ids, mut event_ids, mut endpoint_ids) = (Vec::new(), Vec::new(), Vec::new());
    let mut recheck = Vec::new();
    for f in batch {
        if inserted.contains(&f.event.id) {
            let deliveries: Vec<NewDelivery> = f
                .endpoints
                .iter()
                .map(|endpoint_id| NewDelivery {
                    delivery_id: Uuid::now_v7(),
                    endpoint_id: *endpoint_id,
                })
                .collect();
            for d in &deliveries {
                ids.push(d.delivery_id);
                event_ids.push(f.event.id.as_str());
                endpoint_ids.push(d.endpoint_id);
            }
            results.push(Recorded::New(deliveries));
        } else {
            if f.redelivered {
                recheck.push(f.event.id.as_str());
            }
            results.push(Recorded::Duplicate(Vec::new()));
        }
    }

    if !ids.is_empty() {
        sqlx::query(
            "INSERT INTO herald.deliveries (id, event_id, endpoint_id, created_at, updated_at)
             SELECT id, event_id, endpoint_id, $4, $4
             FROM UNNEST($1::uuid[], $2::text[], $3::uuid[]) AS t(id, event_id, endpoint_id)",
        )
        .bind(&ids)
        .bind(&event_ids)
        .bind(&endpoint_ids)
        .bind(received_at)
        .execute(&mut *tx)
        .await?;
    }

    if !recheck.is_empty() {
        let pending: Vec<(Uuid, String, Uuid)> = sqlx::query_as(
            "SELECT d.id, d.event_id, d.endpoint_id
             FROM herald.deliveries d JOIN herald.events e ON e.id = d.event_id
             WHERE d.event_id = ANY($1) AND e.dispatched_at IS NULL
               AND d.status = 'pending' AND d.attempts = 0",
        )
        .bind(&recheck)
        .fetch_all(&mut *tx)
        .await?;
        for (f, result) in batch.iter().zip(results.iter_mut()) {
            if let Recorded::Duplicate(list) = result {
                list.extend(
                    pending
                        .iter()
                        .filter(|(_, event_id, _)| *event_id == f.event.id)
                        .map(|(delivery_id, _, endpoint_id)| NewDelivery {
                            delivery_id: *delivery_id,
                            endpoint_id: *endpoint_id,
                        }),
                );
            }
        }
    }

    tx.commit().await?;
    Ok(results)
}

/// Marks events whose delivery tasks are all confirmed by the broker.
pub async fn mark_dispatched(pool: &PgPool, ids: &[&str]) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE herald.events SET dispatched_at = now() WHERE id = ANY($1) AND dispatched_at IS NULL")
        .bind(ids)
        .execute(pool)
        .await?;
    Ok(())
}

/// A stored event, for redrive and replay.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredEvent {
    pub id: String,
    #[sqlx(rename = "type")]
    pub event_type: String,
    pub tenant_id: Option<String>,
    pub occurred_at: DateTime<Utc>,
    pub payload: String,
    pub received_at: DateTime<Utc>,
}

pub async fn get(pool: &PgPool, id: &str) -> Result<Option<StoredEvent>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, type, tenant_id, occurred_at, payload::text AS payload, received_at
         FROM herald.events WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
}
