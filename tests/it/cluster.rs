//! On the three-node cluster of `make cluster` (contract §1): Herald's quorum queues get
//! a member on every node, and Herald, given `amqp.url` as the list of the nodes, keeps
//! delivering when the node its consumers are on is stopped, and keeps each ordering
//! key's order (docs/ordering.md) when the node leading `<prefix>.ordered` is stopped
//! mid-stream and started again.
//!
//! They need the cluster, which `make test` does not start: ignored there, run by
//! `make cluster-test` (`make cluster`, then `--ignored cluster::`). Run that way, a
//! cluster that is not there fails them loudly.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::broker::{self, Outgoing, Publisher};
use herald::domain::Secret;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;
use serde_json::Value;

use crate::common::receiver::{Receiver, Reply};
use crate::common::{eventually, TestEnv};
use crate::faults::SteadyPublisher;

const NODES: u16 = 3;

fn port_base(variable: &str, default: u16) -> u16 {
    std::env::var(variable)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The AMQP URL of node `node` (1-based).
fn node_url(node: u16) -> String {
    let base = port_base("HERALD_CLUSTER_PORTS", 5681);
    format!("amqp://guest:guest@127.0.0.1:{}/%2f", base + node - 1)
}

/// `amqp.url` for the cluster: every node, in order.
fn cluster_urls() -> String {
    (1..=NODES).map(node_url).collect::<Vec<_>>().join(",")
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

/// The node Herald's ingest consumers are on (the management API lists connections a
/// few seconds after they open).
async fn ingest_node(env: &TestEnv) -> u16 {
    let ingest = format!("{}-ingest-", env.settings.topology.prefix);
    let started = Instant::now();
    loop {
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
        if let Some((node, _)) = by_node.into_iter().max_by_key(|(_, n)| *n) {
            return node;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "Herald's ingest connections listed by the management API"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
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

    let node = ingest_node(&env).await;
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

/// The node leading `queue`, as node `ask` (a running one) sees it.
async fn queue_leader(ask: u16, queue: &str) -> u16 {
    let info = management(ask, &format!("queues/%2f/{queue}")).await;
    let leader = info["leader"]
        .as_str()
        .unwrap_or_else(|| panic!("{queue}: no leader in {info}"));
    node_index(leader)
}

/// Runs deploy/local/cluster.sh off the async workers (stopping a node takes seconds).
async fn cluster_script_async(args: &[&str]) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        cluster_script(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .expect("cluster.sh finished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the cluster of `make cluster`; `make cluster-test` runs it"]
async fn ordered_keys_keep_their_order_when_the_node_leading_the_ordered_queue_stops() {
    const KEYS: usize = 50;
    const ROUNDS: usize = 6;
    let env = cluster_env().await;
    let receiver = Receiver::scripted(|_, _| Reply::ok_after(Duration::from_millis(5))).await;
    let ordered = env
        .add_endpoint(&receiver.url("/ordered"), &["sales.#"], None)
        .await;
    sqlx::query("UPDATE herald.endpoints SET ordering = true WHERE id = $1")
        .bind(ordered.endpoint.id)
        .execute(&env.pool)
        .await
        .unwrap();
    let app = env.start_ready().await;
    let queue = env.topology().ordered_queue();
    let leader = queue_leader(1, &queue).await;
    // Herald's consumers are wherever its connections landed: on the stopped node or not.
    let consumers_on = ingest_node(&env).await;

    // The stream: round by round (each key's events interleaved with the others'), five
    // events per confirmed publish, 250 ms apart, from a connection of its own to the
    // node that is to stop; a publish the failover leaves unconfirmed is sent again,
    // whole and in order, on a fresh connection through the node list (the same ids:
    // recorded once). Its last round waits until the stopped node is back.
    let messages: Vec<(BasicProperties, Vec<u8>)> = (0..ROUNDS)
        .flat_map(|round| (0..KEYS).map(move |key| (key, round)))
        .map(|(key, round)| {
            let mut headers = FieldTable::default();
            headers.insert(
                "x-ordering-key".into(),
                AMQPValue::LongString(LongString::from(format!("order-{key}"))),
            );
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_message_id(format!("order-{key}-{round}").into())
                .with_headers(headers);
            let body = serde_json::json!({ "key": format!("order-{key}"), "n": round });
            (properties, body.to_string().into_bytes())
        })
        .collect();
    let confirmed = Arc::new(AtomicUsize::new(0));
    let (back, node_back) = tokio::sync::oneshot::channel::<()>();
    let mut publisher = SteadyPublisher::new(&env)
        .starting_on(&node_url(leader))
        .await;
    let started = Instant::now();
    let stream = tokio::spawn({
        let confirmed = confirmed.clone();
        async move {
            let mut node_back = Some(node_back);
            for chunk in messages.chunks(5) {
                if confirmed.load(Ordering::SeqCst) == (ROUNDS - 1) * KEYS {
                    let _ = node_back.take().unwrap().await;
                }
                publisher
                    .publish_messages("sales.order.changed", chunk)
                    .await;
                confirmed.fetch_add(chunk.len(), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            let resent = publisher.resent;
            publisher.close().await;
            resent
        }
    });

    // Mid-stream, once the first round is delivered: the ordered queue's leader stops,
    // then starts again.
    eventually(
        "the first round delivered",
        Duration::from_secs(30),
        || async { receiver.count() >= KEYS },
    )
    .await;
    let at_stop = receiver.count();
    let before_stop = confirmed.load(Ordering::SeqCst);
    let stopping = Instant::now();
    cluster_script_async(&["stop", &leader.to_string()]).await;
    let stopped = stopping.elapsed();
    let during_stop = confirmed.load(Ordering::SeqCst) - before_stop;
    let survivor = if leader == 1 { 2 } else { 1 };
    let new_leader = queue_leader(survivor, &queue).await;
    assert_ne!(new_leader, leader, "{queue} elected a new leader");
    let starting = Instant::now();
    cluster_script_async(&["start"]).await;
    let restarted = starting.elapsed();
    let _ = back.send(());
    let resent = stream.await.expect("the stream published everything");
    let published = started.elapsed();
    assert!(
        at_stop < KEYS * ROUNDS && during_stop > 0,
        "the node stopped mid-stream: {at_stop} delivered before, {during_stop} published while it stopped"
    );
    assert!(resent > 0, "the publisher's node stopped under it");

    // Every event delivered, in order, and every key idle.
    eventually(
        "every ordered delivery a success",
        Duration::from_secs(120),
        || async {
            env.delivery_statuses().await == vec![("success".to_string(), (KEYS * ROUNDS) as i64)]
        },
    )
    .await;
    eventually("every key idle", Duration::from_secs(30), || async {
        env.count("SELECT count(*) FROM herald.ordering_heads")
            .await
            == 0
    })
    .await;
    assert_eq!(
        env.count("SELECT count(*) FROM herald.deliveries WHERE ordering = 'in_order'")
            .await,
        (KEYS * ROUNDS) as i64,
        "none skipped, none out of order"
    );
    let mut per_key: HashMap<String, Vec<u64>> = HashMap::new();
    for r in receiver.received().iter().filter(|r| r.status == 200) {
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        per_key
            .entry(body["data"]["key"].as_str().unwrap().to_string())
            .or_default()
            .push(body["data"]["n"].as_u64().unwrap());
    }
    let mut again = 0;
    for key in 0..KEYS {
        let key = format!("order-{key}");
        let numbers = per_key.get(&key).cloned().unwrap_or_default();
        // At least once: an event in flight at the failover may come twice, but never
        // after a later event of its key.
        assert!(
            numbers.windows(2).all(|w| w[0] <= w[1]),
            "{key}: never an event after a later one: {numbers:?}"
        );
        let mut unique = numbers.clone();
        unique.dedup();
        assert_eq!(
            unique,
            (0..ROUNDS as u64).collect::<Vec<_>>(),
            "{key}: every event"
        );
        again += numbers.len() - unique.len();
    }
    eprintln!(
        "ordered failover: node {leader} (leader of {queue}) stopped after {at_stop} \
         deliveries in {stopped:?}, {during_stop} events published meanwhile; Herald's \
         ingest consumers on node {consumers_on}; new leader node {new_leader}; node \
         {leader} started again in {restarted:?}; {resent} publishes \
         sent again; all {} published in {published:?} and delivered in order within \
         {:?} of the first; {again} sent twice",
        KEYS * ROUNDS,
        started.elapsed()
    );

    app.stop().await;
    env.cleanup().await;
}
