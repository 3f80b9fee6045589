//! `herald.api_tokens`: tenant tokens of the admin API, kept as SHA-256 hashes only.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgPool};
use uuid::Uuid;

/// A token as listed: never the token, never its hash.
#[derive(Debug, Clone, Serialize, FromRow, utoipa::ToSchema)]
#[schema(as = Token)]
pub struct TokenView {
    pub id: Uuid,
    pub tenant_id: String,
    #[schema(required = true)]
    pub name: Option<String>,
    pub created_at: DateTime<Utc>,
    /// When the token was revoked; a revoked token no longer authenticates.
    #[schema(required = true)]
    pub revoked_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, tenant_id, name, created_at, revoked_at";

pub async fn insert(
    pool: &PgPool,
    tenant_id: &str,
    name: Option<&str>,
    hash: &[u8],
) -> Result<TokenView, sqlx::Error> {
    sqlx::query_as(&format!(
        "INSERT INTO herald.api_tokens (id, tenant_id, name, token_hash) VALUES ($1, $2, $3, $4)
         RETURNING {COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(tenant_id)
    .bind(name)
    .bind(hash)
    .fetch_one(pool)
    .await
}

/// The tenant of the live (not revoked) token with this hash. Read on every request,
/// so a revocation holds at once in every process.
pub async fn tenant_of(pool: &PgPool, hash: &[u8]) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT tenant_id FROM herald.api_tokens WHERE token_hash = $1 AND revoked_at IS NULL",
    )
    .bind(hash)
    .fetch_optional(pool)
    .await
}

/// Tokens newest first, optionally of one tenant, below id `before`.
pub async fn list(
    pool: &PgPool,
    tenant: Option<&str>,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<TokenView>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM herald.api_tokens
         WHERE ($1::text IS NULL OR tenant_id = $1) AND ($2::uuid IS NULL OR id < $2)
         ORDER BY id DESC LIMIT $3"
    ))
    .bind(tenant)
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Revokes a token; `None` when there is no such token. Revoking twice keeps the first
/// time.
pub async fn revoke(pool: &PgPool, id: Uuid) -> Result<Option<TokenView>, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE herald.api_tokens SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1
         RETURNING {COLUMNS}"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await
}
