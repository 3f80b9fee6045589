//! `/endpoints`: thin handlers over `crate::service::endpoints`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::api::extract::{Json, OptionalJson, Path, Query};
use crate::api::problem::Problem;
use crate::api::v1::responses::{
    Conflict, Malformed, NotFound, TooLarge, UnsupportedMediaType, Validation,
};
use crate::api::ApiState;
use crate::service::endpoints::{self as service, EndpointChanges, EndpointInput, ListFilter};
use crate::service::replay::{self, ReplayInput};
use crate::service::{resend, Caller, PageRequest};
use crate::store::endpoints::BatchView;

/// A new endpoint.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = NewEndpoint)]
pub struct CreateBody {
    /// Where deliveries are POSTed (`https://…`; private addresses are refused at
    /// connect time unless the deployment allows them).
    url: String,
    /// Event-type patterns (`sales.order.*`, `sales.#`), at least one.
    event_types: Vec<String>,
    /// The endpoint's tenant; with a tenant token, its own (another is refused).
    tenant_id: Option<String>,
    /// The signing secret (`whsec_…`); generated when left out.
    secret: Option<String>,
    /// `standard` (default), `legacy` (`X-Signature`, `X-Event`) or `both`.
    signature: Option<String>,
    /// Static headers sent with every request; their values are never shown again.
    headers: Option<BTreeMap<String, String>>,
    /// Requests per minute, 1 to 1,000,000.
    rate_limit: Option<i64>,
    /// A payload filter (docs/filters.md): only events of its types whose content
    /// passes, e.g. `{"data.amount": {"$gte": 1000}, "data.currency": {"$in": ["EUR"]}}`.
    /// Left out or `null`: every event of its types.
    #[schema(value_type = Option<Object>)]
    filter: Option<serde_json::Value>,
    /// Its own request timeout (`5s`, `500ms`), at most the deployment's
    /// `delivery.max_timeout`; left out: `delivery.timeout`.
    #[schema(example = "5s")]
    timeout: Option<String>,
    /// Its own delays before each retry (`["1m", "5m", "30m"]`), at most 20, each one
    /// of the delays the deployment declares queues for (`delivery.retry_schedule` and
    /// `delivery.retry_delays`); `[]`: no retry. Left out: `delivery.retry_schedule`.
    #[schema(example = json!(["1m", "5m", "15m"]))]
    retry_schedule: Option<Vec<String>>,
    /// Batch its events: up to `max_events` (2 to `delivery.batch_max_events`) in one
    /// request, gathered for at most `window` (up to `delivery.batch_max_window`) after
    /// the first is ready; the format is in docs/receivers.md. Left out or `null`: one
    /// event per request.
    batch: Option<BatchView>,
    /// Deliver each ordering key's events one at a time, in publish order
    /// (docs/ordering.md). Events carry the key in the AMQP header `x-ordering-key` or
    /// the CloudEvents attribute `partitionkey` (`cloudEvents:partitionkey`). Cannot be
    /// combined with `batch`.
    #[serde(default)]
    #[schema(default = false)]
    ordering: bool,
    name: Option<String>,
    description: Option<String>,
}

/// Creates an endpoint; the answer carries its signing secret, shown only here.
#[utoipa::path(
    post,
    path = "/endpoints",
    tag = "endpoints",
    operation_id = "create_endpoint",
    request_body = CreateBody,
    responses(
        (status = 201, description = "Created, with its secret", body = crate::service::endpoints::Created),
        (status = 400, response = Malformed),
        (status = 409, response = Conflict),
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
    let input = EndpointInput {
        url: body.url,
        event_types: body.event_types,
        tenant_id: body.tenant_id,
        secret: body.secret,
        signature: body.signature,
        headers: body.headers,
        rate_limit: body.rate_limit,
        filter: body.filter,
        timeout: body.timeout,
        retry_schedule: body.retry_schedule,
        batch: body.batch,
        ordering: body.ordering,
        name: body.name,
        description: body.description,
    };
    let created = service::create(
        &state.pool,
        &state.keys,
        state.endpoint_policy(),
        &caller,
        input,
    )
    .await?;
    Ok((StatusCode::CREATED, axum::Json(created)))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this tenant's (a tenant token: its own anyway).
    tenant_id: Option<String>,
    /// `enabled`, `failing` or `disabled`.
    state: Option<String>,
    /// Only endpoints with a pattern matching this event type.
    event_type: Option<String>,
    /// Page size, 1 to 1,000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// The `next_cursor` of the page before.
    cursor: Option<String>,
}

/// Lists endpoints, newest first.
#[utoipa::path(
    get,
    path = "/endpoints",
    tag = "endpoints",
    operation_id = "list_endpoints",
    params(ListQuery),
    responses(
        (status = 200, description = "One page of endpoints", body = crate::service::Page<crate::store::endpoints::EndpointView>),
        (status = 422, response = Validation),
    )
)]

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

/// An endpoint with its delivery statistics.
#[utoipa::path(
    get,
    path = "/endpoints/{id}",
    tag = "endpoints",
    operation_id = "get_endpoint",
    params(("id" = Uuid, Path, description = "The endpoint's id")),
    responses(
        (status = 200, description = "The endpoint", body = crate::service::endpoints::Detailed),
        (status = 404, response = NotFound),
    )
)]
pub async fn get(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<impl IntoResponse, Problem> {
    Ok(axum::Json(service::get(&state.pool, &caller, id).await?))
}

/// Changes to an endpoint: a field left out stays; `null` clears `rate_limit`,
/// `filter`, `timeout`, `retry_schedule`, `batch`, `name` and `description`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = EndpointChanges)]
pub struct UpdateBody {
    url: Option<String>,
    event_types: Option<Vec<String>>,
    /// `false` pauses deliveries; `true` resumes them (also after an automatic disable).
    enabled: Option<bool>,
    /// Requests per minute, 1 to 1,000,000; `null`: no limit.
    #[serde(default, with = "double_option")]
    rate_limit: Option<Option<i64>>,
    #[serde(default, with = "double_option")]
    name: Option<Option<String>>,
    #[serde(default, with = "double_option")]
    description: Option<Option<String>>,
    signature: Option<String>,
    headers: Option<BTreeMap<String, String>>,
    /// Replaces the payload filter (docs/filters.md); `null` removes it.
    #[serde(default, with = "double_option")]
    #[schema(value_type = Option<Object>)]
    filter: Option<Option<serde_json::Value>>,
    /// Its own request timeout, at most `delivery.max_timeout`; `null`: back to
    /// `delivery.timeout`.
    #[serde(default, with = "double_option")]
    #[schema(value_type = Option<String>, example = "5s")]
    timeout: Option<Option<String>>,
    /// Its own delays before each retry, each one the deployment declares queues for;
    /// `null`: back to `delivery.retry_schedule`.
    #[serde(default, with = "double_option")]
    #[schema(value_type = Option<Vec<String>>, example = json!(["1m", "5m", "15m"]))]
    retry_schedule: Option<Option<Vec<String>>>,
    /// Batch its events (see `EndpointInput.batch`); `null`: one event per request
    /// again.
    #[serde(default, with = "double_option")]
    #[schema(value_type = Option<BatchView>)]
    batch: Option<Option<BatchView>>,
    /// Deliver each ordering key's events one at a time, in publish order
    /// (docs/ordering.md). Events carry the key in the AMQP header `x-ordering-key` or
    /// the CloudEvents attribute `partitionkey` (`cloudEvents:partitionkey`). Cannot be
    /// combined with `batch`: turning one on while the endpoint keeps the other is
    /// refused (turn the other off in the same request).
    ordering: Option<bool>,
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

/// Changes an endpoint.
#[utoipa::path(
    patch,
    path = "/endpoints/{id}",
    tag = "endpoints",
    operation_id = "update_endpoint",
    params(("id" = Uuid, Path, description = "The endpoint's id")),
    request_body = UpdateBody,
    responses(
        (status = 200, description = "The endpoint as changed", body = crate::store::endpoints::EndpointView),
        (status = 400, response = Malformed),
        (status = 404, response = NotFound),
        (status = 413, response = TooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Validation),
    )
)]
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
        filter: body.filter,
        timeout: body.timeout,
        retry_schedule: body.retry_schedule,
        batch: body.batch,
        ordering: body.ordering,
    };
    Ok(axum::Json(
        service::update(
            &state.pool,
            &state.keys,
            state.endpoint_policy(),
            &caller,
            id,
            changes,
        )
        .await?,
    ))
}

/// Deletes an endpoint; nothing more is delivered to it.
#[utoipa::path(
    delete,
    path = "/endpoints/{id}",
    tag = "endpoints",
    operation_id = "delete_endpoint",
    params(("id" = Uuid, Path, description = "The endpoint's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, response = NotFound),
    )
)]
pub async fn delete(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<impl IntoResponse, Problem> {
    service::delete(&state.pool, &caller, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = SecretRotation)]
pub struct RotateBody {
    /// Hours the old secret keeps signing alongside the new one (default 24).
    #[schema(minimum = 0, maximum = 720)]
    grace_hours: Option<i64>,
}

/// Gives the endpoint a new signing secret, shown once; during the overlap deliveries
/// carry a signature by each secret. The body may be left out.
#[utoipa::path(
    post,
    path = "/endpoints/{id}/rotate-secret",
    tag = "endpoints",
    operation_id = "rotate_endpoint_secret",
    params(("id" = Uuid, Path, description = "The endpoint's id")),
    request_body(content = RotateBody, description = "May be left out (an empty body)"),
    responses(
        (status = 200, description = "The new secret", body = crate::service::endpoints::Rotated),
        (status = 400, response = Malformed),
        (status = 404, response = NotFound),
        (status = 413, response = TooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Validation),
    )
)]

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

/// Sends a signed `herald.test` event now; answers with the receiver's reaction.
#[utoipa::path(
    post,
    path = "/endpoints/{id}/test",
    tag = "endpoints",
    operation_id = "test_endpoint",
    params(("id" = Uuid, Path, description = "The endpoint's id")),
    responses(
        (status = 200, description = "What the receiver did (`success` false for an error status or no answer)", body = crate::service::resend::TestOutcome),
        (status = 404, response = NotFound),
    )
)]
pub async fn test(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<impl IntoResponse, Problem> {
    Ok(axum::Json(
        resend::test(&state.settings, &state.pool, &state.keys, &caller, id).await?,
    ))
}

/// A window of stored events to send again.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ReplayWindow)]
pub struct ReplayBody {
    /// Start of the window (events received at or after); required.
    #[schema(required = true, value_type = String, format = DateTime)]
    since: Option<chrono::DateTime<chrono::Utc>>,
    /// End of the window (default: now).
    until: Option<chrono::DateTime<chrono::Utc>>,
    /// Only events whose delivery to this endpoint failed.
    #[serde(default)]
    only_failed: bool,
}

/// Starts a replay in the background; answers with the job and how many events it
/// queues (`GET /replays/{id}` follows its progress).
#[utoipa::path(
    post,
    path = "/endpoints/{id}/replay",
    tag = "replays",
    operation_id = "replay_endpoint",
    params(("id" = Uuid, Path, description = "The endpoint's id")),
    request_body = ReplayBody,
    responses(
        (status = 202, description = "The job, started", body = crate::service::replay::Started),
        (status = 400, response = Malformed),
        (status = 404, response = NotFound),
        (status = 413, response = TooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Validation),
    )
)]
pub async fn replay(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Path(id): Path<Uuid>,
    Json(body): Json<ReplayBody>,
) -> Result<impl IntoResponse, Problem> {
    let input = ReplayInput {
        since: body.since,
        until: body.until,
        only_failed: body.only_failed,
        retention: state.settings.retention.window,
    };
    let job = replay::start(&state.pool, &caller, id, input).await?;
    let answer = replay::Started::from(&job);
    let (settings, pool) = (state.settings.clone(), state.pool.clone());
    tokio::spawn(async move {
        let _ = replay::run(&settings, &pool, job, |_| {}).await;
    });
    Ok((StatusCode::ACCEPTED, axum::Json(answer)))
}

/// A replay job and its progress.
#[utoipa::path(
    get,
    path = "/replays/{id}",
    tag = "replays",
    operation_id = "get_replay",
    params(("id" = Uuid, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The job", body = crate::store::replays::Replay),
        (status = 404, response = NotFound),
    )
)]
pub async fn get_replay(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<impl IntoResponse, Problem> {
    Ok(axum::Json(replay::get(&state.pool, &caller, id).await?))
}
