//! Settings, loaded once at startup and passed down.
//!
//! Layers (contract §2): built-in defaults ← `--config FILE` (TOML) ← environment
//! variables `HERALD__<SECTION>__<KEY>`. Lists (`ingest.exchanges`,
//! `delivery.retry_schedule`) are comma-separated strings or TOML arrays; durations
//! accept `ms`, `s`, `m`, `h`. A bad value stops startup with an error naming the key.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::domain::{
    BatchBounds, DeliveryBounds, Secret, TopicPattern, MAX_BATCH_EVENTS, MIN_BATCH_EVENTS,
};
use crate::keyring::Keyring;

/// Why settings could not be loaded; always names the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration")]
    Load(#[from] config::ConfigError),
    #[error("configuration key `{key}`: {problem}")]
    Invalid { key: &'static str, problem: String },
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub amqp: AmqpSettings,
    #[serde(default)]
    pub database: DatabaseSettings,
    #[serde(default)]
    pub api: ApiSettings,
    #[serde(default)]
    pub ingest: IngestSettings,
    #[serde(default)]
    pub topology: TopologySettings,
    #[serde(default)]
    pub delivery: DeliverySettings,
    #[serde(default)]
    pub telemetry: TelemetrySettings,
    #[serde(default)]
    pub secrets: SecretsSettings,
    #[serde(default)]
    pub retention: RetentionSettings,
}

/// How long the records are kept (docs/retention.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionSettings {
    /// Events, deliveries and attempts older than this are removed, a UTC day at a time
    /// (deliveries not finished are kept). Also how long an event id is remembered: one
    /// to two windows.
    #[serde(deserialize_with = "duration")]
    pub window: Duration,
    /// How often the api role looks for days to remove and creates days ahead.
    #[serde(deserialize_with = "duration")]
    pub check_interval: Duration,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(30 * 24 * 3600),
            check_interval: Duration::from_secs(10 * 60),
        }
    }
}

/// The keys endpoint secrets are stored under (src/keyring.rs).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecretsSettings {
    /// `key-id:base64-of-32-bytes`, comma-separated (or a TOML array): the first seals,
    /// every one opens.
    #[serde(deserialize_with = "secret_list")]
    pub keys: Secret,
    /// Without keys, store secrets in plain text instead of refusing to start: for a
    /// throwaway setup only. Ignored when keys are set.
    pub allow_plaintext: bool,
}

impl SecretsSettings {
    /// The keyring to seal and open stored secrets with. No key is an error naming
    /// `secrets.keys`, unless `secrets.allow_plaintext`.
    pub fn keyring(&self) -> Result<Keyring, ConfigError> {
        let keys = Keyring::parse(self.keys.expose()).map_err(|problem| ConfigError::Invalid {
            key: "secrets.keys",
            problem,
        })?;
        if keys.is_empty() && !self.allow_plaintext {
            return Err(ConfigError::Invalid {
                key: "secrets.keys",
                problem: "not set: Herald stores endpoint secrets encrypted under it. Set \
                          `key-id:base64-of-32-bytes` (e.g. `k1:` followed by the output of \
                          `head -c 32 /dev/urandom | base64`), or `secrets.allow_plaintext = \
                          true` for a throwaway setup"
                    .into(),
            });
        }
        Ok(keys)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpSettings {
    /// One broker URL, or several comma-separated URLs of one cluster's nodes
    /// ([`node_urls`]); a comma inside a password is written `%2C`.
    pub url: Secret,
    /// Backoff ceiling while the broker is unreachable.
    #[serde(deserialize_with = "duration")]
    pub reconnect_max_backoff: Duration,
}

impl Default for AmqpSettings {
    fn default() -> Self {
        Self {
            url: Secret::new("amqp://guest:guest@127.0.0.1:5673/%2f"),
            reconnect_max_backoff: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: Secret,
    pub max_connections: u32,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: Secret::new("postgres://herald:herald@127.0.0.1:5433/herald"),
            max_connections: 16,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiSettings {
    pub listen: SocketAddr,
    /// Bearer token for the admin API; empty disables the admin routes.
    pub admin_token: Secret,
    /// Label `herald_endpoint_failures_total` by endpoint id (cardinality = endpoints).
    pub per_endpoint_metrics: bool,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".parse().expect("literal address"),
            admin_token: Secret::new(""),
            per_endpoint_metrics: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestSettings {
    #[serde(deserialize_with = "string_list")]
    pub exchanges: Vec<String>,
    /// Binding keys of the ingest queue on every source exchange.
    #[serde(deserialize_with = "pattern_list")]
    pub binding_keys: Vec<TopicPattern>,
    /// Unacknowledged messages the broker hands one ingest consumer.
    pub prefetch: u16,
    /// Messages fanned out in one database transaction.
    pub batch_size: usize,
    /// Largest message body accepted; bigger ones are parked in `<prefix>.invalid`.
    pub max_body_bytes: usize,
    /// Ingest consumers (channels) per process.
    pub consumers: usize,
    /// The ingest process makes each delivery's first attempt itself and acknowledges
    /// the event once every first attempt is recorded (or handed on to a retry);
    /// `<prefix>.work` then carries only retries, put-off and redriven deliveries.
    /// `false`: every attempt goes through `<prefix>.work` and the deliver role, so
    /// ingest needs no egress and the two roles scale fully apart.
    pub deliver_first_attempt: bool,
}

impl Default for IngestSettings {
    fn default() -> Self {
        Self {
            exchanges: vec!["erp.events".into()],
            binding_keys: vec!["#".parse().expect("literal pattern")],
            prefetch: 500,
            batch_size: 250,
            max_body_bytes: 256 * 1024,
            consumers: 2,
            deliver_first_attempt: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopologySettings {
    pub prefix: String,
}

impl Default for TopologySettings {
    fn default() -> Self {
        Self {
            prefix: "herald".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliverySettings {
    #[serde(deserialize_with = "duration_list")]
    pub retry_schedule: Vec<Duration>,
    /// Delays besides those of `retry_schedule` that endpoints' own schedules may use:
    /// each one gets its delay queues too (one per jitter step), so an endpoint's
    /// schedule never needs a queue of its own. Empty: endpoints choose among the
    /// steps of `retry_schedule`.
    #[serde(deserialize_with = "duration_list")]
    pub retry_delays: Vec<Duration>,
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// The longest request timeout an endpoint may ask for (its own `timeout`); at
    /// least `timeout`. A slow endpoint holds one of the process's request slots that
    /// long, so this bounds what one endpoint can take from the others.
    #[serde(deserialize_with = "duration")]
    pub max_timeout: Duration,
    pub allow_private_networks: bool,
    /// Networks exempt from the SSRF guard (CIDRs, or single addresses), for receivers
    /// in a known private range: `10.20.0.0/16, fd12:3456::/48`.
    #[serde(deserialize_with = "network_list")]
    pub allowed_networks: Vec<ipnet::IpNet>,
    /// Endpoint URLs must be https: an http one is refused at creation and change.
    /// The development configuration and the tests turn it off.
    pub require_https: bool,
    /// An egress proxy every webhook goes through (`http://proxy:3128`); empty: none.
    /// Herald ignores `HTTP(S)_PROXY` in its environment: with a proxy, only the
    /// proxy's address passes the SSRF guard, so the proxy must refuse private
    /// destinations itself — set it here on purpose, not by inheritance.
    pub egress_proxy: Secret,
    /// Webhook requests in flight per process, first attempts and work-queue tasks
    /// together. A process holds up to [`ATTEMPTS_PER_REQUEST`] times as many attempts
    /// in progress (most of them recording their outcome).
    pub concurrency: u16,
    /// Requests in flight per process to one endpoint that is slow (its requests take
    /// over 250 ms on average) or not yet heard from; its further tasks are put off
    /// rather than taking the slots others need. An endpoint answering fast may hold
    /// four times as many (at most `concurrency`).
    pub max_in_flight_per_endpoint: u16,
    /// Spread of retry delays: each delay d is served by queues from d to d × (1 + jitter).
    pub jitter: f64,
    /// Bytes of a receiver's response body kept with the attempt.
    pub max_response_body_bytes: usize,
    /// How long a stopping process lets in-flight deliveries finish.
    #[serde(deserialize_with = "duration")]
    pub shutdown_grace: Duration,
    /// Failed attempts in a row (no success between, from every process) after which an
    /// endpoint's circuit breaker opens: the endpoint is `failing`, its tasks wait in the
    /// defer queues and one probe attempt goes out per `probe_interval`.
    pub breaker_failures: u32,
    /// While an endpoint is `failing`: the time between probe attempts.
    #[serde(deserialize_with = "duration")]
    pub probe_interval: Duration,
    /// An endpoint failing continuously this long (its first failure with no success
    /// since) is disabled (contract §2, default `5d`).
    #[serde(deserialize_with = "duration")]
    pub disable_after: Duration,
    /// The most events an endpoint's batch may hold (its `batch.max_events`), 2 to 100.
    /// Each event waiting in a batch holds one of the process's attempts in progress,
    /// so this also bounds what one batching endpoint holds of them.
    pub batch_max_events: u16,
    /// The longest window an endpoint's batch may gather for (its `batch.window`): the
    /// most latency batching adds to an event.
    #[serde(deserialize_with = "duration")]
    pub batch_max_window: Duration,
}

/// Attempts a process holds in progress per request slot. A request slot is held for
/// the HTTP request only; recording the outcome (a group commit) and publishing a
/// retry take as long again under load, and the message stays unacknowledged until
/// then. With only one attempt per slot, the slots waited on the database: at
/// 5,000 deliveries/s the ingest role stalled and p99 latency reached seconds.
pub const ATTEMPTS_PER_REQUEST: usize = 4;

impl DeliverySettings {
    /// What an endpoint's own timeout and retry schedule may be: up to `max_timeout`,
    /// and delays the topology declares a queue for.
    pub fn bounds(&self) -> DeliveryBounds {
        DeliveryBounds {
            max_timeout: self.max_timeout,
            delays: self.declared_delays(),
        }
    }

    /// What an endpoint's batching option may be.
    pub fn batch_bounds(&self) -> BatchBounds {
        BatchBounds {
            max_events: self.batch_max_events,
            max_window: self.batch_max_window,
        }
    }

    /// Every delay with delay queues: `retry_schedule` ∪ `retry_delays`.
    pub fn declared_delays(&self) -> BTreeSet<Duration> {
        self.retry_schedule
            .iter()
            .chain(&self.retry_delays)
            .copied()
            .collect()
    }

    /// Attempts one role holds in progress at once (requests plus outcomes being
    /// recorded): the ingest role's first attempts, the deliver role's work prefetch.
    pub fn attempts_in_progress(&self) -> usize {
        usize::from(self.concurrency) * ATTEMPTS_PER_REQUEST
    }
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self {
            retry_schedule: ["1m", "5m", "15m", "1h", "4h"]
                .iter()
                .map(|s| humantime::parse_duration(s).expect("literal duration"))
                .collect(),
            retry_delays: Vec::new(),
            timeout: Duration::from_secs(10),
            max_timeout: Duration::from_secs(30),
            allow_private_networks: false,
            allowed_networks: Vec::new(),
            require_https: true,
            egress_proxy: Secret::new(""),
            concurrency: 256,
            max_in_flight_per_endpoint: 16,
            jitter: 0.2,
            max_response_body_bytes: 4096,
            shutdown_grace: Duration::from_secs(30),
            breaker_failures: 10,
            probe_interval: Duration::from_secs(30),
            disable_after: Duration::from_secs(5 * 24 * 3600),
            batch_max_events: MAX_BATCH_EVENTS,
            batch_max_window: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    pub log_format: LogFormat,
    /// `tracing` filter directive, e.g. `info,herald=debug`; `RUST_LOG` wins when set.
    pub log_level: String,
    /// OTLP/HTTP traces endpoint, e.g. `http://127.0.0.1:4318`; empty = no export.
    pub otlp_endpoint: String,
    /// How often the api role samples queue depths and consumers (passive declares).
    #[serde(deserialize_with = "duration")]
    pub queue_sample_interval: Duration,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Pretty,
            log_level: "info".into(),
            otlp_endpoint: String::new(),
            queue_sample_interval: Duration::from_secs(15),
        }
    }
}

impl Settings {
    /// Defaults ← optional TOML file ← `HERALD__…` environment variables.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with(file, None)
    }

    /// As [`Settings::load`], with `environment` read instead of the process's own
    /// (tests). Values are taken as given: no `try_parsing`, which would turn an
    /// all-digit token into a number (losing its leading zeros) or `"true"` into a
    /// boolean. Numeric and boolean keys still parse, from the string, when their
    /// field asks for that type.
    pub fn load_with(
        file: Option<&Path>,
        environment: Option<config::Map<String, String>>,
    ) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = file {
            builder = builder.add_source(config::File::from(path).required(true));
        }
        builder = builder.add_source(
            config::Environment::with_prefix("HERALD")
                .prefix_separator("__")
                .separator("__")
                .source(environment),
        );
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks no single field's type can express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, problem: &str| {
            Err(ConfigError::Invalid {
                key,
                problem: problem.to_string(),
            })
        };
        let prefix = &self.topology.prefix;
        if prefix.is_empty()
            || !prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return invalid(
                "topology.prefix",
                "must be non-empty letters, digits, '-', '_' or '.'",
            );
        }
        if self.retention.window < Duration::from_secs(1) {
            return invalid("retention.window", "must be at least 1s");
        }
        if self.retention.check_interval < Duration::from_secs(1) {
            return invalid("retention.check_interval", "must be at least 1s");
        }
        if self.ingest.exchanges.is_empty() {
            return invalid("ingest.exchanges", "at least one exchange is needed");
        }
        if self.ingest.binding_keys.is_empty() {
            return invalid("ingest.binding_keys", "at least one binding key is needed");
        }
        if self.ingest.batch_size == 0 || self.ingest.prefetch == 0 || self.ingest.consumers == 0 {
            return invalid(
                "ingest",
                "batch_size, prefetch and consumers must be above 0",
            );
        }
        if self.delivery.retry_schedule.iter().any(|d| d.is_zero()) {
            return invalid("delivery.retry_schedule", "delays must be above 0");
        }
        if self.delivery.retry_delays.iter().any(|d| d.is_zero()) {
            return invalid("delivery.retry_delays", "delays must be above 0");
        }
        if self.delivery.timeout.is_zero() {
            return invalid("delivery.timeout", "must be above 0");
        }
        if self.delivery.max_timeout < self.delivery.timeout {
            return invalid("delivery.max_timeout", "must be at least delivery.timeout");
        }
        if self.delivery.concurrency == 0 {
            return invalid("delivery.concurrency", "must be above 0");
        }
        if self.delivery.max_in_flight_per_endpoint == 0 {
            return invalid("delivery.max_in_flight_per_endpoint", "must be above 0");
        }
        if self.delivery.breaker_failures == 0 {
            return invalid("delivery.breaker_failures", "must be above 0");
        }
        if self.delivery.probe_interval.is_zero() {
            return invalid("delivery.probe_interval", "must be above 0");
        }
        if self.delivery.disable_after.is_zero() {
            return invalid("delivery.disable_after", "must be above 0");
        }
        if !(MIN_BATCH_EVENTS..=MAX_BATCH_EVENTS).contains(&self.delivery.batch_max_events) {
            return invalid("delivery.batch_max_events", "must be from 2 to 100");
        }
        if self.delivery.batch_max_window.is_zero()
            || self.delivery.batch_max_window > Duration::from_secs(60)
        {
            return invalid(
                "delivery.batch_max_window",
                "must be above 0 and at most 1m",
            );
        }
        if !(0.0..=1.0).contains(&self.delivery.jitter) {
            return invalid("delivery.jitter", "must be between 0 and 1");
        }
        if let Err(problem) = Keyring::parse(self.secrets.keys.expose()) {
            return Err(ConfigError::Invalid {
                key: "secrets.keys",
                problem,
            });
        }
        if let Err(problem) = check_node_urls(self.amqp.url.expose()) {
            return invalid("amqp.url", &problem);
        }
        if url_scheme(self.database.url.expose())
            .is_none_or(|s| s != "postgres" && s != "postgresql")
        {
            return invalid("database.url", "must be a postgres:// URL");
        }
        Ok(())
    }
}

/// The broker nodes named by `amqp.url`: its comma-separated elements, trimmed, empty
/// ones dropped. One element is a single broker; several are nodes of one cluster, which
/// [`crate::broker::connect`] tries in turn.
pub fn node_urls(list: &str) -> Vec<&str> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// Every element of `amqp.url` an AMQP URI. The problem names the element by position and
/// never quotes it: the URL carries the password.
fn check_node_urls(list: &str) -> Result<(), String> {
    let nodes = node_urls(list);
    if nodes.is_empty() {
        return Err("must be an amqp:// or amqps:// URL, or several separated by commas".into());
    }
    let count = nodes.len();
    for (position, url) in nodes.iter().enumerate().map(|(i, url)| (i + 1, url)) {
        let which = if count == 1 {
            String::from("the URL")
        } else {
            format!("element {position} of {count}")
        };
        if url_scheme(url).is_none_or(|s| s != "amqp" && s != "amqps") {
            return Err(format!("{which} must be an amqp:// or amqps:// URL"));
        }
        if let Err(error) = url.parse::<lapin::uri::AMQPUri>() {
            // The parser's message may repeat the input (`Invalid URL: '…'`).
            let detail = if error.contains(url) {
                String::new()
            } else {
                format!(" ({error})")
            };
            return Err(format!("{which} is not a valid AMQP URI{detail}"));
        }
    }
    Ok(())
}

fn url_scheme(url: &str) -> Option<&str> {
    url.split_once("://").map(|(scheme, _)| scheme)
}

/// A comma-separated string or a list, as TOML arrays and environment variables give them.
#[derive(Deserialize)]
#[serde(untagged)]
enum ListInput {
    Text(String),
    List(Vec<String>),
}

impl ListInput {
    fn items(self) -> Vec<String> {
        match self {
            ListInput::Text(text) => text
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            ListInput::List(list) => list.into_iter().map(|s| s.trim().to_string()).collect(),
        }
    }
}

/// A list of secrets (comma-separated or an array), kept as one comma-separated secret.
fn secret_list<'de, D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
    Ok(Secret::new(ListInput::deserialize(d)?.items().join(",")))
}

/// Comma-separated CIDRs (`10.0.0.0/8`) or addresses (`10.1.2.3`, one host).
fn network_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ipnet::IpNet>, D::Error> {
    ListInput::deserialize(d)?
        .items()
        .iter()
        .map(|item| parse_network(item).map_err(serde::de::Error::custom))
        .collect()
}

pub fn parse_network(text: &str) -> Result<ipnet::IpNet, String> {
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map(|net| net.trunc())
        .map_err(|_| format!("`{text}` is not a network like 10.20.0.0/16 or an address"))
}

fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(ListInput::deserialize(d)?.items())
}

fn pattern_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<TopicPattern>, D::Error> {
    ListInput::deserialize(d)?
        .items()
        .iter()
        .map(|p| p.parse().map_err(serde::de::Error::custom))
        .collect()
}

/// Parses `250ms`, `10s`, `5m`, `1h` (and combinations such as `1h30m`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("`{text}` is not a duration like 500ms, 10s, 5m or 1h ({e})"))
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

fn duration_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    ListInput::deserialize(d)?
        .items()
        .iter()
        .map(|s| parse_duration(s).map_err(serde::de::Error::custom))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comma_separated_lists_and_durations_parse() {
        let parsed = duration_list(
            serde::de::value::StrDeserializer::<serde::de::value::Error>::new("1m, 5m,15m,1h,4h"),
        )
        .unwrap();
        assert_eq!(
            parsed,
            [60, 300, 900, 3600, 14400]
                .map(Duration::from_secs)
                .to_vec()
        );
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("ten seconds").is_err());
    }

    fn from_environment(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let map = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::load_with(None, Some(map))
    }

    #[test]
    fn strings_are_taken_verbatim_however_they_look() {
        let settings = from_environment(&[
            ("HERALD__API__ADMIN_TOKEN", "000123456789"),
            (
                "HERALD__DATABASE__URL",
                "postgres://herald:0042@127.0.0.1:5433/herald",
            ),
            ("HERALD__AMQP__URL", "amqp://guest:1e3@127.0.0.1:5673/%2f"),
            ("HERALD__TOPOLOGY__PREFIX", "007"),
        ])
        .unwrap();
        assert_eq!(settings.api.admin_token.expose(), "000123456789");
        assert_eq!(
            settings.database.url.expose(),
            "postgres://herald:0042@127.0.0.1:5433/herald"
        );
        assert_eq!(
            settings.amqp.url.expose(),
            "amqp://guest:1e3@127.0.0.1:5673/%2f"
        );
        assert_eq!(settings.topology.prefix, "007");
        for token in ["true", "1.50", "-0"] {
            let settings = from_environment(&[("HERALD__API__ADMIN_TOKEN", token)]).unwrap();
            assert_eq!(settings.api.admin_token.expose(), token);
        }
    }

    #[test]
    fn numbers_and_booleans_still_parse_from_the_environment() {
        let settings = from_environment(&[
            ("HERALD__INGEST__PREFETCH", "120"),
            ("HERALD__DELIVERY__ALLOW_PRIVATE_NETWORKS", "true"),
            ("HERALD__INGEST__EXCHANGES", "a.events,b.events"),
        ])
        .unwrap();
        assert_eq!(settings.ingest.prefetch, 120);
        assert!(settings.delivery.allow_private_networks);
        assert!(
            Settings::default().delivery.require_https,
            "https only by default"
        );
        let http = from_environment(&[("HERALD__DELIVERY__REQUIRE_HTTPS", "false")]).unwrap();
        assert!(!http.delivery.require_https);
        assert_eq!(settings.ingest.exchanges, ["a.events", "b.events"]);
        let err = from_environment(&[("HERALD__INGEST__PREFETCH", "many")]).unwrap_err();
        let err = format!("{:#}", anyhow::Error::from(err));
        assert!(err.contains("prefetch"), "{err}");
    }

    #[test]
    fn health_and_guard_settings_parse_and_bad_ones_name_their_key() {
        let settings = from_environment(&[
            (
                "HERALD__DELIVERY__ALLOWED_NETWORKS",
                "10.20.0.0/16, 127.0.0.1,fd12:3456::/48",
            ),
            ("HERALD__DELIVERY__DISABLE_AFTER", "2h"),
            ("HERALD__DELIVERY__BREAKER_FAILURES", "4"),
            ("HERALD__DELIVERY__PROBE_INTERVAL", "5s"),
        ])
        .unwrap();
        let nets: Vec<String> = settings
            .delivery
            .allowed_networks
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(nets, ["10.20.0.0/16", "127.0.0.1/32", "fd12:3456::/48"]);
        assert_eq!(settings.delivery.disable_after, Duration::from_secs(7200));
        assert_eq!(settings.delivery.breaker_failures, 4);
        assert_eq!(settings.delivery.probe_interval, Duration::from_secs(5));
        let defaults = Settings::default().delivery;
        assert_eq!(defaults.disable_after, Duration::from_secs(5 * 86_400));
        assert!(defaults.allowed_networks.is_empty());
        // A host address written with a prefix is kept as its network.
        assert_eq!(
            parse_network("10.1.2.3/8").unwrap().to_string(),
            "10.0.0.0/8"
        );
        for (key, value, named) in [
            (
                "HERALD__DELIVERY__ALLOWED_NETWORKS",
                "10.0.0.0/33",
                "allowed_networks",
            ),
            (
                "HERALD__DELIVERY__ALLOWED_NETWORKS",
                "intranet",
                "allowed_networks",
            ),
            ("HERALD__DELIVERY__DISABLE_AFTER", "soon", "disable_after"),
            (
                "HERALD__DELIVERY__BREAKER_FAILURES",
                "0",
                "breaker_failures",
            ),
        ] {
            let err = from_environment(&[(key, value)])
                .and_then(|s| s.validate().map(|_| s))
                .unwrap_err();
            let err = format!("{:#}", anyhow::Error::from(err));
            assert!(err.contains(named), "{value}: {err}");
        }
    }

    #[test]
    fn amqp_url_is_one_url_or_a_comma_separated_list_of_nodes() {
        let cases: &[(&str, &[&str])] = &[
            (
                "amqp://guest:guest@127.0.0.1:5673/%2f",
                &["amqp://guest:guest@127.0.0.1:5673/%2f"],
            ),
            (
                "amqp://a:1@n1:5681/%2f, amqp://a:1@n2:5682/%2f ,amqps://a:1@n3:5683/%2f",
                &[
                    "amqp://a:1@n1:5681/%2f",
                    "amqp://a:1@n2:5682/%2f",
                    "amqps://a:1@n3:5683/%2f",
                ],
            ),
            // Stray commas and spaces name no node.
            (",amqp://n1/%2f,, ,", &["amqp://n1/%2f"]),
            // A comma in a password is percent-encoded, so it never splits a URL.
            ("amqp://u:p%2Cq@n1/%2f", &["amqp://u:p%2Cq@n1/%2f"]),
            ("", &[]),
        ];
        for (list, nodes) in cases {
            assert_eq!(node_urls(list), *nodes, "{list:?}");
        }
        let settings = from_environment(&[(
            "HERALD__AMQP__URL",
            "amqp://guest:guest@127.0.0.1:5681/%2f,amqp://guest:guest@127.0.0.1:5682/%2f",
        )])
        .unwrap();
        assert_eq!(node_urls(settings.amqp.url.expose()).len(), 2);
    }

    #[test]
    fn a_bad_amqp_url_element_is_named_by_position_never_quoted() {
        let cases = [
            ("http://guest:s3cret@n1/", "the URL must be an amqp://"),
            (
                "amqp://guest:s3cret@n1/%2f,http://guest:s3cret@n2/",
                "element 2 of 2 must be an amqp://",
            ),
            (
                "amqp://guest:s3cret@n1/%2f,amqp://guest:s3cret@n2:notaport/%2f,amqp://n3",
                "element 2 of 3 is not a valid AMQP URI",
            ),
            ("guest:s3cret@n1", "the URL must be an amqp://"),
            (" , ", "must be an amqp:// or amqps:// URL, or several"),
        ];
        for (list, expected) in cases {
            let err = from_environment(&[("HERALD__AMQP__URL", list)])
                .unwrap_err()
                .to_string();
            assert!(err.contains("amqp.url"), "{list}: {err}");
            assert!(err.contains(expected), "{list}: {err}");
            assert!(!err.contains("s3cret"), "{list}: {err}");
        }
    }

    #[test]
    fn batch_bounds_default_to_100_events_in_1s_and_are_checked() {
        let defaults = Settings::default().delivery.batch_bounds();
        assert_eq!(defaults.max_events, 100);
        assert_eq!(defaults.max_window, Duration::from_secs(1));
        let settings = from_environment(&[
            ("HERALD__DELIVERY__BATCH_MAX_EVENTS", "20"),
            ("HERALD__DELIVERY__BATCH_MAX_WINDOW", "500ms"),
        ])
        .unwrap();
        assert_eq!(settings.delivery.batch_bounds().max_events, 20);
        assert_eq!(
            settings.delivery.batch_bounds().max_window,
            Duration::from_millis(500)
        );
        for (key, value, named) in [
            (
                "HERALD__DELIVERY__BATCH_MAX_EVENTS",
                "1",
                "delivery.batch_max_events",
            ),
            (
                "HERALD__DELIVERY__BATCH_MAX_EVENTS",
                "101",
                "delivery.batch_max_events",
            ),
            (
                "HERALD__DELIVERY__BATCH_MAX_WINDOW",
                "0s",
                "delivery.batch_max_window",
            ),
            (
                "HERALD__DELIVERY__BATCH_MAX_WINDOW",
                "2m",
                "delivery.batch_max_window",
            ),
        ] {
            let err = from_environment(&[(key, value)]).unwrap_err().to_string();
            assert!(err.contains(named), "{value}: {err}");
        }
    }

    #[test]
    fn endpoint_delivery_bounds_come_from_the_schedule_the_extra_delays_and_max_timeout() {
        let settings = from_environment(&[
            ("HERALD__DELIVERY__RETRY_SCHEDULE", "1m,5m"),
            ("HERALD__DELIVERY__RETRY_DELAYS", "30s, 5m, 30m"),
            ("HERALD__DELIVERY__MAX_TIMEOUT", "20s"),
        ])
        .unwrap();
        let bounds = settings.delivery.bounds();
        assert_eq!(bounds.max_timeout, Duration::from_secs(20));
        assert_eq!(
            bounds.delays.into_iter().collect::<Vec<_>>(),
            [30, 60, 300, 1800].map(Duration::from_secs)
        );
        let defaults = Settings::default().delivery;
        assert!(defaults.retry_delays.is_empty());
        assert_eq!(defaults.max_timeout, Duration::from_secs(30));
        assert_eq!(defaults.declared_delays().len(), 5);
        for (key, value, named) in [
            (
                "HERALD__DELIVERY__MAX_TIMEOUT",
                "5s",
                "delivery.max_timeout",
            ),
            (
                "HERALD__DELIVERY__RETRY_DELAYS",
                "1m,0s",
                "delivery.retry_delays",
            ),
        ] {
            let err = from_environment(&[(key, value)]).unwrap_err().to_string();
            assert!(err.contains(named), "{value}: {err}");
        }
    }

    #[test]
    fn a_bad_prefix_names_its_key() {
        let mut settings: Settings = config::Config::builder()
            .build()
            .unwrap()
            .try_deserialize()
            .unwrap();
        settings.topology.prefix = "has space".into();
        let err = settings.validate().unwrap_err().to_string();
        assert!(err.contains("topology.prefix"), "{err}");
    }
}
