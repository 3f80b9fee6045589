//! The admin API, `/api/v1` (contract §8): every route in one table, which builds the
//! router and which tests walk (a route added without a tenant check fails them); and
//! its OpenAPI document (`doc`), public, outside the table and its authentication.

mod dlq;
mod doc;
mod endpoints;
mod invalid;
mod records;
mod responses;
mod tokens;

use std::sync::Arc;

use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{get, on, MethodFilter};
use axum::{middleware, Router};

use super::edge;
use super::ApiState;

pub use doc::{openapi, openapi_json};

/// One route of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub method: Method,
    /// axum's syntax: `/endpoints/{id}`.
    pub path: &'static str,
}

struct Table {
    router: Router<Arc<ApiState>>,
    routes: Vec<Route>,
}

impl Table {
    fn add<H, T>(mut self, method: Method, path: &'static str, handler: H) -> Self
    where
        H: Handler<T, Arc<ApiState>>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone()).expect("a routable method");
        self.router = self.router.route(path, on(filter, handler));
        self.routes.push(Route { method, path });
        self
    }
}

fn table() -> Table {
    let table = Table {
        router: Router::new(),
        routes: Vec::new(),
    };
    table
        .add(Method::GET, "/endpoints", endpoints::list)
        .add(Method::POST, "/endpoints", endpoints::create)
        .add(Method::GET, "/endpoints/{id}", endpoints::get)
        .add(Method::PATCH, "/endpoints/{id}", endpoints::update)
        .add(Method::DELETE, "/endpoints/{id}", endpoints::delete)
        .add(
            Method::POST,
            "/endpoints/{id}/rotate-secret",
            endpoints::rotate_secret,
        )
        .add(Method::POST, "/endpoints/{id}/test", endpoints::test)
        .add(Method::POST, "/endpoints/{id}/replay", endpoints::replay)
        .add(Method::GET, "/replays/{id}", endpoints::get_replay)
        .add(Method::GET, "/events", records::list_events)
        .add(Method::GET, "/events/{id}", records::get_event)
        .add(Method::GET, "/deliveries", records::list_deliveries)
        .add(Method::GET, "/deliveries/{id}", records::get_delivery)
        .add(Method::POST, "/deliveries/{id}/retry", records::retry)
        .add(Method::GET, "/dlq", dlq::list)
        .add(Method::POST, "/dlq/redrive", dlq::redrive)
        .add(Method::POST, "/dlq/purge", dlq::purge)
        .add(Method::GET, "/dlq/jobs/{id}", dlq::get_job)
        .add(Method::GET, "/invalid", invalid::list)
        .add(Method::POST, "/invalid/reingest", invalid::reingest)
        .add(Method::POST, "/invalid/purge", invalid::purge)
        .add(Method::GET, "/invalid/jobs/{id}", invalid::get_job)
        .add(Method::GET, "/tokens", tokens::list)
        .add(Method::POST, "/tokens", tokens::create)
        .add(Method::DELETE, "/tokens/{id}", tokens::revoke)
}

/// `202 Accepted` with a job started in the background and where to follow it.
pub(super) fn accepted(location: String, job: impl serde::Serialize) -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        axum::http::StatusCode::ACCEPTED,
        [(axum::http::header::LOCATION, location)],
        axum::Json(job),
    )
        .into_response()
}

/// Every route of the admin API, relative to `/api/v1`.
pub fn routes() -> Vec<Route> {
    table().routes
}

/// The admin API's router, every route of the table behind authentication; the
/// OpenAPI document without.
pub fn router(state: Arc<ApiState>) -> Router<Arc<ApiState>> {
    table()
        .router
        .method_not_allowed_fallback(edge::no_method)
        .layer(middleware::from_fn_with_state(state, edge::authenticate))
        .route(doc::DOCUMENT, get(doc::document).fallback(edge::no_method))
}
