//! `tgingest forget --user ID | --chat ID [--bot ID]`: the command line of
//! [`consumer::ops::erasure`] — erases a person's or a chat's data from every table and records
//! the erasure every writer honours, so no replay, redrive or reprocess brings it back
//! (DESIGN.md §5.11, docs/OPERATIONS.md).
//!
//! This module parses the subject and renders the report; the protocol is the consumer's.
//! Guarantees: nothing is erased without `--yes`; neither the report nor the logs name the
//! subject's id (they are kept where the request is tracked, not in tgingest's output).

use consumer::ops::erasure::{self, ErasureReport, ForgetRequest};
use processor::erasure::DataSubject;

use crate::config::{ConfigError, DatabaseConfig};
use crate::progress::Progress;

/// Erasure options of the command line.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ForgetOptions {
    /// Erase this user's data (Telegram user id), their private chat with the bot included.
    #[arg(long, value_name = "ID", allow_negative_numbers = true)]
    pub user: Option<i64>,
    /// Erase this chat's data (Telegram chat id: negative for groups and channels).
    #[arg(long, value_name = "ID", allow_negative_numbers = true)]
    pub chat: Option<i64>,
    /// Only this bot's data (its numeric id); every bot's without it.
    #[arg(long, value_name = "ID")]
    pub bot: Option<i64>,
    /// Confirm the erasure.
    #[arg(long)]
    pub yes: bool,
    /// One JSON document instead of text.
    #[arg(long)]
    pub json: bool,
}

impl ForgetOptions {
    /// The request the flags name.
    pub fn request(&self) -> Result<ForgetRequest, ConfigError> {
        let subject = match (self.user, self.chat) {
            (Some(user), None) if user > 0 => DataSubject::User(user),
            (Some(_), None) => {
                return Err(ConfigError::new("--user", "a user id is a positive number"));
            }
            (None, Some(chat)) => DataSubject::Chat(chat),
            _ => {
                return Err(ConfigError::new(
                    "forget subject",
                    "give exactly one of --user ID, --chat ID",
                ));
            }
        };
        Ok(ForgetRequest {
            subject,
            bot_id: self.bot,
        })
    }

    /// Validates every flag (so `--check-config` catches them).
    pub fn check(&self) -> Result<(), ConfigError> {
        self.request()?;
        if !self.yes {
            return Err(ConfigError::new(
                "--yes",
                "forget erases data for good: repeat the command with --yes",
            ));
        }
        Ok(())
    }
}

/// The report as text.
pub fn render(report: &ErasureReport) -> String {
    let mut out = format!(
        "erased: {} raw updates that were the subject's own (each leaves an erased tombstone), \
         {} raw updates of others scrubbed, {} dead letters\n",
        report.raw_updates_erased, report.raw_updates_scrubbed, report.dead_letters_erased
    );
    for (table, rows) in &report.rows_deleted {
        let rewritten = report.rows_rewritten.get(table).copied().unwrap_or(0);
        out.push_str(&format!(
            "  {table}: {rows} rows deleted, {rewritten} written again scrubbed\n"
        ));
    }
    out.push_str(&format!(
        "{} erased tombstones written; every writer now scrubs what mentions the subject. \
         Kafka keeps the original bytes until the topic's retention deletes them.\n",
        report.tombstones_written
    ));
    out
}

/// `tgingest forget` (after the configuration was validated).
pub async fn run_command(options: &ForgetOptions, database: &DatabaseConfig) -> anyhow::Result<()> {
    options.check()?;
    let request = options.request()?;
    let pool = crate::db::connect(database).await?;
    crate::db::ensure_schema_current(&pool).await?;
    let report = erasure::forget(
        &pool,
        &request,
        processor::PROCESSOR_VERSION,
        &Progress::for_stderr(),
    )
    .await?;
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

    #[test]
    fn exactly_one_subject_is_named_and_the_erasure_is_confirmed() {
        let ok = ForgetOptions {
            chat: Some(-100_123),
            bot: Some(7),
            yes: true,
            ..ForgetOptions::default()
        };
        ok.check().expect("valid");
        assert_eq!(
            ok.request().expect("valid"),
            ForgetRequest {
                subject: DataSubject::Chat(-100_123),
                bot_id: Some(7)
            }
        );
        for (options, setting) in [
            (
                ForgetOptions {
                    yes: true,
                    ..ForgetOptions::default()
                },
                "forget subject",
            ),
            (
                ForgetOptions {
                    user: Some(1),
                    chat: Some(-1),
                    yes: true,
                    ..ForgetOptions::default()
                },
                "forget subject",
            ),
            (
                ForgetOptions {
                    user: Some(-5),
                    yes: true,
                    ..ForgetOptions::default()
                },
                "--user",
            ),
            (
                ForgetOptions {
                    user: Some(5),
                    ..ForgetOptions::default()
                },
                "--yes",
            ),
        ] {
            assert_eq!(options.check().expect_err("refused").setting, setting);
        }
    }
}
