//! Retries through delay queues, exhaustion into the dead-letter queue, redrive, and
//! the endpoint states that end deliveries.

use std::time::Duration;

use herald::service::dlq::{JobRequest, Kind};
use herald::store::dlq::Filter;
use herald::Role;

use crate::common::receiver::{Receiver, Reply};
use crate::common::{amqp_header, eventually, wait_ready, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_is_retried_through_delay_queues_until_it_succeeds() {
    let env = TestEnv::with(|s| {
        s.delivery.retry_schedule = vec![
            Duration::from_millis(50),
            Duration::from_millis(100),
            Duration::from_millis(100),
        ];
    })
    .await;
    let receiver =
        Receiver::scripted(|_, nth| Reply::status(if nth <= 2 { 500 } else { 200 })).await;
    let endpoint = env
        .add_endpoint(&receiver.url("/flaky"), &["sales.#"], None)
        .await;
    let app = env.start_ready().await;

    env.publish(
        "sales.order.created",
        Some("evt-retry"),
        None,
        br#"{"n":1}"#,
    )
    .await;
    eventually(
        "success after two failures",
        Duration::from_secs(15),
        || async { env.delivery_statuses().await == vec![("success".to_string(), 1)] },
    )
    .await;

    let requests = receiver.received();
    assert_eq!(requests.len(), 3);
    let attempts: Vec<String> = requests
        .iter()
        .map(|r| r.header("x-herald-attempt"))
        .collect();
    assert_eq!(attempts, ["1", "2", "3"]);
    assert!(
        requests
            .iter()
            .all(|r| r.header("webhook-id") == "evt-retry"),
        "same id on every retry"
    );
    for r in &requests {
        standardwebhooks::Webhook::new(&endpoint.secret)
            .unwrap()
            .verify(&r.body, &r.headers)
            .expect("every attempt is freshly and validly signed");
    }
    let rows: Vec<(i32, Option<i32>)> = sqlx::query_as(
        "SELECT attempt, status_code FROM herald.delivery_attempts ORDER BY attempt",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(rows, vec![(1, Some(500)), (2, Some(500)), (3, Some(200))]);
    let (attempts, last_code): (i32, Option<i32>) =
        sqlx::query_as("SELECT attempts, last_status_code FROM herald.deliveries")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!((attempts, last_code), (3, Some(200)));
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retries_end_failed_in_the_dlq_and_redrive_delivers_them() {
    let env = TestEnv::new().await; // schedule 50ms,100ms: three attempts
    let receiver = Receiver::scripted(|_, _| Reply::status(503)).await;
    env.add_endpoint(&receiver.url("/down"), &["billing.#"], None)
        .await;
    let app = env.start_ready().await;

    env.publish(
        "billing.invoice.paid",
        Some("evt-dead"),
        None,
        br#"{"amount":5}"#,
    )
    .await;
    eventually("the delivery to fail", Duration::from_secs(15), || async {
        env.delivery_statuses().await == vec![("failed".to_string(), 1)]
    })
    .await;
    assert_eq!(receiver.count(), 3, "one attempt plus one per delay");

    let filter = herald::service::deliveries::ListFilter {
        status: Some("failed".into()),
        ..Default::default()
    };
    let dead = herald::service::deliveries::list(
        &env.pool,
        &herald::service::Caller::Admin,
        filter,
        Default::default(),
    )
    .await
    .unwrap()
    .data;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 3);
    assert_eq!(dead[0].last_status_code, Some(503));
    assert!(dead[0]
        .last_error
        .as_deref()
        .unwrap()
        .starts_with("retries_exhausted"));

    let dlq_name = env.topology().dlq();
    eventually("the DLQ message", Duration::from_secs(5), || async {
        env.queue_depth(&dlq_name).await == 1
    })
    .await;

    // Peek at the parked copy's headers, and put it back: the sweep takes it out.
    {
        let messages = env.drain(&dlq_name).await;
        assert_eq!(messages.len(), 1);
        let m = &messages[0];
        assert_eq!(
            amqp_header(m, "x-herald-reason").as_deref(),
            Some("retries_exhausted")
        );
        assert_eq!(
            amqp_header(m, "x-herald-last-status").as_deref(),
            Some("503")
        );
        assert_eq!(amqp_header(m, "x-herald-attempts").as_deref(), Some("3"));
        assert_eq!(
            amqp_header(m, "x-herald-event-id").as_deref(),
            Some("evt-dead")
        );
        // Put it back as it was.
        env.publisher()
            .publish(herald::broker::Outgoing {
                exchange: "",
                routing_key: &dlq_name,
                body: &m.data,
                properties: m.properties.clone(),
            })
            .await
            .unwrap();
    }

    receiver.set_script(|_, _| Reply::status(200));
    let job = env
        .dlq_job(JobRequest {
            kind: Kind::Redrive,
            all: true,
            filter: Filter::default(),
            enable_endpoints: false,
        })
        .await;
    assert_eq!((job.matched, job.processed, job.refused), (1, 1, 0));
    assert_eq!(job.swept, Some(1), "the stale copy taken out of the queue");
    eventually(
        "the redriven delivery to succeed",
        Duration::from_secs(15),
        || async { env.delivery_statuses().await == vec![("success".to_string(), 1)] },
    )
    .await;
    assert_eq!(env.queue_depth(&dlq_name).await, 0);
    let last = receiver.received().pop().unwrap();
    assert_eq!(last.header("webhook-id"), "evt-dead");
    assert_eq!(last.header("x-herald-attempt"), "4");
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_of_chosen_deliveries_leaves_the_others_parked() {
    let env = TestEnv::with(|s| s.delivery.retry_schedule = vec![]).await;
    let receiver = Receiver::scripted(|_, _| Reply::status(500)).await;
    env.add_endpoint(&receiver.url("/a"), &["x.#"], None).await;
    let app = env.start_ready().await;
    for id in ["evt-a", "evt-b", "evt-c"] {
        env.publish("x.y", Some(id), None, b"{}").await;
    }
    eventually("three failures", Duration::from_secs(15), || async {
        env.delivery_statuses().await == vec![("failed".to_string(), 3)]
    })
    .await;
    let dlq_name = env.topology().dlq();
    eventually("three parked", Duration::from_secs(5), || async {
        env.queue_depth(&dlq_name).await == 3
    })
    .await;

    receiver.set_script(|_, _| Reply::status(204));
    let chosen: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM herald.deliveries WHERE event_id = 'evt-b'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    let stranger = uuid::Uuid::new_v4();
    let job = env
        .dlq_job(JobRequest {
            kind: Kind::Redrive,
            all: false,
            filter: Filter {
                delivery_ids: Some(vec![chosen, stranger]),
                ..Filter::default()
            },
            enable_endpoints: false,
        })
        .await;
    assert_eq!((job.matched, job.processed), (1, 1));
    assert_eq!(job.not_found, vec![stranger]);
    eventually("evt-b delivered", Duration::from_secs(15), || async {
        env.delivery_statuses().await == vec![("failed".to_string(), 2), ("success".to_string(), 1)]
    })
    .await;
    // The sweep took the redriven one's copy out and kept the others, in order.
    eventually(
        "the others to stay parked",
        Duration::from_secs(10),
        || async { env.queue_depth(&dlq_name).await == 2 },
    )
    .await;
    app.stop().await;
    let mut parked: Vec<String> = env
        .drain(&dlq_name)
        .await
        .iter()
        .filter_map(|m| amqp_header(m, "x-herald-event-id"))
        .collect();
    parked.sort();
    assert_eq!(parked, ["evt-a", "evt-c"]);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_disables_the_endpoint_and_parks_the_delivery() {
    let env = TestEnv::new().await;
    let receiver = Receiver::scripted(|_, _| Reply::status(410)).await;
    let endpoint = env.add_endpoint(&receiver.url("/gone"), &["#"], None).await;
    let app = env.start_ready().await;
    env.publish("crm.contact.deleted", Some("evt-gone"), None, b"{}")
        .await;
    eventually("the delivery to fail", Duration::from_secs(15), || async {
        env.delivery_statuses().await == vec![("failed".to_string(), 1)]
    })
    .await;
    assert_eq!(receiver.count(), 1, "no retries after 410");
    let (enabled, reason): (bool, Option<String>) =
        sqlx::query_as("SELECT enabled, disabled_reason FROM herald.endpoints WHERE id = $1")
            .bind(endpoint.id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert!(!enabled);
    assert!(reason.unwrap().contains("410"));
    let dlq = env.topology().dlq();
    eventually("the delivery parked", Duration::from_secs(10), || async {
        env.queue_depth(&dlq).await == 1
    })
    .await;
    let parked = env.drain(&dlq).await;
    assert_eq!(
        amqp_header(&parked[0], "x-herald-reason").as_deref(),
        Some("gone")
    );
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_queued_for_an_endpoint_disabled_meanwhile_end_failed_with_the_reason() {
    let env = TestEnv::with(|s| s.ingest.deliver_first_attempt = false).await;
    let receiver = Receiver::start().await;
    let endpoint = env.add_endpoint(&receiver.url("/off"), &["#"], None).await;
    // Only ingest runs, and it leaves every attempt to the deliver role: the tasks
    // wait in the work queue.
    let ingest = env.start(Role::Ingest).await;
    wait_ready(&ingest).await;
    for n in 0..5 {
        env.publish(
            "sales.order.created",
            Some(&format!("evt-off-{n}")),
            None,
            b"{}",
        )
        .await;
    }
    let work = env.topology().work_queue();
    eventually("five queued tasks", Duration::from_secs(10), || async {
        env.queue_depth(&work).await == 5
    })
    .await;
    herald::store::endpoints::set_enabled(&env.pool, endpoint.id, false, Some("maintenance"))
        .await
        .unwrap();

    let deliver = env.start(Role::Deliver).await;
    eventually(
        "five failed deliveries",
        Duration::from_secs(15),
        || async { env.delivery_statuses().await == vec![("failed".to_string(), 5)] },
    )
    .await;
    assert_eq!(receiver.count(), 0);
    let errors: Vec<String> = sqlx::query_scalar("SELECT last_error FROM herald.deliveries")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    assert!(
        errors
            .iter()
            .all(|e| e.starts_with("endpoint_disabled") && e.contains("maintenance")),
        "{errors:?}"
    );
    eventually("five parked", Duration::from_secs(5), || async {
        env.queue_depth(&env.topology().dlq()).await == 5
    })
    .await;
    deliver.stop().await;
    ingest.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingest_role_makes_first_attempts_and_leaves_retries_to_the_deliver_role() {
    let env = TestEnv::with(|s| {
        s.delivery.retry_schedule = vec![Duration::from_millis(50)];
    })
    .await;
    let receiver = Receiver::scripted(|path, nth| {
        Reply::status(if path == "/flaky" && nth == 1 {
            500
        } else {
            200
        })
    })
    .await;
    env.add_endpoint(&receiver.url("/ok"), &["#"], None).await;
    env.add_endpoint(&receiver.url("/flaky"), &["#"], None)
        .await;
    let ingest = env.start(Role::Ingest).await;
    wait_ready(&ingest).await;
    env.publish("sales.order.created", Some("evt-direct"), None, b"{}")
        .await;

    // No deliver role runs: the first attempts came from the ingest process, and the
    // failed one's retry waits in the work queue (via its delay queue).
    let work = env.topology().work_queue();
    eventually(
        "one success, one retry queued",
        Duration::from_secs(10),
        || async {
            env.delivery_statuses().await
                == vec![("retrying".to_string(), 1), ("success".to_string(), 1)]
                && env.queue_depth(&work).await == 1
        },
    )
    .await;
    assert_eq!(receiver.received_at("/ok").len(), 1);
    assert_eq!(receiver.received_at("/flaky").len(), 1);
    // The event's message was acknowledged: stopping ingest returns nothing to the queue.
    ingest.stop().await;
    assert_eq!(env.queue_depth(&env.topology().ingest_queue()).await, 0);

    let deliver = env.start(Role::Deliver).await;
    eventually("the retry succeeded", Duration::from_secs(10), || async {
        env.delivery_statuses().await == vec![("success".to_string(), 2)]
    })
    .await;
    let attempts: Vec<String> = receiver
        .received_at("/flaky")
        .iter()
        .map(|r| r.header("x-herald-attempt"))
        .collect();
    assert_eq!(attempts, ["1", "2"]);
    assert_eq!(receiver.received_at("/ok").len(), 1, "no repeat");
    deliver.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_moves_the_retry_to_a_later_delay() {
    let env = TestEnv::with(|s| {
        s.delivery.retry_schedule = vec![Duration::from_millis(50), Duration::from_secs(3)];
    })
    .await;
    let receiver = Receiver::scripted(|_, nth| {
        if nth == 1 {
            let mut reply = Reply::status(429);
            reply.headers.push(("retry-after", "2".into()));
            reply
        } else {
            Reply::status(200)
        }
    })
    .await;
    env.add_endpoint(&receiver.url("/busy"), &["#"], None).await;
    let app = env.start_ready().await;
    env.publish("a.b", Some("evt-429"), None, b"{}").await;
    eventually(
        "the first attempt to be recorded",
        Duration::from_secs(10),
        || async {
            env.count("SELECT count(*) FROM herald.deliveries WHERE status = 'retrying'")
                .await
                == 1
        },
    )
    .await;
    let scheduled_ms: f64 = sqlx::query_scalar(
        "SELECT (extract(epoch FROM next_retry_at - updated_at) * 1000)::float8 FROM herald.deliveries",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        scheduled_ms.round() as i64,
        3000,
        "Retry-After: 2 picks the 3 s delay, not 50 ms"
    );
    eventually(
        "success after the delay",
        Duration::from_secs(15),
        || async { env.delivery_statuses().await == vec![("success".to_string(), 1)] },
    )
    .await;
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_destinations_are_refused_unless_allowed() {
    let env = TestEnv::with(|s| {
        s.delivery.allow_private_networks = false;
        s.delivery.retry_schedule = vec![];
    })
    .await;
    let receiver = Receiver::start().await;
    env.add_endpoint(&receiver.url("/internal"), &["#"], None)
        .await;
    env.add_endpoint(
        &format!(
            "http://localhost:{}/by-name",
            receiver.url("").rsplit(':').next().unwrap()
        ),
        &["#"],
        None,
    )
    .await;
    let app = env.start_ready().await;
    env.publish("a.b", Some("evt-ssrf"), None, b"{}").await;
    eventually(
        "both deliveries to fail",
        Duration::from_secs(15),
        || async { env.delivery_statuses().await == vec![("failed".to_string(), 2)] },
    )
    .await;
    assert_eq!(receiver.count(), 0, "nothing reached the loopback receiver");
    let classes: Vec<String> = sqlx::query_scalar("SELECT error FROM herald.delivery_attempts")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    assert_eq!(classes, ["refused_address", "refused_address"]);
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_rate_limit_spaces_its_requests_without_counting_attempts() {
    let env = TestEnv::new().await;
    let receiver = Receiver::start().await;
    herald::store::endpoints::insert(
        &env.pool,
        &env.keys(),
        herald::store::endpoints::NewEndpoint {
            url: receiver.url("/limited").parse().unwrap(),
            event_types: vec!["#".parse().unwrap()],
            tenant_id: None,
            signing: herald::domain::Signing::generate(Default::default()),
            headers: Default::default(),
            rate_limit: Some(60), // one a second
            filter: None,
            timeout: None,
            retry_schedule: None,
            batch: None,
            ordering: false,
            name: None,
            description: None,
        },
    )
    .await
    .unwrap();
    let app = env.start_ready().await;
    for n in 0..4 {
        env.publish("a.b", Some(&format!("evt-rl-{n}")), None, b"{}")
            .await;
    }
    eventually("four deliveries", Duration::from_secs(30), || async {
        env.delivery_statuses().await == vec![("success".to_string(), 4)]
    })
    .await;
    let times: Vec<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
        "SELECT attempted_at FROM herald.delivery_attempts ORDER BY attempted_at",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(times.len(), 4, "putting a task off is not an attempt");
    // GCRA: the k-th request is never earlier than k intervals after the first (a
    // late one may be followed closely by an on-time one).
    for (k, t) in times.iter().enumerate() {
        let since_first = (*t - times[0]).num_milliseconds();
        assert!(
            since_first >= k as i64 * 1000 - 100,
            "request {k} came {since_first} ms after the first"
        );
    }
    let attempts: Vec<i32> = sqlx::query_scalar("SELECT attempts FROM herald.deliveries")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    assert!(attempts.iter().all(|a| *a == 1));
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_is_put_off_instead_of_taking_every_slot() {
    // Concurrency 4: two slow requests keep the process from lending the slow endpoint
    // more slots, so its cap holds.
    let env = TestEnv::with(|s| {
        s.delivery.max_in_flight_per_endpoint = 2;
        s.delivery.concurrency = 4;
    })
    .await;
    let receiver = Receiver::scripted(|path, _| Reply {
        status: 200,
        delay: if path == "/slow" {
            Duration::from_millis(800)
        } else {
            Duration::ZERO
        },
        headers: vec![],
        body: None,
    })
    .await;
    env.add_endpoint(&receiver.url("/slow"), &["#"], None).await;
    let fast = env.add_endpoint(&receiver.url("/fast"), &["#"], None).await;
    let app = env.start_ready().await;
    for n in 0..12 {
        env.publish("a.b", Some(&format!("evt-slow-{n}")), None, b"{}")
            .await;
    }
    eventually("the fast endpoint served", Duration::from_secs(30), || async {
        env.count(&format!(
            "SELECT count(*) FROM herald.deliveries WHERE endpoint_id = '{}' AND status = 'success'",
            fast.id
        ))
        .await
            == 12
    })
    .await;
    let slow_done = receiver.received_at("/slow").len();
    assert!(
        slow_done < 12,
        "the fast endpoint did not wait for the slow one ({slow_done} slow done)"
    );
    eventually(
        "the slow endpoint served too",
        Duration::from_secs(60),
        || async { env.delivery_statuses().await == vec![("success".to_string(), 24)] },
    )
    .await;
    let metrics = reqwest::get(format!("http://{}/metrics", app.address()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with(r#"herald_deliveries_deferred_total{reason="endpoint_busy"}"#)),
        "{metrics}"
    );
    assert_eq!(
        receiver.received_at("/slow").len(),
        12,
        "put off, then sent once each"
    );
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_slot_is_freed_while_its_outcome_waits_for_the_database() {
    // Two request slots, so eight attempts in progress (ATTEMPTS_PER_REQUEST = 4).
    let env = TestEnv::with(|s| s.delivery.concurrency = 2).await;
    let receiver = Receiver::start().await;
    for n in 0..5 {
        env.add_endpoint(&receiver.url(&format!("/e{n}")), &["#"], None)
            .await;
    }
    // No attempt can be recorded while this lock is held (events and deliveries can).
    let mut lock = env.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE herald.delivery_attempts IN SHARE ROW EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let app = env.start_ready().await;
    for n in 0..3 {
        env.publish("a.b", Some(&format!("evt-locked-{n}")), None, b"{}")
            .await;
    }
    let in_progress = herald::config::ATTEMPTS_PER_REQUEST * 2;
    eventually(
        "requests made while no outcome can be recorded",
        Duration::from_secs(30),
        || async { receiver.count() >= in_progress },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        receiver.count(),
        in_progress,
        "attempts waiting on the database are bounded"
    );
    assert_eq!(
        counter(&app, "herald_attempts_in_progress").await,
        in_progress as f64,
        "every permit held"
    );
    // However the events were batched, no outcome got through.
    let statuses = env.delivery_statuses().await;
    assert!(
        statuses.iter().all(|(status, _)| status == "pending"),
        "nothing recorded yet: {statuses:?}"
    );
    lock.rollback().await.unwrap();
    eventually(
        "every delivery recorded",
        Duration::from_secs(30),
        || async { env.delivery_statuses().await == vec![("success".to_string(), 15)] },
    )
    .await;
    assert_eq!(receiver.count(), 15, "each delivery sent once");
    eventually(
        "every permit given back",
        Duration::from_secs(10),
        || async { counter(&app, "herald_attempts_in_progress").await == 0.0 },
    )
    .await;
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_attempts_and_retries_together_stay_within_delivery_concurrency() {
    let env = TestEnv::with(|s| {
        s.delivery.concurrency = 3;
        s.delivery.retry_schedule = vec![Duration::from_millis(50); 5];
    })
    .await;
    // Every request takes 150 ms; `/flaky` fails its first 10, so its deliveries come
    // back through the work queue while other first attempts are still being made.
    let receiver = Receiver::scripted(|path, nth| Reply {
        status: if path == "/flaky" && nth <= 10 {
            500
        } else {
            200
        },
        ..Reply::ok_after(Duration::from_millis(150))
    })
    .await;
    env.add_endpoint(&receiver.url("/flaky"), &["#"], None)
        .await;
    for n in 0..4 {
        env.add_endpoint(&receiver.url(&format!("/ok{n}")), &["#"], None)
            .await;
    }
    let app = env.start_ready().await;
    for n in 0..10 {
        env.publish("a.b", Some(&format!("evt-mixed-{n}")), None, b"{}")
            .await;
    }
    eventually("every delivery made", Duration::from_secs(60), || async {
        env.delivery_statuses().await == vec![("success".to_string(), 50)]
    })
    .await;
    assert_eq!(
        receiver.received_at("/flaky").len(),
        20,
        "10 failed, 10 retried"
    );
    let peak = receiver.peak_in_flight();
    assert!(
        (2..=3).contains(&peak),
        "requests in flight at once: {peak}, delivery.concurrency is 3"
    );
    app.stop().await;
    env.cleanup().await;
}

/// Reads one unlabelled counter, or the sum of a labelled one, from `/metrics`.
async fn counter(app: &herald::app::App, name: &str) -> f64 {
    let metrics = reqwest::get(format!("http://{}/metrics", app.address()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_put_off_together_travel_in_few_messages_and_each_arrives_once() {
    let env = TestEnv::with(|s| {
        s.delivery.max_in_flight_per_endpoint = 1;
        s.delivery.concurrency = 8;
    })
    .await;
    let receiver = Receiver::scripted(|_, _| Reply::ok_after(Duration::from_millis(400))).await;
    env.add_endpoint(&receiver.url("/slow"), &["#"], None).await;
    // Queued before Herald starts, so ingest takes them in one batch and puts most of
    // them off at once.
    let events = 40;
    for n in 0..events {
        env.publish("a.b", Some(&format!("evt-batch-{n}")), None, b"{\"n\":1}")
            .await;
    }
    let app = env.start_ready().await;
    eventually("every delivery made", Duration::from_secs(60), || async {
        env.delivery_statuses().await == vec![("success".to_string(), events)]
    })
    .await;
    let ids: std::collections::HashSet<String> = receiver
        .received_at("/slow")
        .iter()
        .map(|r| r.header("webhook-id"))
        .collect();
    assert_eq!(ids.len(), events as usize, "every event arrived");
    assert_eq!(
        receiver.received_at("/slow").len(),
        events as usize,
        "and each once: putting off is not an attempt"
    );
    let put_off = counter(&app, "herald_deliveries_deferred_total").await;
    let messages = counter(&app, "herald_put_off_messages_total").await;
    eprintln!("put off {put_off} times in {messages} messages");
    assert!(put_off >= 20.0, "most tasks were put off ({put_off})");
    assert!(
        messages * 2.0 <= put_off,
        "{put_off} put-offs took {messages} messages: they travel together"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM herald.delivery_attempts")
            .await,
        events
    );
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redrive_refuses_a_disabled_endpoint_unless_it_enables_it_and_closes_its_breaker() {
    let env = TestEnv::with(|s| s.delivery.retry_schedule = vec![]).await;
    let receiver = Receiver::scripted(|_, _| Reply::status(500)).await;
    let endpoint = env.add_endpoint(&receiver.url("/a"), &["x.#"], None).await;
    let app = env.start_ready().await;
    for n in 0..3 {
        env.publish("x.y", Some(&format!("evt-{n}")), None, b"{}")
            .await;
    }
    let dlq = env.topology().dlq();
    // A first attempt's dead letter is published before its outcome is recorded (so a
    // delivery is never failed without its copy): wait for both.
    eventually(
        "three parked and recorded",
        Duration::from_secs(15),
        || async { env.dead_letters_parked_and_recorded(3).await },
    )
    .await;
    herald::store::endpoints::set_enabled(&env.pool, endpoint.id, false, Some("maintenance"))
        .await
        .unwrap();
    let redrive = |enable_endpoints| JobRequest {
        kind: Kind::Redrive,
        all: true,
        filter: Filter::default(),
        enable_endpoints,
    };
    let refused = env.dlq_job(redrive(false)).await;
    assert_eq!(
        (refused.matched, refused.processed, refused.refused),
        (3, 0, 3)
    );
    let refusal = &refused.refusals.0[&endpoint.id];
    assert_eq!(
        (refusal.reason.as_str(), refusal.deliveries),
        ("endpoint_disabled", 3)
    );
    assert_eq!(refused.swept, None, "nothing stale to sweep");
    assert_eq!(env.queue_depth(&dlq).await, 3);
    assert_eq!(
        env.delivery_statuses().await,
        vec![("failed".to_string(), 3)]
    );

    receiver.set_script(|_, _| Reply::status(200));
    let enabled = env.dlq_job(redrive(true)).await;
    assert_eq!((enabled.processed, enabled.refused), (3, 0));
    assert_eq!(enabled.enabled_endpoints, vec![endpoint.id]);
    assert_eq!(enabled.swept, Some(3));
    eventually("all three delivered", Duration::from_secs(15), || async {
        env.delivery_statuses().await == vec![("success".to_string(), 3)]
    })
    .await;
    assert_eq!(
        receiver.received_at("/a").len(),
        6,
        "three failed, three redriven"
    );
    assert_eq!(env.queue_depth(&dlq).await, 0);
    assert_eq!(
        env.count("SELECT count(*) FROM herald.ops_events WHERE type = 'herald.endpoint.enabled'")
            .await,
        1,
        "enabling said so on the bus"
    );
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_answering_binary_holds_up_no_endpoint() {
    const EVENTS: usize = 300;
    let env = TestEnv::new().await;
    // A zero byte and bytes that are not UTF-8, as binary replies have.
    let receiver = Receiver::scripted(|path, _| match path {
        "/binary" => Reply::with_body(200, b"\x00\x01PNG\xff\xfe\x00end"),
        _ => Reply::status(204),
    })
    .await;
    let binary = env
        .add_endpoint(&receiver.url("/binary"), &["#"], None)
        .await;
    env.add_endpoint(&receiver.url("/healthy"), &["#"], None)
        .await;
    let app = env.start_ready().await;
    for n in 0..EVENTS {
        env.publish(
            "billing.invoice.paid",
            Some(&format!("inv-{n}")),
            None,
            b"{}",
        )
        .await;
    }
    eventually(
        "every delivery recorded",
        Duration::from_secs(60),
        || async {
            env.delivery_statuses().await == vec![("success".to_string(), 2 * EVENTS as i64)]
        },
    )
    .await;
    assert_eq!(receiver.received_at("/healthy").len(), EVENTS);
    let bodies: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT a.response_body FROM herald.delivery_attempts a
         JOIN herald.deliveries d ON d.id = a.delivery_id WHERE d.endpoint_id = $1",
    )
    .bind(binary.id)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(bodies.len(), EVENTS);
    assert!(
        bodies
            .iter()
            .all(|b| b.as_deref() == Some("\u{FFFD}\u{1}PNG\u{FFFD}\u{FFFD}\u{FFFD}end")),
        "{:?}",
        bodies.first()
    );
    app.stop().await;
    env.cleanup().await;
}
