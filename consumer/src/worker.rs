//! The partition worker: one tokio task per assigned partition, reading its split partition
//! queue, building contiguous batches and writing them through the [`BatchWriter`].
//!
//! Guarantees:
//! - a batch starts exactly at the stored `next_offset` and is gap-free; records below it are
//!   dropped as already applied; a first record beyond it is re-sought once, and a gap that
//!   persists is recorded in `offset_gaps` (with the offset move, in one fenced transaction),
//!   counted and logged at error — never skipped silently;
//! - the queue is read without blocking a runtime thread (non-empty callback → `Notify`, then
//!   non-blocking polls); at most one batch is buffered, and records leave the queue only into a
//!   batch-sized reservation of the process-wide budget (`crate::budget`; one record without),
//!   returned after every batch so partitions take turns in the order they asked,
//!   so memory is bounded by that budget plus librdkafka's per-partition queues, whatever the
//!   partition count;
//! - transient errors are retried with capped, jittered backoff while the partition is paused;
//!   a batch that times out (57014, the transaction deadline) is halved down to one record, and
//!   a single record that still times out is retried and alerted, never dead-lettered;
//! - a replay (new `rewind_seq`) is followed by a seek, also when idle (the row is re-read every
//!   `idle_reread_interval`);
//! - Kafka's assignment is authoritative (DESIGN.md §5.9): for as long as the worker runs, its
//!   partition makes progress. A row that went back in time (older epoch, no row) is re-owned at
//!   once; a newer epoch is left alone and re-owned only once it has stayed unmoved for a session
//!   timeout (a live owner moves it, or Kafka revokes the partition from us first), so two
//!   members never fence each other back and forth;
//! - a log that is not the one the database remembers is never read on (DESIGN.md §5.10): on
//!   takeover, an open anomaly, a stored offset past the log end, or a record at
//!   `next_offset - 1` whose digest differs from the one committed halts the partition (as does
//!   an offset found past the log end later); the anomaly is recorded (`crate::log_anomalies`),
//!   counted and shown as halted, and the worker writes nothing until an operator's replay
//!   resolves it, then follows the rewind;
//! - cancellation (revoke, shutdown) is observed only between writes: a write in progress ends
//!   in COMMIT or an explicit ROLLBACK, never in a dropped future.
//!
//! The worker sees Kafka only through [`PartitionLog`], a narrow handle on its one partition
//! that the group implements; it knows nothing of the group, so the two never import each other.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::budget::{InflightBudget, Reservation};
use crate::config::RetryPolicy;
use crate::log_anomalies::{AnomalyKind, Detected, LogAnomaly};
use crate::offsets::{OffsetStore, Ownership, Standing, StoredOffset};
use crate::readiness::{CHECK_POSTGRES, Readiness};
use crate::record::ConsumedRecord;
use crate::stats::ConsumerStats;
use crate::writer::{BatchWriter, PreparedRecord, WriteError};

/// One assigned partition as its worker sees it: the records fetched for it and the few
/// operations the worker needs on the group's consumer. Implemented by the group for a split
/// partition queue; every method returns at once (none waits for the broker, except
/// [`PartitionLog::watermarks`], which the worker calls off the runtime threads).
pub(crate) trait PartitionLog: Send + Sync + 'static {
    /// The next record (or fetch error) already fetched for this partition, without waiting.
    fn poll(&self) -> Option<KafkaResult<ConsumedRecord>>;
    /// Moves fetching to `offset`, asynchronously.
    fn seek(&self, offset: i64) -> KafkaResult<()>;
    /// Stops fetching (while a write is retried), so the group membership survives unbusy.
    fn pause(&self) -> KafkaResult<()>;
    /// Resumes fetching after [`PartitionLog::pause`].
    fn resume(&self) -> KafkaResult<()>;
    /// The advisory Kafka mirror of the committed `next_offset` (asynchronous; errors are not
    /// fatal).
    fn commit(&self, next_offset: i64) -> KafkaResult<()>;
    /// Publishes the position the worker will write next (lag metrics, eager fetch restarts).
    fn set_position(&self, next_offset: i64);
    /// Asks the group to restart fetching at `offset` (librdkafka stopped the partition, or a
    /// seek failed); handled by the group's polling thread.
    fn request(&self, request: WorkerRequest);
    /// The log's (low, high) watermarks. Blocks for up to `timeout`.
    fn watermarks(&self, timeout: Duration) -> KafkaResult<(i64, i64)>;
}

/// What a worker asks of the group's polling thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WorkerRequest {
    /// librdkafka stopped fetching the partition (offset out of range): restart it at `offset`.
    RestartFetch { partition: i32, offset: i64 },
}

/// Why a worker stopped: only when told to (revoked, or shutting down); a fenced worker stands
/// by or takes its partition back instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerExit {
    /// Revoked or shutting down.
    Cancelled,
}

/// Limits and intervals a worker runs with.
#[derive(Debug, Clone)]
pub(crate) struct WorkerSettings {
    pub batch_max_records: usize,
    pub batch_max_bytes: usize,
    pub linger: Duration,
    pub idle_reread_interval: Duration,
    pub retry: RetryPolicy,
    /// The group's `session.timeout.ms`: how long a newer epoch may stay unmoved before the
    /// partition Kafka still assigns us is taken back.
    pub session_timeout: Duration,
}

/// What every worker of a process shares: where it writes, how, and whom it tells.
#[derive(Clone)]
pub(crate) struct WorkerDeps {
    pub topic: Arc<str>,
    pub writer: BatchWriter,
    pub store: OffsetStore,
    pub settings: WorkerSettings,
    pub stats: Arc<ConsumerStats>,
    pub readiness: Arc<dyn Readiness>,
    /// Record bytes all workers of this process may hold outside librdkafka.
    pub budget: Arc<InflightBudget>,
}

/// How often a worker looks at its queue even without a wake-up, as a safety net.
const POLL_TICK: Duration = Duration::from_millis(200);

/// How long a watermark request may block (off the runtime threads).
const WATERMARKS_TIMEOUT: Duration = Duration::from_secs(5);

/// How long takeover waits for the record at `next_offset - 1` after seeking to it, per attempt.
const VERIFY_READ_TIMEOUT: Duration = Duration::from_secs(10);
const VERIFY_READ_ATTEMPTS: u32 = 3;

pub(crate) struct PartitionWorker<L> {
    topic: Arc<str>,
    owner: Ownership,
    log: Arc<L>,
    /// Woken by the group when the partition's queue becomes non-empty.
    notify: Arc<Notify>,
    writer: BatchWriter,
    store: OffsetStore,
    settings: WorkerSettings,
    cancel: CancellationToken,
    stats: Arc<ConsumerStats>,
    readiness: Arc<dyn Readiness>,
    /// This worker's share of the process-wide budget of record bytes in flight.
    reservation: Reservation,
    /// Mean bytes of this partition's records (moving average), to size a reservation.
    mean_record_bytes: f64,
}

impl<L> std::fmt::Debug for PartitionWorker<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionWorker")
            .field("topic", &self.topic)
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

/// What the worker should do after a step.
enum Flow {
    Continue,
    Stop(WorkerExit),
}

impl<L: PartitionLog> PartitionWorker<L> {
    /// A worker for the partition `owner` names, starting at its stored `next_offset`.
    pub(crate) fn new(
        deps: &WorkerDeps,
        owner: Ownership,
        log: L,
        notify: Arc<Notify>,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            topic: deps.topic.clone(),
            owner,
            log: Arc::new(log),
            notify,
            writer: deps.writer.clone(),
            store: deps.store.clone(),
            settings: deps.settings.clone(),
            cancel,
            stats: deps.stats.clone(),
            readiness: deps.readiness.clone(),
            reservation: Reservation::new(deps.budget.clone()),
            mean_record_bytes: 0.0,
        }
    }

    #[tracing::instrument(name = "partition_worker", skip_all, fields(topic = %self.topic, partition = self.owner.partition, epoch = self.owner.owner_epoch))]
    pub async fn run(mut self) -> WorkerExit {
        tracing::info!(next_offset = self.owner.next_offset, "worker started");
        self.publish_position();
        let mut buffer: VecDeque<ConsumedRecord> = VecDeque::new();
        if let Flow::Stop(exit) = self.check_log(&mut buffer).await {
            return exit;
        }
        let mut first_buffered_at: Option<Instant> = None;
        // The expected offset we already re-sought for (a gap seen again after it persists).
        let mut sought_for: Option<i64> = None;
        let mut last_reread = Instant::now();
        loop {
            if self.cancel.is_cancelled() {
                return WorkerExit::Cancelled;
            }
            // Nothing held: the reservation goes back, so other partitions can have it.
            if buffer.is_empty() {
                self.reservation.release();
            }
            if let Flow::Stop(exit) = self.fill(&mut buffer).await {
                return exit;
            }
            while buffer
                .front()
                .is_some_and(|r| r.offset < self.owner.next_offset)
            {
                buffer.pop_front();
            }
            if buffer.is_empty() {
                first_buffered_at = None;
            } else if first_buffered_at.is_none() {
                first_buffered_at = Some(Instant::now());
            }

            if let Some(front) = buffer.front().map(|r| r.offset)
                && front > self.owner.next_offset
            {
                let expected = self.owner.next_offset;
                if sought_for == Some(expected) {
                    tracing::error!(
                        expected,
                        first_offset_seen = front,
                        "offset gap persists after a re-seek: recording it and continuing"
                    );
                    match self.writer.record_gap(&mut self.owner, front).await {
                        Ok(()) => {
                            sought_for = None;
                            self.publish_position();
                        }
                        Err(e) => {
                            if let Flow::Stop(exit) = self.after_failed_write(e, &mut buffer).await
                            {
                                return exit;
                            }
                        }
                    }
                } else {
                    tracing::warn!(
                        expected,
                        first_offset_seen = front,
                        "first record is past the stored offset: re-seeking once"
                    );
                    sought_for = Some(expected);
                    buffer.clear();
                    first_buffered_at = None;
                    self.seek(expected);
                }
                continue;
            }

            let (count, bytes, interrupted) = self.contiguous_prefix(&buffer);
            // Holding records without a reservation: wait for one rather than write a sliver.
            let starved = !buffer.is_empty() && self.reservation.bytes() == 0;
            let full = count >= self.settings.batch_max_records
                || bytes >= self.settings.batch_max_bytes
                || interrupted
                || bytes >= self.reservation.bytes();
            let lingered = first_buffered_at.is_some_and(|at| at.elapsed() >= self.settings.linger);
            if count > 0 && !starved && (full || lingered) {
                let records: Vec<PreparedRecord> =
                    buffer.drain(..count).map(PreparedRecord::prepare).collect();
                first_buffered_at = (!buffer.is_empty()).then(Instant::now);
                if let Flow::Stop(exit) = self.write_with_retry(records, &mut buffer).await {
                    return exit;
                }
                // One batch per reservation: the next one queues behind the partitions already
                // waiting (what is left in the buffer is at most one record).
                self.reservation.release();
                last_reread = Instant::now();
                continue;
            }

            // Nothing to write yet: wait for records, the linger deadline, or the re-read tick.
            if last_reread.elapsed() >= self.settings.idle_reread_interval {
                last_reread = Instant::now();
                if let Flow::Stop(exit) = self.reread(&mut buffer).await {
                    return exit;
                }
                continue;
            }
            let mut wait = POLL_TICK.min(
                self.settings
                    .idle_reread_interval
                    .saturating_sub(last_reread.elapsed()),
            );
            if let Some(at) = first_buffered_at {
                wait = wait.min(self.settings.linger.saturating_sub(at.elapsed()));
            }
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => return WorkerExit::Cancelled,
                () = self.notify.notified() => {}
                () = self.reservation.changed(), if starved => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Moves what the queue holds into the buffer (non-blocking), keeping the buffer strictly
    /// increasing and within the batch limits and this worker's reservation. Without a
    /// reservation it takes one record (to learn that there is work), then reserves room for a
    /// batch.
    async fn fill(&mut self, buffer: &mut VecDeque<ConsumedRecord>) -> Flow {
        let mut bytes: usize = buffer.iter().map(ConsumedRecord::size).sum();
        while buffer.len() < self.settings.batch_max_records
            && bytes < self.settings.batch_max_bytes
        {
            if !buffer.is_empty() && bytes >= self.reservation.bytes() {
                // At the reservation's end, or holding the one unreserved record.
                let estimate = self.batch_estimate();
                if self.reservation.bytes() > 0
                    || !self.reservation.try_reserve(estimate)
                    || bytes >= self.reservation.bytes()
                {
                    break;
                }
            }
            let Some(polled) = self.log.poll() else {
                break;
            };
            match polled {
                Ok(record) => {
                    let tail = buffer
                        .back()
                        .map_or(self.owner.next_offset - 1, |r| r.offset);
                    // Older than what we hold: a stale fetch from before a seek, or a
                    // duplicate after a restart; its effect is (or will be) written already.
                    if record.offset <= tail {
                        continue;
                    }
                    bytes += record.size();
                    self.mean_record_bytes = if self.mean_record_bytes == 0.0 {
                        record.size() as f64
                    } else {
                        0.99 * self.mean_record_bytes + 0.01 * record.size() as f64
                    };
                    buffer.push_back(record);
                }
                Err(KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset)) => {
                    return self.out_of_range(buffer).await;
                }
                Err(e) => {
                    tracing::warn!("partition queue error: {e}");
                    break;
                }
            }
        }
        Flow::Continue
    }

    /// Bytes of a full batch of this partition's records: the batch limits at the mean record
    /// size.
    fn batch_estimate(&self) -> usize {
        let records = self.settings.batch_max_records as f64 * self.mean_record_bytes;
        (records.ceil() as usize).min(self.settings.batch_max_bytes)
    }

    /// The stored offset is outside the log (retention deleted it, or the log is shorter than
    /// the database remembers). librdkafka stopped fetching; decide where to restart.
    async fn out_of_range(&mut self, buffer: &mut VecDeque<ConsumedRecord>) -> Flow {
        buffer.clear();
        let expected = self.owner.next_offset;
        let log = self.log.clone();
        let watermarks =
            tokio::task::spawn_blocking(move || log.watermarks(Duration::from_secs(10))).await;
        let (low, high) = match watermarks {
            Ok(Ok(w)) => w,
            Ok(Err(e)) => {
                tracing::warn!(expected, "offset out of range, watermarks unavailable: {e}");
                self.request_restart(expected);
                return self.backoff(0).await;
            }
            Err(e) => {
                tracing::warn!("watermark task failed: {e}");
                self.request_restart(expected);
                return self.backoff(0).await;
            }
        };
        if expected < low {
            tracing::error!(
                expected,
                log_start = low,
                "records before the log start were deleted before they were written: recording the gap"
            );
            let mut attempt = 0;
            loop {
                match self.writer.record_gap(&mut self.owner, low).await {
                    Ok(()) => break,
                    Err(WriteError::Fenced { stored }) => return self.regain(stored, buffer).await,
                    Err(WriteError::Moved { stored }) => {
                        self.follow(stored, buffer);
                        return Flow::Continue;
                    }
                    Err(e) => {
                        tracing::warn!("recording the gap failed: {e}");
                        if let Flow::Stop(exit) = self.backoff(attempt).await {
                            return Flow::Stop(exit);
                        }
                        attempt += 1;
                    }
                }
            }
            self.publish_position();
            self.request_restart(low);
            Flow::Continue
        } else if expected > high {
            self.detected(
                Detected {
                    kind: AnomalyKind::PastLogEnd,
                    log: (low, high),
                    found_sha256: None,
                },
                buffer,
            )
            .await
        } else {
            // The position is inside the log (librdkafka detected a truncation that new records
            // already refilled, or the error is stale): the log must still hold the record
            // committed last before the worker reads on.
            tracing::warn!(
                expected,
                log_start = low,
                log_end = high,
                "offset out of range, but the stored offset is inside the log: verifying it"
            );
            let flow = self.check_position((low, high), true, buffer).await;
            if matches!(flow, Flow::Continue) {
                // Fetching stopped at the error: restart it (again, if the check read a record).
                self.request_restart(self.owner.next_offset);
            }
            flow
        }
    }

    /// The takeover checks of the partition's log (DESIGN.md §5.10): an open anomaly halts the
    /// partition; so does a stored offset past the log end, or a record at `next_offset - 1`
    /// whose digest differs from the one committed, which are recorded first. Watermarks the
    /// broker cannot give now skip the checks: the fetch then fails on a position past the log
    /// end, which is caught by [`Self::out_of_range`].
    async fn check_log(&mut self, buffer: &mut VecDeque<ConsumedRecord>) -> Flow {
        let mut attempt = 0u32;
        let open = loop {
            match self.store.open_anomaly(self.owner.partition).await {
                Ok(open) => break open,
                Err(e) => {
                    tracing::warn!(attempt, "reading the partition's log anomalies failed: {e}");
                    if let Flow::Stop(exit) = self.backoff(attempt).await {
                        return Flow::Stop(exit);
                    }
                    attempt = attempt.saturating_add(1);
                }
            }
        };
        if let Some(anomaly) = open {
            return self.halt(anomaly, buffer).await;
        }
        let log = match self.watermarks().await {
            Ok(watermarks) => watermarks,
            Err(e) => {
                tracing::warn!("cannot check the log at takeover (watermarks: {e})");
                return Flow::Continue;
            }
        };
        self.check_position(log, false, buffer).await
    }

    /// Whether the log (its `(start, end)` now) is the one the stored position belongs to: a
    /// stored offset past its end, or a record at `next_offset - 1` other than the one committed
    /// last, is recorded as an anomaly and halts the partition. `restart`: fetching stopped
    /// (an out-of-range error), so reading the record needs a fetch restart, not a seek.
    async fn check_position(
        &mut self,
        (low, high): (i64, i64),
        restart: bool,
        buffer: &mut VecDeque<ConsumedRecord>,
    ) -> Flow {
        let expected = self.owner.next_offset;
        if expected > high {
            return self
                .detected(
                    Detected {
                        kind: AnomalyKind::PastLogEnd,
                        log: (low, high),
                        found_sha256: None,
                    },
                    buffer,
                )
                .await;
        }
        let Some(committed) = self.owner.last_record_sha256 else {
            return Flow::Continue;
        };
        if expected <= low {
            // The record before the position is gone from the log (retention): nothing to
            // compare with.
            return Flow::Continue;
        }
        let found = match self.read_one(expected - 1, restart).await {
            Ok(found) => found,
            Err(exit) => return Flow::Stop(exit),
        };
        match found {
            Some(found) if found != committed => {
                self.detected(
                    Detected {
                        kind: AnomalyKind::Refilled,
                        log: (low, high),
                        found_sha256: Some(found),
                    },
                    buffer,
                )
                .await
            }
            Some(_) => {
                tracing::debug!(
                    offset = expected - 1,
                    "the log holds the record committed last"
                );
                Flow::Continue
            }
            None => {
                tracing::warn!(
                    offset = expected - 1,
                    "could not read the record before the stored offset to verify the log"
                );
                Flow::Continue
            }
        }
    }

    /// The log's watermarks, read off the runtime threads.
    async fn watermarks(&self) -> anyhow::Result<(i64, i64)> {
        let log = self.log.clone();
        Ok(tokio::task::spawn_blocking(move || log.watermarks(WATERMARKS_TIMEOUT)).await??)
    }

    /// The digest of the record at `offset`: moves fetching to it, reads the queue until it comes
    /// (other records are dropped), then moves fetching to `offset + 1`. `Ok(None)` when it does
    /// not come.
    async fn read_one(
        &mut self,
        offset: i64,
        restart: bool,
    ) -> Result<Option<[u8; 32]>, WorkerExit> {
        let mut found = None;
        'attempts: for _ in 0..VERIFY_READ_ATTEMPTS {
            self.reposition(offset, restart);
            let deadline = Instant::now() + VERIFY_READ_TIMEOUT;
            while Instant::now() < deadline {
                match self.log.poll() {
                    Some(Ok(record)) if record.offset == offset => {
                        found = Some(record.value_sha256());
                        break 'attempts;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(KafkaError::MessageConsumption(
                        RDKafkaErrorCode::AutoOffsetReset,
                    ))) => break 'attempts,
                    Some(Err(e)) => tracing::debug!("partition queue error: {e}"),
                    None => {
                        let wait =
                            POLL_TICK.min(deadline.saturating_duration_since(Instant::now()));
                        tokio::select! {
                            biased;
                            () = self.cancel.cancelled() => return Err(WorkerExit::Cancelled),
                            () = self.notify.notified() => {}
                            () = tokio::time::sleep(wait) => {}
                        }
                    }
                }
            }
        }
        // Back to where the worker reads on; records taken from the queue meanwhile come again.
        self.reposition(offset + 1, restart);
        Ok(found)
    }

    /// Moves fetching to `offset`: a seek, or a fetch restart when fetching stopped.
    fn reposition(&self, offset: i64, restart: bool) {
        if restart {
            self.request_restart(offset);
        } else {
            self.seek(offset);
        }
    }

    /// Records what the worker found and halts the partition on it; when the row moved
    /// meanwhile (a replay, a new owner), looks at the row again instead.
    async fn detected(
        &mut self,
        detected: Detected,
        buffer: &mut VecDeque<ConsumedRecord>,
    ) -> Flow {
        let mut attempt = 0u32;
        loop {
            match self.store.record_anomaly(&self.owner, detected).await {
                Ok(Some(anomaly)) => {
                    self.stats.log_anomaly(detected.kind.as_str());
                    return self.halt(anomaly, buffer).await;
                }
                Ok(None) => return self.reread(buffer).await,
                Err(e) => {
                    tracing::warn!(attempt, "recording a log anomaly failed, retrying: {e}");
                    if let Flow::Stop(exit) = self.backoff(attempt).await {
                        return Flow::Stop(exit);
                    }
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    }

    /// Holds the partition halted on an open anomaly: nothing is fetched or written until an
    /// operator's replay resolves it (re-read every idle re-read interval); then the worker
    /// follows the rewind that came with the decision.
    async fn halt(&mut self, anomaly: LogAnomaly, buffer: &mut VecDeque<ConsumedRecord>) -> Flow {
        buffer.clear();
        self.reservation.release();
        let paused = self.set_paused(true);
        self.stats.halted(self.owner.partition, true);
        tracing::error!(
            anomaly_id = anomaly.id,
            kind = anomaly.kind.as_str(),
            "{anomaly}: partition halted until an operator decides where it resumes (tgingest replay --partitions {} … --execute)",
            anomaly.partition
        );
        loop {
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => {
                    self.stats.halted(self.owner.partition, false);
                    return Flow::Stop(WorkerExit::Cancelled);
                }
                () = tokio::time::sleep(self.settings.idle_reread_interval) => {}
            }
            match self.store.open_anomaly(self.owner.partition).await {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => tracing::warn!("re-reading the partition's log anomaly failed: {e}"),
            }
        }
        self.stats.halted(self.owner.partition, false);
        if paused {
            self.set_paused(false);
        }
        tracing::warn!(anomaly_id = anomaly.id, "log anomaly resolved: resuming");
        let flow = self.reread(buffer).await;
        // librdkafka may have stopped fetching the partition (a fetch past the old log end).
        self.request_restart(self.owner.next_offset);
        flow
    }

    /// The number, bytes and interruption of the contiguous run at the buffer's front.
    fn contiguous_prefix(&self, buffer: &VecDeque<ConsumedRecord>) -> (usize, usize, bool) {
        let mut count = 0;
        let mut bytes = 0;
        for (expected, record) in (self.owner.next_offset..).zip(buffer.iter()) {
            if record.offset != expected
                || count >= self.settings.batch_max_records
                || (count > 0 && bytes + record.size() > self.settings.batch_max_bytes)
            {
                return (count, bytes, true);
            }
            count += 1;
            bytes += record.size();
        }
        (count, bytes, false)
    }

    /// Writes one batch, retrying transient failures with backoff while the partition is paused.
    async fn write_with_retry(
        &mut self,
        records: Vec<PreparedRecord>,
        buffer: &mut VecDeque<ConsumedRecord>,
    ) -> Flow {
        let mut attempt = 0u32;
        let mut paused = false;
        // Records per transaction: halved by each timeout, down to one.
        let mut limit = records.len();
        let flow = loop {
            // Records are in offset order; a retry writes only what is not yet committed.
            let start = self.owner.next_offset;
            let pending = &records[records.partition_point(|r| r.record.offset < start)..];
            if pending.is_empty() {
                break Flow::Continue;
            }
            let part = &pending[..pending.len().min(limit)];
            match self.writer.write(&mut self.owner, part).await {
                Ok(summary) => {
                    tracing::debug!(
                        records = summary.records,
                        dead_letters = summary.dead_letters,
                        next_offset = self.owner.next_offset,
                        "batch committed"
                    );
                    self.readiness.ready(CHECK_POSTGRES, "");
                    self.after_commit().await;
                    if part.len() == pending.len() {
                        break Flow::Continue;
                    }
                    attempt = 0;
                }
                Err(e) if e.is_timeout() && part.len() > 1 => {
                    limit = part.len() / 2;
                    self.stats.transient_error();
                    self.stats.timeout_halving();
                    tracing::warn!(
                        records = part.len(),
                        halved_to = limit,
                        "batch timed out: halving it ({e})"
                    );
                }
                Err(WriteError::Transient(e)) if crate::classify::is_timeout(&e) => {
                    // One record alone times out: the database is slow, not the record bad.
                    self.stats.transient_error();
                    self.stats.record_timeout();
                    self.readiness
                        .not_ready(CHECK_POSTGRES, &format!("a single record times out: {e}"));
                    tracing::error!(
                        attempt,
                        offset = part[0].record.offset,
                        "a single record's write times out, retrying (never dead-lettered): {e}"
                    );
                    if !paused {
                        paused = self.set_paused(true);
                    }
                    if let Flow::Stop(exit) = self.backoff(attempt).await {
                        break Flow::Stop(exit);
                    }
                    attempt = attempt.saturating_add(1);
                }
                Err(WriteError::Transient(e)) => {
                    self.stats.transient_error();
                    self.readiness
                        .not_ready(CHECK_POSTGRES, &format!("batch write failing: {e}"));
                    tracing::warn!(attempt, "transient error writing a batch, retrying: {e}");
                    if !paused {
                        paused = self.set_paused(true);
                    }
                    if let Flow::Stop(exit) = self.backoff(attempt).await {
                        break Flow::Stop(exit);
                    }
                    attempt = attempt.saturating_add(1);
                }
                Err(e) => break self.after_failed_write(e, buffer).await,
            }
        };
        if paused {
            self.set_paused(false);
        }
        flow
    }

    /// Handles a fence or a moved offset (transient errors are retried by the caller).
    async fn after_failed_write(
        &mut self,
        error: WriteError,
        buffer: &mut VecDeque<ConsumedRecord>,
    ) -> Flow {
        match error {
            WriteError::Fenced { stored } => self.regain(stored, buffer).await,
            WriteError::Moved { stored } => {
                self.follow(stored, buffer);
                Flow::Continue
            }
            WriteError::Transient(e) | WriteError::Deterministic(e) => {
                self.stats.transient_error();
                tracing::warn!("write failed, retrying: {e}");
                self.backoff(0).await
            }
        }
    }

    /// Continues from the stored row (a replay, or a commit of unknown outcome that landed).
    fn follow(&mut self, stored: StoredOffset, buffer: &mut VecDeque<ConsumedRecord>) {
        tracing::info!(
            from = self.owner.next_offset,
            to = stored.next_offset,
            rewind_seq = stored.rewind_seq,
            "stored offset moved: following it"
        );
        self.stats.rewind_followed();
        self.owner.next_offset = stored.next_offset;
        self.owner.rewind_seq = stored.rewind_seq;
        self.owner.topic_incarnation = stored.topic_incarnation;
        // Whatever record now precedes the stored position, this worker did not commit it.
        self.owner.last_record_sha256 = None;
        buffer.clear();
        self.seek(stored.next_offset);
        self.publish_position();
    }

    /// The idle re-read: notices replays, new owners and a database gone back in time while
    /// nothing is written.
    async fn reread(&mut self, buffer: &mut VecDeque<ConsumedRecord>) -> Flow {
        match self.store.read(self.owner.partition).await {
            Ok(stored) => match self.owner.standing(stored) {
                Standing::Current => {
                    self.readiness.ready(CHECK_POSTGRES, "");
                    Flow::Continue
                }
                Standing::Moved(stored) => {
                    self.follow(stored, buffer);
                    Flow::Continue
                }
                Standing::Behind(_) | Standing::Superseded(_) => self.regain(stored, buffer).await,
            },
            Err(e) => {
                self.readiness
                    .not_ready(CHECK_POSTGRES, &format!("cannot read offsets: {e}"));
                tracing::warn!("re-reading the offsets row failed: {e}");
                Flow::Continue
            }
        }
    }

    /// The stored row no longer carries this worker's epoch, while Kafka still assigns it the
    /// partition (DESIGN.md §5.9). An older epoch or no row means the database went back in time
    /// (a restored backup, a deleted row): re-own at once. A newer epoch is left alone — no pause
    /// either, the new owner may be this very process — and re-owned only if it stays unmoved for
    /// a session timeout while we are still assigned. Returns when the worker owns the partition
    /// again (or follows a moved row), or is cancelled.
    async fn regain(
        &mut self,
        stored: Option<StoredOffset>,
        buffer: &mut VecDeque<ConsumedRecord>,
    ) -> Flow {
        buffer.clear();
        self.reservation.release();
        let mut observed = stored;
        let mut unmoved_since = Instant::now();
        let mut attempt = 0u32;
        let mut standing_by = false;
        loop {
            if self.cancel.is_cancelled() {
                return Flow::Stop(WorkerExit::Cancelled);
            }
            let reason = match self.owner.standing(observed) {
                Standing::Current => return Flow::Continue,
                Standing::Moved(stored) => {
                    self.follow(stored, buffer);
                    return Flow::Continue;
                }
                Standing::Behind(None) => Some("missing_row"),
                Standing::Behind(Some(_)) => Some("older_epoch"),
                Standing::Superseded(_)
                    if unmoved_since.elapsed() >= self.settings.session_timeout =>
                {
                    Some("newer_epoch_unmoved")
                }
                Standing::Superseded(stored) => {
                    if !standing_by {
                        standing_by = true;
                        tracing::warn!(
                            ?stored,
                            "a newer epoch holds the partition Kafka assigns here: standing by"
                        );
                    }
                    None
                }
            };
            if let Some(reason) = reason {
                match self.reown(observed, reason, buffer).await {
                    Ok(true) => return Flow::Continue,
                    // The row moved meanwhile: look at it again.
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(attempt, "re-owning the partition failed, retrying: {e:#}");
                        if let Flow::Stop(exit) = self.backoff(attempt).await {
                            return Flow::Stop(exit);
                        }
                        attempt = attempt.saturating_add(1);
                    }
                }
            } else {
                tokio::select! {
                    biased;
                    () = self.cancel.cancelled() => return Flow::Stop(WorkerExit::Cancelled),
                    () = tokio::time::sleep(self.settings.idle_reread_interval) => {}
                }
            }
            match self.store.read(self.owner.partition).await {
                Ok(now) => {
                    if now != observed {
                        unmoved_since = Instant::now();
                        observed = now;
                    }
                }
                Err(e) => {
                    tracing::warn!("re-reading the offsets row failed: {e}");
                    if let Flow::Stop(exit) = self.backoff(attempt).await {
                        return Flow::Stop(exit);
                    }
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    }

    /// Takes the partition back from the row as `observed` and resumes at its stored offset (no
    /// row: at the log start). `Ok(false)` when the row was no longer as observed.
    async fn reown(
        &mut self,
        observed: Option<StoredOffset>,
        reason: &'static str,
        buffer: &mut VecDeque<ConsumedRecord>,
    ) -> anyhow::Result<bool> {
        let log_start = match observed {
            Some(_) => 0,
            None => {
                let log = self.log.clone();
                tokio::task::spawn_blocking(move || log.watermarks(Duration::from_secs(10)))
                    .await??
                    .0
            }
        };
        let Some(owner) = self
            .store
            .reown(
                self.owner.partition,
                self.owner.owner_epoch,
                observed,
                log_start,
            )
            .await?
        else {
            return Ok(false);
        };
        tracing::warn!(
            reason,
            ?observed,
            from_epoch = self.owner.owner_epoch,
            to_epoch = owner.owner_epoch,
            next_offset = owner.next_offset,
            "took back the partition Kafka assigns here"
        );
        self.stats.reowned(reason);
        self.owner = owner;
        buffer.clear();
        self.seek(owner.next_offset);
        self.publish_position();
        Ok(true)
    }

    /// The advisory Kafka mirror of the committed offset, and the published position.
    async fn after_commit(&mut self) {
        failpoints_after_commit().await;
        self.publish_position();
        if let Err(e) = self.log.commit(self.owner.next_offset) {
            tracing::debug!("advisory Kafka commit failed (not fatal): {e}");
        }
    }

    fn publish_position(&self) {
        self.log.set_position(self.owner.next_offset);
    }

    fn seek(&self, offset: i64) {
        if let Err(e) = self.log.seek(offset) {
            tracing::warn!(offset, "seek failed, asking for a fetch restart: {e}");
            self.request_restart(offset);
        }
    }

    fn request_restart(&self, offset: i64) {
        self.log.request(WorkerRequest::RestartFetch {
            partition: self.owner.partition,
            offset,
        });
    }

    /// Pauses or resumes fetching this partition; returns whether the partition is now paused.
    fn set_paused(&self, paused: bool) -> bool {
        let result = if paused {
            self.log.pause()
        } else {
            self.log.resume()
        };
        if let Err(e) = &result {
            tracing::debug!(paused, "pause/resume failed: {e}");
        }
        paused && result.is_ok()
    }

    async fn backoff(&self, attempt: u32) -> Flow {
        tokio::select! {
            biased;
            () = self.cancel.cancelled() => Flow::Stop(WorkerExit::Cancelled),
            () = tokio::time::sleep(self.settings.retry.delay(attempt)) => Flow::Continue,
        }
    }
}

async fn failpoints_after_commit() {
    crate::failpoints::delay("consumer::after_commit").await;
}
