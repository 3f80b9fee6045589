//! `herald.endpoints`: subscribers, their patterns, secrets and state.

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use serde::Serialize;
use sqlx::{FromRow, PgPool};
use uuid::Uuid;

use crate::domain::{EndpointUrl, InvalidValue, SigningSecret, TopicPattern};

/// An endpoint as Herald uses it; built from a row, so every field is valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub id: Uuid,
    pub url: EndpointUrl,
    pub tenant_id: Option<String>,
    pub event_types: Vec<TopicPattern>,
    /// Current secret first, then a rotated-out one still in its grace period.
    pub secrets: Vec<SigningSecret>,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub deleted: bool,
    pub rate_limit: Option<i32>,
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Endpoint {
    /// Receives events: enabled and not deleted.
    pub fn is_active(&self) -> bool {
        self.enabled && !self.deleted
    }

    /// Whether an event of this tenant is for this endpoint: an endpoint without a
    /// tenant receives every tenant's events.
    pub fn accepts_tenant(&self, tenant: Option<&str>) -> bool {
        self.tenant_id.as_deref().is_none_or(|t| Some(t) == tenant)
    }
}

/// What the CLI and API show of an endpoint: never its secret.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointView {
    pub id: Uuid,
    pub url: String,
    pub tenant_id: Option<String>,
    pub event_types: Vec<String>,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub rate_limit: Option<i32>,
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&Endpoint> for EndpointView {
    fn from(e: &Endpoint) -> Self {
        Self {
            id: e.id,
            url: e.url.to_string(),
            tenant_id: e.tenant_id.clone(),
            event_types: e.event_types.iter().map(|p| p.to_string()).collect(),
            enabled: e.enabled,
            disabled_reason: e.disabled_reason.clone(),
            rate_limit: e.rate_limit,
            description: e.description.clone(),
            created_at: e.created_at,
            updated_at: e.updated_at,
        }
    }
}

#[derive(FromRow)]
struct EndpointRow {
    id: Uuid,
    url: String,
    tenant_id: Option<String>,
    event_types: Vec<String>,
    secret: String,
    previous_secret: Option<String>,
    previous_secret_expires_at: Option<DateTime<Utc>>,
    enabled: bool,
    disabled_reason: Option<String>,
    rate_limit: Option<i32>,
    description: Option<String>,
    deleted_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<EndpointRow> for Endpoint {
    type Error = InvalidValue;

    fn try_from(row: EndpointRow) -> Result<Self, Self::Error> {
        let mut secrets = vec![row.secret.parse::<SigningSecret>()?];
        if let (Some(previous), Some(until)) = (row.previous_secret, row.previous_secret_expires_at)
        {
            if until > Utc::now() {
                secrets.push(previous.parse()?);
            }
        }
        Ok(Endpoint {
            id: row.id,
            url: row.url.parse()?,
            tenant_id: row.tenant_id,
            event_types: row
                .event_types
                .iter()
                .map(|p| p.parse())
                .collect::<Result<_, _>>()?,
            secrets,
            enabled: row.enabled,
            disabled_reason: row.disabled_reason,
            deleted: row.deleted_at.is_some(),
            rate_limit: row.rate_limit,
            description: row.description,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

const COLUMNS: &str = "id, url, tenant_id, event_types, secret, previous_secret, \
    previous_secret_expires_at, enabled, disabled_reason, rate_limit, description, deleted_at, \
    created_at, updated_at";

/// A new subscription, validated at the edge.
#[derive(Debug, Clone)]
pub struct NewEndpoint {
    pub url: EndpointUrl,
    pub event_types: Vec<TopicPattern>,
    pub tenant_id: Option<String>,
    pub secret: Option<SigningSecret>,
    pub rate_limit: Option<i32>,
    pub description: Option<String>,
}

/// A row that fails to parse is logged and left out rather than failing every load.
fn parse_row(row: EndpointRow) -> Option<Endpoint> {
    let id = row.id;
    Endpoint::try_from(row)
        .inspect_err(
            |e| tracing::error!(endpoint_id = %id, error = %e, "endpoint row is invalid; skipped"),
        )
        .ok()
}

fn parse_rows(rows: Vec<EndpointRow>) -> Vec<Endpoint> {
    rows.into_iter().filter_map(parse_row).collect()
}

/// Creates an endpoint; returns it with its secret (generated when none was given).
pub async fn insert(pool: &PgPool, new: NewEndpoint) -> Result<Endpoint, sqlx::Error> {
    let secret = new.secret.unwrap_or_else(SigningSecret::generate);
    let patterns: Vec<String> = new.event_types.iter().map(|p| p.to_string()).collect();
    let row: EndpointRow = sqlx::query_as(&format!(
        "INSERT INTO herald.endpoints (id, url, tenant_id, event_types, secret, rate_limit, description)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(new.url.as_str())
    .bind(&new.tenant_id)
    .bind(&patterns)
    .bind(secret.expose())
    .bind(new.rate_limit)
    .bind(&new.description)
    .fetch_one(pool)
    .await?;
    Endpoint::try_from(row).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

/// Every endpoint not deleted, newest first.
pub async fn list(pool: &PgPool) -> Result<Vec<Endpoint>, sqlx::Error> {
    let rows = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM herald.endpoints WHERE deleted_at IS NULL ORDER BY created_at DESC"
    ))
    .fetch_all(pool)
    .await?;
    Ok(parse_rows(rows))
}

/// Endpoints that receive events, handed over one by one as their rows arrive: the
/// subscription cache's source. Streaming keeps a reload from holding every row and
/// every parsed endpoint at once next to the cache it replaces.
pub async fn for_each_active(
    pool: &PgPool,
    mut each: impl FnMut(Endpoint),
) -> Result<(), sqlx::Error> {
    let sql =
        format!("SELECT {COLUMNS} FROM herald.endpoints WHERE enabled AND deleted_at IS NULL");
    let mut rows = sqlx::query_as::<_, EndpointRow>(&sql).fetch(pool);
    while let Some(row) = rows.try_next().await? {
        if let Some(endpoint) = parse_row(row) {
            each(endpoint);
        }
    }
    Ok(())
}

/// Every endpoint that receives events, at once.
pub async fn load_active(pool: &PgPool) -> Result<Vec<Endpoint>, sqlx::Error> {
    let mut list = Vec::new();
    for_each_active(pool, |endpoint| list.push(endpoint)).await?;
    Ok(list)
}

/// One endpoint, deleted or not.
pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<Endpoint>, sqlx::Error> {
    let row: Option<EndpointRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM herald.endpoints WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(row.and_then(parse_row))
}

/// Enables or disables an endpoint; `reason` is kept while disabled.
pub async fn set_enabled(
    pool: &PgPool,
    id: Uuid,
    enabled: bool,
    reason: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE herald.endpoints SET enabled = $2, disabled_reason = $3, updated_at = now()
         WHERE id = $1 AND deleted_at IS NULL",
    )
    .bind(id)
    .bind(enabled)
    .bind(if enabled { None } else { reason })
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Changes of an endpoint through the admin API; `None` leaves a field as it is.
#[derive(Debug, Default, Clone)]
pub struct EndpointPatch {
    pub url: Option<EndpointUrl>,
    pub event_types: Option<Vec<TopicPattern>>,
    pub enabled: Option<bool>,
    pub rate_limit: Option<Option<i32>>,
    pub description: Option<Option<String>>,
}

pub async fn update(
    pool: &PgPool,
    id: Uuid,
    patch: EndpointPatch,
) -> Result<Option<Endpoint>, sqlx::Error> {
    let patterns: Option<Vec<String>> = patch
        .event_types
        .map(|ps| ps.iter().map(|p| p.to_string()).collect());
    let row: Option<EndpointRow> = sqlx::query_as(&format!(
        "UPDATE herald.endpoints SET
            url = COALESCE($2, url),
            event_types = COALESCE($3, event_types),
            enabled = COALESCE($4, enabled),
            disabled_reason = CASE WHEN COALESCE($4, enabled) THEN NULL ELSE disabled_reason END,
            rate_limit = CASE WHEN $5 THEN $6 ELSE rate_limit END,
            description = CASE WHEN $7 THEN $8 ELSE description END,
            updated_at = now()
         WHERE id = $1 AND deleted_at IS NULL RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(patch.url.as_ref().map(|u| u.as_str()))
    .bind(patterns)
    .bind(patch.enabled)
    .bind(patch.rate_limit.is_some())
    .bind(patch.rate_limit.flatten())
    .bind(patch.description.is_some())
    .bind(patch.description.flatten())
    .fetch_optional(pool)
    .await?;
    Ok(row.and_then(parse_row))
}

/// Starts signing with a new secret; the old one keeps signing alongside until `grace` ends.
pub async fn rotate_secret(
    pool: &PgPool,
    id: Uuid,
    secret: &SigningSecret,
    grace: chrono::Duration,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE herald.endpoints SET previous_secret = secret, previous_secret_expires_at = now() + $3,
            secret = $2, updated_at = now() WHERE id = $1 AND deleted_at IS NULL",
    )
    .bind(id)
    .bind(secret.expose())
    .bind(grace)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Soft delete: the endpoint stops receiving; its deliveries stay on record.
pub async fn delete(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE herald.endpoints SET deleted_at = now(), enabled = false, updated_at = now()
         WHERE id = $1 AND deleted_at IS NULL",
    )
    .bind(id)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}
