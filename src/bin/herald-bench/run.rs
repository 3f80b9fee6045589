//! One measured run, Herald's or the baseline relay's: fresh database and topology
//! under a run-specific prefix, endpoints inserted, receiver reset, load published,
//! wait until every (event, endpoint) pair arrived (and, for Herald, every delivery
//! is `success` in PostgreSQL) or the run's deadline passed, then clean up.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use herald::broker::Publisher;
use herald::domain::SigningSecret;
use herald::testkit::{self, World};
use lapin::options::{ExchangeDeclareOptions, ExchangeDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ExchangeKind};
use serde::Serialize;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::load::{self, Load};
use crate::process::{self, Herald, HeraldConfig};
use crate::receiver::{Behavior, Receiver, RunRecord};
use crate::{now_us, relay};

/// One subscribed endpoint of a run.
#[derive(Debug, Clone)]
pub struct EndpointSpec {
    pub patterns: Vec<String>,
    pub tenant: Option<String>,
    pub group: usize,
    pub delay: Duration,
    /// Answers 500 for this long from the start of publishing.
    pub fail_for: Option<Duration>,
    /// `herald.endpoints.ordering`: one event per ordering key at a time.
    pub ordered: bool,
    /// Per-endpoint options whose cost the `features` scenario measures.
    pub extras: Extras,
}

/// Options an endpoint may carry beyond its patterns and tenant.
#[derive(Debug, Clone, Default)]
pub struct Extras {
    /// `herald.endpoints.filter`, as the API stores it.
    pub filter: Option<serde_json::Value>,
    /// Static headers, name → value (sealed too when `sealed`).
    pub headers: Option<serde_json::Value>,
    /// Secrets (and header values) sealed under the bench's key, as `herald secrets
    /// reencrypt` leaves them; otherwise stored in plain text, which Herald also reads.
    pub sealed: bool,
}

impl EndpointSpec {
    pub fn simple(pattern: &str, group: usize) -> Self {
        Self {
            patterns: vec![pattern.to_string()],
            tenant: None,
            group,
            delay: Duration::ZERO,
            fail_for: None,
            ordered: false,
            extras: Extras::default(),
        }
    }
}

/// What one run does.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub endpoints: Vec<EndpointSpec>,
    pub load: LoadSpec,
    /// (event, endpoint) pairs expected in total.
    pub expected: usize,
    pub retry_schedule: String,
    /// Publish everything before Herald starts.
    pub backlog: bool,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub count: usize,
    pub rate: Option<f64>,
    pub body_bytes: usize,
    pub kinds: Vec<(String, Option<String>)>,
    /// Event `n` carries `x-ordering-key: key-<n mod K>`.
    pub ordering_keys: Option<usize>,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |v: u64| (v as f64 / 1000.0 * 100.0).round() / 100.0;
        Self {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
        }
    }
}

/// One group of endpoints' figures.
#[derive(Debug, Clone, Serialize)]
pub struct GroupOutcome {
    pub deliveries: u64,
    pub seconds: f64,
    pub deliveries_per_s: f64,
    pub latency_ms: Latency,
    /// Per second of publishing, in order (written out where a scenario asks for it).
    #[serde(skip)]
    pub timeline: Vec<Second>,
}

/// The deliveries of the events published in one second.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Second {
    /// Seconds since the first event was published.
    pub s: u64,
    /// The same second since the Unix epoch (to line it up with other logs).
    pub unix_s: u64,
    pub deliveries: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Second {
    fn timeline(by_second: &std::collections::BTreeMap<u64, Histogram<u64>>) -> Vec<Self> {
        let first = by_second.keys().next().copied().unwrap_or_default();
        by_second
            .iter()
            .map(|(second, h)| {
                let latency = Latency::of(h);
                Self {
                    s: second - first,
                    unix_s: *second,
                    deliveries: h.len(),
                    p50_ms: latency.p50,
                    p99_ms: latency.p99,
                    max_ms: latency.max,
                }
            })
            .collect()
    }
}

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct RunOutcome {
    pub groups: Vec<GroupOutcome>,
    pub unique: usize,
    pub expected: usize,
    pub duplicates: u64,
    pub lost: u64,
    pub rss_mib: Vec<f64>,
    pub ready_s: Option<f64>,
    pub publish_s: f64,
    pub db_success: Option<i64>,
    pub failed_answers: u64,
    pub signatures_checked: u64,
    pub signatures_bad: u64,
    pub timed_out: bool,
    /// Events that arrived after a later event of their ordering key (same endpoint).
    pub out_of_order: u64,
}

impl RunOutcome {
    pub fn rss_max(&self) -> Option<f64> {
        self.rss_mib.iter().copied().reduce(f64::max)
    }
}

/// `secrets.keys` of every run.
const BENCH_KEYS: &str = "bench:rBUtH373CPexI6NuwQ15B/M4UcfgKYt2giTmU0YsBvg=";

/// Shared state of the whole invocation.
pub struct Bench {
    pub amqp_url: String,
    pub database_base_url: String,
    pub database: String,
    pub herald_binary: std::path::PathBuf,
    pub receiver: Receiver,
    /// Keeps the channel's and publisher's connection open.
    _connection: Connection,
    pub channel: Channel,
    pub publisher: Publisher,
    pub tag_base: String,
    pub concurrency: u16,
    pub log_dir: std::path::PathBuf,
    runs: std::sync::atomic::AtomicU32,
}

impl Bench {
    pub async fn new(
        amqp_url: String,
        database_base_url: String,
        database: String,
        herald_binary: std::path::PathBuf,
        receiver: Receiver,
        concurrency: u16,
        log_dir: std::path::PathBuf,
    ) -> anyhow::Result<Self> {
        let connection = herald::broker::connect(&amqp_url, "herald-bench")
            .await
            .with_context(|| format!("RabbitMQ unreachable at {amqp_url}; run `make services`"))?;
        let channel = connection.create_channel().await?;
        let publisher = Publisher::open(&connection).await?;
        let tag_base = format!("hb{}", &Uuid::new_v4().simple().to_string()[..8]);
        Ok(Self {
            amqp_url,
            database_base_url,
            database,
            herald_binary,
            receiver,
            _connection: connection,
            channel,
            publisher,
            tag_base,
            concurrency,
            log_dir,
            runs: Default::default(),
        })
    }

    pub fn next_tag(&self) -> String {
        let n = self.runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{}r{n}", self.tag_base)
    }

    pub fn database_url(&self) -> String {
        testkit::with_database(&self.database_base_url, &self.database)
    }

    /// Drops and recreates the bench database, so runs are independent.
    pub async fn fresh_database(&self) -> anyhow::Result<()> {
        testkit::database::create(&self.database_base_url, &self.database, true).await
    }

    pub async fn drop_database(&self) -> anyhow::Result<()> {
        testkit::database::drop(&self.database_base_url, &self.database).await
    }

    pub async fn pool(&self) -> anyhow::Result<PgPool> {
        Ok(sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&self.database_url())
            .await?)
    }

    /// Run `tag`'s world: the bench database, `tag` as the topology prefix.
    pub fn world(&self, tag: &str, exchange: &str, retry_schedule: &str) -> World {
        World {
            amqp_url: self.amqp_url.clone(),
            database_url: self.database_url(),
            prefix: tag.to_string(),
            exchange: exchange.to_string(),
            retry_schedule: retry_schedule.to_string(),
            // The key sealed secrets open with (`Extras::sealed`); others are plain text.
            secrets_keys: BENCH_KEYS.into(),
        }
    }

    pub fn herald_config(&self, tag: &str, world: World) -> HeraldConfig {
        HeraldConfig {
            binary: self.herald_binary.clone(),
            world,
            concurrency: self.concurrency,
            log: self.log_dir.join(format!("{tag}.log")),
            extra_env: Vec::new(),
        }
    }

    pub fn behaviors(
        &self,
        spec: &RunSpec,
        secrets: Option<&[SigningSecret]>,
        start_us: u64,
    ) -> Vec<Behavior> {
        spec.endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| Behavior {
                fail_until_us: e.fail_for.map(|d| start_us + d.as_micros() as u64),
                delay: e.delay,
                group: e.group,
                secret: secrets.map(|s| s[i].clone()),
                order_keys: spec.load.ordering_keys.map(|k| k as u64),
            })
            .collect()
    }

    pub fn load(&self, spec: &RunSpec, tag: &str, exchange: &str) -> Load {
        Load {
            exchange: exchange.to_string(),
            tag: tag.to_string(),
            first: 0,
            count: spec.load.count,
            rate: spec.load.rate,
            body_bytes: spec.load.body_bytes,
            kinds: spec.load.kinds.clone(),
            ordering_keys: spec.load.ordering_keys,
        }
    }

    /// Inserts the run's endpoints in bulk; returns their secrets, by index.
    pub async fn insert_endpoints(
        &self,
        pool: &PgPool,
        endpoints: &[EndpointSpec],
    ) -> anyhow::Result<Vec<SigningSecret>> {
        let secrets: Vec<SigningSecret> = endpoints
            .iter()
            .map(|_| SigningSecret::generate())
            .collect();
        for (chunk_index, chunk) in endpoints.chunks(10_000).enumerate() {
            let offset = chunk_index * 10_000;
            let ids: Vec<Uuid> = chunk.iter().map(|_| Uuid::now_v7()).collect();
            let urls: Vec<String> = (0..chunk.len())
                .map(|i| self.receiver.url(offset + i))
                .collect();
            let tenants: Vec<Option<String>> = chunk.iter().map(|e| e.tenant.clone()).collect();
            let patterns: Vec<String> = chunk.iter().map(|e| e.patterns.join(",")).collect();
            let keys: Vec<String> = (0..chunk.len())
                .map(|i| secrets[offset + i].expose())
                .collect();
            sqlx::query(
                "INSERT INTO herald.endpoints (id, url, tenant_id, event_types, secret)
                 SELECT id, url, tenant, string_to_array(patterns, ','), secret
                 FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[])
                      AS t(id, url, tenant, patterns, secret)",
            )
            .bind(&ids)
            .bind(&urls)
            .bind(&tenants)
            .bind(&patterns)
            .bind(&keys)
            .execute(pool)
            .await?;
            // Only when asked: a Herald before ordered delivery has no such column.
            let ordered: Vec<Uuid> = chunk
                .iter()
                .zip(&ids)
                .filter(|(e, _)| e.ordered)
                .map(|(_, id)| *id)
                .collect();
            if !ordered.is_empty() {
                sqlx::query("UPDATE herald.endpoints SET ordering = true WHERE id = ANY($1)")
                    .bind(&ordered)
                    .execute(pool)
                    .await?;
            }
            for (e, id) in chunk.iter().zip(&ids) {
                let Extras {
                    filter, headers, ..
                } = &e.extras;
                if filter.is_some() || headers.is_some() {
                    sqlx::query(
                        "UPDATE herald.endpoints SET filter = $2,
                             headers = COALESCE($3, headers) WHERE id = $1",
                    )
                    .bind(id)
                    .bind(filter)
                    .bind(headers)
                    .execute(pool)
                    .await?;
                }
            }
        }
        if endpoints.iter().any(|e| e.extras.sealed) {
            let keys = herald::keyring::Keyring::parse(BENCH_KEYS)
                .map_err(|e| anyhow::anyhow!("the bench's key: {e}"))?;
            herald::store::endpoints::reencrypt(pool, &keys, |_, _| {}).await?;
        }
        Ok(secrets)
    }

    pub async fn declare_exchange(&self, exchange: &str) -> lapin::Result<()> {
        self.channel
            .exchange_declare(
                exchange,
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
    }

    pub async fn delete_exchange(&self, exchange: &str) {
        if let Err(error) = self
            .channel
            .exchange_delete(exchange, ExchangeDeleteOptions::default())
            .await
        {
            eprintln!("cleanup: deleting exchange {exchange}: {error}");
        }
    }

    /// Waits until the receiver saw `expected` pairs and `check` agrees, or `deadline`.
    /// Only deliveries from `first_id` on are the run's (a seeded database holds others).
    pub async fn wait_done(
        &self,
        first_id: Uuid,
        expected: usize,
        deadline: Instant,
        pool: Option<&PgPool>,
        herald: Option<&mut Herald>,
    ) -> anyhow::Result<(bool, Option<i64>)> {
        let mut herald = herald;
        let mut db_success = None;
        let mut last_db_check = Instant::now() - Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(h) = herald.as_deref_mut() {
                if !h.still_running() {
                    anyhow::bail!("herald exited during the run");
                }
            }
            let received = self.receiver.unique() >= expected;
            match pool {
                Some(pool) if received && last_db_check.elapsed() >= Duration::from_millis(500) => {
                    last_db_check = Instant::now();
                    let (success, total): (i64, i64) = sqlx::query_as(
                        "SELECT count(*) FILTER (WHERE status = 'success'), count(*)
                         FROM herald.deliveries WHERE id >= $1",
                    )
                    .bind(first_id)
                    .fetch_one(pool)
                    .await?;
                    db_success = Some(success);
                    if success == total && success as usize >= expected {
                        return Ok((true, db_success));
                    }
                }
                None if received => return Ok((true, None)),
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if let Some(pool) = pool {
            let success: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM herald.deliveries WHERE status = 'success' AND id >= $1",
            )
            .bind(first_id)
            .fetch_one(pool)
            .await?;
            db_success = Some(success);
        }
        Ok((false, db_success))
    }

    pub fn outcome(
        record: &RunRecord,
        start_us: u64,
        expected: usize,
        publish: Duration,
        finished: (bool, Option<i64>),
        rss_mib: Vec<f64>,
        ready: Option<Duration>,
    ) -> RunOutcome {
        let groups = record
            .groups
            .iter()
            .map(|g| {
                let seconds = if g.delivered == 0 {
                    0.0
                } else {
                    g.last_us.saturating_sub(start_us) as f64 / 1e6
                };
                GroupOutcome {
                    deliveries: g.delivered,
                    seconds,
                    deliveries_per_s: if seconds > 0.0 {
                        g.delivered as f64 / seconds
                    } else {
                        0.0
                    },
                    latency_ms: Latency::of(&g.latency_us),
                    timeline: Second::timeline(&g.by_second),
                }
            })
            .collect();
        let unique = record.seen.len();
        RunOutcome {
            groups,
            unique,
            expected,
            duplicates: record.duplicates,
            lost: expected.saturating_sub(unique) as u64,
            rss_mib,
            ready_s: ready.map(|d| d.as_secs_f64()),
            publish_s: publish.as_secs_f64(),
            db_success: finished.1,
            failed_answers: record.failed_answers,
            signatures_checked: record.signatures_checked,
            signatures_bad: record.signatures_bad,
            timed_out: !finished.0,
            out_of_order: record.out_of_order,
        }
    }

    /// One Herald run on an empty database.
    pub async fn run_herald(&self, spec: &RunSpec) -> anyhow::Result<RunOutcome> {
        self.run_herald_on(spec, None).await
    }

    /// One Herald run on `seeded` as it is (a database with history, which keeps the
    /// run's rows), or on an empty database.
    pub async fn run_herald_on(
        &self,
        spec: &RunSpec,
        seeded: Option<&str>,
    ) -> anyhow::Result<RunOutcome> {
        let first_id = uuid_v7_floor(now_us().saturating_sub(1_000_000));
        let tag = self.next_tag();
        let exchange = format!("{tag}.events");
        let mut world = self.world(&tag, &exchange, &spec.retry_schedule);
        if let Some(seeded) = seeded {
            world.database_url = testkit::with_database(&self.database_base_url, seeded);
        }
        let settings = world.settings()?;
        settings.validate()?;
        let topology = herald::delivery::topology(&settings);
        let config = self.herald_config(&tag, world);

        if seeded.is_none() {
            self.fresh_database().await?;
        }
        process::migrate(&config).await?;
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&config.world.database_url)
            .await?;
        let secrets = self.insert_endpoints(&pool, &spec.endpoints).await?;
        topology.declare(&self.channel).await?;

        let result = async {
            let (mut herald, start_us, publish, ready) = if spec.backlog {
                let start = now_us();
                self.receiver
                    .reset(self.behaviors(spec, Some(&secrets), start));
                let publish =
                    load::publish(&self.publisher, self.load(spec, &tag, &exchange)).await?;
                let start_us = now_us();
                let mut herald = Herald::spawn(&config).await?;
                let ready = herald.wait_ready(Duration::from_secs(60)).await?;
                (herald, start_us, publish, ready)
            } else {
                let mut herald = Herald::spawn(&config).await?;
                let ready = herald.wait_ready(Duration::from_secs(60)).await?;
                let start_us = now_us();
                self.receiver
                    .reset(self.behaviors(spec, Some(&secrets), start_us));
                let publish =
                    load::publish(&self.publisher, self.load(spec, &tag, &exchange)).await?;
                (herald, start_us, publish, ready)
            };
            let deadline = Instant::now() + spec.timeout;
            let finished = self
                .wait_done(
                    first_id,
                    spec.expected,
                    deadline,
                    Some(&pool),
                    Some(&mut herald),
                )
                .await;
            // Late duplicates still count.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let rss = herald.stop().await?;
            let finished = finished?;
            let record = self.receiver.reset(Vec::new());
            anyhow::Ok(Self::outcome(
                &record,
                start_us,
                spec.expected,
                publish,
                finished,
                rss,
                Some(ready),
            ))
        }
        .await;

        if let Err(error) = topology.delete(&self.channel).await {
            eprintln!("cleanup: deleting queues of {tag}: {error}");
        }
        self.delete_exchange(&exchange).await;
        pool.close().await;
        result
    }

    /// One baseline relay run (no database, no signing, no retries).
    pub async fn run_baseline(&self, spec: &RunSpec) -> anyhow::Result<RunOutcome> {
        let tag = self.next_tag();
        let exchange = format!("{tag}.events");
        let queue = format!("{tag}.relay");
        self.declare_exchange(&exchange).await?;
        relay::declare(&self.channel, &queue, &exchange).await?;
        let urls: Arc<Vec<String>> = Arc::new(
            (0..spec.endpoints.len())
                .map(|i| self.receiver.url(i))
                .collect(),
        );
        // Same number of requests in flight as Herald: prefetch × endpoints ≈ concurrency.
        let prefetch = (self.concurrency as usize / spec.endpoints.len().max(1)).max(1) as u16;
        let stop = CancellationToken::new();
        let relay_task = {
            let stop = stop.clone();
            let queue = queue.clone();
            let url = self.amqp_url.clone();
            tokio::spawn(async move {
                let connection = herald::broker::connect(&url, "herald-bench-relay").await?;
                let result = relay::run(&connection, &queue, urls, prefetch, stop).await;
                let _ = connection.close(200, "bench done").await;
                result
            })
        };
        let result = async {
            let start_us = now_us();
            self.receiver.reset(self.behaviors(spec, None, start_us));
            let publish = load::publish(&self.publisher, self.load(spec, &tag, &exchange)).await?;
            let deadline = Instant::now() + spec.timeout;
            let finished = self
                .wait_done(Uuid::nil(), spec.expected, deadline, None, None)
                .await?;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let record = self.receiver.reset(Vec::new());
            anyhow::Ok(Self::outcome(
                &record,
                start_us,
                spec.expected,
                publish,
                finished,
                Vec::new(),
                None,
            ))
        }
        .await;
        stop.cancel();
        match relay_task.await {
            Ok(Err(error)) => eprintln!("relay: {error}"),
            Err(error) => eprintln!("relay task: {error}"),
            Ok(Ok(())) => {}
        }
        if let Err(error) = relay::delete(&self.channel, &queue).await {
            eprintln!("cleanup: deleting {queue}: {error}");
        }
        self.delete_exchange(&exchange).await;
        result
    }
}

/// The smallest UUIDv7 of a moment (µs since the epoch): ids from it on were made then
/// or later.
pub fn uuid_v7_floor(us: u64) -> Uuid {
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&(us / 1000).to_be_bytes()[2..]);
    Uuid::from_bytes(bytes)
}
