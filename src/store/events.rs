//! `herald.events` and the creation of deliveries: one transaction per ingest batch.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::ordering;
use super::retention::EventKeys;
use crate::envelope::Event;

/// One event of a batch and the endpoints it matched.
pub struct FanOut<'a> {
    pub event: &'a Event,
    pub endpoints: Vec<Uuid>,
    /// The broker flagged the message as redelivered: a previous consumer may have
    /// committed the event and died before its tasks were confirmed.
    pub redelivered: bool,
    /// The event's ordering key, when it came through `<prefix>.ordered`, and those of
    /// `endpoints` that receive it in its key's order (docs/ordering.md).
    pub ordering_key: Option<&'a str>,
    pub ordered: Vec<Uuid>,
}

/// A delivery that needs a task: on the work queue, or a first attempt made by the
/// caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery {
    pub delivery_id: Uuid,
    pub endpoint_id: Uuid,
    /// Its key, when it is delivered in its key's order.
    pub ordering_key: Option<String>,
    /// Its row is in `herald.deliveries`; when not, the caller makes its first attempt
    /// and that attempt's outcome writes the row (`store::deliveries::record_outcomes`).
    pub written: bool,
    /// When its event was received: its row's `created_at` (and its id's time).
    pub created_at: DateTime<Utc>,
}

/// What the database made of one event of the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// First time seen: these deliveries were created.
    New(Vec<NewDelivery>),
    /// Already recorded. For a redelivered message whose event was never marked
    /// dispatched, the deliveries still pending with no attempt (their tasks may never
    /// have reached the broker), and those of its endpoints it has none for (their first
    /// attempt, which writes the row, may never have ended). Empty otherwise.
    Duplicate(Vec<NewDelivery>),
}

/// How a batch's unordered deliveries are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rows {
    /// Now, `pending`: their tasks go to the work queue.
    Now,
    /// By their first attempt's outcome, which the caller makes at once: a first
    /// attempt that succeeds writes its delivery once, not a pending row then an update.
    ByFirstOutcome,
}

/// A delivery's id: a UUIDv7 of its event's reception (so its row lives in that day's
/// partition) whose other bits are a digest of the event's tenant and id and the
/// endpoint. The same delivery gets the same id when a redelivered message has to
/// create it again, so two attempts of it, the lost one and the new one, write one row.
pub fn delivery_id(
    received_at: DateTime<Utc>,
    tenant_key: &str,
    event_id: &str,
    endpoint_id: Uuid,
) -> Uuid {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(tenant_key.as_bytes())
        .chain_update([0])
        .chain_update(event_id.as_bytes())
        .chain_update([0])
        .chain_update(endpoint_id.as_bytes())
        .finalize();
    let mut bits = [0u8; 10];
    bits.copy_from_slice(&digest[..10]);
    let millis = u64::try_from(received_at.timestamp_millis()).unwrap_or(0);
    uuid::Builder::from_unix_timestamp_millis(millis, &bits).into_uuid()
}

/// Records a batch of events and their deliveries in one transaction, idempotent on
/// the event's tenant and id (for as long as `keys` remembers it: one to two
/// `retention.window`s). Ordered deliveries are always written now; the others as
/// `rows` says. Returns one `Recorded` per input, in order.
pub async fn record_fan_out(
    pool: &PgPool,
    keys: &EventKeys,
    batch: &[FanOut<'_>],
    received_at: DateTime<Utc>,
    rows: Rows,
) -> Result<Vec<Recorded>, sqlx::Error> {
    keys.ready(pool, received_at).await?;
    let mut tx = pool.begin().await?;

    // Idempotency: a key is new when neither the current slot of herald.event_keys nor
    // the previous one holds it (store::retention); only new keys' events are recorded.
    let inserted: HashSet<(String, String)> = sqlx::query_as(
        "WITH slots AS (
             SELECT slot, row_number() OVER (ORDER BY ends DESC) AS age
             FROM herald.event_key_slots
         ), fresh AS (
             INSERT INTO herald.event_keys (slot, tenant_key, id, received_at)
             SELECT (SELECT slot FROM slots WHERE age = 1), coalesce(t.tenant_id, ''), t.id, $7
             FROM UNNEST($1::text[], $3::text[]) AS t(id, tenant_id)
             WHERE NOT EXISTS (
                 SELECT 1 FROM herald.event_keys k
                 WHERE k.slot = (SELECT slot FROM slots WHERE age = 2)
                   AND k.tenant_key = coalesce(t.tenant_id, '') AND k.id = t.id)
             ON CONFLICT DO NOTHING
             RETURNING tenant_key, id
         )
         INSERT INTO herald.events (id, type, tenant_id, source, occurred_at, payload, received_at)
         SELECT t.id, t.type, t.tenant_id, t.source, t.occurred_at, t.payload::json, $7
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[])
              AS t(id, type, tenant_id, source, occurred_at, payload)
         JOIN fresh f ON f.tenant_key = coalesce(t.tenant_id, '') AND f.id = t.id
         RETURNING tenant_key, id",
    )
    .bind(column(batch, |e| e.id.as_str()))
    .bind(column(batch, |e| e.event_type.as_str()))
    .bind(column(batch, |e| e.tenant_id.as_deref()))
    .bind(column(batch, |e| e.source.as_deref()))
    .bind(column(batch, |e| e.occurred_at))
    .bind(column(batch, |e| e.data.get()))
    .bind(received_at)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();

    let write_now = rows == Rows::Now;
    let mut results = Vec::with_capacity(batch.len());
    let mut pending = PendingRows::default();
    let mut rechecked = Vec::new();
    let (mut queued, mut queued_tenants, mut queued_events, mut queued_types) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for f in batch {
        let tenant = tenant_key(f.event);
        let event_type = f.event.event_type.as_str();
        let key = (tenant.to_string(), f.event.id.clone());
        if !inserted.contains(&key) {
            if f.redelivered {
                rechecked.push(f);
            }
            results.push(Recorded::Duplicate(Vec::new()));
            continue;
        }
        let mut deliveries = Vec::with_capacity(f.endpoints.len());
        for endpoint_id in &f.endpoints {
            let delivery_id = delivery_id(received_at, tenant, &f.event.id, *endpoint_id);
            if let Some(key) = f.ordering_key.filter(|_| f.ordered.contains(endpoint_id)) {
                queued.push(ordering::Queued {
                    endpoint_id: *endpoint_id,
                    key,
                    delivery_id,
                });
                queued_tenants.push(tenant);
                queued_events.push(f.event.id.as_str());
                queued_types.push(event_type);
                deliveries.push(NewDelivery {
                    delivery_id,
                    endpoint_id: *endpoint_id,
                    ordering_key: Some(key.to_string()),
                    written: true,
                    created_at: received_at,
                });
                continue;
            }
            if write_now {
                pending.push(
                    delivery_id,
                    tenant,
                    &f.event.id,
                    event_type,
                    *endpoint_id,
                    received_at,
                );
            }
            deliveries.push(NewDelivery {
                delivery_id,
                endpoint_id: *endpoint_id,
                ordering_key: None,
                written: write_now,
                created_at: received_at,
            });
        }
        results.push(Recorded::New(deliveries));
    }

    // Ordered deliveries: only the heads are dispatched now, the others wait.
    let heads = ordering::enqueue(
        &mut tx,
        &queued,
        &queued_tenants,
        &queued_events,
        &queued_types,
        received_at,
    )
    .await?;
    if !queued.is_empty() {
        for result in &mut results {
            if let Recorded::New(deliveries) = result {
                deliveries.retain(|d| d.ordering_key.is_none() || heads.contains(&d.delivery_id));
            }
        }
    }

    if !rechecked.is_empty() {
        let again = redelivered(&mut tx, &rechecked).await?;
        for (f, result) in batch.iter().zip(results.iter_mut()) {
            let Recorded::Duplicate(list) = result else {
                continue;
            };
            let of_event = |(tenant, event_id): &(String, String)| {
                *event_id == f.event.id && tenant == tenant_key(f.event)
            };
            for (_, d) in again.pending.iter().filter(|(key, _)| of_event(key)) {
                list.push(d.clone());
            }
            for (_, d) in again.missing.iter().filter(|(key, _)| of_event(key)) {
                if write_now {
                    pending.push(
                        d.delivery_id,
                        tenant_key(f.event),
                        &f.event.id,
                        f.event.event_type.as_str(),
                        d.endpoint_id,
                        d.created_at,
                    );
                }
                list.push(NewDelivery {
                    written: write_now,
                    ..d.clone()
                });
            }
        }
    }

    pending.write(&mut tx).await?;
    tx.commit().await?;
    Ok(results)
}

/// Deliveries written `pending` in the batch's transaction, as columns for `UNNEST`.
#[derive(Default)]
struct PendingRows<'a> {
    ids: Vec<Uuid>,
    tenant_keys: Vec<&'a str>,
    event_ids: Vec<&'a str>,
    event_types: Vec<&'a str>,
    endpoint_ids: Vec<Uuid>,
    created_at: Vec<DateTime<Utc>>,
}

impl<'a> PendingRows<'a> {
    fn push(
        &mut self,
        id: Uuid,
        tenant_key: &'a str,
        event_id: &'a str,
        event_type: &'a str,
        endpoint_id: Uuid,
        created_at: DateTime<Utc>,
    ) {
        self.ids.push(id);
        self.tenant_keys.push(tenant_key);
        self.event_ids.push(event_id);
        self.event_types.push(event_type);
        self.endpoint_ids.push(endpoint_id);
        self.created_at.push(created_at);
    }

    async fn write(self, tx: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
        if self.ids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO herald.deliveries
                 (id, tenant_key, event_id, endpoint_id, event_type, created_at, updated_at)
             SELECT id, tenant_key, event_id, endpoint_id, event_type, created_at, created_at
             FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::timestamptz[],
                         $6::text[])
                  AS t(id, tenant_key, event_id, endpoint_id, created_at, event_type)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&self.ids)
        .bind(&self.tenant_keys)
        .bind(&self.event_ids)
        .bind(&self.endpoint_ids)
        .bind(&self.created_at)
        .bind(&self.event_types)
        .execute(tx)
        .await?;
        Ok(())
    }
}

/// What redelivered messages of events already recorded, and never marked dispatched,
/// still need, by (tenant key, event id).
struct Redelivered {
    /// Deliveries still `pending` with no attempt: their tasks may never have reached
    /// the broker. An ordered one still waiting for its turn is not among them.
    pending: Vec<((String, String), NewDelivery)>,
    /// Unordered endpoints of the event with no delivery row: the first attempt that
    /// was to write it may have been lost with its process.
    missing: Vec<((String, String), NewDelivery)>,
}

async fn redelivered(
    tx: &mut sqlx::PgConnection,
    rechecked: &[&FanOut<'_>],
) -> Result<Redelivered, sqlx::Error> {
    let tenants: Vec<&str> = rechecked.iter().map(|f| tenant_key(f.event)).collect();
    let ids: Vec<&str> = rechecked.iter().map(|f| f.event.id.as_str()).collect();
    #[derive(sqlx::FromRow)]
    struct Pending {
        id: Uuid,
        tenant_key: String,
        event_id: String,
        endpoint_id: Uuid,
        ordering_key: Option<String>,
        created_at: DateTime<Utc>,
    }
    let pending: Vec<Pending> = sqlx::query_as(
        "SELECT d.id, d.tenant_key, d.event_id, d.endpoint_id,
                CASE WHEN d.ordering = 'in_order' THEN d.ordering_key END AS ordering_key,
                d.created_at
         FROM UNNEST($1::text[], $2::text[]) AS r(tenant_key, event_id)
         JOIN herald.events e ON e.tenant_key = r.tenant_key AND e.id = r.event_id
         JOIN herald.deliveries d ON d.tenant_key = e.tenant_key AND d.event_id = e.id
         WHERE e.dispatched_at IS NULL AND d.status = 'pending' AND d.attempts = 0
           AND (d.ordering_key IS NULL OR d.ordering IS DISTINCT FROM 'in_order'
                OR EXISTS (SELECT 1 FROM herald.ordering_heads h
                           WHERE h.endpoint_id = d.endpoint_id
                             AND h.ordering_key = d.ordering_key
                             AND h.delivery_id = d.id))",
    )
    .bind(&tenants)
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;

    let (mut wanted_tenants, mut wanted_events, mut wanted_endpoints) =
        (Vec::new(), Vec::new(), Vec::new());
    for f in rechecked {
        for endpoint_id in f.endpoints.iter().filter(|e| !f.ordered.contains(e)) {
            wanted_tenants.push(tenant_key(f.event));
            wanted_events.push(f.event.id.as_str());
            wanted_endpoints.push(*endpoint_id);
        }
    }
    // The event's latest reception: an id may come back once the ring forgot it.
    let missing: Vec<(String, String, Uuid, DateTime<Utc>)> = sqlx::query_as(
        "SELECT DISTINCT ON (r.tenant_key, r.event_id, r.endpoint_id)
                r.tenant_key, r.event_id, r.endpoint_id, e.received_at
         FROM UNNEST($1::text[], $2::text[], $3::uuid[]) AS r(tenant_key, event_id, endpoint_id)
         JOIN herald.events e ON e.tenant_key = r.tenant_key AND e.id = r.event_id
         WHERE e.dispatched_at IS NULL
           AND NOT EXISTS (SELECT 1 FROM herald.deliveries d
                           WHERE d.tenant_key = r.tenant_key AND d.event_id = r.event_id
                             AND d.endpoint_id = r.endpoint_id)
         ORDER BY r.tenant_key, r.event_id, r.endpoint_id, e.received_at DESC",
    )
    .bind(&wanted_tenants)
    .bind(&wanted_events)
    .bind(&wanted_endpoints)
    .fetch_all(&mut *tx)
    .await?;

    Ok(Redelivered {
        pending: pending
            .into_iter()
            .map(|p| {
                let d = NewDelivery {
                    delivery_id: p.id,
                    endpoint_id: p.endpoint_id,
                    ordering_key: p.ordering_key,
                    written: true,
                    created_at: p.created_at,
                };
                ((p.tenant_key, p.event_id), d)
            })
            .collect(),
        missing: missing
            .into_iter()
            .map(|(tenant, event_id, endpoint_id, received_at)| {
                let d = NewDelivery {
                    delivery_id: delivery_id(received_at, &tenant, &event_id, endpoint_id),
                    endpoint_id,
                    ordering_key: None,
                    written: false,
                    created_at: received_at,
                };
                ((tenant, event_id), d)
            })
            .collect(),
    })
}

/// Marks events (tenant key, id, received at) whose delivery tasks are all confirmed by
/// the broker; the time finds each event's day partition.
pub async fn mark_dispatched(
    pool: &PgPool,
    events: &[(&str, &str, DateTime<Utc>)],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE herald.events e SET dispatched_at = now()
         FROM UNNEST($1::text[], $2::text[], $3::timestamptz[]) AS d(tenant_key, id, received_at)
         WHERE e.received_at = d.received_at AND e.tenant_key = d.tenant_key AND e.id = d.id
           AND e.dispatched_at IS NULL",
    )
    .bind(
        events
            .iter()
            .map(|(tenant, _, _)| *tenant)
            .collect::<Vec<_>>(),
    )
    .bind(events.iter().map(|(_, id, _)| *id).collect::<Vec<_>>())
    .bind(events.iter().map(|(_, _, at)| *at).collect::<Vec<_>>())
    .execute(pool)
    .await?;
    Ok(())
}

/// The tenant half of an event's key: its tenant id, `''` for none (migration
/// `20261202000001_events_per_tenant.sql`).
pub fn tenant_key(event: &Event) -> &str {
    event.tenant_id.as_deref().unwrap_or("")
}

/// One column of the batch, for `UNNEST`.
fn column<'a, T>(batch: &'a [FanOut<'_>], field: impl Fn(&'a Event) -> T) -> Vec<T> {
    batch.iter().map(|f| field(f.event)).collect()
}

/// A stored event as the API shows it.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[schema(as = Event)]
pub struct EventView {
    pub id: String,
    #[serde(rename = "type")]
    #[sqlx(rename = "type")]
    pub event_type: String,
    #[schema(required = true)]
    pub tenant_id: Option<String>,
    #[schema(required = true)]
    pub source: Option<String>,
    pub occurred_at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    /// The publisher's data; only when one event is read.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Value)]
    pub data: Option<serde_json::Value>,
}

/// Filters for listing events; `None` means any.
#[derive(Debug, Default, Clone)]
pub struct EventFilter<'a> {
    /// Only this tenant's events (a tenant token, or the admin's filter).
    pub tenant: Option<&'a str>,
    /// `'.' || type` must match this (see `TopicPattern::to_dotted_regex`).
    pub type_regex: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Events before this (received_at, tenant key, id) — the last of the page before.
    pub before: Option<(DateTime<Utc>, String, String)>,
    pub limit: i64,
}

/// Events newest first, without their data. Only the filters given are in the
/// statement (each combination planned for itself); the order and the keyset are
/// those of the index `events_by_arrival` (received_at, tenant_key, id).
pub async fn list(pool: &PgPool, filter: &EventFilter<'_>) -> Result<Vec<EventView>, sqlx::Error> {
    let mut sql = sqlx::QueryBuilder::<sqlx::Postgres>::new(
        "SELECT id, type, tenant_id, source, occurred_at, received_at, NULL::json AS data
         FROM herald.events WHERE true",
    );
    if let Some(tenant) = filter.tenant {
        sql.push(" AND tenant_key = ").push_bind(tenant);
    }
    if let Some(regex) = &filter.type_regex {
        sql.push(" AND '.' || type ~ ").push_bind(regex);
    }
    if let Some(since) = filter.since {
        sql.push(" AND received_at >= ").push_bind(since);
    }
    if let Some(until) = filter.until {
        sql.push(" AND received_at < ").push_bind(until);
    }
    if let Some((at, key, id)) = &filter.before {
        sql.push(" AND (received_at, tenant_key, id) < (")
            .push_bind(*at)
            .push(", ")
            .push_bind(key)
            .push(", ")
            .push_bind(id)
            .push(")");
    }
    sql.push(" ORDER BY received_at DESC, tenant_key DESC, id DESC LIMIT ")
        .push_bind(filter.limit);
    sql.build_query_as().fetch_all(pool).await
}

/// Events with this id, with their data: one per tenant that used the id (one at most
/// when `tenant` is given).
pub async fn get(
    pool: &PgPool,
    tenant: Option<&str>,
    id: &str,
) -> Result<Vec<EventView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, type, tenant_id, source, occurred_at, received_at, payload AS data
         FROM herald.events WHERE id = $1 AND ($2::text IS NULL OR tenant_key = $2) LIMIT 2",
    )
    .bind(id)
    .bind(tenant)
    .fetch_all(pool)
    .await
}

/// A stored event as ingest accepted it, to build its webhook again (retry, replay).
pub async fn load(pool: &PgPool, tenant_key: &str, id: &str) -> Result<Option<Event>, sqlx::Error> {
    let row: Option<StoredRow> = sqlx::query_as(
        "SELECT id, type, tenant_id, source, occurred_at, payload::text AS payload
         FROM herald.events WHERE tenant_key = $1 AND id = $2",
    )
    .bind(tenant_key)
    .bind(id)
    .fetch_optional(pool)
    .await?;
    row.map(Event::try_from).transpose()
}

/// Many events by (tenant key, id), keyed so; those not stored are absent.
pub async fn load_many(
    pool: &PgPool,
    keys: &[(String, String)],
) -> Result<std::collections::HashMap<(String, String), Event>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        tenant_key: String,
        #[sqlx(flatten)]
        stored: StoredRow,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT e.tenant_key, e.id, e.type, e.tenant_id, e.source, e.occurred_at,
                e.payload::text AS payload
         FROM UNNEST($1::text[], $2::text[]) AS k(tenant_key, id)
         JOIN herald.events e ON e.tenant_key = k.tenant_key AND e.id = k.id",
    )
    .bind(keys.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>())
    .bind(keys.iter().map(|(_, id)| id.as_str()).collect::<Vec<_>>())
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|row| {
            let key = (row.tenant_key, row.stored.id.clone());
            Ok((key, Event::try_from(row.stored)?))
        })
        .collect()
}

/// The columns of an event that rebuild its webhook.
#[derive(sqlx::FromRow)]
pub(crate) struct StoredRow {
    id: String,
    #[sqlx(rename = "type")]
    event_type: String,
    tenant_id: Option<String>,
    source: Option<String>,
    occurred_at: DateTime<Utc>,
    payload: String,
}

impl TryFrom<StoredRow> for Event {
    type Error = sqlx::Error;

    fn try_from(row: StoredRow) -> Result<Self, Self::Error> {
        let decode = |e: Box<dyn std::error::Error + Send + Sync>| sqlx::Error::Decode(e);
        Ok(Event {
            id: row.id,
            event_type: row
                .event_type
                .parse()
                .map_err(|e: crate::domain::InvalidValue| decode(e.0.into()))?,
            tenant_id: row.tenant_id,
            source: row.source,
            occurred_at: row.occurred_at,
            data: serde_json::value::RawValue::from_string(row.payload)
                .map_err(|e| decode(Box::new(e)))?,
            key_in_body_only: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn a_delivery_id_is_a_uuid_v7_of_its_event_reception_and_the_same_for_the_same_delivery() {
        let at = Utc.with_ymd_and_hms(2026, 12, 8, 3, 4, 5).unwrap()
            + chrono::Duration::milliseconds(678);
        let endpoint = Uuid::from_u128(7);
        let id = delivery_id(at, "acme", "evt-1", endpoint);
        assert_eq!(id.get_version_num(), 7);
        assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
        let (secs, nanos) = id.get_timestamp().expect("v7 has a time").to_unix();
        assert_eq!((secs, nanos / 1_000_000), (at.timestamp() as u64, 678));
        assert_eq!(id, delivery_id(at, "acme", "evt-1", endpoint));
        let others = [
            delivery_id(at, "acme", "evt-1", Uuid::from_u128(8)),
            delivery_id(at, "acme", "evt-2", endpoint),
            delivery_id(at, "", "evt-1", endpoint),
            // The parts are kept apart: ("acm", "eevt-1") is not ("acme", "evt-1").
            delivery_id(at, "acm", "eevt-1", endpoint),
        ];
        for other in others {
            assert_ne!(other, id);
            assert_eq!(other.get_timestamp(), id.get_timestamp());
        }
    }
}
