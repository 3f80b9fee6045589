//! `/tokens`: tenant tokens, the admin's to manage (`crate::service::tokens`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use uuid::Uuid;

use crate::api::extract::{Json, Path, Query};
use crate::api::problem::Problem;
use crate::api::ApiState;
use crate::service::{tokens as service, Caller, PageRequest};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    tenant_id: Option<String>,
    name: Option<String>,
}

pub async fn create(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Json(body): Json<CreateBody>,
) -> Result<impl IntoResponse, Problem> {
    let created = service::create(&state.pool, &caller, body.tenant_id, body.name).await?;
    Ok((StatusCode::CREATED, axum::Json(created)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    tenant_id: Option<String>,
    limit: Option<i64>,
    cursor: Option<String>,
}

pub async fn list(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<impl IntoResponse, Problem> {
    let page = PageRequest::new(q.limit, q.cursor)?;
    Ok(axum::Json(
        service::list(&state.pool, &caller, q.tenant_id, page).await?,
    ))
}

pub async fn revoke(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<impl IntoResponse, Problem> {
    Ok(axum::Json(service::revoke(&state.pool, &caller, id).await?))
}
