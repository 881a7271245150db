//! `tgingest replay`: the command line of [`consumer::ops::replay`] — rewinds a consumer group's
//! stored offsets so the running consumers reprocess history, or with `--reprocess-from-db`
//! rebuilds projections from `raw_updates` without Kafka (DESIGN.md §4, §5.3, §9).
//!
//! This module parses the arguments into a [`ReplayTarget`], renders the plan and the summary,
//! and shows progress; the protocol (planning, the rewind, the rebuild) is the consumer's.

use consumer::ops::format_time;
use consumer::ops::replay::{self, ReplayPlan, ReplayTarget};

use crate::config::{ConfigError, DatabaseConfig, Env, KafkaArgs};
use crate::progress::Progress;

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

/// The current time, unix milliseconds.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The plan as a table.
pub fn render_plan(plan: &ReplayPlan) -> String {
    let target = match plan.target {
        ReplayTarget::Earliest => "earliest".to_owned(),
        ReplayTarget::Offset(o) => format!("offset {o}"),
        ReplayTarget::Time(t) => format!("time {}", format_time(t)),
    };
    let mut out = format!(
        "replay of group {} on topic {} to {target}\n{:>9}  {:>12}  {:>12}  {:>12}  {:>12}  {:>10}\n",
        plan.group_id,
        plan.topic,
        "PARTITION",
        "LOG START",
        "LOG END",
        "STORED",
        "TARGET",
        "RE-READ"
    );
    for p in &plan.partitions {
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
        plan.total_rereads(),
        plan.partitions.len()
    ));
    out
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
        let summary = replay::reprocess_from_db(
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
    let plan = replay::plan(
        &pool,
        &kafka.client,
        group_id,
        &topic,
        &options.partitions,
        target,
    )
    .await?;
    print!("{}", render_plan(&plan));
    if options.dry_run {
        println!("dry run: nothing changed");
        return Ok(());
    }
    let applied = replay::apply(&pool, &plan, options.allow_skip).await?;
    println!(
        "rewound {} partitions of group {group_id}; running consumers re-seek within their idle re-read interval",
        applied.len()
    );
    Ok(())
}
