//! Request extractors whose every rejection is a [`Problem`]: JSON bodies (content type
//! checked, field paths named), path and query values, and the authenticated caller.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::edge::MAX_BODY;
use super::problem::{Kind, Problem};
use crate::service::Caller;

/// A JSON body. Needs `Content-Type: application/json` (or `…+json`).
pub struct Json<T>(pub T);

/// A JSON body that may be left out (an empty body is `None`).
pub struct OptionalJson<T>(pub Option<T>);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Problem> {
        let bytes = body(request, state).await?;
        if bytes.is_empty() {
            return Err(Problem::new(
                Kind::Malformed,
                "the request needs a JSON body",
            ));
        }
        parse_json(&bytes).map(Json)
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for OptionalJson<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Problem> {
        let empty = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v == "0")
            || !request.headers().contains_key(header::CONTENT_TYPE);
        let bytes = if empty {
            Bytes::from_request(request, state)
                .await
                .unwrap_or_default()
        } else {
            body(request, state).await?
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(None));
        }
        parse_json(&bytes).map(|v| OptionalJson(Some(v)))
    }
}

fn is_json(request: &Request) -> bool {
    let Some(value) = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

async fn body<S: Send + Sync>(request: Request, state: &S) -> Result<Bytes, Problem> {
    if !is_json(&request) {
        return Err(Problem::new(
            Kind::UnsupportedMediaType,
            "send the body with Content-Type: application/json",
        ));
    }
    Bytes::from_request(request, state)
        .await
        .map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                Problem::new(
                    Kind::TooLarge,
                    format!("the body is larger than {MAX_BODY} bytes"),
                )
            } else {
                Problem::new(Kind::Malformed, "the body could not be read")
            }
        })
}

/// JSON into `T`: bad syntax is malformed (400); a value of the wrong type, a missing
/// or unknown field is a validation error (422) naming the field's path.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            Problem::new(
                Kind::Malformed,
                format!("the body is not valid JSON: {inner}"),
            )
        } else {
            let message = inner.to_string();
            let message = strip_position(&message);
            let field = match (path.as_str(), named_field(message)) {
                (".", Some(named)) => named.to_string(),
                (".", None) => "body".to_string(),
                (_, Some(named)) if !path.ends_with(named) => format!("{path}.{named}"),
                _ => path,
            };
            Problem::field(Kind::Validation, &field, message)
        }
    })?;
    deserializer
        .end()
        .map_err(|e| Problem::new(Kind::Malformed, format!("the body is not valid JSON: {e}")))?;
    Ok(value)
}

/// The field a "missing field `url`" or "unknown field `colour`, expected …" names.
fn named_field(message: &str) -> Option<&str> {
    let rest = message
        .strip_prefix("missing field `")
        .or_else(|| message.strip_prefix("unknown field `"))?;
    rest.split('`').next()
}

/// serde_json ends data errors with " at line 1 column 20": noise for a named field.
fn strip_position(message: &str) -> &str {
    message
        .rfind(" at line ")
        .map_or(message, |at| &message[..at])
}

/// A path parameter; a value that does not parse (an id that is not a UUID) is 404: no
/// such resource can exist.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| Path(v))
            .map_err(|_| Problem::new(Kind::NotFound, "no such resource (malformed id)"))
    }
}

/// Query parameters; a value of the wrong type or an unknown parameter is a validation
/// error naming it.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        let query = parts.uri.query().unwrap_or("");
        let deserializer =
            serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(deserializer)
            .map(Query)
            .map_err(|error| {
                let path = error.path().to_string();
                let message = error.into_inner().to_string();
                let field = match (path.as_str(), named_field(&message)) {
                    (".", Some(named)) => named.to_string(),
                    (".", None) => "query".to_string(),
                    _ => path,
                };
                Problem::field(Kind::Validation, &field, message)
            })
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Problem;

    /// The caller the authentication layer found (`super::edge::authenticate`).
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| Problem::new(Kind::Unauthorized, "send Authorization: Bearer <token>"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Input {
        url: String,
        rate_limit: Option<i32>,
    }

    #[test]
    fn body_errors_say_which_field_and_whether_it_was_json_at_all() {
        for (body, kind, field) in [
            (
                &br#"{"url": "x", "rate_limit": "fast"}"#[..],
                Kind::Validation,
                Some("rate_limit"),
            ),
            (br#"{"url": 5}"#, Kind::Validation, Some("url")),
            (br#"{"rate_limit": 5}"#, Kind::Validation, Some("url")),
            (
                br#"{"url": "x", "colour": 1}"#,
                Kind::Validation,
                Some("colour"),
            ),
            (br#"{"url": "x""#, Kind::Malformed, None),
            (br#"{"url": "x"} trailing"#, Kind::Malformed, None),
            (br#"{"url": "x", "#, Kind::Malformed, None),
            (br#""just text""#, Kind::Validation, Some("body")),
        ] {
            let problem = parse_json::<Input>(body).unwrap_err();
            assert_eq!(problem.kind, kind, "{}", String::from_utf8_lossy(body));
            if let Some(field) = field {
                assert_eq!(problem.errors.len(), 1, "{}", problem.detail);
                assert_eq!(problem.errors[0].field, field, "{problem:?}");
                assert!(!problem.errors[0].message.contains("line 1"), "{problem:?}");
            }
        }
        assert!(parse_json::<Input>(br#"{"url": "x"}"#).is_ok());
    }
}
