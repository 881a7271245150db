//! Replay (DESIGN.md §4, §5.3, §9): plans a rewind of a consumer group's stored offsets from the
//! broker's watermarks and record timestamps, applies it through the offset store so the running
//! consumers reprocess history, and rebuilds projections from `raw_updates` without Kafka.
//!
//! Guarantees:
//! - targets come from the broker ([`TopicReader`]), a time target verified against the record
//!   timestamps around the broker's answer;
//! - applying a plan is one statement ([`OffsetStore::rewind_partitions`]) that sets
//!   `next_offset` and bumps `rewind_seq` of every planned partition (creating missing rows) and
//!   never touches `owner_epoch`, so the current owners re-seek instead of being fenced;
//! - a plan that would move a partition forward past records it has not processed is refused
//!   unless the operator allows skipping them, since those records would end with neither rows
//!   nor a dead letter;
//! - a replay of a partition halted on a log anomaly (DESIGN.md §5.10) is the operator's decision
//!   on it: the plan shows the anomaly and counts what the new log loses before the target (a
//!   target past the new log's start needs the same permission to skip); applying it resolves
//!   the anomaly, recording that decision, and moves the partition to the next topic
//!   incarnation, in the rewind's transaction;
//! - reprocessing from the database writes projections through the consumer's own upsert
//!   ([`crate::projection::ProjectionSchema::upsert`]), so equal input rewrites nothing and a
//!   newer processor version rewrites only rows derived from the same updates; it takes the
//!   worker's table order (raw_updates rows in key order, then the projections), so it never
//!   deadlocks with a live consumer; it reads each batch inside its transaction, share-locking
//!   the rows, so an erasure or a retention run never races it: scrubbed rows project scrubbed,
//!   and rows behind the retention horizon are not projected (DESIGN.md §5.11).

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use rdkafka::ClientConfig;
use serde::Serialize;
use sqlx::PgPool;

use super::progress::Progress;
use super::topic::TopicReader;
use crate::log_anomalies::LogAnomaly;
use crate::offsets::{OffsetStore, RewindTarget};

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

/// One partition of a replay plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionPlan {
    pub partition: i32,
    pub log_start: i64,
    pub log_end: i64,
    /// The stored `next_offset`; `None` when the group has no row for the partition yet.
    pub stored: Option<i64>,
    pub target: i64,
    /// The open log anomaly that halts the partition: this replay decides it.
    pub anomaly: Option<LogAnomaly>,
}

impl PartitionPlan {
    /// Where the group would continue without the replay in the log as it is now (no row, or a
    /// stored offset that belongs to another log: the log start).
    fn current(&self) -> i64 {
        match (self.anomaly.is_some(), self.stored) {
            (false, Some(stored)) => stored,
            _ => self.log_start,
        }
    }

    /// Records the group has processed and will read again.
    pub fn rereads(&self) -> i64 {
        if self.anomaly.is_some() {
            // None of the new log's records were processed.
            return 0;
        }
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

    let store = OffsetStore::new(pool.clone(), group_id, topic);
    let stored: BTreeMap<i32, i64> = store
        .list()
        .await
        .context("reading the stored offsets")?
        .into_iter()
        .map(|row| (row.partition, row.stored.next_offset))
        .collect();
    let mut anomalies: BTreeMap<i32, LogAnomaly> = store
        .open_anomalies()
        .await
        .context("reading the open log anomalies")?
        .into_iter()
        .map(|a| (a.partition, a))
        .collect();
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
                anomaly: anomalies.remove(&partition),
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
    pub topic_incarnation: i64,
    /// The log anomaly this replay resolved (its id), if the partition was halted.
    pub resolved_anomaly: Option<i64>,
}

/// Applies a plan in one statement: `next_offset = target`, `rewind_seq + 1` for every planned
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
    let targets: Vec<RewindTarget> = plan
        .partitions
        .iter()
        .map(|p| RewindTarget {
            partition: p.partition,
            offset: p.target,
            log: Some((p.log_start, p.log_end)),
        })
        .collect();
    let applied = OffsetStore::new(pool.clone(), &plan.group_id, &plan.topic)
        .rewind_partitions(&targets)
        .await
        .context("rewinding the stored offsets")?
        .into_iter()
        .map(|rewound| AppliedRewind {
            partition: rewound.partition,
            next_offset: rewound.stored.next_offset,
            owner_epoch: rewound.stored.owner_epoch,
            rewind_seq: rewound.stored.rewind_seq,
            topic_incarnation: rewound.stored.topic_incarnation,
            resolved_anomaly: rewound.resolved_anomaly,
        })
        .collect();
    Ok(applied)
}

/// What `--reprocess-from-db` would do: how many raw updates it would read, with which
/// processor version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ReprocessPlan {
    pub raw_updates: u64,
    pub processor_version: i32,
}

/// The plan of [`reprocess_from_db`], changing nothing.
pub async fn reprocess_plan(
    pool: &PgPool,
    processor_version: i32,
) -> anyhow::Result<ReprocessPlan> {
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM raw_updates")
        .fetch_one(pool)
        .await
        .context("counting raw updates")?;
    Ok(ReprocessPlan {
        raw_updates: u64::try_from(total).unwrap_or(0),
        processor_version,
    })
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
    /// Raw updates behind the retention horizon (not projected; the next retention run removes
    /// them).
    pub retained: u64,
}

/// (bot_id, update_id, payload_sha256, payload_bytes, update_epoch, behind the record horizon).
type RawRow = (i64, i64, Vec<u8>, Vec<u8>, i64, bool);

/// Rebuilds every projection from `raw_updates`, `batch_size` raw updates per transaction, in key
/// order, through the consumer's projection upsert with `processor_version`.
pub async fn reprocess_from_db(
    pool: &PgPool,
    processor_version: i32,
    batch_size: usize,
    progress: &dyn Progress,
) -> anyhow::Result<ReprocessSummary> {
    let schema = crate::projection::ProjectionSchema::load(pool)
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
        let mut tx = pool
            .begin()
            .await
            .context("starting a reprocessing transaction")?;
        // Read inside the transaction, rows share-locked in key order (the worker's order,
        // DESIGN.md §5.8): an erasure scrubbing or a retention run deleting one of them waits for
        // this batch, or this batch reads what they left. Each update keeps the update-id epoch
        // its first copy was assigned. Rows behind the record horizon are not projected again:
        // retention removed what they wrote.
        let batch: Vec<RawRow> = sqlx::query_as(
            "SELECT r.bot_id, r.update_id, r.payload_sha256, r.payload_bytes, r.update_epoch, \
                    coalesce(r.received_at < h.horizon, false) \
             FROM raw_updates AS r \
             LEFT JOIN retention_horizons AS h ON h.table_name = 'raw_updates' \
             WHERE (r.bot_id, r.update_id, r.payload_sha256) > ($1, $2, $3) \
             ORDER BY r.bot_id, r.update_id, r.payload_sha256 \
             LIMIT $4 \
             FOR SHARE OF r",
        )
        .bind(after.0)
        .bind(after.1)
        .bind(&after.2)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await
        .context("reading raw updates")?;
        let Some(last) = batch.last() else {
            tx.rollback().await.context("ending the reprocessing")?;
            break;
        };
        after = (last.0, last.1, last.2.clone());

        let mut normalized = Vec::with_capacity(batch.len());
        let mut keys: Vec<(i64, i64, Vec<u8>)> = Vec::with_capacity(batch.len());
        for (bot_id, update_id, sha, bytes, epoch, retained) in &batch {
            if *retained {
                summary.retained += 1;
                continue;
            }
            // A scrubbed row's bytes are the scrubbed update; its key keeps the original digest.
            match processor::normalize(*bot_id, bytes) {
                Ok(n) => {
                    keys.push((*bot_id, *update_id, sha.clone()));
                    normalized.push((n, *epoch));
                }
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
        let bots: Vec<i64> = keys.iter().map(|k| k.0).collect();
        let updates: Vec<i64> = keys.iter().map(|k| k.1).collect();
        let hashes: Vec<Vec<u8>> = keys.into_iter().map(|k| k.2).collect();

        // The worker's table order (DESIGN.md §5.8): raw_updates rows first, locked in key order
        // as the worker's insert locks them, then the projections through the shared upsert.
        // The reverse order deadlocks with a consumer writing the same keys.
        let raised = sqlx::query(
            "WITH locked AS ( \
                 SELECT r.bot_id, r.update_id, r.payload_sha256 FROM raw_updates AS r \
                 JOIN UNNEST($1::bigint[], $2::bigint[], $3::bytea[]) AS u(bot_id, update_id, sha) \
                   ON r.bot_id = u.bot_id AND r.update_id = u.update_id \
                  AND r.payload_sha256 = u.sha \
                 WHERE r.processor_version < $4 \
                 ORDER BY r.bot_id, r.update_id, r.payload_sha256 \
                 FOR UPDATE OF r \
             ) \
             UPDATE raw_updates AS r SET processor_version = $4 FROM locked AS l \
             WHERE r.bot_id = l.bot_id AND r.update_id = l.update_id \
               AND r.payload_sha256 = l.payload_sha256",
        )
        .bind(&bots)
        .bind(&updates)
        .bind(&hashes)
        .bind(processor_version)
        .execute(&mut *tx)
        .await
        .context("raising the processor version of raw updates")?;
        let written = schema
            .upsert(&mut tx, &refs, processor_version)
            .await
            .context("writing projections")?;
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
