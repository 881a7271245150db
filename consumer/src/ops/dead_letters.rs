//! The dead-letter lifecycle for operators (DESIGN.md §4, §5, §6): list, show, redrive, purge.
//!
//! Guarantees:
//! - a redrive writes the record's rows (its `raw_updates` row and projections, through the
//!   consumer's [`RecordWriter`]) and marks its dead letter resolved in ONE transaction whose
//!   last statement only matches a still-unresolved letter: a second redrive, or a consumer replay
//!   that resolved the letter meanwhile, rolls back and changes nothing, so a record ends with
//!   rows xor an unresolved dead letter, exactly once;
//! - the bytes redriven are the record's own: the stored payload, the original bytes inside a
//!   producer `tg-error` envelope, or (when no payload was stored) the record re-read from Kafka
//!   by topic, partition and offset; a letter that still fails stays unresolved with its attempt
//!   counted and the new error recorded;
//! - a redrive honours the operators' decisions as the consumer's batches do: a record whose
//!   data subject was erased is written scrubbed (or not at all when it is theirs), one behind
//!   the retention horizon or with a tombstone is not written (the letter stays, saying why);
//! - a purge never leaves a record without an effect: an unresolved letter it deletes becomes
//!   the record's `purged` tombstone in the same statement, which a replay then keeps.

use anyhow::{Context, bail};
use processor::wire::{self, hex};
use rdkafka::ClientConfig;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use super::progress::Progress;
use super::time::format_time;
use super::topic::TopicReader;
use crate::classify::{ErrorClass, classify};
use crate::projection::ProjectionSchema;
use crate::record::ConsumedRecord;
use crate::writer::{
    Content, DeadLetterClass, Fate, JsonbPayload, PreparedRecord, RecordWriter, Withheld,
};

/// Which letters an action applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    Ids(Vec<i64>),
    Class(String),
    /// Redrive: every unresolved letter. Purge: every resolved letter.
    All,
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
    /// The topic incarnation of the record's position (DESIGN.md §5.10).
    pub topic_incarnation: i64,
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
     (extract(epoch FROM resolved_at) * 1000)::bigint, topic_incarnation";

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
    i64,
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
        topic_incarnation: r.14,
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
    progress: &dyn Progress,
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
    let schema = ProjectionSchema::load(pool)
        .await
        .context("reading the projection tables")?;
    progress.start("redriving dead letters", candidates.len() as u64);
    for id in candidates {
        let Some(letter) = show(pool, id).await? else {
            outcome.unchanged.push(id);
            progress.advance(1);
            continue;
        };
        let record = match recover_record(pool, &letter, kafka).await {
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
        let written = write_and_resolve(
            &mut conn,
            &schema,
            &prepared,
            letter.topic_incarnation,
            processor_version,
            id,
        )
        .await;
        match written {
            Ok(Redrive::Resolved) => outcome.redriven.push(id),
            Ok(Redrive::AlreadyResolved) => outcome.unchanged.push(id),
            Ok(Redrive::Withheld(class, text)) => {
                note_failure(pool, id, class, text).await?;
                outcome
                    .still_failing
                    .push((id, class.to_owned(), text.to_owned()));
            }
            Err(e) => {
                if classify(&e) == ErrorClass::Transient {
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

/// What one redrive transaction did.
enum Redrive {
    /// Rows written, letter resolved.
    Resolved,
    /// Someone resolved the letter first: nothing changed.
    AlreadyResolved,
    /// An operator's decision withholds the record's rows (error class, text): nothing changed.
    Withheld(&'static str, &'static str),
}

/// One transaction: raw row, projections, resolve, as the consumer's batches honour tombstones,
/// retention and erasure ([`RecordWriter::honour`]): a record whose subject was erased is written
/// scrubbed, one an operator decision withholds is not written. Rolls back unless it resolved
/// the letter.
async fn write_and_resolve(
    conn: &mut PgConnection,
    schema: &ProjectionSchema,
    prepared: &PreparedRecord,
    topic_incarnation: i64,
    processor_version: i32,
    id: i64,
) -> Result<Redrive, sqlx::Error> {
    use sqlx::Connection;
    let mut tx = conn.begin().await?;
    sqlx::query("SET LOCAL statement_timeout = '60s'")
        .execute(&mut *tx)
        .await?;
    let record = &prepared.record;
    let writer = RecordWriter::new(
        &record.topic,
        topic_incarnation,
        record.partition,
        processor_version,
        schema,
    );
    let fates = writer
        .honour(&mut tx, std::slice::from_ref(prepared))
        .await?;
    let withheld = match fates.first() {
        Some(Fate::Erased(_)) => Some((
            "erased",
            "the record belongs to an erased data subject: run `tgingest forget` again to remove the letter",
        )),
        Some(Fate::Withheld(Withheld::Retained)) => Some((
            "retained",
            "the record was received before the retention horizon: purge the letter",
        )),
        Some(Fate::Withheld(Withheld::Tombstoned)) => Some((
            "tombstoned",
            "the record has a tombstone: its effect was decided, purge the letter",
        )),
        _ => None,
    };
    if let Some((class, text)) = withheld {
        tx.rollback().await?;
        return Ok(Redrive::Withheld(class, text));
    }
    writer
        .write_allowed_updates(&mut tx, &fates, JsonbPayload::WhereValid)
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
        return Ok(Redrive::AlreadyResolved);
    }
    tx.commit().await?;
    Ok(Redrive::Resolved)
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

/// The Kafka record behind a letter, with the bytes to redrive as its payload. Kafka is read
/// only while the partition's log is still the letter's incarnation: a recreated topic holds
/// other records at the same offsets.
async fn recover_record(
    pool: &PgPool,
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
            let current: Option<i64> = sqlx::query_scalar(
                "SELECT max(topic_incarnation) FROM consumer_offsets \
                 WHERE topic = $1 AND partition = $2",
            )
            .bind(&letter.topic)
            .bind(letter.partition)
            .fetch_one(pool)
            .await
            .map_err(|e| format!("cannot read the partition's topic incarnation: {e}"))?;
            if current.unwrap_or(0) != letter.topic_incarnation {
                return Err(format!(
                    "no payload stored, and the record's log (topic incarnation {}) was replaced (now {}): nothing to re-read",
                    letter.topic_incarnation,
                    current.unwrap_or(0)
                ));
            }
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

/// What a purge did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PurgeOutcome {
    /// Letters deleted.
    pub deleted: u64,
    /// Deleted letters that were unresolved: their records now have a `purged` tombstone.
    pub tombstoned: u64,
}

/// Deletes the selected letters in one statement. An unresolved letter was its record's only
/// effect, so its record gets a `purged` tombstone in the same statement (table order
/// dead_letters, then tombstones, as every writer): who (the database role), when, why (the
/// letter's class) and what the letter said. A resolved letter's record has rows: no tombstone.
pub async fn purge(pool: &PgPool, selection: &Selection) -> anyhow::Result<PurgeOutcome> {
    let (ids, class, resolved_only) = match selection {
        Selection::Ids(ids) => (Some(ids.clone()), None, false),
        Selection::Class(class) => (None, Some(class.clone()), false),
        Selection::All => (None, None, true),
    };
    let (deleted, tombstoned): (i64, i64) = sqlx::query_as(
        "WITH purged AS ( \
             DELETE FROM dead_letters \
             WHERE ($1::bigint[] IS NULL OR id = ANY($1)) \
               AND ($2::text IS NULL OR error_class = $2) \
               AND (NOT $3 OR resolved_at IS NOT NULL) \
             RETURNING id, topic, topic_incarnation, partition, kafka_offset, bot_id, \
                       error_class, error_text, attempts, first_seen, last_seen, resolved_at \
         ), tombstoned AS ( \
             INSERT INTO tombstones \
                 (kind, topic, topic_incarnation, partition, kafka_offset, bot_id, reason, \
                  detail) \
             SELECT 'purged', topic, topic_incarnation, partition, kafka_offset, bot_id, \
                    'dlq purge of an unresolved dead letter (' || error_class || ')', \
                    jsonb_build_object('dead_letter_id', id, 'error_class', error_class, \
                        'error_text', error_text, 'attempts', attempts, \
                        'first_seen', first_seen, 'last_seen', last_seen) \
             FROM purged WHERE resolved_at IS NULL \
             ORDER BY topic, topic_incarnation, partition, kafka_offset \
             ON CONFLICT (topic, topic_incarnation, partition, kafka_offset) DO NOTHING \
             RETURNING 1 \
         ) \
         SELECT (SELECT count(*) FROM purged), (SELECT count(*) FROM tombstoned)",
    )
    .bind(&ids)
    .bind(&class)
    .bind(resolved_only)
    .fetch_one(pool)
    .await
    .context("deleting dead letters")?;
    Ok(PurgeOutcome {
        deleted: deleted.unsigned_abs(),
        tombstoned: tombstoned.unsigned_abs(),
    })
}
