//! PostgreSQL connection, schema migration and the schema-version check.
//!
//! The migrations in `migrations/` are embedded in the binary. `tgingest migrate` applies the
//! missing ones (idempotently: a second run changes nothing); every other command refuses to start
//! against a schema older than the one it was built for, with one line saying to run `migrate`.
//! With `CONSUMER_ROLE`, `migrate` also grants that existing role what the consumer needs.

use std::collections::BTreeSet;

use anyhow::Context;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;

use crate::config::DatabaseConfig;

/// The schema this build writes to.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Opens a pool. Connection errors name the host and database, never the password. Connections
/// are replaced after [`consumer::config::POOL_MAX_LIFETIME`], so none outlives a failover by
/// long.
pub async fn connect(config: &DatabaseConfig) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(config.acquire_timeout)
        .max_lifetime(Some(consumer::config::POOL_MAX_LIFETIME))
        .connect_with(config.options.clone())
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {}", describe(config)))
}

/// `host:port/database` of a configuration, for messages.
pub fn describe(config: &DatabaseConfig) -> String {
    format!(
        "{}:{}/{}",
        config.options.get_host(),
        config.options.get_port(),
        config.options.get_database().unwrap_or("(default)")
    )
}

/// The outcome of [`migrate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    pub applied_now: Vec<i64>,
    pub already_applied: usize,
}

/// Applies every embedded migration not yet applied. Concurrent runs are serialised by sqlx's
/// advisory lock, so several replicas starting at once are safe.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<MigrationReport> {
    let before = applied_versions(pool).await?;
    MIGRATOR
        .run(pool)
        .await
        .context("applying database migrations")?;
    let after = applied_versions(pool).await?;
    Ok(MigrationReport {
        applied_now: after.difference(&before).copied().collect(),
        already_applied: before.len(),
    })
}

/// Fails with a clear message when the database lacks migrations this build needs.
pub async fn ensure_schema_current(pool: &PgPool) -> anyhow::Result<()> {
    let applied = applied_versions(pool).await?;
    let missing: Vec<i64> = MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .map(|m| m.version)
        .filter(|v| !applied.contains(v))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "database schema is too old (missing migrations {missing:?}): run `tgingest migrate` first"
        )
    }
}

async fn applied_versions(pool: &PgPool) -> anyhow::Result<BTreeSet<i64>> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await
        .context("reading the schema version")?;
    if !exists {
        return Ok(BTreeSet::new());
    }
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(pool)
            .await
            .context("reading the schema version")?;
    Ok(versions.into_iter().collect())
}

/// `tgingest migrate`: applies the schema, grants the consumer's role (when named) exactly what
/// the consumer needs ([`consumer::privileges::grant`]), and reports what it did.
pub async fn run_migrate_command(
    config: &DatabaseConfig,
    consumer_role: Option<&str>,
) -> anyhow::Result<()> {
    let pool = connect(config).await?;
    let report = migrate(&pool).await?;
    if report.applied_now.is_empty() {
        println!(
            "schema is up to date at {} ({} migrations already applied)",
            describe(config),
            report.already_applied
        );
    } else {
        println!(
            "applied migrations {:?} to {}",
            report.applied_now,
            describe(config)
        );
    }
    if let Some(role) = consumer_role {
        let report = consumer::privileges::grant(&pool, role).await?;
        println!(
            "granted role {role:?} SELECT, INSERT, UPDATE on {} tables and SELECT on {} more",
            report.writable.len(),
            report.readable.len()
        );
        for warning in &report.warnings {
            eprintln!("warning: {warning}");
        }
    }
    pool.close().await;
    Ok(())
}
