//! End-to-end tests through the real RabbitMQ and PostgreSQL started by `make services`,
//! with real HTTP receivers on loopback. One binary, one module per area.

#[cfg(not(feature = "testkit"))]
compile_error!(
    "the integration tests use herald::testkit: run them with `--features bench` \
     (or `--features testkit`), as `make test` does"
);

mod common;

mod admin_api;
mod attempt_headers;
mod batching;
#[cfg(feature = "bench")]
mod bench_scale_out;
#[cfg(feature = "bench")]
mod bench_smoke;
mod broker;
mod cluster;
mod configuration;
mod delivery;
mod dlq;
mod endpoint_options;
mod endpoint_ordering;
mod fan_out;
mod faults;
mod filters;
mod first_write;
mod fuzz;
mod health;
mod ingest;
mod invalid;
mod key_rotation;
mod lifecycle;
mod migrations;
mod observability;
mod openapi;
mod ordering;
mod properties;
mod rate_limits;
mod receivers;
mod record_lists;
mod resend;
mod retention;
mod ssrf;
mod subscriptions;
mod telemetry;
mod tenants;
