//! The batch transaction protocol (DESIGN.md §5.2, §5.4, §5.8): begin, the fenced offset update,
//! COMMIT with resolution of an unknown outcome, and rollback.
//!
//! Guarantees:
//! - the offset moves only from exactly the (next_offset, owner_epoch, rewind_seq) the worker
//!   holds; otherwise the stored row is re-read inside the still-open transaction to tell a fence
//!   ([`WriteError::Fenced`]) from a rewind or a landed earlier commit ([`WriteError::Moved`]);
//! - every statement is bounded by `SET LOCAL statement_timeout`, a frozen client's transaction
//!   is ended by the server, and every failure path ends in ROLLBACK or a closed connection
//!   ([`release_after_error`]), so no pooled connection is ever left in an open transaction;
//! - a COMMIT whose reply is lost is resolved with `pg_xact_status` of the transaction id noted at
//!   BEGIN, on another connection — never guessed;
//! - a transaction still open at its client-side deadline ([`crate::transaction::deadline`]) is
//!   abandoned ([`FencedTransactions::abandon`]): its connection is dropped unawaited, its backend
//!   (the pid noted at BEGIN) is terminated from a fresh connection so its row locks go now, and a
//!   COMMIT already sent is resolved like a lost reply. A silently dropped connection therefore
//!   holds a worker for at most the deadline plus one fresh connection's round trips.
//!
//! The `consumer::commit_connection_lost` failpoint opens the lost-reply window here.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::{Connection as _, Executor, PgConnection, PgPool, Postgres};
use tokio::time::timeout_at;

use crate::classify::{ErrorClass, classify, is_connection_loss, must_close_connection};
use crate::failpoints;
use crate::offsets::{self, Ownership, StoredOffset};
use crate::stats::ConsumerStats;
use crate::transaction;

/// Why a write did not commit.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Another owner took the partition (its epoch is in the stored row): stop working it.
    #[error("fenced by a newer owner ({stored:?})")]
    Fenced { stored: Option<StoredOffset> },
    /// Same owner, but the stored position moved (a replay bumped `rewind_seq`, or an earlier
    /// commit of unknown outcome landed): continue from the stored row.
    #[error("stored offset moved ({stored:?})")]
    Moved { stored: StoredOffset },
    /// Retry the same work later.
    #[error("transient database error: {0}")]
    Transient(sqlx::Error),
    /// The same work fails the same way.
    #[error("deterministic database error: {0}")]
    Deterministic(sqlx::Error),
}

impl WriteError {
    pub(super) fn from_sqlx(error: sqlx::Error) -> Self {
        match classify(&error) {
            ErrorClass::Transient => WriteError::Transient(error),
            ErrorClass::Deterministic => WriteError::Deterministic(error),
        }
    }

    /// Whether the connection that returned this error must be closed, not pooled.
    fn must_close_connection(&self) -> bool {
        match self {
            WriteError::Transient(e) | WriteError::Deterministic(e) => must_close_connection(e),
            WriteError::Fenced { .. } | WriteError::Moved { .. } => false,
        }
    }

    /// Whether the write timed out (statement timeout, transaction deadline): the batch is
    /// halved, and a single record is retried, never dead-lettered.
    pub fn is_timeout(&self) -> bool {
        matches!(self, WriteError::Transient(e) if crate::classify::is_timeout(e))
    }
}

/// What identifies an open transaction to the unknown-COMMIT resolution.
#[derive(Debug)]
pub(super) struct TransactionIds {
    /// `pg_current_xact_id()` as text.
    xid: String,
    /// The backend serving it (the failpoint terminates it).
    pid: i32,
}

/// How long the unknown-COMMIT resolution keeps asking before handing the question to the CAS.
const RESOLVE_DEADLINE: Duration = Duration::from_secs(60);

/// How long an abandoned transaction's clean-up may wait for a fresh connection, and for its
/// backend to exit once terminated.
const FRESH_CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens, fences and commits the batch transactions of one consumer group and topic.
#[derive(Debug, Clone)]
pub(super) struct FencedTransactions {
    pool: PgPool,
    group_id: Arc<str>,
    topic: Arc<str>,
    statement_timeout: Duration,
    /// The client-side deadline of one batch transaction, BEGIN to COMMIT.
    deadline: Duration,
    stats: Arc<ConsumerStats>,
}

impl FencedTransactions {
    pub(super) fn new(
        pool: PgPool,
        group_id: Arc<str>,
        topic: Arc<str>,
        statement_timeout: Duration,
        stats: Arc<ConsumerStats>,
    ) -> Self {
        Self {
            pool,
            group_id,
            topic,
            statement_timeout,
            deadline: transaction::deadline(statement_timeout),
            stats,
        }
    }

    /// The client-side deadline of one batch transaction.
    pub(super) fn deadline(&self) -> Duration {
        self.deadline
    }

    /// When a transaction begun now must have ended.
    pub(super) fn deadline_from_now(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.deadline
    }

    pub(super) async fn acquire(&self) -> Result<PoolConnection<Postgres>, WriteError> {
        self.pool.acquire().await.map_err(WriteError::Transient)
    }

    /// BEGIN, the statement and idle timeouts, and the ids needed to resolve an unknown COMMIT.
    pub(super) async fn begin(
        &self,
        conn: &mut PgConnection,
    ) -> Result<TransactionIds, sqlx::Error> {
        // The writer holds its partition's offsets row lock until COMMIT: the server ends the
        // transaction of a writer frozen mid-batch, which would otherwise block the next owner's
        // ownership statement.
        transaction::begin(conn, self.statement_timeout).await?;
        let (xid, pid) = sqlx::query_as("SELECT pg_current_xact_id()::text, pg_backend_pid()")
            .fetch_one(conn)
            .await?;
        Ok(TransactionIds { xid, pid })
    }

    /// The fenced offset update; on zero rows, re-reads the row (inside the still-open
    /// transaction, which sees the latest committed row) to say why.
    pub(super) async fn advance_or_explain(
        &self,
        conn: &mut PgConnection,
        owner: &Ownership,
        end: i64,
        last_record_sha256: Option<&[u8; 32]>,
    ) -> Result<(), WriteError> {
        if offsets::advance(
            conn,
            &self.group_id,
            &self.topic,
            owner,
            end,
            last_record_sha256,
        )
        .await
        .map_err(WriteError::from_sqlx)?
        {
            return Ok(());
        }
        let stored = offsets::read(&mut *conn, &self.group_id, &self.topic, owner.partition)
            .await
            .map_err(WriteError::from_sqlx)?;
        match stored {
            Some(stored) if stored.owner_epoch == owner.owner_epoch => {
                Err(WriteError::Moved { stored })
            }
            stored => Err(WriteError::Fenced { stored }),
        }
    }

    /// Sends COMMIT by `deadline`; a lost reply is resolved with `pg_xact_status`.
    pub(super) async fn commit(
        &self,
        mut conn: PoolConnection<Postgres>,
        ids: &TransactionIds,
        deadline: tokio::time::Instant,
    ) -> Result<(), WriteError> {
        let TransactionIds { xid, pid } = ids;
        let xid = xid.as_str();
        let sent = timeout_at(deadline, self.send_commit(&mut conn, *pid)).await;
        let Ok(result) = sent else {
            return self.abandon(conn, Some(ids), true).await;
        };
        let error = match result {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        if !is_connection_loss(&error) {
            // The server answered COMMIT with an error: the transaction rolled back.
            let e = WriteError::from_sqlx(error);
            release_after_error(conn, &e).await;
            return Err(e);
        }
        conn.close_on_drop();
        drop(conn);
        tracing::warn!(
            xid,
            "connection lost during COMMIT: resolving with pg_xact_status ({error})"
        );
        let committed = self.resolve(xid).await;
        self.resolved(xid, committed, error)
    }

    /// COMMIT on `conn`; the `consumer::commit_connection_lost` failpoint loses its reply.
    async fn send_commit(
        &self,
        conn: &mut PoolConnection<Postgres>,
        pid: i32,
    ) -> Result<(), sqlx::Error> {
        match failpoints::hit("consumer::commit_connection_lost").await {
            Some(way) if way.trim() == "after" => {
                let committed = conn.execute("COMMIT").await;
                if committed.is_ok() {
                    self.terminate_backend(pid).await;
                    Err(sqlx::Error::Io(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "failpoint: COMMIT reply lost",
                    )))
                } else {
                    committed.map(|_| ())
                }
            }
            Some(_) => {
                self.terminate_backend(pid).await;
                conn.execute("COMMIT").await.map(|_| ())
            }
            None => conn.execute("COMMIT").await.map(|_| ()),
        }
    }

    /// Gives up a transaction past its deadline: drops its connection unawaited (it may be
    /// silently dead), terminates its backend from a fresh connection so its locks go now, and,
    /// when COMMIT was sent, resolves the outcome (`Ok` when it landed). Without `ids` (BEGIN did
    /// not finish) nothing was written and the server ends the session by its idle timeout.
    pub(super) async fn abandon(
        &self,
        conn: PoolConnection<Postgres>,
        ids: Option<&TransactionIds>,
        commit_sent: bool,
    ) -> Result<(), WriteError> {
        transaction::abandon(conn);
        self.stats.deadline_expired();
        let expired = || WriteError::Transient(transaction::deadline_expired(self.deadline));
        let Some(TransactionIds { xid, pid }) = ids else {
            tracing::error!(deadline = ?self.deadline, "BEGIN outlived the transaction deadline: connection abandoned");
            return Err(expired());
        };
        tracing::error!(
            deadline = ?self.deadline,
            pid,
            xid,
            commit_sent,
            "batch transaction outlived its deadline: connection abandoned, terminating its backend"
        );
        let fresh = tokio::time::timeout(
            FRESH_CONNECTION_TIMEOUT,
            PgConnection::connect_with(&self.pool.connect_options()),
        )
        .await;
        let mut fresh = match fresh {
            Ok(Ok(fresh)) => Some(fresh),
            Ok(Err(e)) => {
                tracing::warn!(pid, "no fresh connection to terminate the backend: {e}");
                None
            }
            Err(_) => {
                tracing::warn!(pid, "no fresh connection to terminate the backend in time");
                None
            }
        };
        let mut status = None;
        if let Some(conn) = fresh.as_mut() {
            let wait_ms = i64::try_from(FRESH_CONNECTION_TIMEOUT.as_millis()).unwrap_or(i64::MAX);
            let settled = tokio::time::timeout(FRESH_CONNECTION_TIMEOUT * 2, async {
                sqlx::query("SELECT pg_terminate_backend($1, $2)")
                    .bind(*pid)
                    .bind(wait_ms)
                    .execute(&mut *conn)
                    .await?;
                sqlx::query_scalar::<_, Option<String>>("SELECT pg_xact_status($1::xid8)")
                    .bind(xid.as_str())
                    .fetch_one(&mut *conn)
                    .await
            })
            .await;
            match settled {
                Ok(Ok(s)) => status = s,
                Ok(Err(e)) => tracing::warn!(pid, "terminating the abandoned backend failed: {e}"),
                Err(_) => tracing::warn!(pid, "terminating the abandoned backend timed out"),
            }
        }
        if let Some(conn) = fresh {
            let _ = tokio::time::timeout(FRESH_CONNECTION_TIMEOUT, conn.close()).await;
        }
        if !commit_sent {
            return Err(expired());
        }
        let committed = match status.as_deref() {
            Some("committed") => Some(true),
            Some("aborted") => Some(false),
            _ => self.resolve(xid).await,
        };
        self.resolved(xid, committed, transaction::deadline_expired(self.deadline))
    }

    /// What the resolution of a COMMIT of unknown outcome means for the write: `Ok` when it
    /// landed, else `error` for a retry. A still unknown outcome is retried too: the fenced
    /// offset update refuses a second apply and the worker then follows the stored row.
    fn resolved(
        &self,
        xid: &str,
        committed: Option<bool>,
        error: sqlx::Error,
    ) -> Result<(), WriteError> {
        match committed {
            Some(true) => {
                self.stats.commit_unknown(true);
                tracing::info!(xid, "the COMMIT of unknown outcome had landed");
                Ok(())
            }
            Some(false) => {
                self.stats.commit_unknown(false);
                tracing::info!(
                    xid,
                    "the COMMIT of unknown outcome had not landed: redoing the batch"
                );
                Err(WriteError::Transient(error))
            }
            None => Err(WriteError::Transient(error)),
        }
    }

    /// `Some(true)` committed, `Some(false)` aborted, `None` still unknown at the deadline.
    async fn resolve(&self, xid: &str) -> Option<bool> {
        let deadline = Instant::now() + RESOLVE_DEADLINE;
        let mut attempt = 0u32;
        loop {
            let status: Result<Option<String>, sqlx::Error> =
                sqlx::query_scalar("SELECT pg_xact_status($1::xid8)")
                    .bind(xid)
                    .fetch_one(&self.pool)
                    .await;
            match status.as_ref().map(Option::as_deref) {
                Ok(Some("committed")) => return Some(true),
                Ok(Some("aborted")) => return Some(false),
                // "in progress": the old backend has not finished yet.
                Ok(other) => tracing::debug!(xid, ?other, "commit outcome not known yet"),
                Err(e) => tracing::warn!(xid, "cannot ask for the commit outcome yet: {e}"),
            }
            if Instant::now() >= deadline {
                tracing::error!(
                    xid,
                    "commit outcome still unknown after {RESOLVE_DEADLINE:?}"
                );
                return None;
            }
            attempt += 1;
            tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt.min(20)))).await;
        }
    }

    async fn terminate_backend(&self, pid: i32) {
        // The timeout argument (PostgreSQL 14+) waits until the backend is gone, so the COMMIT
        // sent next cannot overtake the signal.
        let result = sqlx::query("SELECT pg_terminate_backend($1, 10000)")
            .bind(pid)
            .execute(&self.pool)
            .await;
        if let Err(e) = result {
            tracing::warn!(pid, "failpoint: could not terminate the backend: {e}");
        }
    }
}

/// Ends a failed transaction explicitly (see [`transaction::roll_back`]): the connection is
/// closed instead when `error` means it is gone or cannot write.
pub(super) async fn release_after_error(conn: PoolConnection<Postgres>, error: &WriteError) {
    transaction::roll_back(conn, error.must_close_connection()).await;
}
