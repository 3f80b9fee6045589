//! `/endpoints`: thin handlers over `crate::service::endpoints`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use uuid::Uuid;

use crate::api::extract::{Json, OptionalJson, Path, Query};
use crate::api::problem::Problem;
use crate::api::ApiState;
use crate::service::endpoints::{self as service, EndpointChanges, EndpointInput, ListFilter};
use crate::service::{Caller, PageRequest};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    url: String,
    event_types: Vec<String>,
    tenant_id: Option<String>,
    secret: Option<String>,
    signature: Option<String>,
    headers: Option<BTreeMap<String, String>>,
    rate_limit: Option<i64>,
    name: Option<String>,
    description: Option<String>,
}

pub async fn create(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Json(body): Json<CreateBody>,
) -> Result<impl IntoResponse, Problem> {
    let input = EndpointInput {
        url: body.url,
        event_types: body.event_types,
        tenant_id: body.tenant_id,
        secret: body.secret,
        signature: body.signature,
        headers: body.headers,
        rate_limit: body.rate_limit,
        name: body.name,
        description: body.description,
    };
    let created =
        service::create(&state.pool, &state.keys, state.url_policy(), &caller, input).await?;
    Ok((StatusCode::CREATED, axum::Json(created)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    tenant_id: Option<String>,
    state: Option<String>,
    event_type: Option<String>,
    limit: Option<i64>,
    cursor: Option<String>,
}

pub async fn list(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<impl IntoResponse, Problem> {
    let page = PageRequest::new(q.limit, q.cursor)?;
    let filter = ListFilter {
        tenant: q.tenant_id,
        state: q.state,
        event_type: q.event_type,
    };
    Ok(axum::Json(
        service::list(&state.pool, &caller, filter, page).await?,
    ))
}

pub async fn get(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<impl IntoResponse, Problem> {
    Ok(axum::Json(service::get(&state.pool, &caller, id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateBody {
    url: Option<String>,
    event_types: Option<Vec<String>>,
    enabled: Option<bool>,
    #[serde(default, with = "double_option")]
    rate_limit: Option<Option<i64>>,
    #[serde(default, with = "double_option")]
    name: Option<Option<String>>,
    #[serde(default, with = "double_option")]
    description: Option<Option<String>>,
    signature: Option<String>,
    headers: Option<BTreeMap<String, String>>,
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

pub async fn update(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Path(id): Path<Uuid>,
    Json(body): Json<UpdateBody>,
) -> Result<impl IntoResponse, Problem> {
    let changes = EndpointChanges {
        url: body.url,
        event_types: body.event_types,
        enabled: body.enabled,
        rate_limit: body.rate_limit,
        name: body.name,
        description: body.description,
        signature: body.signature,
        headers: body.headers,
    };
    Ok(axum::Json(
        service::update(
            &state.pool,
            &state.keys,
            state.url_policy(),
            &caller,
            id,
            changes,
        )
        .await?,
    ))
}

pub async fn delete(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<impl IntoResponse, Problem> {
    service::delete(&state.pool, &caller, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RotateBody {
    /// Hours the old secret keeps signing alongside the new one (default 24).
    grace_hours: Option<i64>,
}

pub async fn rotate_secret(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Path(id): Path<Uuid>,
    OptionalJson(body): OptionalJson<RotateBody>,
) -> Result<impl IntoResponse, Problem> {
    let grace = body.unwrap_or_default().grace_hours;
    Ok(axum::Json(
        service::rotate_secret(&state.pool, &state.keys, &caller, id, grace).await?,
    ))
}
