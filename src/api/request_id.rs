//! The id of the request being answered: the caller's `x-request-id` when it sends a
//! sane one, else a new one; held in a task-local for the problems and logs of the
//! request.

use std::future::Future;
use std::sync::Arc;

use axum::extract::Request;
use axum::http::HeaderName;

pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

tokio::task_local! {
    static CURRENT: Arc<str>;
}

/// The id of the request being answered, for problems and logs.
pub fn current_request_id() -> Option<String> {
    CURRENT.try_with(|id| id.to_string()).ok()
}

/// A caller's id is kept when it is 1–128 visible ASCII characters; else a new one.
pub fn from_request(request: &Request) -> Arc<str> {
    request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(Arc::from)
        .unwrap_or_else(|| Arc::from(uuid::Uuid::now_v7().simple().to_string()))
}

/// Runs `f` (the rest of the request) with `id` as the current request id.
pub async fn scope<F: Future>(id: Arc<str>, f: F) -> F::Output {
    CURRENT.scope(id, f).await
}
