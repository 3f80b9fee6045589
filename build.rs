//! Rebuilds when a migration is added or changed: `sqlx::migrate!` embeds
//! `migrations/` at compile time (`store::MIGRATOR`), and cargo does not watch that
//! directory by itself (the build script sqlx documents).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
