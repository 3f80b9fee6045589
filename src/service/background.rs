//! The background loop the `api` role runs for jobs whose process died: every
//! `period`, until shutdown, one round of `round` (claim the stale jobs, spawn them).

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub(super) async fn every<F, Fut>(period: Duration, shutdown: &CancellationToken, mut round: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        round().await;
    }
}
