//! Scratch databases on the local PostgreSQL, created and dropped through the main
//! database's connection (`super::database_base_url`). A server that cannot be reached
//! is an error that says to run `make services`.

use anyhow::Context;
use sqlx::{Connection, PgConnection};

/// A connection to the main database, for creating and dropping others.
pub async fn admin(base_url: &str) -> anyhow::Result<PgConnection> {
    PgConnection::connect(base_url).await.with_context(|| {
        format!("PostgreSQL unreachable at {base_url}; run `make services` (make test does)")
    })
}

/// A database name safe to splice into SQL: lowercase letters, digits and `_`.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
        "database name `{name}` must be lowercase letters, digits and _"
    );
    Ok(())
}

/// Creates `name` next to the main database; with `replace`, drops it first if it exists.
pub async fn create(base_url: &str, name: &str, replace: bool) -> anyhow::Result<()> {
    check_name(name)?;
    let mut admin = admin(base_url).await?;
    if replace {
        drop_with(&mut admin, name).await?;
    }
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .with_context(|| format!("creating database {name}"))?;
    let _ = admin.close().await;
    Ok(())
}

/// Drops `name` if it exists, disconnecting whoever is still connected to it.
pub async fn drop(base_url: &str, name: &str) -> anyhow::Result<()> {
    check_name(name)?;
    let mut admin = admin(base_url).await?;
    drop_with(&mut admin, name).await?;
    let _ = admin.close().await;
    Ok(())
}

async fn drop_with(admin: &mut PgConnection, name: &str) -> anyhow::Result<()> {
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(admin)
        .await
        .with_context(|| format!("dropping database {name}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_name;

    #[test]
    fn only_plain_names_are_spliced_into_sql() {
        assert!(check_name("herald_test_0a1b").is_ok());
        assert!(check_name("herald_bench").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("Bench").is_err());
        assert!(check_name("x; DROP DATABASE herald").is_err());
    }
}
