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
//!   single record, which is retried without its `jsonb` payload (when the writer stores one,
//!   [`BatchWriter::with_jsonb`]) and then dead-lettered with the SQLSTATE; a transient error (a timeout included: the worker halves the batch) is returned to
//!   the caller unchanged for retry.
//!
//! Tracing: each transaction is a root span `batch` ([`component::trace::TARGET`]) that ends
//! after its COMMIT (`outcome` = `committed`) or its failure, linked to the producer spans of
//! its first [`MAX_BATCH_LINKS`](component::trace::MAX_BATCH_LINKS) records that carry a valid
//! `traceparent` (the rest are counted in `links_dropped`). A record without one, or with a
//! malformed one, only has no link. Without a trace exporter the span is disabled and no header
//! is read.

mod prepare;
mod protocol;
mod tables;

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{Executor, PgPool};
use tokio::time::timeout_at;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

pub use prepare::{Content, DatabaseErrorClass, DeadLetterClass, PreparedRecord};
pub use protocol::WriteError;
pub use tables::{Fate, JsonbPayload, Letter, RawShared, RecordWriter, Withheld, raw_upsert_sql};

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
    /// Where raw payloads also get their `jsonb` copy.
    jsonb: JsonbPayload,
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
            jsonb: JsonbPayload::WhereValid,
        }
    }

    /// The same writer, storing raw payloads' `jsonb` copy as `jsonb` says (by default
    /// [`JsonbPayload::WhereValid`]). With [`JsonbPayload::Never`] every batch is written as the
    /// bytes-only retry of a refused payload is.
    pub fn with_jsonb(mut self, jsonb: JsonbPayload) -> Self {
        self.jsonb = jsonb;
        self
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
        // Without the jsonb copy the record was already written as bytes only.
        if matches!(record.content, Content::Update(_)) && self.jsonb == JsonbPayload::WhereValid {
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
                owner,
                first_offset_seen,
            )
            .await
            .map_err(WriteError::from_sqlx)?;
            // The record before the new position was never read: its digest is unknown.
            self.transactions
                .advance_or_explain(&mut conn, owner, first_offset_seen, None)
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
                owner.last_record_sha256 = None;
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

    /// One transaction over `records` in its trace span (see the module header). On success
    /// `owner.next_offset` is the end of the records.
    async fn transact(
        &self,
        owner: &mut Ownership,
        records: &[PreparedRecord],
        plan: Plan<'_>,
    ) -> Result<(), WriteError> {
        let span = batch_span(owner, records);
        let result = self
            .transact_untraced(owner, records, plan)
            .instrument(span.clone())
            .await;
        span.record(
            "outcome",
            if result.is_ok() {
                "committed"
            } else {
                "failed"
            },
        );
        result
    }

    async fn transact_untraced(
        &self,
        owner: &mut Ownership,
        records: &[PreparedRecord],
        plan: Plan<'_>,
    ) -> Result<(), WriteError> {
        let started = Instant::now();
        let plan = match plan {
            Plan::Normal if self.jsonb == JsonbPayload::Never => Plan::WithoutJsonb,
            plan => plan,
        };
        let end = records
            .last()
            .map_or(owner.next_offset, |r| r.record.offset + 1);
        // What takeover compares with the log's record at `end - 1` (DESIGN.md §5.10).
        let last_record_sha256 = records.last().map(|r| r.record.value_sha256());
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
            owner.topic_incarnation,
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
                .advance_or_explain(&mut conn, owner, end, last_record_sha256.as_ref())
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
        owner.last_record_sha256 = last_record_sha256;
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

/// The trace span of one transaction over `records`: a root (a batch belongs to as many traces
/// as it has records), linked to the producer spans of up to
/// [`MAX_BATCH_LINKS`](component::trace::MAX_BATCH_LINKS) of them. Partition and offsets only:
/// nothing of the records' content.
fn batch_span(owner: &Ownership, records: &[PreparedRecord]) -> tracing::Span {
    let span = tracing::info_span!(
        target: component::trace::TARGET,
        parent: None,
        "batch",
        otel.kind = "consumer",
        partition = owner.partition,
        first_offset = records.first().map(|r| r.record.offset),
        records = records.len() as i64,
        links_dropped = tracing::field::Empty,
        outcome = tracing::field::Empty,
    );
    if span.is_disabled() {
        return span;
    }
    let mut linked = 0;
    let mut dropped = 0_i64;
    for context in records.iter().filter_map(|r| r.record.trace_context()) {
        if linked < component::trace::MAX_BATCH_LINKS {
            span.add_link(context);
            linked += 1;
        } else {
            dropped += 1;
        }
    }
    if dropped > 0 {
        span.record("links_dropped", dropped);
    }
    span
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use opentelemetry::trace::TracerProvider as _;
    use processor::wire::header;
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;
    use crate::record::ConsumedRecord;

    fn prepared(offset: i64, traceparent: Option<&[u8]>) -> PreparedRecord {
        PreparedRecord {
            record: ConsumedRecord {
                topic: "t".into(),
                partition: 3,
                offset,
                key: None,
                payload: Some(b"{}".to_vec()),
                headers: traceparent
                    .map(|v| vec![(header::TRACEPARENT.to_owned(), Some(v.to_vec()))])
                    .unwrap_or_default(),
                timestamp_ms: None,
            },
            content: Content::Rejected {
                class: DeadLetterClass::NoBotId,
                text: String::new(),
            },
        }
    }

    fn traceparent(n: u64) -> Vec<u8> {
        format!("00-{:032x}-{:016x}-01", n + 1, n + 1).into_bytes()
    }

    #[test]
    fn a_batch_span_links_to_at_most_the_cap_and_skips_records_without_valid_context() {
        let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let cap = component::trace::MAX_BATCH_LINKS as u64;
        let mut records = vec![prepared(100, None), prepared(101, Some(b"garbage"))];
        records.extend((0..cap + 6).map(|n| prepared(102 + n as i64, Some(&traceparent(n)))));
        let owner = Ownership {
            partition: 3,
            next_offset: 100,
            owner_epoch: 1,
            rewind_seq: 0,
            topic_incarnation: 0,
            last_record_sha256: None,
        };
        tracing::subscriber::with_default(subscriber, || {
            let span = batch_span(&owner, &records);
            span.record("outcome", "committed");
        });
        let spans = exporter.get_finished_spans().unwrap();
        assert_eq!(spans.len(), 1);
        let span = &spans[0];
        assert_eq!(span.name, "batch");
        assert_eq!(span.span_kind, opentelemetry::trace::SpanKind::Consumer);
        let linked: Vec<String> = span
            .links
            .iter()
            .map(|l| l.span_context.span_id().to_string())
            .collect();
        let expected: Vec<String> = (0..cap).map(|n| format!("{:016x}", n + 1)).collect();
        assert_eq!(linked, expected, "the first {cap} valid contexts, in order");
        assert!(span.links.iter().all(|l| l.span_context.is_remote()));
        let attribute = |name: &str| {
            span.attributes
                .iter()
                .find(|kv| kv.key.as_str() == name)
                .map(|kv| kv.value.clone())
        };
        assert_eq!(attribute("links_dropped"), Some(6_i64.into()));
        assert_eq!(attribute("records"), Some((cap as i64 + 8).into()));
        assert_eq!(attribute("first_offset"), Some(100_i64.into()));
        assert_eq!(attribute("outcome"), Some("committed".into()));
    }

    #[test]
    fn without_a_trace_exporter_the_batch_span_is_disabled() {
        let records = vec![prepared(0, Some(&traceparent(0)))];
        let owner = Ownership {
            partition: 0,
            next_offset: 0,
            owner_epoch: 1,
            rewind_seq: 0,
            topic_incarnation: 0,
            last_record_sha256: None,
        };
        assert!(batch_span(&owner, &records).is_disabled());
    }
}
