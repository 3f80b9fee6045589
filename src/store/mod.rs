//! PostgreSQL: the pool, migrations, and one module per table family.
//!
//! Writes on the hot paths are batched: one statement per table for a whole batch of
//! events or attempts (`UNNEST` of arrays), inside one transaction.

pub mod deliveries;
pub mod dlq;
pub mod dlq_jobs;
pub mod endpoints;
pub mod events;
pub mod health;
pub mod invalid_jobs;
mod migrate;
pub mod ops;
pub mod ordering;
pub mod replays;
pub mod retention;
pub mod tokens;
mod upgrade;

pub use migrate::migrate;

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

use crate::config::DatabaseSettings;

/// Migrations embedded in the binary from `migrations/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

fn connect_options(settings: &DatabaseSettings) -> Result<PgConnectOptions, sqlx::Error> {
    let options: PgConnectOptions = settings.url.expose().parse()?;
    Ok(options
        .application_name("herald")
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(1))
        .log_statements(tracing::log::LevelFilter::Trace))
}

/// A pool that connects on first use: a process starts (and answers `/healthz`) while
/// the database is still away, and readiness says so.
pub fn pool(settings: &DatabaseSettings) -> Result<PgPool, sqlx::Error> {
    Ok(PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(connect_options(settings)?))
}

/// Whether the database answers.
pub async fn ping(pool: &PgPool) -> bool {
    sqlx::query("SELECT 1").execute(pool).await.is_ok()
}

/// Whether PostgreSQL refused a write for what it carried rather than because it is
/// away: a data exception (SQLSTATE class 22: a zero byte or bad encoding in text,
/// malformed JSON), an integrity constraint (23), or a limit (54: JSON nested too deep
/// for its parser), or a value sqlx could not encode. Retrying such a write can never
/// succeed, so the caller isolates the row at fault instead of holding the batch; every
/// other error (connections, timeouts, shutdowns, serialization failures) may pass.
pub fn refused_content(error: &sqlx::Error) -> bool {
    match error {
        _ if missing_partition(error) => false,
        sqlx::Error::Database(e) => e.code().as_deref().is_some_and(content_sqlstate),
        sqlx::Error::Encode(_) => true,
        _ => false,
    }
}

/// The row's day has no partition yet (store::retention): not the content's fault; the
/// writer creates the day's partitions and tries again.
pub fn missing_partition(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(e) => {
            e.code().as_deref() == Some("23514")
                && e.message().starts_with("no partition of relation")
        }
        _ => false,
    }
}

fn content_sqlstate(code: &str) -> bool {
    matches!(code.get(..2), Some("22" | "23" | "54"))
}

/// Writes a batch of `len` rows through `write` (which writes the rows of a range in
/// one transaction and returns one result per row), isolating poison: when the
/// database refuses a part's content ([`refused_content`]), the part is split in
/// halves until each refused row stands alone. Returns one result per row — a refused
/// row gets the database's error, every other row is written — or the first error
/// that is not a refusal (the database away past the caller's patience, shutdown).
/// A batch without poison costs one write; one poisoned row about 2 × log2(len) more.
pub async fn write_isolating<R, F, Fut>(
    len: usize,
    mut write: F,
) -> Result<Vec<Result<R, sqlx::Error>>, sqlx::Error>
where
    F: FnMut(std::ops::Range<usize>) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<R>, sqlx::Error>>,
{
    let mut results: Vec<Option<Result<R, sqlx::Error>>> = (0..len).map(|_| None).collect();
    let mut parts = vec![(0, len)];
    while let Some((start, end)) = parts.pop() {
        match write(start..end).await {
            Ok(written) => {
                for (slot, row) in results[start..end].iter_mut().zip(written) {
                    *slot = Some(Ok(row));
                }
            }
            Err(error) if refused_content(&error) && end - start == 1 => {
                results[start] = Some(Err(error));
            }
            Err(error) if refused_content(&error) => {
                let middle = start + (end - start) / 2;
                parts.push((middle, end));
                parts.push((start, middle));
            }
            Err(error) => return Err(error),
        }
    }
    Ok(results
        .into_iter()
        .map(|r| r.expect("every row was written or refused"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_errors_are_told_from_outages_by_their_sqlstate() {
        for (code, content) in [
            ("22021", true),  // character_not_in_repertoire: a zero byte in text
            ("22P02", true),  // invalid_text_representation: malformed JSON
            ("23505", true),  // unique_violation
            ("23514", true),  // check_violation
            ("54001", true),  // statement_too_complex: stack depth limit exceeded
            ("08006", false), // connection_failure
            ("57P01", false), // admin_shutdown
            ("57P03", false), // cannot_connect_now
            ("53300", false), // too_many_connections
            ("40001", false), // serialization_failure
            ("XX000", false), // internal_error
            ("2", false),
        ] {
            assert_eq!(content_sqlstate(code), content, "{code}");
        }
        assert!(!refused_content(&sqlx::Error::PoolTimedOut));
        assert!(!refused_content(&sqlx::Error::Io(std::io::Error::other(
            "reset"
        ))));
    }
}
