//! `herald migrate`: the embedded migrations, recorded in `herald._sqlx_migrations`
//! whatever the connecting user's `search_path` says.
//!
//! sqlx creates its bookkeeping table unqualified, so it lands in the first schema of
//! the session's `search_path`. For a user named `herald` that is `"$user", public`:
//! the first run (schema `herald` not there yet) recorded its migrations in
//! `public._sqlx_migrations`, and every later run — schema `herald` now existing —
//! created an empty `herald._sqlx_migrations` and tried migration 1 again (`relation
//! "endpoints" already exists`). Herald now pins the migrating session's `search_path`
//! to `herald` and, before migrating, moves its own rows out of a `public` table left
//! by an earlier version.
//!
//! After the schema migrations it finishes what an upgrade must not do inside one
//! migration's transaction (filling a new column of every recorded row, building
//! indexes on every day partition): `super::upgrade`.

use sqlx::{Connection, PgConnection, PgPool};

use super::MIGRATOR;

/// Applies every pending migration; a no-op on a database already migrated, however
/// often it runs and whichever version of Herald migrated it before.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    let mut conn = pool.acquire().await?;
    // The bookkeeping table's place must not depend on who connects.
    sqlx::query("CREATE SCHEMA IF NOT EXISTS herald")
        .execute(&mut *conn)
        .await?;
    adopt_public_records(&mut conn).await?;
    sqlx::query("SET search_path TO herald")
        .execute(&mut *conn)
        .await?;
    let result = MIGRATOR.run(&mut *conn).await;
    // The connection goes back to the pool: give it the server's default path back.
    let _ = sqlx::query("RESET search_path").execute(&mut *conn).await;
    drop(conn);
    result?;
    super::upgrade::finish(pool)
        .await
        .map_err(sqlx::migrate::MigrateError::Execute)
}

/// Moves the rows of Herald's own migrations from `public._sqlx_migrations` (where
/// versions before this fix recorded them) into `herald._sqlx_migrations`, in one
/// transaction under an advisory lock. Rows of other applications that
/// share `public` stay where they are; the `public` table is dropped only when nothing
/// else is left in it. An empty `herald._sqlx_migrations`, left by the failed second
/// run, is simply filled.
async fn adopt_public_records(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    let mut tx = conn.begin().await?;
    // Two migration jobs at once (a rollout and a manual run) take turns here.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('herald migrate: adopt records'))")
        .execute(&mut *tx)
        .await?;
    let public: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('public._sqlx_migrations')::text")
            .fetch_one(&mut *tx)
            .await?;
    if public.is_none() {
        return Ok(());
    }
    let ours: Vec<i64> = MIGRATOR.iter().map(|m| m.version).collect();
    // The same table sqlx makes, so its own `CREATE TABLE IF NOT EXISTS` finds it.
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS herald._sqlx_migrations (
             version BIGINT PRIMARY KEY,
             description TEXT NOT NULL,
             installed_on TIMESTAMPTZ NOT NULL DEFAULT now(),
             success BOOLEAN NOT NULL,
             checksum BYTEA NOT NULL,
             execution_time BIGINT NOT NULL
         )",
    )
    .execute(&mut *tx)
    .await?;
    let moved = sqlx::query(
        "INSERT INTO herald._sqlx_migrations
             (version, description, installed_on, success, checksum, execution_time)
         SELECT version, description, installed_on, success, checksum, execution_time
         FROM public._sqlx_migrations WHERE version = ANY($1)
         ON CONFLICT (version) DO NOTHING",
    )
    .bind(&ours)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    sqlx::query("DELETE FROM public._sqlx_migrations WHERE version = ANY($1)")
        .bind(&ours)
        .execute(&mut *tx)
        .await?;
    let others: i64 = sqlx::query_scalar("SELECT count(*) FROM public._sqlx_migrations")
        .fetch_one(&mut *tx)
        .await?;
    if others == 0 {
        sqlx::query("DROP TABLE public._sqlx_migrations")
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    if moved > 0 {
        tracing::info!(
            moved,
            "migration records moved from public._sqlx_migrations to herald._sqlx_migrations"
        );
    }
    Ok(())
}
