//! Fault 2, on the cluster only: the node leading Herald's ingest queue stopped
//! (`rabbitmqctl stop`) mid-run and brought back; then the node leading it after that
//! killed (SIGKILL to its Erlang VM) and brought back; then the whole cluster stopped and
//! started again — each while events are being published and delivered by two Herald
//! processes of each role. Every pair ends `success`; duplicates and the time until
//! deliveries flow and every process is ready again are measured per phase.

use std::time::{Duration, Instant};

use serde_json::json;

use super::*;
use crate::common::receiver::Reply;

/// `herald-c2-5682@localhost` → 2.
fn node_index(name: &str) -> Option<u16> {
    name.strip_prefix("herald-c")?
        .split('-')
        .next()?
        .parse()
        .ok()
}

/// The node leading `queue`, asked of whichever node answers.
async fn leader(queue: &str) -> Option<u16> {
    for node in 1..=3 {
        if let Some(info) = management_get(
            &management_base(Scale::Full, node),
            &format!("queues/%2f/{queue}"),
        )
        .await
        {
            if let Some(leader) = info["leader"].as_str().and_then(node_index) {
                return Some(leader);
            }
        }
    }
    None
}

/// Waits until every process of the fleet answers `/readyz` 200; how long that took.
async fn all_ready(fleet: &Fleet, limit: Duration) -> Duration {
    let started = Instant::now();
    for i in 0..fleet.processes.len() {
        fleet.wait_ready(i, limit).await;
    }
    started.elapsed()
}

enum NodeFault {
    Stop,
    Kill,
    RestartAll,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the full fault suite: `make faults` (cluster and its own PostgreSQL)"]
async fn full_broker_nodes_stopped_killed_and_restarted_lose_no_delivery() {
    let per_phase = 1500;
    let env = fault_env(Scale::Full, |_| {}).await;
    let receiver = Receiver::scripted(|_, _| Reply::ok_after(Duration::from_millis(5))).await;
    env.add_endpoint(&receiver.url("/a"), &["inventory.#"], None)
        .await;
    env.add_endpoint(&receiver.url("/b"), &["inventory.#"], None)
        .await;
    let mut fleet = Fleet::start(
        &env,
        "f2-full",
        &[("ingest", 2), ("deliver", 2), ("api", 2)],
        &[],
    )
    .await;
    let ingest = env.topology().ingest_queue();
    let work = env.topology().work_queue();
    let endpoints = 2;
    let mut figures = Vec::new();
    let mut settled_pairs = 0;
    for (phase, fault) in [
        ("stop", NodeFault::Stop),
        ("kill", NodeFault::Kill),
        ("restart", NodeFault::RestartAll),
    ] {
        let prefix = format!("evt-{phase}");
        let batch = events(&prefix, per_phase);
        let ids: Vec<String> = batch.iter().map(|(id, _)| id.clone()).collect();
        // Ten events every 100 ms: publishing lasts about 15 s, across the fault; five
        // (30 s) across a whole cluster's stop, which takes about 20 s, node after node,
        // so that events are still to come when it is back.
        let (chunk, share) = match fault {
            NodeFault::RestartAll => (5, 10),
            _ => (10, 4),
        };
        let publishing = publish_in_background(
            &env,
            "inventory.stock.changed",
            batch,
            chunk,
            Duration::from_millis(100),
        );
        let quarter = per_phase * endpoints / share;
        let tally_prefix = format!("{prefix}-");
        eventually(
            "a share of the phase delivered",
            Duration::from_secs(120),
            || async { Tally::of(&receiver, &tally_prefix).requests >= quarter },
        )
        .await;
        let (ingest_leader, work_leader) = (leader(&ingest).await, leader(&work).await);
        let node = ingest_leader.expect("the ingest queue's leader");
        let fault_started = Instant::now();
        let during = FlowWatch::start(&env, Some(success_count(&env).await));
        let (case, what) = match fault {
            NodeFault::Stop => {
                script_async("cluster.sh", &["stop", &node.to_string()]).await;
                (
                    format!("node {node} (leader of the ingest queue; work queue led by node {}) stopped with rabbitmqctl stop, then started", work_leader.unwrap_or(0)),
                    "connections to it were closed; consumers walked the list to another node within the 200 ms backoff; the queues elected a new leader; the node rejoined when started",
                )
            }
            NodeFault::Kill => {
                script_async("cluster.sh", &["kill", &node.to_string()]).await;
                (
                    format!("node {node} (leader of the ingest queue; work queue led by node {}) killed (SIGKILL to its Erlang VM), then started", work_leader.unwrap_or(0)),
                    "sockets reset; consumers reconnected to a live node; the queues elected a new leader; the node rejoined when started",
                )
            }
            NodeFault::RestartAll => {
                script_async("cluster.sh", &["stop"]).await;
                (
                    "the whole cluster stopped (3 nodes, rabbitmqctl stop) and started again".to_string(),
                    "no node: consumers and the publisher retried with backoff (up to 10 s); /readyz 503 on the ingest and deliver processes (the api ones, consuming nothing, stayed ready); when the cluster was back every process reconnected and the durable quorum queues had kept every message",
                )
            }
        };
        let fault_took = fault_started.elapsed();
        // While a node is gone (the others up), deliveries go on: timed from the fault.
        let flow_during = match fault {
            NodeFault::RestartAll => {
                during.task.abort();
                None
            }
            _ => Some(during.wait(Duration::from_secs(90)).await),
        };
        if let NodeFault::RestartAll = fault {
            eventually(
                "every ingest and deliver process's /readyz 503 without a broker",
                Duration::from_secs(30),
                || none_ready(&fleet, &["ingest", "deliver"]),
            )
            .await;
        }
        // No node at all: nothing is recorded until the cluster is back.
        let target = settled_pairs + (per_phase * endpoints) as i64;
        let before = success_count(&env).await;
        let after = FlowWatch::start(&env, Some(before));
        let repair_started = Instant::now();
        script_async("cluster.sh", &["start"]).await;
        let repair_took = repair_started.elapsed();
        // Timed when successes were still to come at the start.
        let flow_after = if before < target {
            Some(after.wait(Duration::from_secs(120)).await)
        } else {
            after.task.abort();
            None
        };
        let ready_after = all_ready(&fleet, Duration::from_secs(120)).await;
        let resent = publishing.await.expect("publisher task");
        settled_pairs += (per_phase * endpoints) as i64;
        all_settled(&env, settled_pairs, Duration::from_secs(240)).await;
        fleet.assert_all_alive();
        let tally = Tally::of(&receiver, &tally_prefix);
        tally.assert_every_pair(&ids, &["/a", "/b"]);
        let pause = longest_pause(&env, &tally_prefix).await;
        let (recover, note) = match flow_during {
            Some(_) => (
                pause,
                "longest pause between two recorded successes of the phase",
            ),
            None => (
                flow_after.expect("events still to deliver when the cluster came back"),
                "cluster start command began → the next success recorded",
            ),
        };
        figures.push(Figure {
            fault: "2",
            case,
            what_herald_did: what.into(),
            published: per_phase,
            pairs: per_phase * endpoints,
            delivered: tally.unique.len(),
            failed: 0,
            duplicates: tally.duplicates(),
            recover_ms: Some(recover.as_millis()),
            recover_note: note.into(),
            extra: json!({
                "node": node, "ingest_leader": ingest_leader, "work_leader": work_leader,
                "fault_command_ms": fault_took.as_millis(),
                "flow_while_down_ms": flow_during.map(|d| d.as_millis()),
                "longest_pause_ms": pause.as_millis(),
                "start_command_ms": repair_took.as_millis(),
                "flow_after_start_ms": flow_after.map(|d| d.as_millis()),
                "all_processes_ready_after_start_ms": ready_after.as_millis(),
                "republished_by_the_test_publisher": resent,
            }),
        });
        eprintln!("fault 2 {phase}: {:?}", figures.last());
    }
    assert_recorded(&env, 3 * per_phase, endpoints as i64).await;
    record(&env, Scale::Full, "2-broker-nodes", &figures).await;
    fleet.stop().await;
    env.cleanup().await;
}
