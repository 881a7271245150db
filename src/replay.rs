//! `tgingest replay`: rewinds a consumer group's stored offsets so the running consumers
//! reprocess history, and `--reprocess-from-db` rebuilds projections from `raw_updates` without
//! Kafka (DESIGN.md §4, §5.3, §9).
//!
//! Guarantees:
//! - targets come from the broker (watermarks, offsets-for-times) and a time target is verified
//!   against the timestamps of the records around the broker's answer, falling back to a search
//!   between the watermarks, because brokers disagree (the mock answers "end", Tansu 0.6 answers
//!   0 for a time past the end);
//! - applying a plan is one transaction that sets `next_offset` and bumps `rewind_seq` of every
//!   planned partition (creating missing rows) and never touches `owner_epoch`, so the current
//!   owners re-seek instead of being fenced;
//! - a plan that would move a partition forward past records it has not processed is refused
//!   unless the operator allows skipping them, since those records would end with neither rows
//!   nor a dead letter;
//! - reprocessing from the database writes projections through the consumer's own upsert
//!   ([`consumer::projection::ProjectionSchema::upsert`]), so equal input rewrites nothing and a
//!   newer processor version rewrites only rows derived from the same updates.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use consumer::record::ConsumedRecord;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde::Serialize;
use sqlx::PgPool;

use crate::config::{ConfigError, DatabaseConfig, Env, KafkaArgs};

/// How long one broker request of the operator commands may take.
const BROKER_TIMEOUT: Duration = Duration::from_secs(15);

/// Replay options of the command line (flattened into `tgingest replay`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ReplayOptions {
    /// Topic to rewind (default: KAFKA_TOPIC).
    #[arg(long)]
    pub topic: Option<String>,
    /// Only these partitions, comma-separated (default: every partition of the topic).
    #[arg(long, value_delimiter = ',')]
    pub partitions: Vec<i32>,
    /// Rewind to the first record the broker still holds.
    #[arg(long)]
    pub to_earliest: bool,
    /// Rewind to this offset (clamped to the records the broker holds).
    #[arg(long, value_name = "OFFSET")]
    pub to_offset: Option<i64>,
    /// Rewind to the first record whose timestamp is at or after this time (RFC 3339).
    #[arg(long, value_name = "RFC3339")]
    pub to_time: Option<String>,
    /// Rewind to the first record of the last DURATION (e.g. `2h`, `30m`).
    #[arg(long, value_name = "DURATION")]
    pub by_duration: Option<String>,
    /// Print the plan (current and target offsets, records to re-read) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Allow moving a partition forward past records it has not processed yet (they will have
    /// neither rows nor a dead letter).
    #[arg(long)]
    pub allow_skip: bool,
    /// Rebuild the projections from `raw_updates` (no Kafka; for history past the retention).
    #[arg(long)]
    pub reprocess_from_db: bool,
    /// Raw updates per transaction of `--reprocess-from-db`.
    #[arg(long, default_value_t = 500)]
    pub batch_size: usize,
}

/// Where to rewind to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "value")]
pub enum ReplayTarget {
    /// The log start (low watermark).
    Earliest,
    /// An absolute offset, clamped to the watermarks.
    Offset(i64),
    /// The first record with a timestamp at or after this time, unix milliseconds.
    Time(i64),
}

impl ReplayOptions {
    /// Validates the flags without needing a target (so `--check-config` works alone), but
    /// checks one when given; `--reprocess-from-db` excludes the Kafka options.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.batch_size == 0 {
            return Err(ConfigError::new("--batch-size", "must be at least 1"));
        }
        let kafka_options = self.to_earliest
            || self.to_offset.is_some()
            || self.to_time.is_some()
            || self.by_duration.is_some()
            || !self.partitions.is_empty()
            || self.topic.is_some()
            || self.dry_run
            || self.allow_skip;
        if self.reprocess_from_db {
            if kafka_options {
                return Err(ConfigError::new(
                    "--reprocess-from-db",
                    "reads raw_updates only: it takes no target, topic, partitions or --dry-run",
                ));
            }
            return Ok(());
        }
        if kafka_options {
            self.target(now_ms())?;
        }
        Ok(())
    }

    /// The one target the flags name; `now_ms` anchors `--by-duration`.
    pub fn target(&self, now_ms: i64) -> Result<ReplayTarget, ConfigError> {
        let given = [
            self.to_earliest,
            self.to_offset.is_some(),
            self.to_time.is_some(),
            self.by_duration.is_some(),
        ]
        .iter()
        .filter(|g| **g)
        .count();
        if given != 1 {
            return Err(ConfigError::new(
                "replay target",
                "give exactly one of --to-earliest, --to-offset, --to-time, --by-duration",
            ));
        }
        if self.to_earliest {
            return Ok(ReplayTarget::Earliest);
        }
        if let Some(offset) = self.to_offset {
            if offset < 0 {
                return Err(ConfigError::new("--to-offset", "must be 0 or more"));
            }
            return Ok(ReplayTarget::Offset(offset));
        }
        if let Some(time) = &self.to_time {
            return parse_time(time)
                .map(ReplayTarget::Time)
                .map_err(|reason| ConfigError::new("--to-time", reason));
        }
        let text = self.by_duration.as_deref().unwrap_or_default();
        let duration = humantime::parse_duration(text)
            .map_err(|e| ConfigError::new("--by-duration", format!("{text:?}: {e}")))?;
        let ms = i64::try_from(duration.as_millis())
            .map_err(|_| ConfigError::new("--by-duration", "too long"))?;
        Ok(ReplayTarget::Time(now_ms.saturating_sub(ms)))
    }
}

/// Parses an RFC 3339 time (any offset) to unix milliseconds.
pub fn parse_time(text: &str) -> Result<i64, String> {
    chrono::DateTime::parse_from_rfc3339(text.trim())
        .map(|t| t.timestamp_millis())
        .map_err(|e| format!("{text:?} is not an RFC 3339 time such as 2025-01-31T12:00:00Z ({e})"))
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds.
pub fn format_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    )
}

/// The current time, unix milliseconds.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A read-only view of one topic through a consumer that never joins a group: partitions,
/// watermarks, offsets for times, and single records by offset. Its calls block: run them on a
/// blocking thread.
pub struct TopicReader {
    consumer: BaseConsumer,
    topic: String,
}

impl std::fmt::Debug for TopicReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicReader")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl TopicReader {
    /// A reader for `topic` with the caller's client settings (bootstrap servers, security).
    pub fn new(client: &ClientConfig, topic: &str) -> anyhow::Result<Self> {
        let mut config = client.clone();
        // A group id is needed for a consumer queue; the reader only assigns, so it never joins
        // the group and never commits.
        config
            .set("group.id", "tgingest-operator-reader")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", "error");
        let consumer: BaseConsumer = config
            .create()
            .context("creating a Kafka client to read the topic")?;
        Ok(Self {
            consumer,
            topic: topic.to_owned(),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The topic's partitions, sorted; an error naming the topic when it does not exist.
    pub fn partitions(&self) -> anyhow::Result<Vec<i32>> {
        let metadata = self
            .consumer
            .fetch_metadata(Some(&self.topic), BROKER_TIMEOUT)
            .with_context(|| format!("cannot reach the Kafka brokers to look up {}", self.topic))?;
        let topic = metadata
            .topics()
            .iter()
            .find(|t| t.name() == self.topic)
            .filter(|t| t.error().is_none() && !t.partitions().is_empty());
        let Some(topic) = topic else {
            bail!("topic {} does not exist", self.topic);
        };
        let mut ids: Vec<i32> = topic.partitions().iter().map(|p| p.id()).collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// (log start, log end) of a partition.
    pub fn watermarks(&self, partition: i32) -> anyhow::Result<(i64, i64)> {
        self.consumer
            .fetch_watermarks(&self.topic, partition, BROKER_TIMEOUT)
            .with_context(|| format!("reading the watermarks of {}/{partition}", self.topic))
    }

    /// The broker's answer to offsets-for-times; `None` where it answered "end" or nothing.
    pub fn offsets_for_time(
        &self,
        partitions: &[i32],
        time_ms: i64,
    ) -> anyhow::Result<BTreeMap<i32, Option<i64>>> {
        let mut request = TopicPartitionList::new();
        for &partition in partitions {
            request.add_partition_offset(&self.topic, partition, Offset::Offset(time_ms))?;
        }
        let answer = self
            .consumer
            .offsets_for_times(request, BROKER_TIMEOUT)
            .with_context(|| format!("asking the broker for offsets of {}", self.topic))?;
        Ok(answer
            .elements()
            .iter()
            .map(|e| {
                let offset = match e.offset() {
                    Offset::Offset(o) if e.error().is_ok() => Some(o),
                    _ => None,
                };
                (e.partition(), offset)
            })
            .collect())
    }

    /// The first record at or after `offset` (which must be below the log end).
    pub fn read(&self, partition: i32, offset: i64) -> anyhow::Result<ConsumedRecord> {
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(&self.topic, partition, Offset::Offset(offset))?;
        // A fresh assignment discards whatever an earlier read prefetched.
        self.consumer.unassign().context("resetting the reader")?;
        self.consumer
            .assign(&assignment)
            .context("assigning the reader")?;
        let deadline = Instant::now() + BROKER_TIMEOUT;
        while Instant::now() < deadline {
            match self.consumer.poll(Duration::from_millis(200)) {
                Some(Ok(message))
                    if message.partition() == partition && message.offset() >= offset =>
                {
                    return Ok(ConsumedRecord::from_message(&message));
                }
                Some(Ok(_)) | None => {}
                Some(Err(e)) => {
                    return Err(e).with_context(|| {
                        format!("reading {}/{partition} at offset {offset}", self.topic)
                    });
                }
            }
        }
        bail!(
            "no record at or after offset {offset} of {}/{partition} within {BROKER_TIMEOUT:?}",
            self.topic
        )
    }

    fn timestamp_at(&self, partition: i32, offset: i64) -> anyhow::Result<(i64, i64)> {
        let record = self.read(partition, offset)?;
        let ts = record.timestamp_ms.with_context(|| {
            format!(
                "record {}/{partition}@{} has no timestamp",
                self.topic, record.offset
            )
        })?;
        Ok((record.offset, ts))
    }

    /// The first offset in `[low, high]` whose record's timestamp is at or after `time_ms`
    /// (`high` when none is), starting from the broker's answer `hint` and checking it against the
    /// records at and before it. Timestamps are assumed non-decreasing within the partition, as
    /// the broker's own time index assumes.
    pub fn first_offset_at_or_after(
        &self,
        partition: i32,
        time_ms: i64,
        (low, high): (i64, i64),
        hint: Option<i64>,
    ) -> anyhow::Result<i64> {
        if low >= high {
            return Ok(high);
        }
        if let Some(candidate) = hint.filter(|c| (low..=high).contains(c)) {
            let at_or_after =
                candidate == high || self.timestamp_at(partition, candidate)?.1 >= time_ms;
            let before = candidate == low || {
                let (offset, ts) = self.timestamp_at(partition, candidate - 1)?;
                offset < candidate && ts < time_ms
            };
            if at_or_after && before {
                return Ok(candidate);
            }
            tracing::info!(
                partition,
                candidate,
                "the broker's offset for the time does not match the record timestamps; searching"
            );
        }
        let (mut lo, mut hi) = (low, high);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let (offset, ts) = self.timestamp_at(partition, mid)?;
            if ts >= time_ms {
                hi = mid;
            } else {
                lo = offset + 1;
            }
        }
        Ok(lo)
    }
}

/// One partition of a replay plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionPlan {
    pub partition: i32,
    pub log_start: i64,
    pub log_end: i64,
    /// The stored `next_offset`; `None` when the group has no row for the partition yet.
    pub stored: Option<i64>,
    pub target: i64,
}

impl PartitionPlan {
    /// Where the group would continue without the replay (no row: the log start).
    fn current(&self) -> i64 {
        self.stored.unwrap_or(self.log_start)
    }

    /// Records the group has processed and will read again.
    pub fn rereads(&self) -> i64 {
        (self.current() - self.target).max(0)
    }

    /// Records the group has not processed and the replay would skip.
    pub fn skips(&self) -> i64 {
        (self.target - self.current()).max(0)
    }
}

/// What a replay will do, per partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplayPlan {
    pub group_id: String,
    pub topic: String,
    pub target: ReplayTarget,
    pub partitions: Vec<PartitionPlan>,
}

impl ReplayPlan {
    pub fn total_rereads(&self) -> i64 {
        self.partitions.iter().map(PartitionPlan::rereads).sum()
    }

    /// The plan as a table.
    pub fn render(&self) -> String {
        let target = match self.target {
            ReplayTarget::Earliest => "earliest".to_owned(),
            ReplayTarget::Offset(o) => format!("offset {o}"),
            ReplayTarget::Time(t) => format!("time {}", format_time(t)),
        };
        let mut out = format!(
            "replay of group {} on topic {} to {target}\n{:>9}  {:>12}  {:>12}  {:>12}  {:>12}  {:>10}\n",
            self.group_id,
            self.topic,
            "PARTITION",
            "LOG START",
            "LOG END",
            "STORED",
            "TARGET",
            "RE-READ"
        );
        for p in &self.partitions {
            let stored = p.stored.map_or_else(|| "-".to_owned(), |s| s.to_string());
            let reread = if p.skips() > 0 {
                format!("skip {}", p.skips())
            } else {
                p.rereads().to_string()
            };
            out.push_str(&format!(
                "{:>9}  {:>12}  {:>12}  {:>12}  {:>12}  {:>10}\n",
                p.partition, p.log_start, p.log_end, stored, p.target, reread
            ));
        }
        out.push_str(&format!(
            "{} records to re-read in {} partitions\n",
            self.total_rereads(),
            self.partitions.len()
        ));
        out
    }
}

/// Builds the plan: the broker's watermarks and, for a time, the verified offsets; the stored
/// offsets from the database. `partitions` empty means all.
pub async fn plan(
    pool: &PgPool,
    client: &ClientConfig,
    group_id: &str,
    topic: &str,
    partitions: &[i32],
    target: ReplayTarget,
) -> anyhow::Result<ReplayPlan> {
    let client = client.clone();
    let topic_owned = topic.to_owned();
    let wanted = partitions.to_vec();
    let targets =
        tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<(i32, i64, i64, i64)>> {
            let reader = TopicReader::new(&client, &topic_owned)?;
            let all = reader.partitions()?;
            let chosen = if wanted.is_empty() {
                all
            } else {
                if let Some(missing) = wanted.iter().find(|p| !all.contains(p)) {
                    bail!(
                        "topic {topic_owned} has no partition {missing} (it has {})",
                        all.len()
                    );
                }
                let mut chosen = wanted;
                chosen.sort_unstable();
                chosen.dedup();
                chosen
            };
            let hints = match target {
                ReplayTarget::Time(t) => reader.offsets_for_time(&chosen, t)?,
                _ => BTreeMap::new(),
            };
            let mut out = Vec::with_capacity(chosen.len());
            for partition in chosen {
                let (low, high) = reader.watermarks(partition)?;
                let target = match target {
                    ReplayTarget::Earliest => low,
                    ReplayTarget::Offset(o) => o.clamp(low, high),
                    ReplayTarget::Time(t) => reader.first_offset_at_or_after(
                        partition,
                        t,
                        (low, high),
                        hints.get(&partition).copied().flatten(),
                    )?,
                };
                out.push((partition, low, high, target));
            }
            Ok(out)
        })
        .await
        .context("the broker lookup panicked")??;

    let stored: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT partition, next_offset FROM consumer_offsets WHERE group_id = $1 AND topic = $2",
    )
    .bind(group_id)
    .bind(topic)
    .fetch_all(pool)
    .await
    .context("reading the stored offsets")?;
    let stored: BTreeMap<i32, i64> = stored.into_iter().collect();
    Ok(ReplayPlan {
        group_id: group_id.to_owned(),
        topic: topic.to_owned(),
        target,
        partitions: targets
            .into_iter()
            .map(|(partition, log_start, log_end, target)| PartitionPlan {
                partition,
                log_start,
                log_end,
                stored: stored.get(&partition).copied(),
                target,
            })
            .collect(),
    })
}

/// A partition's offsets row after the replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AppliedRewind {
    pub partition: i32,
    pub next_offset: i64,
    pub owner_epoch: i64,
    pub rewind_seq: i64,
}

/// Applies a plan in one transaction: `next_offset = target`, `rewind_seq + 1` for every planned
/// partition (a missing row is created), `owner_epoch` untouched. Refuses a plan that skips
/// unprocessed records unless `allow_skip`.
pub async fn apply(
    pool: &PgPool,
    plan: &ReplayPlan,
    allow_skip: bool,
) -> anyhow::Result<Vec<AppliedRewind>> {
    let skipping: Vec<String> = plan
        .partitions
        .iter()
        .filter(|p| p.skips() > 0)
        .map(|p| format!("{} ({} records)", p.partition, p.skips()))
        .collect();
    if !skipping.is_empty() && !allow_skip {
        bail!(
            "the target is past records not processed yet on partitions {}: they would get neither rows nor a dead letter (pass --allow-skip to do it anyway)",
            skipping.join(", ")
        );
    }
    let partitions: Vec<i32> = plan.partitions.iter().map(|p| p.partition).collect();
    let targets: Vec<i64> = plan.partitions.iter().map(|p| p.target).collect();
    let mut tx = pool
        .begin()
        .await
        .context("starting the replay transaction")?;
    let rows: Vec<(i32, i64, i64, i64)> = sqlx::query_as(
        "INSERT INTO consumer_offsets AS o \
             (group_id, topic, partition, next_offset, owner_epoch, rewind_seq, updated_at) \
         SELECT $1, $2, u.partition, u.target, 0, 1, now() \
         FROM UNNEST($3::integer[], $4::bigint[]) AS u(partition, target) \
         ORDER BY u.partition \
         ON CONFLICT (group_id, topic, partition) DO UPDATE \
             SET next_offset = EXCLUDED.next_offset, rewind_seq = o.rewind_seq + 1, \
                 updated_at = now() \
         RETURNING partition, next_offset, owner_epoch, rewind_seq",
    )
    .bind(&plan.group_id)
    .bind(&plan.topic)
    .bind(&partitions)
    .bind(&targets)
    .fetch_all(&mut *tx)
    .await
    .context("rewinding the stored offsets")?;
    tx.commit().await.context("committing the replay")?;
    let mut applied: Vec<AppliedRewind> = rows
        .into_iter()
        .map(
            |(partition, next_offset, owner_epoch, rewind_seq)| AppliedRewind {
                partition,
                next_offset,
                owner_epoch,
                rewind_seq,
            },
        )
        .collect();
    applied.sort_by_key(|a| a.partition);
    Ok(applied)
}

/// What `--reprocess-from-db` did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReprocessSummary {
    /// Raw updates read.
    pub raw_updates: u64,
    /// Raw updates the processor now rejects (left as they are, logged).
    pub rejected: u64,
    /// Rows inserted or rewritten per projection table (rows the upsert left alone not counted).
    pub rows_written: BTreeMap<String, u64>,
    /// Raw updates whose `processor_version` was raised.
    pub raw_versions_raised: u64,
}

/// (bot_id, update_id, payload_sha256, payload_bytes, update_epoch).
type RawRow = (i64, i64, Vec<u8>, Vec<u8>, i64);

/// Rebuilds every projection from `raw_updates`, `batch_size` raw updates per transaction, in key
/// order, through the consumer's projection upsert with `processor_version`.
pub async fn reprocess_from_db(
    pool: &PgPool,
    processor_version: i32,
    batch_size: usize,
    progress: &Progress,
) -> anyhow::Result<ReprocessSummary> {
    let schema = consumer::projection::ProjectionSchema::load(pool)
        .await
        .context("reading the projection tables")?;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM raw_updates")
        .fetch_one(pool)
        .await
        .context("counting raw updates")?;
    progress.start(
        "reprocessing raw updates",
        u64::try_from(total).unwrap_or(0),
    );
    let mut summary = ReprocessSummary::default();
    let limit = i64::try_from(batch_size.max(1)).unwrap_or(i64::MAX);
    let mut after: (i64, i64, Vec<u8>) = (i64::MIN, i64::MIN, Vec::new());
    loop {
        // Each update keeps the update-id epoch its first copy was assigned.
        let batch: Vec<RawRow> = sqlx::query_as(
            "SELECT bot_id, update_id, payload_sha256, payload_bytes, update_epoch \
             FROM raw_updates \
             WHERE (bot_id, update_id, payload_sha256) > ($1, $2, $3) \
             ORDER BY bot_id, update_id, payload_sha256 \
             LIMIT $4",
        )
        .bind(after.0)
        .bind(after.1)
        .bind(&after.2)
        .bind(limit)
        .fetch_all(pool)
        .await
        .context("reading raw updates")?;
        let Some(last) = batch.last() else { break };
        after = (last.0, last.1, last.2.clone());

        let mut normalized = Vec::with_capacity(batch.len());
        for (bot_id, update_id, _, bytes, epoch) in &batch {
            match processor::normalize(*bot_id, bytes) {
                Ok(n) => normalized.push((n, *epoch)),
                Err(rejection) => {
                    summary.rejected += 1;
                    tracing::warn!(
                        bot_id,
                        update_id,
                        class = rejection.class(),
                        "a stored raw update is rejected by this processor: left as it is ({rejection})"
                    );
                }
            }
        }
        let refs: Vec<(&processor::Normalized, i64)> =
            normalized.iter().map(|(n, epoch)| (n, *epoch)).collect();
        let bots: Vec<i64> = normalized.iter().map(|(n, _)| n.raw.bot_id).collect();
        let updates: Vec<i64> = normalized.iter().map(|(n, _)| n.raw.update_id).collect();
        let hashes: Vec<Vec<u8>> = normalized
            .iter()
            .map(|(n, _)| n.raw.payload_sha256.to_vec())
            .collect();

        let mut tx = pool
            .begin()
            .await
            .context("starting a reprocessing transaction")?;
        let written = schema
            .upsert(&mut tx, &refs, processor_version)
            .await
            .context("writing projections")?;
        let raised = sqlx::query(
            "UPDATE raw_updates AS r SET processor_version = $4 \
             FROM UNNEST($1::bigint[], $2::bigint[], $3::bytea[]) AS u(bot_id, update_id, sha) \
             WHERE r.bot_id = u.bot_id AND r.update_id = u.update_id \
               AND r.payload_sha256 = u.sha AND r.processor_version < $4",
        )
        .bind(&bots)
        .bind(&updates)
        .bind(&hashes)
        .bind(processor_version)
        .execute(&mut *tx)
        .await
        .context("raising the processor version of raw updates")?;
        tx.commit()
            .await
            .context("committing a reprocessing batch")?;

        summary.raw_updates += batch.len() as u64;
        summary.raw_versions_raised += raised.rows_affected();
        for (table, rows) in written {
            *summary.rows_written.entry(table.to_owned()).or_default() += rows;
        }
        progress.advance(batch.len() as u64);
    }
    progress.finish();
    Ok(summary)
}

/// Progress of a long operation: a bar on a terminal, a plain line every few seconds otherwise
/// (logs, CI), both on stderr so stdout stays the command's result.
#[derive(Debug)]
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    plain: std::sync::Mutex<PlainProgress>,
}

#[derive(Debug, Default)]
struct PlainProgress {
    label: String,
    total: u64,
    done: u64,
    last_line: Option<Instant>,
}

impl Progress {
    /// A bar when stderr is a terminal, plain lines otherwise.
    pub fn for_stderr() -> Self {
        if std::io::stderr().is_terminal() {
            Self::bar()
        } else {
            Self::plain()
        }
    }

    /// Plain lines on stderr.
    pub fn plain() -> Self {
        Self {
            bar: None,
            plain: std::sync::Mutex::new(PlainProgress::default()),
        }
    }

    fn bar() -> Self {
        let bar = indicatif::ProgressBar::new(0);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg} [{bar:40}] {pos}/{len} ({per_sec}, {eta} left)",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        Self {
            bar: Some(bar),
            plain: std::sync::Mutex::new(PlainProgress::default()),
        }
    }

    pub fn start(&self, label: &str, total: u64) {
        if let Some(bar) = &self.bar {
            bar.set_length(total);
            bar.set_message(label.to_owned());
            return;
        }
        if let Ok(mut p) = self.plain.lock() {
            *p = PlainProgress {
                label: label.to_owned(),
                total,
                done: 0,
                last_line: Some(Instant::now()),
            };
            eprintln!("{label}: 0/{total}");
        }
    }

    pub fn advance(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
            return;
        }
        if let Ok(mut p) = self.plain.lock() {
            p.done += n;
            if p.last_line
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(2))
            {
                eprintln!("{}: {}/{}", p.label, p.done, p.total);
                p.last_line = Some(Instant::now());
            }
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
            return;
        }
        if let Ok(p) = self.plain.lock() {
            eprintln!("{}: {}/{} done", p.label, p.done, p.total);
        }
    }
}

/// `tgingest replay` (after the configuration was validated).
pub async fn run_command(
    group_id: &str,
    options: &ReplayOptions,
    kafka: &KafkaArgs,
    env: &dyn Env,
    database: &DatabaseConfig,
) -> anyhow::Result<()> {
    options.check()?;
    let pool = crate::db::connect(database).await?;
    crate::db::ensure_schema_current(&pool).await?;
    if options.reprocess_from_db {
        let summary = reprocess_from_db(
            &pool,
            processor::PROCESSOR_VERSION,
            options.batch_size,
            &Progress::for_stderr(),
        )
        .await?;
        println!(
            "reprocessed {} raw updates with processor version {} ({} rejected, {} raw versions raised)",
            summary.raw_updates,
            processor::PROCESSOR_VERSION,
            summary.rejected,
            summary.raw_versions_raised
        );
        for (table, rows) in &summary.rows_written {
            println!("  {table}: {rows} rows written");
        }
        return Ok(());
    }
    let target = options.target(now_ms())?;
    let kafka = kafka.resolve(env)?;
    let topic = options.topic.clone().unwrap_or(kafka.topic.clone());
    let plan = plan(
        &pool,
        &kafka.client,
        group_id,
        &topic,
        &options.partitions,
        target,
    )
    .await?;
    print!("{}", plan.render());
    if options.dry_run {
        println!("dry run: nothing changed");
        return Ok(());
    }
    let applied = apply(&pool, &plan, options.allow_skip).await?;
    println!(
        "rewound {} partitions of group {group_id}; running consumers re-seek within their idle re-read interval",
        applied.len()
    );
    Ok(())
}
