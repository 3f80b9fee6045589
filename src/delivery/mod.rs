//! Delivery: the task format, retry schedule and the decision it feeds, the HTTP
//! client, the outcome recorder, the attempt engine that ties them together, and the
//! deliver role's consumer.

pub mod batch;
pub mod batched;
pub mod breaker;
pub mod client;
pub mod consumer;
pub mod decision;
pub mod engine;
pub mod health;
pub mod order;
pub mod put_off;
pub mod recorder;
pub mod retry;
pub mod sent_headers;
pub mod settle;
pub mod share;
pub mod task;
pub mod throttle;

use crate::config::Settings;
use crate::topology::Topology;

/// The topology with the delay queues of the configured retry schedule and the defer
/// queues of the throttle.
pub fn topology(settings: &Settings) -> Topology {
    let retry = retry::RetryPolicy::from_settings(&settings.delivery);
    Topology::new(settings, retry.delay_queues(), throttle::DEFER_TIERS)
}
