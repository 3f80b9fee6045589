//! Prometheus metrics, one registry per running application (so tests can run many
//! side by side). Names and labels are documented in `docs/operations.md`; label
//! values are bounded sets — never event ids or URLs.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use uuid::Uuid;

use crate::envelope::ParkReason;

pub struct Metrics {
    registry: Registry,
    names: Vec<String>,
    per_endpoint: bool,
    pub deliveries: IntCounterVec,
    pub delivery_duration: Histogram,
    pub retries: IntCounterVec,
    pub deferred: IntCounterVec,
    pub put_off_messages: IntCounter,
    pub http_status: IntCounterVec,
    pub delivery_errors: IntCounterVec,
    pub dead_lettered: IntCounterVec,
    pub events_ingested: IntCounter,
    pub events_duplicate: IntCounter,
    /// Structured CloudEvents whose `partitionkey` was in the body only: delivered
    /// unordered (the broker routes keyed events by their headers).
    pub events_key_not_routed: IntCounter,
    pub events_unmatched: IntCounter,
    pub deliveries_filtered: IntCounter,
    pub parked: IntCounterVec,
    pub fanout_size: Histogram,
    /// Events per request to endpoints that batch.
    pub batch_events: Histogram,
    pub in_flight: IntGauge,
    pub attempts_in_progress: IntGauge,
    pub endpoints_disabled: IntCounterVec,
    pub endpoints: IntGaugeVec,
    /// Keys of ordered endpoints with a delivery in flight or waiting (rows of
    /// `herald.ordering_heads`); sampled by the api role's ordering watch.
    pub ordering_keys_active: IntGauge,
    /// Keys whose head has waited 15 minutes or more without an attempt (its task taken
    /// for lost; the api role's `STRANDED`); sampled with the above.
    pub ordering_heads_stranded: IntGauge,
    pub ops_published: IntCounter,
    pub queue_messages: IntGaugeVec,
    pub queue_consumers: IntGaugeVec,
    pub queue_taken_enqueued_at: IntGaugeVec,
    pub db_pool: IntGaugeVec,
    pub db_pool_max: IntGauge,
    pub endpoint_failures: IntCounterVec,
    pub ready: IntGauge,
    pub end_to_end: Histogram,
}

/// Registers metrics and remembers their names (dashboards are checked against them).
struct Reg {
    registry: Registry,
    names: Vec<String>,
}

impl Reg {
    fn add<C: prometheus::core::Collector + Clone + 'static>(&mut self, name: &str, c: C) -> C {
        self.registry
            .register(Box::new(c.clone()))
            .expect("unique metric");
        self.names.push(name.to_string());
        c
    }

    fn counter(&mut self, name: &str, help: &str) -> IntCounter {
        self.add(name, IntCounter::new(name, help).expect("valid metric"))
    }

    fn counter_vec(&mut self, name: &str, help: &str, label: &str) -> IntCounterVec {
        let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
        self.add(name, c)
    }

    fn histogram(&mut self, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
        let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
            .expect("valid metric");
        self.add(name, h)
    }

    fn gauge(&mut self, name: &str, help: &str) -> IntGauge {
        self.add(name, IntGauge::new(name, help).expect("valid metric"))
    }

    fn gauge_vec(&mut self, name: &str, help: &str, label: &str) -> IntGaugeVec {
        let g = IntGaugeVec::new(Opts::new(name, help), &[label]).expect("valid metric");
        self.add(name, g)
    }
}

/// Every `reason` of `webhook_retries_total` (`crate::delivery::breaker::failure_reason`): the metric's series exist
/// from the start, at zero.
pub const RETRY_REASONS: [&str; 11] = [
    "http_5xx",
    "http_4xx",
    "http_429",
    "http_3xx",
    "http_other",
    "timeout",
    "connect",
    "dns",
    "tls",
    "refused_address",
    "other",
];

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl Metrics {
    pub fn new(per_endpoint: bool) -> Self {
        let mut r = Reg {
            registry: Registry::new(),
            names: Vec::new(),
        };
        let m = Metrics {
            per_endpoint,
            deliveries: r.counter_vec(
                "webhook_deliveries_total",
                "Delivery attempts by outcome (success, failure)",
                "status",
            ),
            delivery_duration: r.histogram(
                "webhook_delivery_duration_seconds",
                "Duration of one HTTP delivery attempt",
                LATENCY_BUCKETS.to_vec(),
            ),
            retries: r.counter_vec(
                "webhook_retries_total",
                "Retries scheduled through delay queues, by why the attempt failed \
                 (http_5xx, http_4xx, http_429, http_3xx, timeout, connect, dns, tls, \
                 refused_address, other)",
                "reason",
            ),
            deferred: r.counter_vec(
                "herald_deliveries_deferred_total",
                "Tasks put off without an attempt (endpoint_busy, rate_limit)",
                "reason",
            ),
            put_off_messages: r.counter(
                "herald_put_off_messages_total",
                "Messages published to the defer queues; one carries every task put off \
                 for the same queue within a few milliseconds",
            ),
            http_status: r.counter_vec(
                "webhook_delivery_http_status",
                "HTTP status codes answered by endpoints",
                "code",
            ),
            delivery_errors: r.counter_vec(
                "herald_delivery_errors_total",
                "Attempts that got no HTTP response, by class",
                "class",
            ),
            dead_lettered: r.counter_vec(
                "herald_deliveries_dead_lettered_total",
                "Deliveries moved to the dead-letter queue, by reason",
                "reason",
            ),
            events_ingested: r.counter(
                "herald_events_ingested_total",
                "Events accepted and recorded for the first time",
            ),
            events_duplicate: r.counter(
                "herald_events_duplicate_total",
                "Messages whose event id was already recorded",
            ),
            events_key_not_routed: r.counter(
                "herald_events_ordering_key_not_routed_total",
                "Structured CloudEvents with a partitionkey in the body but no ordering-key \
                 header: delivered unordered",
            ),
            events_unmatched: r.counter(
                "herald_events_unmatched_total",
                "Accepted events that matched no endpoint",
            ),
            deliveries_filtered: r.counter(
                "herald_deliveries_filtered_total",
                "Deliveries not made: an endpoint subscribed to the event's type refused it \
                 by its payload filter (counted when the event is first recorded)",
            ),
            parked: r.counter_vec(
                "herald_messages_parked_total",
                "Messages moved to the invalid queue, by reason",
                "reason",
            ),
            fanout_size: r.histogram(
                "herald_fanout_size",
                "Endpoints matched per event",
                vec![0.0, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 500.0, 1000.0],
            ),
            batch_events: r.histogram(
                "herald_batch_events",
                "Events per request to endpoints that batch (docs/receivers.md, Batches)",
                vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0],
            ),
            in_flight: r.gauge(
                "herald_deliveries_in_flight",
                "Delivery attempts in progress",
            ),
            attempts_in_progress: r.gauge(
                "herald_attempts_in_progress",
                "Attempts holding one of the process's 4 x delivery.concurrency permits: \
                 requests, outcomes being recorded, put-offs being confirmed",
            ),
            endpoints_disabled: r.counter_vec(
                "herald_endpoints_disabled_total",
                "Endpoints Herald disabled: gone (answered 410 Gone) or failing \
                 (failing continuously for delivery.disable_after)",
                "reason",
            ),
            endpoints: r.gauge_vec(
                "herald_endpoints",
                "Endpoints by state (enabled, failing, disabled); sampled by the api role",
                "state",
            ),
            ordering_keys_active: r.gauge(
                "herald_ordering_keys_active",
                "Keys of ordered endpoints with a delivery in flight or waiting (rows of \
                 herald.ordering_heads); sampled every minute by the api role",
            ),
            ordering_heads_stranded: r.gauge(
                "herald_ordering_heads_stranded",
                "Keys of ordered endpoints whose head has gone 15 minutes or more without \
                 an attempt, its task taken for lost and sent again every 15 minutes \
                 (docs/ordering.md); sampled every minute by the api role",
            ),
            ops_published: r.counter(
                "herald_ops_events_published_total",
                "Operational events published to <prefix>.ops",
            ),
            queue_messages: r.gauge_vec(
                "herald_queue_messages",
                "Messages in a Herald queue",
                "queue",
            ),
            queue_consumers: r.gauge_vec(
                "herald_queue_consumers",
                "Consumers of a Herald queue",
                "queue",
            ),
            queue_taken_enqueued_at: r.gauge_vec(
                "herald_queue_taken_enqueued_timestamp_seconds",
                "When the message this process last took from the queue had entered it, \
                 Unix seconds: while the queue holds messages, time() minus this is how \
                 late its consumers are",
                "queue",
            ),
            db_pool: r.gauge_vec(
                "herald_db_pool_connections",
                "Database pool connections by state",
                "state",
            ),
            db_pool_max: r.gauge("herald_db_pool_max_connections", "Database pool size limit"),
            endpoint_failures: r.counter_vec(
                "herald_endpoint_failures_total",
                "Failed attempts per endpoint (api.per_endpoint_metrics)",
                "endpoint_id",
            ),
            ready: r.gauge(
                "herald_ready",
                "1 when broker, database and consumers are up",
            ),
            end_to_end: r.histogram(
                "webhook_end_to_end_latency_seconds",
                "From event received by Herald to successful delivery",
                LATENCY_BUCKETS.to_vec(),
            ),
            registry: r.registry,
            names: r.names,
        };
        // Series that alerts divide by exist from the start, at zero.
        for status in ["success", "failure"] {
            m.deliveries.with_label_values(&[status]);
        }
        for reason in ParkReason::ALL {
            m.parked.with_label_values(&[reason.as_str()]);
        }
        for reason in RETRY_REASONS {
            m.retries.with_label_values(&[reason]);
        }
        m
    }

    pub fn endpoint_failed(&self, endpoint_id: Uuid) {
        if self.per_endpoint {
            self.endpoint_failures
                .with_label_values(&[&endpoint_id.to_string()])
                .inc();
        }
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding cannot fail");
        String::from_utf8(buffer).expect("Prometheus text is UTF-8")
    }

    /// Every metric family name registered (dashboards are checked against it).
    pub fn names(&self) -> &[String] {
        &self.names
    }
}
