//! On the three-node cluster of `make cluster` (contract §1): Herald's quorum queues get
//! a member on every node, and Herald, given `amqp.url` as the list of the nodes, keeps
//! delivering when the node its consumers are on is stopped.
//!
//! They need the cluster, which `make test` does not start: ignored there, run by
//! `make cluster-test` (`make cluster`, then `--ignored cluster::`). Run that way, a
//! cluster that is not there fails them loudly.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use herald::broker::{self, Outgoing, Publisher};
use herald::domain::Secret;
use lapin::BasicProperties;
use serde_json::Value;

use crate::common::receiver::{Receiver, Reply};
use crate::common::{eventually, TestEnv};

const NODES: u16 = 3;

fn port_base(variable: &str, default: u16) -> u16 {
    std::env::var(variable)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `amqp.url` for the cluster: every node, in order.
fn cluster_urls() -> String {
    let base = port_base("HERALD_CLUSTER_PORTS", 5681);
    (0..NODES)
        .map(|i| format!("amqp://guest:guest@127.0.0.1:{}/%2f", base + i))
        .collect::<Vec<_>>()
        .join(",")
}

/// A GET on the management API of node `node` (1-based).
async fn management(node: u16, path: &str) -> Value {
    let port = port_base("HERALD_CLUSTER_MGMT_PORTS", 15681) + node - 1;
    let url = format!("http://127.0.0.1:{port}/api/{path}");
    reqwest::Client::new()
        .get(&url)
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .unwrap_or_else(|e| panic!("management API {url} ({e}); run `make cluster`"))
        .json()
        .await
        .expect("management API answers JSON")
}

/// Node `i`'s name as deploy/local/cluster.sh gives it: herald-c<i>-<port>@localhost.
fn node_index(name: &str) -> u16 {
    name.strip_prefix("herald-c")
        .and_then(|rest| rest.split('-').next())
        .and_then(|i| i.parse().ok())
        .unwrap_or_else(|| panic!("{name} is not a node of deploy/local/cluster.sh"))
}

fn cluster_script(args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/local/cluster.sh");
    let status = Command::new(script)
        .args(args)
        .status()
        .expect("cluster.sh runs");
    assert!(status.success(), "cluster.sh {args:?}");
}

async fn cluster_env() -> TestEnv {
    TestEnv::with(|s| s.amqp.url = Secret::new(cluster_urls())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the cluster of `make cluster`; `make cluster-test` runs it"]
async fn herald_quorum_queues_have_a_member_on_every_node() {
    let env = cluster_env().await; // declares Herald's topology on the cluster
    for queue in env.topology().queues() {
        let info = management(1, &format!("queues/%2f/{queue}")).await;
        assert_eq!(info["type"], "quorum", "{queue}");
        let mut members: Vec<u16> = info["members"]
            .as_array()
            .unwrap_or_else(|| panic!("{queue}: no members in {info}"))
            .iter()
            .map(|m| node_index(m.as_str().unwrap()))
            .collect();
        members.sort();
        assert_eq!(members, [1, 2, 3], "{queue} replicated to every node");
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the cluster of `make cluster`; `make cluster-test` runs it"]
async fn herald_keeps_delivering_when_the_node_it_consumes_from_stops() {
    let env = cluster_env().await;
    let receiver = Receiver::scripted(|_, _| Reply::status(200)).await;
    env.add_endpoint(&receiver.url("/all"), &["#"], None).await;
    let app = env.start_ready().await;
    let publish_batch = |publisher: Publisher, from: usize| {
        let exchange = env.exchange.clone();
        async move {
            for n in from..from + 20 {
                let id = format!("evt-{n}");
                publisher
                    .publish(Outgoing {
                        exchange: &exchange,
                        routing_key: "cluster.test",
                        body: br#"{"n":1}"#,
                        properties: BasicProperties::default()
                            .with_delivery_mode(2)
                            .with_content_type("application/json".into())
                            .with_message_id(id.as_str().into()),
                    })
                    .await
                    .expect("publish confirmed");
            }
        }
    };
    publish_batch(env.publisher().clone(), 0).await;
    eventually("20 deliveries", Duration::from_secs(30), || async {
        env.delivery_statuses().await == vec![("success".to_string(), 20)]
    })
    .await;

    // The node Herald's ingest consumers are on (the management API lists connections
    // a few seconds after they open).
    let ingest = format!("{}-ingest-", env.settings.topology.prefix);
    let mut node = None;
    let started = Instant::now();
    while node.is_none() && started.elapsed() < Duration::from_secs(30) {
        let connections = management(1, "connections").await;
        let mut by_node: HashMap<u16, usize> = HashMap::new();
        for c in connections.as_array().into_iter().flatten() {
            let name = c["client_properties"]["connection_name"]
                .as_str()
                .unwrap_or("");
            if name.starts_with(&ingest) {
                *by_node
                    .entry(node_index(c["node"].as_str().unwrap()))
                    .or_default() += 1;
            }
        }
        node = by_node.into_iter().max_by_key(|(_, n)| *n).map(|(i, _)| i);
        if node.is_none() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let node = node.expect("Herald's ingest connections listed by the management API");
    let stopped = Instant::now();
    cluster_script(&["stop", &node.to_string()]);
    eprintln!("stopped node {node} in {:?}", stopped.elapsed());

    // A fresh connection, through the same list: it walks past the stopped node.
    let connection = broker::connect(&cluster_urls(), "herald-test-after-stop")
        .await
        .expect("a live node");
    publish_batch(Publisher::open(&connection).await.unwrap(), 20).await;
    let published = Instant::now();
    eventually(
        "all 40 delivered after the node stopped",
        Duration::from_secs(60),
        || async { env.delivery_statuses().await == vec![("success".to_string(), 40)] },
    )
    .await;
    let mut ids: Vec<String> = receiver
        .received()
        .iter()
        .map(|r| r.header("webhook-id"))
        .collect();
    let sent = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 40, "every event reached the receiver");
    eprintln!(
        "node {node} stopped: 40 events delivered ({} duplicates), the second 20 within {:?}",
        sent - 40,
        published.elapsed()
    );

    app.stop().await;
    let _ = connection.close(200, "done").await;
    cluster_script(&["start"]);
    env.cleanup().await;
}
