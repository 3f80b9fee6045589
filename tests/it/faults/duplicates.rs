//! Fault 6: the same events published twice, and messages redelivered by the broker
//! (every consumer connection of the fleet force-closed through the management API,
//! several times, mid-stream). What receivers see is counted: a republished id is fanned
//! out once (idempotency on tenant and id); a redelivery repeats at most the requests
//! that were answered and not yet recorded when the connection went.

use std::time::Duration;

use serde_json::json;

use super::*;
use crate::common::receiver::Reply;

async fn published_twice_and_redelivered(scale: Scale) {
    let events_count = scale.pick(200, 1500);
    let cuts = scale.pick(2, 4);
    let env = fault_env(scale, |_| {}).await;
    let receiver = Receiver::scripted(|_, _| Reply::ok_after(Duration::from_millis(100))).await;
    env.add_endpoint(&receiver.url("/a"), &["inventory.#"], None)
        .await;
    env.add_endpoint(&receiver.url("/b"), &["inventory.#"], None)
        .await;
    let roles: &[(&str, usize)] = scale.pick(
        &[("ingest", 2), ("deliver", 2)],
        &[("ingest", 2), ("deliver", 2), ("api", 2)],
    );
    let mut fleet = Fleet::start(
        &env,
        &format!("f6-{}", scale.name()),
        roles,
        &[("HERALD__DELIVERY__MAX_IN_FLIGHT_PER_ENDPOINT", "2")],
    )
    .await;
    let endpoints = 2;

    // Case A: every event published twice, the copies a moment apart.
    let twice = events("evt-twice", events_count);
    let mut publisher = SteadyPublisher::new(&env);
    for part in twice.chunks(50) {
        publisher.publish("inventory.stock.changed", part).await;
        publisher.publish("inventory.stock.changed", part).await;
    }
    publisher.close().await;
    all_settled(
        &env,
        (events_count * endpoints) as i64,
        Duration::from_secs(120),
    )
    .await;
    let ids: Vec<String> = twice.iter().map(|(id, _)| id.clone()).collect();
    let tally_twice = Tally::of(&receiver, "evt-twice-");
    tally_twice.assert_every_pair(&ids, &["/a", "/b"]);
    assert_recorded(&env, events_count, endpoints as i64).await;
    assert_eq!(
        env.count("SELECT count(*) FROM herald.events").await,
        events_count as i64,
        "a republished id is one event"
    );

    // Case B: the broker redelivers: consumer connections closed under the fleet.
    let redelivered = events("evt-redeliver", events_count);
    let ids: Vec<String> = redelivered.iter().map(|(id, _)| id.clone()).collect();
    let prefix = env.topology().prefix().to_string();
    let management = management_base(scale, 1);
    let processes = fleet.processes.len();
    let pairs = (2 * events_count * endpoints) as i64;
    let step = events_count * endpoints / (cuts + 1);
    let mut closed = Vec::new();
    let mut flowing_again = Vec::new();
    let mut publishing = None;
    for cut in 1..=cuts {
        // The management API lists a connection a few seconds after it opens: the
        // fleet's (new) connections listed before the cut's moment comes.
        eventually(
            "the broker to list the fleet's connections",
            Duration::from_secs(30),
            || async { connections_of(&management, &prefix).await.len() >= processes },
        )
        .await;
        if publishing.is_none() {
            publishing = Some(publish_in_background(
                &env,
                "inventory.stock.changed",
                redelivered.clone(),
                25,
                Duration::from_millis(40),
            ));
        }
        let moment = cut * step;
        eventually(
            "the moment of the next cut",
            Duration::from_secs(120),
            || async { Tally::of(&receiver, "evt-redeliver-").requests >= moment },
        )
        .await;
        let names = connections_of(&management, &prefix).await;
        // Timed from the cut when successes are still to come (not all recorded yet).
        let before = success_count(&env).await;
        let watch = FlowWatch::start(&env, Some(before));
        closed.push(force_close(&management, &names).await);
        if before < pairs {
            flowing_again.push(watch.wait(Duration::from_secs(60)).await.as_millis());
        } else {
            watch.task.abort();
        }
    }
    let resent = publishing.unwrap().await.expect("publisher task");
    all_settled(&env, pairs, Duration::from_secs(180)).await;
    fleet.assert_all_alive();
    let tally = Tally::of(&receiver, "evt-redeliver-");
    tally.assert_every_pair(&ids, &["/a", "/b"]);
    assert_recorded(&env, 2 * events_count, endpoints as i64).await;
    let s = statuses(&env).await;
    assert_eq!(s.get("success").copied(), Some(pairs), "{s:?}");

    let figures = [
        Figure {
            fault: "6",
            case: "every event published twice (same message id)".into(),
            what_herald_did: "the second copy found the event recorded and created no delivery".into(),
            published: 2 * events_count,
            pairs: events_count * endpoints,
            delivered: tally_twice.unique.len(),
            failed: 0,
            duplicates: tally_twice.duplicates(),
            recover_ms: None,
            recover_note: "no outage".into(),
            extra: json!({"distinct_events": events_count}),
        },
        Figure {
            fault: "6",
            case: format!("every Herald connection force-closed by the broker {cuts} times mid-stream (management API)"),
            what_herald_did: "consumers reconnected (200 ms backoff); the broker requeued the unacknowledged messages and they were taken again".into(),
            published: events_count,
            pairs: events_count * endpoints,
            delivered: tally.unique.len(),
            failed: 0,
            duplicates: tally.duplicates(),
            recover_ms: Some(longest_pause(&env, "evt-redeliver-").await.as_millis()),
            recover_note: "longest pause between two recorded successes".into(),
            extra: json!({"connections_closed": closed, "flowing_again_ms": flowing_again, "republished": resent}),
        },
    ];
    record(&env, scale, "6-duplicates", &figures).await;
    fleet.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_published_twice_or_redelivered_by_the_broker_reach_receivers_with_counted_duplicates(
) {
    published_twice_and_redelivered(Scale::Short).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the full fault suite: `make faults` (cluster and its own PostgreSQL)"]
async fn full_events_published_twice_or_redelivered_by_the_broker_reach_receivers_with_counted_duplicates(
) {
    published_twice_and_redelivered(Scale::Full).await;
}
