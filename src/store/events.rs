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

/// A delivery that needs a task on the work queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery {
    pub delivery_id: Uuid,
    pub endpoint_id: Uuid,
    /// Its key, when it is delivered in its key's order.
    pub ordering_key: Option<String>,
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
/// the event's tenant and id (for as long as `keys` remembers it: one to two
/// `retention.window`s). Returns one `Recorded` per input, in order.
pub async fn record_fan_out(
    pool: &PgPool,
    keys: &EventKeys,
    batch: &[FanOut<'_>],
    received_at: DateTime<Utc>,
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

    let mut results = Vec::with_capacity(batch.len());
    let (mut ids, mut tenant_keys, mut event_ids, mut endpoint_ids, mut event_types) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut recheck_tenants, mut recheck_ids) = (Vec::new(), Vec::new());
    let (mut queued, mut queued_tenants, mut queued_events, mut queued_types) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for f in batch {
        let key = (tenant_key(f.event).to_string(), f.event.id.clone());
        if inserted.contains(&key) {
            let deliveries: Vec<NewDelivery> = f
                .endpoints
                .iter()
                .map(|endpoint_id| NewDelivery {
                    delivery_id: Uuid::now_v7(),
                    endpoint_id: *endpoint_id,
                    ordering_key: f
                        .ordering_key
                        .filter(|_| f.ordered.contains(endpoint_id))
                        .map(String::from),
                })
                .collect();
            for d in &deliveries {
                if let Some(key) = f.ordering_key.filter(|_| d.ordering_key.is_some()) {
                    queued.push(ordering::Queued {
                        endpoint_id: d.endpoint_id,
                        key,
                        delivery_id: d.delivery_id,
                    });
                    queued_tenants.push(tenant_key(f.event));
                    queued_events.push(f.event.id.as_str());
                    queued_types.push(f.event.event_type.as_str());
                    continue;
                }
                ids.push(d.delivery_id);
                tenant_keys.push(tenant_key(f.event));
                event_ids.push(f.event.id.as_str());
                endpoint_ids.push(d.endpoint_id);
                event_types.push(f.event.event_type.as_str());
            }
            results.push(Recorded::New(deliveries));
        } else {
            if f.redelivered {
                recheck_tenants.push(tenant_key(f.event));
                recheck_ids.push(f.event.id.as_str());
            }
            results.push(Recorded::Duplicate(Vec::new()));
        }
    }

    if !ids.is_empty() {
        sqlx::query(
            "INSERT INTO herald.deliveries
                 (id, tenant_key, event_id, endpoint_id, event_type, created_at, updated_at)
             SELECT id, tenant_key, event_id, endpoint_id, event_type, $5, $5
             FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::uuid[], $6::text[])
                  AS t(id, tenant_key, event_id, endpoint_id, event_type)",
        )
        .bind(&ids)
        .bind(&tenant_keys)
        .bind(&event_ids)
        .bind(&endpoint_ids)
        .bind(received_at)
        .bind(&event_types)
        .execute(&mut *tx)
        .await?;
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

    if !recheck_ids.is_empty() {
        // An ordered delivery still waiting for its turn is not dispatched again.
        let pending: Vec<(Uuid, String, String, Uuid, Option<String>)> = sqlx::query_as(
            "SELECT d.id, d.tenant_key, d.event_id, d.endpoint_id,
                    CASE WHEN d.ordering = 'in_order' THEN d.ordering_key END
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
        .bind(&recheck_tenants)
        .bind(&recheck_ids)
        .fetch_all(&mut *tx)
        .await?;
        for (f, result) in batch.iter().zip(results.iter_mut()) {
            if let Recorded::Duplicate(list) = result {
                list.extend(
                    pending
                        .iter()
                        .filter(|(_, tenant, event_id, _, _)| {
                            *event_id == f.event.id && tenant == tenant_key(f.event)
                        })
                        .map(|(delivery_id, _, _, endpoint_id, key)| NewDelivery {
                            delivery_id: *delivery_id,
                            endpoint_id: *endpoint_id,
                            ordering_key: key.clone(),
                        }),
                );
            }
        }
    }

    tx.commit().await?;
    Ok(results)
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
