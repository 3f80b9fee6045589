//! The `api` role's watch over ordered keys (docs/ordering.md): now and then, a key's
//! head that was never attempted for [`STRANDED`] has its task sent again.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::broker::{self, Publisher};
use crate::config::Settings;
use crate::delivery::order;

/// How long a head may sit unattempted before its task is taken for lost.
pub const STRANDED: Duration = Duration::from_secs(15 * 60);

/// Every minute until `shutdown`: sends again the heads stranded for [`STRANDED`].
pub async fn resend_stranded(settings: Arc<Settings>, pool: PgPool, shutdown: CancellationToken) {
    let topology = crate::delivery::topology(&settings);
    super::background::every(Duration::from_secs(60), &shutdown, || async {
        let Ok(stranded) = crate::store::ordering::stranded_count(&pool, STRANDED).await else {
            return;
        };
        if stranded == 0 {
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
