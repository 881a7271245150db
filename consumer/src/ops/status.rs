//! The status queries (DESIGN.md §9): the authoritative state of one consumer group, from the
//! database (stored offsets, gaps, newest updates, dead letters) and the broker (log ends).
//!
//! Guarantees: lag is computed against the database's stored offsets
//! ([`OffsetStore::list`]), never Kafka's committed mirror (a partition without a stored row
//! counts from the log start, as the consumer's `earliest` start policy reads it); ages are
//! measured with the database's clock, so a skewed operator machine cannot fake freshness.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use rdkafka::ClientConfig;
use serde::Serialize;
use sqlx::PgPool;

use super::time::format_time;
use super::topic::TopicReader;
use crate::offsets::OffsetStore;

/// One partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionStatus {
    pub partition: i32,
    pub log_start: i64,
    pub log_end: i64,
    /// The stored `next_offset`; `None` when the group has no row yet.
    pub stored_offset: Option<i64>,
    /// Records between the stored offset (or the log start) and the log end.
    pub lag: i64,
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
    /// The newest `received_at` among the bot's stored updates (RFC 3339).
    pub newest_update: Option<String>,
    pub age_seconds: Option<i64>,
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
    /// Thresholds passed, one sentence each; empty when none (or none given).
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
    let stored: BTreeMap<i32, (i64, i64, i64, i64)> =
        OffsetStore::new(pool.clone(), group_id, topic)
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
            let from = row.map_or(log_start, |r| r.0);
            PartitionStatus {
                partition,
                log_start,
                log_end,
                stored_offset: row.map(|r| r.0),
                lag: (log_end - from).max(0),
                last_write: row.map(|r| format_time(r.3)),
                last_write_age_seconds: row.map(|r| (now_ms - r.3).max(0) / 1000),
                gaps: gaps.get(&partition).copied().unwrap_or(0),
                owner_epoch: row.map(|r| r.1),
                rewind_seq: row.map(|r| r.2),
            }
        })
        .collect();

    let bots: Vec<(i64, Option<i64>, i64)> = sqlx::query_as(
        "SELECT bot_id, (extract(epoch FROM max(received_at)) * 1000)::bigint, count(*) \
         FROM raw_updates GROUP BY bot_id ORDER BY bot_id",
    )
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

    let mut breaches = Vec::new();
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
        breaches,
    })
}
