//! Fault 1: Herald processes SIGKILLed at random moments while events are being
//! published, fanned out and delivered, each restarted a moment later. Nothing is lost:
//! every (event, endpoint) pair ends `success` and reaches its receiver; the duplicates
//! are the deliveries in flight (answered, not yet recorded) in a killed process.

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use serde_json::json;

use super::*;
use crate::common::receiver::Reply;

async fn sigkill_at_random_moments(scale: Scale) {
    let events_count = scale.pick(300, 3000);
    let kills = scale.pick(2, 6);
    let env = fault_env(scale, |_| {}).await;
    // A few milliseconds per request, so deliveries are in flight when a kill lands.
    let receiver = Receiver::scripted(|_, _| Reply::ok_after(Duration::from_millis(40))).await;
    env.add_endpoint(&receiver.url("/a"), &["inventory.#"], None)
        .await;
    env.add_endpoint(&receiver.url("/b"), &["*.stock.*"], None)
        .await;
    let roles: &[(&str, usize)] = match scale {
        Scale::Short => &[("ingest", 2), ("deliver", 2)],
        Scale::Full => &[("ingest", 2), ("deliver", 2), ("api", 2)],
    };
    // Few requests in flight per endpoint and process, so the run lasts long enough for
    // the kills to land in the middle of it.
    let mut fleet = Fleet::start(
        &env,
        &format!("f1-{}", scale.name()),
        roles,
        &[("HERALD__DELIVERY__MAX_IN_FLIGHT_PER_ENDPOINT", "4")],
    )
    .await;

    let all = events("evt-k", events_count);
    let ids: Vec<String> = all.iter().map(|(id, _)| id.clone()).collect();
    let publishing = publish_in_background(
        &env,
        "inventory.stock.changed",
        all,
        20,
        Duration::from_millis(50),
    );

    let seed: u64 = rand::random();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let endpoints = 2;
    let pairs = (events_count * endpoints) as i64;
    // Random moments, as a share of the run: each kill when the receiver has seen that
    // many requests, so every kill lands while deliveries are flowing.
    let mut moments: Vec<usize> = (0..kills)
        .map(|_| rng.gen_range(pairs as usize / 20..pairs as usize * 17 / 20))
        .collect();
    moments.sort();
    let mut killed = Vec::new();
    let mut ready_after = Vec::new();
    let started = Instant::now();
    for (k, moment) in moments.iter().enumerate() {
        eventually(
            "the moment of the next kill",
            Duration::from_secs(120),
            || async { receiver.count() >= *moment },
        )
        .await;
        // Alternate the role killed; which process of it, at random.
        let role = if k % 2 == 0 { "ingest" } else { "deliver" };
        let candidates = fleet.indices(role);
        let index = candidates[rng.gen_range(0..candidates.len())];
        let at = started.elapsed();
        let delivered_at_kill = receiver.count();
        fleet.kill(index);
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..800))).await;
        fleet.restart(index);
        let ready = fleet.wait_ready(index, Duration::from_secs(60)).await;
        killed.push(
            json!({"role": role, "index": index, "at_ms": at.as_millis(),
            "receiver_requests_at_kill": delivered_at_kill}),
        );
        ready_after.push(ready.as_millis());
    }
    let resent = publishing.await.expect("publisher task");
    let published_at = Instant::now();
    all_settled(
        &env,
        pairs,
        scale.pick(Duration::from_secs(90), Duration::from_secs(240)),
    )
    .await;
    let drained = published_at.elapsed();
    fleet.assert_all_alive();

    let tally = Tally::of(&receiver, "evt-k-");
    tally.assert_every_pair(&ids, &["/a", "/b"]);
    assert_recorded(&env, events_count, endpoints as i64).await;
    let s = statuses(&env).await;
    assert_eq!(
        s.get("success").copied(),
        Some(pairs),
        "every pair success: {s:?}"
    );
    eprintln!(
        "fault 1 ({}): seed {seed}, kills {killed:?}, {} duplicates of {pairs}",
        scale.name(),
        tally.duplicates()
    );
    let figure = Figure {
        fault: "1",
        case: format!("{kills} SIGKILLs (ingest and deliver alternately) at random moments, each restarted within 0.8 s"),
        what_herald_did: "unacknowledged messages went back to their queues and were taken by the surviving process or the restarted one; every pair success".into(),
        published: events_count,
        pairs: pairs as usize,
        delivered: tally.unique.len(),
        failed: 0,
        duplicates: tally.duplicates(),
        recover_ms: Some(longest_pause(&env, "evt-k-").await.as_millis()),
        recover_note: "longest pause between two recorded successes".into(),
        extra: json!({"seed": seed, "kills": killed, "ready_after_ms": ready_after,
            "drained_after_last_publish_ms": drained.as_millis(), "republished": resent,
            "processes": roles.iter().map(|(r, n)| format!("{n} {r}")).collect::<Vec<_>>()}),
    };
    record(&env, scale, "1-processes", &[figure]).await;
    fleet.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_processes_killed_at_random_moments_lose_no_delivery() {
    sigkill_at_random_moments(Scale::Short).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the full fault suite: `make faults` (cluster and its own PostgreSQL)"]
async fn full_herald_processes_killed_at_random_moments_lose_no_delivery() {
    sigkill_at_random_moments(Scale::Full).await;
}
