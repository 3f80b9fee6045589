//! Fault 3, on the suite's own PostgreSQL (`deploy/local/faults_pg.sh`, never the shared
//! one): the database stopped for 30 s mid-run, then killed (SIGKILL to the postmaster
//! and its children) and started again at once (crash recovery). Meanwhile every
//! process's `/readyz` answers 503; nothing is acknowledged that was not recorded (every
//! confirmed publish ends as an event with its deliveries); work resumes by itself.

use std::time::{Duration, Instant};

use serde_json::json;

use super::*;
use crate::common::receiver::Reply;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the full fault suite: `make faults` (cluster and its own PostgreSQL)"]
async fn full_postgres_stopped_and_killed_loses_nothing_and_work_resumes_by_itself() {
    let per_phase = 1000;
    let env = fault_env(Scale::Full, |_| {}).await;
    let receiver = Receiver::scripted(|_, _| Reply::ok_after(Duration::from_millis(5))).await;
    env.add_endpoint(&receiver.url("/a"), &["inventory.#"], None)
        .await;
    env.add_endpoint(&receiver.url("/b"), &["inventory.#"], None)
        .await;
    let mut fleet = Fleet::start(
        &env,
        "f3-full",
        &[("ingest", 2), ("deliver", 2), ("api", 2)],
        &[],
    )
    .await;
    let endpoints = 2;
    let mut figures = Vec::new();
    let mut settled_pairs = 0;
    for phase in ["stop", "kill"] {
        let prefix = format!("evt-db-{phase}");
        let batch = events(&prefix, per_phase);
        let ids: Vec<String> = batch.iter().map(|(id, _)| id.clone()).collect();
        let publishing = publish_in_background(
            &env,
            "inventory.stock.changed",
            batch,
            10,
            Duration::from_millis(100),
        );
        let tally_prefix = format!("{prefix}-");
        let quarter = per_phase * endpoints / 4;
        eventually(
            "a quarter of the phase delivered",
            Duration::from_secs(120),
            || async { Tally::of(&receiver, &tally_prefix).requests >= quarter },
        )
        .await;
        let down_at = Instant::now();
        script_async("faults_pg.sh", &[phase]).await;
        let fault_took = down_at.elapsed();
        let at_fault = Tally::of(&receiver, &tally_prefix).requests;
        // Not ready while the database is gone.
        eventually(
            "every process's /readyz 503 without its database",
            Duration::from_secs(15),
            || none_ready(&fleet, &["ingest", "deliver", "api"]),
        )
        .await;
        let unready_after = down_at.elapsed();
        let mut sent_while_down = 0;
        if phase == "stop" {
            // Held down for 30 s; readiness checked along the way.
            while down_at.elapsed() < Duration::from_secs(30) {
                assert!(
                    none_ready(&fleet, &["ingest", "deliver", "api"]).await,
                    "a process ready without its database"
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            sent_while_down = Tally::of(&receiver, &tally_prefix).requests - at_fault;
        }
        let after = FlowWatch::start(&env, None);
        let restart = Instant::now();
        script_async("faults_pg.sh", &["start"]).await;
        let start_took = restart.elapsed();
        let flow_after = after.wait(Duration::from_secs(120)).await;
        let ready_after = {
            let started = Instant::now();
            for i in 0..fleet.processes.len() {
                fleet.wait_ready(i, Duration::from_secs(120)).await;
            }
            started.elapsed()
        };
        let resent = publishing.await.expect("publisher task");
        settled_pairs += (per_phase * endpoints) as i64;
        all_settled(&env, settled_pairs, Duration::from_secs(240)).await;
        fleet.assert_all_alive();
        let tally = Tally::of(&receiver, &tally_prefix);
        tally.assert_every_pair(&ids, &["/a", "/b"]);
        let pause = longest_pause(&env, &tally_prefix).await;
        figures.push(Figure {
            fault: "3",
            case: match phase {
                "stop" => "PostgreSQL stopped (pg_ctl stop -m fast) for 30 s mid-run, then started".to_string(),
                _ => "PostgreSQL killed (SIGKILL to the postmaster and its children) mid-run, started again at once (crash recovery)".to_string(),
            },
            what_herald_did: "/readyz 503 on every process; messages taken but not recorded stayed unacknowledged (or were requeued) and were recorded once the database was back; work resumed by itself".into(),
            published: per_phase,
            pairs: per_phase * endpoints,
            delivered: tally.unique.len(),
            failed: 0,
            duplicates: tally.duplicates(),
            recover_ms: Some(flow_after.as_millis()),
            recover_note: "start command began → the next success recorded".into(),
            extra: json!({
                "fault_command_ms": fault_took.as_millis(),
                "unready_after_ms": unready_after.as_millis(),
                "longest_pause_ms": pause.as_millis(),
                "requests_sent_while_down": sent_while_down,
                "start_command_ms": start_took.as_millis(),
                "all_processes_ready_after_start_ms": ready_after.as_millis(),
                "republished_by_the_test_publisher": resent,
            }),
        });
        eprintln!("fault 3 {phase}: {:?}", figures.last());
    }
    assert_recorded(&env, 2 * per_phase, endpoints as i64).await;
    record(&env, Scale::Full, "3-database", &figures).await;
    fleet.stop().await;
    env.cleanup().await;
}
