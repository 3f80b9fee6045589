//! The `api` role's watch over ordered keys (docs/ordering.md): every minute it samples
//! the keys for the gauges `herald_ordering_keys_active` and
//! `herald_ordering_heads_stranded`, and a key's head that was never attempted for
//! [`STRANDED`] has its task sent again.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::broker::{self, Publisher};
use crate::config::Settings;
use crate::delivery::order;
use crate::metrics::Metrics;
use crate::store::ordering::head_counts;

/// How long a head may sit unattempted before its task is taken for lost (and the key
/// counts as stranded).
pub const STRANDED: Duration = Duration::from_secs(15 * 60);

/// Every minute until `shutdown`: sets the ordering gauges, then sends again the heads
/// stranded for [`STRANDED`] (each at most once per [`STRANDED`]).
pub async fn resend_stranded(
    settings: Arc<Settings>,
    pool: PgPool,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let topology = crate::delivery::topology(&settings);
    super::background::every(Duration::from_secs(60), &shutdown, || async {
        let counts = match head_counts(&pool, STRANDED).await {
            Ok(counts) => counts,
            Err(error) => {
                tracing::warn!(%error, "ordered keys not counted; trying later");
                return;
            }
        };
        metrics.ordering_keys_active.set(counts.active);
        metrics.ordering_heads_stranded.set(counts.stranded);
        if counts.due == 0 {
            return;
        }
        let url = settings.amqp.url.expose().to_string();
        let result = async {
            let connection = broker::connect(&url, "herald-ordering-watch").await?;
            let publisher = Publisher::open(&connection).await?;
            let sent = order::resend_stranded(&pool, &topology, &publisher, STRANDED).await;
            broker::close_connection(&connection).await;
            Ok::<_, anyhow::Error>(sent?)
        }
        .await;
        if let Err(error) = result {
            tracing::warn!(%error, "stranded ordered heads not sent again; trying later");
        }
    })
    .await;
}
