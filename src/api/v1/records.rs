//! `/events`, `/deliveries`: what happened, and a delivery's retry
//! (`crate::service::{events, deliveries, resend}`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::api::extract::{Path, Query};
use crate::api::problem::Problem;
use crate::api::v1::responses::{Conflict, NotFound, Unavailable, Validation};
use crate::api::ApiState;
use crate::service::{deliveries, events, resend, Caller, PageRequest};

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventQuery {
    /// An event-type pattern (`sales.order.*`, `sales.#`).
    #[serde(rename = "type")]
    event_type: Option<String>,
    /// Only this tenant's (a tenant token: its own anyway).
    tenant_id: Option<String>,
    /// Received at or after.
    since: Option<DateTime<Utc>>,
    /// Received before.
    until: Option<DateTime<Utc>>,
    /// Page size, 1 to 1,000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// The `next_cursor` of the page before.
    cursor: Option<String>,
}

/// Lists stored events, newest first (without their data).
#[utoipa::path(
    get,
    path = "/events",
    tag = "events",
    operation_id = "list_events",
    params(EventQuery),
    responses(
        (status = 200, description = "One page of events", body = crate::service::Page<crate::store::events::EventView>),
        (status = 422, response = Validation),
    )
)]

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

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventTenant {
    /// The event's tenant; the admin needs it when several tenants used the id.
    tenant_id: Option<String>,
}

/// One event, with its data and its deliveries.
#[utoipa::path(
    get,
    path = "/events/{id}",
    tag = "events",
    operation_id = "get_event",
    params(("id" = String, Path, description = "The event's id"), EventTenant),
    responses(
        (status = 200, description = "The event", body = crate::service::events::Detailed),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 422, response = Validation),
    )
)]

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

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeliveryQuery {
    /// Only this tenant's (a tenant token: its own anyway).
    tenant_id: Option<String>,
    /// `pending`, `retrying`, `success` or `failed`.
    #[param(value_type = Option<crate::store::deliveries::Status>)]
    status: Option<String>,
    endpoint_id: Option<Uuid>,
    event_id: Option<String>,
    /// The exact event type.
    event_type: Option<String>,
    /// The last attempt's HTTP status.
    http_status: Option<i32>,
    /// Created at or after.
    since: Option<DateTime<Utc>>,
    /// Created before.
    until: Option<DateTime<Utc>>,
    /// Page size, 1 to 1,000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// The `next_cursor` of the page before.
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

/// Lists deliveries, newest first.
#[utoipa::path(
    get,
    path = "/deliveries",
    tag = "deliveries",
    operation_id = "list_deliveries",
    params(DeliveryQuery),
    responses(
        (status = 200, description = "One page of deliveries", body = crate::service::Page<crate::store::deliveries::DeliveryView>),
        (status = 422, response = Validation),
    )
)]
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

/// One delivery with every attempt.
#[utoipa::path(
    get,
    path = "/deliveries/{id}",
    tag = "deliveries",
    operation_id = "get_delivery",
    params(("id" = Uuid, Path, description = "The delivery's id")),
    responses(
        (status = 200, description = "The delivery", body = crate::service::deliveries::Detailed),
        (status = 404, response = NotFound),
    )
)]
pub async fn get_delivery(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<impl IntoResponse, Problem> {
    Ok(axum::Json(deliveries::get(&state.pool, &caller, id).await?))
}

/// A new attempt of a finished delivery, now (same `webhook-id`; the attempt number
/// continues).
#[utoipa::path(
    post,
    path = "/deliveries/{id}/retry",
    tag = "deliveries",
    operation_id = "retry_delivery",
    params(("id" = Uuid, Path, description = "The delivery's id")),
    responses(
        (status = 202, description = "The attempt is queued", body = crate::service::resend::Retried),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 503, response = Unavailable),
    )
)]
pub async fn retry(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<impl IntoResponse, Problem> {
    let retried = resend::retry(&state.settings, &state.pool, &caller, id).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(retried)))
}
