//! What the consumer counts: Prometheus metrics through the `metrics` facade, and the same
//! protocol events in [`ConsumerStats`] so tests (and the caller) can assert effects without a
//! global recorder.
//!
//! Metric names (DESIGN.md, issue #4): `tgingest_records_consumed_total`,
//! `tgingest_rows_written_total{table}`, `tgingest_batch_records`, `tgingest_batch_seconds`,
//! `tgingest_partition_lag{partition}`, `tgingest_dead_letters_total{class}`,
//! `tgingest_rebalances_total{kind}`, `tgingest_fenced_writes_total`,
//! `tgingest_offset_gaps_total`, plus `tgingest_commit_unknown_total{outcome}`,
//! `tgingest_transient_errors_total`, `tgingest_stray_messages_total`, the gauge
//! `tgingest_consumer_inflight_reserved_bytes` (set by the in-flight budget), and for liveness
//! (issue #14): `tgingest_consumer_reowned_total{reason}` (older_epoch, missing_row,
//! newer_epoch_unmoved), `tgingest_consumer_transaction_deadlines_total`,
//! `tgingest_consumer_timeout_halvings_total` and `tgingest_consumer_record_timeouts_total` (a
//! single record timing out: alert on it).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Protocol events of one consumer (all partitions, all workers), monotonically counted.
#[derive(Debug, Default)]
pub struct ConsumerStats {
    pub records_consumed: AtomicU64,
    pub batches_committed: AtomicU64,
    pub dead_letters: AtomicU64,
    pub fenced_writes: AtomicU64,
    pub rewinds_followed: AtomicU64,
    pub offset_gaps: AtomicU64,
    pub commit_unknown_committed: AtomicU64,
    pub commit_unknown_aborted: AtomicU64,
    pub transient_errors: AtomicU64,
    pub assignments: AtomicU64,
    pub revocations: AtomicU64,
    /// Partitions this process took back after the database went back in time (a restore, a
    /// deleted row) or a stale newer epoch stayed unmoved for a session timeout.
    pub reowned: AtomicU64,
    /// Batch transactions abandoned at their client-side deadline.
    pub deadlines_expired: AtomicU64,
    /// Times a batch was halved after a statement timeout.
    pub timeout_halvings: AtomicU64,
    /// Times a single record's write timed out (retried, alerted, never dead-lettered).
    pub record_timeouts: AtomicU64,
}

impl ConsumerStats {
    /// A snapshot of one counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub(crate) fn batch_committed(&self, records: usize, elapsed: Duration) {
        self.records_consumed
            .fetch_add(records as u64, Ordering::Relaxed);
        self.batches_committed.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("tgingest_records_consumed_total").increment(records as u64);
        metrics::histogram!("tgingest_batch_records").record(records as f64);
        metrics::histogram!("tgingest_batch_seconds").record(elapsed.as_secs_f64());
    }

    pub(crate) fn rows_written(&self, table: &'static str, rows: u64) {
        metrics::counter!("tgingest_rows_written_total", "table" => table).increment(rows);
    }

    pub(crate) fn dead_letter(&self, class: &str) {
        self.dead_letters.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("tgingest_dead_letters_total", "class" => class.to_owned()).increment(1);
    }

    pub(crate) fn fenced(&self) {
        self.fenced_writes.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("tgingest_fenced_writes_total").increment(1);
    }

    pub(crate) fn rewind_followed(&self) {
        self.rewinds_followed.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("tgingest_rewinds_total").increment(1);
    }

    pub(crate) fn offset_gap(&self) {
        self.offset_gaps.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("tgingest_offset_gaps_total").increment(1);
    }

    pub(crate) fn commit_unknown(&self, committed: bool) {
        let (counter, outcome) = if committed {
            (&self.commit_unknown_committed, "committed")
        } else {
            (&self.commit_unknown_aborted, "aborted")
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("tgingest_commit_unknown_total", "outcome" => outcome).increment(1);
    }

    pub(crate) fn transient_error(&self) {
        self.transient_errors.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("tgingest_transient_errors_total").increment(1);
    }

    pub(crate) fn rebalance(&self, kind: &'static str, partitions: usize) {
        let counter = if kind == "assign" {
            &self.assignments
        } else {
            &self.revocations
        };
        counter.fetch_add(partitions as u64, Ordering::Relaxed);
        metrics::counter!("tgingest_rebalances_total", "kind" => kind).increment(1);
    }

    pub(crate) fn reowned(&self, reason: &'static str) {
        self.reowned.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("tgingest_consumer_reowned_total", "reason" => reason).increment(1);
    }

    pub(crate) fn deadline_expired(&self) {
        self.deadlines_expired.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("tgingest_consumer_transaction_deadlines_total").increment(1);
    }

    pub(crate) fn timeout_halving(&self) {
        self.timeout_halvings.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("tgingest_consumer_timeout_halvings_total").increment(1);
    }

    pub(crate) fn record_timeout(&self) {
        self.record_timeouts.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("tgingest_consumer_record_timeouts_total").increment(1);
    }

    pub(crate) fn lag(&self, partition: i32, lag: i64) {
        metrics::gauge!("tgingest_partition_lag", "partition" => partition.to_string())
            .set(lag.max(0) as f64);
    }

    pub(crate) fn stray_message(&self) {
        metrics::counter!("tgingest_stray_messages_total").increment(1);
    }
}
