//! The managing commands (contract §3): endpoints, tokens, events, deliveries and the
//! dead-letter queue, each a call of the same service layer the admin API uses
//! (`crate::service`), as the admin. Lists page through to `--limit` rows.

use chrono::{DateTime, Utc};
use clap::Subcommand;
use serde::Serialize;
use uuid::Uuid;

use reqwest::Method;
use serde_json::{json, Value};

use super::print_json;
use super::progress::Progress;
use super::remote::Call;
use crate::config::Settings;
use crate::keyring::Keyring;
use crate::service::{
    self, deliveries, dlq, endpoints, events, replay, resend, tokens, Caller, Page, PageRequest,
};
use crate::store;
use crate::store::endpoints::BatchView;

#[derive(Subcommand)]
pub enum Command {
    /// Manage subscribed endpoints.
    #[command(subcommand)]
    Endpoint(EndpointCommand),
    /// Tenant tokens of the admin API.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Stored events.
    #[command(subcommand)]
    Event(EventCommand),
    /// Deliveries and their attempts.
    #[command(subcommand)]
    Delivery(DeliveryCommand),
    /// Inspect and redrive the dead-letter queue.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Endpoint secrets at rest.
    #[command(subcommand)]
    Secrets(SecretsCommand),
    /// Inspect, reingest and purge the parking queue `<prefix>.invalid`.
    #[command(subcommand)]
    Invalid(super::invalid::InvalidCommand),
}

#[derive(Subcommand)]
pub enum SecretsCommand {
    /// Seal every stored secret (signing secrets, previous secrets, static header
    /// values) under the first of `secrets.keys`; prints `{"rewritten": n}`. Safe while
    /// Herald runs; running it again rewrites nothing.
    Reencrypt,
}

#[derive(Subcommand)]
pub enum EndpointCommand {
    /// Subscribe a URL to event types; prints the endpoint with its secret.
    Add {
        #[arg(long)]
        url: String,
        /// AMQP topic pattern (`*` one word, `#` zero or more); repeatable.
        #[arg(long = "event-type", required = true)]
        event_types: Vec<String>,
        #[arg(long)]
        tenant: Option<String>,
        /// `whsec_…`, or with `--signature legacy` the old service's secret text
        /// (8–256 printable ASCII characters); a `whsec_` one is generated when absent.
        #[arg(long)]
        secret: Option<String>,
        /// `standard` (default), `legacy` (X-Signature / X-Event) or `both`.
        #[arg(long)]
        signature: Option<String>,
        /// A static header sent with every request, `Name: value`; repeatable.
        #[arg(long = "header", value_name = "NAME: VALUE")]
        headers: Vec<String>,
        /// Requests per minute.
        #[arg(long)]
        rate_limit: Option<i64>,
        /// A payload filter, JSON (docs/filters.md): `{"data.amount": {"$gte": 1000}}`.
        #[arg(long, value_name = "JSON", value_parser = filter_json)]
        filter: Option<Value>,
        /// Its own request timeout (`5s`), at most `delivery.max_timeout`.
        #[arg(long, value_name = "DURATION")]
        timeout: Option<String>,
        /// Its own delays before each retry, comma-separated (`1m,5m,30m`), each one of
        /// `delivery.retry_schedule` or `delivery.retry_delays`; `none`: no retry.
        #[arg(long, value_name = "DELAYS")]
        retry_schedule: Option<String>,
        /// Batch its events: at most N in one request (2 to `delivery.batch_max_events`);
        /// with `--batch-window`.
        #[arg(long, value_name = "N", requires = "batch_window")]
        batch_max: Option<i64>,
        /// How long the first event of a batch waits for others (`200ms`), at most
        /// `delivery.batch_max_window`; with `--batch-max`.
        #[arg(long, value_name = "DURATION", requires = "batch_max")]
        batch_window: Option<String>,
        /// Deliver each ordering key's events one at a time, in publish order
        /// (docs/ordering.md); not with `--batch-max`.
        #[arg(long, conflicts_with_all = ["batch_max", "batch_window"])]
        ordered: bool,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        description: Option<String>,
    },
    /// Endpoints, newest first, as a JSON array.
    List {
        #[arg(long)]
        tenant: Option<String>,
        /// `enabled`, `failing` or `disabled`.
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        event_type: Option<String>,
        #[arg(long)]
        limit: Option<usize>,
    },
    /// One endpoint with its delivery statistics.
    Get { id: Uuid },
    /// Change an endpoint; fields not given stay as they are.
    Update {
        id: Uuid,
        #[arg(long)]
        url: Option<String>,
        /// Replaces every pattern; repeatable.
        #[arg(long = "event-type")]
        event_types: Vec<String>,
        #[arg(long)]
        enabled: Option<bool>,
        #[arg(long)]
        rate_limit: Option<i64>,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// `standard`, `legacy` or `both`.
        #[arg(long)]
        signature: Option<String>,
        /// Replaces every static header, `Name: value`; repeatable.
        #[arg(
            long = "header",
            value_name = "NAME: VALUE",
            conflicts_with = "no_headers"
        )]
        headers: Vec<String>,
        /// Removes every static header.
        #[arg(long)]
        no_headers: bool,
        /// Replaces the payload filter, JSON (docs/filters.md).
        #[arg(long, value_name = "JSON", value_parser = filter_json, conflicts_with = "no_filter")]
        filter: Option<Value>,
        /// Removes the payload filter: every event of its types again.
        #[arg(long)]
        no_filter: bool,
        /// Its own request timeout (`5s`), at most `delivery.max_timeout`.
        #[arg(long, value_name = "DURATION", conflicts_with = "default_timeout")]
        timeout: Option<String>,
        /// Back to the deployment's `delivery.timeout`.
        #[arg(long)]
        default_timeout: bool,
        /// Its own delays before each retry, comma-separated (`1m,5m,30m`); `none`: no
        /// retry.
        #[arg(long, value_name = "DELAYS", conflicts_with = "default_retry_schedule")]
        retry_schedule: Option<String>,
        /// Back to the deployment's `delivery.retry_schedule`.
        #[arg(long)]
        default_retry_schedule: bool,
        /// Batch its events: at most N in one request; with `--batch-window`.
        #[arg(
            long,
            value_name = "N",
            requires = "batch_window",
            conflicts_with = "no_batch"
        )]
        batch_max: Option<i64>,
        /// How long the first event of a batch waits for others (`200ms`); with
        /// `--batch-max`.
        #[arg(
            long,
            value_name = "DURATION",
            requires = "batch_max",
            conflicts_with = "no_batch"
        )]
        batch_window: Option<String>,
        /// One event per request again.
        #[arg(long)]
        no_batch: bool,
        /// Deliver each ordering key's events one at a time, in publish order
        /// (docs/ordering.md); an endpoint that batches needs `--no-batch` with it.
        #[arg(long, conflicts_with_all = ["unordered", "batch_max", "batch_window"])]
        ordered: bool,
        /// Deliver its events without ordering again.
        #[arg(long)]
        unordered: bool,
    },
    /// Stop delivering to an endpoint; its records stay.
    Delete { id: Uuid },
    /// Send a signed `herald.test` event now and print what the receiver did.
    Test { id: Uuid },
    /// A new secret (printed once); the old one signs alongside for the grace period.
    RotateSecret {
        id: Uuid,
        #[arg(long, default_value_t = 24)]
        grace_hours: i64,
    },
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// A token for one tenant; printed once, stored only as a hash.
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        name: Option<String>,
    },
    List {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Takes effect at once in every process.
    Revoke { id: Uuid },
}

#[derive(Subcommand)]
pub enum EventCommand {
    List {
        /// Event-type pattern.
        #[arg(long = "type")]
        event_type: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        since: Option<DateTime<Utc>>,
        #[arg(long)]
        until: Option<DateTime<Utc>>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One event with its deliveries.
    Show {
        id: String,
        #[arg(long)]
        tenant: Option<String>,
    },
}

#[derive(clap::Args, Clone)]
pub struct DeliveryFilter {
    #[arg(long)]
    endpoint: Option<Uuid>,
    #[arg(long)]
    status: Option<String>,
    #[arg(long)]
    tenant: Option<String>,
    #[arg(long)]
    event: Option<String>,
    #[arg(long)]
    since: Option<DateTime<Utc>>,
    #[arg(long)]
    until: Option<DateTime<Utc>>,
    #[arg(long, default_value_t = 100)]
    limit: usize,
}

impl DeliveryFilter {
    fn into_filter(self) -> (deliveries::ListFilter, usize) {
        let filter = deliveries::ListFilter {
            tenant: self.tenant,
            status: self.status,
            endpoint_id: self.endpoint,
            event_id: self.event,
            since: self.since,
            until: self.until,
            ..Default::default()
        };
        (filter, self.limit)
    }
}

#[derive(Subcommand)]
pub enum DeliveryCommand {
    List(DeliveryFilter),
    /// One delivery with every attempt.
    Show {
        id: Uuid,
    },
    /// A new attempt of a finished delivery, now.
    Retry {
        id: Uuid,
    },
}

#[derive(Subcommand)]
pub enum DlqCommand {
    /// Dead deliveries newest first with their reason; prints `{"total", "data"}`.
    List {
        #[command(flatten)]
        filter: DlqFilter,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Send dead deliveries again with a fresh retry schedule: `--all`, `--delivery`
    /// ids, or a filter. Progress on stderr, the finished job on stdout.
    Redrive {
        #[command(flatten)]
        selection: DlqSelection,
        /// Enable the disabled endpoints of these deliveries (closing their breakers)
        /// instead of refusing them.
        #[arg(long)]
        enable_endpoints: bool,
    },
    /// Take dead deliveries out of the dead-letter queue (their records stay
    /// `failed`, noting when they were purged).
    Purge {
        #[command(flatten)]
        selection: DlqSelection,
        /// Yes, purge: it cannot be undone.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(clap::Args, Clone)]
pub struct DlqFilter {
    #[arg(long)]
    endpoint: Option<Uuid>,
    /// The event's tenant.
    #[arg(long)]
    tenant: Option<String>,
    /// `retries_exhausted`, `gone`, `endpoint_disabled`, `endpoint_deleted`, `unknown`.
    #[arg(long)]
    reason: Option<String>,
    #[arg(long = "event-type")]
    event_type: Option<String>,
    /// Dead-lettered at or after (RFC 3339).
    #[arg(long)]
    since: Option<DateTime<Utc>>,
    /// Dead-lettered before (RFC 3339).
    #[arg(long)]
    until: Option<DateTime<Utc>>,
}

#[derive(clap::Args, Clone)]
pub struct DlqSelection {
    /// Every dead delivery (narrowed by any filter given).
    #[arg(long)]
    all: bool,
    #[arg(long, num_args = 1..)]
    delivery: Vec<Uuid>,
    #[command(flatten)]
    filter: DlqFilter,
}

impl DlqFilter {
    fn into_filter(self, ids: Vec<Uuid>) -> store::dlq::Filter {
        store::dlq::Filter {
            scope: None,
            tenant_id: self.tenant,
            endpoint_id: self.endpoint,
            reason: self.reason,
            event_type: self.event_type,
            since: self.since,
            until: self.until,
            delivery_ids: (!ids.is_empty()).then_some(ids),
        }
    }

    fn query(&self, call: Call) -> Call {
        call.query("endpoint_id", self.endpoint)
            .query("tenant_id", self.tenant.as_ref())
            .query("reason", self.reason.as_ref())
            .query("event_type", self.event_type.as_ref())
            .query("since", self.since.map(|t| t.to_rfc3339()))
            .query("until", self.until.map(|t| t.to_rfc3339()))
    }
}

impl DlqSelection {
    fn request(self, kind: dlq::Kind, enable_endpoints: bool) -> dlq::JobRequest {
        dlq::JobRequest {
            kind,
            all: self.all,
            enable_endpoints,
            filter: self.filter.into_filter(self.delivery),
        }
    }

    fn body(&self, extra: (&str, bool)) -> Value {
        let filter = self.filter.clone().into_filter(self.delivery.clone());
        let mut body = json!(filter);
        body["all"] = json!(self.all);
        body[extra.0] = json!(extra.1);
        body
    }
}

/// Runs a dead-letter job in the foreground: progress on stderr, the finished job on
/// stdout; fails when ids asked for were not in the queue.
async fn dlq_job(
    settings: &Settings,
    pool: &sqlx::PgPool,
    caller: &Caller,
    request: dlq::JobRequest,
) -> anyhow::Result<()> {
    let job = dlq::start(pool, caller, request).await?;
    let mut progress = Progress::new(format!("{} {}", job.kind, job.id), job.matched as u64);
    let done = dlq::run(settings, pool, job, |job| {
        progress.update((job.processed + job.refused) as u64, &job_note(job));
    })
    .await?;
    progress.finish((done.processed + done.refused) as u64, &job_note(&done));
    show(&done)?;
    if !done.not_found.is_empty() {
        anyhow::bail!(
            "{} delivery id(s) not in the dead-letter queue",
            done.not_found.len()
        );
    }
    Ok(())
}

fn job_note(job: &store::dlq_jobs::Job) -> String {
    let verb = if job.kind == "purge" {
        "purged"
    } else {
        "redriven"
    };
    format!("{} {verb}, {} refused", job.processed, job.refused)
}

/// `--filter '<json>'`: any JSON here; the service says what is wrong with a filter.
fn filter_json(text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))
}

/// `--retry-schedule 1m,5m,30m` as its steps; `none` (or nothing) is no retry.
fn schedule_steps(text: &str) -> Vec<String> {
    if text.trim().eq_ignore_ascii_case("none") {
        return Vec::new();
    }
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// `--batch-max` and `--batch-window` as the option they make (clap requires both).
fn batch_of(max: &Option<i64>, window: &Option<String>) -> Option<BatchView> {
    Some(BatchView {
        max_events: (*max)?,
        window: window.clone()?,
    })
}

/// A value flag and its `--default-…` flag: set, back to the default, or leave.
fn own_or_default<T: Clone>(value: &Option<T>, default: bool) -> Option<Option<T>> {
    if default {
        Some(None)
    } else {
        value.clone().map(Some)
    }
}

/// `--ordered` / `--unordered` of an update (clap lets one through at most): on, off,
/// or leave.
fn ordering_change(ordered: bool, unordered: bool) -> Option<bool> {
    (ordered || unordered).then_some(ordered)
}

/// `--filter` / `--no-filter` of an update: replace, remove, or leave.
fn filter_change(filter: &Option<Value>, no_filter: bool) -> Option<Option<Value>> {
    if no_filter {
        Some(None)
    } else {
        filter.clone().map(Some)
    }
}

/// `--header 'Name: value'` flags as a map.
fn header_map(flags: &[String]) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    flags
        .iter()
        .map(|flag| {
            let (name, value) = flag
                .split_once(':')
                .ok_or_else(|| anyhow::anyhow!("--header takes `Name: value`, got `{flag}`"))?;
            Ok((name.trim().to_string(), value.trim().to_string()))
        })
        .collect()
}

/// The configured keys, checked against the stored secrets: a command never seals a
/// secret under a key the stored ones contradict.
async fn keys(settings: &Settings, pool: &sqlx::PgPool) -> anyhow::Result<Keyring> {
    let keys = settings.secrets.keyring()?;
    store::endpoints::check_keys(pool, &keys).await?;
    Ok(keys)
}

/// Pages through a list until `limit` rows (all when `None`).
async fn collect<T, F, Fut>(limit: Option<usize>, mut page: F) -> anyhow::Result<Vec<T>>
where
    F: FnMut(PageRequest) -> Fut,
    Fut: std::future::Future<Output = Result<Page<T>, service::ServiceError>>,
{
    let mut rows = Vec::new();
    let mut cursor = None;
    loop {
        let want = limit.map_or(1_000, |l| (l - rows.len()).clamp(1, 1_000));
        let next = page(PageRequest::new(Some(want as i64), cursor)?).await?;
        rows.extend(next.data);
        cursor = next.next_cursor;
        if cursor.is_none() || limit.is_some_and(|l| rows.len() >= l) {
            return Ok(rows);
        }
    }
}

fn show(value: impl Serialize) -> anyhow::Result<()> {
    print_json(&value)
}

pub async fn run(settings: Settings, command: Command) -> anyhow::Result<()> {
    let pool = store::pool(&settings.database)?;
    let policy = endpoints::EndpointPolicy::from_settings(&settings.delivery);
    let admin = Caller::Admin;
    let caller = &admin;
    let pool = &pool;
    match command {
        Command::Endpoint(command) => match command {
            EndpointCommand::Add {
                url,
                event_types,
                tenant,
                secret,
                signature,
                headers,
                rate_limit,
                filter,
                timeout,
                retry_schedule,
                batch_max,
                batch_window,
                ordered,
                name,
                description,
            } => {
                let input = endpoints::EndpointInput {
                    url,
                    event_types,
                    tenant_id: tenant,
                    secret,
                    signature,
                    headers: Some(header_map(&headers)?),
                    rate_limit,
                    filter,
                    timeout,
                    retry_schedule: retry_schedule.as_deref().map(schedule_steps),
                    batch: batch_of(&batch_max, &batch_window),
                    ordering: ordered,
                    name,
                    description,
                };
                show(
                    endpoints::create(pool, &keys(&settings, pool).await?, policy, caller, input)
                        .await?,
                )
            }
            EndpointCommand::List {
                tenant,
                state,
                event_type,
                limit,
            } => {
                let filter = endpoints::ListFilter {
                    tenant,
                    state,
                    event_type,
                };
                show(
                    collect(limit, |page| {
                        endpoints::list(pool, caller, filter.clone(), page)
                    })
                    .await?,
                )
            }
            EndpointCommand::Get { id } => show(endpoints::get(pool, caller, id).await?),
            EndpointCommand::Update {
                id,
                url,
                event_types,
                enabled,
                rate_limit,
                name,
                description,
                signature,
                headers,
                no_headers,
                filter,
                no_filter,
                timeout,
                default_timeout,
                retry_schedule,
                default_retry_schedule,
                batch_max,
                batch_window,
                no_batch,
                ordered,
                unordered,
            } => {
                let headers = if no_headers {
                    Some(Default::default())
                } else {
                    (!headers.is_empty())
                        .then(|| header_map(&headers))
                        .transpose()?
                };
                let changes = endpoints::EndpointChanges {
                    url,
                    event_types: (!event_types.is_empty()).then_some(event_types),
                    enabled,
                    rate_limit: rate_limit.map(Some),
                    name: name.map(Some),
                    description: description.map(Some),
                    signature,
                    headers,
                    filter: filter_change(&filter, no_filter),
                    timeout: own_or_default(&timeout, default_timeout),
                    retry_schedule: own_or_default(
                        &retry_schedule.as_deref().map(schedule_steps),
                        default_retry_schedule,
                    ),
                    batch: own_or_default(&batch_of(&batch_max, &batch_window), no_batch),
                    ordering: ordering_change(ordered, unordered),
                };
                show(
                    endpoints::update(
                        pool,
                        &keys(&settings, pool).await?,
                        policy,
                        caller,
                        id,
                        changes,
                    )
                    .await?,
                )
            }
            EndpointCommand::Delete { id } => {
                endpoints::delete(pool, caller, id).await?;
                show(serde_json::json!({ "id": id, "deleted": true }))
            }
            EndpointCommand::Test { id } => {
                let outcome =
                    resend::test(&settings, pool, &keys(&settings, pool).await?, caller, id)
                        .await?;
                show(&outcome)?;
                anyhow::ensure!(
                    outcome.success,
                    "the endpoint did not accept the test event"
                );
                Ok(())
            }
            EndpointCommand::RotateSecret { id, grace_hours } => show(
                endpoints::rotate_secret(
                    pool,
                    &keys(&settings, pool).await?,
                    caller,
                    id,
                    Some(grace_hours),
                )
                .await?,
            ),
        },
        Command::Token(command) => match command {
            TokenCommand::Create { tenant, name } => {
                show(tokens::create(pool, caller, Some(tenant), name).await?)
            }
            TokenCommand::List { tenant, limit } => show(
                collect(limit, |page| {
                    tokens::list(pool, caller, tenant.clone(), page)
                })
                .await?,
            ),
            TokenCommand::Revoke { id } => show(tokens::revoke(pool, caller, id).await?),
        },
        Command::Event(command) => match command {
            EventCommand::List {
                event_type,
                tenant,
                since,
                until,
                limit,
            } => {
                let filter = events::ListFilter {
                    event_type,
                    tenant,
                    since,
                    until,
                };
                show(
                    collect(Some(limit), |page| {
                        events::list(pool, caller, filter.clone(), page)
                    })
                    .await?,
                )
            }
            EventCommand::Show { id, tenant } => {
                show(events::get(pool, caller, &id, tenant).await?)
            }
        },
        Command::Delivery(command) => match command {
            DeliveryCommand::List(filter) => {
                let (filter, limit) = filter.into_filter();
                show(
                    collect(Some(limit), |page| {
                        deliveries::list(pool, caller, filter.clone(), page)
                    })
                    .await?,
                )
            }
            DeliveryCommand::Show { id } => show(deliveries::get(pool, caller, id).await?),
            DeliveryCommand::Retry { id } => {
                show(resend::retry(&settings, pool, caller, id).await?)
            }
        },
        Command::Invalid(command) => super::invalid::run(&settings, pool, command).await,
        Command::Secrets(SecretsCommand::Reencrypt) => {
            let keys = keys(&settings, pool).await?;
            if keys.is_empty() {
                anyhow::bail!("configuration key `secrets.keys`: no key to seal the secrets under");
            }
            let rewritten = store::endpoints::reencrypt(pool, &keys, |seen, rewritten| {
                eprintln!("reencrypt: {seen} endpoints looked at, {rewritten} rewritten");
            })
            .await?;
            show(serde_json::json!({ "rewritten": rewritten }))
        }
        Command::Dlq(command) => match command {
            DlqCommand::List { filter, limit } => {
                let filter = filter.into_filter(Vec::new());
                let first = PageRequest::new(Some(1), None)?;
                let total = dlq::list(pool, caller, filter.clone(), first).await?.total;
                let data = collect(Some(limit), |page| {
                    let filter = filter.clone();
                    async move {
                        let page = dlq::list(pool, caller, filter, page).await?;
                        Ok(Page {
                            data: page.data,
                            next_cursor: page.next_cursor,
                        })
                    }
                })
                .await?;
                show(json!({ "total": total, "data": data }))
            }
            DlqCommand::Redrive {
                selection,
                enable_endpoints,
            } => {
                let request = selection.request(dlq::Kind::Redrive, enable_endpoints);
                dlq_job(&settings, pool, caller, request).await
            }
            DlqCommand::Purge { selection, yes } => {
                if !yes {
                    anyhow::bail!("a purge cannot be undone: add --yes");
                }
                dlq_job(
                    &settings,
                    pool,
                    caller,
                    selection.request(dlq::Kind::Purge, false),
                )
                .await
            }
        },
    }
}

#[derive(clap::Args)]
pub struct ReplayArgs {
    #[arg(long)]
    endpoint: Uuid,
    #[arg(long)]
    since: DateTime<Utc>,
    /// Default: now.
    #[arg(long)]
    until: Option<DateTime<Utc>>,
    /// Only events whose delivery to the endpoint failed.
    #[arg(long)]
    only_failed: bool,
}

/// Runs a replay in the foreground: progress on stderr, the finished job on stdout.
pub async fn replay(settings: Settings, args: ReplayArgs) -> anyhow::Result<()> {
    let pool = store::pool(&settings.database)?;
    let input = replay::ReplayInput {
        since: Some(args.since),
        until: args.until,
        only_failed: args.only_failed,
        retention: settings.retention.window,
    };
    let job = replay::start(&pool, &Caller::Admin, args.endpoint, input).await?;
    let queued = job.matched;
    eprintln!("replay {}: {queued} events to send", job.id);
    let done = replay::run(&settings, &pool, job, |job| {
        eprintln!(
            "replay {}: {} sent, {} already queued, of {}",
            job.id, job.sent, job.skipped, job.matched
        );
    })
    .await?;
    show(replay::Started::from(&done))
}

/// The API call that does what `command` does locally (`--api`).
pub fn remote_call(command: &Command) -> anyhow::Result<Call> {
    Ok(match command {
        Command::Endpoint(command) => match command {
            EndpointCommand::Add {
                url,
                event_types,
                tenant,
                secret,
                signature,
                headers,
                rate_limit,
                filter,
                timeout,
                retry_schedule,
                batch_max,
                batch_window,
                ordered,
                name,
                description,
            } => Call::new(Method::POST, "/endpoints").body(json!({
                "url": url, "event_types": event_types, "tenant_id": tenant, "secret": secret,
                "signature": signature, "headers": header_map(headers)?,
                "rate_limit": rate_limit, "filter": filter, "timeout": timeout,
                "retry_schedule": retry_schedule.as_deref().map(schedule_steps),
                "batch": batch_of(batch_max, batch_window), "ordering": ordered,
                "name": name, "description": description,
            })),
            EndpointCommand::List {
                tenant,
                state,
                event_type,
                limit,
            } => Call::new(Method::GET, "/endpoints")
                .query("tenant_id", tenant.as_ref())
                .query("state", state.as_ref())
                .query("event_type", event_type.as_ref())
                .list(*limit),
            EndpointCommand::Get { id } => Call::new(Method::GET, format!("/endpoints/{id}")),
            EndpointCommand::Update {
                id,
                url,
                event_types,
                enabled,
                rate_limit,
                name,
                description,
                signature,
                headers,
                no_headers,
                filter,
                no_filter,
                timeout,
                default_timeout,
                retry_schedule,
                default_retry_schedule,
                batch_max,
                batch_window,
                no_batch,
                ordered,
                unordered,
            } => {
                let mut body = serde_json::Map::new();
                let mut put = |key: &str, value: Value| {
                    if !value.is_null() {
                        body.insert(key.into(), value);
                    }
                };
                put("url", json!(url));
                if !event_types.is_empty() {
                    put("event_types", json!(event_types));
                }
                put("enabled", json!(enabled));
                put("rate_limit", json!(rate_limit));
                put("name", json!(name));
                put("description", json!(description));
                put("signature", json!(signature));
                if *no_headers || !headers.is_empty() {
                    put("headers", json!(header_map(headers)?));
                }
                if let Some(filter) = filter_change(filter, *no_filter) {
                    body.insert("filter".into(), json!(filter));
                }
                if let Some(timeout) = own_or_default(timeout, *default_timeout) {
                    body.insert("timeout".into(), json!(timeout));
                }
                let steps = retry_schedule.as_deref().map(schedule_steps);
                if let Some(schedule) = own_or_default(&steps, *default_retry_schedule) {
                    body.insert("retry_schedule".into(), json!(schedule));
                }
                if let Some(batch) = own_or_default(&batch_of(batch_max, batch_window), *no_batch) {
                    body.insert("batch".into(), json!(batch));
                }
                if let Some(ordering) = ordering_change(*ordered, *unordered) {
                    body.insert("ordering".into(), json!(ordering));
                }
                Call::new(Method::PATCH, format!("/endpoints/{id}")).body(Value::Object(body))
            }
            EndpointCommand::Delete { id } => Call::new(Method::DELETE, format!("/endpoints/{id}")),
            EndpointCommand::Test { id } => {
                Call::new(Method::POST, format!("/endpoints/{id}/test"))
            }
            EndpointCommand::RotateSecret { id, grace_hours } => {
                Call::new(Method::POST, format!("/endpoints/{id}/rotate-secret"))
                    .body(json!({ "grace_hours": grace_hours }))
            }
        },
        Command::Token(command) => match command {
            TokenCommand::Create { tenant, name } => Call::new(Method::POST, "/tokens")
                .body(json!({ "tenant_id": tenant, "name": name })),
            TokenCommand::List { tenant, limit } => Call::new(Method::GET, "/tokens")
                .query("tenant_id", tenant.as_ref())
                .list(*limit),
            TokenCommand::Revoke { id } => Call::new(Method::DELETE, format!("/tokens/{id}")),
        },
        Command::Event(command) => match command {
            EventCommand::List {
                event_type,
                tenant,
                since,
                until,
                limit,
            } => Call::new(Method::GET, "/events")
                .query("type", event_type.as_ref())
                .query("tenant_id", tenant.as_ref())
                .query("since", since.map(|t| t.to_rfc3339()))
                .query("until", until.map(|t| t.to_rfc3339()))
                .list(Some(*limit)),
            EventCommand::Show { id, tenant } => {
                Call::new(Method::GET, format!("/events/{id}")).query("tenant_id", tenant.as_ref())
            }
        },
        Command::Delivery(command) => match command {
            DeliveryCommand::List(filter) => filter.call("/deliveries"),
            DeliveryCommand::Show { id } => Call::new(Method::GET, format!("/deliveries/{id}")),
            DeliveryCommand::Retry { id } => {
                Call::new(Method::POST, format!("/deliveries/{id}/retry"))
            }
        },
        Command::Invalid(command) => super::invalid::remote_call(command)?,
        Command::Secrets(_) => {
            anyhow::bail!("secrets reencrypt works on the database directly, not through --api")
        }
        Command::Dlq(command) => match command {
            DlqCommand::List { filter, limit } => filter
                .query(Call::new(Method::GET, "/dlq"))
                .list(Some(*limit)),
            DlqCommand::Redrive {
                selection,
                enable_endpoints,
            } => Call::new(Method::POST, "/dlq/redrive")
                .body(selection.body(("enable_endpoints", *enable_endpoints)))
                .follow("/dlq/jobs", super::remote::dlq_gauge),
            DlqCommand::Purge { selection, yes } => {
                if !yes {
                    anyhow::bail!("a purge cannot be undone: add --yes");
                }
                Call::new(Method::POST, "/dlq/purge")
                    .body(selection.body(("confirm", true)))
                    .follow("/dlq/jobs", super::remote::dlq_gauge)
            }
        },
    })
}

/// `herald replay` through the API: starts the job and prints its answer (poll
/// `GET /api/v1/replays/{id}` for progress).
pub fn remote_replay(args: &ReplayArgs) -> Call {
    Call::new(Method::POST, format!("/endpoints/{}/replay", args.endpoint)).body(json!({
        "since": args.since, "until": args.until, "only_failed": args.only_failed,
    }))
}

impl DeliveryFilter {
    fn call(&self, path: &str) -> Call {
        Call::new(Method::GET, path)
            .query("endpoint_id", self.endpoint)
            .query("status", self.status.as_ref())
            .query("tenant_id", self.tenant.as_ref())
            .query("event_id", self.event.as_ref())
            .query("since", self.since.map(|t| t.to_rfc3339()))
            .query("until", self.until.map(|t| t.to_rfc3339()))
            .list(Some(self.limit))
    }
}
