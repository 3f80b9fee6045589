//! Tenant tokens of the admin API: created (shown once), listed, revoked — by the admin
//! only — and the check of every request's bearer token.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::validate::Check;
use super::{Caller, Page, PageRequest, ServiceError};
use crate::store::tokens::{self, TokenView};

/// Tenant tokens start with this, so a leaked one is recognisable (secret scanners).
pub const PREFIX: &str = "hrld_";

/// A created token: the only time it is shown.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = CreatedToken)]
pub struct Created {
    #[serde(flatten)]
    pub view: TokenView,
    /// The bearer token (`hrld_…`); shown only here.
    pub token: String,
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

pub async fn create(
    pool: &PgPool,
    caller: &Caller,
    tenant_id: Option<String>,
    name: Option<String>,
) -> Result<Created, ServiceError> {
    caller.require_admin()?;
    let mut check = Check::default();
    if tenant_id.is_none() {
        check.fail("tenant_id", "required");
    }
    let tenant_id = check.tenant("tenant_id", tenant_id);
    let name = check.text("name", name, 200);
    check.finish()?;
    let tenant_id = tenant_id.expect("checked");
    let mut random = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut random);
    let value = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(random));
    let view = tokens::insert(pool, &tenant_id, name.as_deref(), &hash(&value)).await?;
    tracing::info!(token_id = %view.id, tenant_id = %view.tenant_id, "API token created");
    Ok(Created { view, token: value })
}

pub async fn list(
    pool: &PgPool,
    caller: &Caller,
    tenant: Option<String>,
    page: PageRequest,
) -> Result<Page<TokenView>, ServiceError> {
    caller.require_admin()?;
    let rows = tokens::list(pool, tenant.as_deref(), page.after()?, page.fetch()).await?;
    Ok(Page::of(rows, &page, |t| t.id))
}

pub async fn revoke(pool: &PgPool, caller: &Caller, id: Uuid) -> Result<TokenView, ServiceError> {
    caller.require_admin()?;
    let token = tokens::revoke(pool, id)
        .await?
        .ok_or(ServiceError::NotFound)?;
    tracing::info!(token_id = %token.id, tenant_id = %token.tenant_id, "API token revoked");
    Ok(token)
}

/// Who a bearer token belongs to: the admin token (compared in constant time; an
/// empty configured token matches nothing), a live tenant token, or nobody.
pub async fn authenticate(
    pool: &PgPool,
    admin_token: &str,
    given: &str,
) -> Result<Option<Caller>, ServiceError> {
    if given.is_empty() {
        return Ok(None);
    }
    if !admin_token.is_empty() && bool::from(given.as_bytes().ct_eq(admin_token.as_bytes())) {
        return Ok(Some(Caller::Admin));
    }
    if !given.starts_with(PREFIX) {
        return Ok(None);
    }
    // Looked up by hash: what the index compares is a digest, so its timing says
    // nothing about the token.
    Ok(tokens::tenant_of(pool, &hash(given))
        .await?
        .map(Caller::Tenant))
}
