//! The admin API (`/api/v1`): endpoints, deliveries and their attempts, the
//! dead-letter queue. Every route needs `Authorization: Bearer <api.admin_token>`.

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::{ApiError, ApiState};
use crate::dlq::{self, Selection};
use crate::domain::{EndpointUrl, SigningSecret, TopicPattern};
use crate::store::deliveries::{self, Filter};
use crate::store::endpoints::{self, EndpointPatch, EndpointView, NewEndpoint};

pub fn routes(state: Arc<ApiState>) -> Router<Arc<ApiState>> {
    Router::new()
        .route("/endpoints", get(list_endpoints).post(create_endpoint))
        .route(
            "/endpoints/{id}",
            get(get_endpoint)
                .patch(update_endpoint)
                .delete(delete_endpoint),
        )
        .route("/endpoints/{id}/rotate-secret", post(rotate_secret))
        .route("/deliveries", get(list_deliveries))
        .route("/deliveries/{id}", get(get_delivery))
        .route("/dlq", get(list_dlq))
        .route("/dlq/redrive", post(redrive))
        .layer(middleware::from_fn_with_state(state, require_token))
}

/// Constant-time comparison of the bearer token; an empty configured token locks the API.
async fn require_token(
    State(state): State<Arc<ApiState>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let expected = state.settings.api.admin_token.expose().as_bytes();
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .as_bytes();
    let same = !expected.is_empty()
        && given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same {
        return Err(ApiError::Unauthorized);
    }
    Ok(next.run(request).await)
}

#[derive(Deserialize)]
struct CreateEndpoint {
    url: String,
    event_types: Vec<String>,
    tenant_id: Option<String>,
    secret: Option<String>,
    rate_limit: Option<i32>,
    description: Option<String>,
}

fn patterns(list: &[String]) -> Result<Vec<TopicPattern>, ApiError> {
    if list.is_empty() {
        return Err(ApiError::BadRequest(
            "event_types needs at least one pattern".into(),
        ));
    }
    Ok(list.iter().map(|p| p.parse()).collect::<Result<_, _>>()?)
}

async fn create_endpoint(
    State(state): State<Arc<ApiState>>,
    Json(body): Json<CreateEndpoint>,
) -> Result<impl IntoResponse, ApiError> {
    let new = NewEndpoint {
        url: body.url.parse::<EndpointUrl>()?,
        event_types: patterns(&body.event_types)?,
        tenant_id: body.tenant_id.filter(|t| !t.is_empty()),
        secret: body
            .secret
            .map(|s| s.parse::<SigningSecret>())
            .transpose()?,
        rate_limit: body.rate_limit,
        description: body.description,
    };
    let endpoint = endpoints::insert(&state.pool, new).await?;
    let mut view = serde_json::to_value(EndpointView::from(&endpoint)).expect("serialisable");
    view["secret"] = json!(endpoint.secrets[0].expose());
    Ok((StatusCode::CREATED, Json(view)))
}

async fn list_endpoints(State(state): State<Arc<ApiState>>) -> Result<impl IntoResponse, ApiError> {
    let list = endpoints::list(&state.pool).await?;
    Ok(Json(
        list.iter().map(EndpointView::from).collect::<Vec<_>>(),
    ))
}

async fn get_endpoint(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<Uuid>,
) -> Result<impl IntoResponse, ApiError> {
    match endpoints::get(&state.pool, id).await? {
        Some(e) if !e.deleted => Ok(Json(EndpointView::from(&e))),
        _ => Err(ApiError::NotFound),
    }
}

#[derive(Deserialize)]
struct UpdateEndpoint {
    url: Option<String>,
    event_types: Option<Vec<String>>,
    enabled: Option<bool>,
    #[serde(default, with = "double_option")]
    rate_limit: Option<Option<i32>>,
    #[serde(default, with = "double_option")]
    description: Option<Option<String>>,
}

/// `absent` → None, `null` → Some(None), value → Some(Some(value)).
mod double_option {
    use serde::{Deserialize, Deserializer};
    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}

async fn update_endpoint(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<Uuid>,
    Json(body): Json<UpdateEndpoint>,
) -> Result<impl IntoResponse, ApiError> {
    let patch = EndpointPatch {
        url: body.url.map(|u| u.parse()).transpose()?,
        event_types: body.event_types.as_deref().map(patterns).transpose()?,
        enabled: body.enabled,
        rate_limit: body.rate_limit,
        description: body.description,
    };
    let endpoint = endpoints::update(&state.pool, id, patch)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(EndpointView::from(&endpoint)))
}

async fn delete_endpoint(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<Uuid>,
) -> Result<impl IntoResponse, ApiError> {
    if endpoints::delete(&state.pool, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound)
    }
}

#[derive(Deserialize)]
struct Rotate {
    /// Hours the old secret keeps signing alongside the new one (default 24).
    grace_hours: Option<i64>,
}

async fn rotate_secret(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<Uuid>,
    body: Option<Json<Rotate>>,
) -> Result<impl IntoResponse, ApiError> {
    let grace = body
        .and_then(|b| b.grace_hours)
        .unwrap_or(24)
        .clamp(0, 24 * 30);
    let secret = SigningSecret::generate();
    if !endpoints::rotate_secret(&state.pool, id, &secret, chrono::Duration::hours(grace)).await? {
        return Err(ApiError::NotFound);
    }
    Ok(Json(
        json!({ "id": id, "secret": secret.expose(), "previous_valid_hours": grace }),
    ))
}

#[derive(Deserialize)]
struct DeliveryQuery {
    status: Option<String>,
    endpoint_id: Option<Uuid>,
    event_id: Option<String>,
    limit: Option<i64>,
}

async fn list_deliveries(
    State(state): State<Arc<ApiState>>,
    Query(q): Query<DeliveryQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let filter = Filter {
        status: q.status,
        endpoint_id: q.endpoint_id,
        event_id: q.event_id,
        limit: q.limit.unwrap_or(100),
    };
    Ok(Json(deliveries::list(&state.pool, &filter).await?))
}

async fn get_delivery(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<Uuid>,
) -> Result<impl IntoResponse, ApiError> {
    let delivery = deliveries::get(&state.pool, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let attempts = deliveries::attempts(&state.pool, id).await?;
    Ok(Json(json!({ "delivery": delivery, "attempts": attempts })))
}

#[derive(Deserialize)]
struct Limit {
    limit: Option<i64>,
}

async fn list_dlq(
    State(state): State<Arc<ApiState>>,
    Query(q): Query<Limit>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(dlq::list(&state.pool, q.limit.unwrap_or(100)).await?))
}

#[derive(Deserialize)]
struct RedriveRequest {
    #[serde(default)]
    all: bool,
    #[serde(default)]
    delivery_ids: Vec<Uuid>,
}

async fn redrive(
    State(state): State<Arc<ApiState>>,
    Json(body): Json<RedriveRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let selection = match (body.all, body.delivery_ids.is_empty()) {
        (true, true) => Selection::All,
        (false, false) => Selection::Deliveries(body.delivery_ids),
        _ => {
            return Err(ApiError::BadRequest(
                "give either \"all\": true or \"delivery_ids\"".into(),
            ))
        }
    };
    let report = dlq::redrive(&state.settings, &state.pool, selection)
        .await
        .map_err(|e| ApiError::Internal(format!("{e:#}")))?;
    Ok(Json(report))
}
