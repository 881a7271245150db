//! PostgreSQL for measurements: testkit's fresh databases ([`testkit::TestDb`]) on the benchmark
//! server, and the CPU time of the whole server.
//!
//! Every measurement gets its own database on the server at `BENCH_PG_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`), dropped `WITH (FORCE)` afterwards. The
//! benchmark's own connections carry `application_name = tgingest-bench`.
//!
//! Server CPU ([`ServerCpu`]) is the postmaster's own time, plus the time of every child it has
//! already reaped (its `cutime`/`cstime` in `/proc`: the kernel adds an exited child's whole CPU
//! there when the postmaster waits for it), plus the time of every live child. A difference of two
//! readings is therefore the server's whole CPU in between: backends that started and ended inside
//! the window are counted, and so are the WAL writer, checkpointer, background writer and
//! autovacuum, which do work the load caused. It is not attributed to one database: on a shared
//! server other sessions' work is included, so measurements report the load average beside it.
//! The server must run on this machine (its processes visible in this `/proc`).

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

/// The CPU clock of the whole PostgreSQL server (module header): read it before and after.
#[derive(Debug, Clone, Copy)]
pub struct ServerCpu {
    postmaster: u32,
}

impl ServerCpu {
    /// The server `db` lives on: its postmaster is the parent of one of `db`'s backends.
    pub async fn of(db: &TestDb) -> anyhow::Result<Self> {
        let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(db.pool())
            .await?;
        let postmaster = procstat::read_stat(&backend.to_string())
            .context("the PostgreSQL server must run on this machine to measure its CPU")?
            .ppid;
        Ok(Self { postmaster })
    }

    /// CPU seconds used so far by the server: the postmaster, its reaped children and its live
    /// children. A child reaped during the scan of `/proc` would be counted twice or not at all,
    /// so the scan is repeated until the postmaster's reaped-children time did not move.
    pub fn seconds(&self) -> anyhow::Result<f64> {
        let postmaster = self.postmaster.to_string();
        for _ in 0..100 {
            let before = procstat::read_stat(&postmaster)?;
            let live = procstat::children_cpu_seconds(self.postmaster)?;
            let after = procstat::read_stat(&postmaster)?;
            if before.reaped_children_cpu == after.reaped_children_cpu {
                return Ok(after.cpu + after.reaped_children_cpu + live);
            }
        }
        anyhow::bail!("PostgreSQL children kept exiting during 100 scans of /proc")
    }
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use sqlx::Connection;

    use super::*;

    #[tokio::test]
    async fn a_backend_that_ended_inside_the_window_is_counted_in_the_server_cpu() {
        let db = create().await.expect("database");
        let server = ServerCpu::of(&db).await.expect("server");
        let before = server.seconds().expect("before");
        let mut conn = db.connect().await.expect("connect");
        let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut conn)
            .await
            .expect("backend pid");
        let backend = backend.to_string();
        // The generous deadline only guards a hang: the backend is given work until it has used
        // a measurable amount of CPU.
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut used = 0.0;
        while used < 0.3 && Instant::now() < deadline {
            sqlx::query("SELECT count(*) FROM generate_series(1, 2000000)")
                .execute(&mut conn)
                .await
                .expect("work");
            used = procstat::cpu_seconds(&backend).expect("backend stat");
        }
        conn.close().await.expect("close");
        // Its /proc entry stays until the postmaster has reaped it.
        while std::path::Path::new(&format!("/proc/{backend}")).exists()
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let after = server.seconds().expect("after");
        db.drop_database().await.expect("drop");
        assert!(used >= 0.3, "the backend used only {used} s");
        // Both sides are sums of whole clock ticks; the difference of two large sums of f64
        // may fall short of the smaller one by a rounding error, never by a tick.
        assert!(
            after - before >= used - 1e-6,
            "server CPU grew by {} s, the ended backend alone used {used} s",
            after - before
        );
    }
}
