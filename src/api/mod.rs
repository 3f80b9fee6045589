//! The HTTP side of every role: `/healthz`, `/readyz`, `/metrics`; and for the `api`
//! role the admin API under `/api/v1` (`v1`), behind bearer tokens, and its OpenAPI
//! document at `/api/v1/openapi.json`. Every error of
//! every route is a problem (`problem`); `edge` holds what each request passes through.

mod edge;
mod extract;
mod problem;
mod request_id;
mod v1;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::middleware;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::keyring::Keyring;
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::store;
use crate::topology::Topology;

pub use problem::Kind as ProblemKind;
pub use v1::{openapi, openapi_json, routes, Route};

pub struct ApiState {
    pub settings: Arc<Settings>,
    pub pool: PgPool,
    /// What endpoint secrets are stored under.
    pub keys: Arc<Keyring>,
    pub metrics: Arc<Metrics>,
    pub readiness: Readiness,
    pub topology: Topology,
}

impl ApiState {
    /// What an endpoint may be (its URL, its own timeout and retry schedule).
    pub fn endpoint_policy(&self) -> crate::service::endpoints::EndpointPolicy {
        crate::service::endpoints::EndpointPolicy::from_settings(&self.settings.delivery)
    }
}

pub fn router(state: Arc<ApiState>, admin_api: bool) -> Router {
    let mut router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics));
    if admin_api {
        router = router.nest("/api/v1", v1::router(state.clone()));
    }
    router
        .fallback(edge::no_route)
        .layer(middleware::from_fn(edge::limit_body))
        .layer(DefaultBodyLimit::max(edge::MAX_BODY))
        .layer(middleware::from_fn(edge::trace))
        .with_state(state)
}

/// The process is alive.
async fn healthz() -> &'static str {
    "ok"
}

/// Ready for traffic: not stopping, database answering, consumers running.
async fn readyz(State(state): State<Arc<ApiState>>) -> impl IntoResponse {
    let database = tokio::time::timeout(Duration::from_secs(2), store::ping(&state.pool))
        .await
        .unwrap_or(false);
    let consumers = state.readiness.consumers_up();
    let stopping = state.readiness.stopping();
    let ready = database && consumers && !stopping;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(
            json!({ "ready": ready, "database": database, "consumers": consumers, "stopping": stopping }),
        ),
    )
}

async fn metrics(State(state): State<Arc<ApiState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// Refreshes gauges that are read rather than counted: pool usage and readiness.
pub async fn sample_gauges(
    pool: PgPool,
    metrics: Arc<Metrics>,
    readiness: Readiness,
    endpoint_states: bool,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                metrics.ready.set(0);
                return;
            }
            _ = tick.tick() => {}
        }
        let size = i64::from(pool.size());
        let idle = pool.num_idle() as i64;
        metrics.db_pool.with_label_values(&["idle"]).set(idle);
        metrics
            .db_pool
            .with_label_values(&["used"])
            .set(size - idle);
        metrics
            .db_pool_max
            .set(i64::from(pool.options().get_max_connections()));
        let ready = readiness.consumers_up() && !readiness.stopping() && size > 0;
        metrics.ready.set(i64::from(ready));
        // Once per deployment's api processes, not per role: one small aggregate.
        if endpoint_states {
            match crate::store::health::state_counts(&pool).await {
                Ok(counts) => {
                    for (state, count) in counts {
                        metrics.endpoints.with_label_values(&[state]).set(count);
                    }
                }
                Err(error) => tracing::debug!(%error, "endpoint states not sampled"),
            }
        }
    }
}
