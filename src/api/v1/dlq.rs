//! `/dlq`: the dead-letter queue — list with filters and a total, redrive and purge as
//! background jobs (`202` with the job; `GET /dlq/jobs/{id}` follows it)
//! (`crate::service::dlq`).

use std::sync::Arc;

use axum::extract::State;
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::api::extract::{Json, Path, Query};
use crate::api::problem::Problem;
use crate::api::v1::responses::{
    Malformed, NotFound, TooLarge, Unavailable, UnsupportedMediaType, Validation,
};
use crate::api::ApiState;
use crate::service::dlq::{self, JobRequest, Kind};
use crate::service::{Caller, PageRequest};
use crate::store::dlq::Filter;
use crate::store::dlq_jobs::Job;

/// What narrows the dead-letter queue; every field narrows further.
#[derive(Deserialize, IntoParams, ToSchema, Default)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DlqQuery {
    /// Only events of this tenant (a tenant token: its own anyway).
    tenant_id: Option<String>,
    endpoint_id: Option<Uuid>,
    /// `retries_exhausted`, `gone`, `endpoint_disabled`, `endpoint_deleted` or
    /// `unknown` (an earlier version's).
    reason: Option<String>,
    /// The exact event type.
    event_type: Option<String>,
    /// Dead-lettered at or after.
    since: Option<DateTime<Utc>>,
    /// Dead-lettered before.
    until: Option<DateTime<Utc>>,
    /// Page size, 1 to 1,000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// The `next_cursor` of the page before.
    cursor: Option<String>,
}

/// Dead deliveries, newest first, with the total the filter selects.
#[utoipa::path(
    get,
    path = "/dlq",
    tag = "dlq",
    operation_id = "list_dlq",
    params(DlqQuery),
    responses(
        (status = 200, description = "One page of the dead-letter queue", body = crate::service::dlq::DeadPage),
        (status = 422, response = Validation),
    )
)]
pub async fn list(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Query(q): Query<DlqQuery>,
) -> Result<impl IntoResponse, Problem> {
    let page = PageRequest::new(q.limit, q.cursor)?;
    let filter = Filter {
        scope: None,
        tenant_id: q.tenant_id,
        endpoint_id: q.endpoint_id,
        reason: q.reason,
        event_type: q.event_type,
        since: q.since,
        until: q.until,
        delivery_ids: None,
    };
    Ok(axum::Json(
        dlq::list(&state.pool, &caller, filter, page).await?,
    ))
}

/// Which dead deliveries a job takes: `"all": true`, `delivery_ids`, or a filter;
/// given together, each narrows.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = DlqJobRequest)]
pub struct JobBody {
    #[serde(default)]
    all: bool,
    delivery_ids: Option<Vec<Uuid>>,
    tenant_id: Option<String>,
    endpoint_id: Option<Uuid>,
    reason: Option<String>,
    event_type: Option<String>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    /// Redrive only: enable the disabled endpoints of the selected deliveries (closing
    /// their breakers) instead of refusing them.
    #[serde(default)]
    enable_endpoints: bool,
    /// Purge only: must be `true` (the API's `--yes`).
    #[serde(default)]
    confirm: bool,
}

impl JobBody {
    fn request(self, kind: Kind) -> JobRequest {
        JobRequest {
            kind,
            all: self.all,
            enable_endpoints: self.enable_endpoints,
            filter: Filter {
                scope: None,
                tenant_id: self.tenant_id,
                endpoint_id: self.endpoint_id,
                reason: self.reason,
                event_type: self.event_type,
                since: self.since,
                until: self.until,
                delivery_ids: self.delivery_ids,
            },
        }
    }
}

async fn start(
    state: Arc<ApiState>,
    caller: Caller,
    request: JobRequest,
) -> Result<impl IntoResponse, Problem> {
    let job = dlq::start(&state.pool, &caller, request).await?;
    let location = format!("/api/v1/dlq/jobs/{}", job.id);
    let answer = job.clone();
    let (settings, pool) = (state.settings.clone(), state.pool.clone());
    tokio::spawn(async move {
        let _ = dlq::run(&settings, &pool, job, |_| {}).await;
    });
    Ok(super::accepted(location, answer))
}

/// Sends dead deliveries again with a fresh retry schedule, in the background. Those
/// whose endpoint is disabled are refused (see `refusals`) unless `enable_endpoints`;
/// those whose endpoint is deleted always are.
#[utoipa::path(
    post,
    path = "/dlq/redrive",
    tag = "dlq",
    operation_id = "redrive_dlq",
    request_body = JobBody,
    responses(
        (status = 202, description = "The job, started; `Location` follows it", body = Job),
        (status = 400, response = Malformed),
        (status = 413, response = TooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Validation),
        (status = 503, response = Unavailable),
    )
)]
pub async fn redrive(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Json(body): Json<JobBody>,
) -> Result<impl IntoResponse, Problem> {
    if body.confirm {
        return Err(
            crate::service::ServiceError::invalid("confirm", "only a purge takes confirm").into(),
        );
    }
    start(state, caller, body.request(Kind::Redrive)).await
}

/// Takes dead deliveries out of the dead-letter queue, in the background; their
/// records stay `failed`, with `purged_at`. Needs `"confirm": true`.
#[utoipa::path(
    post,
    path = "/dlq/purge",
    tag = "dlq",
    operation_id = "purge_dlq",
    request_body = JobBody,
    responses(
        (status = 202, description = "The job, started; `Location` follows it", body = Job),
        (status = 400, response = Malformed),
        (status = 413, response = TooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Validation),
        (status = 503, response = Unavailable),
    )
)]
pub async fn purge(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Json(body): Json<JobBody>,
) -> Result<impl IntoResponse, Problem> {
    if !body.confirm {
        return Err(crate::service::ServiceError::invalid(
            "confirm",
            "a purge cannot be undone: send \"confirm\": true",
        )
        .into());
    }
    start(state, caller, body.request(Kind::Purge)).await
}

/// A redrive or purge job and its progress.
#[utoipa::path(
    get,
    path = "/dlq/jobs/{id}",
    tag = "dlq",
    operation_id = "get_dlq_job",
    params(("id" = Uuid, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The job", body = Job),
        (status = 404, response = NotFound),
    )
)]
pub async fn get_job(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<impl IntoResponse, Problem> {
    Ok(axum::Json(dlq::get(&state.pool, &caller, id).await?))
}
