//! Sending again on request: a signed `herald.test` event to one endpoint now, whose
//! outcome is the answer; and a new attempt of one delivery (`retry`), which goes
//! through the work queue like any other task. Neither looks at the endpoint's payload
//! filter: a test send checks the receiver (its URL, signature and answer), and a
//! retry sends again a delivery that was already made.
//!
//! A retry follows the order of a redrive (`crate::dlq`): the delivery is marked
//! `pending` in a transaction, its task is published with confirms, then the
//! transaction commits — so the record never says `success` or `failed` while a task
//! for it is on its way, and a failed publish leaves the record as it was.

use bytes::Bytes;
use chrono::Utc;
use serde::Serialize;
use serde_json::value::RawValue;
use sqlx::PgPool;
use uuid::Uuid;

use super::{Caller, ServiceError};
use crate::broker::{self, Publisher};
use crate::config::Settings;
use crate::delivery::batched::batch_request;
use crate::delivery::client::{Response, WebhookClient};
use crate::delivery::engine::request_headers;
use crate::delivery::sent_headers;
use crate::delivery::task::DeliveryTask;
use crate::keyring::Keyring;
use crate::store::endpoints;
use crate::store::{deliveries, events};

/// The answer of a test send: what the receiver did with it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TestOutcome {
    pub event_id: String,
    pub success: bool,
    /// The receiver's HTTP status, when it answered.
    #[schema(required = true)]
    pub status_code: Option<u16>,
    /// Failure class when there was no answer (`timeout`, `connect`, `refused`…).
    #[schema(required = true)]
    pub error: Option<String>,
    #[schema(value_type = u64)]
    pub duration_ms: u128,
    /// The start of the receiver's answer.
    #[schema(required = true)]
    pub response_body: Option<String>,
    /// The request headers sent, secrets redacted as in a delivery's attempts.
    #[schema(value_type = std::collections::BTreeMap<String, String>)]
    pub request_headers: Box<RawValue>,
}

/// Sends a signed `herald.test` event to endpoint `id` now (enabled or not), through
/// the same client, SSRF guard and signing as every delivery. Nothing is recorded.
pub async fn test(
    settings: &Settings,
    pool: &PgPool,
    keys: &Keyring,
    caller: &Caller,
    id: Uuid,
) -> Result<TestOutcome, ServiceError> {
    let endpoint = endpoints::get_sendable(pool, keys, caller.scope(), id)
        .await?
        .ok_or(ServiceError::NotFound)?;
    let event_id = format!("test_{}", Uuid::now_v7().simple());
    let body = serde_json::to_vec(&serde_json::json!({
        "id": event_id,
        "type": "herald.test",
        "timestamp": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "tenant_id": endpoint.tenant_id,
        "data": { "message": "a test event sent by Herald", "endpoint_id": id },
    }))
    .expect("JSON values serialise");
    let task = DeliveryTask::resend(Uuid::nil(), event_id.clone(), id, 0, Bytes::from(body));
    let client = WebhookClient::new(&settings.delivery)
        .map_err(|e| ServiceError::Internal(anyhow::anyhow!("HTTP client: {e}")))?;
    let span = tracing::info_span!("test_send", endpoint_id = %id);
    let traceparent = crate::telemetry::link(&span, None);
    // A batching endpoint gets the test event as its receiver gets every event: in a
    // batch (of one).
    let (body, headers) = match endpoint.batch() {
        Some(_) => batch_request(&endpoint, &[&task], &traceparent),
        None => (
            task.body.clone(),
            request_headers(&endpoint, &task, &traceparent),
        ),
    };
    let request_headers = RawValue::from_string(sent_headers::redacted_json(&headers))
        .expect("the redacted headers are a JSON object");
    let attempt = client
        .post_within(&endpoint.url, headers, body, endpoint.timeout())
        .await;
    let duration_ms = attempt.duration.as_millis();
    Ok(match attempt.response {
        Response::Answered { status, body, .. } => TestOutcome {
            event_id,
            success: (200..300).contains(&status),
            status_code: Some(status),
            error: None,
            duration_ms,
            response_body: Some(body),
            request_headers,
        },
        Response::Failed { class, .. } => TestOutcome {
            event_id,
            success: false,
            status_code: None,
            error: Some(class.as_str().to_string()),
            duration_ms,
            response_body: None,
            request_headers,
        },
    })
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Retried {
    pub delivery_id: Uuid,
    /// The number of the attempt queued.
    pub attempt: u32,
}

/// Queues a new attempt of a finished delivery (`success` or `failed`) now; its
/// `webhook-id` is the event's, as for every attempt, and its number follows the
/// last one. A delivery still `pending` or `retrying` is already queued: 409.
pub async fn retry(
    settings: &Settings,
    pool: &PgPool,
    caller: &Caller,
    id: Uuid,
) -> Result<Retried, ServiceError> {
    let delivery = deliveries::get(pool, caller.scope(), id)
        .await?
        .ok_or(ServiceError::NotFound)?;
    if delivery.status == "pending" || delivery.status == "retrying" {
        return Err(ServiceError::Conflict(format!(
            "the delivery is {} and already queued",
            delivery.status
        )));
    }
    let tenant_key = delivery.tenant_id.clone().unwrap_or_default();
    let event = events::load(pool, &tenant_key, &delivery.event_id)
        .await?
        .ok_or_else(|| ServiceError::Internal(anyhow::anyhow!("delivery {id} has no event")))?;
    let task = DeliveryTask::resend(
        id,
        delivery.event_id.clone(),
        delivery.endpoint_id,
        delivery.attempts,
        Bytes::from(event.webhook_body()),
    );
    let attempt = task.attempt;
    let mut marked = pool.begin().await?;
    if deliveries::mark_requeued(&mut *marked, id).await? == 0 {
        return Err(ServiceError::Conflict(
            "the delivery was queued meanwhile".into(),
        ));
    }
    let dispatcher = Dispatcher::open(settings).await?;
    let published = dispatcher.publish(std::slice::from_ref(&task)).await;
    dispatcher.close().await;
    published?;
    marked.commit().await?;
    tracing::info!(delivery_id = %id, attempt, "delivery retried on request");
    Ok(Retried {
        delivery_id: id,
        attempt,
    })
}

/// Publishes tasks to the work exchange with confirms, over a connection of its own
/// (the API process has no broker connection of its own otherwise).
pub(super) struct Dispatcher {
    connection: lapin::Connection,
    channel: lapin::Channel,
    publisher: Publisher,
    work_exchange: String,
    work_queue: String,
}

impl Dispatcher {
    pub async fn open(settings: &Settings) -> Result<Self, ServiceError> {
        let opened = async {
            let topology = crate::delivery::topology(settings);
            let connection = broker::connect(settings.amqp.url.expose(), "herald-resend").await?;
            let channel = connection.create_channel().await?;
            topology.declare(&channel).await?;
            let publisher = Publisher::open(&connection).await?;
            anyhow::Ok(Self {
                connection,
                channel,
                publisher,
                work_exchange: topology.work_exchange(),
                work_queue: topology.work_queue(),
            })
        };
        opened.await.map_err(unavailable)
    }

    pub async fn publish(&self, tasks: &[DeliveryTask]) -> Result<(), ServiceError> {
        self.publisher
            .publish_all(
                tasks
                    .iter()
                    .map(|t| t.to_work(&self.work_exchange))
                    .collect(),
            )
            .await
            .map_err(|e| unavailable(e.into()))
    }

    /// Tasks waiting in the work queue now.
    pub async fn work_queued(&self) -> Result<u32, ServiceError> {
        crate::topology::queue_depth(&self.channel, &self.work_queue)
            .await
            .map_err(|e| unavailable(e.into()))
    }

    pub async fn close(self) {
        broker::close_connection(&self.connection).await;
    }
}

fn unavailable(error: anyhow::Error) -> ServiceError {
    ServiceError::Unavailable(format!("broker: {error:#}"))
}
