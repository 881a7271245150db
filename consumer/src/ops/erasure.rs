//! Erasure (`tgingest forget --user ID | --chat ID [--bot ID]`; DESIGN.md §5.11,
//! `migrations/0006_retention_and_erasure.sql`): removes a data subject's data from every table
//! and makes sure no writer ever brings it back.
//!
//! The protocol, each step in transactions of bounded size (run with the owner's credentials):
//! 1. **Decide**: the subject is recorded in `erased_subjects` (as digests, never the id: a user
//!    and their private chat, or a chat; for one bot or all) and committed; then every
//!    transaction that began earlier is waited for. From here on every writer — the consumer's
//!    batches, `dlq redrive`, `replay --reprocess-from-db` — scrubs or erases what mentions the
//!    subject before writing (`crate::writer::RecordWriter::honour`), so the passes below are
//!    never overtaken by a writer that missed the decision.
//! 2. **Raw updates** (one range of blocks per transaction): every row whose bytes contain a
//!    subject's id is locked in key order and judged by `processor::erasure::scrub`. The
//!    subject's own update is deleted and leaves an `erased` tombstone at its Kafka position
//!    (with the digest of its original bytes, so every copy of it counts as erased); another
//!    person's update that mentions the subject is rewritten scrubbed, keeping its primary key
//!    (`payload_sha256` of the original bytes: the row's identity) and marked `scrubbed_at`. In
//!    the same transaction, per projection in the fixed order, the rows those updates were the
//!    last writer of are deleted and the scrubbed updates' rows written
//!    ([`ProjectionSchema::rewrite_updates`]; users and chats rows of other people stay).
//! 3. **Projections** (every table of [`ProjectionTable::ALL`], one range of blocks per
//!    transaction): any row still naming the subject is deleted: an id column that holds a
//!    person (`user_id`, `*_user_id`, `*_bot_id`, actor and voter ids of type user) or a chat
//!    (`chat_id`, `*_chat_id`, of type chat) equal to a subject's, or a JSON column holding the
//!    subject's User or Chat object at any depth. This catches rows whose writer's raw update
//!    is gone (retention) and the subject's own users and chats rows.
//! 4. **Dead letters**: a letter whose key names the subject's chat (or user) or whose payload
//!    mentions the subject (the same rules; bytes that do not parse but contain the id count)
//!    is deleted; an open one was its record's effect, so its record gets an `erased` tombstone.
//! 5. The subject's rows are marked `completed_at`.
//!
//! Guarantees: every table is covered (the projections through [`ProjectionTable::ALL`], never a
//! hand-written list); the writers' fixed table order is kept inside every transaction (raw
//! updates in key order, projections, dead letters, tombstones), so erasure never deadlocks
//! with a consumer (a deadlock the server breaks anyway is retried); running it again is safe
//! and finishes an interrupted run. Kafka keeps the original bytes until the topic's own
//! retention deletes them (docs/OPERATIONS.md says how to shorten it); every writer scrubs
//! them on the way in.

use std::collections::BTreeMap;

use anyhow::Context;
use processor::erasure::{DataSubject, Scrubbed, scrub};
use processor::wire::{self, Subject};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use super::progress::Progress;
use super::retention::{
    WAIT_FOR_WRITERS, relation_blocks, wait_for_earlier_transactions, with_retries,
};
use crate::projection::{ProjectionSchema, ProjectionTable};

/// Whose data to erase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForgetRequest {
    /// A user (with their private chat) or a chat.
    pub subject: DataSubject,
    /// Only this bot's data; every bot's when `None`.
    pub bot_id: Option<i64>,
}

/// What an erasure did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ErasureReport {
    /// Raw updates that were the subject's own: deleted, each leaving an `erased` tombstone.
    pub raw_updates_erased: u64,
    /// Other people's raw updates that mentioned the subject: rewritten scrubbed.
    pub raw_updates_scrubbed: u64,
    /// Projection rows deleted, per table.
    pub rows_deleted: BTreeMap<String, u64>,
    /// Projection rows written again from scrubbed updates, per table.
    pub rows_rewritten: BTreeMap<String, u64>,
    /// Dead letters deleted (open ones leave an `erased` tombstone).
    pub dead_letters_erased: u64,
    /// `erased` tombstones written.
    pub tombstones_written: u64,
}

/// Blocks of raw_updates judged per transaction (2 MiB with 8 KiB blocks).
const RAW_BLOCKS_PER_TRANSACTION: i64 = 256;
/// Blocks of a projection swept per transaction.
const SWEEP_BLOCKS_PER_TRANSACTION: i64 = 1024;
/// Dead letters judged per transaction.
const LETTERS_PER_TRANSACTION: i64 = 500;

/// Erases `request`'s subject from every table (the module's protocol), writing projections of
/// scrubbed updates with `processor_version`.
pub async fn forget(
    pool: &PgPool,
    request: &ForgetRequest,
    processor_version: i32,
    progress: &dyn Progress,
) -> anyhow::Result<ErasureReport> {
    let subjects = request.subject.erasure_of();
    let erasure_ids = decide(pool, &subjects, request.bot_id).await?;
    wait_for_earlier_transactions(pool, WAIT_FOR_WRITERS).await?;

    let schema = ProjectionSchema::load(pool)
        .await
        .context("reading the projection tables")?;
    let erasure = Erasure {
        subjects,
        bot_id: request.bot_id,
        erasure_ids: erasure_ids.clone(),
        processor_version,
    };
    let mut report = ErasureReport::default();
    erasure
        .raw_updates(pool, &schema, &mut report, progress)
        .await?;
    erasure.projections(pool, &mut report, progress).await?;
    erasure.dead_letters(pool, &mut report, progress).await?;
    sqlx::query("UPDATE erased_subjects SET completed_at = now() WHERE id = ANY($1)")
        .bind(&erasure_ids)
        .execute(pool)
        .await
        .context("marking the erasure complete")?;
    Ok(report)
}

/// Records the subjects (step 1) and returns their `erased_subjects` ids.
async fn decide(
    pool: &PgPool,
    subjects: &[DataSubject],
    bot_id: Option<i64>,
) -> anyhow::Result<Vec<i64>> {
    let digests: Vec<Vec<u8>> = subjects.iter().map(|s| s.digest().to_vec()).collect();
    let ids: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO erased_subjects AS e (subject_sha256, bot_id) \
         SELECT d, $2 FROM unnest($1::bytea[]) AS d \
         ON CONFLICT (subject_sha256, bot_id) DO UPDATE SET completed_at = NULL \
         RETURNING e.id",
    )
    .bind(&digests)
    .bind(bot_id)
    .fetch_all(pool)
    .await
    .context("recording the erased subject")?;
    Ok(ids)
}

struct Erasure {
    subjects: Vec<DataSubject>,
    bot_id: Option<i64>,
    erasure_ids: Vec<i64>,
    processor_version: i32,
}

/// A raw row read for judgement.
#[derive(sqlx::FromRow)]
struct RawRow {
    bot_id: i64,
    update_id: i64,
    payload_sha256: Vec<u8>,
    payload_bytes: Vec<u8>,
    update_type: String,
    update_epoch: i64,
    kafka_topic: String,
    kafka_topic_incarnation: i64,
    kafka_partition: i32,
    kafka_offset: i64,
}

/// What one transaction of the raw pass did.
#[derive(Default)]
struct RawChunk {
    erased: u64,
    scrubbed: u64,
    tombstones: u64,
    rows: Vec<(&'static str, u64, u64)>,
}

impl Erasure {
    fn user_ids(&self) -> Vec<i64> {
        self.subjects
            .iter()
            .filter_map(|s| match s {
                DataSubject::User(id) => Some(*id),
                DataSubject::Chat(_) => None,
            })
            .collect()
    }

    fn chat_ids(&self) -> Vec<i64> {
        self.subjects
            .iter()
            .filter_map(|s| match s {
                DataSubject::Chat(id) => Some(*id),
                DataSubject::User(_) => None,
            })
            .collect()
    }

    /// The ids as they appear in JSON bytes: what a raw row must contain to be judged.
    fn needles(&self) -> Vec<Vec<u8>> {
        let mut ids: Vec<i64> = self.subjects.iter().map(|s| s.id()).collect();
        ids.sort_unstable();
        ids.dedup();
        ids.iter().map(|id| id.to_string().into_bytes()).collect()
    }

    fn reason(&self) -> String {
        "erased on request (tgingest forget)".to_owned()
    }

    /// Step 2.
    async fn raw_updates(
        &self,
        pool: &PgPool,
        schema: &ProjectionSchema,
        report: &mut ErasureReport,
        progress: &dyn Progress,
    ) -> anyhow::Result<()> {
        let blocks = relation_blocks(pool, "raw_updates").await?;
        progress.start(
            "forget: raw_updates (blocks)",
            u64::try_from(blocks).unwrap_or(0),
        );
        let mut start = 0;
        while start < blocks {
            let end = start + RAW_BLOCKS_PER_TRANSACTION;
            let chunk = with_retries(|| self.raw_chunk(pool, schema, start, end))
                .await
                .context("erasing from raw_updates")?;
            report.raw_updates_erased += chunk.erased;
            report.raw_updates_scrubbed += chunk.scrubbed;
            report.tombstones_written += chunk.tombstones;
            for (table, deleted, written) in chunk.rows {
                *report.rows_deleted.entry(table.to_owned()).or_default() += deleted;
                *report.rows_rewritten.entry(table.to_owned()).or_default() += written;
            }
            progress.advance(u64::try_from(end.min(blocks) - start).unwrap_or(0));
            start = end;
        }
        progress.finish();
        Ok(())
    }

    /// One transaction of step 2 over the blocks `[start, end)` of raw_updates.
    async fn raw_chunk(
        &self,
        pool: &PgPool,
        schema: &ProjectionSchema,
        start: i64,
        end: i64,
    ) -> Result<RawChunk, sqlx::Error> {
        let mut tx = pool.begin().await?;
        let rows: Vec<RawRow> = sqlx::query_as(
            "SELECT bot_id, update_id, payload_sha256, payload_bytes, update_type, update_epoch, \
                    kafka_topic, \
                    kafka_topic_incarnation, kafka_partition, kafka_offset \
             FROM raw_updates \
             WHERE ctid >= format('(%s,0)', $1::bigint)::tid \
               AND ctid < format('(%s,0)', $2::bigint)::tid \
               AND ($3::bigint IS NULL OR bot_id = $3) \
               AND EXISTS (SELECT 1 FROM unnest($4::bytea[]) AS n(needle) \
                           WHERE position(n.needle IN payload_bytes) > 0) \
             ORDER BY bot_id, update_id, payload_sha256 \
             FOR UPDATE",
        )
        .bind(start)
        .bind(end)
        .bind(self.bot_id)
        .bind(self.needles())
        .fetch_all(&mut *tx)
        .await?;
        let mut chunk = RawChunk::default();
        if rows.is_empty() {
            tx.rollback().await?;
            return Ok(chunk);
        }
        let mut erased: Vec<&RawRow> = Vec::new();
        let mut scrubbed: Vec<(&RawRow, Vec<u8>, processor::Normalized)> = Vec::new();
        let mut old: Vec<(processor::Normalized, i64)> = Vec::new();
        for row in &rows {
            match scrub(&row.payload_bytes, &self.subjects) {
                Scrubbed::Untouched => continue,
                Scrubbed::Erased => erased.push(row),
                Scrubbed::Scrubbed(bytes) => match processor::normalize(row.bot_id, &bytes) {
                    Ok(n) => scrubbed.push((row, bytes, n)),
                    Err(_) => erased.push(row),
                },
            }
            // What the stored bytes wrote: rows it is still the last writer of get replaced.
            if let Ok(n) = processor::normalize(row.bot_id, &row.payload_bytes) {
                old.push((n, row.update_epoch));
            }
        }
        if erased.is_empty() && scrubbed.is_empty() {
            tx.rollback().await?;
            return Ok(chunk);
        }
        // raw_updates (rows locked in key order above), then the projections, then tombstones.
        if !erased.is_empty() {
            // The removed rows leave the stored-update counts in the same statement.
            let delete = crate::raw_counts::uncount_deleted(
                "DELETE FROM raw_updates AS r \
                 USING unnest($1::bigint[], $2::bigint[], $3::bytea[]) AS u(bot_id, update_id, sha) \
                 WHERE r.bot_id = u.bot_id AND r.update_id = u.update_id \
                   AND r.payload_sha256 = u.sha",
                "r",
            );
            sqlx::query(sqlx::AssertSqlSafe(delete))
                .bind(erased.iter().map(|r| r.bot_id).collect::<Vec<_>>())
                .bind(erased.iter().map(|r| r.update_id).collect::<Vec<_>>())
                .bind(
                    erased
                        .iter()
                        .map(|r| r.payload_sha256.clone())
                        .collect::<Vec<_>>(),
                )
                .execute(&mut *tx)
                .await?;
        }
        if !scrubbed.is_empty() {
            sqlx::query(
                "UPDATE raw_updates AS r \
                 SET payload_bytes = u.bytes, \
                     payload = CASE WHEN u.jsonb_ok THEN convert_from(u.bytes, 'UTF8')::jsonb END, \
                     scrubbed_at = now() \
                 FROM unnest($1::bigint[], $2::bigint[], $3::bytea[], $4::bytea[], $5::boolean[]) \
                      AS u(bot_id, update_id, sha, bytes, jsonb_ok) \
                 WHERE r.bot_id = u.bot_id AND r.update_id = u.update_id \
                   AND r.payload_sha256 = u.sha",
            )
            .bind(scrubbed.iter().map(|s| s.0.bot_id).collect::<Vec<_>>())
            .bind(scrubbed.iter().map(|s| s.0.update_id).collect::<Vec<_>>())
            .bind(
                scrubbed
                    .iter()
                    .map(|s| s.0.payload_sha256.clone())
                    .collect::<Vec<_>>(),
            )
            .bind(scrubbed.iter().map(|s| s.1.clone()).collect::<Vec<_>>())
            .bind(
                scrubbed
                    .iter()
                    .map(|s| s.2.raw.jsonb_ok)
                    .collect::<Vec<_>>(),
            )
            .execute(&mut *tx)
            .await?;
        }
        let old_refs: Vec<(&processor::Normalized, i64)> =
            old.iter().map(|(n, e)| (n, *e)).collect();
        let new_refs: Vec<(&processor::Normalized, i64)> = scrubbed
            .iter()
            .map(|(row, _, n)| (n, row.update_epoch))
            .collect();
        chunk.rows = schema
            .rewrite_updates(
                &mut tx,
                &old_refs,
                &new_refs,
                self.processor_version,
                // Other people's users and chats rows are theirs; the subject's go in step 3.
                |t| !matches!(t, ProjectionTable::Users | ProjectionTable::Chats),
            )
            .await?;
        if !erased.is_empty() {
            chunk.tombstones = self.erased_tombstones_of_raw(&mut tx, &erased).await?;
        }
        tx.commit().await?;
        chunk.erased = erased.len() as u64;
        chunk.scrubbed = scrubbed.len() as u64;
        Ok(chunk)
    }

    /// `erased` tombstones at the Kafka positions of erased raw rows.
    async fn erased_tombstones_of_raw(
        &self,
        conn: &mut PgConnection,
        erased: &[&RawRow],
    ) -> Result<u64, sqlx::Error> {
        let mut sorted = erased.to_vec();
        sorted.sort_unstable_by(|a, b| {
            (
                &a.kafka_topic,
                a.kafka_topic_incarnation,
                a.kafka_partition,
                a.kafka_offset,
            )
                .cmp(&(
                    &b.kafka_topic,
                    b.kafka_topic_incarnation,
                    b.kafka_partition,
                    b.kafka_offset,
                ))
        });
        let result = sqlx::query(
            "INSERT INTO tombstones \
                 (kind, topic, topic_incarnation, partition, kafka_offset, bot_id, update_id, \
                  payload_sha256, reason, detail) \
             SELECT 'erased', u.topic, u.incarnation, u.partition, u.kafka_offset, u.bot_id, \
                    u.update_id, u.sha, $9, \
                    jsonb_build_object('erasure', $10::bigint[], 'update_type', u.update_type) \
             FROM unnest($1::text[], $2::bigint[], $3::integer[], $4::bigint[], $5::bigint[], \
                         $6::bigint[], $7::bytea[], $8::text[]) \
                  AS u(topic, incarnation, partition, kafka_offset, bot_id, update_id, sha, \
                       update_type) \
             ON CONFLICT (topic, topic_incarnation, partition, kafka_offset) DO NOTHING",
        )
        .bind(
            sorted
                .iter()
                .map(|r| r.kafka_topic.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            sorted
                .iter()
                .map(|r| r.kafka_topic_incarnation)
                .collect::<Vec<_>>(),
        )
        .bind(sorted.iter().map(|r| r.kafka_partition).collect::<Vec<_>>())
        .bind(sorted.iter().map(|r| r.kafka_offset).collect::<Vec<_>>())
        .bind(sorted.iter().map(|r| r.bot_id).collect::<Vec<_>>())
        .bind(sorted.iter().map(|r| r.update_id).collect::<Vec<_>>())
        .bind(
            sorted
                .iter()
                .map(|r| r.payload_sha256.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            sorted
                .iter()
                .map(|r| r.update_type.clone())
                .collect::<Vec<_>>(),
        )
        .bind(self.reason())
        .bind(&self.erasure_ids)
        .execute(conn)
        .await?;
        Ok(result.rows_affected())
    }

    /// Step 3.
    async fn projections(
        &self,
        pool: &PgPool,
        report: &mut ErasureReport,
        progress: &dyn Progress,
    ) -> anyhow::Result<()> {
        for &table in ProjectionTable::ALL {
            let Some(predicate) = mention_predicate(pool, table).await? else {
                continue;
            };
            let name = table.name();
            let sql = format!(
                "DELETE FROM {name} \
                 WHERE ctid >= format('(%s,0)', $1::bigint)::tid \
                   AND ctid < format('(%s,0)', $2::bigint)::tid \
                   AND ($3::bigint IS NULL OR bot_id = $3) AND ({predicate})"
            );
            let blocks = relation_blocks(pool, name).await?;
            progress.start(
                &format!("forget: {name} (blocks)"),
                u64::try_from(blocks).unwrap_or(0),
            );
            let mut start = 0;
            while start < blocks {
                let end = start + SWEEP_BLOCKS_PER_TRANSACTION;
                let deleted = with_retries(|| async {
                    sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                        .bind(start)
                        .bind(end)
                        .bind(self.bot_id)
                        .bind(self.user_ids())
                        .bind(self.chat_ids())
                        .execute(pool)
                        .await
                })
                .await
                .with_context(|| format!("erasing from {name}"))?
                .rows_affected();
                if deleted > 0 {
                    *report.rows_deleted.entry(name.to_owned()).or_default() += deleted;
                }
                progress.advance(u64::try_from(end.min(blocks) - start).unwrap_or(0));
                start = end;
            }
            progress.finish();
        }
        Ok(())
    }

    /// Step 4.
    async fn dead_letters(
        &self,
        pool: &PgPool,
        report: &mut ErasureReport,
        progress: &dyn Progress,
    ) -> anyhow::Result<()> {
        progress.start("forget: dead_letters", 0);
        let mut after = 0_i64;
        loop {
            let (last, erased, tombstones) = with_retries(|| self.letters_chunk(pool, after))
                .await
                .context("erasing from dead_letters")?;
            report.dead_letters_erased += erased;
            report.tombstones_written += tombstones;
            progress.advance(erased);
            match last {
                Some(last) => after = last,
                None => break,
            }
        }
        progress.finish();
        Ok(())
    }

    /// One transaction of step 4 over the letters after id `after`: (the last id judged, letters
    /// deleted, tombstones written).
    async fn letters_chunk(
        &self,
        pool: &PgPool,
        after: i64,
    ) -> Result<(Option<i64>, u64, u64), sqlx::Error> {
        type Letter = (i64, Option<Vec<u8>>, Option<Vec<u8>>, bool);
        let mut tx = pool.begin().await?;
        let letters: Vec<Letter> = sqlx::query_as(
            "SELECT id, record_key, payload, resolved_at IS NULL FROM dead_letters \
             WHERE id > $1 AND ($2::bigint IS NULL OR bot_id = $2) \
             ORDER BY id LIMIT $3 FOR UPDATE",
        )
        .bind(after)
        .bind(self.bot_id)
        .bind(LETTERS_PER_TRANSACTION)
        .fetch_all(&mut *tx)
        .await?;
        let Some(last) = letters.last().map(|l| l.0) else {
            tx.rollback().await?;
            return Ok((None, 0, 0));
        };
        let doomed: Vec<(i64, bool)> = letters
            .iter()
            .filter(|(_, key, payload, _)| {
                self.key_names_subject(key.as_deref())
                    || payload.as_deref().is_some_and(|p| self.payload_mentions(p))
            })
            .map(|(id, _, _, open)| (*id, *open))
            .collect();
        if doomed.is_empty() {
            tx.rollback().await?;
            return Ok((Some(last), 0, 0));
        }
        let ids: Vec<i64> = doomed.iter().map(|(id, _)| *id).collect();
        let open: Vec<i64> = doomed
            .iter()
            .filter(|(_, open)| *open)
            .map(|(id, _)| *id)
            .collect();
        // dead_letters, then tombstones (the fixed order), in one statement.
        let (deleted, tombstones): (i64, i64) = sqlx::query_as(
            "WITH gone AS ( \
                 DELETE FROM dead_letters WHERE id = ANY($1) \
                 RETURNING id, topic, topic_incarnation, partition, kafka_offset, bot_id, \
                           payload, error_class \
             ), tombstoned AS ( \
                 INSERT INTO tombstones \
                     (kind, topic, topic_incarnation, partition, kafka_offset, bot_id, \
                      payload_sha256, reason, detail) \
                 SELECT 'erased', topic, topic_incarnation, partition, kafka_offset, bot_id, \
                        sha256(coalesce(payload, ''::bytea)), $3, \
                        jsonb_build_object('erasure', $4::bigint[], 'dead_letter_id', id, \
                                           'error_class', error_class) \
                 FROM gone WHERE id = ANY($2) \
                 ORDER BY topic, topic_incarnation, partition, kafka_offset \
                 ON CONFLICT (topic, topic_incarnation, partition, kafka_offset) DO NOTHING \
                 RETURNING 1 \
             ) \
             SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM tombstoned)",
        )
        .bind(&ids)
        .bind(&open)
        .bind(self.reason())
        .bind(&self.erasure_ids)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((
            Some(last),
            deleted.unsigned_abs(),
            tombstones.unsigned_abs(),
        ))
    }

    /// Whether a record key names a subject's chat or user.
    fn key_names_subject(&self, key: Option<&[u8]>) -> bool {
        let subject = match key.and_then(wire::subject_of_key) {
            Some(Subject::Chat(id)) => id.parse().ok().map(DataSubject::Chat),
            Some(Subject::User(id)) => id.parse().ok().map(DataSubject::User),
            _ => None,
        };
        subject.is_some_and(|s| self.subjects.contains(&s))
    }

    /// Whether a letter's payload (or the original bytes inside a producer envelope) mentions a
    /// subject by the erasure rules.
    fn payload_mentions(&self, payload: &[u8]) -> bool {
        let mentions = |bytes: &[u8]| scrub(bytes, &self.subjects) != Scrubbed::Untouched;
        mentions(payload) || wire::envelope_original(payload).is_some_and(|o| mentions(&o))
    }
}

/// The SQL condition (over `$4` user ids and `$5` chat ids) that a row of `table` names a
/// subject: its person and chat id columns and its JSON columns, read from the catalog. `None`
/// when the table has no such column.
async fn mention_predicate(
    pool: &PgPool,
    table: ProjectionTable,
) -> anyhow::Result<Option<String>> {
    let columns: Vec<(String, String)> = sqlx::query_as(
        "SELECT column_name::text, data_type::text FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
    )
    .bind(table.name())
    .fetch_all(pool)
    .await
    .with_context(|| format!("reading the columns of {table}"))?;
    Ok(predicate_of(&columns))
}

/// [`mention_predicate`] from (column, data type) pairs.
fn predicate_of(columns: &[(String, String)]) -> Option<String> {
    let has_text = |name: &str| columns.iter().any(|(n, t)| n == name && t == "text");
    let mut terms = Vec::new();
    for (name, data_type) in columns {
        let q = format!("\"{}\"", name.replace('"', "\"\""));
        match data_type.as_str() {
            "bigint" if name == "bot_id" => {}
            "bigint"
                if name == "user_id" || name.ends_with("_user_id") || name.ends_with("_bot_id") =>
            {
                terms.push(format!("{q} = ANY($4)"));
            }
            "bigint" if name == "chat_id" || name.ends_with("_chat_id") => {
                terms.push(format!("{q} = ANY($5)"));
            }
            "bigint" => {
                // An id whose kind is in a sibling column: actor_id/actor_type, voter_id/voter_type.
                if let Some(prefix) = name.strip_suffix("_id")
                    && has_text(&format!("{prefix}_type"))
                {
                    let kind = format!("\"{prefix}_type\"");
                    terms.push(format!(
                        "({kind} = 'user' AND {q} = ANY($4)) OR ({kind} = 'chat' AND {q} = ANY($5))"
                    ));
                }
            }
            "jsonb" => terms.push(format!(
                "EXISTS (SELECT 1 FROM unnest($4::bigint[]) AS s(id) WHERE jsonb_path_exists({q}, \
                     '$.** ? (@.id == $id && exists(@.is_bot))', jsonb_build_object('id', s.id))) \
                 OR EXISTS (SELECT 1 FROM unnest($5::bigint[]) AS s(id) WHERE jsonb_path_exists({q}, \
                     '$.** ? (@.id == $id && (@.type == \"private\" || @.type == \"group\" || \
                     @.type == \"supergroup\" || @.type == \"channel\"))', \
                     jsonb_build_object('id', s.id)))"
            )),
            _ => {}
        }
    }
    (!terms.is_empty()).then(|| terms.join(" OR "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
            .collect()
    }

    #[test]
    fn person_and_chat_columns_are_matched_by_name_and_typed_ids_by_their_kind() {
        let predicate = predicate_of(&columns(&[
            ("bot_id", "bigint"),
            ("chat_id", "bigint"),
            ("message_id", "bigint"),
            ("from_user_id", "bigint"),
            ("via_bot_id", "bigint"),
            ("forward_origin_chat_id", "bigint"),
            ("src_update_id", "bigint"),
            ("actor_type", "text"),
            ("actor_id", "bigint"),
            ("entities", "jsonb"),
            ("text", "text"),
        ]))
        .expect("a predicate");
        for term in [
            "\"chat_id\" = ANY($5)",
            "\"from_user_id\" = ANY($4)",
            "\"via_bot_id\" = ANY($4)",
            "\"forward_origin_chat_id\" = ANY($5)",
            "(\"actor_type\" = 'user' AND \"actor_id\" = ANY($4))",
            "jsonb_path_exists(\"entities\"",
        ] {
            assert!(predicate.contains(term), "{term} in {predicate}");
        }
        for column in [
            "\"bot_id\"",
            "\"message_id\"",
            "\"src_update_id\"",
            "\"text\"",
        ] {
            assert!(!predicate.contains(column), "{column} in {predicate}");
        }
        assert_eq!(
            predicate_of(&columns(&[("bot_id", "bigint"), ("poll_id", "text")])),
            None
        );
    }
}
