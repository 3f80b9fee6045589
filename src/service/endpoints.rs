//! Endpoints: create, read, list, change, delete, rotate the secret — for the API and
//! the CLI alike.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::validate::Check;
use super::{Caller, Page, PageRequest, ServiceError};
use crate::delivery::client::Guard;
use crate::domain::{
    parse_header, BatchBounds, Batching, DeliveryBounds, EndpointUrl, PayloadFilter,
    SignatureScheme, Signing, SigningSecret, StaticHeaders, TopicPattern,
};
use crate::keyring::Keyring;
use crate::store::endpoints::{self, BatchView, EndpointPatch, EndpointView, NewEndpoint};
use crate::store::health;

/// Highest `rate_limit` (requests per minute) an endpoint may ask for.
pub const MAX_RATE_LIMIT: i64 = 1_000_000;
/// Longest a rotated-out secret keeps signing: 30 days.
pub const MAX_GRACE_HOURS: i64 = 24 * 30;
const MAX_PATTERNS: usize = 100;

/// What an endpoint may be, from the configuration: its URL (`delivery.require_https`,
/// and the SSRF guard unless `delivery.allow_private_networks`), its own timeout and
/// retry schedule (`delivery.max_timeout`, the delays with queues), its batching
/// (`delivery.batch_max_events`, `delivery.batch_max_window`).
#[derive(Debug, Clone)]
pub struct EndpointPolicy {
    pub require_https: bool,
    pub guard: Option<Guard>,
    pub bounds: DeliveryBounds,
    pub batch: BatchBounds,
}

impl EndpointPolicy {
    pub fn from_settings(settings: &crate::config::DeliverySettings) -> Self {
        Self {
            require_https: settings.require_https,
            guard: (!settings.allow_private_networks)
                .then(|| Guard::new(&settings.allowed_networks)),
            bounds: settings.bounds(),
            batch: settings.batch_bounds(),
        }
    }
}

/// How long creating an endpoint waits for its host name to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);

/// Refuses, as a field error on `url`, a URL whose host is — or resolves only to —
/// an address the SSRF guard refuses: the owner hears it now, not at the first
/// delivery. A name that does not resolve yet is accepted (every connect is checked
/// again, so a later resolution to a forbidden address is refused then).
async fn refuse_private(policy: &EndpointPolicy, url: &EndpointUrl) -> Result<(), ServiceError> {
    let Some(guard) = &policy.guard else {
        return Ok(());
    };
    let Ok(parsed) = url.to_url() else {
        return Ok(());
    };
    let Some(host) = parsed.host_str() else {
        return Ok(());
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let addresses: Vec<IpAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => {
            let port = parsed.port_or_known_default().unwrap_or(443);
            match tokio::time::timeout(
                RESOLVE_TIMEOUT,
                tokio::net::lookup_host((host.as_str(), port)),
            )
            .await
            {
                Ok(Ok(found)) => found.map(|a| a.ip()).collect(),
                _ => return Ok(()),
            }
        }
    };
    match addresses.iter().find(|ip| guard.refuses(**ip)) {
        Some(ip) if addresses.iter().all(|ip| guard.refuses(*ip)) => Err(ServiceError::invalid(
            "url",
            format!(
                "{host} is {ip}, a private, loopback, link-local or reserved address: refused \
                 (delivery.allow_private_networks is false; delivery.allowed_networks can \
                 exempt a network)"
            ),
        )),
        _ => Ok(()),
    }
}

/// The endpoint URL, checked against the policy.
fn url(check: &mut Check, policy: &EndpointPolicy, text: &str) -> Option<EndpointUrl> {
    let url = check.field("url", text.parse::<EndpointUrl>())?;
    if policy.require_https && !url.is_https() {
        check.fail(
            "url",
            "must be an https:// URL (delivery.require_https is on)",
        );
        return None;
    }
    Some(url)
}

/// A new endpoint as the caller wrote it.
#[derive(Debug, Clone, Default)]
pub struct EndpointInput {
    pub url: String,
    pub event_types: Vec<String>,
    pub tenant_id: Option<String>,
    /// `whsec_…`, or for `signature: legacy` the old service's secret text; generated
    /// (`whsec_`) when absent.
    pub secret: Option<String>,
    /// `standard` (default), `legacy` or `both`.
    pub signature: Option<String>,
    /// Static headers sent with every request, name → value.
    pub headers: Option<BTreeMap<String, String>>,
    pub rate_limit: Option<i64>,
    /// A payload filter (docs/filters.md); none: every event of its types.
    pub filter: Option<serde_json::Value>,
    /// Its own request timeout (`5s`); none: `delivery.timeout`.
    pub timeout: Option<String>,
    /// Its own delays before each retry (`1m`, `5m`, `30m`); none:
    /// `delivery.retry_schedule`.
    pub retry_schedule: Option<Vec<String>>,
    /// Its events batched; none: one event per request.
    pub batch: Option<BatchView>,
    /// Each ordering key's events one at a time, in publish order (docs/ordering.md);
    /// never with `batch`.
    pub ordering: bool,
    pub name: Option<String>,
    pub description: Option<String>,
}

/// Changes as the caller wrote them: `None` leaves a field, `Some(None)` clears it.
#[derive(Debug, Clone, Default)]
pub struct EndpointChanges {
    pub url: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub enabled: Option<bool>,
    pub rate_limit: Option<Option<i64>>,
    pub name: Option<Option<String>>,
    pub description: Option<Option<String>>,
    pub signature: Option<String>,
    /// Replaces every static header (`{}` removes them all).
    pub headers: Option<BTreeMap<String, String>>,
    /// Replaces the payload filter; `Some(None)` removes it.
    pub filter: Option<Option<serde_json::Value>>,
    /// `Some(None)`: back to `delivery.timeout`.
    pub timeout: Option<Option<String>>,
    /// `Some(None)`: back to `delivery.retry_schedule`.
    pub retry_schedule: Option<Option<Vec<String>>>,
    /// `Some(None)`: one event per request again.
    pub batch: Option<Option<BatchView>>,
    /// Ordered delivery per key on or off; never together with `batch`.
    pub ordering: Option<bool>,
}

/// A created endpoint, with its secret: the only time the secret is shown.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = CreatedEndpoint)]
pub struct Created {
    #[serde(flatten)]
    pub endpoint: EndpointView,
    /// The signing secret (`whsec_…`); shown only here and on rotation.
    pub secret: String,
}

/// An endpoint with its delivery statistics.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = EndpointWithStats)]
pub struct Detailed {
    #[serde(flatten)]
    pub endpoint: EndpointView,
    pub stats: Stats,
}

/// Deliveries of one endpoint (contract §5), and how the last 24 hours went.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[schema(as = EndpointStats)]
pub struct Stats {
    pub deliveries_total: i64,
    pub succeeded: i64,
    pub failed: i64,
    #[schema(required = true)]
    pub last_delivery_at: Option<DateTime<Utc>>,
    #[schema(required = true)]
    pub last_failure_at: Option<DateTime<Utc>>,
    /// Of the deliveries finished in the last 24 h, the share that succeeded.
    #[schema(required = true)]
    pub success_ratio_24h: Option<f64>,
    /// 95th percentile of attempt durations in the last 24 h, milliseconds.
    #[schema(required = true)]
    pub p95_latency_ms_24h: Option<f64>,
}

fn patterns(check: &mut Check, list: &[String]) -> Option<Vec<TopicPattern>> {
    if list.is_empty() {
        check.fail("event_types", "needs at least one pattern");
        return None;
    }
    if list.len() > MAX_PATTERNS {
        check.fail("event_types", format!("at most {MAX_PATTERNS} patterns"));
        return None;
    }
    let mut parsed = Vec::with_capacity(list.len());
    for (n, pattern) in list.iter().enumerate() {
        parsed.push(check.field(
            &format!("event_types[{n}]"),
            pattern.parse::<TopicPattern>(),
        )?);
    }
    Some(parsed)
}

fn rate_limit(check: &mut Check, value: Option<i64>) -> Option<i32> {
    match value {
        Some(n) if (1..=MAX_RATE_LIMIT).contains(&n) => Some(n as i32),
        Some(_) => {
            check.fail(
                "rate_limit",
                format!("requests per minute, from 1 to {MAX_RATE_LIMIT}"),
            );
            None
        }
        None => None,
    }
}

/// The scheme asked for (`standard` when none) with the secret given, checked to suit
/// it, or a generated one.
fn signing(check: &mut Check, scheme: Option<String>, secret: Option<String>) -> Option<Signing> {
    let scheme = match scheme {
        Some(text) => check.field("signature", text.parse::<SignatureScheme>())?,
        None => SignatureScheme::Standard,
    };
    match secret {
        Some(text) => check.field("secret", Signing::new(scheme, &text, None)),
        None => Some(Signing::generate(scheme)),
    }
}

/// Static headers, each checked under `headers.<name>`, then the set as a whole.
fn headers(check: &mut Check, given: BTreeMap<String, String>) -> Option<StaticHeaders> {
    let mut parsed = Vec::with_capacity(given.len());
    let mut valid = true;
    for (name, value) in &given {
        match parse_header(name, value) {
            Ok(header) => parsed.push(header),
            Err(invalid) => {
                check.fail(&format!("headers.{name}"), invalid.0);
                valid = false;
            }
        }
    }
    if !valid {
        return None;
    }
    check.field("headers", StaticHeaders::new(parsed))
}

/// The payload filter, compiled; refused as a field error on `filter` naming the
/// clause at fault.
fn filter(check: &mut Check, given: Option<serde_json::Value>) -> Option<PayloadFilter> {
    check.field("filter", PayloadFilter::parse(given?))
}

/// The endpoint's own request timeout, within `delivery.max_timeout`.
fn timeout(check: &mut Check, policy: &EndpointPolicy, given: Option<String>) -> Option<Duration> {
    check.field("timeout", policy.bounds.timeout(&given?))
}

/// The endpoint's own retry schedule, each step one of the delays with queues; a step
/// refused is a field error on `retry_schedule[n]`.
fn retry_schedule(
    check: &mut Check,
    policy: &EndpointPolicy,
    given: Option<Vec<String>>,
) -> Option<Vec<Duration>> {
    match policy.bounds.retry_schedule(&given?) {
        Ok(schedule) => Some(schedule.into_vec()),
        Err(refused) => {
            let field = match refused.step {
                Some(n) => format!("retry_schedule[{n}]"),
                None => "retry_schedule".to_string(),
            };
            check.fail(&field, refused.problem.0);
            None
        }
    }
}

/// The endpoint's batching, within the deployment's bounds; a refusal is a field
/// error on `batch.max_events` or `batch.window`.
fn batch(check: &mut Check, policy: &EndpointPolicy, given: Option<BatchView>) -> Option<Batching> {
    let given = given?;
    match policy.batch.batching(given.max_events, &given.window) {
        Ok(batching) => Some(batching),
        Err(refused) => {
            for error in refused {
                check.fail(&format!("batch.{}", error.field), error.problem.0);
            }
            None
        }
    }
}

/// Why `ordering` and `batch` exclude each other, as the field error says it.
const ORDERED_NOT_BATCHED: &str = "cannot be combined with `batch`: an ordered endpoint \
    receives each ordering key's events one request at a time (docs/ordering.md)";

/// Refuses `ordering` with `batch` asked for together, as a field error on `ordering`.
fn ordering(check: &mut Check, ordering: bool, batch: bool) {
    if ordering && batch {
        check.fail("ordering", ORDERED_NOT_BATCHED);
    }
}

/// Refuses a change that would leave the stored endpoint ordered and batching at once:
/// turning one on while the endpoint keeps the other. Only read when the change turns
/// one on without saying what becomes of the other. `ordering` and `batch` are the
/// changes asked for: `None` leaves it, `Some(on)` turns it on or off.
async fn ordering_against_stored(
    pool: &PgPool,
    caller: &Caller,
    id: Uuid,
    ordering: Option<bool>,
    batch: Option<bool>,
) -> Result<(), ServiceError> {
    let turns_ordering_on = ordering == Some(true) && batch.is_none();
    let turns_batch_on = batch == Some(true) && ordering.is_none();
    if !turns_ordering_on && !turns_batch_on {
        return Ok(());
    }
    let stored = endpoints::get(pool, caller.scope(), id)
        .await?
        .filter(|e| !e.deleted)
        .ok_or(ServiceError::NotFound)?;
    if turns_ordering_on && stored.batch.is_some() {
        return Err(ServiceError::invalid(
            "ordering",
            "this endpoint batches its events: remove `batch` (`\"batch\": null`) in the \
             same request to make it ordered (docs/ordering.md)",
        ));
    }
    if turns_batch_on && stored.ordering {
        return Err(ServiceError::invalid(
            "batch",
            "this endpoint is ordered: set `\"ordering\": false` in the same request to \
             batch its events (docs/ordering.md)",
        ));
    }
    Ok(())
}

/// The endpoint's tenant: a tenant token's own, never another (which is refused).
fn owner(check: &mut Check, caller: &Caller, asked: Option<String>) -> Option<String> {
    let asked = check.tenant("tenant_id", asked.filter(|t| !t.is_empty()));
    match caller {
        Caller::Admin => asked,
        Caller::Tenant(own) => {
            if asked.as_ref().is_some_and(|t| t != own) {
                check.fail(
                    "tenant_id",
                    "a tenant token creates endpoints of its own tenant only",
                );
            }
            Some(own.clone())
        }
    }
}

pub async fn create(
    pool: &PgPool,
    keys: &Keyring,
    policy: EndpointPolicy,
    caller: &Caller,
    input: EndpointInput,
) -> Result<Created, ServiceError> {
    let mut check = Check::default();
    let url = url(&mut check, &policy, &input.url);
    let event_types = patterns(&mut check, &input.event_types);
    let tenant_id = owner(&mut check, caller, input.tenant_id);
    let signing = signing(&mut check, input.signature, input.secret);
    let headers = headers(&mut check, input.headers.unwrap_or_default());
    let rate_limit = rate_limit(&mut check, input.rate_limit);
    let filter = filter(&mut check, input.filter);
    let own_timeout = timeout(&mut check, &policy, input.timeout);
    let own_schedule = retry_schedule(&mut check, &policy, input.retry_schedule);
    ordering(&mut check, input.ordering, input.batch.is_some());
    let own_batch = batch(&mut check, &policy, input.batch);
    let name = check.text("name", input.name, 200);
    let description = check.text("description", input.description, 2_000);
    check.finish()?;
    let (Some(url), Some(event_types), Some(signing), Some(headers)) =
        (url, event_types, signing, headers)
    else {
        unreachable!("a missing field failed the check");
    };
    refuse_private(&policy, &url).await?;
    let secret = signing.current_text();
    let endpoint = endpoints::insert(
        pool,
        keys,
        NewEndpoint {
            url,
            event_types,
            tenant_id,
            signing,
            headers,
            rate_limit,
            filter,
            timeout: own_timeout,
            retry_schedule: own_schedule,
            batch: own_batch,
            ordering: input.ordering,
            name,
            description,
        },
    )
    .await?;
    Ok(Created {
        endpoint: EndpointView::from(&endpoint),
        secret,
    })
}

pub async fn get(pool: &PgPool, caller: &Caller, id: Uuid) -> Result<Detailed, ServiceError> {
    let endpoint = endpoints::get(pool, caller.scope(), id)
        .await?
        .filter(|e| !e.deleted)
        .ok_or(ServiceError::NotFound)?;
    Ok(Detailed {
        endpoint: EndpointView::from(&endpoint),
        stats: stats(pool, id).await?,
    })
}

async fn stats(pool: &PgPool, id: Uuid) -> Result<Stats, sqlx::Error> {
    sqlx::query_as(
        "SELECT
            count(*) AS deliveries_total,
            count(*) FILTER (WHERE status = 'success') AS succeeded,
            count(*) FILTER (WHERE status = 'failed') AS failed,
            max(delivered_at) AS last_delivery_at,
            max(updated_at) FILTER (WHERE status = 'failed' OR last_error IS NOT NULL) AS last_failure_at,
            (count(*) FILTER (WHERE status = 'success' AND updated_at > now() - interval '24 hours'))::float8
              / NULLIF(count(*) FILTER (WHERE status IN ('success', 'failed')
                                         AND updated_at > now() - interval '24 hours'), 0)
              AS success_ratio_24h,
            (SELECT percentile_cont(0.95) WITHIN GROUP (ORDER BY a.duration_ms)
               FROM herald.delivery_attempts a JOIN herald.deliveries d2 ON d2.id = a.delivery_id
              WHERE d2.endpoint_id = $1 AND a.attempted_at > now() - interval '24 hours')
              AS p95_latency_ms_24h
         FROM herald.deliveries WHERE endpoint_id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
}

/// What a list of endpoints may be narrowed to.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub tenant: Option<String>,
    /// `enabled`, `failing` or `disabled`.
    pub state: Option<String>,
    pub event_type: Option<String>,
}

pub async fn list(
    pool: &PgPool,
    caller: &Caller,
    filter: ListFilter,
    page: PageRequest,
) -> Result<Page<EndpointView>, ServiceError> {
    let state = match filter.state.as_deref() {
        None => None,
        Some(state @ ("enabled" | "failing" | "disabled")) => Some(state),
        Some(_) => {
            return Err(ServiceError::invalid(
                "state",
                "enabled, failing or disabled",
            ))
        }
    };
    let rows = endpoints::list(
        pool,
        &endpoints::Filter {
            scope: caller.scope(),
            tenant: filter.tenant.as_deref(),
            state,
            event_type: filter.event_type.as_deref(),
            before: page.after()?,
            limit: page.fetch(),
        },
    )
    .await?;
    Ok(Page::of(rows, &page, |e| e.id).map(|e| EndpointView::from(&e)))
}

pub async fn update(
    pool: &PgPool,
    keys: &Keyring,
    policy: EndpointPolicy,
    caller: &Caller,
    id: Uuid,
    changes: EndpointChanges,
) -> Result<EndpointView, ServiceError> {
    let mut check = Check::default();
    let batch_on = changes.batch.as_ref().map(Option::is_some);
    let url = changes.url.and_then(|u| url(&mut check, &policy, &u));
    let event_types = match &changes.event_types {
        Some(list) => patterns(&mut check, list),
        None => None,
    };
    let rate = changes.rate_limit.map(|r| rate_limit(&mut check, r));
    let name = changes.name.map(|n| check.text("name", n, 200));
    let description = changes
        .description
        .map(|d| check.text("description", d, 2_000));
    let signature = changes
        .signature
        .and_then(|s| check.field("signature", s.parse::<SignatureScheme>()));
    let new_headers = changes.headers.map(|h| headers(&mut check, h));
    let new_filter = changes.filter.map(|f| filter(&mut check, f));
    let new_timeout = changes.timeout.map(|t| timeout(&mut check, &policy, t));
    let new_schedule = changes
        .retry_schedule
        .map(|s| retry_schedule(&mut check, &policy, s));
    ordering(
        &mut check,
        changes.ordering == Some(true),
        batch_on == Some(true),
    );
    let new_batch = changes.batch.map(|b| batch(&mut check, &policy, b));
    check.finish()?;
    ordering_against_stored(pool, caller, id, changes.ordering, batch_on).await?;
    if let Some(url) = &url {
        refuse_private(&policy, url).await?;
    }
    if let Some(scheme) = signature.filter(|s| *s != SignatureScheme::Legacy) {
        let secret = endpoints::current_secret(pool, keys, caller.scope(), id)
            .await?
            .ok_or(ServiceError::NotFound)?;
        if secret.parse::<SigningSecret>().is_err() {
            return Err(ServiceError::invalid(
                "signature",
                format!(
                    "`{scheme}` signs with a whsec_ secret and this endpoint's is another \
                     (a legacy one): rotate the secret first (rotate-secret), then change the scheme"
                ),
            ));
        }
    }
    if let Some(enabled) = changes.enabled {
        // A change of state is its own write, with its operational event; enabling
        // closes the circuit breaker.
        let reason = if enabled {
            "enabled by its owner"
        } else {
            "disabled by its owner"
        };
        health::set_enabled(pool, caller.scope(), id, enabled, reason)
            .await?
            .ok_or(ServiceError::NotFound)?;
    }
    let endpoint = endpoints::update(
        pool,
        keys,
        caller.scope(),
        id,
        EndpointPatch {
            url,
            event_types,
            enabled: None,
            rate_limit: rate,
            name,
            description,
            signature,
            headers: new_headers.flatten(),
            filter: new_filter,
            timeout: new_timeout,
            retry_schedule: new_schedule,
            batch: new_batch,
            ordering: changes.ordering,
        },
    )
    .await?;
    match endpoint {
        Some(endpoint) => Ok(EndpointView::from(&endpoint)),
        // Turned ordered and batching at once by a change since the check.
        None if endpoints::get(pool, caller.scope(), id)
            .await?
            .is_some_and(|e| !e.deleted) =>
        {
            Err(ServiceError::invalid("ordering", ORDERED_NOT_BATCHED))
        }
        None => Err(ServiceError::NotFound),
    }
}

pub async fn delete(pool: &PgPool, caller: &Caller, id: Uuid) -> Result<(), ServiceError> {
    if endpoints::delete(pool, caller.scope(), id).await? {
        Ok(())
    } else {
        Err(ServiceError::NotFound)
    }
}

/// The new secret, shown once; the old one signs alongside for `grace_hours`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = RotatedSecret)]
pub struct Rotated {
    pub id: Uuid,
    pub secret: String,
    pub previous_valid_hours: i64,
}

pub async fn rotate_secret(
    pool: &PgPool,
    keys: &Keyring,
    caller: &Caller,
    id: Uuid,
    grace_hours: Option<i64>,
) -> Result<Rotated, ServiceError> {
    let grace = grace_hours.unwrap_or(24);
    if !(0..=MAX_GRACE_HOURS).contains(&grace) {
        return Err(ServiceError::invalid(
            "grace_hours",
            format!("from 0 to {MAX_GRACE_HOURS}"),
        ));
    }
    let secret = SigningSecret::generate();
    if !endpoints::rotate_secret(
        pool,
        keys,
        caller.scope(),
        id,
        &secret,
        chrono::Duration::hours(grace),
    )
    .await?
    {
        return Err(ServiceError::NotFound);
    }
    Ok(Rotated {
        id,
        secret: secret.expose(),
        previous_valid_hours: grace,
    })
}
