//! `herald.endpoints`: subscribers, their patterns, secrets and state.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use serde::Serialize;
use sqlx::types::Json;
use sqlx::{FromRow, PgPool};
use uuid::Uuid;

use crate::domain::{
    format_duration, parse_header, Batching, DeliveryOptions, EndpointUrl, InvalidValue,
    PayloadFilter, SignatureScheme, Signing, SigningSecret, StaticHeaders, TopicPattern,
};
use crate::keyring::{Keyring, OpenError};

/// An endpoint as the API and the CLI show it; built from a row, so every field is
/// valid. Its secrets are not read: only [`ActiveEndpoint`]s, which deliver, hold them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub id: Uuid,
    pub url: EndpointUrl,
    pub tenant_id: Option<String>,
    pub event_types: Vec<TopicPattern>,
    pub signature: SignatureScheme,
    /// Names of the static headers (lowercase); their values are never read here.
    pub header_names: Vec<String>,
    pub enabled: bool,
    /// Its circuit breaker is open (`herald.endpoint_health`): deliveries held back.
    pub failing: bool,
    pub disabled_reason: Option<String>,
    pub deleted: bool,
    pub rate_limit: Option<i32>,
    /// The payload filter (docs/filters.md), if any.
    pub filter: Option<PayloadFilter>,
    /// Its own request timeout; `None`: `delivery.timeout`.
    pub timeout: Option<Duration>,
    /// Its own retry schedule; `None`: `delivery.retry_schedule`.
    pub retry_schedule: Option<Vec<Duration>>,
    /// Its events gathered into batches; `None`: one event per request.
    pub batch: Option<Batching>,
    /// Each ordering key's events delivered one at a time, in publish order
    /// (docs/ordering.md); never together with `batch`.
    pub ordering: bool,
    pub name: Option<String>,
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// An endpoint that receives events as every process caches it and delivery uses it:
/// what delivering takes and none of what only the API shows (description, disabled
/// reason, timestamps), in boxed slices. 100,000 of them are cached in ≈ 26 MB less
/// than as `Endpoint`s (docs/benchmarks.md, round 6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveEndpoint {
    pub id: Uuid,
    pub url: EndpointUrl,
    pub tenant_id: Option<Box<str>>,
    pub event_types: Box<[TopicPattern]>,
    /// The signature scheme with its secrets: the current one, and for the standard
    /// signatures a rotated-out one still in its grace period.
    pub signing: Signing,
    /// Sent with every request.
    pub headers: StaticHeaders,
    pub rate_limit: Option<i32>,
    /// Events of its types that it receives only if they pass (docs/filters.md); boxed,
    /// so an endpoint without one costs a pointer.
    pub filter: Option<Box<PayloadFilter>>,
    /// Its own timeout, retry schedule and batching; boxed, so an endpoint keeping the
    /// deployment's costs a pointer.
    pub delivery: Option<Box<DeliveryOptions>>,
    /// Each ordering key's events delivered one at a time, in publish order
    /// (docs/ordering.md); never together with batching.
    pub ordering: bool,
}

impl ActiveEndpoint {
    /// Its own request timeout, if it has one.
    pub fn timeout(&self) -> Option<Duration> {
        self.delivery.as_ref().and_then(|d| d.timeout)
    }

    /// Its own retry schedule, if it has one.
    pub fn retry_schedule(&self) -> Option<&[Duration]> {
        self.delivery
            .as_ref()
            .and_then(|d| d.retry_schedule.as_deref())
    }

    /// How its events are batched, if they are: for an endpoint without options of
    /// its own, one pointer test.
    pub fn batch(&self) -> Option<Batching> {
        self.delivery.as_ref().and_then(|d| d.batch)
    }
}

/// An endpoint's batching option as the API shows and takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Batch)]
pub struct BatchView {
    /// Most events in one request: 2 to `delivery.batch_max_events` (at most 100).
    #[schema(example = 10)]
    pub max_events: i64,
    /// Longest the first event of a batch waits for others (`200ms`), at most
    /// `delivery.batch_max_window`.
    #[schema(example = "200ms")]
    pub window: String,
}

impl From<Batching> for BatchView {
    fn from(b: Batching) -> Self {
        Self {
            max_events: i64::from(b.max_events),
            window: format_duration(b.window),
        }
    }
}

/// What the CLI and API show of an endpoint: never its secret.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = Endpoint)]
pub struct EndpointView {
    pub id: Uuid,
    #[schema(required = true)]
    pub name: Option<String>,
    pub url: String,
    #[schema(required = true)]
    pub tenant_id: Option<String>,
    pub event_types: Vec<String>,
    /// `standard`, `legacy` or `both` (contract §6).
    pub signature: &'static str,
    /// The static headers' names; their values are write-only.
    pub header_names: Vec<String>,
    /// `enabled`, `failing` (its circuit breaker holds deliveries back while probing)
    /// or `disabled` (contract §5).
    #[schema(schema_with = state_schema)]
    pub state: &'static str,
    pub enabled: bool,
    #[schema(required = true)]
    pub disabled_reason: Option<String>,
    /// Requests per minute, when limited.
    #[schema(required = true)]
    pub rate_limit: Option<i32>,
    /// The payload filter (docs/filters.md); `null`: every event of its types.
    #[schema(required = true, value_type = Option<Object>)]
    pub filter: Option<serde_json::Value>,
    /// Its own request timeout (`5s`, `500ms`); `null`: the deployment's
    /// `delivery.timeout`.
    #[schema(required = true)]
    pub timeout: Option<String>,
    /// Its own delays before each retry (`["1m", "5m", "30m"]`); `null`: the
    /// deployment's `delivery.retry_schedule`; `[]`: no retry.
    #[schema(required = true)]
    pub retry_schedule: Option<Vec<String>>,
    /// Its events batched, up to `max_events` in one request (docs/receivers.md);
    /// `null`: one event per request.
    #[schema(required = true)]
    pub batch: Option<BatchView>,
    /// Each ordering key's events delivered one at a time, in publish order
    /// (docs/ordering.md); never together with `batch`.
    pub ordering: bool,
    #[schema(required = true)]
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

fn state_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(["enabled", "failing", "disabled"]))
        .build()
}

impl From<&Endpoint> for EndpointView {
    fn from(e: &Endpoint) -> Self {
        Self {
            id: e.id,
            url: e.url.to_string(),
            tenant_id: e.tenant_id.clone(),
            event_types: e.event_types.iter().map(|p| p.to_string()).collect(),
            signature: e.signature.as_str(),
            header_names: e.header_names.clone(),
            state: match (e.enabled, e.failing) {
                (false, _) => "disabled",
                (true, true) => "failing",
                (true, false) => "enabled",
            },
            enabled: e.enabled,
            disabled_reason: e.disabled_reason.clone(),
            rate_limit: e.rate_limit,
            filter: e.filter.as_ref().map(|f| f.source().clone()),
            timeout: e.timeout.map(format_duration),
            retry_schedule: e
                .retry_schedule
                .as_ref()
                .map(|s| s.iter().copied().map(format_duration).collect()),
            batch: e.batch.map(BatchView::from),
            ordering: e.ordering,
            name: e.name.clone(),
            description: e.description.clone(),
            created_at: e.created_at,
            updated_at: e.updated_at,
        }
    }
}

/// What the API and the CLI show: every column but the secrets.
#[derive(FromRow)]
struct EndpointRow {
    id: Uuid,
    url: String,
    tenant_id: Option<String>,
    event_types: Vec<String>,
    signature: String,
    headers: Json<BTreeMap<String, String>>,
    rate_limit: Option<i32>,
    filter: Option<Json<serde_json::Value>>,
    timeout_ms: Option<i32>,
    retry_schedule_ms: Option<Vec<i32>>,
    batch_max_events: Option<i32>,
    batch_window_ms: Option<i32>,
    ordering: bool,
    enabled: bool,
    failing: bool,
    disabled_reason: Option<String>,
    name: Option<String>,
    description: Option<String>,
    deleted_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<EndpointRow> for Endpoint {
    type Error = InvalidValue;

    fn try_from(row: EndpointRow) -> Result<Self, Self::Error> {
        Ok(Endpoint {
            id: row.id,
            url: EndpointUrl::try_from(row.url)?,
            tenant_id: row.tenant_id,
            event_types: parse_patterns(&row.event_types)?.into(),
            signature: row.signature.parse()?,
            header_names: row.headers.0.into_keys().collect(),
            enabled: row.enabled,
            failing: row.failing,
            disabled_reason: row.disabled_reason,
            deleted: row.deleted_at.is_some(),
            rate_limit: row.rate_limit,
            filter: parse_filter(row.filter)?,
            timeout: parse_timeout(row.timeout_ms)?,
            retry_schedule: parse_schedule(row.retry_schedule_ms)?.map(Vec::from),
            batch: Batching::from_stored(row.batch_max_events, row.batch_window_ms)?,
            ordering: row.ordering,
            name: row.name,
            description: row.description,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

const COLUMNS: &str = "id, url, tenant_id, event_types, signature, headers, filter, \
    timeout_ms, retry_schedule_ms, batch_max_events, batch_window_ms, ordering, enabled, \
    disabled_reason, rate_limit, name, description, deleted_at, created_at, updated_at, \
    EXISTS (SELECT 1 FROM herald.endpoint_health h \
            WHERE h.endpoint_id = endpoints.id AND h.open_since IS NOT NULL) AS failing";

/// The columns of an `ActiveEndpoint`: a reload of every endpoint reads these alone.
#[derive(FromRow)]
struct ActiveRow {
    id: Uuid,
    url: String,
    tenant_id: Option<String>,
    event_types: Vec<String>,
    signature: String,
    secret: String,
    previous_secret: Option<String>,
    previous_secret_expires_at: Option<DateTime<Utc>>,
    headers: Json<BTreeMap<String, String>>,
    rate_limit: Option<i32>,
    filter: Option<Json<serde_json::Value>>,
    timeout_ms: Option<i32>,
    retry_schedule_ms: Option<Vec<i32>>,
    batch_max_events: Option<i32>,
    batch_window_ms: Option<i32>,
    ordering: bool,
}

impl ActiveRow {
    /// The endpoint, its secrets and header values opened with `keys`.
    fn open(self, keys: &Keyring) -> Result<ActiveEndpoint, InvalidValue> {
        let place = secret_place(self.id);
        let open = |stored: &str, place: &str| {
            keys.open(stored, place)
                .map_err(|e| InvalidValue(format!("a stored secret does not open: {e}")))
        };
        let current = open(&self.secret, &place)?;
        let previous = match &self.previous_secret {
            Some(stored) => Some(open(stored, &place)?),
            None => None,
        };
        let mut headers = BTreeMap::new();
        for (name, stored) in self.headers.0 {
            let value = open(&stored, &header_place(self.id, &name))?;
            headers.insert(name, value);
        }
        Ok(ActiveEndpoint {
            id: self.id,
            url: EndpointUrl::try_from(self.url)?,
            tenant_id: self.tenant_id.map(String::into_boxed_str),
            event_types: parse_patterns(&self.event_types)?,
            signing: signing(
                self.signature.parse()?,
                &current,
                previous.as_deref(),
                self.previous_secret_expires_at,
            )?,
            headers: static_headers(headers)?,
            rate_limit: self.rate_limit,
            filter: parse_filter(self.filter)?.map(Box::new),
            delivery: DeliveryOptions::boxed(
                parse_timeout(self.timeout_ms)?,
                parse_schedule(self.retry_schedule_ms)?,
                Batching::from_stored(self.batch_max_events, self.batch_window_ms)?,
            ),
            ordering: self.ordering,
        })
    }
}

/// What a signing secret (current or previous) is sealed for: its endpoint. The
/// previous secret is the current one moved over, so both share it.
fn secret_place(id: Uuid) -> String {
    format!("herald.endpoints/{id}/secret")
}

fn header_place(id: Uuid, name: &str) -> String {
    format!("herald.endpoints/{id}/headers/{name}")
}

const ACTIVE_COLUMNS: &str = "id, url, tenant_id, event_types, signature, secret, \
    previous_secret, previous_secret_expires_at, headers, rate_limit, filter, timeout_ms, \
    retry_schedule_ms, batch_max_events, batch_window_ms, ordering";
const ACTIVE: &str = "enabled AND deleted_at IS NULL";

/// A stored filter, compiled again as at the edge.
fn parse_filter(
    stored: Option<Json<serde_json::Value>>,
) -> Result<Option<PayloadFilter>, InvalidValue> {
    Ok(stored.map(|f| PayloadFilter::parse(f.0)).transpose()?)
}

/// A stored timeout (milliseconds).
fn parse_timeout(stored: Option<i32>) -> Result<Option<Duration>, InvalidValue> {
    stored.map(millis).transpose()
}

/// A stored retry schedule (milliseconds per step).
fn parse_schedule(stored: Option<Vec<i32>>) -> Result<Option<Box<[Duration]>>, InvalidValue> {
    stored
        .map(|steps| steps.into_iter().map(millis).collect())
        .transpose()
}

fn millis(stored: i32) -> Result<Duration, InvalidValue> {
    u64::try_from(stored)
        .ok()
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
        .ok_or_else(|| InvalidValue(format!("a stored duration of {stored} ms")))
}

/// A duration as stored: whole milliseconds (the edge allows at most days).
fn stored_millis(duration: Duration) -> i32 {
    i32::try_from(duration.as_millis()).unwrap_or(i32::MAX)
}

fn stored_schedule(schedule: &[Duration]) -> Vec<i32> {
    schedule.iter().copied().map(stored_millis).collect()
}

fn parse_patterns(patterns: &[String]) -> Result<Box<[TopicPattern]>, InvalidValue> {
    patterns.iter().map(|p| p.parse()).collect()
}

/// The scheme with the current secret, and the previous one while its grace period
/// lasts.
fn signing(
    scheme: SignatureScheme,
    current: &str,
    previous: Option<&str>,
    until: Option<DateTime<Utc>>,
) -> Result<Signing, InvalidValue> {
    let previous = previous.filter(|_| until.is_some_and(|until| until > Utc::now()));
    Signing::new(scheme, current, previous)
}

/// Static headers as stored (name → value), checked again as at the edge.
fn static_headers(stored: BTreeMap<String, String>) -> Result<StaticHeaders, InvalidValue> {
    let headers = stored
        .iter()
        .map(|(name, value)| parse_header(name, value))
        .collect::<Result<Vec<_>, _>>()?;
    StaticHeaders::new(headers)
}

/// Static headers as they are stored: lowercase name → value sealed with `keys`.
fn stored_headers(
    keys: &Keyring,
    id: Uuid,
    headers: &StaticHeaders,
) -> Json<BTreeMap<String, String>> {
    Json(
        headers
            .iter()
            .map(|(name, value)| {
                let value = value.to_str().expect("checked to be visible ASCII");
                let sealed = keys.seal(value, &header_place(id, name.as_str()));
                (name.as_str().to_string(), sealed)
            })
            .collect(),
    )
}

/// A new subscription, validated at the edge.
#[derive(Debug, Clone)]
pub struct NewEndpoint {
    pub url: EndpointUrl,
    pub event_types: Vec<TopicPattern>,
    pub tenant_id: Option<String>,
    /// The scheme and the secret it signs with.
    pub signing: Signing,
    pub headers: StaticHeaders,
    pub rate_limit: Option<i32>,
    pub filter: Option<PayloadFilter>,
    pub timeout: Option<Duration>,
    pub retry_schedule: Option<Vec<Duration>>,
    pub batch: Option<Batching>,
    /// Each ordering key's events one at a time (docs/ordering.md).
    pub ordering: bool,
    pub name: Option<String>,
    pub description: Option<String>,
}

/// A row that fails to parse is logged and left out rather than failing every load.
fn parse_row<T>(id: Uuid, parsed: Result<T, InvalidValue>) -> Option<T> {
    parsed
        .inspect_err(
            |e| tracing::error!(endpoint_id = %id, error = %e, "endpoint row is invalid; skipped"),
        )
        .ok()
}

fn parse_endpoint(row: EndpointRow) -> Option<Endpoint> {
    parse_row(row.id, Endpoint::try_from(row))
}

/// Creates an endpoint.
pub async fn insert(
    pool: &PgPool,
    keys: &Keyring,
    new: NewEndpoint,
) -> Result<Endpoint, sqlx::Error> {
    let id = Uuid::now_v7();
    let patterns: Vec<String> = new.event_types.iter().map(|p| p.to_string()).collect();
    let row: EndpointRow = sqlx::query_as(&format!(
        "INSERT INTO herald.endpoints
             (id, url, tenant_id, event_types, secret, rate_limit, name, description,
              signature, headers, filter, timeout_ms, retry_schedule_ms, batch_max_events,
              batch_window_ms, ordering)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
         RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(new.url.as_str())
    .bind(&new.tenant_id)
    .bind(&patterns)
    .bind(keys.seal(&new.signing.current_text(), &secret_place(id)))
    .bind(new.rate_limit)
    .bind(&new.name)
    .bind(&new.description)
    .bind(new.signing.scheme().as_str())
    .bind(stored_headers(keys, id, &new.headers))
    .bind(new.filter.as_ref().map(|f| Json(f.source())))
    .bind(new.timeout.map(stored_millis))
    .bind(new.retry_schedule.as_deref().map(stored_schedule))
    .bind(new.batch.map(|b| b.stored().0))
    .bind(new.batch.map(|b| b.stored().1))
    .bind(new.ordering)
    .fetch_one(pool)
    .await?;
    Endpoint::try_from(row).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

/// Which endpoints a list shows; `None` means any.
#[derive(Debug, Default, Clone)]
pub struct Filter<'a> {
    /// The caller's tenant: only its endpoints (a tenant token).
    pub scope: Option<&'a str>,
    /// Narrowed to one tenant (the admin's filter).
    pub tenant: Option<&'a str>,
    /// `enabled`, `failing` or `disabled`.
    pub state: Option<&'a str>,
    /// Endpoints with this exact pattern among theirs.
    pub event_type: Option<&'a str>,
    /// Ids below this one (the last of the page before).
    pub before: Option<Uuid>,
    pub limit: i64,
}

/// Endpoints not deleted, newest first (ids are UUIDv7).
pub async fn list(pool: &PgPool, filter: &Filter<'_>) -> Result<Vec<Endpoint>, sqlx::Error> {
    let rows: Vec<EndpointRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM herald.endpoints WHERE deleted_at IS NULL
            AND ($1::text IS NULL OR tenant_id = $1)
            AND ($2::text IS NULL OR tenant_id = $2)
            AND ($3::text IS NULL OR $3 = CASE WHEN NOT enabled THEN 'disabled'
                WHEN EXISTS (SELECT 1 FROM herald.endpoint_health h
                             WHERE h.endpoint_id = endpoints.id AND h.open_since IS NOT NULL)
                THEN 'failing' ELSE 'enabled' END)
            AND ($4::text IS NULL OR $4 = ANY(event_types))
            AND ($5::uuid IS NULL OR id < $5)
         ORDER BY id DESC LIMIT $6"
    ))
    .bind(filter.scope)
    .bind(filter.tenant)
    .bind(filter.state)
    .bind(filter.event_type)
    .bind(filter.before)
    .bind(filter.limit)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().filter_map(parse_endpoint).collect())
}

/// Endpoints that receive events, handed over one by one as their rows arrive: the
/// subscription cache's source. Streaming keeps a reload from holding every row and
/// every parsed endpoint at once next to the cache it replaces.
pub async fn for_each_active(
    pool: &PgPool,
    keys: &Keyring,
    mut each: impl FnMut(ActiveEndpoint),
) -> Result<(), sqlx::Error> {
    let sql = format!("SELECT {ACTIVE_COLUMNS} FROM herald.endpoints WHERE {ACTIVE}");
    let mut rows = sqlx::query_as::<_, ActiveRow>(&sql).fetch(pool);
    while let Some(row) = rows.try_next().await? {
        if let Some(endpoint) = parse_row(row.id, row.open(keys)) {
            each(endpoint);
        }
    }
    Ok(())
}

/// Every endpoint that receives events, at once.
pub async fn load_active(
    pool: &PgPool,
    keys: &Keyring,
) -> Result<Vec<ActiveEndpoint>, sqlx::Error> {
    let mut list = Vec::new();
    for_each_active(pool, keys, |endpoint| list.push(endpoint)).await?;
    Ok(list)
}

/// Those of `ids` that receive events, in one query.
pub async fn get_active(
    pool: &PgPool,
    keys: &Keyring,
    ids: &[Uuid],
) -> Result<Vec<ActiveEndpoint>, sqlx::Error> {
    let rows: Vec<ActiveRow> = sqlx::query_as(&format!(
        "SELECT {ACTIVE_COLUMNS} FROM herald.endpoints WHERE id = ANY($1) AND {ACTIVE}"
    ))
    .bind(ids)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|row| parse_row(row.id, row.open(keys)))
        .collect())
}

/// One endpoint not deleted, enabled or not, ready to send to (a test send); `scope`
/// confines it to one tenant's.
pub async fn get_sendable(
    pool: &PgPool,
    keys: &Keyring,
    scope: Option<&str>,
    id: Uuid,
) -> Result<Option<ActiveEndpoint>, sqlx::Error> {
    let row: Option<ActiveRow> = sqlx::query_as(&format!(
        "SELECT {ACTIVE_COLUMNS} FROM herald.endpoints
         WHERE id = $1 AND deleted_at IS NULL AND ($2::text IS NULL OR tenant_id = $2)"
    ))
    .bind(id)
    .bind(scope)
    .fetch_optional(pool)
    .await?;
    Ok(row.and_then(|row| parse_row(row.id, row.open(keys))))
}

/// One endpoint, deleted or not; `scope` confines it to one tenant's.
pub async fn get(
    pool: &PgPool,
    scope: Option<&str>,
    id: Uuid,
) -> Result<Option<Endpoint>, sqlx::Error> {
    let row: Option<EndpointRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM herald.endpoints WHERE id = $1 AND ($2::text IS NULL OR tenant_id = $2)"
    ))
    .bind(id)
    .bind(scope)
    .fetch_optional(pool)
    .await?;
    Ok(row.and_then(parse_endpoint))
}

/// The current secret's text of an endpoint not deleted; `scope` confines it to one
/// tenant's. Read to check that a change of signature scheme suits the secret.
pub async fn current_secret(
    pool: &PgPool,
    keys: &Keyring,
    scope: Option<&str>,
    id: Uuid,
) -> Result<Option<String>, sqlx::Error> {
    let stored: Option<String> = sqlx::query_scalar(
        "SELECT secret FROM herald.endpoints
         WHERE id = $1 AND deleted_at IS NULL AND ($2::text IS NULL OR tenant_id = $2)",
    )
    .bind(id)
    .bind(scope)
    .fetch_optional(pool)
    .await?;
    stored
        .map(|stored| keys.open(&stored, &secret_place(id)))
        .transpose()
        .map_err(|e| sqlx::Error::Decode(Box::new(e)))
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
    pub name: Option<Option<String>>,
    pub description: Option<Option<String>>,
    pub signature: Option<SignatureScheme>,
    /// Replaces every static header.
    pub headers: Option<StaticHeaders>,
    /// `Some(None)` removes the filter.
    pub filter: Option<Option<PayloadFilter>>,
    /// `Some(None)`: back to `delivery.timeout`.
    pub timeout: Option<Option<Duration>>,
    /// `Some(None)`: back to `delivery.retry_schedule`.
    pub retry_schedule: Option<Option<Vec<Duration>>>,
    /// `Some(None)`: one event per request again.
    pub batch: Option<Option<Batching>>,
    /// Ordered delivery per key on or off.
    pub ordering: Option<bool>,
}

/// Changes an endpoint not deleted; `None` when there is none, or when the change
/// would leave it ordered and batching at once (a concurrent change turned on the
/// other since the service checked).
pub async fn update(
    pool: &PgPool,
    keys: &Keyring,
    scope: Option<&str>,
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
            name = CASE WHEN $9 THEN $10 ELSE name END,
            signature = COALESCE($12, signature),
            headers = COALESCE($13, headers),
            filter = CASE WHEN $14 THEN $15 ELSE filter END,
            timeout_ms = CASE WHEN $16 THEN $17 ELSE timeout_ms END,
            retry_schedule_ms = CASE WHEN $18 THEN $19 ELSE retry_schedule_ms END,
            batch_max_events = CASE WHEN $20 THEN $21 ELSE batch_max_events END,
            batch_window_ms = CASE WHEN $20 THEN $22 ELSE batch_window_ms END,
            ordering = COALESCE($23, ordering),
            updated_at = now()
         WHERE id = $1 AND deleted_at IS NULL AND ($11::text IS NULL OR tenant_id = $11)
           -- Never ordered and batching at once, whatever another change wrote since
           -- the service checked (the row lock orders concurrent changes).
           AND NOT (COALESCE($23, ordering)
                    AND (CASE WHEN $20 THEN $21 ELSE batch_max_events END) IS NOT NULL)
         RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(patch.url.as_ref().map(|u| u.as_str()))
    .bind(patterns)
    .bind(patch.enabled)
    .bind(patch.rate_limit.is_some())
    .bind(patch.rate_limit.flatten())
    .bind(patch.description.is_some())
    .bind(patch.description.flatten())
    .bind(patch.name.is_some())
    .bind(patch.name.flatten())
    .bind(scope)
    .bind(patch.signature.map(SignatureScheme::as_str))
    .bind(patch.headers.as_ref().map(|h| stored_headers(keys, id, h)))
    .bind(patch.filter.is_some())
    .bind(
        patch
            .filter
            .flatten()
            .as_ref()
            .map(|f| Json(f.source().clone())),
    )
    .bind(patch.timeout.is_some())
    .bind(patch.timeout.flatten().map(stored_millis))
    .bind(patch.retry_schedule.is_some())
    .bind(
        patch
            .retry_schedule
            .flatten()
            .as_deref()
            .map(stored_schedule),
    )
    .bind(patch.batch.is_some())
    .bind(patch.batch.flatten().map(|b| b.stored().0))
    .bind(patch.batch.flatten().map(|b| b.stored().1))
    .bind(patch.ordering)
    .fetch_optional(pool)
    .await?;
    Ok(row.and_then(parse_endpoint))
}

/// Starts signing with a new secret; the old one keeps signing alongside until `grace` ends.
pub async fn rotate_secret(
    pool: &PgPool,
    keys: &Keyring,
    scope: Option<&str>,
    id: Uuid,
    secret: &SigningSecret,
    grace: chrono::Duration,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE herald.endpoints SET previous_secret = secret, previous_secret_expires_at = now() + $3,
            secret = $2, updated_at = now()
         WHERE id = $1 AND deleted_at IS NULL AND ($4::text IS NULL OR tenant_id = $4)",
    )
    .bind(id)
    .bind(keys.seal(&secret.expose(), &secret_place(id)))
    .bind(grace)
    .bind(scope)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Soft delete: the endpoint stops receiving; its deliveries stay on record.
pub async fn delete(pool: &PgPool, scope: Option<&str>, id: Uuid) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE herald.endpoints SET deleted_at = now(), enabled = false, updated_at = now()
         WHERE id = $1 AND deleted_at IS NULL AND ($2::text IS NULL OR tenant_id = $2)",
    )
    .bind(id)
    .bind(scope)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// What the stored secrets say about the configured keys, checked at start.
#[derive(Debug, Default)]
pub struct KeyCheck {
    /// Endpoints whose secret is still in plain text (`herald secrets reencrypt`).
    pub plaintext: i64,
}

/// Why the configured keys cannot serve the stored secrets.
#[derive(Debug, thiserror::Error)]
pub enum KeyProblem {
    #[error("configuration key `secrets.keys`: stored secrets of {count} endpoint(s) {error}")]
    Keys { count: i64, error: OpenError },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Opens one stored signing secret per key id in use, so a missing or wrong key stops
/// the start instead of silently leaving its endpoints out of the cache.
pub async fn check_keys(pool: &PgPool, keys: &Keyring) -> Result<KeyCheck, KeyProblem> {
    let samples: Vec<(String, i64, Uuid, String)> = sqlx::query_as(
        "SELECT DISTINCT ON (key_id) key_id, count(*) OVER (PARTITION BY key_id), id, value
         FROM (SELECT id, secret AS value, split_part(secret, ':', 3) AS key_id
                 FROM herald.endpoints WHERE secret LIKE 'enc:%'
               UNION ALL
               SELECT id, previous_secret, split_part(previous_secret, ':', 3)
                 FROM herald.endpoints WHERE previous_secret LIKE 'enc:%') sealed
         ORDER BY key_id, id",
    )
    .fetch_all(pool)
    .await?;
    for (_, count, id, value) in samples {
        if let Err(error) = keys.open(&value, &secret_place(id)) {
            return Err(KeyProblem::Keys { count, error });
        }
    }
    let plaintext =
        sqlx::query_scalar("SELECT count(*) FROM herald.endpoints WHERE secret NOT LIKE 'enc:%'")
            .fetch_one(pool)
            .await?;
    Ok(KeyCheck { plaintext })
}

/// The secret columns of one row, as stored.
#[derive(FromRow)]
struct SealedRow {
    id: Uuid,
    secret: String,
    previous_secret: Option<String>,
    headers: Json<BTreeMap<String, String>>,
}

impl SealedRow {
    fn is_current(&self, keys: &Keyring) -> bool {
        keys.is_current(&self.secret)
            && self
                .previous_secret
                .as_deref()
                .is_none_or(|p| keys.is_current(p))
            && self.headers.0.values().all(|v| keys.is_current(v))
    }

    /// Every value opened and sealed again under the first key.
    fn resealed(&self, keys: &Keyring) -> Result<SealedRow, OpenError> {
        let place = secret_place(self.id);
        let reseal = |stored: &str, place: &str| -> Result<String, OpenError> {
            if keys.is_current(stored) {
                return Ok(stored.to_string());
            }
            Ok(keys.seal(&keys.open(stored, place)?, place))
        };
        let mut headers = BTreeMap::new();
        for (name, stored) in &self.headers.0 {
            headers.insert(name.clone(), reseal(stored, &header_place(self.id, name))?);
        }
        Ok(SealedRow {
            id: self.id,
            secret: reseal(&self.secret, &place)?,
            previous_secret: self
                .previous_secret
                .as_deref()
                .map(|p| reseal(p, &place))
                .transpose()?,
            headers: Json(headers),
        })
    }
}

/// Rows read per step of [`reencrypt`].
const REENCRYPT_PAGE: i64 = 500;

/// Seals every stored secret (current, previous, header values; deleted endpoints
/// too) under the first key; returns how many endpoints were rewritten. Safe while
/// Herald runs: a row is rewritten only if it is unchanged since it was read (a row
/// changed meanwhile is read again), and a value already under the first key is left
/// alone, so running it again rewrites nothing and an interrupted run resumes.
/// `progress` hears (endpoints looked at, rewritten) after each page.
pub async fn reencrypt(
    pool: &PgPool,
    keys: &Keyring,
    mut progress: impl FnMut(u64, u64),
) -> Result<u64, KeyProblem> {
    let (mut seen, mut rewritten) = (0u64, 0u64);
    let mut after = Uuid::nil();
    loop {
        let page: Vec<SealedRow> = sqlx::query_as(
            "SELECT id, secret, previous_secret, headers FROM herald.endpoints
             WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(REENCRYPT_PAGE)
        .fetch_all(pool)
        .await?;
        let Some(last) = page.last() else {
            return Ok(rewritten);
        };
        after = last.id;
        for row in page {
            seen += 1;
            if reencrypt_row(pool, keys, row).await? {
                rewritten += 1;
            }
        }
        progress(seen, rewritten);
    }
}

/// One row sealed under the first key; `true` when it had to be rewritten.
async fn reencrypt_row(
    pool: &PgPool,
    keys: &Keyring,
    mut row: SealedRow,
) -> Result<bool, KeyProblem> {
    let mut rewrote = false;
    while !row.is_current(keys) {
        let fresh = row
            .resealed(keys)
            .map_err(|error| KeyProblem::Keys { count: 1, error })?;
        let done = sqlx::query(
            "UPDATE herald.endpoints SET secret = $2, previous_secret = $3, headers = $4
             WHERE id = $1 AND secret = $5 AND previous_secret IS NOT DISTINCT FROM $6
               AND headers = $7",
        )
        .bind(row.id)
        .bind(&fresh.secret)
        .bind(&fresh.previous_secret)
        .bind(&fresh.headers)
        .bind(&row.secret)
        .bind(&row.previous_secret)
        .bind(&row.headers)
        .execute(pool)
        .await?;
        if done.rows_affected() == 1 {
            rewrote = true;
            break;
        }
        // Changed since it was read (a rotation, an update): read it again.
        match sqlx::query_as(
            "SELECT id, secret, previous_secret, headers FROM herald.endpoints WHERE id = $1",
        )
        .bind(row.id)
        .fetch_optional(pool)
        .await?
        {
            Some(again) => row = again,
            None => break,
        }
    }
    Ok(rewrote)
}
