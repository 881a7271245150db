//! How every consumer transaction on a pooled connection begins and how a failed one ends
//! (DESIGN.md §5.8): the offset store's and the batch writer's transactions share these two steps.
//!
//! Guarantees: [`begin`] bounds every statement of the transaction by `SET LOCAL
//! statement_timeout` (and, when asked, ends the transaction of a client that stops sending);
//! [`roll_back`] ends a failed transaction explicitly — ROLLBACK on a healthy connection, or
//! closing the connection when it is gone or ROLLBACK fails — so the pool never gets a
//! connection back mid-transaction.

use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::{AssertSqlSafe, Executor, PgConnection, Postgres};

/// What ends a transaction whose client stopped sending statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IdleClient {
    /// Only the connection's own settings (a short transaction that holds no hot lock).
    Tolerated,
    /// The server ends the transaction after twice the statement timeout of idleness: a client
    /// frozen mid-transaction (SIGSTOP, a VM pause) must not hold its locks for as long as the
    /// freeze lasts.
    EndedAfterTwiceTheStatementTimeout,
}

/// BEGIN with every statement bounded by `statement_timeout`, in one round trip.
pub(crate) async fn begin(
    conn: &mut PgConnection,
    statement_timeout: Duration,
    idle: IdleClient,
) -> Result<(), sqlx::Error> {
    let timeout_ms = statement_timeout.as_millis().max(1);
    let sql = match idle {
        IdleClient::Tolerated => format!("BEGIN; SET LOCAL statement_timeout = {timeout_ms}"),
        IdleClient::EndedAfterTwiceTheStatementTimeout => {
            let idle_ms = timeout_ms.saturating_mul(2);
            format!(
                "BEGIN; SET LOCAL statement_timeout = {timeout_ms}; \
                 SET LOCAL idle_in_transaction_session_timeout = {idle_ms}"
            )
        }
    };
    conn.execute(AssertSqlSafe(sql)).await.map(drop)
}

/// Ends a failed transaction: ROLLBACK on a healthy connection, or closing the connection when it
/// is lost (`connection_lost`) or ROLLBACK fails or hangs.
pub(crate) async fn roll_back(mut conn: PoolConnection<Postgres>, connection_lost: bool) {
    if connection_lost {
        conn.close_on_drop();
        return;
    }
    match tokio::time::timeout(Duration::from_secs(10), conn.execute("ROLLBACK")).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::warn!("ROLLBACK failed, closing the connection: {e}");
            conn.close_on_drop();
        }
        Err(_) => {
            tracing::warn!("ROLLBACK timed out, closing the connection");
            conn.close_on_drop();
        }
    }
}
