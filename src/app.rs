//! The running application: the roles a process plays, started together and stopped
//! together. `App::build` binds the HTTP listener (port 0 in tests) and starts every
//! task; `App::stop` / a signal shuts down in order: readiness goes false, consumers
//! stop taking work, in-flight deliveries finish within the grace period, then the
//! HTTP server and the database pool close.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, ApiState};
use crate::config::Settings;
use crate::delivery::breaker::BreakerPolicy;
use crate::delivery::client::WebhookClient;
use crate::delivery::consumer as deliver_role;
use crate::delivery::engine::Deliverer;
use crate::delivery::health::Health;
use crate::delivery::put_off::PutOffs;
use crate::delivery::recorder::Recorder;
use crate::delivery::retry::RetryPolicy;
use crate::delivery::share::Senders;
use crate::delivery::throttle::Throttle;
use crate::ingest::{self, Ingestor};
use crate::keyring::Keyring;
use crate::metrics::Metrics;
use crate::readiness::{Readiness, Role};
use crate::store;
use crate::store::endpoints::KeyProblem;
use crate::subscriptions::Subscriptions;

pub struct App {
    address: SocketAddr,
    shutdown: CancellationToken,
    supervisor: tokio::task::JoinHandle<()>,
    subscriptions: Arc<Subscriptions>,
}

impl App {
    /// Starts the given role; returns once the listener is bound.
    pub async fn build(settings: Settings, role: Role) -> anyhow::Result<App> {
        let settings = Arc::new(settings);
        let pool = store::pool(&settings.database).context("configuration key `database.url`")?;
        let metrics = Arc::new(Metrics::new(settings.api.per_endpoint_metrics));
        let retry = RetryPolicy::from_settings(&settings.delivery);
        let topology = crate::delivery::topology(&settings);
        let keys = Arc::new(settings.secrets.keyring()?);
        check_keys(&pool, &keys).await?;
        let subscriptions = Subscriptions::new(pool.clone(), keys.clone());
        let shutdown = CancellationToken::new();
        let readiness = Readiness::new(role, shutdown.clone());
        let workers = TaskTracker::new();

        let listener = TcpListener::bind(settings.api.listen)
            .await
            .with_context(|| format!("cannot listen on {} (api.listen)", settings.api.listen))?;
        let address = listener.local_addr()?;

        if role.ingests() || role.delivers() {
            workers.spawn(subscriptions.clone().keep_fresh(shutdown.clone()));
        }
        // One deliverer per process: the deliver role's, which the ingest role shares
        // for first attempts (same HTTP client, group commit and per-endpoint limits).
        let first_attempts = role.ingests() && settings.ingest.deliver_first_attempt;
        let deliverer = if role.delivers() || first_attempts {
            let (recorder, recorder_task) = Recorder::spawn(pool.clone(), shutdown.clone());
            workers.spawn(async move {
                let _ = recorder_task.await;
            });
            let health = Health::new(
                pool.clone(),
                BreakerPolicy::from_settings(&settings.delivery),
            );
            workers.spawn(health.clone().keep_fresh(shutdown.clone()));
            // Counted among the processes that share each endpoint's rate limit.
            let senders = Senders::unknown();
            workers.spawn(crate::delivery::share::keep_counted(
                senders.clone(),
                settings.clone(),
                topology.clone(),
                shutdown.clone(),
            ));
            Some(Arc::new(Deliverer {
                settings: settings.clone(),
                topology: topology.clone(),
                retry: retry.clone(),
                client: WebhookClient::new(&settings.delivery).context("HTTP client")?,
                subscriptions: subscriptions.clone(),
                recorder,
                throttle: Throttle::new(
                    usize::from(settings.delivery.max_in_flight_per_endpoint),
                    usize::from(settings.delivery.concurrency),
                )
                .sharing(senders),
                requests: Semaphore::new(usize::from(settings.delivery.concurrency)),
                attempts: Arc::new(Semaphore::new(settings.delivery.attempts_in_progress())),
                put_offs: PutOffs::new(metrics.clone()),
                batches: Default::default(),
                health,
                metrics: metrics.clone(),
                pool: pool.clone(),
            }))
        } else {
            None
        };
        if role.ingests() {
            let ingestor = Arc::new(Ingestor {
                settings: settings.clone(),
                topology: topology.clone(),
                subscriptions: subscriptions.clone(),
                metrics: metrics.clone(),
                pool: pool.clone(),
                event_keys: crate::store::retention::EventKeys::new(settings.retention.window),
                direct: deliverer.clone().filter(|_| first_attempts),
            });
            let (readiness, shutdown, subscriptions) =
                (readiness.clone(), shutdown.clone(), subscriptions.clone());
            workers.spawn(async move {
                // Never fan out against an empty cache: wait for the first load.
                if subscriptions.wait_loaded(&shutdown).await {
                    ingest::run(ingestor, readiness, shutdown).await;
                }
            });
        }
        if let Some(deliverer) = deliverer.filter(|_| role.delivers()) {
            workers.spawn(deliver_role::run(
                deliverer,
                readiness.clone(),
                shutdown.clone(),
            ));
        }
        if role.serves_admin_api() {
            workers.spawn(crate::monitor::sample_queues(
                settings.clone(),
                topology.clone(),
                metrics.clone(),
                shutdown.clone(),
            ));
        }
        workers.spawn(api::sample_gauges(
            pool.clone(),
            metrics.clone(),
            readiness.clone(),
            role.serves_admin_api(),
            shutdown.clone(),
        ));
        // Every role publishes operational events, whichever wrote them.
        workers.spawn(crate::ops::relay(
            settings.clone(),
            pool.clone(),
            metrics.clone(),
            shutdown.clone(),
        ));

        workers.spawn(crate::service::retention::prepare(pool.clone()));
        if role.serves_admin_api() {
            workers.spawn(crate::service::retention::keep(
                settings.clone(),
                pool.clone(),
                shutdown.clone(),
            ));
            workers.spawn(crate::service::replay::resume_stale(
                settings.clone(),
                pool.clone(),
                shutdown.clone(),
            ));
            workers.spawn(crate::service::dlq::resume_stale(
                settings.clone(),
                pool.clone(),
                shutdown.clone(),
            ));
            workers.spawn(crate::service::ordering::resend_stranded(
                settings.clone(),
                pool.clone(),
                metrics.clone(),
                shutdown.clone(),
            ));
            workers.spawn(crate::service::invalid_jobs::fail_stale(
                pool.clone(),
                shutdown.clone(),
            ));
        }
        let state = Arc::new(ApiState {
            settings: settings.clone(),
            pool: pool.clone(),
            keys,
            metrics,
            readiness: readiness.clone(),
            topology,
        });
        let router = api::router(state, role.serves_admin_api());
        let server_stop = CancellationToken::new();
        let server = tokio::spawn({
            let stop = server_stop.clone();
            async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await
            }
        });
        tracing::info!(%address, ?role, prefix = %settings.topology.prefix, "herald started");

        let supervisor = {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                shutdown.cancelled().await;
                tracing::info!("shutting down: no new work, finishing in-flight deliveries");
                workers.close();
                workers.wait().await;
                server_stop.cancel();
                match tokio::time::timeout(Duration::from_secs(5), server).await {
                    Ok(Ok(Err(error))) => tracing::warn!(%error, "HTTP server error"),
                    Err(_) => tracing::warn!("HTTP server did not stop in time"),
                    _ => {}
                }
                pool.close().await;
                tracing::info!("herald stopped");
            })
        };
        Ok(App {
            address,
            shutdown,
            supervisor,
            subscriptions,
        })
    }

    /// The bound address of the HTTP server (health, metrics, admin API).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Cancel it to stop the application, as a signal would.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    pub fn subscriptions(&self) -> &Arc<Subscriptions> {
        &self.subscriptions
    }

    /// Waits until the application has stopped (after `shutdown_token().cancel()`).
    pub async fn stopped(self) {
        let _ = self.supervisor.await;
    }

    /// Stops the application and waits for it.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.stopped().await;
    }
}

/// Refuses to start when the stored secrets are sealed under a key `secrets.keys` does
/// not hold, or under a key of that id with other bytes: their endpoints would
/// silently receive nothing. A database that cannot be asked now is not a reason to
/// refuse (the subscription cache waits for it, and logs every row it cannot open).
async fn check_keys(pool: &sqlx::PgPool, keys: &Keyring) -> anyhow::Result<()> {
    if keys.is_empty() {
        tracing::warn!(
            "secrets.allow_plaintext: endpoint secrets are stored in plain text; set secrets.keys"
        );
    }
    match store::endpoints::check_keys(pool, keys).await {
        Ok(check) if check.plaintext > 0 && !keys.is_empty() => {
            tracing::warn!(
                endpoints = check.plaintext,
                "endpoint secrets stored in plain text; run `herald secrets reencrypt`"
            );
            Ok(())
        }
        Ok(_) => Ok(()),
        Err(KeyProblem::Database(error)) => {
            tracing::warn!(%error, "cannot check the stored secrets against secrets.keys now");
            Ok(())
        }
        Err(problem) => Err(problem.into()),
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
