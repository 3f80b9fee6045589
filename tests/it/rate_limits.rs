//! Rate limits that hold for the whole deployment: three `herald serve --role deliver`
//! processes (and the ingest process, when it makes first attempts) share an
//! endpoint's `rate_limit`, each taking its share sized by the number of processes the
//! broker counts on `<prefix>.senders`, so the receiver sees the limit — not three
//! times it — over every window, and the shares together use it.

use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald::Role;

use crate::common::receiver::{Receiver, Reply};
use crate::common::{eventually, wait_ready, TestEnv};

/// Requests per minute: two a second for the deployment.
const LIMIT_PER_MINUTE: i32 = 120;
/// How long the receiver's requests are counted.
const MEASURED: Duration = Duration::from_secs(30);
/// The window checked against the limit.
const WINDOW: Duration = Duration::from_secs(10);

/// Child processes, killed when the test ends, passed or not.
struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn_deliverer(env: &TestEnv) -> Child {
    env.herald_command()
        .args(["serve", "--role", "deliver"])
        .stdout(Stdio::null())
        .spawn()
        .expect("herald binary starts")
}

/// Consumers on the senders queue, as the broker reports them.
async fn senders(env: &TestEnv) -> u32 {
    let connection = herald::broker::connect(env.settings.amqp.url.expose(), "herald-test")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let count = herald::topology::queue_counts(&channel, &env.topology().senders_queue())
        .await
        .map(|(_, consumers)| consumers)
        .unwrap_or(0);
    herald::broker::close_connection(&connection).await;
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_delivering_processes_hold_an_endpoint_to_its_rate_limit_together() {
    // Ingest hands every attempt to the work queue: the three deliver processes make
    // them all, as the work queue shares them out.
    three_deliverers_and_an_ingest_process(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_first_attempts_made_by_ingest_the_four_shares_still_add_up_to_the_limit() {
    // The ingest process sends first attempts at its share and hands the rest on,
    // unreserved, to the deliver processes' shares.
    three_deliverers_and_an_ingest_process(true).await;
}

async fn three_deliverers_and_an_ingest_process(first_attempts: bool) {
    let env = TestEnv::with(|s| s.ingest.deliver_first_attempt = first_attempts).await;
    let arrivals: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let receiver = {
        let arrivals = arrivals.clone();
        Receiver::scripted(move |_, _| {
            arrivals.lock().unwrap().push(Instant::now());
            Reply::status(200)
        })
        .await
    };
    let endpoint = env
        .add_endpoint(&receiver.url("/limited"), &["inventory.#"], None)
        .await;
    sqlx::query("UPDATE herald.endpoints SET rate_limit = $2 WHERE id = $1")
        .bind(endpoint.id)
        .bind(LIMIT_PER_MINUTE)
        .execute(&env.pool)
        .await
        .unwrap();
    let deliverers = Processes((0..3).map(|_| spawn_deliverer(&env)).collect());
    let ingest = env.start(Role::Ingest).await;
    wait_ready(&ingest).await;
    let counted = 3 + u32::from(first_attempts);
    eventually("every sender counted", Duration::from_secs(30), || async {
        senders(&env).await == counted
    })
    .await;
    // Every process samples the count within `SAMPLE_INTERVAL`.
    tokio::time::sleep(herald::delivery::share::SAMPLE_INTERVAL + Duration::from_millis(500)).await;

    // More than the limit lets through while we count: there is always a backlog.
    for n in 0..120 {
        env.publish(
            "inventory.stock.changed",
            Some(&format!("evt-rate-{n}")),
            None,
            b"{}",
        )
        .await;
    }
    eventually("the first request", Duration::from_secs(20), || async {
        receiver.count() > 0
    })
    .await;
    let start = arrivals.lock().unwrap()[0];
    tokio::time::sleep(MEASURED.saturating_sub(start.elapsed())).await;
    let times: Vec<Duration> = arrivals
        .lock()
        .unwrap()
        .iter()
        .map(|t| t.duration_since(start))
        .filter(|t| *t < MEASURED)
        .collect();
    drop(deliverers);
    ingest.stop().await;

    let per_second: Vec<usize> = (0..MEASURED.as_secs())
        .map(|s| times.iter().filter(|t| t.as_secs() == s).count())
        .collect();
    // Every window of 10 s starting at a request.
    let busiest = times
        .iter()
        .map(|from| {
            times
                .iter()
                .filter(|t| **t >= *from && **t < *from + WINDOW)
                .count()
        })
        .max()
        .unwrap_or(0);
    let per_window = f64::from(LIMIT_PER_MINUTE) / 60.0 * WINDOW.as_secs_f64();
    println!(
        "rate limit {LIMIT_PER_MINUTE}/min over {counted} processes: {} requests in {MEASURED:?} \
         (limit {}), busiest 10 s window {busiest} (limit {per_window}); per second {per_second:?}",
        times.len(),
        f64::from(LIMIT_PER_MINUTE) / 60.0 * MEASURED.as_secs_f64()
    );
    assert!(
        busiest as f64 <= per_window * 1.1,
        "{busiest} requests in a 10 s window, over {per_window} + 10 %: {per_second:?}"
    );
    let allowed = f64::from(LIMIT_PER_MINUTE) / 60.0 * MEASURED.as_secs_f64();
    assert!(
        times.len() as f64 <= allowed * 1.1,
        "{} requests in {MEASURED:?}: {per_second:?}",
        times.len()
    );
    // The deliver processes' shares are used in full: the deployment is not held to
    // one process's share. (Once the backlog is in the work queue the ingest process
    // has no more first attempts, so its share goes unused: shares are equal, never
    // lent.)
    let used = allowed * 3.0 / f64::from(counted);
    assert!(
        times.len() as f64 >= used * 0.9,
        "only {} requests in {MEASURED:?}, the deliver processes' shares allow {used}: \
         {per_second:?}",
        times.len()
    );
    env.cleanup().await;
}
