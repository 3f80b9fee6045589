//! Test harness: every test gets its own PostgreSQL database and its own topology
//! prefix and source exchange on the real local broker (`make services`), so tests run
//! in parallel and leave nothing behind. RabbitMQ or PostgreSQL being unreachable is a
//! loud failure, never a skip.

pub mod receiver;

use std::future::Future;
use std::time::{Duration, Instant};

use herald::broker::{self, Outgoing, Publisher};
use herald::config::Settings;
use herald::domain::{Secret, SignatureScheme, Signing};
use herald::store::{self, endpoints};
use herald::testkit::{self, World};
use herald::topology::Topology;
use herald::{App, Role};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;
use sqlx::PgPool;
use uuid::Uuid;

pub use herald::testkit::{amqp_url, database_base_url};

/// The tests' retry schedule, in-process and in `herald_command`'s processes alike.
const RETRY_SCHEDULE: &str = "50ms,100ms";

/// `secrets.keys` of every test: one key, as production has.
pub const TEST_KEYS: &str = "test-1:agYgyjCDqS+Bq5/Y9/ubUjZH/oUShVcrEmKP5hzQXoU=";

/// The longest any one test may run. A test still running then is hung (every wait in
/// these tests is bounded well below it); the watchdog ends the test binary with its
/// name, so CI fails in minutes and says where, instead of at its own time limit.
const TEST_LIMIT: Duration = Duration::from_secs(300);

/// Ends the test process when the test that started it outlives `limit`; dropping it
/// (the test's `TestEnv` going away, passed or panicked) stands it down.
struct Watchdog {
    _stand_down: std::sync::mpsc::Sender<()>,
}

impl Watchdog {
    fn start(limit: Duration) -> Self {
        let test = std::thread::current()
            .name()
            .unwrap_or("(unnamed test)")
            .to_string();
        let (stand_down, wait) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(limit) {
                eprintln!("test {test} still running after {limit:?}: hung; ending the test run");
                std::process::exit(101);
            }
        });
        Self {
            _stand_down: stand_down,
        }
    }
}

/// One isolated Herald world: database, prefix, exchange, settings.
pub struct TestEnv {
    pub settings: Settings,
    pub pool: PgPool,
    pub database: String,
    /// The server's main database, through which this test's was created (and is dropped).
    database_base: String,
    pub exchange: String,
    publisher: Option<(lapin::Connection, Publisher)>,
    _watchdog: Watchdog,
}

impl TestEnv {
    pub async fn new() -> Self {
        Self::with(|_| {}).await
    }

    /// A fresh environment; `adjust` changes the test settings before anything starts.
    pub async fn with(adjust: impl FnOnce(&mut Settings)) -> Self {
        Self::build(adjust, true).await
    }

    /// A fresh environment whose database is empty: not migrated yet.
    pub async fn unmigrated() -> Self {
        Self::build(|_| {}, false).await
    }

    async fn build(adjust: impl FnOnce(&mut Settings), migrate: bool) -> Self {
        Self::build_on(&database_base_url(), TEST_LIMIT, adjust, migrate).await
    }

    /// A fresh environment whose database lives on another PostgreSQL server (`base`: its
    /// main database's URL), for a test that may run up to `limit`: the fault suite stops
    /// and kills a server of its own, never the shared one.
    pub async fn on_server(
        base: &str,
        limit: Duration,
        adjust: impl FnOnce(&mut Settings),
    ) -> Self {
        Self::build_on(base, limit, adjust, true).await
    }

    async fn build_on(
        base: &str,
        limit: Duration,
        adjust: impl FnOnce(&mut Settings),
        migrate: bool,
    ) -> Self {
        let watchdog = Watchdog::start(limit);
        let _ = herald::telemetry::init(&Default::default());
        let id = Uuid::new_v4().simple().to_string();
        let database = format!("herald_test_{}", &id[..16]);
        let base = base.to_string();
        testkit::database::create(&base, &database, false)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));

        let prefix = format!("t{}", &id[..12]);
        let world = World {
            amqp_url: amqp_url(),
            database_url: testkit::with_database(&base, &database),
            exchange: format!("{prefix}.events"),
            prefix,
            retry_schedule: RETRY_SCHEDULE.into(),
            secrets_keys: TEST_KEYS.into(),
        };
        let mut settings = world.settings().expect("test world's settings");
        settings.database.max_connections = 8;
        settings.amqp.reconnect_max_backoff = Duration::from_millis(500);
        settings.api.listen = "127.0.0.1:0".parse().unwrap();
        settings.api.admin_token = Secret::new("test-admin-token");
        settings.delivery.timeout = Duration::from_secs(10);
        settings.delivery.shutdown_grace = Duration::from_secs(5);
        settings.delivery.concurrency = 64;
        adjust(&mut settings);
        settings.validate().expect("test settings are valid");

        let pool = store::pool(&settings.database).unwrap();
        if migrate {
            store::migrate(&pool).await.expect("migrations apply");
        }
        let mut env = TestEnv {
            settings,
            pool,
            database,
            database_base: base,
            exchange: world.exchange,
            publisher: None,
            _watchdog: watchdog,
        };
        env.declare_topology().await;
        env
    }

    /// Declares the topology up front, so events published before Herald starts are kept.
    async fn declare_topology(&mut self) {
        // The test's own settings: a list of nodes when the test gave one.
        let url = self.settings.amqp.url.expose().to_string();
        let connection = broker::connect(&url, "herald-test")
            .await
            .unwrap_or_else(|e| {
                let nodes: Vec<_> = herald::config::node_urls(&url)
                    .into_iter()
                    .map(broker::node_address)
                    .collect();
                panic!(
                    "RabbitMQ unreachable at {} ({e}); run `make services` (make test does)",
                    nodes.join(",")
                )
            });
        let channel = connection.create_channel().await.unwrap();
        self.topology()
            .declare(&channel)
            .await
            .expect("declare topology");
        let publisher = Publisher::open(&connection).await.unwrap();
        self.publisher = Some((connection, publisher));
    }

    pub fn topology(&self) -> Topology {
        herald::delivery::topology(&self.settings)
    }

    pub async fn start(&self, role: Role) -> App {
        App::build(self.settings.clone(), role)
            .await
            .expect("app starts")
    }

    /// Starts every role and waits until it is ready to consume.
    pub async fn start_ready(&self) -> App {
        let app = self.start(Role::All).await;
        wait_ready(&app).await;
        app
    }

    pub async fn add_endpoint(
        &self,
        url: &str,
        patterns: &[&str],
        tenant: Option<&str>,
    ) -> TestEndpoint {
        self.add_endpoint_signed(
            url,
            patterns,
            tenant,
            Signing::generate(SignatureScheme::Standard),
        )
        .await
    }

    /// An endpoint straight into the store, signing as `signing` says.
    pub async fn add_endpoint_signed(
        &self,
        url: &str,
        patterns: &[&str],
        tenant: Option<&str>,
        signing: Signing,
    ) -> TestEndpoint {
        let secret = signing.current_text();
        let endpoint = endpoints::insert(
            &self.pool,
            &self.keys(),
            endpoints::NewEndpoint {
                url: url.parse().unwrap(),
                event_types: patterns.iter().map(|p| p.parse().unwrap()).collect(),
                tenant_id: tenant.map(String::from),
                signing,
                headers: Default::default(),
                rate_limit: None,
                filter: None,
                timeout: None,
                retry_schedule: None,
                batch: None,
                ordering: false,
                name: None,
                description: None,
            },
        )
        .await
        .expect("insert endpoint");
        TestEndpoint { endpoint, secret }
    }

    /// The keyring of this environment's `secrets.keys`.
    pub fn keys(&self) -> herald::keyring::Keyring {
        self.settings
            .secrets
            .keyring()
            .expect("test keys are valid")
    }

    pub fn publisher(&self) -> &Publisher {
        &self.publisher.as_ref().expect("topology declared").1
    }

    /// Publishes a plain-JSON event with publisher confirms.
    pub async fn publish(
        &self,
        routing_key: &str,
        id: Option<&str>,
        tenant: Option<&str>,
        body: &[u8],
    ) {
        let mut headers = FieldTable::default();
        if let Some(t) = tenant {
            headers.insert(
                "x-tenant-id".into(),
                AMQPValue::LongString(LongString::from(t)),
            );
        }
        let mut properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_headers(headers);
        if let Some(id) = id {
            properties = properties.with_message_id(id.into());
        }
        self.publish_raw(routing_key, body, properties).await;
    }

    pub async fn publish_raw(&self, routing_key: &str, body: &[u8], properties: BasicProperties) {
        self.publisher()
            .publish(Outgoing {
                exchange: &self.exchange,
                routing_key,
                body,
                properties,
            })
            .await
            .expect("publish confirmed");
    }

    /// `n` dead letters parked in the dead-letter queue and recorded `failed`: a first
    /// attempt's copy is published before its outcome is recorded, and the DLQ's jobs
    /// match records.
    pub async fn dead_letters_parked_and_recorded(&self, n: i64) -> bool {
        i64::from(self.queue_depth(&self.topology().dlq()).await) == n
            && self
                .count("SELECT count(*) FROM herald.deliveries WHERE status = 'failed'")
                .await
                == n
    }

    pub async fn delivery_statuses(&self) -> Vec<(String, i64)> {
        store::deliveries::count_by_status(&self.pool)
            .await
            .unwrap()
    }

    /// Runs a dead-letter job (redrive or purge) as the admin, to its end.
    pub async fn dlq_job(
        &self,
        request: herald::service::dlq::JobRequest,
    ) -> herald::store::dlq_jobs::Job {
        let caller = herald::service::Caller::Admin;
        let job = herald::service::dlq::start(&self.pool, &caller, request)
            .await
            .expect("the job starts");
        herald::service::dlq::run(&self.settings, &self.pool, job, |_| {})
            .await
            .expect("the job runs")
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.pool).await.unwrap()
    }

    /// Number of messages in one of this test's queues.
    pub async fn queue_depth(&self, queue: &str) -> u32 {
        let (connection, _) = self.publisher.as_ref().unwrap();
        let channel = connection.create_channel().await.unwrap();
        let depth = herald::topology::queue_depth(&channel, queue)
            .await
            .unwrap();
        let _ = channel.close(200, "").await;
        depth
    }

    /// Takes every message currently in a queue (acknowledging them).
    pub async fn drain(&self, queue: &str) -> Vec<lapin::message::Delivery> {
        let (connection, _) = self.publisher.as_ref().unwrap();
        let channel = connection.create_channel().await.unwrap();
        let mut out = Vec::new();
        while let Some(m) = channel
            .basic_get(queue, lapin::options::BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            out.push(m.delivery);
        }
        let _ = channel.close(200, "").await;
        out
    }

    /// The `herald` binary configured for this environment through `HERALD__…`
    /// variables (retry schedule 50ms,100ms; loopback receivers allowed).
    pub fn herald_command(&self) -> std::process::Command {
        let s = &self.settings;
        let world = World {
            amqp_url: s.amqp.url.expose().to_string(),
            database_url: s.database.url.expose().to_string(),
            prefix: s.topology.prefix.clone(),
            exchange: self.exchange.clone(),
            retry_schedule: RETRY_SCHEDULE.into(),
            secrets_keys: s.secrets.keys.expose().to_string(),
        };
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_herald"));
        command
            .env_remove("RUST_LOG")
            .envs(world.process_env("127.0.0.1:0"));
        command
    }

    /// Deletes the test's queues and database.
    pub async fn cleanup(mut self) {
        if let Some((connection, _)) = self.publisher.take() {
            // The test may have stopped the node this connection was on (tests/it/cluster.rs).
            let connection = if connection.status().connected() {
                Ok(connection)
            } else {
                broker::connect(self.settings.amqp.url.expose(), "herald-test").await
            };
            let Ok(connection) = connection else {
                return self.drop_database().await;
            };
            if let Ok(channel) = connection.create_channel().await {
                let _ = self.topology().delete(&channel).await;
                let _ = channel
                    .exchange_delete(&self.exchange, Default::default())
                    .await;
            }
            let _ = connection.close(200, "").await;
        }
        self.drop_database().await;
    }

    async fn drop_database(self) {
        self.pool.close().await;
        let _ = testkit::database::drop(&self.database_base, &self.database).await;
    }
}

/// An endpoint a test created, with its secret's text.
pub struct TestEndpoint {
    pub endpoint: endpoints::Endpoint,
    pub secret: String,
}

impl std::ops::Deref for TestEndpoint {
    type Target = endpoints::Endpoint;

    fn deref(&self) -> &Self::Target {
        &self.endpoint
    }
}

/// Waits until `/readyz` says ready.
pub async fn wait_ready(app: &App) {
    let url = format!("http://{}/readyz", app.address());
    eventually(
        "the app to become ready",
        Duration::from_secs(20),
        || async {
            reqwest::get(&url)
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false)
        },
    )
    .await;
}

/// Polls `check` until it holds; panics with `what` after `limit`. Waiting for a state,
/// not asserting a duration: the limit is generous and only bounds a hung test.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        // A check that hangs (a request to a process that stopped answering) is bounded
        // by what is left of the limit, so the wait fails with its name.
        let left = limit.saturating_sub(started.elapsed());
        if tokio::time::timeout(left.max(Duration::from_millis(100)), check())
            .await
            .unwrap_or(false)
        {
            return;
        }
        if started.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Header value of a delivered AMQP message.
pub fn amqp_header(delivery: &lapin::message::Delivery, name: &str) -> Option<String> {
    delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| herald::broker::headers::header_text(h, name))
}
