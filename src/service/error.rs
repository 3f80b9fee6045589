//! What can go wrong in an operation, in terms a caller can act on. The API maps each
//! kind to a status and an RFC 9457 problem; the CLI prints it on one line.

use serde::Serialize;

/// One field at fault in a request, named as the caller spelled it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The input is wrong; nothing was changed.
    #[error("invalid input: {}", describe(.0))]
    Invalid(Vec<FieldError>),
    /// No such resource for this caller (also another tenant's: its existence is not
    /// revealed).
    #[error("not found")]
    NotFound,
    /// Only the admin token may do this.
    #[error("this operation needs the admin token")]
    Forbidden,
    /// The request contradicts the current state (a duplicate, a finished delivery).
    #[error("{0}")]
    Conflict(String),
    /// The database or the broker is away; the caller may try again.
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
    /// Herald's own fault. The cause is logged, never shown to the caller.
    #[error("internal error: {0:#}")]
    Internal(anyhow::Error),
}

fn describe(fields: &[FieldError]) -> String {
    fields
        .iter()
        .map(|f| format!("{}: {}", f.field, f.message))
        .collect::<Vec<_>>()
        .join("; ")
}

impl ServiceError {
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        ServiceError::Invalid(vec![FieldError {
            field: field.into(),
            message: message.into(),
        }])
    }
}

impl From<sqlx::Error> for ServiceError {
    /// Content the database refuses is the caller's input at fault (validation at the
    /// edge should have caught it; a constraint is the second wall); a connection
    /// problem is an outage; anything else is Herald's own fault.
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::Database(e) => match e.code().as_deref() {
                Some("23505") => ServiceError::Conflict("conflicts with an existing record".into()),
                Some(code) if code.starts_with("22") || code.starts_with("23") => {
                    let field = e.constraint().map(constraint_field).unwrap_or("body");
                    ServiceError::invalid(field, "value refused")
                }
                Some(code)
                    if code.starts_with("08") || code.starts_with("57") || code == "53300" =>
                {
                    ServiceError::Unavailable("database".into())
                }
                _ => ServiceError::Internal(error.into()),
            },
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                ServiceError::Unavailable("database".into())
            }
            _ => ServiceError::Internal(error.into()),
        }
    }
}

impl From<lapin::Error> for ServiceError {
    fn from(_: lapin::Error) -> Self {
        ServiceError::Unavailable("broker".into())
    }
}

/// `endpoints_rate_limit_check` → `rate_limit`: PostgreSQL names check constraints
/// `<table>_<column>_check`.
fn constraint_field(constraint: &str) -> &str {
    let rest = constraint
        .split_once('_')
        .map(|(_, rest)| rest)
        .unwrap_or(constraint);
    rest.strip_suffix("_check").unwrap_or(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_constraints_name_their_column() {
        assert_eq!(constraint_field("endpoints_rate_limit_check"), "rate_limit");
        assert_eq!(
            constraint_field("endpoints_event_types_check"),
            "event_types"
        );
        assert_eq!(constraint_field("weird"), "weird");
    }

    #[test]
    fn an_invalid_error_lists_its_fields() {
        let e = ServiceError::Invalid(vec![
            FieldError {
                field: "url".into(),
                message: "bad".into(),
            },
            FieldError {
                field: "limit".into(),
                message: "too big".into(),
            },
        ]);
        assert_eq!(e.to_string(), "invalid input: url: bad; limit: too big");
    }
}
