//! Fixtures that the integration tests (`tests/it/common`) and the benchmark harness
//! (`herald-bench`) share: where the local services are (`make services`), scratch
//! databases next to the main one, one isolated Herald world (database, topology prefix,
//! source exchange) as settings and as a `herald` process's environment, and a loopback
//! HTTP server for receivers.
//!
//! Compiled only with the cargo feature `testkit`, which `bench` turns on (`make test`,
//! `make lint` and `make bench` pass `--features bench`); the service's own build has
//! none of it.

pub mod database;
pub mod receiver;

use std::time::Duration;

use crate::config::Settings;
use crate::domain::Secret;

/// The local broker: `HERALD__AMQP__URL`, else guest on `HERALD_AMQP_PORT` (5673).
pub fn amqp_url() -> String {
    std::env::var("HERALD__AMQP__URL").unwrap_or_else(|_| {
        let port = std::env::var("HERALD_AMQP_PORT").unwrap_or_else(|_| "5673".into());
        format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
    })
}

/// The main local database (`HERALD__DATABASE__URL`, else user herald on
/// `HERALD_PG_PORT`, 5433): scratch databases are created and dropped through it.
pub fn database_base_url() -> String {
    std::env::var("HERALD__DATABASE__URL").unwrap_or_else(|_| {
        let port = std::env::var("HERALD_PG_PORT").unwrap_or_else(|_| "5433".into());
        format!("postgres://herald:herald@127.0.0.1:{port}/herald")
    })
}

/// `postgres://…/herald` → `postgres://…/<name>`.
pub fn with_database(url: &str, name: &str) -> String {
    match url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => format!("{url}/{name}"),
    }
}

/// One isolated Herald world on the local services: its own database, topology prefix
/// and source exchange, and the retry schedule its deliveries follow. The same world
/// runs in-process (`settings`) or as a `herald` process (`process_env`).
#[derive(Debug, Clone)]
pub struct World {
    pub amqp_url: String,
    pub database_url: String,
    pub prefix: String,
    pub exchange: String,
    /// Comma-separated durations, as `HERALD__DELIVERY__RETRY_SCHEDULE` takes them.
    pub retry_schedule: String,
    /// `secrets.keys` of the world (a test or bench key, never a production one).
    pub secrets_keys: String,
}

impl World {
    /// Settings for this world: loopback receivers over plain HTTP allowed, no retry
    /// jitter, its secrets keys; everything
    /// else is Herald's default. Callers adjust the rest and validate.
    pub fn settings(&self) -> anyhow::Result<Settings> {
        let mut settings = Settings::default();
        settings.amqp.url = Secret::new(self.amqp_url.clone());
        settings.database.url = Secret::new(self.database_url.clone());
        settings.topology.prefix = self.prefix.clone();
        settings.ingest.exchanges = vec![self.exchange.clone()];
        settings.delivery.retry_schedule = self.retry_durations()?;
        settings.delivery.jitter = 0.0;
        settings.delivery.allow_private_networks = true;
        settings.delivery.require_https = false;
        settings.secrets.keys = Secret::new(self.secrets_keys.clone());
        Ok(settings)
    }

    fn retry_durations(&self) -> anyhow::Result<Vec<Duration>> {
        self.retry_schedule
            .split(',')
            .map(crate::config::parse_duration)
            .collect::<Result<_, _>>()
            .map_err(anyhow::Error::msg)
    }

    /// The `HERALD__…` variables that configure a `herald` process for this world, its
    /// API on `listen`, logging warnings and errors only. Remove `RUST_LOG` from the
    /// process's environment as well: it would override the log level.
    pub fn process_env(&self, listen: &str) -> Vec<(&'static str, String)> {
        vec![
            ("HERALD__AMQP__URL", self.amqp_url.clone()),
            ("HERALD__DATABASE__URL", self.database_url.clone()),
            ("HERALD__TOPOLOGY__PREFIX", self.prefix.clone()),
            ("HERALD__INGEST__EXCHANGES", self.exchange.clone()),
            ("HERALD__API__LISTEN", listen.to_string()),
            ("HERALD__DELIVERY__ALLOW_PRIVATE_NETWORKS", "true".into()),
            ("HERALD__DELIVERY__REQUIRE_HTTPS", "false".into()),
            ("HERALD__SECRETS__KEYS", self.secrets_keys.clone()),
            (
                "HERALD__DELIVERY__RETRY_SCHEDULE",
                self.retry_schedule.clone(),
            ),
            ("HERALD__DELIVERY__JITTER", "0".into()),
            ("HERALD__TELEMETRY__LOG_LEVEL", "warn".into()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world() -> World {
        World {
            amqp_url: "amqp://guest:guest@127.0.0.1:5673/%2f".into(),
            database_url: with_database("postgres://h:h@127.0.0.1:5433/herald", "scratch"),
            prefix: "t1".into(),
            exchange: "t1.events".into(),
            retry_schedule: "50ms,100ms".into(),
            secrets_keys: "test:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into(),
        }
    }

    #[test]
    fn settings_and_process_env_describe_the_same_world() {
        let w = world();
        assert_eq!(w.database_url, "postgres://h:h@127.0.0.1:5433/scratch");
        let settings = w.settings().unwrap();
        settings.validate().unwrap();
        assert_eq!(
            settings.delivery.retry_schedule,
            [Duration::from_millis(50), Duration::from_millis(100)]
        );
        let env = w.process_env("127.0.0.1:0");
        let var = |name: &str| env.iter().find(|(n, _)| *n == name).unwrap().1.clone();
        assert_eq!(var("HERALD__DATABASE__URL"), settings.database.url.expose());
        assert_eq!(var("HERALD__TOPOLOGY__PREFIX"), settings.topology.prefix);
        assert_eq!(
            var("HERALD__INGEST__EXCHANGES"),
            settings.ingest.exchanges[0]
        );
        assert_eq!(var("HERALD__DELIVERY__RETRY_SCHEDULE"), "50ms,100ms");
    }

    #[test]
    fn a_bad_retry_schedule_is_refused() {
        let w = World {
            retry_schedule: "soon".into(),
            ..world()
        };
        assert!(w.settings().is_err());
    }
}
