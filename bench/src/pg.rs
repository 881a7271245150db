//! Fresh PostgreSQL databases for measurements, and the CPU time of their server backends.
//!
//! Every measurement gets its own database `bench_<unix seconds>_<random>` on the server (default
//! `postgres://postgres@127.0.0.1:5432/postgres`, or `BENCH_PG_URL`), dropped `WITH (FORCE)`
//! afterwards. The benchmark's own connections carry `application_name = tgingest-bench`, so the
//! CPU of the system under test's backends can be told apart.

use std::str::FromStr;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use rand::Rng;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool};

use crate::procstat;

/// `application_name` of the benchmark's own sessions.
pub const BENCH_APPLICATION: &str = "tgingest-bench";

/// The workspace schema, applied to databases made with [`BenchDb::create`].
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// The server's admin URL.
pub fn server_url() -> String {
    std::env::var("BENCH_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A fresh database, dropped by [`BenchDb::drop_database`].
#[derive(Debug)]
pub struct BenchDb {
    pub name: String,
    /// The URL systems under test get: over the Unix socket when `BENCH_PG_SOCKET_DIR` is set.
    pub url: String,
    /// The same database over TCP, always.
    pub tcp_url: String,
    pub pool: PgPool,
}

impl BenchDb {
    /// A fresh database with the tgingest schema.
    pub async fn create() -> anyhow::Result<Self> {
        let db = Self::create_empty().await?;
        MIGRATOR
            .run(&db.pool)
            .await
            .with_context(|| format!("migrating {}", db.name))?;
        Ok(db)
    }

    /// A fresh database with no tables.
    pub async fn create_empty() -> anyhow::Result<Self> {
        let mut admin = admin().await?;
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let suffix: u32 = rand::rng().random();
        let name = format!("bench_{now}_{suffix:08x}");
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut admin)
            .await
            .with_context(|| format!("creating database {name}"))?;
        let mut url = url::Url::parse(&server_url())?;
        url.set_path(&name);
        let tcp_url = url.to_string();
        if let Some(dir) = unix_socket_dir() {
            url.query_pairs_mut().append_pair("host", &dir);
        }
        let url = url.to_string();
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect_with(options(&url)?)
            .await
            .with_context(|| format!("connecting to {name}"))?;
        Ok(Self {
            name,
            url,
            tcp_url,
            pool,
        })
    }

    /// Closes the pool and drops the database, ending any session still in it.
    pub async fn drop_database(self) -> anyhow::Result<()> {
        self.pool.close().await;
        let mut admin = admin().await?;
        sqlx::query(AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.name
        )))
        .execute(&mut admin)
        .await
        .with_context(|| format!("dropping {}", self.name))?;
        Ok(())
    }

    /// A dedicated connection (outside the pool), e.g. to hold a lock.
    pub async fn connect(&self) -> anyhow::Result<PgConnection> {
        Ok(PgConnection::connect_with(&options(&self.url)?).await?)
    }

    /// CPU seconds used so far by every server backend in this database that is not the
    /// benchmark's own (backends that already ended are not counted).
    pub async fn backend_cpu_seconds(&self) -> anyhow::Result<f64> {
        let pids: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name <> $2",
        )
        .bind(&self.name)
        .bind(BENCH_APPLICATION)
        .fetch_all(&self.pool)
        .await?;
        Ok(pids
            .iter()
            .filter_map(|pid| procstat::cpu_seconds(&pid.to_string()).ok())
            .sum())
    }

    /// Row counts of `tables`.
    pub async fn row_counts(&self, tables: &[&str]) -> anyhow::Result<Vec<(String, i64)>> {
        let mut counts = Vec::with_capacity(tables.len());
        for table in tables {
            let n: i64 = sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                .fetch_one(&self.pool)
                .await
                .with_context(|| format!("counting {table}"))?;
            counts.push(((*table).to_owned(), n));
        }
        Ok(counts)
    }
}

/// `BENCH_PG_SOCKET_DIR`: when set, every benchmark connection and every system under test uses
/// the server's Unix socket in that directory instead of TCP.
pub fn unix_socket_dir() -> Option<String> {
    std::env::var("BENCH_PG_SOCKET_DIR")
        .ok()
        .filter(|d| !d.is_empty())
}

fn options(url: &str) -> anyhow::Result<PgConnectOptions> {
    Ok(PgConnectOptions::from_str(url)?.application_name(BENCH_APPLICATION))
}

async fn admin() -> anyhow::Result<PgConnection> {
    let options = options(&server_url())?;
    let mut last = None;
    for _ in 0..5 {
        match PgConnection::connect_with(&options).await {
            Ok(conn) => return Ok(conn),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(last.map_or_else(|| anyhow::anyhow!("no attempt"), Into::into))
        .context("connecting to the PostgreSQL server (BENCH_PG_URL)")
}
