//! `tgingest retention`: the command line of [`consumer::ops::retention`] — removes rows older
//! than per-table policies in bounded transactions and records the record horizon that every
//! writer honours, so no replay brings them back (DESIGN.md §5.11, docs/OPERATIONS.md).
//!
//! This module parses the policies (`--keep TABLE=DURATION`, or `RETENTION_POLICY`) and renders
//! the report; the protocol is the consumer's. Guarantee: nothing is deleted without `--yes`
//! (`--dry-run` counts instead); a policy that would let a replay write removed rows again is a
//! configuration error naming it.

use consumer::ops::retention::{self, Policy, RetainedTable, RetentionReport};

use crate::config::{ConfigError, DatabaseConfig};
use crate::progress::Progress;

/// Retention options of the command line.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RetentionOptions {
    /// Keep TABLE's rows for DURATION (`raw_updates=400d`, `messages=3y`, `dead_letters=90d`);
    /// repeat the flag, or separate policies by commas in RETENTION_POLICY. raw_updates sets
    /// the record horizon: records received before it are never written again. A projection
    /// must be kept at least as long as raw_updates.
    #[arg(
        long = "keep",
        env = "RETENTION_POLICY",
        value_delimiter = ',',
        value_name = "TABLE=DURATION"
    )]
    pub keep: Vec<String>,
    /// Count what would be removed and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Rows deleted per transaction (raw_updates and the bookkeeping tables; projections are
    /// walked 1024 blocks per transaction).
    #[arg(long, env = "RETENTION_BATCH_SIZE", default_value_t = 5000)]
    pub batch_size: i64,
    /// Confirm the deletion (not needed with --dry-run).
    #[arg(long)]
    pub yes: bool,
    /// One JSON document instead of text.
    #[arg(long)]
    pub json: bool,
}

impl RetentionOptions {
    /// The policies, validated on their own (the database may refuse more: see
    /// [`retention::plan`]).
    pub fn policies(&self) -> Result<Vec<Policy>, ConfigError> {
        let setting = "RETENTION_POLICY";
        let mut policies = Vec::new();
        for text in self.keep.iter().map(|t| t.trim()).filter(|t| !t.is_empty()) {
            let Some((table, duration)) = text.split_once('=') else {
                return Err(ConfigError::new(
                    setting,
                    format!("{text:?} is not TABLE=DURATION (e.g. raw_updates=400d)"),
                ));
            };
            let table = table.trim();
            let Some(table) = RetainedTable::parse(table) else {
                let names: Vec<&str> = RetainedTable::all().iter().map(|t| t.name()).collect();
                return Err(ConfigError::new(
                    setting,
                    format!(
                        "no retention for table {table:?}; policies apply to {}",
                        names.join(", ")
                    ),
                ));
            };
            let keep = humantime::parse_duration(duration.trim()).map_err(|e| {
                ConfigError::new(setting, format!("{table}: {:?}: {e}", duration.trim()))
            })?;
            policies.push(Policy { table, keep });
        }
        if policies.is_empty() {
            return Err(ConfigError::new(
                setting,
                "name at least one policy: --keep TABLE=DURATION",
            ));
        }
        retention::check(&policies).map_err(|reason| ConfigError::new(setting, reason))?;
        Ok(policies)
    }

    /// Validates every flag (so `--check-config` catches them).
    pub fn check(&self) -> Result<(), ConfigError> {
        self.policies()?;
        if self.batch_size < 1 {
            return Err(ConfigError::new("--batch-size", "must be at least 1"));
        }
        if !self.yes && !self.dry_run {
            return Err(ConfigError::new(
                "--yes",
                "retention deletes rows for good: repeat the command with --yes (or --dry-run)",
            ));
        }
        Ok(())
    }
}

/// The report as text.
pub fn render(report: &RetentionReport) -> String {
    let verb = if report.dry_run {
        "would remove"
    } else {
        "removed"
    };
    let mut out = format!(
        "record horizon: {}\n",
        report
            .horizon
            .as_deref()
            .unwrap_or("none (no raw_updates policy yet)")
    );
    for t in &report.tables {
        out.push_str(&format!(
            "  {}: {verb} {} rows older than {}\n",
            t.table, t.removed, t.cutoff
        ));
    }
    if report.dry_run {
        out.push_str("dry run: nothing changed\n");
    }
    out
}

/// `tgingest retention` (after the configuration was validated).
pub async fn run_command(
    options: &RetentionOptions,
    database: &DatabaseConfig,
) -> anyhow::Result<()> {
    options.check()?;
    let policies = options.policies()?;
    let pool = crate::db::connect(database).await?;
    crate::db::ensure_schema_current(&pool).await?;
    let plan = retention::plan(&pool, &policies, crate::replay::now_ms()).await?;
    let report = if options.dry_run {
        retention::dry_run(&pool, &plan).await?
    } else {
        retention::apply(&pool, &plan, options.batch_size, &Progress::for_stderr()).await?
    };
    if options.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    pool.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(keep: &[&str]) -> RetentionOptions {
        RetentionOptions {
            keep: keep.iter().map(|k| (*k).to_owned()).collect(),
            yes: true,
            batch_size: 10,
            ..RetentionOptions::default()
        }
    }

    #[test]
    fn policies_parse_from_table_equals_duration() {
        let policies = options(&["raw_updates=400d", " messages = 2y "])
            .policies()
            .expect("valid");
        assert_eq!(policies.len(), 2);
        assert_eq!(policies[0].table.name(), "raw_updates");
        assert_eq!(policies[1].keep.as_secs(), 2 * 31_557_600);
    }

    #[test]
    fn a_bad_policy_is_a_configuration_error_naming_the_setting() {
        for (keep, says) in [
            (
                vec!["tombstones=1d"],
                "no retention for table \"tombstones\"",
            ),
            (vec!["raw_updates"], "is not TABLE=DURATION"),
            (vec!["raw_updates=soon"], "raw_updates: \"soon\""),
            (vec![], "name at least one policy"),
            (
                vec!["raw_updates=400d", "users=30d"],
                "users: keeps rows for less than raw_updates",
            ),
        ] {
            let err = options(&keep).check().expect_err("refused");
            assert_eq!(err.setting, "RETENTION_POLICY");
            assert!(err.reason.contains(says), "{keep:?}: {}", err.reason);
        }
        let mut unconfirmed = options(&["raw_updates=1d"]);
        unconfirmed.yes = false;
        assert_eq!(
            unconfirmed.check().expect_err("needs --yes").setting,
            "--yes"
        );
        unconfirmed.dry_run = true;
        unconfirmed.check().expect("a dry run needs no --yes");
    }
}
