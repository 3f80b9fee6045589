//! The fault-injection suite (issue 17, contract §1 `make faults`): real `herald serve`
//! processes of each role, the real broker and database, real loopback receivers, and
//! one fault per module — Herald processes killed (`processes`), broker nodes stopped
//! and killed (`broker_nodes`), PostgreSQL stopped and killed (`database`), hostile
//! receivers (`receivers`), poison input (`poison`), events published and delivered
//! twice (`duplicates`). Each ends with every (event, endpoint) pair `success` or
//! `failed`, none lost, and writes its figures (published, delivered, duplicates, time
//! to recover) as one JSON line to `target/faults/<fault>-<scale>.json`; `report`
//! renders the full runs into `docs/reliability.md`.
//!
//! Two scales: `short` runs in `make test` on the single node of `make services`, small
//! counts and few kills; `full` is `#[ignore]`d and run by `make faults` on the
//! three-node cluster of `make cluster` and the suite's own PostgreSQL
//! (`deploy/local/faults_pg.sh`), two processes of each role. Either way a missing
//! service fails the test loudly.

mod broker_nodes;
mod database;
mod duplicates;
mod poison;
mod processes;
mod receivers;
mod report;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::broker::{self, Outgoing, Publisher};
use herald::domain::Secret;
use lapin::BasicProperties;
use serde_json::{json, Value};

use crate::common::receiver::Receiver;
use crate::common::{eventually, TestEnv};

/// How big a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// `make test`: the single node, small counts.
    Short,
    /// `make faults`: the cluster, the suite's PostgreSQL, full counts.
    Full,
}

impl Scale {
    pub fn pick<T>(self, short: T, full: T) -> T {
        match self {
            Scale::Short => short,
            Scale::Full => full,
        }
    }

    fn name(self) -> &'static str {
        self.pick("short", "full")
    }
}

/// The longest one fault's test may run (`make faults` runs six in under 20 minutes).
const FAULT_LIMIT: Duration = Duration::from_secs(600);

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn port_base(variable: &str, default: u16) -> u16 {
    std::env::var(variable)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `amqp.url` for the cluster of `make cluster`: every node, in order.
pub fn cluster_urls() -> String {
    let base = port_base("HERALD_CLUSTER_PORTS", 5681);
    (0..3)
        .map(|i| format!("amqp://guest:guest@127.0.0.1:{}/%2f", base + i))
        .collect::<Vec<_>>()
        .join(",")
}

/// The management API of node `node` (1-based) of the cluster, or of the single node.
pub fn management_base(scale: Scale, node: u16) -> String {
    let port = match scale {
        Scale::Short => port_base("HERALD_AMQP_MGMT_PORT", 15673),
        Scale::Full => port_base("HERALD_CLUSTER_MGMT_PORTS", 15681) + node - 1,
    };
    format!("http://127.0.0.1:{port}/api")
}

/// The fault suite's own PostgreSQL (`deploy/local/faults_pg.sh`), never the shared one.
pub fn faults_database_base() -> String {
    let port = port_base("HERALD_FAULTS_PG_PORT", 5439);
    assert_ne!(
        port,
        port_base("HERALD_PG_PORT", 5433),
        "the fault suite stops its PostgreSQL: it must not be the shared one"
    );
    format!("postgres://herald:herald@127.0.0.1:{port}/herald")
}

/// The test's world: on the single node and the shared database (short), or on the
/// cluster and the suite's own database (full); `adjust` as `TestEnv::with`.
pub async fn fault_env(
    scale: Scale,
    adjust: impl FnOnce(&mut herald::config::Settings),
) -> TestEnv {
    match scale {
        Scale::Short => TestEnv::with(adjust).await,
        Scale::Full => {
            // Up, whatever an earlier fault left behind (both idempotent).
            script_async("cluster.sh", &["start"]).await;
            script_async("faults_pg.sh", &["start"]).await;
            TestEnv::on_server(&faults_database_base(), FAULT_LIMIT, |s| {
                s.amqp.url = Secret::new(cluster_urls());
                adjust(s)
            })
            .await
        }
    }
}

pub async fn management_get(base: &str, path: &str) -> Option<Value> {
    reqwest::Client::new()
        .get(format!("{base}/{path}"))
        .basic_auth("guest", Some("guest"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()?
        .error_for_status()
        .ok()?
        .json()
        .await
        .ok()
}

/// The broker's names of the connections whose client name starts with `prefix-`.
pub async fn connections_of(base: &str, prefix: &str) -> Vec<String> {
    let Some(list) = management_get(base, "connections").await else {
        return Vec::new();
    };
    list.as_array()
        .into_iter()
        .flatten()
        .filter(|c| {
            c["client_properties"]["connection_name"]
                .as_str()
                .is_some_and(|n| n.starts_with(&format!("{prefix}-")))
        })
        .filter_map(|c| c["name"].as_str().map(String::from))
        .collect()
}

/// Closes connections through the management API, as a network cut would: the broker
/// requeues what their consumers had not acknowledged. Returns how many it closed.
pub async fn force_close(base: &str, names: &[String]) -> usize {
    let http = reqwest::Client::new();
    let mut closed = 0;
    for name in names {
        let encoded: String = url_escape(name);
        let response = http
            .delete(format!("{base}/connections/{encoded}"))
            .basic_auth("guest", Some("guest"))
            .send()
            .await;
        // A connection that is already gone (its process reconnected) answers 404.
        if response.is_ok_and(|r| r.status().is_success()) {
            closed += 1;
        }
    }
    closed
}

fn url_escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// ------------------------------------------------------------------ processes

/// One `herald serve --role …` process of the fleet.
pub struct Process {
    pub role: &'static str,
    pub port: u16,
    child: Option<Child>,
    log: PathBuf,
}

impl Process {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn readyz(&self) -> String {
        format!("http://127.0.0.1:{}/readyz", self.port)
    }

    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

/// Several Herald processes of one test, each logging to `target/faults/logs/`.
pub struct Fleet {
    command: Box<dyn Fn() -> Command + Send + Sync>,
    pub processes: Vec<Process>,
    name: String,
    extra_env: Vec<(String, String)>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

impl Fleet {
    /// `count` processes of each role in `roles`, all ready when it returns.
    pub async fn start(
        env: &TestEnv,
        name: &str,
        roles: &[(&'static str, usize)],
        extra_env: &[(&str, &str)],
    ) -> Fleet {
        let settings_env = env.herald_command();
        let program = settings_env.get_program().to_owned();
        let envs: Vec<(std::ffi::OsString, Option<std::ffi::OsString>)> = settings_env
            .get_envs()
            .map(|(k, v)| (k.to_owned(), v.map(|v| v.to_owned())))
            .collect();
        let command = move || {
            let mut command = Command::new(&program);
            for (k, v) in &envs {
                match v {
                    Some(v) => command.env(k, v),
                    None => command.env_remove(k),
                };
            }
            command
        };
        let mut fleet = Fleet {
            command: Box::new(command),
            processes: Vec::new(),
            name: name.to_string(),
            extra_env: extra_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        for (role, count) in roles {
            for _ in 0..*count {
                let port = free_port();
                let log = logs_dir().join(format!(
                    "{}-{}-{}.log",
                    fleet.name,
                    role,
                    fleet.processes.len()
                ));
                // A fresh log for this run; a restarted process appends to it.
                let _ = std::fs::remove_file(&log);
                fleet.processes.push(Process {
                    role,
                    port,
                    child: None,
                    log,
                });
                let index = fleet.processes.len() - 1;
                fleet.spawn(index);
            }
        }
        for index in 0..fleet.processes.len() {
            fleet.wait_ready(index, Duration::from_secs(60)).await;
        }
        fleet
    }

    fn spawn(&mut self, index: usize) {
        let mut command = (self.command)();
        let process = &mut self.processes[index];
        let log = File::options()
            .create(true)
            .append(true)
            .open(&process.log)
            .expect("process log");
        command
            .args(["serve", "--role", process.role])
            .env("HERALD__API__LISTEN", format!("127.0.0.1:{}", process.port))
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log);
        process.child = Some(command.spawn().expect("herald binary starts"));
    }

    /// Waits until process `index` answers `/readyz` 200; returns how long that took.
    pub async fn wait_ready(&self, index: usize, limit: Duration) -> Duration {
        let started = Instant::now();
        let url = self.processes[index].readyz();
        let what = format!("{} process {index} ready", self.processes[index].role);
        eventually(&what, limit, || async { ready(&url).await == Some(true) }).await;
        started.elapsed()
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.processes[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A killed process started again (same role and port).
    pub fn restart(&mut self, index: usize) {
        self.kill(index);
        self.spawn(index);
    }

    pub fn indices(&self, role: &str) -> Vec<usize> {
        (0..self.processes.len())
            .filter(|i| self.processes[*i].role == role)
            .collect()
    }

    /// Every process still running (none crashed by itself); names the ones that died.
    pub fn assert_all_alive(&mut self) {
        let dead: Vec<String> = self
            .processes
            .iter_mut()
            .enumerate()
            .filter_map(|(i, p)| (!p.alive()).then(|| format!("{} {i} ({:?})", p.role, p.log)))
            .collect();
        assert!(
            dead.is_empty(),
            "Herald processes exited by themselves: {dead:?}"
        );
    }

    /// SIGTERM to every process; each must exit 0 within the grace period.
    pub async fn stop(mut self) {
        for p in &self.processes {
            if let Some(pid) = p.pid() {
                unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            }
        }
        let children: Vec<(String, Child)> = self
            .processes
            .iter_mut()
            .filter_map(|p| {
                p.child
                    .take()
                    .map(|c| (format!("{} {:?}", p.role, p.log), c))
            })
            .collect();
        let statuses = tokio::task::spawn_blocking(move || {
            children
                .into_iter()
                .map(|(name, mut c)| {
                    let started = Instant::now();
                    loop {
                        if let Ok(Some(status)) = c.try_wait() {
                            return (name, Some(status));
                        }
                        if started.elapsed() > Duration::from_secs(30) {
                            let _ = c.kill();
                            let _ = c.wait();
                            return (name, None);
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap();
        for (name, status) in statuses {
            assert!(
                status.is_some_and(|s| s.success()),
                "{name} did not exit 0 on SIGTERM: {status:?}"
            );
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for i in 0..self.processes.len() {
            self.kill(i);
        }
    }
}

/// Every process of `roles` answers `/readyz` with 503 (or not at all while it stops);
/// asked of all at once, since a process without its database takes up to 2 s to answer.
pub async fn none_ready(fleet: &Fleet, roles: &[&str]) -> bool {
    let urls: Vec<String> = fleet
        .processes
        .iter()
        .filter(|p| roles.contains(&p.role))
        .map(|p| p.readyz())
        .collect();
    let answers = futures_util::future::join_all(urls.iter().map(|url| ready(url))).await;
    answers.iter().all(|a| *a != Some(true))
}

/// `/readyz`: Some(ready) when the process answers, None when it does not.
pub async fn ready(url: &str) -> Option<bool> {
    let response = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .ok()?;
    Some(response.status().is_success())
}

pub fn vm_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

pub fn faults_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"));
    let dir = target.join("faults");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn logs_dir() -> PathBuf {
    let dir = faults_dir().join("logs");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn script(name: &str, args: &[&str]) {
    let status = Command::new(repo().join("deploy/local").join(name))
        .args(args)
        .stdout(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("{name} runs: {e}"));
    assert!(status.success(), "{name} {args:?}: {status}");
}

// ------------------------------------------------------------------ publishing

/// Publishes through its own connection from the test's `amqp.url`; a publish that is not
/// confirmed (its node went away) is sent again on a fresh connection, with the same id,
/// until it is. Counts the publishes sent again.
pub struct SteadyPublisher {
    url: String,
    exchange: String,
    publisher: Option<(lapin::Connection, Publisher)>,
    pub resent: usize,
}

impl SteadyPublisher {
    pub fn new(env: &TestEnv) -> Self {
        SteadyPublisher {
            url: env.settings.amqp.url.expose().to_string(),
            exchange: env.exchange.clone(),
            publisher: None,
            resent: 0,
        }
    }

    /// Connected first to the node at `url` (one of the list), e.g. the one a test is
    /// about to stop; once a publish fails it reconnects through the list as ever.
    pub async fn starting_on(mut self, url: &str) -> Self {
        let connection = broker::connect(url, "herald-faults-publisher")
            .await
            .unwrap_or_else(|e| panic!("{} answers: {e}", broker::node_address(url)));
        let publisher = Publisher::open(&connection).await.unwrap();
        self.publisher = Some((connection, publisher));
        self
    }

    /// Publishes these plain-JSON events, `(id, body)`, confirmed.
    pub async fn publish(&mut self, routing_key: &str, events: &[(String, Vec<u8>)]) {
        let messages: Vec<(BasicProperties, Vec<u8>)> = events
            .iter()
            .map(|(id, body)| {
                let properties = BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into())
                    .with_message_id(id.as_str().into());
                (properties, body.clone())
            })
            .collect();
        self.publish_messages(routing_key, &messages).await;
    }

    /// Publishes these messages, `(properties, body)`, in this order, confirmed; all of
    /// them again, in order, when any is not confirmed.
    pub async fn publish_messages(
        &mut self,
        routing_key: &str,
        messages: &[(BasicProperties, Vec<u8>)],
    ) {
        let started = Instant::now();
        let mut failures = 0;
        loop {
            if self.publisher.is_none() {
                match broker::connect(&self.url, "herald-faults-publisher").await {
                    Ok(connection) => match Publisher::open(&connection).await {
                        Ok(p) => self.publisher = Some((connection, p)),
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            continue;
                        }
                    },
                    Err(_) => {
                        assert!(
                            started.elapsed() < Duration::from_secs(240),
                            "no broker node took publishes for 4 minutes"
                        );
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                }
            }
            let (_, publisher) = self.publisher.as_ref().unwrap();
            let outgoing = messages
                .iter()
                .map(|(properties, body)| Outgoing {
                    exchange: &self.exchange,
                    routing_key,
                    body,
                    properties: properties.clone(),
                })
                .collect();
            let outcome =
                tokio::time::timeout(Duration::from_secs(30), publisher.publish_all(outgoing))
                    .await;
            match outcome {
                Ok(Ok(_)) => return,
                _ => {
                    failures += 1;
                    self.resent += messages.len();
                    if let Some((connection, _)) = self.publisher.take() {
                        let _ = connection.close(200, "").await;
                    }
                    assert!(failures < 200, "publishes refused 200 times in a row");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    pub async fn close(mut self) {
        if let Some((connection, _)) = self.publisher.take() {
            let _ = connection.close(200, "").await;
        }
    }
}

/// `count` events `<prefix>-<n>`, body `{"n": n}`.
pub fn events(prefix: &str, count: usize) -> Vec<(String, Vec<u8>)> {
    (0..count)
        .map(|n| {
            (
                format!("{prefix}-{n}"),
                format!(r#"{{"n":{n}}}"#).into_bytes(),
            )
        })
        .collect()
}

/// Publishes `events` in chunks of `chunk`, pausing `pause` between chunks, in a task;
/// the handle answers how many were sent again after a failed publish.
pub fn publish_in_background(
    env: &TestEnv,
    routing_key: &'static str,
    events: Vec<(String, Vec<u8>)>,
    chunk: usize,
    pause: Duration,
) -> tokio::task::JoinHandle<usize> {
    let mut publisher = SteadyPublisher::new(env);
    tokio::spawn(async move {
        for part in events.chunks(chunk) {
            publisher.publish(routing_key, part).await;
            tokio::time::sleep(pause).await;
        }
        let resent = publisher.resent;
        publisher.close().await;
        resent
    })
}

// ------------------------------------------------------------------ outcomes

/// Deliveries by status, as the database has them.
pub async fn statuses(env: &TestEnv) -> HashMap<String, i64> {
    env.delivery_statuses().await.into_iter().collect()
}

/// Waits until `pairs` deliveries exist and every one is `success` or `failed`; returns
/// how long that took.
pub async fn all_settled(env: &TestEnv, pairs: i64, limit: Duration) -> Duration {
    let started = Instant::now();
    let what = format!("all {pairs} (event, endpoint) pairs success or failed");
    let last = Arc::new(std::sync::Mutex::new(HashMap::new()));
    let seen = last.clone();
    let settled = tokio::time::timeout(
        limit + Duration::from_secs(5),
        eventually(&what, limit, || {
            let seen = seen.clone();
            async move {
                let s = statuses(env).await;
                let done =
                    s.get("success").copied().unwrap_or(0) + s.get("failed").copied().unwrap_or(0);
                *seen.lock().unwrap() = s.clone();
                done == pairs && s.values().sum::<i64>() == pairs
            }
        }),
    )
    .await;
    assert!(
        settled.is_ok(),
        "{what}: last seen {:?}",
        last.lock().unwrap()
    );
    started.elapsed()
}

/// Watches the success count from the moment it starts, in a task, so a fault repaired
/// by a blocking command (a node or database started again) is timed from the command's
/// start even when the backlog drains before the command returns. The baseline is the
/// count at the start, or — `None`, the database being down — the first count read once
/// it answers again (nothing can be recorded while it is down).
pub struct FlowWatch {
    task: tokio::task::JoinHandle<Duration>,
}

impl FlowWatch {
    pub fn start(env: &TestEnv, baseline: Option<i64>) -> FlowWatch {
        let pool = env.pool.clone();
        let started = Instant::now();
        let task = tokio::spawn(async move {
            let mut baseline = baseline;
            loop {
                let count: Option<i64> = sqlx::query_scalar(
                    "SELECT count(*) FROM herald.deliveries WHERE status = 'success'",
                )
                .fetch_one(&pool)
                .await
                .ok();
                match (count, baseline) {
                    (Some(now), Some(before)) if now > before => return started.elapsed(),
                    (Some(now), None) => baseline = Some(now),
                    _ => {}
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        });
        FlowWatch { task }
    }

    /// How long after the start deliveries were recorded again.
    pub async fn wait(self, limit: Duration) -> Duration {
        match tokio::time::timeout(limit, self.task).await {
            Ok(elapsed) => elapsed.expect("flow watch"),
            Err(_) => panic!("deliveries did not flow again within {limit:?}"),
        }
    }
}

/// The longest pause between two successes recorded (`delivered_at`) for the events
/// whose id starts with `prefix`: how long deliveries stopped flowing during a fault.
pub async fn longest_pause(env: &TestEnv, prefix: &str) -> Duration {
    let ms: Option<f64> = sqlx::query_scalar(
        "SELECT max(gap)::float8 FROM (SELECT extract(epoch FROM delivered_at - lag(delivered_at)          OVER (ORDER BY delivered_at)) * 1000 AS gap FROM herald.deliveries          WHERE status = 'success' AND event_id LIKE $1 || '%') gaps",
    )
    .bind(prefix)
    .fetch_one(&env.pool)
    .await
    .expect("pauses between successes");
    Duration::from_millis(ms.unwrap_or(0.0) as u64)
}

pub async fn success_count(env: &TestEnv) -> i64 {
    env.count("SELECT count(*) FROM herald.deliveries WHERE status = 'success'")
        .await
}

/// Runs a deploy/local script off the runtime's threads.
pub async fn script_async(name: &'static str, args: &[&str]) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        script(name, &args)
    })
    .await
    .expect("script task");
}

/// What one receiver saw: unique (webhook-id, path) pairs and the requests beyond them.
pub struct Tally {
    pub unique: HashSet<(String, String)>,
    pub requests: usize,
}

impl Tally {
    pub fn of(receiver: &Receiver, id_prefix: &str) -> Tally {
        let received: Vec<_> = receiver
            .received()
            .into_iter()
            .map(|r| (r.header("webhook-id"), r.path.clone()))
            .filter(|(id, _)| id.starts_with(id_prefix))
            .collect();
        let requests = received.len();
        Tally {
            unique: received.into_iter().collect(),
            requests,
        }
    }

    pub fn duplicates(&self) -> usize {
        self.requests - self.unique.len()
    }

    /// Every `(id, path)` of `ids` × `paths` reached the receiver.
    pub fn assert_every_pair(&self, ids: &[String], paths: &[&str]) {
        let expected: HashSet<(String, String)> = ids
            .iter()
            .flat_map(|id| paths.iter().map(move |p| (id.clone(), p.to_string())))
            .collect();
        let missing: Vec<_> = expected.difference(&self.unique).take(10).collect();
        assert!(
            missing.is_empty(),
            "pairs never delivered (first 10): {missing:?}"
        );
    }
}

/// Every event published is recorded once with one delivery per endpoint.
pub async fn assert_recorded(env: &TestEnv, events: usize, endpoints: i64) {
    let rows: Vec<(i64,)> =
        sqlx::query_as("SELECT count(*) FROM herald.deliveries GROUP BY event_id")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), events, "events with deliveries");
    assert!(
        rows.iter().all(|(n,)| *n == endpoints),
        "one delivery row per (event, endpoint)"
    );
}

// ------------------------------------------------------------------ figures

/// One row of the figures: what a fault cost in one run.
#[derive(Debug, Clone)]
pub struct Figure {
    pub fault: &'static str,
    pub case: String,
    pub what_herald_did: String,
    pub published: usize,
    pub pairs: usize,
    pub delivered: usize,
    pub failed: usize,
    pub duplicates: usize,
    /// From the fault (or its repair, as `recover_note` says) to deliveries flowing again.
    pub recover_ms: Option<u128>,
    pub recover_note: String,
    pub extra: Value,
}

/// The run's context: date and versions of the broker and database.
async fn versions(env: &TestEnv, scale: Scale) -> (String, String) {
    let rabbit = management_get(&management_base(scale, 1), "overview")
        .await
        .and_then(|o| o["rabbitmq_version"].as_str().map(String::from))
        .unwrap_or_else(|| "unknown".into());
    let postgres: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&env.pool)
        .await
        .unwrap_or_else(|_| "unknown".into());
    (rabbit, postgres)
}

/// Writes the figures of one fault's run to `target/faults/<fault>-<scale>.json`, one
/// JSON line per case, replacing the last run's; and prints them.
pub async fn record(env: &TestEnv, scale: Scale, fault: &str, figures: &[Figure]) {
    let (rabbit, postgres) = versions(env, scale).await;
    let date = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string();
    let mut lines = String::new();
    for f in figures {
        let line = json!({
            "fault": f.fault,
            "case": f.case,
            "scale": scale.name(),
            "what_herald_did": f.what_herald_did,
            "published": f.published,
            "pairs": f.pairs,
            "delivered": f.delivered,
            "failed": f.failed,
            "duplicates": f.duplicates,
            "recover_ms": f.recover_ms,
            "recover_note": f.recover_note,
            "extra": f.extra,
            "date": date,
            "rabbitmq": rabbit,
            "postgres": postgres,
        });
        println!("fault figure: {line}");
        lines.push_str(&line.to_string());
        lines.push('\n');
    }
    std::fs::write(
        faults_dir().join(format!("{fault}-{}.json", scale.name())),
        lines,
    )
    .unwrap();
}

/// Samples the resident memory of every process of `roles` every 100 ms until stopped;
/// answers the peak (kB) per process pid.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    pub fn start(pids: Vec<u32>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, peak) = (stop.clone(), peak.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    for pid in &pids {
                        if let Some(kb) = vm_rss_kb(*pid) {
                            peak.fetch_max(kb, Ordering::Relaxed);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        RssSampler {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    pub fn peak_kb(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak_kb()
    }
}
