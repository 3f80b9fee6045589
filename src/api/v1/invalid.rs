//! `/invalid`: the parking queue `<prefix>.invalid` — list, and reingest or purge as
//! background jobs (`202` with the job; `GET /invalid/jobs/{id}` follows it)
//! (`crate::service::invalid`, `crate::service::invalid_jobs`). The admin's only: a
//! tenant token is answered 403.

use std::sync::Arc;

use axum::extract::State;
use axum::response::IntoResponse;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::api::extract::{Json, Path, Query};
use crate::api::problem::Problem;
use crate::api::v1::responses::{
    Forbidden, Malformed, NotFound, TooLarge, Unavailable, UnsupportedMediaType, Validation,
};
use crate::api::ApiState;
use crate::service::invalid as service;
use crate::service::invalid_jobs::{self as jobs, Kind};
use crate::service::{Caller, PageRequest};
use crate::store::invalid_jobs::{Job, Selected};

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only messages parked for this reason (`not_json`, `too_large`, …).
    reason: Option<String>,
    /// Page size, 1 to 1,000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// The `next_cursor` of the page before (a position in the queue).
    cursor: Option<String>,
}

/// Lists parked messages in queue order, without taking them: reason, error, origin,
/// properties, own headers and the first KiB of the body.
#[utoipa::path(
    get,
    path = "/invalid",
    tag = "invalid",
    operation_id = "list_invalid",
    params(ListQuery),
    responses(
        (status = 200, description = "One page of parked messages", body = crate::service::Page<crate::broker::parked::ParkedMessage>),
        (status = 403, response = Forbidden),
        (status = 422, response = Validation),
        (status = 503, response = Unavailable),
    )
)]
pub async fn list(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<impl IntoResponse, Problem> {
    caller.require_admin()?;
    let page = PageRequest::new(q.limit, q.cursor)?;
    Ok(axum::Json(
        service::list(&state.settings, &caller, q.reason, page).await?,
    ))
}

/// Which parked messages: exactly one of `"all": true`, a non-empty `ids` or a
/// `reason`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ReingestRequest)]
pub struct ReingestBody {
    #[serde(default)]
    all: bool,
    #[serde(default)]
    ids: Vec<Uuid>,
    reason: Option<String>,
}

/// Records a job and walks the queue for it in the background; answers `202` with
/// the job and where to follow it.
async fn start(
    state: Arc<ApiState>,
    caller: Caller,
    kind: Kind,
    given: Selected,
    confirmed: bool,
) -> Result<impl IntoResponse, Problem> {
    let job = jobs::start(&state.pool, &caller, kind, given, confirmed).await?;
    let location = format!("/api/v1/invalid/jobs/{}", job.id);
    let answer = job.clone();
    let (settings, pool) = (state.settings.clone(), state.pool.clone());
    tokio::spawn(async move {
        let _ = jobs::run(&settings, &pool, job, |_| {}).await;
    });
    Ok(super::accepted(location, answer))
}

/// Sends parked messages back through ingest (original body and properties), in the
/// background; one still refused is parked again with a new id.
#[utoipa::path(
    post,
    path = "/invalid/reingest",
    tag = "invalid",
    operation_id = "reingest_invalid",
    request_body = ReingestBody,
    responses(
        (status = 202, description = "The job, started; `Location` follows it", body = Job),
        (status = 400, response = Malformed),
        (status = 403, response = Forbidden),
        (status = 413, response = TooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Validation),
        (status = 503, response = Unavailable),
    )
)]
pub async fn reingest(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Json(body): Json<ReingestBody>,
) -> Result<impl IntoResponse, Problem> {
    let given = Selected {
        all: body.all,
        ids: body.ids,
        reason: body.reason,
    };
    start(state, caller, Kind::Reingest, given, false).await
}

/// Which parked messages to drop, as for reingest, and `"confirm": true`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = PurgeInvalidRequest)]
pub struct PurgeBody {
    #[serde(default)]
    all: bool,
    #[serde(default)]
    ids: Vec<Uuid>,
    reason: Option<String>,
    /// Must be `true`: a purge cannot be undone.
    #[serde(default)]
    confirm: bool,
}

/// Drops parked messages for good, in the background.
#[utoipa::path(
    post,
    path = "/invalid/purge",
    tag = "invalid",
    operation_id = "purge_invalid",
    request_body = PurgeBody,
    responses(
        (status = 202, description = "The job, started; `Location` follows it", body = Job),
        (status = 400, response = Malformed),
        (status = 403, response = Forbidden),
        (status = 413, response = TooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Validation),
        (status = 503, response = Unavailable),
    )
)]
pub async fn purge(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Json(body): Json<PurgeBody>,
) -> Result<impl IntoResponse, Problem> {
    let given = Selected {
        all: body.all,
        ids: body.ids,
        reason: body.reason,
    };
    start(state, caller, Kind::Purge, given, body.confirm).await
}

/// A reingest or purge job and its progress, from any `api` process.
#[utoipa::path(
    get,
    path = "/invalid/jobs/{id}",
    tag = "invalid",
    operation_id = "get_invalid_job",
    params(("id" = Uuid, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The job", body = Job),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
    )
)]
pub async fn get_job(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<impl IntoResponse, Problem> {
    Ok(axum::Json(jobs::get(&state.pool, &caller, id).await?))
}
