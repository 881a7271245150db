//! The batch writer: one PostgreSQL transaction per batch holding its rows, its dead letters and
//! the fenced advance of the partition's offset (DESIGN.md §5.2, §5.4, §5.8, §6).
//!
//! Split by concern: `prepare` turns a record into rows or a dead-letter class (pure);
//! `tables` holds the SQL of a record's effect, the one `raw_updates`/`dead_letters` writer
//! that the dead-letter redrive shares; `protocol` runs the transaction (begin, fenced offset
//! update, COMMIT with unknown-outcome resolution, rollback). This module splits batches.
//!
//! Guarantees:
//! - a batch's effect and its offset commit together or not at all; the offset moves only from
//!   exactly the (next_offset, owner_epoch, rewind_seq) the worker holds, else the transaction is
//!   rolled back explicitly and the stored row is re-read to tell a fence from a rewind;
//! - no future is dropped inside a transaction: every statement is bounded by `SET LOCAL
//!   statement_timeout`, every failure path sends ROLLBACK (or closes the connection when
//!   ROLLBACK cannot be sent), so no pooled connection is ever left in an open transaction;
//! - a COMMIT whose reply is lost is resolved with `pg_xact_status` of the transaction id noted
//!   before COMMIT, on another connection — never guessed;
//! - every batch transaction ends by its client-side deadline (twice the statement timeout): past
//!   it the connection is abandoned and its backend terminated (`protocol`), and the write fails
//!   as a timeout;
//! - a deterministic error splits the batch in halves, each its own transaction, down to the
//!   single record, which is retried without its `jsonb` payload and then dead-lettered with the
//!   SQLSTATE; a transient error (a timeout included: the worker halves the batch) is returned to
//!   the caller unchanged for retry.

mod prepare;
mod protocol;
mod tables;

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{Executor, PgPool};
use tokio::time::timeout_at;

pub use prepare::{Content, DatabaseErrorClass, DeadLetterClass, PreparedRecord};
pub use protocol::WriteError;
pub use tables::{JsonbPayload, Letter, RecordWriter};

use crate::failpoints;
use crate::offsets::Ownership;
use crate::projection::ProjectionSchema;
use crate::stats::ConsumerStats;
use protocol::{FencedTransactions, release_after_error};
use tables::Plan;

/// What one committed write (possibly several split transactions) did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WriteSummary {
    pub records: usize,
    pub dead_letters: usize,
    pub transactions: usize,
}

/// Writes batches of one topic for one consumer group.
#[derive(Debug, Clone)]
pub struct BatchWriter {
    transactions: FencedTransactions,
    group_id: Arc<str>,
    topic: Arc<str>,
    processor_version: i32,
    schema: Arc<ProjectionSchema>,
    stats: Arc<ConsumerStats>,
}

impl BatchWriter {
    pub fn new(
        pool: PgPool,
        group_id: &str,
        topic: &str,
        statement_timeout: Duration,
        processor_version: i32,
        schema: Arc<ProjectionSchema>,
        stats: Arc<ConsumerStats>,
    ) -> Self {
        let group_id: Arc<str> = group_id.into();
        let topic: Arc<str> = topic.into();
        Self {
            transactions: FencedTransactions::new(
                pool,
                group_id.clone(),
                topic.clone(),
                statement_timeout,
                stats.clone(),
            ),
            group_id,
            topic,
            processor_version,
            schema,
            stats,
        }
    }

    /// Writes `records` (contiguous, the first at `owner.next_offset`) and advances the offset
    /// past them, splitting on deterministic errors. On success and on error, `owner.next_offset`
    /// is where the stored offset now is: records below it are done.
    pub async fn write(
        &self,
        owner: &mut Ownership,
        records: &[PreparedRecord],
    ) -> Result<WriteSummary, WriteError> {
        let mut summary = WriteSummary::default();
        // Ranges still to write, the earliest last (so `pop` keeps offset order).
        let mut pending: Vec<std::ops::Range<usize>> = Vec::with_capacity(8);
        pending.push(0..records.len());
        while let Some(range) = pending.pop() {
            let part = &records[range.clone()];
            if part.is_empty() {
                continue;
            }
            match self.transact(owner, part, Plan::Normal).await {
                Ok(()) => {
                    summary.records += part.len();
                    summary.dead_letters += part
                        .iter()
                        .filter(|r| matches!(r.content, Content::Rejected { .. }))
                        .count();
                    summary.transactions += 1;
                }
                Err(WriteError::Deterministic(error)) if part.len() > 1 => {
                    tracing::warn!(
                        partition = owner.partition,
                        first_offset = part[0].record.offset,
                        records = part.len(),
                        error = %error,
                        "deterministic error: splitting the batch"
                    );
                    let mid = range.start + part.len() / 2;
                    pending.push(mid..range.end);
                    pending.push(range.start..mid);
                }
                Err(WriteError::Deterministic(error)) => {
                    let dead = self.isolate(owner, &part[0], error).await?;
                    summary.records += 1;
                    summary.dead_letters += usize::from(dead);
                    summary.transactions += 1;
                }
                Err(other) => return Err(other),
            }
        }
        Ok(summary)
    }

    /// The last steps for one record that fails deterministically: without `jsonb`, then as a
    /// dead letter. Returns whether it became a dead letter.
    async fn isolate(
        &self,
        owner: &mut Ownership,
        record: &PreparedRecord,
        error: sqlx::Error,
    ) -> Result<bool, WriteError> {
        let single = std::slice::from_ref(record);
        let mut error = error;
        if matches!(record.content, Content::Update(_)) {
            match self.transact(owner, single, Plan::WithoutJsonb).await {
                Ok(()) => {
                    tracing::warn!(
                        partition = owner.partition,
                        offset = record.record.offset,
                        "record stored without its jsonb payload after a deterministic error: {error}"
                    );
                    return Ok(false);
                }
                Err(WriteError::Deterministic(e)) => error = e,
                Err(other) => return Err(other),
            }
        }
        let class = DeadLetterClass::database(&error);
        let text = error.to_string();
        tracing::error!(
            partition = owner.partition,
            offset = record.record.offset,
            class = class.as_str(),
            "record dead-lettered after a deterministic database error: {text}"
        );
        match self
            .transact(
                owner,
                single,
                Plan::DeadLetter {
                    class: &class,
                    text: &text,
                },
            )
            .await
        {
            Ok(()) => Ok(true),
            // A dead letter that cannot be written must not be skipped: stall and shout.
            Err(WriteError::Deterministic(e)) => {
                tracing::error!(
                    partition = owner.partition,
                    offset = record.record.offset,
                    "cannot write the dead letter: {e}"
                );
                Err(WriteError::Transient(e))
            }
            Err(other) => Err(other),
        }
    }

    /// Records a persisting offset gap and moves the stored offset over it, in one fenced
    /// transaction.
    pub async fn record_gap(
        &self,
        owner: &mut Ownership,
        first_offset_seen: i64,
    ) -> Result<(), WriteError> {
        let mut conn = self.transactions.acquire().await?;
        let result: Result<(), WriteError> = async {
            self.transactions
                .begin(&mut conn)
                .await
                .map_err(WriteError::from_sqlx)?;
            tables::insert_offset_gap(
                &mut conn,
                &self.group_id,
                &self.topic,
                owner.partition,
                owner.next_offset,
                first_offset_seen,
            )
            .await
            .map_err(WriteError::from_sqlx)?;
            self.transactions
                .advance_or_explain(&mut conn, owner, first_offset_seen)
                .await?;
            conn.execute("COMMIT")
                .await
                .map_err(WriteError::from_sqlx)?;
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                owner.next_offset = first_offset_seen;
                self.stats.offset_gap();
                Ok(())
            }
            Err(e) => {
                // A COMMIT error here leaves the outcome unknown; the next CAS resolves it (a
                // landed gap record moves the stored offset, which the worker then follows).
                release_after_error(conn, &e).await;
                Err(e)
            }
        }
    }

    /// One transaction over `records`. On success `owner.next_offset` is the end of the records.
    async fn transact(
        &self,
        owner: &mut Ownership,
        records: &[PreparedRecord],
        plan: Plan<'_>,
    ) -> Result<(), WriteError> {
        let started = Instant::now();
        let end = records
            .last()
            .map_or(owner.next_offset, |r| r.record.offset + 1);
        let mut conn = self.transactions.acquire().await?;
        let deadline = self.transactions.deadline_from_now();
        let ids = match timeout_at(deadline, self.transactions.begin(&mut conn)).await {
            Ok(Ok(ids)) => ids,
            Ok(Err(e)) => {
                let e = WriteError::from_sqlx(e);
                release_after_error(conn, &e).await;
                return Err(e);
            }
            Err(_) => return self.transactions.abandon(conn, None, false).await,
        };
        let rows = RecordWriter::new(
            &self.topic,
            owner.partition,
            self.processor_version,
            &self.schema,
        );
        let body = timeout_at(deadline, async {
            let written = rows
                .write_batch(&mut conn, records, plan)
                .await
                .map_err(WriteError::from_sqlx)?;
            failpoints::delay("consumer::before_offset_update").await;
            self.transactions
                .advance_or_explain(&mut conn, owner, end)
                .await?;
            failpoints::delay("consumer::before_commit").await;
            Ok::<_, WriteError>(written)
        })
        .await;
        let written = match body {
            Ok(Ok(written)) => written,
            Ok(Err(e)) => {
                if let WriteError::Fenced {
                    stored: Some(stored),
                } = &e
                    && stored.owner_epoch > owner.owner_epoch
                {
                    self.stats.fenced();
                }
                release_after_error(conn, &e).await;
                return Err(e);
            }
            Err(_) => {
                // Past the deadline nothing was committed: the abandoned transaction is undone.
                self.transactions.abandon(conn, Some(&ids), false).await?;
                return Err(WriteError::Transient(crate::transaction::deadline_expired(
                    self.transactions.deadline(),
                )));
            }
        };
        self.transactions.commit(conn, &ids, deadline).await?;
        owner.next_offset = end;
        for (table, rows) in written {
            self.stats.rows_written(table, rows);
        }
        for record in records {
            let class = match (&plan, &record.content) {
                (Plan::DeadLetter { class, .. }, _) => Some(*class),
                (_, Content::Rejected { class, .. }) => Some(class),
                _ => None,
            };
            if let Some(class) = class {
                self.stats.dead_letter(class.as_str());
            }
        }
        self.stats.batch_committed(records.len(), started.elapsed());
        Ok(())
    }
}
