//! Logs and traces. Logs: `tracing`, readable (`pretty`) in development, JSON in
//! production. Traces: OpenTelemetry spans for ingest and each delivery attempt,
//! exported over OTLP/HTTP when `telemetry.otlp_endpoint` is set; W3C trace context
//! travels from the publisher's `traceparent` header through the delivery task to the
//! webhook request, so the receiver's trace joins the publisher's.
//!
//! Without an OTLP endpoint no OpenTelemetry layer is installed (building spans that
//! nobody exports cost ~8 % of Herald's CPU under load): trace context is then handed
//! on directly — the publisher's trace id, a fresh span id per hop.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use rand::Rng;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogFormat, TelemetrySettings};

/// Flushes pending spans when dropped; keep it alive for the life of the process.
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Spans are exported: trace context comes from the OpenTelemetry spans.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Installs the global subscriber once; later calls (tests) keep the first.
pub fn init(settings: &TelemetrySettings) -> anyhow::Result<TelemetryGuard> {
    // lapin reports every connection close, ours included, as an ERROR; Herald logs
    // broker trouble itself (with what it does about it), so lapin is quiet unless
    // asked for by name.
    let directives = match &settings.log_level {
        level if level.contains("lapin") => level.clone(),
        level => format!("{level},lapin=off"),
    };
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&directives))
        .map_err(|e| anyhow::anyhow!("configuration key `telemetry.log_level`: {e}"))?;
    let fmt = match settings.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_filter(filter)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .compact()
            .with_filter(filter)
            .boxed(),
    };

    if settings.otlp_endpoint.is_empty() {
        let _ = tracing_subscriber::registry().with(fmt).try_init();
        return Ok(TelemetryGuard { provider: None });
    }

    use opentelemetry_otlp::WithExportConfig;
    let endpoint = format!("{}/v1/traces", settings.otlp_endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| anyhow::anyhow!("configuration key `telemetry.otlp_endpoint`: {e}"))?;
    let provider = SdkTracerProvider::builder()
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name("herald")
                .build(),
        )
        .with_batch_exporter(exporter)
        .build();
    let tracer = provider.tracer("herald");
    // Spans are recorded whatever the log level.
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(EnvFilter::new("herald=info"));

    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let installed = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()
        .is_ok();
    if installed {
        opentelemetry::global::set_tracer_provider(provider.clone());
        EXPORTING.store(true, Ordering::Relaxed);
    }
    Ok(TelemetryGuard {
        provider: installed.then_some(provider),
    })
}

/// Makes `span` the next hop of the trace `parent` (a W3C `traceparent` a message
/// carried, if any) and returns the `traceparent` to hand on from it. When spans are
/// exported it names `span` itself; otherwise it keeps `parent`'s trace id (a new
/// trace if there is none or it is malformed) with a fresh span id.
pub fn link(span: &tracing::Span, parent: Option<&str>) -> String {
    if EXPORTING.load(Ordering::Relaxed) {
        set_parent(span, parent);
        if let Some(traceparent) = span.in_scope(current_traceparent) {
            return traceparent;
        }
    }
    child_of(parent)
}

/// Makes `span` a child of the W3C `traceparent` a message carried, if any.
fn set_parent(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(traceparent) = traceparent else {
        return;
    };
    let carrier = HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    let context = TraceContextPropagator::new().extract(&carrier);
    span.set_parent(context);
}

/// The `traceparent` of the current span, to hand on to the next hop.
fn current_traceparent() -> Option<String> {
    let context = tracing::Span::current().context();
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove("traceparent")
}

/// A `traceparent` one hop after `parent`: same trace id and flags, a new span id.
fn child_of(parent: Option<&str>) -> String {
    let mut rng = rand::thread_rng();
    let span_id = rng.gen_range(1..=u64::MAX);
    match parent.and_then(trace_of) {
        Some((trace_id, flags)) => format!("00-{trace_id}-{span_id:016x}-{flags}"),
        None => format!("00-{:032x}-{span_id:016x}-01", rng.gen_range(1..=u128::MAX)),
    }
}

/// The trace id and flags of a valid version-00 W3C `traceparent`.
fn trace_of(traceparent: &str) -> Option<(&str, &str)> {
    let lower_hex = |part: &str, len: usize| {
        part.len() == len && part.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let not_zero = |part: &str| part.bytes().any(|b| b != b'0');
    let mut parts = traceparent.trim().split('-');
    let (version, trace_id, span_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let valid = version == "00"
        && parts.next().is_none()
        && lower_hex(trace_id, 32)
        && not_zero(trace_id)
        && lower_hex(span_id, 16)
        && not_zero(span_id)
        && lower_hex(flags, 2);
    valid.then_some((trace_id, flags))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_hop_keeps_the_trace_and_flags_with_a_new_span_id() {
        let child = child_of(Some(PARENT));
        let parts: Vec<&str> = child.split('-').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(parts[2], "00f067aa0ba902b7");
        assert_eq!(parts[3], "01");
        assert!(trace_of(&child).is_some(), "{child} is itself valid");
    }

    #[test]
    fn a_missing_or_malformed_parent_starts_a_new_trace() {
        for parent in [
            None,
            Some(""),
            Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"),
            Some("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
            Some("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"),
        ] {
            let child = child_of(parent);
            assert_eq!(child.len(), 55, "{child}");
            assert!(trace_of(&child).is_some(), "{child}");
            assert!(!child.contains("4bf92f3577b34da6"), "{parent:?} → {child}");
        }
        assert_ne!(child_of(None), child_of(None));
    }
}
