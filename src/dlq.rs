//! `tgingest dlq`: inspect, redrive and purge dead letters (DESIGN.md §4, §5, §6).
//!
//! Guarantees:
//! - a redrive writes the record's rows (its `raw_updates` row and projections, through the
//!   consumer's `RecordWriter`) and marks its dead letter resolved in ONE transaction whose
//!   last statement only matches a still-unresolved letter: a second redrive, or a consumer replay
//!   that resolved the letter meanwhile, rolls back and changes nothing, so a record ends with
//!   rows xor an unresolved dead letter, exactly once;
//! - the bytes redriven are the record's own: the stored payload, the original bytes inside a
//!   producer `tg-error` envelope, or (when no payload was stored) the record re-read from Kafka
//!   by topic, partition and offset; a letter that still fails stays unresolved with its attempt
//!   counted and the new error recorded;
//! - `purge` deletes nothing without `--yes`.

use anyhow::{Context, bail};
use consumer::record::ConsumedRecord;
use consumer::writer::{Content, DeadLetterClass, JsonbPayload, PreparedRecord, RecordWriter};
use processor::wire::{self, hex};
use rdkafka::ClientConfig;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use crate::config::{ConfigError, DatabaseConfig, Env, KafkaArgs};
use crate::replay::{Progress, TopicReader, format_time, now_ms, parse_time};

/// The `tgingest dlq` actions.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum DlqAction {
    /// List dead letters (unresolved ones unless --all).
    List(ListArgs),
    /// Show one dead letter: payload, headers, error.
    Show(ShowArgs),
    /// Re-process dead letters into rows and mark them resolved, exactly once.
    Redrive(RedriveArgs),
    /// Delete dead letters (needs --yes).
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

/// Which letters an action applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    Ids(Vec<i64>),
    Class(String),
    /// Redrive: every unresolved letter. Purge: every resolved letter.
    All,
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

/// One dead letter as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetter {
    pub id: i64,
    pub topic: String,
    pub partition: i32,
    pub kafka_offset: i64,
    pub bot_id: Option<i64>,
    #[serde(serialize_with = "bytes_as_text")]
    pub record_key: Option<Vec<u8>>,
    #[serde(serialize_with = "bytes_as_text")]
    pub payload: Option<Vec<u8>>,
    pub headers: Option<serde_json::Value>,
    pub error_class: String,
    pub error_text: String,
    pub first_seen: String,
    pub last_seen: String,
    pub attempts: i32,
    pub resolved_at: Option<String>,
}

/// Bytes as UTF-8 text when they are, else `{"hex": …}`.
fn bytes_as_text<S: serde::Serializer>(bytes: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    match bytes {
        None => s.serialize_none(),
        Some(b) => match std::str::from_utf8(b) {
            Ok(text) => s.serialize_str(text),
            Err(_) => serde_json::json!({ "hex": hex(b) }).serialize(s),
        },
    }
}

const COLUMNS: &str = "id, topic, partition, kafka_offset, bot_id, record_key, payload, headers::text, \
     error_class, error_text, (extract(epoch FROM first_seen) * 1000)::bigint, \
     (extract(epoch FROM last_seen) * 1000)::bigint, attempts, \
     (extract(epoch FROM resolved_at) * 1000)::bigint";

type Row = (
    i64,
    String,
    i32,
    i64,
    Option<i64>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Option<String>,
    String,
    String,
    i64,
    i64,
    i32,
    Option<i64>,
);

fn from_row(r: Row) -> DeadLetter {
    DeadLetter {
        id: r.0,
        topic: r.1,
        partition: r.2,
        kafka_offset: r.3,
        bot_id: r.4,
        record_key: r.5,
        payload: r.6,
        headers: r.7.and_then(|h| serde_json::from_str(&h).ok()),
        error_class: r.8,
        error_text: r.9,
        first_seen: format_time(r.10),
        last_seen: format_time(r.11),
        attempts: r.12,
        resolved_at: r.13.map(format_time),
    }
}

/// Filters of `dlq list`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    pub class: Option<String>,
    pub partition: Option<i32>,
    /// First seen at or after, unix ms.
    pub since_ms: Option<i64>,
    pub include_resolved: bool,
    pub topic: Option<String>,
    pub limit: Option<i64>,
}

/// Dead letters matching `filter`, oldest first.
pub async fn list(pool: &PgPool, filter: &ListFilter) -> anyhow::Result<Vec<DeadLetter>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM dead_letters \
         WHERE ($1::text IS NULL OR error_class = $1) \
           AND ($2::integer IS NULL OR partition = $2) \
           AND ($3::bigint IS NULL OR first_seen >= to_timestamp($3 / 1000.0)) \
           AND ($4 OR resolved_at IS NULL) \
           AND ($5::text IS NULL OR topic = $5) \
         ORDER BY id LIMIT $6"
    );
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(&filter.class)
        .bind(filter.partition)
        .bind(filter.since_ms)
        .bind(filter.include_resolved)
        .bind(&filter.topic)
        .bind(filter.limit.unwrap_or(i64::MAX))
        .fetch_all(pool)
        .await
        .context("reading dead letters")?;
    Ok(rows.into_iter().map(from_row).collect())
}

/// One dead letter by id.
pub async fn show(pool: &PgPool, id: i64) -> anyhow::Result<Option<DeadLetter>> {
    let sql = format!("SELECT {COLUMNS} FROM dead_letters WHERE id = $1");
    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(pool)
        .await
        .context("reading the dead letter")?;
    Ok(row.map(from_row))
}

/// What a redrive did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RedriveOutcome {
    /// Letters whose rows were written and which are now resolved.
    pub redriven: Vec<i64>,
    /// Letters that still fail: (id, error class, error text); they stay unresolved.
    pub still_failing: Vec<(i64, String, String)>,
    /// Letters that were already resolved (or gone) when their turn came: nothing changed.
    pub unchanged: Vec<i64>,
}

/// Redrives the selected unresolved letters, each in its own transaction. `kafka` (client
/// settings) is needed only for letters stored without a payload. A transient database error
/// stops the redrive with an error; letters already done stay done.
pub async fn redrive(
    pool: &PgPool,
    selection: &Selection,
    processor_version: i32,
    kafka: Option<&ClientConfig>,
    progress: &Progress,
) -> anyhow::Result<RedriveOutcome> {
    let (ids, class) = match selection {
        Selection::Ids(ids) => (Some(ids.clone()), None),
        Selection::Class(c) => (None, Some(c.clone())),
        Selection::All => (None, None),
    };
    let mut outcome = RedriveOutcome::default();
    let candidates: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM dead_letters \
         WHERE resolved_at IS NULL AND ($1::bigint[] IS NULL OR id = ANY($1)) \
           AND ($2::text IS NULL OR error_class = $2) \
         ORDER BY id",
    )
    .bind(&ids)
    .bind(&class)
    .fetch_all(pool)
    .await
    .context("selecting dead letters")?;
    if let Some(ids) = &ids {
        outcome
            .unchanged
            .extend(ids.iter().filter(|id| !candidates.contains(id)));
    }
    let schema = consumer::projection::ProjectionSchema::load(pool)
        .await
        .context("reading the projection tables")?;
    progress.start("redriving dead letters", candidates.len() as u64);
    for id in candidates {
        let Some(letter) = show(pool, id).await? else {
            outcome.unchanged.push(id);
            progress.advance(1);
            continue;
        };
        let record = match recover_record(&letter, kafka).await {
            Ok(record) => record,
            Err(reason) => {
                let class = DeadLetterClass::RedriveUnrecoverable.as_str();
                note_failure(pool, id, class, &reason).await?;
                outcome.still_failing.push((id, class.to_owned(), reason));
                progress.advance(1);
                continue;
            }
        };
        let prepared = PreparedRecord::prepare(record);
        if let Content::Rejected { class, text } = &prepared.content {
            note_failure(pool, id, class.as_str(), text).await?;
            outcome
                .still_failing
                .push((id, class.as_str().to_owned(), text.clone()));
            progress.advance(1);
            continue;
        }
        let mut conn = pool.acquire().await.context("connecting for a redrive")?;
        match write_and_resolve(&mut conn, &schema, &prepared, processor_version, id).await {
            Ok(true) => outcome.redriven.push(id),
            Ok(false) => outcome.unchanged.push(id),
            Err(e) => {
                if consumer::classify::classify(&e) == consumer::classify::ErrorClass::Transient {
                    return Err(e).with_context(|| format!("redriving dead letter {id}"));
                }
                let class = DeadLetterClass::database(&e).as_str().to_owned();
                let text = e.to_string();
                note_failure(pool, id, &class, &text).await?;
                outcome.still_failing.push((id, class, text));
            }
        }
        progress.advance(1);
    }
    progress.finish();
    Ok(outcome)
}

/// One transaction: raw row, projections, resolve. Returns false (and rolls back) when the
/// letter was resolved by someone else first.
async fn write_and_resolve(
    conn: &mut PgConnection,
    schema: &consumer::projection::ProjectionSchema,
    prepared: &PreparedRecord,
    processor_version: i32,
    id: i64,
) -> Result<bool, sqlx::Error> {
    use sqlx::Connection;
    let mut tx = conn.begin().await?;
    sqlx::query("SET LOCAL statement_timeout = '60s'")
        .execute(&mut *tx)
        .await?;
    let record = &prepared.record;
    RecordWriter::new(&record.topic, record.partition, processor_version, schema)
        .write_updates(&mut tx, &[prepared], JsonbPayload::WhereValid)
        .await?;
    let resolved = sqlx::query(
        "UPDATE dead_letters SET resolved_at = now(), last_seen = now(), attempts = attempts + 1 \
         WHERE id = $1 AND resolved_at IS NULL",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    if resolved.rows_affected() != 1 {
        tx.rollback().await?;
        return Ok(false);
    }
    tx.commit().await?;
    Ok(true)
}

/// Counts a failed attempt and records its error; the letter stays unresolved.
async fn note_failure(pool: &PgPool, id: i64, class: &str, text: &str) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE dead_letters SET attempts = attempts + 1, last_seen = now(), \
             error_class = $2, error_text = $3 \
         WHERE id = $1 AND resolved_at IS NULL",
    )
    .bind(id)
    .bind(class)
    .bind(text.replace('\0', "\u{fffd}"))
    .execute(pool)
    .await
    .with_context(|| format!("recording the failed redrive of dead letter {id}"))?;
    Ok(())
}

/// The Kafka record behind a letter, with the bytes to redrive as its payload.
async fn recover_record(
    letter: &DeadLetter,
    kafka: Option<&ClientConfig>,
) -> Result<ConsumedRecord, String> {
    let mut record = match &letter.payload {
        Some(payload) => ConsumedRecord {
            topic: letter.topic.clone(),
            partition: letter.partition,
            offset: letter.kafka_offset,
            key: letter.record_key.clone(),
            payload: Some(payload.clone()),
            headers: wire::headers_from_json(letter.headers.as_ref()),
            timestamp_ms: None,
        },
        None => {
            let Some(client) = kafka else {
                return Err(
                    "no payload stored; set KAFKA_BROKERS to re-read the record from Kafka"
                        .to_owned(),
                );
            };
            let client = client.clone();
            let (topic, partition, offset) =
                (letter.topic.clone(), letter.partition, letter.kafka_offset);
            let read = tokio::task::spawn_blocking(move || -> anyhow::Result<ConsumedRecord> {
                let reader = TopicReader::new(&client, &topic)?;
                let record = reader.read(partition, offset)?;
                if record.offset != offset {
                    bail!("offset {offset} is no longer in {topic}/{partition}");
                }
                Ok(record)
            })
            .await
            .map_err(|e| format!("the Kafka read panicked: {e}"))?;
            read.map_err(|e| format!("cannot re-read the record from Kafka: {e:#}"))?
        }
    };
    if record.producer_error().is_some() {
        let original = wire::envelope_original(record.payload_bytes()).ok_or_else(|| {
            "producer envelope without the original bytes (they did not fit in the record): nothing to redrive".to_owned()
        })?;
        record.payload = Some(original);
        record
            .headers
            .retain(|(name, _)| !wire::is_envelope_header(name));
    }
    Ok(record)
}

/// Which letters `purge` deletes.
pub async fn purge(pool: &PgPool, selection: &Selection) -> anyhow::Result<u64> {
    let result = match selection {
        Selection::Ids(ids) => {
            sqlx::query("DELETE FROM dead_letters WHERE id = ANY($1)")
                .bind(ids)
                .execute(pool)
                .await
        }
        Selection::Class(class) => {
            sqlx::query("DELETE FROM dead_letters WHERE error_class = $1")
                .bind(class)
                .execute(pool)
                .await
        }
        Selection::All => {
            sqlx::query("DELETE FROM dead_letters WHERE resolved_at IS NOT NULL")
                .execute(pool)
                .await
        }
    }
    .context("deleting dead letters")?;
    Ok(result.rows_affected())
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
            let letters = list(&pool, &filter).await?;
            if args.json {
                let brief: Vec<serde_json::Value> = letters.iter().map(summary_json).collect();
                println!("{}", serde_json::to_string_pretty(&brief)?);
            } else {
                print!("{}", render_list(&letters));
            }
        }
        DlqAction::Show(args) => {
            let Some(letter) = show(&pool, args.id).await? else {
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
            let outcome = redrive(
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
            let deleted = purge(&pool, &selection).await?;
            println!("deleted {deleted} dead letters");
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
