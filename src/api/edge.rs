//! What every request of the API passes through before its handler: a request id (the
//! caller's `x-request-id` when it sends a sane one), a span carrying it, a bound on
//! the body, and authentication; and the answers for routes and methods that do not
//! exist. Each of them answers in problem+json.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use tracing::Instrument;

use super::problem::{Kind, Problem};
use super::request_id::{self, REQUEST_ID};
use super::ApiState;
use crate::service::{tokens, Caller};

/// The largest request body the API reads: 1 MiB.
pub const MAX_BODY: usize = 1024 * 1024;
/// A larger body is read and thrown away up to this much, so that the client gets the
/// 413 rather than a reset connection; beyond it the connection is closed.
const DRAIN_LIMIT: usize = 16 * MAX_BODY;
const DRAIN_TIME: Duration = Duration::from_secs(10);

/// Gives the request its id, a span for every log line it causes, and the id back on
/// the response.
pub async fn trace(request: Request, next: Next) -> Response {
    let id = request_id::from_request(&request);
    let span = tracing::info_span!(
        "http_request",
        request_id = %id,
        method = %request.method(),
        path = %request.uri().path(),
        status = tracing::field::Empty,
    );
    let mut response =
        request_id::scope(id.clone(), next.run(request).instrument(span.clone())).await;
    span.record("status", response.status().as_u16());
    if response.status().is_server_error() {
        span.in_scope(|| tracing::warn!(status = response.status().as_u16(), "request failed"));
    }
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID.clone(), value);
    }
    response
}

/// Refuses a body announced larger than [`MAX_BODY`] before any handler, after reading
/// (and dropping) what the client sends: a client still writing its body would not
/// see an early answer, only a broken pipe.
pub async fn limit_body(request: Request, next: Next) -> Response {
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match announced {
        Some(length) if length > MAX_BODY as u64 => {
            let drained = length <= DRAIN_LIMIT as u64
                && tokio::time::timeout(DRAIN_TIME, drain(request.into_body()))
                    .await
                    .is_ok();
            let mut response = Problem::new(
                Kind::TooLarge,
                format!("the body is larger than {MAX_BODY} bytes"),
            )
            .into_response();
            if !drained {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            response
        }
        _ => next.run(request).await,
    }
}

async fn drain(body: Body) {
    let mut stream = body.into_data_stream();
    let mut read = 0;
    while let Some(Ok(chunk)) = stream.next().await {
        read += chunk.len();
        if read > DRAIN_LIMIT {
            return;
        }
    }
}

/// Finds the caller of `Authorization: Bearer <token>` and hands it to the handlers
/// (`Caller` is an extractor); no token or an unknown one is 401.
pub async fn authenticate(
    State(state): State<Arc<ApiState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .trim();
    let admin = state.settings.api.admin_token.expose();
    match tokens::authenticate(&state.pool, admin, given).await {
        Ok(Some(caller)) => {
            if let Caller::Tenant(tenant) = &caller {
                tracing::debug!(%tenant, "tenant token");
            }
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Ok(None) => Problem::new(
            Kind::Unauthorized,
            "send Authorization: Bearer <token> with a valid token",
        )
        .into_response(),
        Err(error) => Problem::from(error).into_response(),
    }
}

/// No such route.
pub async fn no_route() -> Problem {
    Problem::new(Kind::NotFound, "no such route")
}

/// The route exists, the method does not.
pub async fn no_method() -> Problem {
    Problem::new(
        Kind::MethodNotAllowed,
        "this route does not take that method",
    )
}
