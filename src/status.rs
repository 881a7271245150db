//! `tgingest status`: the command line of [`consumer::ops::status`] — the authoritative state of
//! one consumer group for people (a table) and scripts (`--json`, exit status 3 when a threshold
//! is passed).
//!
//! This module parses the options and renders the report; the queries are the consumer's.

use std::time::Duration;

use anyhow::Context;
use consumer::ops::status::{self, StatusReport, Thresholds};

use crate::config::{ConfigError, DatabaseConfig, Env, KafkaArgs};

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

/// The report as tables.
pub fn render_report(report: &StatusReport) -> String {
    let mut out = format!(
        "group {} on topic {} at {}\n\n{:>9}  {:>12}  {:>12}  {:>10}  {:>24}  {:>5}\n",
        report.group_id,
        report.topic,
        report.at,
        "PARTITION",
        "LOG END",
        "STORED",
        "LAG",
        "LAST WRITE",
        "GAPS"
    );
    for p in &report.partitions {
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
        "total", "", "", report.total_lag
    ));
    out.push_str(&format!(
        "{:>20}  {:>24}  {:>12}  {:>12}\n",
        "BOT", "NEWEST UPDATE", "AGE", "UPDATES"
    ));
    if report.bots.is_empty() {
        out.push_str("(no stored updates)\n");
    }
    for b in &report.bots {
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
        report.dead_letters.pending
    ));
    if !report.dead_letters.by_class.is_empty() {
        let classes: Vec<String> = report
            .dead_letters
            .by_class
            .iter()
            .map(|(c, n)| format!("{c}={n}"))
            .collect();
        out.push_str(&format!(
            " ({}; oldest {})",
            classes.join(", "),
            report.dead_letters.oldest_pending.as_deref().unwrap_or("-")
        ));
    }
    out.push('\n');
    for breach in &report.breaches {
        out.push_str(&format!("THRESHOLD: {breach}\n"));
    }
    out
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
    let report = status::collect(
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
        print!("{}", render_report(&report));
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
