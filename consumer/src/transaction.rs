//! How every consumer transaction on a pooled connection begins and how a failed one ends
//! (DESIGN.md §5.8): the offset store's and the batch writer's transactions share these two steps.
//!
//! Guarantees: [`begin`] bounds every statement of the transaction by `SET LOCAL
//! statement_timeout` and has the server end the transaction of a client that stops sending
//! (`idle_in_transaction_session_timeout`, twice the statement timeout), so a client frozen or
//! cut off mid-transaction never keeps its row locks for longer than that;
//! [`roll_back`] ends a failed transaction explicitly — ROLLBACK on a healthy connection, or
//! closing the connection when it is gone, cannot write (25006, 57P03) or ROLLBACK fails — so the
//! pool never gets a connection back mid-transaction or connected to a node that cannot write.
//! The client side bounds a whole transaction too: [`deadline`] of its statement timeout; a
//! transaction past it is [`abandon`]ed, its connection dropped without a word (it may be
//! silently dead: a polite close, a ROLLBACK or the pool's ping would wait on it for ever).

use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::{AssertSqlSafe, Executor, PgConnection, Postgres};

/// BEGIN with every statement bounded by `statement_timeout`, in one round trip. The server ends
/// the transaction once it has been idle for twice that: every consumer transaction takes row
/// locks on `consumer_offsets` (an ownership statement its partition's row, a batch its offset
/// update), and a client frozen mid-transaction (SIGSTOP, a VM pause, a connection silently
/// black-holed, where neither side's keepalive notices) must not hold them for as long as the
/// freeze lasts, blocking every later owner and writer of the partition.
pub(crate) async fn begin(
    conn: &mut PgConnection,
    statement_timeout: Duration,
) -> Result<(), sqlx::Error> {
    let timeout_ms = statement_timeout.as_millis().max(1);
    let idle_ms = timeout_ms.saturating_mul(2);
    let sql = format!(
        "BEGIN; SET LOCAL statement_timeout = {timeout_ms}; \
         SET LOCAL idle_in_transaction_session_timeout = {idle_ms}"
    );
    conn.execute(AssertSqlSafe(sql)).await.map(drop)
}

/// The client-side deadline of a transaction whose statements are bounded by
/// `statement_timeout`: twice that (see `ConsumerConfig::transaction_deadline`).
pub(crate) fn deadline(statement_timeout: Duration) -> Duration {
    statement_timeout.saturating_mul(2)
}

/// The error a transaction past its client-side deadline ends with (a timeout, for
/// [`crate::classify::is_timeout`], and a lost connection).
pub(crate) fn deadline_expired(deadline: Duration) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("transaction deadline of {deadline:?} expired"),
    ))
}

/// Drops a connection that may be silently dead, without sending anything on it; the pool may
/// open a replacement at once.
pub(crate) fn abandon(conn: PoolConnection<Postgres>) {
    drop(conn.detach());
}

/// Ends a failed transaction: ROLLBACK on a healthy connection, or closing the connection when it
/// must not be reused (`close`: see [`crate::classify::must_close_connection`]) or ROLLBACK fails
/// or hangs.
pub(crate) async fn roll_back(mut conn: PoolConnection<Postgres>, close: bool) {
    if close {
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
