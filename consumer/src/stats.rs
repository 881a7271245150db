//! What the consumer counts: Prometheus metrics through the `metrics` facade, and the same
//! protocol events in [`ConsumerStats`] so tests (and the caller) can assert effects without a
//! global recorder.
//!
//! Every metric name is a constant here, and [`describe`] gives each one its HELP text (a test
//! of deploy/tests checks that every metric the code emits is described). Counters and
//! histograms: `tgingest_records_consumed_total`, `tgingest_rows_written_total{table}`,
//! `tgingest_batch_records` (records per batch, 1–1000 by default), `tgingest_batch_seconds`,
//! `tgingest_dead_letters_total{class}`, `tgingest_rebalances_total{kind}`,
//! `tgingest_fenced_writes_total`, `tgingest_rewinds_total`, `tgingest_offset_gaps_total`,
//! `tgingest_commit_unknown_total{outcome}`, `tgingest_transient_errors_total`,
//! `tgingest_stray_messages_total`, for liveness (issue #14)
//! `tgingest_consumer_reowned_total{reason}` (older_epoch, missing_row, newer_epoch_unmoved),
//! `tgingest_consumer_transaction_deadlines_total`, `tgingest_consumer_timeout_halvings_total`
//! and `tgingest_consumer_record_timeouts_total` (a single record timing out: alert on it), and
//! for log anomalies (DESIGN.md §5.10) `tgingest_log_anomalies_total{kind}` (past_log_end,
//! refilled: detections). The gauge `tgingest_consumer_inflight_reserved_bytes` is set by the
//! in-flight budget.
//!
//! Per-partition gauges exist only for the partitions this process owns (issue #17): every
//! statistics interval the group calls [`ConsumerStats::refresh_partitions`], which sets them
//! for each owned partition and for no other. The process's exporter drops a
//! `tgingest_partition_*` series that has not been set for a few intervals, so a partition
//! revoked from this process (a scale-up, a rebalance, shutdown) loses its series instead of
//! showing its last value forever:
//! - `tgingest_partition_lag{partition}`: records between the stored position and the log end;
//! - `tgingest_partition_record_age_seconds{partition}`: how long the oldest record not yet
//!   written has been in Kafka (its timestamp), 0 when none waits. When that record was not
//!   fetched yet, a lower bound: the age of the oldest fetched one, or how long records have
//!   been seen waiting;
//! - `tgingest_partition_last_commit_timestamp_seconds{partition}`: Unix time of the last batch
//!   this process committed for the partition (absent before the first);
//! - `tgingest_partition_halted{partition}`: 1 while this process holds the partition halted on
//!   an open log anomaly, 0 otherwise.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub(crate) const RECORDS_CONSUMED: &str = "tgingest_records_consumed_total";
pub(crate) const ROWS_WRITTEN: &str = "tgingest_rows_written_total";
pub(crate) const BATCH_RECORDS: &str = "tgingest_batch_records";
pub(crate) const BATCH_SECONDS: &str = "tgingest_batch_seconds";
pub(crate) const DEAD_LETTERS: &str = "tgingest_dead_letters_total";
pub(crate) const FENCED_WRITES: &str = "tgingest_fenced_writes_total";
pub(crate) const REWINDS: &str = "tgingest_rewinds_total";
pub(crate) const OFFSET_GAPS: &str = "tgingest_offset_gaps_total";
pub(crate) const COMMIT_UNKNOWN: &str = "tgingest_commit_unknown_total";
pub(crate) const TRANSIENT_ERRORS: &str = "tgingest_transient_errors_total";
pub(crate) const REBALANCES: &str = "tgingest_rebalances_total";
pub(crate) const REOWNED: &str = "tgingest_consumer_reowned_total";
pub(crate) const DEADLINES: &str = "tgingest_consumer_transaction_deadlines_total";
pub(crate) const TIMEOUT_HALVINGS: &str = "tgingest_consumer_timeout_halvings_total";
pub(crate) const RECORD_TIMEOUTS: &str = "tgingest_consumer_record_timeouts_total";
pub(crate) const LOG_ANOMALIES: &str = "tgingest_log_anomalies_total";
pub(crate) const STRAY_MESSAGES: &str = "tgingest_stray_messages_total";
pub(crate) const INFLIGHT_RESERVED: &str = "tgingest_consumer_inflight_reserved_bytes";
pub(crate) const PARTITION_LAG: &str = "tgingest_partition_lag";
pub(crate) const PARTITION_RECORD_AGE: &str = "tgingest_partition_record_age_seconds";
pub(crate) const PARTITION_LAST_COMMIT: &str = "tgingest_partition_last_commit_timestamp_seconds";
pub(crate) const PARTITION_HALTED: &str = "tgingest_partition_halted";

/// The prefix of every per-partition series: an exporter that drops idle series should drop
/// these (and only these), since [`ConsumerStats::refresh_partitions`] keeps the owned ones set.
pub const PARTITION_SERIES_PREFIX: &str = "tgingest_partition_";

/// Record timestamps kept per partition for the record-age gauge (records fetched at or after
/// the stored position; a worker buffers about one batch of them).
const UNWRITTEN_TIMESTAMPS_CAP: usize = 1024;

/// Registers the HELP text (and unit) of every consumer metric with the installed recorder
/// (idempotent; harmless without one).
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        RECORDS_CONSUMED,
        "Records whose effect (rows or a dead letter) was committed to PostgreSQL"
    );
    describe_counter!(ROWS_WRITTEN, "Rows written, by table");
    describe_histogram!(
        BATCH_RECORDS,
        Unit::Count,
        "Records per committed batch transaction"
    );
    describe_histogram!(
        BATCH_SECONDS,
        Unit::Seconds,
        "Time to write and commit one batch transaction"
    );
    describe_counter!(DEAD_LETTERS, "Records dead-lettered, by error class");
    describe_counter!(
        FENCED_WRITES,
        "Batches refused because another owner took the partition (fenced)"
    );
    describe_counter!(REWINDS, "Replays (moved stored offsets) a worker followed");
    describe_counter!(
        OFFSET_GAPS,
        "Offset ranges missing from the topic, recorded in offset_gaps"
    );
    describe_counter!(
        COMMIT_UNKNOWN,
        "COMMITs whose outcome was lost and resolved afterwards, by outcome"
    );
    describe_counter!(
        TRANSIENT_ERRORS,
        "Batch writes that failed transiently and were retried"
    );
    describe_counter!(REBALANCES, "Rebalance callbacks, by kind (assign, revoke)");
    describe_counter!(
        REOWNED,
        "Partitions taken back after the database went back in time or a newer epoch stayed unmoved, by reason"
    );
    describe_counter!(
        DEADLINES,
        "Batch transactions abandoned at their client-side deadline"
    );
    describe_counter!(TIMEOUT_HALVINGS, "Batches halved after a statement timeout");
    describe_counter!(
        RECORD_TIMEOUTS,
        "Single-record writes that timed out (retried, never dead-lettered)"
    );
    describe_counter!(
        LOG_ANOMALIES,
        "Logs found to differ from the one the database remembers, by kind (past_log_end, refilled)"
    );
    describe_counter!(
        STRAY_MESSAGES,
        "Records that reached the main queue instead of a partition queue (dropped)"
    );
    describe_gauge!(
        INFLIGHT_RESERVED,
        Unit::Bytes,
        "Record bytes reserved by partition workers out of CONSUMER_MAX_INFLIGHT_BYTES"
    );
    describe_gauge!(
        PARTITION_LAG,
        Unit::Count,
        "Records between the stored position and the log end, for each partition this process owns"
    );
    describe_gauge!(
        PARTITION_RECORD_AGE,
        Unit::Seconds,
        "Age of the oldest record not yet written (0: none waiting), for each partition this process owns"
    );
    describe_gauge!(
        PARTITION_LAST_COMMIT,
        Unit::Seconds,
        "Unix time of the last batch this process committed, for each partition it owns"
    );
    describe_gauge!(
        PARTITION_HALTED,
        "1 while the partition is halted on an open log anomaly, for each partition this process owns"
    );
}

/// Protocol events of one consumer (all partitions, all workers), monotonically counted, and
/// what it knows of each partition it owns now.
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
    /// Log anomalies this process detected (and recorded, or found already open).
    pub log_anomalies: AtomicU64,
    /// Partitions this process holds halted on an open log anomaly, now.
    pub halted_partitions: AtomicU64,
    /// The partitions this process owns now, with what their gauges are computed from.
    partitions: Mutex<BTreeMap<i32, Arc<PartitionProgress>>>,
}

/// What the per-partition gauges of one owned partition are computed from; fed by the
/// partition's handle (records fetched, positions published, commits) and the worker (halts).
#[derive(Debug, Default)]
pub(crate) struct PartitionProgress {
    state: Mutex<ProgressState>,
}

#[derive(Debug, Default)]
struct ProgressState {
    /// The next offset to write (the stored position this process works from).
    position: Option<i64>,
    /// The log end as the broker statistics last reported it.
    log_end: Option<i64>,
    /// Offset → timestamp (unix ms) of records fetched at or after the position: the first one
    /// is the oldest record not yet written, when it has been fetched.
    unwritten: BTreeMap<i64, i64>,
    /// Since when records have been seen waiting at this position without one being fetched.
    waiting_since: Option<Instant>,
    last_commit: Option<SystemTime>,
    halted: bool,
}

impl PartitionProgress {
    /// A record handed to the partition's worker.
    pub(crate) fn fetched(&self, offset: i64, timestamp_ms: Option<i64>) {
        let Some(timestamp_ms) = timestamp_ms else {
            return;
        };
        let mut state = lock(&self.state);
        if state.position.is_some_and(|p| offset < p) {
            return;
        }
        // Only the first keys matter: past the cap, later records wait until commits make room
        // (the age then reads the oldest one kept, a lower bound).
        if state.unwritten.len() >= UNWRITTEN_TIMESTAMPS_CAP
            && state
                .unwritten
                .last_key_value()
                .is_some_and(|(last, _)| offset > *last)
        {
            return;
        }
        state.unwritten.insert(offset, timestamp_ms);
        if state.unwritten.len() > UNWRITTEN_TIMESTAMPS_CAP {
            state.unwritten.pop_last();
        }
    }

    /// The worker's next offset to write (after a commit, a replay followed, a gap, a re-own).
    pub(crate) fn position(&self, next_offset: i64) {
        let mut state = lock(&self.state);
        if state.position != Some(next_offset) {
            state.waiting_since = None;
        }
        state.position = Some(next_offset);
        state.unwritten = state.unwritten.split_off(&next_offset);
    }

    /// A batch of the partition committed.
    pub(crate) fn committed(&self) {
        lock(&self.state).last_commit = Some(SystemTime::now());
    }

    /// Updates the log end (when the statistics know it) and sets the partition's gauges.
    fn publish(&self, partition: i32, log_end: Option<i64>, now: Instant, unix_now_ms: i64) {
        let mut state = lock(&self.state);
        if log_end.is_some() {
            state.log_end = log_end;
        }
        let lag = match (state.log_end, state.position) {
            (Some(end), Some(position)) => Some((end - position).max(0)),
            _ => None,
        };
        let waiting = lag.is_some_and(|lag| lag > 0);
        let age = if let Some((_, timestamp_ms)) = state.unwritten.first_key_value() {
            Duration::from_millis(u64::try_from(unix_now_ms - timestamp_ms).unwrap_or(0))
        } else if waiting {
            now.saturating_duration_since(*state.waiting_since.get_or_insert(now))
        } else {
            Duration::ZERO
        };
        if !waiting {
            state.waiting_since = None;
        }
        let label = partition.to_string();
        if let Some(lag) = lag {
            metrics::gauge!(PARTITION_LAG, "partition" => label.clone()).set(lag as f64);
        }
        metrics::gauge!(PARTITION_RECORD_AGE, "partition" => label.clone()).set(age.as_secs_f64());
        if let Some(at) = state.last_commit {
            let unix = at.duration_since(UNIX_EPOCH).unwrap_or_default();
            metrics::gauge!(PARTITION_LAST_COMMIT, "partition" => label.clone())
                .set(unix.as_secs_f64());
        }
        metrics::gauge!(PARTITION_HALTED, "partition" => label).set(if state.halted {
            1.0
        } else {
            0.0
        });
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain data, consistent after any panic: keep counting.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl ConsumerStats {
    /// A snapshot of one counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// The partitions this process owns now, in order.
    pub fn owned_partitions(&self) -> Vec<i32> {
        lock(&self.partitions).keys().copied().collect()
    }

    /// A partition this process took ownership of: its gauges are set from now on.
    pub(crate) fn partition_owned(&self, partition: i32) -> Arc<PartitionProgress> {
        let progress = Arc::new(PartitionProgress::default());
        lock(&self.partitions).insert(partition, progress.clone());
        progress
    }

    /// A partition this process no longer owns (revoked, lost, closed): its gauges are no longer
    /// set, so the exporter drops them.
    pub(crate) fn partition_released(&self, partition: i32) {
        lock(&self.partitions).remove(&partition);
    }

    /// Sets the gauges of every owned partition (and of no other); `log_end` gives a
    /// partition's log end when the broker statistics know it. Called every statistics interval.
    pub(crate) fn refresh_partitions(&self, log_end: impl Fn(i32) -> Option<i64>) {
        let owned: Vec<(i32, Arc<PartitionProgress>)> = lock(&self.partitions)
            .iter()
            .map(|(p, progress)| (*p, progress.clone()))
            .collect();
        let now = Instant::now();
        let unix_now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        for (partition, progress) in owned {
            progress.publish(partition, log_end(partition), now, unix_now_ms);
        }
    }

    pub(crate) fn batch_committed(&self, records: usize, elapsed: Duration) {
        self.records_consumed
            .fetch_add(records as u64, Ordering::Relaxed);
        self.batches_committed.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(RECORDS_CONSUMED).increment(records as u64);
        metrics::histogram!(BATCH_RECORDS).record(records as f64);
        metrics::histogram!(BATCH_SECONDS).record(elapsed.as_secs_f64());
    }

    pub(crate) fn rows_written(&self, table: &'static str, rows: u64) {
        metrics::counter!(ROWS_WRITTEN, "table" => table).increment(rows);
    }

    pub(crate) fn dead_letter(&self, class: &str) {
        self.dead_letters.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(DEAD_LETTERS, "class" => class.to_owned()).increment(1);
    }

    pub(crate) fn fenced(&self) {
        self.fenced_writes.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(FENCED_WRITES).increment(1);
    }

    pub(crate) fn rewind_followed(&self) {
        self.rewinds_followed.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(REWINDS).increment(1);
    }

    pub(crate) fn offset_gap(&self) {
        self.offset_gaps.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(OFFSET_GAPS).increment(1);
    }

    pub(crate) fn commit_unknown(&self, committed: bool) {
        let (counter, outcome) = if committed {
            (&self.commit_unknown_committed, "committed")
        } else {
            (&self.commit_unknown_aborted, "aborted")
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(COMMIT_UNKNOWN, "outcome" => outcome).increment(1);
    }

    pub(crate) fn transient_error(&self) {
        self.transient_errors.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(TRANSIENT_ERRORS).increment(1);
    }

    pub(crate) fn rebalance(&self, kind: &'static str, partitions: usize) {
        let counter = if kind == "assign" {
            &self.assignments
        } else {
            &self.revocations
        };
        counter.fetch_add(partitions as u64, Ordering::Relaxed);
        metrics::counter!(REBALANCES, "kind" => kind).increment(1);
    }

    pub(crate) fn reowned(&self, reason: &'static str) {
        self.reowned.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(REOWNED, "reason" => reason).increment(1);
    }

    pub(crate) fn deadline_expired(&self) {
        self.deadlines_expired.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(DEADLINES).increment(1);
    }

    pub(crate) fn timeout_halving(&self) {
        self.timeout_halvings.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(TIMEOUT_HALVINGS).increment(1);
    }

    pub(crate) fn record_timeout(&self) {
        self.record_timeouts.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(RECORD_TIMEOUTS).increment(1);
    }

    pub(crate) fn log_anomaly(&self, kind: &'static str) {
        self.log_anomalies.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(LOG_ANOMALIES, "kind" => kind).increment(1);
    }

    pub(crate) fn halted(&self, partition: i32, halted: bool) {
        if halted {
            self.halted_partitions.fetch_add(1, Ordering::Relaxed);
        } else {
            self.halted_partitions.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(progress) = lock(&self.partitions).get(&partition) {
            lock(&progress.state).halted = halted;
        }
        metrics::gauge!(PARTITION_HALTED, "partition" => partition.to_string()).set(if halted {
            1.0
        } else {
            0.0
        });
    }

    pub(crate) fn stray_message(&self) {
        metrics::counter!(STRAY_MESSAGES).increment(1);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
    use metrics_util::MetricKindMask;

    /// The value of the series `name{partition="p"}` in a rendering, if present.
    fn sample(text: &str, name: &str, partition: i32) -> Option<f64> {
        let prefix = format!("{name}{{partition=\"{partition}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(|v| v.parse().unwrap())
    }

    fn now_ms() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis()
            .try_into()
            .unwrap()
    }

    #[test]
    fn every_consumer_metric_has_help_text() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe();
            let stats = ConsumerStats::default();
            let progress = stats.partition_owned(0);
            progress.position(0);
            progress.committed();
            stats.batch_committed(3, Duration::from_millis(5));
            stats.rows_written("messages", 3);
            stats.dead_letter("not_json");
            stats.fenced();
            stats.rewind_followed();
            stats.offset_gap();
            stats.commit_unknown(true);
            stats.transient_error();
            stats.rebalance("assign", 1);
            stats.reowned("missing_row");
            stats.deadline_expired();
            stats.timeout_halving();
            stats.record_timeout();
            stats.log_anomaly("refilled");
            stats.halted(0, true);
            stats.stray_message();
            stats.refresh_partitions(|_| Some(10));
            metrics::gauge!(INFLIGHT_RESERVED).set(1.0);
        });
        let text = handle.render();
        let types: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split_whitespace().next().unwrap())
            .collect();
        assert_eq!(types.len(), 22, "{text}");
        for name in types {
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} has no HELP:\n{text}"
            );
        }
    }

    #[test]
    fn partition_gauges_are_set_for_owned_partitions_only_and_a_released_one_disappears() {
        // What the binary's exporter does with `tgingest_partition_*` series (telemetry.rs).
        let recorder: PrometheusRecorder = PrometheusBuilder::new()
            .idle_timeout(MetricKindMask::GAUGE, Some(Duration::from_millis(300)))
            .build_recorder();
        let handle = recorder.handle();
        let stats = ConsumerStats::default();
        metrics::with_local_recorder(&recorder, || {
            for p in [0, 1] {
                stats.partition_owned(p).position(5);
            }
            stats.refresh_partitions(|_| Some(8));
        });
        let text = handle.render();
        assert_eq!(sample(&text, PARTITION_LAG, 0), Some(3.0), "{text}");
        assert_eq!(sample(&text, PARTITION_LAG, 1), Some(3.0), "{text}");
        assert_eq!(sample(&text, PARTITION_HALTED, 1), Some(0.0), "{text}");

        stats.partition_released(1);
        assert_eq!(stats.owned_partitions(), [0]);
        let deadline = Instant::now() + Duration::from_secs(10);
        let text = loop {
            std::thread::sleep(Duration::from_millis(100));
            metrics::with_local_recorder(&recorder, || stats.refresh_partitions(|_| None));
            let text = handle.render();
            if sample(&text, PARTITION_LAG, 1).is_none() || Instant::now() > deadline {
                break text;
            }
        };
        assert_eq!(sample(&text, PARTITION_LAG, 1), None, "{text}");
        assert_eq!(sample(&text, PARTITION_RECORD_AGE, 1), None, "{text}");
        assert_eq!(sample(&text, PARTITION_HALTED, 1), None, "{text}");
        // The owned partition keeps its series (and its last known log end).
        assert_eq!(sample(&text, PARTITION_LAG, 0), Some(3.0), "{text}");
    }

    #[test]
    fn record_age_is_the_age_of_the_oldest_unwritten_record() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let stats = ConsumerStats::default();
        let progress = stats.partition_owned(3);
        let age = |log_end: i64| {
            metrics::with_local_recorder(&recorder, || stats.refresh_partitions(|_| Some(log_end)));
            sample(&handle.render(), PARTITION_RECORD_AGE, 3).unwrap()
        };
        progress.position(100);
        assert_eq!(age(100), 0.0, "caught up: nothing waits");

        // Fetched records 100..103, written in two batches.
        let now = now_ms();
        progress.fetched(99, Some(now - 60_000)); // below the position: already written
        progress.fetched(100, Some(now - 30_000));
        progress.fetched(101, Some(now - 20_000));
        progress.fetched(102, Some(now - 10_000));
        let first = age(103);
        assert!((30.0..35.0).contains(&first), "{first}");
        progress.position(102);
        progress.committed();
        let second = age(103);
        assert!((10.0..15.0).contains(&second), "{second}");
        progress.position(103);
        assert_eq!(age(103), 0.0);
        let text = handle.render();
        let committed = sample(&text, PARTITION_LAST_COMMIT, 3).unwrap();
        assert!((committed - now as f64 / 1000.0).abs() < 5.0, "{committed}");

        // Records wait at the position without one fetched: their age grows from when they were
        // first seen waiting (a lower bound), and drops to zero once written.
        assert!(age(105) < 1.0);
        std::thread::sleep(Duration::from_millis(300));
        let waited = age(105);
        assert!(waited >= 0.3, "{waited}");
        progress.position(105);
        assert_eq!(age(105), 0.0);
    }

    #[test]
    fn a_halted_partition_shows_1_until_resolved() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let stats = ConsumerStats::default();
        stats.partition_owned(2).position(0);
        metrics::with_local_recorder(&recorder, || {
            stats.halted(2, true);
            stats.refresh_partitions(|_| Some(0));
        });
        assert_eq!(sample(&handle.render(), PARTITION_HALTED, 2), Some(1.0));
        assert_eq!(ConsumerStats::get(&stats.halted_partitions), 1);
        metrics::with_local_recorder(&recorder, || {
            stats.halted(2, false);
            stats.refresh_partitions(|_| Some(0));
        });
        assert_eq!(sample(&handle.render(), PARTITION_HALTED, 2), Some(0.0));
        assert_eq!(ConsumerStats::get(&stats.halted_partitions), 0);
    }
}
