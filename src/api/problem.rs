//! Every error of the HTTP API as an RFC 9457 problem (`application/problem+json`):
//! a stable `type` per kind (listed in docs/api.md), `title`, `status`, `detail`, the
//! request id, and for validation errors the fields at fault. A 500 carries no
//! internal text: its cause is logged under the same request id.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response as OpenApiResponse, ResponseBuilder};
use utoipa::{PartialSchema, ToSchema};

use super::request_id::current_request_id;
use crate::service::{FieldError, ServiceError};

/// The kinds of problem; each is one `type` URI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The request cannot be read: not JSON, a bad path or query value.
    Malformed,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    Conflict,
    TooLarge,
    UnsupportedMediaType,
    /// Well-formed, but a field's value is wrong.
    Validation,
    Unavailable,
    Internal,
}

impl Kind {
    pub const ALL: [Kind; 11] = [
        Kind::Malformed,
        Kind::Unauthorized,
        Kind::Forbidden,
        Kind::NotFound,
        Kind::MethodNotAllowed,
        Kind::Conflict,
        Kind::TooLarge,
        Kind::UnsupportedMediaType,
        Kind::Validation,
        Kind::Unavailable,
        Kind::Internal,
    ];

    pub fn slug(self) -> &'static str {
        match self {
            Kind::Malformed => "malformed-request",
            Kind::Unauthorized => "unauthorized",
            Kind::Forbidden => "forbidden",
            Kind::NotFound => "not-found",
            Kind::MethodNotAllowed => "method-not-allowed",
            Kind::Conflict => "conflict",
            Kind::TooLarge => "payload-too-large",
            Kind::UnsupportedMediaType => "unsupported-media-type",
            Kind::Validation => "validation",
            Kind::Unavailable => "unavailable",
            Kind::Internal => "internal",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Kind::Malformed => "The request could not be read",
            Kind::Unauthorized => "Missing or unknown bearer token",
            Kind::Forbidden => "This operation needs the admin token",
            Kind::NotFound => "Not found",
            Kind::MethodNotAllowed => "Method not allowed on this route",
            Kind::Conflict => "Conflicts with the current state",
            Kind::TooLarge => "The request body is too large",
            Kind::UnsupportedMediaType => "The body must be application/json",
            Kind::Validation => "Some fields are invalid",
            Kind::Unavailable => "Temporarily unavailable",
            Kind::Internal => "Internal error",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Kind::Malformed => StatusCode::BAD_REQUEST,
            Kind::Unauthorized => StatusCode::UNAUTHORIZED,
            Kind::Forbidden => StatusCode::FORBIDDEN,
            Kind::NotFound => StatusCode::NOT_FOUND,
            Kind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Kind::Conflict => StatusCode::CONFLICT,
            Kind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Kind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Kind::Validation => StatusCode::UNPROCESSABLE_ENTITY,
            Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable `type` URI.
    pub fn uri(self) -> String {
        format!("urn:herald:problem:{}", self.slug())
    }
}

#[derive(Debug)]
pub struct Problem {
    pub kind: Kind,
    pub detail: String,
    pub errors: Vec<FieldError>,
}

/// An RFC 9457 problem, as every error of the API answers (`application/problem+json`).
#[derive(Serialize, ToSchema)]
#[schema(as = Problem)]
pub(super) struct Body<'a> {
    #[serde(rename = "type")]
    #[schema(value_type = ProblemType)]
    kind: String,
    /// The kind's fixed title.
    title: &'static str,
    /// The HTTP status, repeated.
    status: u16,
    /// What went wrong this time.
    detail: &'a str,
    /// The `x-request-id` of the request, which its log lines carry too.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String)]
    request_id: Option<String>,
    /// For validation errors: every field at fault, as the caller spelled it.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    errors: &'a [FieldError],
}

/// The schema of a problem's `type`: one of the stable URIs of [`Kind`].
pub(super) struct ProblemType;

impl PartialSchema for ProblemType {
    fn schema() -> RefOr<Schema> {
        let list = Kind::ALL
            .iter()
            .map(|kind| {
                format!(
                    "`{}`: {} {}",
                    kind.uri(),
                    kind.status().as_u16(),
                    kind.title()
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(Kind::ALL.iter().map(|kind| kind.uri())))
            .description(Some(format!("The kind of problem, a stable URI: {list}.")))
            .into()
    }
}

impl ToSchema for ProblemType {}

impl Kind {
    /// The OpenAPI response of this kind of problem: a problem+json body, an example.
    pub(super) fn openapi_response(self, detail: &str) -> OpenApiResponse {
        let example = serde_json::json!({
            "type": self.uri(),
            "title": self.title(),
            "status": self.status().as_u16(),
            "detail": detail,
            "request_id": "0193a0f4c2a87d41b6f1f0b3c2d1e0f9",
        });
        let mut response = ResponseBuilder::new().description(self.title()).content(
            PROBLEM_JSON,
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .example(Some(example))
                .build(),
        );
        if self == Kind::Unauthorized {
            response = response.header(
                "www-authenticate",
                HeaderBuilder::new()
                    .schema(ObjectBuilder::new().schema_type(Type::String))
                    .description(Some("`Bearer`"))
                    .build(),
            );
        }
        response.build()
    }
}

const PROBLEM_JSON: &str = "application/problem+json";

impl Problem {
    pub fn new(kind: Kind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            errors: Vec::new(),
        }
    }

    pub fn field(kind: Kind, field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        Self {
            kind,
            detail: format!("{field}: {message}"),
            errors: vec![FieldError {
                field: field.into(),
                message,
            }],
        }
    }
}

impl From<ServiceError> for Problem {
    fn from(error: ServiceError) -> Self {
        match error {
            ServiceError::Invalid(errors) => Problem {
                kind: Kind::Validation,
                detail: error_list(&errors),
                errors,
            },
            ServiceError::NotFound => Problem::new(Kind::NotFound, "no such resource"),
            ServiceError::Forbidden => Problem::new(
                Kind::Forbidden,
                "tokens and the parking queue are the admin's",
            ),
            ServiceError::Conflict(detail) => Problem::new(Kind::Conflict, detail),
            ServiceError::Unavailable(what) => {
                tracing::warn!(%what, "request failed: a dependency is unavailable");
                Problem::new(Kind::Unavailable, "a dependency is unavailable; try again")
            }
            ServiceError::Internal(cause) => {
                tracing::error!(error = %format!("{cause:#}"), "request failed: internal error");
                Problem::new(
                    Kind::Internal,
                    "an internal error occurred; quote the request id to the operator",
                )
            }
        }
    }
}

fn error_list(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("{}: {}", e.field, e.message))
        .collect::<Vec<_>>()
        .join("; ")
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.kind.status();
        let body = Body {
            kind: self.kind.uri(),
            title: self.kind.title(),
            status: status.as_u16(),
            detail: &self.detail,
            request_id: current_request_id(),
            errors: &self.errors,
        };
        let json = serde_json::to_vec(&body).expect("a problem serialises");
        let mut response = (status, json).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if self.kind == Kind::Unauthorized {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_type_and_a_status_of_its_class() {
        let mut slugs: Vec<_> = Kind::ALL.iter().map(|k| k.slug()).collect();
        slugs.sort();
        slugs.dedup();
        assert_eq!(slugs.len(), Kind::ALL.len());
        for kind in Kind::ALL {
            let server = kind.status().is_server_error();
            assert_eq!(
                server,
                matches!(kind, Kind::Internal | Kind::Unavailable),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn an_internal_error_shows_nothing_of_its_cause() {
        let problem = Problem::from(ServiceError::Internal(anyhow::anyhow!(
            "relation herald.secret_table does not exist"
        )));
        assert!(!problem.detail.contains("relation"));
        assert_eq!(problem.kind, Kind::Internal);
    }
}
