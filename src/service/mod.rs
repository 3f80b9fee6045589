//! The operations of the admin API and the command line, each implemented once: both
//! front ends parse their input into these calls and render what they return. Every
//! operation takes the [`Caller`] and confines what it reads and changes to the
//! caller's tenant; validation happens here, before anything is written, so bad input
//! is a [`ServiceError::Invalid`] naming its fields and never a partial change.

mod background;
pub mod deliveries;
pub mod dlq;
pub mod endpoints;
mod error;
pub mod events;
pub mod invalid;
pub mod invalid_jobs;
pub mod ordering;
mod page;
pub mod replay;
pub mod resend;
pub mod retention;
pub mod tokens;
mod validate;

pub use error::{FieldError, ServiceError};
pub use page::{Page, PageRequest};

/// Who asks. The admin token may do everything (and narrow lists to one tenant); a
/// tenant token sees and changes only its tenant's endpoints, events and deliveries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Admin,
    Tenant(String),
}

/// A tenant token asked for another tenant's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OtherTenant;

impl Caller {
    /// The tenant every query of this caller is confined to; `None` for the admin.
    pub fn scope(&self) -> Option<&str> {
        match self {
            Caller::Admin => None,
            Caller::Tenant(tenant) => Some(tenant),
        }
    }

    /// The tenant a query is narrowed to when the caller asks for `asked`: the admin
    /// gets what it asks for (`None`: every tenant); a tenant token always its own,
    /// and [`OtherTenant`] when it asks for another's — which then shows nothing.
    pub fn confine(&self, asked: Option<String>) -> Result<Option<String>, OtherTenant> {
        match (self.scope(), asked) {
            (None, asked) => Ok(asked),
            (Some(own), Some(asked)) if asked != own => Err(OtherTenant),
            (Some(own), _) => Ok(Some(own.to_string())),
        }
    }

    /// Operations on the deployment itself (tokens, the parking queue) are the admin's.
    pub fn require_admin(&self) -> Result<(), ServiceError> {
        match self {
            Caller::Admin => Ok(()),
            Caller::Tenant(_) => Err(ServiceError::Forbidden),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_is_confined_to_its_own_data_and_the_admin_to_what_it_asks() {
        let tenant = Caller::Tenant("a".into());
        assert_eq!(tenant.confine(None), Ok(Some("a".into())));
        assert_eq!(tenant.confine(Some("a".into())), Ok(Some("a".into())));
        assert_eq!(tenant.confine(Some("b".into())), Err(OtherTenant));
        assert_eq!(Caller::Admin.confine(None), Ok(None));
        assert_eq!(
            Caller::Admin.confine(Some("b".into())),
            Ok(Some("b".into()))
        );
        assert!(matches!(
            tenant.require_admin(),
            Err(ServiceError::Forbidden)
        ));
        assert!(Caller::Admin.require_admin().is_ok());
    }
}
