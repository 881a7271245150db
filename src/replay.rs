//! `tgingest replay`: the command line of [`consumer::ops::replay`] — rewinds a consumer group's
//! stored offsets so the running consumers reprocess history, or with `--reprocess-from-db`
//! rebuilds projections from `raw_updates` without Kafka (DESIGN.md §4, §5.3, §9).
//!
//! This module parses the arguments into a [`ReplayTarget`], renders the plan and the summary,
//! and shows progress; the protocol (planning, the rewind, the rebuild) is the consumer's.
//!
//! Guarantee: nothing is changed without `--execute`. Without it the command prints the plan
//! (as a table, or with `--json` as one JSON document) and exits 0, as
//! `kafka-consumer-groups --reset-offsets` does without `--execute`. `--dry-run`, the old way to
//! ask for the plan only, is still accepted (hidden) and means the default; it cannot be combined
//! with `--execute`.

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
    /// Apply the plan. Without it, replay prints the plan (current and target offsets, records
    /// to re-read) and changes nothing.
    #[arg(long)]
    pub execute: bool,
    /// Print the plan (and, with --execute, what was applied) as one JSON document.
    #[arg(long)]
    pub json: bool,
    /// Accepted for compatibility: showing the plan without applying it is the default.
    #[arg(long, hide = true, conflicts_with = "execute")]
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
            || self.allow_skip;
        if self.dry_run && self.execute {
            return Err(ConfigError::new(
                "--dry-run",
                "shows the plan only, which is the default: drop it to --execute",
            ));
        }
        if self.reprocess_from_db {
            if kafka_options {
                return Err(ConfigError::new(
                    "--reprocess-from-db",
                    "reads raw_updates only: it takes no target, topic, partitions or --allow-skip",
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
    for p in plan.partitions.iter().filter(|p| p.anomaly.is_some()) {
        if let Some(anomaly) = &p.anomaly {
            out.push_str(&format!(
                "{anomaly}\n  this replay resolves it: partition {} resumes at offset {} of the new log ({} of its records skipped) in topic incarnation {}\n",
                p.partition,
                p.target,
                p.skips(),
                anomaly.topic_incarnation + 1
            ));
        }
    }
    out
}

/// The plan as JSON: the plan's fields plus, per partition and in all, the records to re-read
/// and to skip.
pub fn plan_json(plan: &ReplayPlan) -> serde_json::Value {
    let partitions: Vec<serde_json::Value> = plan
        .partitions
        .iter()
        .map(|p| {
            serde_json::json!({
                "partition": p.partition,
                "log_start": p.log_start,
                "log_end": p.log_end,
                "stored": p.stored,
                "target": p.target,
                "rereads": p.rereads(),
                "skips": p.skips(),
                "anomaly": p.anomaly,
            })
        })
        .collect();
    serde_json::json!({
        "group_id": plan.group_id,
        "topic": plan.topic,
        "target": plan.target,
        "total_rereads": plan.total_rereads(),
        "partitions": partitions,
    })
}

/// What the operator is told when the plan was only shown.
const PLAN_ONLY: &str = "plan only: nothing changed; run again with --execute to apply it";

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
        return reprocess_command(&pool, options).await;
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
    if !options.execute {
        if options.json {
            print_json(&serde_json::json!({ "plan": plan_json(&plan), "executed": false }))?;
        } else {
            print!("{}", render_plan(&plan));
            println!("{PLAN_ONLY}");
        }
        return Ok(());
    }
    if !options.json {
        print!("{}", render_plan(&plan));
    }
    let applied = replay::apply(&pool, &plan, options.allow_skip).await?;
    if options.json {
        return print_json(&serde_json::json!({
            "plan": plan_json(&plan),
            "executed": true,
            "applied": applied,
        }));
    }
    println!(
        "rewound {} partitions of group {group_id}; running consumers re-seek within their idle re-read interval",
        applied.len()
    );
    for rewound in applied.iter().filter(|a| a.resolved_anomaly.is_some()) {
        println!(
            "resolved log anomaly #{} of partition {}: it resumes at offset {} in topic incarnation {}",
            rewound.resolved_anomaly.unwrap_or_default(),
            rewound.partition,
            rewound.next_offset,
            rewound.topic_incarnation
        );
    }
    Ok(())
}

/// `--reprocess-from-db`: the plan (how many raw updates, which processor version), applied
/// only with `--execute`.
async fn reprocess_command(pool: &sqlx::PgPool, options: &ReplayOptions) -> anyhow::Result<()> {
    let version = processor::PROCESSOR_VERSION;
    if !options.execute {
        let planned = replay::reprocess_plan(pool, version).await?;
        if options.json {
            return print_json(&serde_json::json!({
                "reprocess_from_db": planned,
                "batch_size": options.batch_size,
                "executed": false,
            }));
        }
        println!(
            "reprocess from the database: {} raw updates, rebuilt with processor version {} in transactions of {}",
            planned.raw_updates, planned.processor_version, options.batch_size
        );
        println!("{PLAN_ONLY}");
        return Ok(());
    }
    let summary =
        replay::reprocess_from_db(pool, version, options.batch_size, &Progress::for_stderr())
            .await?;
    if options.json {
        return print_json(&serde_json::json!({
            "reprocess_from_db": { "processor_version": version },
            "batch_size": options.batch_size,
            "executed": true,
            "summary": summary,
        }));
    }
    println!(
        "reprocessed {} raw updates with processor version {version} ({} rejected, {} raw versions raised, {} behind the retention horizon left alone)",
        summary.raw_updates, summary.rejected, summary.raw_versions_raised, summary.retained
    );
    for (table, rows) in &summary.rows_written {
        println!("  {table}: {rows} rows written");
    }
    Ok(())
}

fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
