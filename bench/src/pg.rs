//! PostgreSQL for measurements: testkit's fresh databases ([`testkit::TestDb`]) on the benchmark
//! server, and the CPU time of their server backends.
//!
//! Every measurement gets its own database on the server at `BENCH_PG_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`), dropped `WITH (FORCE)` afterwards. The
//! benchmark's own connections carry `application_name = tgingest-bench`, so the CPU of the
//! system under test's backends can be told apart.

use anyhow::Context;
use sqlx::AssertSqlSafe;
use testkit::TestDb;
use testkit::pg::DbServer;

use crate::procstat;

/// `application_name` of the benchmark's own sessions.
pub const BENCH_APPLICATION: &str = "tgingest-bench";

/// The benchmark server, reached over the Unix socket when `BENCH_PG_SOCKET_DIR` is set.
pub fn server() -> DbServer {
    tcp_server().unix_socket_dir(unix_socket_dir())
}

/// The benchmark server, always over TCP.
pub fn tcp_server() -> DbServer {
    let url = std::env::var("BENCH_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    DbServer::new(url, "BENCH_PG_URL").application_name(BENCH_APPLICATION)
}

/// A fresh database with the tgingest schema on [`server`].
pub async fn create() -> anyhow::Result<TestDb> {
    server().create_db().await
}

/// A fresh database with no tables on [`server`].
pub async fn create_empty() -> anyhow::Result<TestDb> {
    server().create_empty_db().await
}

/// CPU seconds used so far by every server backend in `db` that is not the benchmark's own
/// (backends that already ended are not counted).
pub async fn backend_cpu_seconds(db: &TestDb) -> anyhow::Result<f64> {
    let pids: Vec<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name <> $2",
    )
    .bind(db.name())
    .bind(BENCH_APPLICATION)
    .fetch_all(db.pool())
    .await?;
    Ok(pids
        .iter()
        .filter_map(|pid| procstat::cpu_seconds(&pid.to_string()).ok())
        .sum())
}

/// Row counts of `tables` in `db`.
pub async fn row_counts(db: &TestDb, tables: &[&str]) -> anyhow::Result<Vec<(String, i64)>> {
    let mut counts = Vec::with_capacity(tables.len());
    for table in tables {
        let n: i64 = sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
            .fetch_one(db.pool())
            .await
            .with_context(|| format!("counting {table}"))?;
        counts.push(((*table).to_owned(), n));
    }
    Ok(counts)
}

/// `BENCH_PG_SOCKET_DIR`: when set, every benchmark connection and every system under test uses
/// the server's Unix socket in that directory instead of TCP.
pub fn unix_socket_dir() -> Option<String> {
    std::env::var("BENCH_PG_SOCKET_DIR")
        .ok()
        .filter(|d| !d.is_empty())
}
