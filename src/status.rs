//! `tgingest status`: the authoritative state of one consumer group, from the database (stored
//! offsets, gaps, newest updates, dead letters) and the broker (log ends), for people (a table)
//! and scripts (`--json`, exit status 3 when a threshold is passed).
//!
//! Guarantees: lag is computed against the database's stored offsets, never Kafka's committed
//! mirror (a partition without a stored row counts from the log start, as the consumer's
//! `earliest` start policy reads it); ages are measured with the database's clock, so a skewed
//! operator machine cannot fake freshness.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use rdkafka::ClientConfig;
use serde::Serialize;
use sqlx::PgPool;

use crate::config::{ConfigError, DatabaseConfig, Env, KafkaArgs};
use crate::replay::{TopicReader, format_time};

/// Exit status of `tgingest status` when lag or age passes the given thresholds.
pub const EXIT_THRESHOLD_BREACHED: u8 = 3;

/// Status options of the command line (flattened into `tgingest status`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct StatusOptions {
    /// Topic to report on (default: KAFKA_TOPIC).
    #[arg(long)]
    pub topic: Option<String>,
    /// Print one JSON document instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Exit with status 3 when any partition's lag exceeds this many records.
    #[arg(long, value_name = "RECORDS")]
    pub max_lag: Option<i64>,
    /// Exit with status 3 when any bot's newest stored update is older than this (e.g. `15m`).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub max_age: Option<Duration>,
}

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
    let stored: Vec<(i32, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT partition, next_offset, owner_epoch, rewind_seq, \
                (extract(epoch FROM updated_at) * 1000)::bigint \
         FROM consumer_offsets WHERE group_id = $1 AND topic = $2",
    )
    .bind(group_id)
    .bind(topic)
    .fetch_all(pool)
    .await
    .context("reading the stored offsets")?;
    let stored: BTreeMap<i32, (i64, i64, i64, i64)> = stored
        .into_iter()
        .map(|(p, next, epoch, seq, at)| (p, (next, epoch, seq, at)))
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

impl StatusReport {
    /// The report as tables.
    pub fn render(&self) -> String {
        let mut out = format!(
            "group {} on topic {} at {}\n\n{:>9}  {:>12}  {:>12}  {:>10}  {:>24}  {:>5}\n",
            self.group_id,
            self.topic,
            self.at,
            "PARTITION",
            "LOG END",
            "STORED",
            "LAG",
            "LAST WRITE",
            "GAPS"
        );
        for p in &self.partitions {
            out.push_str(&format!(
                "{:>9}  {:>12}  {:>12}  {:>10}  {:>24}  {:>5}\n",
                p.partition,
                p.log_end,
                p.stored_offset
                    .map_or_else(|| "-".to_owned(), |o| o.to_string()),
                p.lag,
                p.last_write.as_deref().unwrap_or("-"),
                p.gaps
            ));
        }
        out.push_str(&format!(
            "{:>9}  {:>12}  {:>12}  {:>10}\n\n",
            "total", "", "", self.total_lag
        ));
        out.push_str(&format!(
            "{:>20}  {:>24}  {:>12}  {:>12}\n",
            "BOT", "NEWEST UPDATE", "AGE", "UPDATES"
        ));
        if self.bots.is_empty() {
            out.push_str("(no stored updates)\n");
        }
        for b in &self.bots {
            let age = b.age_seconds.map_or_else(
                || "-".to_owned(),
                |s| humantime::format_duration(Duration::from_secs(s.unsigned_abs())).to_string(),
            );
            out.push_str(&format!(
                "{:>20}  {:>24}  {:>12}  {:>12}\n",
                b.bot_id,
                b.newest_update.as_deref().unwrap_or("-"),
                age,
                b.raw_updates
            ));
        }
        out.push_str(&format!(
            "\ndead letters pending: {}",
            self.dead_letters.pending
        ));
        if !self.dead_letters.by_class.is_empty() {
            let classes: Vec<String> = self
                .dead_letters
                .by_class
                .iter()
                .map(|(c, n)| format!("{c}={n}"))
                .collect();
            out.push_str(&format!(
                " ({}; oldest {})",
                classes.join(", "),
                self.dead_letters.oldest_pending.as_deref().unwrap_or("-")
            ));
        }
        out.push('\n');
        for breach in &self.breaches {
            out.push_str(&format!("THRESHOLD: {breach}\n"));
        }
        out
    }
}

/// `tgingest status`: prints the report; returns whether a threshold was passed (the caller
/// exits with [`EXIT_THRESHOLD_BREACHED`]).
pub async fn run_command(
    group_id: &str,
    options: &StatusOptions,
    kafka: &KafkaArgs,
    env: &dyn Env,
    database: &DatabaseConfig,
) -> anyhow::Result<bool> {
    options.check()?;
    let kafka = kafka.resolve(env)?;
    let topic = options.topic.clone().unwrap_or(kafka.topic.clone());
    let pool = crate::db::connect(database).await?;
    let report = collect(
        &pool,
        &kafka.client,
        group_id,
        &topic,
        Thresholds {
            max_lag: options.max_lag,
            max_age: options.max_age,
        },
    )
    .await?;
    if options.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("encoding the report")?
        );
    } else {
        print!("{}", report.render());
    }
    Ok(!report.breaches.is_empty())
}

impl StatusOptions {
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.max_lag.is_some_and(|m| m < 0) {
            return Err(ConfigError::new("--max-lag", "must be 0 or more"));
        }
        Ok(())
    }
}
