//! The admin API's OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]`
//! and the types they read and answer. Served at `/api/v1/openapi.json` (without a
//! token: it describes, it reveals nothing) and checked in as `docs/openapi.json`; a
//! test fails when that file is stale (`make openapi` writes it again).
//!
//! Every operation but the document itself needs a bearer token, and each may answer
//! 401 (no or an unknown token), 500 and 503 (the database or broker away): those
//! responses are added here to every operation, the others are listed at each handler.

use std::sync::LazyLock;

use utoipa::openapi::schema::{ArrayItems, Schema};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{Modify, OpenApi};

use super::responses::{
    Conflict, Forbidden, Internal, Malformed, NotFound, TooLarge, Unauthorized, Unavailable,
    UnsupportedMediaType, Validation,
};
use super::{dlq, endpoints, invalid, records, tokens};
use crate::api::problem;

/// Where the admin API lives; the document's paths are under it.
pub const PREFIX: &str = "/api/v1";
/// The path of the document itself, relative to [`PREFIX`].
pub const DOCUMENT: &str = "/openapi.json";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Herald admin API",
        description = "Endpoints, events, deliveries, replays, the dead-letter queue and tenant \
            tokens of a Herald deployment. Every request needs `Authorization: Bearer <token>`: \
            the admin token of the configuration reaches everything, a tenant token only its \
            tenant's data (another tenant's ids answer 404). Every error is an RFC 9457 problem \
            (`application/problem+json`) with a stable `type` URI. Every response carries \
            `x-request-id` (the caller's, when it sends a sane one). Lists are keyset-paginated: \
            pass a page's `next_cursor` as `cursor` for the next one.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        document,
        endpoints::list,
        endpoints::create,
        endpoints::get,
        endpoints::update,
        endpoints::delete,
        endpoints::rotate_secret,
        endpoints::test,
        endpoints::replay,
        endpoints::get_replay,
        records::list_events,
        records::get_event,
        records::list_deliveries,
        records::get_delivery,
        records::retry,
        dlq::list,
        dlq::redrive,
        dlq::purge,
        dlq::get_job,
        invalid::list,
        invalid::reingest,
        invalid::purge,
        invalid::get_job,
        tokens::list,
        tokens::create,
        tokens::revoke,
    ),
    components(
        schemas(problem::ProblemType),
        responses(
            Malformed,
            Unauthorized,
            Forbidden,
            NotFound,
            Conflict,
            TooLarge,
            UnsupportedMediaType,
            Validation,
            Unavailable,
            Internal,
        )
    ),
    modifiers(&Common),
    security(("bearer" = [])),
    tags(
        (name = "endpoints", description = "Subscribers: where events of some types are delivered, signed"),
        (name = "replays", description = "Stored events sent again to an endpoint, in the background"),
        (name = "events", description = "Events as received from the broker"),
        (name = "deliveries", description = "One event to one endpoint, and its attempts"),
        (name = "dlq", description = "Failed deliveries and their redrive"),
        (name = "invalid", description = "The parking queue: messages Herald could not accept, listed, reingested or purged (admin only)"),
        (name = "tokens", description = "Tenant tokens, the admin's to manage"),
        (name = "meta", description = "This document"),
    )
)]
struct ApiDoc;

/// The bearer scheme; the problem schema; 401, 500 and 503 on every authenticated
/// operation; the paths under [`PREFIX`].
struct Common;

impl Modify for Common {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The admin token of the configuration, or a tenant token (`hrld_…`)",
                    ))
                    .build(),
            ),
        );
        let mut schemas = Vec::new();
        <problem::Body as utoipa::ToSchema>::schemas(&mut schemas);
        components.schemas.insert(
            "Problem".into(),
            <problem::Body as utoipa::PartialSchema>::schema(),
        );
        components.schemas.extend(schemas);

        // A generic's argument is inlined by utoipa: refer to its component instead.
        for (name, schema) in components.schemas.iter_mut() {
            let Some(item) = name.strip_prefix("Page_") else {
                continue;
            };
            let RefOr::T(Schema::Object(page)) = schema else {
                panic!("{name} is an object")
            };
            let Some(RefOr::T(Schema::Array(data))) = page.properties.get_mut("data") else {
                panic!("{name} has an array `data`")
            };
            data.items = ArrayItems::RefOrSchema(Box::new(Ref::from_schema_name(item).into()));
        }

        let paths = std::mem::take(&mut doc.paths.paths);
        for (path, mut item) in paths {
            let public = path == DOCUMENT;
            for operation in operations(&mut item) {
                if operation.operation_id.as_deref() == Some("rotate_endpoint_secret") {
                    if let Some(body) = &mut operation.request_body {
                        body.required = None; // OptionalJson: an empty body is fine
                    }
                }
                if public {
                    // No security requirement at all, not even the document's default.
                    operation.security = Some(Vec::new());
                    continue;
                }
                let responses = &mut operation.responses.responses;
                for (status, name) in [
                    ("401", "Unauthorized"),
                    ("500", "Internal"),
                    ("503", "Unavailable"),
                ] {
                    responses
                        .entry(status.into())
                        .or_insert_with(|| Ref::from_response_name(name).into());
                }
            }
            doc.paths.paths.insert(format!("{PREFIX}{path}"), item);
        }
    }
}

fn operations(
    item: &mut utoipa::openapi::PathItem,
) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.options.as_mut(),
        item.head.as_mut(),
        item.patch.as_mut(),
        item.trace.as_mut(),
    ]
    .into_iter()
    .flatten()
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "meta",
    operation_id = "openapi",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json"))
)]
pub async fn document() -> impl axum::response::IntoResponse {
    static JSON: LazyLock<String> = LazyLock::new(openapi_json);
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        JSON.as_str(),
    )
}

/// The admin API's OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// [`openapi`] as pretty JSON with a final newline: what `docs/openapi.json` holds.
pub fn openapi_json() -> String {
    let mut json = openapi().to_pretty_json().expect("the document serialises");
    json.push('\n');
    json
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails when `docs/openapi.json` is not what the code generates;
    /// `UPDATE_OPENAPI=1 cargo test --lib openapi` (`make openapi`) writes it again.
    #[test]
    fn the_checked_in_openapi_document_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
        let generated = openapi_json();
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(path, &generated).expect("docs/openapi.json is writable");
            return;
        }
        let checked_in = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            checked_in == generated,
            "docs/openapi.json is stale: run `make openapi` \
             (UPDATE_OPENAPI=1 cargo test --lib openapi) and commit it"
        );
    }

    #[test]
    fn the_document_is_openapi_3_1_with_every_route_of_the_table() {
        let doc: serde_json::Value = serde_json::from_str(&openapi_json()).unwrap();
        assert!(
            doc["openapi"].as_str().unwrap().starts_with("3.1."),
            "{}",
            doc["openapi"]
        );
        for route in super::super::routes() {
            let path = format!("{PREFIX}{}", route.path);
            let method = route.method.as_str().to_ascii_lowercase();
            assert!(
                doc["paths"][&path][&method].is_object(),
                "{} {path} is not in the document",
                route.method
            );
        }
    }
}
