//! Traces and logs of a real `herald serve` process: one event's spans form one trace
//! from the publisher to the receiver's request, exported over OTLP/HTTP to a collector
//! on loopback; JSON log lines about a delivery carry its ids and never a secret.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use crate::common::receiver::{Receiver, Reply};
use crate::common::{eventually, TestEnv};

#[derive(Debug, Clone)]
struct Span {
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An OTLP/HTTP (protobuf) trace collector on a loopback port.
async fn collector() -> (String, Arc<Mutex<Vec<Span>>>) {
    let spans = Arc::new(Mutex::new(Vec::new()));
    async fn export(State(spans): State<Arc<Mutex<Vec<Span>>>>, body: Bytes) -> &'static str {
        let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
        let mut spans = spans.lock().unwrap();
        for resource in request.resource_spans {
            for scope in resource.scope_spans {
                for s in scope.spans {
                    spans.push(Span {
                        name: s.name,
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent: hex(&s.parent_span_id),
                    });
                }
            }
        }
        ""
    }
    let app = Router::new()
        .route("/v1/traces", post(export))
        .with_state(spans.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, spans)
}

fn herald(env: &TestEnv, otlp: &str) -> Command {
    let mut command = env.herald_command();
    command
        .env("HERALD__TELEMETRY__OTLP_ENDPOINT", otlp)
        .env("HERALD__TELEMETRY__LOG_FORMAT", "json")
        .env("HERALD__TELEMETRY__LOG_LEVEL", "debug");
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_event_is_one_trace_from_publisher_to_receiver_and_logs_keep_secrets() {
    let env = TestEnv::new().await;
    let (otlp, spans) = collector().await;
    // The first attempt fails, so the trace holds a retry too.
    let receiver =
        Receiver::scripted(|_, nth| Reply::status(if nth == 1 { 500 } else { 200 })).await;
    let endpoint = env
        .add_endpoint(&receiver.url("/traced"), &["sales.#"], None)
        .await;

    let mut serve = herald(&env, &otlp)
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ingest = env.topology().ingest_queue();
    eventually("herald to consume", Duration::from_secs(30), || async {
        consumers(&ingest).await > 0
    })
    .await;
    let published = herald(&env, &otlp)
        .args([
            "publish",
            "--routing-key",
            "sales.order.created",
            "--data",
            r#"{"o":1}"#,
            "--id",
            "evt-trace",
        ])
        .output()
        .unwrap();
    assert!(
        published.status.success(),
        "{}",
        String::from_utf8_lossy(&published.stderr)
    );

    eventually("the retry to succeed", Duration::from_secs(30), || async {
        env.delivery_statuses().await == vec![("success".to_string(), 1)]
    })
    .await;
    Command::new("kill")
        .arg("-TERM")
        .arg(serve.id().to_string())
        .status()
        .unwrap();
    let output = tokio::task::spawn_blocking(move || {
        let _ = serve.wait();
        let mut logs = String::new();
        std::io::Read::read_to_string(serve.stderr.as_mut().unwrap(), &mut logs).unwrap();
        logs
    })
    .await
    .unwrap();

    // The trace: publish → ingest → deliver (× 2 attempts) → the receiver's requests.
    let requests = receiver.received();
    assert_eq!(requests.len(), 2);
    let traceparent = requests[1].header("traceparent");
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    let trace_id = parts[1].to_string();
    assert_eq!(
        requests[0].header("traceparent").split('-').nth(1),
        Some(trace_id.as_str())
    );
    eventually("spans exported", Duration::from_secs(10), || async {
        spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .count()
            >= 4
    })
    .await;
    let trace: Vec<Span> = spans
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.trace_id == trace_id)
        .cloned()
        .collect();
    let one =
        |name: &str| -> Vec<Span> { trace.iter().filter(|s| s.name == name).cloned().collect() };
    let (publish, ingest, deliver) = (one("publish"), one("ingest"), one("deliver"));
    assert_eq!(
        (publish.len(), ingest.len(), deliver.len()),
        (1, 1, 2),
        "{trace:?}"
    );
    assert_eq!(
        ingest[0].parent, publish[0].span_id,
        "ingest continues the publisher's trace"
    );
    assert!(
        deliver.iter().all(|d| d.parent == ingest[0].span_id),
        "each attempt is a child of ingest"
    );
    assert!(
        deliver.iter().any(|d| d.span_id == parts[2]),
        "the receiver's traceparent names the delivery attempt's span"
    );

    // Logs: JSON, delivery lines carry the ids, secrets and signatures never appear.
    let lines: Vec<serde_json::Value> = output
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let about_delivery: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["span"]["name"] == "deliver")
        .collect();
    assert!(
        about_delivery.len() >= 2,
        "the failed attempt and the success are logged"
    );
    for line in &about_delivery {
        for field in ["event_id", "endpoint_id", "delivery_id", "attempt"] {
            assert!(!line["span"][field].is_null(), "{field} missing in {line}");
        }
    }
    let secret = endpoint.secret.clone();
    assert!(
        !output.contains(&secret["whsec_".len()..]),
        "the signing secret leaked into the logs"
    );
    for request in &requests {
        let signature = request.header("webhook-signature");
        assert!(
            !output.contains(&signature[3..]),
            "a signature leaked into the logs"
        );
    }
    assert!(
        !output.contains("guest:guest"),
        "the broker password leaked into the logs"
    );
    env.cleanup().await;
}

/// Consumers on a queue, from a passive declare.
async fn consumers(queue: &str) -> u32 {
    let connection = herald::broker::connect(&crate::common::amqp_url(), "herald-test-probe")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let count = channel
        .queue_declare(
            queue,
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .map(|q| q.consumer_count())
        .unwrap_or(0);
    let _ = connection.close(200, "").await;
    count
}
