//! Connections to the real RabbitMQ: what Herald negotiates, and `amqp.url` as a list
//! of nodes that Herald walks past the dead ones.

use std::time::{Duration, Instant};

use herald::broker::{connect, DEFAULT_FRAME_MAX};
use herald::domain::Secret;

use crate::common::receiver::{Receiver, Reply};
use crate::common::{amqp_url, eventually, TestEnv};

#[tokio::test]
async fn connections_ask_for_small_frames_unless_the_url_sets_frame_max() {
    let url = amqp_url();
    let connection = connect(&url, "herald-test-frames")
        .await
        .expect("broker up");
    // RabbitMQ offers 128 KiB; Herald takes its smaller default.
    assert_eq!(connection.configuration().frame_max(), DEFAULT_FRAME_MAX);
    connection.close(200, "done").await.unwrap();

    let separator = if url.contains('?') { '&' } else { '?' };
    let connection = connect(
        &format!("{url}{separator}frame_max=65536"),
        "herald-test-frames",
    )
    .await
    .expect("broker up");
    assert_eq!(connection.configuration().frame_max(), 65536);
    connection.close(200, "done").await.unwrap();

    assert!(
        connect("http://not-amqp", "herald-test-frames")
            .await
            .is_err(),
        "a URL that is not AMQP is an error, not a panic"
    );
}

/// `amqp.url` as a list: two dead nodes around the real broker, so wherever the walk
/// starts it meets a dead one first at least once in a few tries.
fn list_with_dead_nodes() -> String {
    format!(
        "amqp://guest:guest@127.0.0.1:1/%2f,{},amqp://guest:guest@127.0.0.1:2/%2f",
        amqp_url()
    )
}

#[tokio::test]
async fn a_url_list_connects_to_the_live_node_past_dead_ones() {
    let list = list_with_dead_nodes();
    // Each start is random: twelve connects start on a dead node all but (1/3)^12 of
    // the time, and every one of them has to walk on to the live node.
    for _ in 0..12 {
        let connection = connect(&list, "herald-test-failover")
            .await
            .expect("the live node of the list");
        assert!(connection.status().connected());
        connection.close(200, "done").await.unwrap();
    }

    let started = Instant::now();
    let error = connect(
        "amqp://guest:s3cret@127.0.0.1:1/%2f, amqp://guest:s3cret@127.0.0.1:2/%2f",
        "herald-test-failover",
    )
    .await
    .expect_err("no node alive");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused nodes fail at once"
    );
    assert!(!error.to_string().contains("s3cret"), "{error}");
}

/// Every role and both commands that connect (publish, dlq redrive) take the list: the
/// event goes in through `herald publish`, its first attempt is the ingest role's, the
/// retries the deliver role's, `/readyz` needs the api role's broker sampling, and the
/// dead letter comes back through `herald dlq redrive`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_runs_on_a_url_list_whose_first_node_is_dead() {
    let list = format!("amqp://guest:guest@127.0.0.1:1/%2f,{}", amqp_url());
    let env = TestEnv::with(|s| s.amqp.url = Secret::new(list.clone())).await;
    assert_eq!(env.settings.amqp.url.expose(), list);
    let receiver =
        Receiver::scripted(|path, _| Reply::status(if path == "/ok" { 200 } else { 500 })).await;
    env.add_endpoint(&receiver.url("/ok"), &["sales.#"], None)
        .await;
    env.add_endpoint(&receiver.url("/flaky"), &["sales.#"], None)
        .await;
    let app = env.start_ready().await;

    let out = env
        .herald_command()
        .args([
            "publish",
            "--routing-key",
            "sales.order.created",
            "--data",
            r#"{"n":1}"#,
            "--id",
            "failover-1",
        ])
        .output()
        .expect("herald runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(
        "one success and, after the retries, one failure",
        Duration::from_secs(20),
        || async {
            env.delivery_statuses().await
                == vec![("failed".to_string(), 1), ("success".to_string(), 1)]
        },
    )
    .await;
    assert_eq!(
        receiver.received_at("/flaky").len(),
        3,
        "first attempt and two retries"
    );
    eventually(
        "the dead letter parked and recorded",
        Duration::from_secs(10),
        || async { env.dead_letters_parked_and_recorded(1).await },
    )
    .await;

    receiver.set_script(|_, _| Reply::status(200));
    let out = env
        .herald_command()
        .args(["dlq", "redrive", "--all"])
        .output()
        .expect("herald runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(
        "the redriven delivery to succeed",
        Duration::from_secs(15),
        || async { env.delivery_statuses().await == vec![("success".to_string(), 2)] },
    )
    .await;
    assert_eq!(receiver.received_at("/flaky").len(), 4);
    app.stop().await;
    env.cleanup().await;
}
