//! The problem responses of the OpenAPI document, one named component per kind
//! (`crate::api::problem::Kind`), which handlers cite as `(status = 404, response =
//! NotFound)` and the document (`super::doc`) adds to every operation where they apply.

use utoipa::openapi::{RefOr, Response};
use utoipa::ToResponse;

use crate::api::problem::Kind;

/// A named response component for one kind of problem, referenced by handlers as
/// `(status = 404, response = NotFound)`.
macro_rules! problem_responses {
    ($($name:ident => $kind:expr, $detail:literal;)*) => {
        $(
            pub struct $name;

            impl<'r> ToResponse<'r> for $name {
                fn response() -> (&'r str, RefOr<Response>) {
                    (stringify!($name), $kind.openapi_response($detail).into())
                }
            }
        )*
    };
}

problem_responses! {
    Malformed => Kind::Malformed, "the body is not valid JSON: EOF while parsing an object at line 1 column 12";
    Unauthorized => Kind::Unauthorized, "send Authorization: Bearer <token> with a valid token";
    Forbidden => Kind::Forbidden, "tokens and the parking queue are the admin's";
    NotFound => Kind::NotFound, "no such resource";
    Conflict => Kind::Conflict, "the delivery is pending and already queued";
    TooLarge => Kind::TooLarge, "the body is larger than 1048576 bytes";
    UnsupportedMediaType => Kind::UnsupportedMediaType, "send the body with Content-Type: application/json";
    Validation => Kind::Validation, "url: relative URL without a base";
    Unavailable => Kind::Unavailable, "a dependency is unavailable; try again";
    Internal => Kind::Internal, "an internal error occurred; quote the request id to the operator";
}
