//! Herald: broker-native webhook fan-out.
//!
//! ERP services publish domain events to RabbitMQ topic exchanges; Herald records each
//! event once, fans it out to every subscribed endpoint, signs each webhook (Standard
//! Webhooks), retries through broker delay queues, dead-letters what cannot be
//! delivered, and records every delivery and attempt in PostgreSQL.
//!
//! Layout: `config` (settings) → `app` (roles, lifecycle) → `ingest` (consume, fan
//! out) and `delivery` (sign, POST, retry); `envelope` (message → event), `domain`
//! (validated types), `signing`, `topology` (queues), `broker` (AMQP), `store`
//! (PostgreSQL), `subscriptions` (in-memory matching), `dlq`, `api` (HTTP), `metrics`,
//! `telemetry`, `cli`; `testkit` (cargo feature `testkit`): the fixtures the integration
//! tests and `herald-bench` share.

pub mod api;
pub mod app;
pub mod backoff;
pub mod broker;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod dlq;
pub mod domain;
pub mod envelope;
pub mod ingest;
pub mod keyring;
pub mod metrics;
pub mod monitor;
pub mod ops;
pub mod readiness;
pub mod service;
pub mod signing;
pub mod store;
pub mod subscriptions;
pub mod telemetry;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod topology;

pub use app::App;
pub use config::Settings;
pub use readiness::Role;
