//! PostgreSQL connections over TCP set `TCP_NODELAY`, TCP keepalives and `TCP_USER_TIMEOUT`.
//! sqlx 0.9.0 sets none of them; the workspace patches it (vendor/README.md). Without
//! `TCP_NODELAY` a round trip of the extended query protocol can wait up to 40 ms for a delayed
//! ACK, which cut the consumer's throughput over TCP by more than half; without keepalives and
//! the user timeout a silently dropped connection is waited on for hours. This test fails if an
//! sqlx upgrade drops the patch without the upstream fix.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use rustix::process::{PidfdFlags, PidfdGetfdFlags, getpid, pidfd_getfd, pidfd_open};
use sqlx::Connection;

#[tokio::test]
async fn tcp_connections_to_postgres_disable_nagle_and_detect_a_dead_peer() {
    let url = testkit::pg::server_url();
    let port = url::Url::parse(&url).unwrap().port().unwrap_or(5432);
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("SELECT 1").execute(&mut conn).await.unwrap();

    // The connection's socket is one of this process's sockets whose peer is the server's port;
    // pidfd_getfd duplicates each descriptor so it can be inspected without unsafe code.
    let me = pidfd_open(getpid(), PidfdFlags::empty()).unwrap();
    let mut checked = 0;
    for entry in std::fs::read_dir("/proc/self/fd").unwrap() {
        let entry = entry.unwrap();
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let target = std::fs::read_link(entry.path()).unwrap_or_default();
        if !target.to_string_lossy().starts_with("socket:") {
            continue;
        }
        let Ok(socket) = pidfd_getfd(&me, fd, PidfdGetfdFlags::empty()) else {
            continue;
        };
        let peer = rustix::net::getpeername(&socket)
            .ok()
            .flatten()
            .and_then(|addr| SocketAddr::try_from(addr).ok());
        if peer.map(|p| p.port()) != Some(port) {
            continue;
        }
        assert!(
            rustix::net::sockopt::tcp_nodelay(&socket).unwrap(),
            "a PostgreSQL connection has Nagle's algorithm on (TCP_NODELAY unset)"
        );
        assert!(
            rustix::net::sockopt::socket_keepalive(&socket).unwrap(),
            "a PostgreSQL connection has no TCP keepalive"
        );
        assert_eq!(
            rustix::net::sockopt::tcp_keepidle(&socket).unwrap(),
            Duration::from_secs(10),
            "keepalive probes start after 10 s idle"
        );
        assert_eq!(
            rustix::net::sockopt::tcp_user_timeout(&socket).unwrap(),
            30_000,
            "unacknowledged data ends a PostgreSQL connection after 30 s (TCP_USER_TIMEOUT, ms)"
        );
        checked += 1;
    }
    assert!(
        checked > 0,
        "found no TCP socket to PostgreSQL on port {port}"
    );
    conn.close().await.unwrap();
}
