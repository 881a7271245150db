//! The status queries (DESIGN.md §9): the authoritative state of one consumer group, from the
//! database (stored offsets, gaps, newest updates, dead letters) and the broker (log ends, and
//! the topic's durability: replication factor and `min.insync.replicas`).
//!
//! Guarantees: lag is computed against the database's stored offsets
//! ([`OffsetStore::list`]), never Kafka's committed mirror (a partition without a stored row
//! counts from the log start, as the consumer's `earliest` start policy reads it); ages are
//! measured with the database's clock, so a skewed operator machine cannot fake freshness; a
//! partition whose log is not the one the database remembers (an open log anomaly, or a stored
//! offset past the log end not yet recorded) is shown as such, its lag counting the whole log
//! that waits for the operator's decision, and is always a breach (DESIGN.md §5.10). A broker
//! that cannot report `min.insync.replicas` makes it unknown, never fails the report; a topic
//! below what survives a broker loss is a warning ([`TopicDurability::warnings`]), not a breach.
//! Its cost does not grow with the stored updates: the per-bot figures come from the summary the
//! writers maintain (`raw_update_counts`), never from a scan of `raw_updates`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use rdkafka::ClientConfig;
use serde::Serialize;
use sqlx::PgPool;

use super::time::format_time;
use super::topic::{TopicDurability, TopicReader};
use crate::log_anomalies::LogAnomaly;
use crate::offsets::OffsetStore;

/// One partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionStatus {
    pub partition: i32,
    pub log_start: i64,
    pub log_end: i64,
    /// The stored `next_offset`; `None` when the group has no row yet.
    pub stored_offset: Option<i64>,
    /// Records between the stored offset (or the log start) and the log end; for a partition
    /// halted or past the log end, the whole log (none of it will be read before a decision).
    pub lag: i64,
    /// An open log anomaly halts the partition (see [`StatusReport::anomalies`]).
    pub halted: bool,
    /// The stored offset is above the log end (the topic was recreated or truncated).
    pub past_log_end: bool,
    /// When the stored offset last changed (RFC 3339), if there is a row.
    pub last_write: Option<String>,
    pub last_write_age_seconds: Option<i64>,
    /// `offset_gaps` rows recorded for the partition.
    pub gaps: i64,
    pub owner_epoch: Option<i64>,
    pub rewind_seq: Option<i64>,
}

/// One bot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BotStatus {
    pub bot_id: i64,
    /// The newest `received_at` among the bot's updates ever stored (RFC 3339; a removal by
    /// retention or erasure does not move it back).
    pub newest_update: Option<String>,
    pub age_seconds: Option<i64>,
    /// Updates stored in `raw_updates`, from the summary the writers maintain
    /// (`migrations/0007_raw_update_counts.sql`): reading it costs bots x partitions rows,
    /// whatever the number of stored updates.
    pub raw_updates: i64,
}

/// Unresolved dead letters of the topic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DeadLetterStatus {
    pub pending: i64,
    pub by_class: BTreeMap<String, i64>,
    pub oldest_pending: Option<String>,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusReport {
    pub group_id: String,
    pub topic: String,
    /// The database's clock when the report was taken (RFC 3339).
    pub at: String,
    pub partitions: Vec<PartitionStatus>,
    pub total_lag: i64,
    pub bots: Vec<BotStatus>,
    pub dead_letters: DeadLetterStatus,
    /// Open log anomalies: each halts its partition until an operator's replay decides it.
    pub anomalies: Vec<LogAnomaly>,
    /// The topic's replication factor and `min.insync.replicas`, as the brokers report them.
    pub durability: TopicDurability,
    /// Thresholds passed and halted partitions, one sentence each; empty when none.
    pub breaches: Vec<String>,
}

/// Thresholds for the exit status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Thresholds {
    pub max_lag: Option<i64>,
    pub max_age: Option<Duration>,
}

/// Collects the report.
pub async fn collect(
    pool: &PgPool,
    client: &ClientConfig,
    group_id: &str,
    topic: &str,
    thresholds: Thresholds,
) -> anyhow::Result<StatusReport> {
    let durability = topic_durability(client, topic).await?;
    let client = client.clone();
    let topic_owned = topic.to_owned();
    let marks = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<(i32, i64, i64)>> {
        let reader = TopicReader::new(&client, &topic_owned)?;
        reader
            .partitions()?
            .into_iter()
            .map(|p| reader.watermarks(p).map(|(low, high)| (p, low, high)))
            .collect()
    })
    .await
    .context("the broker lookup panicked")??;

    let now_ms: i64 = sqlx::query_scalar("SELECT (extract(epoch FROM now()) * 1000)::bigint")
        .fetch_one(pool)
        .await
        .context("reading the database clock")?;
    let store = OffsetStore::new(pool.clone(), group_id, topic);
    let anomalies = store
        .open_anomalies()
        .await
        .context("reading the open log anomalies")?;
    let stored: BTreeMap<i32, (i64, i64, i64, i64)> = store
        .list()
        .await
        .context("reading the stored offsets")?
        .into_iter()
        .map(|row| {
            let s = row.stored;
            (
                row.partition,
                (
                    s.next_offset,
                    s.owner_epoch,
                    s.rewind_seq,
                    row.updated_at_ms,
                ),
            )
        })
        .collect();
    let gaps: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT partition, count(*) FROM offset_gaps WHERE group_id = $1 AND topic = $2 \
         GROUP BY partition",
    )
    .bind(group_id)
    .bind(topic)
    .fetch_all(pool)
    .await
    .context("reading the recorded gaps")?;
    let gaps: BTreeMap<i32, i64> = gaps.into_iter().collect();

    let partitions: Vec<PartitionStatus> = marks
        .into_iter()
        .map(|(partition, log_start, log_end)| {
            let row = stored.get(&partition);
            let halted = anomalies.iter().any(|a| a.partition == partition);
            let past_log_end = row.is_some_and(|r| r.0 > log_end);
            let from = match row {
                Some(r) if !halted && !past_log_end => r.0,
                _ => log_start,
            };
            PartitionStatus {
                partition,
                log_start,
                log_end,
                stored_offset: row.map(|r| r.0),
                lag: (log_end - from).max(0),
                halted,
                past_log_end,
                last_write: row.map(|r| format_time(r.3)),
                last_write_age_seconds: row.map(|r| (now_ms - r.3).max(0) / 1000),
                gaps: gaps.get(&partition).copied().unwrap_or(0),
                owner_epoch: row.map(|r| r.1),
                rewind_seq: row.map(|r| r.2),
            }
        })
        .collect();

    let bots: Vec<(i64, Option<i64>, i64)> = sqlx::query_as(crate::raw_counts::PER_BOT)
        .fetch_all(pool)
        .await
        .context("reading the newest update per bot")?;
    let bots: Vec<BotStatus> = bots
        .into_iter()
        .map(|(bot_id, newest, count)| BotStatus {
            bot_id,
            newest_update: newest.map(format_time),
            age_seconds: newest.map(|n| (now_ms - n).max(0) / 1000),
            raw_updates: count,
        })
        .collect();

    let classes: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT error_class, count(*), (extract(epoch FROM min(first_seen)) * 1000)::bigint \
         FROM dead_letters WHERE topic = $1 AND resolved_at IS NULL \
         GROUP BY error_class ORDER BY error_class",
    )
    .bind(topic)
    .fetch_all(pool)
    .await
    .context("reading the pending dead letters")?;
    let dead_letters = DeadLetterStatus {
        pending: classes.iter().map(|c| c.1).sum(),
        oldest_pending: classes.iter().map(|c| c.2).min().map(format_time),
        by_class: classes
            .into_iter()
            .map(|(class, n, _)| (class, n))
            .collect(),
    };

    let mut breaches: Vec<String> = anomalies
        .iter()
        .map(|a| format!("partition {} is halted: {a}", a.partition))
        .collect();
    for p in partitions.iter().filter(|p| p.past_log_end && !p.halted) {
        breaches.push(format!(
            "partition {}: the stored offset {} is past the log end {} (the topic was recreated or truncated; the consumer halts it on takeover)",
            p.partition,
            p.stored_offset.unwrap_or_default(),
            p.log_end
        ));
    }
    if let Some(max) = thresholds.max_lag {
        for p in partitions.iter().filter(|p| p.lag > max) {
            breaches.push(format!(
                "partition {} lags {} records (max {max})",
                p.partition, p.lag
            ));
        }
    }
    if let Some(max) = thresholds.max_age {
        let max_s = i64::try_from(max.as_secs()).unwrap_or(i64::MAX);
        for b in &bots {
            if let Some(age) = b.age_seconds.filter(|age| *age > max_s) {
                breaches.push(format!(
                    "bot {}: newest stored update is {} old (max {})",
                    b.bot_id,
                    humantime::format_duration(Duration::from_secs(age.unsigned_abs())),
                    humantime::format_duration(max)
                ));
            }
        }
    }
    Ok(StatusReport {
        group_id: group_id.to_owned(),
        topic: topic.to_owned(),
        at: format_time(now_ms),
        total_lag: partitions.iter().map(|p| p.lag).sum(),
        partitions,
        bots,
        dead_letters,
        anomalies,
        durability,
        breaches,
    })
}

/// The topic's durability as the brokers report it (see [`TopicReader::durability`]).
async fn topic_durability(client: &ClientConfig, topic: &str) -> anyhow::Result<TopicDurability> {
    let client = client.clone();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || TopicReader::new(&client, &topic)?.durability())
        .await
        .context("the durability lookup panicked")?
}
