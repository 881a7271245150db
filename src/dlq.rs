//! `tgingest dlq`: the command line of [`consumer::ops::dead_letters`] — inspect, redrive and
//! purge dead letters (DESIGN.md §4, §5, §6).
//!
//! This module parses the arguments into a [`Selection`] or a [`ListFilter`], renders letters
//! and outcomes, and shows progress; the lifecycle itself is the consumer's. Guarantee: `purge`
//! deletes nothing without `--yes`.

use anyhow::bail;
use consumer::ops::dead_letters::{self, DeadLetter, ListFilter, Selection};
use processor::wire::hex;

use crate::config::{ConfigError, DatabaseConfig, Env, KafkaArgs};
use crate::progress::Progress;
use crate::replay::{now_ms, parse_time};

/// The `tgingest dlq` actions.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum DlqAction {
    /// List dead letters (unresolved ones unless --all).
    List(ListArgs),
    /// Show one dead letter: payload, headers, error.
    Show(ShowArgs),
    /// Re-process dead letters into rows and mark them resolved, exactly once.
    Redrive(RedriveArgs),
    /// Delete dead letters (needs --yes); an unresolved one leaves its record a tombstone.
    Purge(PurgeArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    /// Only this error class (e.g. `not_json`, `db_23514`).
    #[arg(long)]
    pub class: Option<String>,
    /// Only this partition.
    #[arg(long)]
    pub partition: Option<i32>,
    /// Only letters first seen at or after this time (RFC 3339) or within this duration (`2h`).
    #[arg(long)]
    pub since: Option<String>,
    /// Include resolved letters.
    #[arg(long)]
    pub all: bool,
    /// Only this topic.
    #[arg(long)]
    pub topic: Option<String>,
    /// At most this many letters, oldest first.
    #[arg(long, default_value_t = 1000)]
    pub limit: i64,
    /// One JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ShowArgs {
    /// The dead letter's id (first column of `dlq list`).
    pub id: i64,
    /// One JSON document instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct RedriveArgs {
    /// These letters (repeat the flag or separate ids by commas).
    #[arg(long, value_delimiter = ',')]
    pub id: Vec<i64>,
    /// Every unresolved letter of this class.
    #[arg(long)]
    pub class: Option<String>,
    /// Every unresolved letter.
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct PurgeArgs {
    /// These letters.
    #[arg(long, value_delimiter = ',')]
    pub id: Vec<i64>,
    /// Every letter of this class, resolved or not.
    #[arg(long)]
    pub class: Option<String>,
    /// Every resolved letter.
    #[arg(long)]
    pub resolved: bool,
    /// Confirm the deletion.
    #[arg(long)]
    pub yes: bool,
}

fn selection(
    ids: &[i64],
    class: &Option<String>,
    all: bool,
    all_flag: &str,
) -> Result<Selection, ConfigError> {
    match (ids.is_empty(), class, all) {
        (false, None, false) => Ok(Selection::Ids(ids.to_vec())),
        (true, Some(c), false) => Ok(Selection::Class(c.clone())),
        (true, None, true) => Ok(Selection::All),
        _ => Err(ConfigError::new(
            "dlq selection",
            format!("give exactly one of --id, --class, {all_flag}"),
        )),
    }
}

/// Validates an action's flags (so `--check-config` catches them).
pub fn check(action: &DlqAction) -> Result<(), ConfigError> {
    match action {
        DlqAction::List(args) => {
            if let Some(since) = &args.since {
                since_ms(since, now_ms())?;
            }
            Ok(())
        }
        DlqAction::Show(_) => Ok(()),
        DlqAction::Redrive(args) => selection(&args.id, &args.class, args.all, "--all").map(drop),
        DlqAction::Purge(args) => {
            selection(&args.id, &args.class, args.resolved, "--resolved")?;
            if !args.yes {
                return Err(ConfigError::new(
                    "--yes",
                    "purge deletes dead letters for good: repeat the command with --yes",
                ));
            }
            Ok(())
        }
    }
}

/// `--since`: an RFC 3339 time, or a duration back from `now_ms`.
pub fn since_ms(text: &str, now_ms: i64) -> Result<i64, ConfigError> {
    if let Ok(ms) = parse_time(text) {
        return Ok(ms);
    }
    humantime::parse_duration(text)
        .ok()
        .and_then(|d| i64::try_from(d.as_millis()).ok())
        .map(|d| now_ms.saturating_sub(d))
        .ok_or_else(|| {
            ConfigError::new(
                "--since",
                format!("{text:?} is neither an RFC 3339 time nor a duration like 2h"),
            )
        })
}

/// `tgingest dlq <action>`.
pub async fn run_command(
    action: &DlqAction,
    kafka: &KafkaArgs,
    env: &dyn Env,
    database: &DatabaseConfig,
) -> anyhow::Result<()> {
    check(action)?;
    let pool = crate::db::connect(database).await?;
    crate::db::ensure_schema_current(&pool).await?;
    match action {
        DlqAction::List(args) => {
            let filter = ListFilter {
                class: args.class.clone(),
                partition: args.partition,
                since_ms: args
                    .since
                    .as_deref()
                    .map(|s| since_ms(s, now_ms()))
                    .transpose()?,
                include_resolved: args.all,
                topic: args.topic.clone(),
                limit: Some(args.limit),
            };
            let letters = dead_letters::list(&pool, &filter).await?;
            if args.json {
                let brief: Vec<serde_json::Value> = letters.iter().map(summary_json).collect();
                println!("{}", serde_json::to_string_pretty(&brief)?);
            } else {
                print!("{}", render_list(&letters));
            }
        }
        DlqAction::Show(args) => {
            let Some(letter) = dead_letters::show(&pool, args.id).await? else {
                bail!("no dead letter with id {}", args.id);
            };
            if args.json {
                println!("{}", serde_json::to_string_pretty(&letter)?);
            } else {
                print!("{}", render_letter(&letter));
            }
        }
        DlqAction::Redrive(args) => {
            let selection = selection(&args.id, &args.class, args.all, "--all")?;
            // Kafka is optional: only letters stored without a payload need it.
            let client = match kafka.kafka_brokers {
                Some(_) => Some(kafka.resolve(env)?.client),
                None => None,
            };
            let outcome = dead_letters::redrive(
                &pool,
                &selection,
                processor::PROCESSOR_VERSION,
                client.as_ref(),
                &Progress::for_stderr(),
            )
            .await?;
            println!(
                "redriven: {}, still failing: {}, unchanged (already resolved or absent): {}",
                outcome.redriven.len(),
                outcome.still_failing.len(),
                outcome.unchanged.len()
            );
            for (id, class, text) in &outcome.still_failing {
                println!("  {id}: {class}: {}", one_line(text, 160));
            }
        }
        DlqAction::Purge(args) => {
            let selection = selection(&args.id, &args.class, args.resolved, "--resolved")?;
            let purged = dead_letters::purge(&pool, &selection).await?;
            println!(
                "deleted {} dead letters ({} unresolved: their records now have a purged tombstone)",
                purged.deleted, purged.tombstoned
            );
        }
    }
    Ok(())
}

fn summary_json(letter: &DeadLetter) -> serde_json::Value {
    serde_json::json!({
        "id": letter.id,
        "topic": letter.topic,
        "partition": letter.partition,
        "kafka_offset": letter.kafka_offset,
        "bot_id": letter.bot_id,
        "error_class": letter.error_class,
        "error_text": letter.error_text,
        "payload_bytes": letter.payload.as_ref().map(Vec::len),
        "first_seen": letter.first_seen,
        "last_seen": letter.last_seen,
        "attempts": letter.attempts,
        "resolved_at": letter.resolved_at,
    })
}

fn one_line(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() > max {
        format!("{}…", flat.chars().take(max).collect::<String>())
    } else {
        flat
    }
}

fn render_list(letters: &[DeadLetter]) -> String {
    let mut out = format!(
        "{:>8}  {:>24}  {:>9}  {:>10}  {:>20}  {:>24}  {:>8}  {:>8}  ERROR\n",
        "ID", "TOPIC", "PARTITION", "OFFSET", "CLASS", "FIRST SEEN", "ATTEMPTS", "RESOLVED"
    );
    for l in letters {
        out.push_str(&format!(
            "{:>8}  {:>24}  {:>9}  {:>10}  {:>20}  {:>24}  {:>8}  {:>8}  {}\n",
            l.id,
            l.topic,
            l.partition,
            l.kafka_offset,
            l.error_class,
            l.first_seen,
            l.attempts,
            if l.resolved_at.is_some() { "yes" } else { "no" },
            one_line(&l.error_text, 100)
        ));
    }
    out.push_str(&format!("{} dead letters\n", letters.len()));
    out
}

fn render_letter(l: &DeadLetter) -> String {
    let bytes = |b: &Option<Vec<u8>>| match b {
        None => "(none)".to_owned(),
        Some(b) => match std::str::from_utf8(b) {
            Ok(text) => text.to_owned(),
            Err(_) => format!("(not UTF-8, {} bytes) hex {}", b.len(), hex(b)),
        },
    };
    format!(
        "dead letter {}\n  record:      {}/{} offset {}\n  bot:         {}\n  key:         {}\n  error class: {}\n  error:       {}\n  first seen:  {}\n  last seen:   {}\n  attempts:    {}\n  resolved:    {}\n  headers:     {}\n  payload ({} bytes):\n{}\n",
        l.id,
        l.topic,
        l.partition,
        l.kafka_offset,
        l.bot_id.map_or_else(|| "-".to_owned(), |b| b.to_string()),
        bytes(&l.record_key),
        l.error_class,
        l.error_text,
        l.first_seen,
        l.last_seen,
        l.attempts,
        l.resolved_at.as_deref().unwrap_or("no"),
        l.headers
            .as_ref()
            .map_or_else(|| "(none)".to_owned(), |h| h.to_string()),
        l.payload.as_ref().map_or(0, Vec::len),
        bytes(&l.payload)
    )
}
