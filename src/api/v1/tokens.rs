//! `/tokens`: tenant tokens, the admin's to manage (`crate::service::tokens`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::api::extract::{Json, Path, Query};
use crate::api::problem::Problem;
use crate::api::v1::responses::{
    Forbidden, Malformed, NotFound, TooLarge, UnsupportedMediaType, Validation,
};
use crate::api::ApiState;
use crate::service::{tokens as service, Caller, PageRequest};

/// A new tenant token.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = NewToken)]
pub struct CreateBody {
    /// The tenant whose data the token reaches; required.
    #[schema(required = true, value_type = String)]
    tenant_id: Option<String>,
    name: Option<String>,
}

/// Creates a tenant token (admin only); the answer carries the token, shown only here.
#[utoipa::path(
    post,
    path = "/tokens",
    tag = "tokens",
    operation_id = "create_token",
    request_body = CreateBody,
    responses(
        (status = 201, description = "Created, with the token", body = crate::service::tokens::Created),
        (status = 400, response = Malformed),
        (status = 403, response = Forbidden),
        (status = 413, response = TooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Validation),
    )
)]

pub async fn create(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Json(body): Json<CreateBody>,
) -> Result<impl IntoResponse, Problem> {
    let created = service::create(&state.pool, &caller, body.tenant_id, body.name).await?;
    Ok((StatusCode::CREATED, axum::Json(created)))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this tenant's tokens.
    tenant_id: Option<String>,
    /// Page size, 1 to 1,000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// The `next_cursor` of the page before.
    cursor: Option<String>,
}

/// Lists tenant tokens (admin only), never the tokens themselves.
#[utoipa::path(
    get,
    path = "/tokens",
    tag = "tokens",
    operation_id = "list_tokens",
    params(ListQuery),
    responses(
        (status = 200, description = "One page of tokens", body = crate::service::Page<crate::store::tokens::TokenView>),
        (status = 403, response = Forbidden),
        (status = 422, response = Validation),
    )
)]

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

/// Revokes a tenant token (admin only), at once in every process.
#[utoipa::path(
    delete,
    path = "/tokens/{id}",
    tag = "tokens",
    operation_id = "revoke_token",
    params(("id" = Uuid, Path, description = "The token's id")),
    responses(
        (status = 200, description = "The token, revoked", body = crate::store::tokens::TokenView),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
    )
)]
pub async fn revoke(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<impl IntoResponse, Problem> {
    Ok(axum::Json(service::revoke(&state.pool, &caller, id).await?))
}
