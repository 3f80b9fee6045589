//! `/events`, `/deliveries`, `/dlq`: what happened, and redrive
//! (`crate::service::{events, deliveries}`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

use crate::api::extract::{Json, Path, Query};
use crate::api::problem::Problem;
use crate::api::ApiState;
use crate::service::{deliveries, events, resend, Caller, PageRequest};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventQuery {
    /// An event-type pattern.
    #[serde(rename = "type")]
    event_type: Option<String>,
    tenant_id: Option<String>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    limit: Option<i64>,
    cursor: Option<String>,
}

pub async fn list_events(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Query(q): Query<EventQuery>,
) -> Result<impl IntoResponse, Problem> {
    let page = PageRequest::new(q.limit, q.cursor)?;
    let filter = events::ListFilter {
        event_type: q.event_type,
        tenant: q.tenant_id,
        since: q.since,
        until: q.until,
    };
    Ok(axum::Json(
        events::list(&state.pool, &caller, filter, page).await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventTenant {
    tenant_id: Option<String>,
}

pub async fn get_event(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<EventTenant>,
) -> Result<impl IntoResponse, Problem> {
    Ok(axum::Json(
        events::get(&state.pool, &caller, &id, q.tenant_id).await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryQuery {
    tenant_id: Option<String>,
    status: Option<String>,
    endpoint_id: Option<Uuid>,
    event_id: Option<String>,
    event_type: Option<String>,
    http_status: Option<i32>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    limit: Option<i64>,
    cursor: Option<String>,
}

impl DeliveryQuery {
    fn split(self) -> Result<(deliveries::ListFilter, PageRequest), Problem> {
        let page = PageRequest::new(self.limit, self.cursor)?;
        let filter = deliveries::ListFilter {
            tenant: self.tenant_id,
            status: self.status,
            endpoint_id: self.endpoint_id,
            event_id: self.event_id,
            event_type: self.event_type,
            http_status: self.http_status,
            since: self.since,
            until: self.until,
        };
        Ok((filter, page))
    }
}

pub async fn list_deliveries(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Query(q): Query<DeliveryQuery>,
) -> Result<impl IntoResponse, Problem> {
    let (filter, page) = q.split()?;
    Ok(axum::Json(
        deliveries::list(&state.pool, &caller, filter, page).await?,
    ))
}

pub async fn get_delivery(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<impl IntoResponse, Problem> {
    Ok(axum::Json(deliveries::get(&state.pool, &caller, id).await?))
}

/// Failed deliveries: the records of what sits in the dead-letter queue.
pub async fn list_dlq(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Query(q): Query<DeliveryQuery>,
) -> Result<impl IntoResponse, Problem> {
    let (mut filter, page) = q.split()?;
    filter.status = Some("failed".into());
    Ok(axum::Json(
        deliveries::list(&state.pool, &caller, filter, page).await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedriveBody {
    #[serde(default)]
    all: bool,
    #[serde(default)]
    delivery_ids: Vec<Uuid>,
}

pub async fn redrive(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Json(body): Json<RedriveBody>,
) -> Result<impl IntoResponse, Problem> {
    Ok(axum::Json(
        deliveries::redrive(
            &state.settings,
            &state.pool,
            &caller,
            body.all,
            body.delivery_ids,
        )
        .await?,
    ))
}

/// A new attempt of a finished delivery, now.
pub async fn retry(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<impl IntoResponse, Problem> {
    let retried = resend::retry(&state.settings, &state.pool, &caller, id).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(retried)))
}
