//! PostgreSQL connections over TCP set `TCP_NODELAY`. sqlx 0.9.0 does not; the workspace patches
//! it (vendor/README.md). Without the option a round trip of the extended query protocol can wait
//! up to 40 ms for a delayed ACK, which cut the consumer's throughput over TCP by more than half.
//! This test fails if an sqlx upgrade drops the patch without the upstream fix.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;

use rustix::process::{PidfdFlags, PidfdGetfdFlags, getpid, pidfd_getfd, pidfd_open};
use sqlx::Connection;

#[tokio::test]
async fn tcp_connections_to_postgres_disable_nagle() {
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
        checked += 1;
    }
    assert!(
        checked > 0,
        "found no TCP socket to PostgreSQL on port {port}"
    );
    conn.close().await.unwrap();
}
