//! Operational events (contract §9): what happens to endpoints and deliveries,
//! published as CloudEvents (structured JSON) to the topic exchange `<prefix>.ops`,
//! routing key = type. They are written to the outbox `herald.ops_events` with the
//! change they report (`crate::store::health`, `crate::store::ops`); the relay here
//! publishes them with confirms, oldest first, and marks them. Every role runs it;
//! `SKIP LOCKED` keeps two processes from publishing one event.

use std::time::Duration;

use chrono::SecondsFormat;
use lapin::BasicProperties;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::broker::{self, Outgoing, Publisher};
use crate::config::Settings;
use crate::store::ops::{self, OpsRow};
use crate::topology::Topology;

/// How often the outbox is looked at while it is empty.
const POLL: Duration = Duration::from_millis(250);
/// Events published per confirm round.
const BATCH: i64 = 200;
/// How long published events are kept in the outbox (for an SRE's look back).
const KEEP: Duration = Duration::from_secs(7 * 24 * 3600);

/// The CloudEvent of one recorded event. Pure.
pub fn cloud_event(row: &OpsRow, source: &str) -> Value {
    let mut event = json!({
        "specversion": "1.0",
        "id": row.id,
        "type": row.kind,
        "source": source,
        "time": row.created_at.to_rfc3339_opts(SecondsFormat::Millis, true),
        "datacontenttype": "application/json",
        "data": row.data,
    });
    if let Some(tenant) = &row.tenant_id {
        event["tenantid"] = json!(tenant);
    }
    event
}

/// The `source` of Herald's events: one deployment per prefix.
pub fn source(topology: &Topology) -> String {
    format!("/herald/{}", topology.prefix())
}

/// Publishes the outbox until `shutdown`, reconnecting while the broker is away.
pub async fn relay(
    settings: std::sync::Arc<Settings>,
    pool: sqlx::PgPool,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    shutdown: CancellationToken,
) {
    let topology = crate::delivery::topology(&settings);
    let name = format!("{}-ops", topology.prefix());
    let mut pruned_at = tokio::time::Instant::now();
    loop {
        let Some(connection) = broker::connect_with_backoff(
            settings.amqp.url.expose(),
            &name,
            broker::Frames::Own,
            settings.amqp.reconnect_max_backoff,
            &shutdown,
        )
        .await
        else {
            return;
        };
        let publisher = match open(&connection, &topology).await {
            Ok(publisher) => publisher,
            Err(error) => {
                tracing::warn!(%error, "operational events: cannot open a channel");
                broker::close_connection(&connection).await;
                if !pause(&shutdown, settings.amqp.reconnect_max_backoff).await {
                    return;
                }
                continue;
            }
        };
        let source = source(&topology);
        loop {
            if shutdown.is_cancelled() {
                broker::close_connection(&connection).await;
                return;
            }
            match publish_some(&pool, &publisher, &topology, &source).await {
                Ok(published) => {
                    metrics.ops_published.inc_by(published as u64);
                    if published < BATCH as usize && !pause(&shutdown, POLL).await {
                        broker::close_connection(&connection).await;
                        return;
                    }
                }
                Err(Failure::Database(error)) => {
                    tracing::debug!(%error, "operational events: database away");
                    if !pause(&shutdown, Duration::from_secs(1)).await {
                        return;
                    }
                }
                Err(Failure::Broker(error)) => {
                    tracing::warn!(%error, "operational events: publishing failed; reconnecting");
                    break;
                }
            }
            if pruned_at.elapsed() > Duration::from_secs(600) {
                pruned_at = tokio::time::Instant::now();
                if let Err(error) = ops::prune(&pool, KEEP).await {
                    tracing::debug!(%error, "operational events: not pruned");
                }
            }
        }
        broker::close_connection(&connection).await;
        if !pause(&shutdown, Duration::from_millis(200)).await {
            return;
        }
    }
}

async fn open(connection: &lapin::Connection, topology: &Topology) -> lapin::Result<Publisher> {
    let channel = connection.create_channel().await?;
    topology.declare(&channel).await?;
    broker::close_channel(&channel).await;
    Publisher::open(connection).await
}

#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Broker(#[from] broker::PublishError),
}

/// Publishes one batch of the oldest unpublished events: confirmed, then marked, in
/// one transaction (a crash between publishes them again: at least once).
async fn publish_some(
    pool: &sqlx::PgPool,
    publisher: &Publisher,
    topology: &Topology,
    source: &str,
) -> Result<usize, Failure> {
    let mut tx = pool.begin().await?;
    let rows = ops::take_unpublished(&mut tx, BATCH).await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let exchange = topology.ops_exchange();
    let bodies: Vec<Vec<u8>> = rows
        .iter()
        .map(|row| cloud_event(row, source).to_string().into_bytes())
        .collect();
    let messages = rows
        .iter()
        .zip(&bodies)
        .map(|(row, body)| Outgoing {
            exchange: &exchange,
            routing_key: &row.kind,
            body,
            properties: BasicProperties::default()
                .with_content_type("application/cloudevents+json".into())
                .with_message_id(row.id.to_string().into())
                .with_type(row.kind.as_str().into())
                .with_delivery_mode(2)
                .with_timestamp(row.created_at.timestamp().max(0) as u64),
        })
        .collect();
    publisher.publish_all_unrouted_ok(messages).await?;
    let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
    ops::mark_published(&mut tx, &seqs).await?;
    tx.commit().await?;
    Ok(rows.len())
}

/// Sleeps `for_`; `false` when shutdown came first.
async fn pause(shutdown: &CancellationToken, for_: Duration) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(for_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operational_event_is_a_structured_cloud_event_with_its_tenant() {
        let row = OpsRow {
            seq: 1,
            id: uuid::Uuid::nil(),
            kind: "herald.endpoint.failing".into(),
            tenant_id: Some("acme".into()),
            data: json!({"endpoint_id": "e-1", "reason": "10 failed attempts in a row"}),
            created_at: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        };
        let event = cloud_event(&row, "/herald/herald");
        assert_eq!(
            event,
            json!({
                "specversion": "1.0",
                "id": "00000000-0000-0000-0000-000000000000",
                "type": "herald.endpoint.failing",
                "source": "/herald/herald",
                "time": "2023-11-14T22:13:20.000Z",
                "datacontenttype": "application/json",
                "tenantid": "acme",
                "data": {"endpoint_id": "e-1", "reason": "10 failed attempts in a row"},
            })
        );
        let untenanted = OpsRow {
            tenant_id: None,
            ..row
        };
        assert!(cloud_event(&untenanted, "/herald/x")
            .get("tenantid")
            .is_none());
    }
}
