//! The SQL that writes a record's effect (DESIGN.md §4, §6): its `raw_updates` row and
//! projections, or its `dead_letters` row; and the `offset_gaps` record.
//!
//! [`RecordWriter`] is the one writer of `raw_updates` and `dead_letters`: the batch writer and
//! the dead-letter redrive both call it inside a transaction they hold, so both follow the same
//! conflict rules. Guarantees: an equal payload delivered again is absorbed and a newer processor
//! version is recorded; rows are written in the fixed table order bot_update_epochs,
//! raw_updates, the projections, dead_letters (tombstones are only read, before any write; the
//! caller moves the offset last); every update is written with its update-id epoch
//! (`crate::update_epochs`: a copy reuses its first copy's); a record that gets rows closes its
//! open dead letter; a dead letter written again counts an attempt while it is open and never
//! reopens once resolved (its record has rows); a record with a tombstone (an operator purged its
//! letter) gets neither rows nor a dead letter, so a replay never undoes an operator's decision.

use std::collections::{HashMap, HashSet};

use processor::Normalized;
use sqlx::PgConnection;

use super::prepare::{Content, DeadLetterClass, PreparedRecord};
use crate::projection::ProjectionSchema;
use crate::update_epochs::{self, UpdateArrival};

/// Where raw payloads are also stored as `jsonb`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonbPayload {
    /// Wherever the processor found the bytes valid for `jsonb`.
    WhereValid,
    /// Nowhere: bytes only (the retry after PostgreSQL refused a payload's `jsonb`).
    Never,
}

/// How a transaction treats its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Plan<'a> {
    /// Rows for updates, dead letters for rejected records.
    Normal,
    /// As `Normal`, but raw payloads are stored as bytes only (no `jsonb`).
    WithoutJsonb,
    /// Every record becomes a dead letter with this class and text.
    DeadLetter {
        class: &'a DeadLetterClass,
        text: &'a str,
    },
}

/// A dead letter to write: the record, its class and error text.
pub type Letter<'a> = (&'a PreparedRecord, &'a DeadLetterClass, &'a str);

/// Writes the effect of records of one topic partition inside the caller's transaction.
#[derive(Debug, Clone, Copy)]
pub struct RecordWriter<'a> {
    topic: &'a str,
    partition: i32,
    processor_version: i32,
    schema: &'a ProjectionSchema,
}

impl<'a> RecordWriter<'a> {
    pub fn new(
        topic: &'a str,
        partition: i32,
        processor_version: i32,
        schema: &'a ProjectionSchema,
    ) -> Self {
        Self {
            topic,
            partition,
            processor_version,
            schema,
        }
    }

    /// The rows and dead letters of `records` as `plan` says, in the fixed table order. Returns
    /// rows written per table.
    pub(super) async fn write_batch(
        &self,
        conn: &mut PgConnection,
        records: &[PreparedRecord],
        plan: Plan<'_>,
    ) -> Result<Vec<(&'static str, u64)>, sqlx::Error> {
        let tombstoned = self.tombstoned(conn, records).await?;
        let records = records
            .iter()
            .filter(|r| !tombstoned.contains(&r.record.offset));
        let (updates, rejected): (Vec<&PreparedRecord>, Vec<Letter<'_>>) = match plan {
            Plan::DeadLetter { class, text } => {
                (Vec::new(), records.map(|r| (r, class, text)).collect())
            }
            Plan::Normal | Plan::WithoutJsonb => {
                let mut updates = Vec::new();
                let mut rejected = Vec::new();
                for record in records {
                    match &record.content {
                        Content::Update(_) => updates.push(record),
                        Content::Rejected { class, text } => {
                            rejected.push((record, class, text.as_str()))
                        }
                    }
                }
                (updates, rejected)
            }
        };
        let mut written = Vec::new();
        if !updates.is_empty() {
            let jsonb = if plan == Plan::WithoutJsonb {
                JsonbPayload::Never
            } else {
                JsonbPayload::WhereValid
            };
            written.extend(self.write_updates(conn, &updates, jsonb).await?);
            self.resolve_dead_letters(conn, &updates).await?;
        }
        if !rejected.is_empty() {
            let rows = self.write_dead_letters(conn, &rejected).await?;
            written.push(("dead_letters", rows));
        }
        Ok(written)
    }

    /// The offsets among `records` that have a tombstone: their effect is decided.
    async fn tombstoned(
        &self,
        conn: &mut PgConnection,
        records: &[PreparedRecord],
    ) -> Result<HashSet<i64>, sqlx::Error> {
        let offsets = records.iter().map(|r| r.record.offset);
        let (Some(first), Some(last)) = (offsets.clone().min(), offsets.max()) else {
            return Ok(HashSet::new());
        };
        let found: Vec<i64> = sqlx::query_scalar(
            "SELECT kafka_offset FROM tombstones \
             WHERE topic = $1 AND partition = $2 AND kafka_offset BETWEEN $3 AND $4",
        )
        .bind(self.topic)
        .bind(self.partition)
        .bind(first)
        .bind(last)
        .fetch_all(conn)
        .await?;
        Ok(found.into_iter().collect())
    }

    /// The `raw_updates` rows and projections of `updates` (records without an update are
    /// skipped). Leaves dead letters alone. Returns rows written per table.
    pub async fn write_updates(
        &self,
        conn: &mut PgConnection,
        updates: &[&PreparedRecord],
        jsonb: JsonbPayload,
    ) -> Result<Vec<(&'static str, u64)>, sqlx::Error> {
        let updates: Vec<(&PreparedRecord, &Normalized)> = updates
            .iter()
            .filter_map(|r| match &r.content {
                Content::Update(n) => Some((*r, n.as_ref())),
                Content::Rejected { .. } => None,
            })
            .collect();
        let arrivals: Vec<UpdateArrival> = updates
            .iter()
            .map(|(r, n)| UpdateArrival {
                bot_id: n.raw.bot_id,
                update_id: n.raw.update_id,
                payload_sha256: n.raw.payload_sha256,
                received_at_ms: r.record.received_at_ms(),
            })
            .collect();
        let epochs = update_epochs::assign(conn, &arrivals).await?;
        let mut written = vec![(
            "raw_updates",
            self.insert_raw(conn, &updates, &epochs, jsonb).await?,
        )];
        let normalized: Vec<(&Normalized, i64)> = updates
            .iter()
            .zip(&epochs)
            .map(|((_, n), epoch)| (*n, *epoch))
            .collect();
        written.extend(
            self.schema
                .upsert(conn, &normalized, self.processor_version)
                .await?,
        );
        Ok(written)
    }

    /// The `raw_updates` rows of `updates`, each with its update-id epoch (`epochs[i]`).
    async fn insert_raw(
        &self,
        conn: &mut PgConnection,
        updates: &[(&PreparedRecord, &Normalized)],
        epochs: &[i64],
        jsonb: JsonbPayload,
    ) -> Result<u64, sqlx::Error> {
        // One row per key (the same bytes delivered twice in a batch), the earliest kept, sorted.
        let mut by_key: HashMap<(i64, i64, [u8; 32]), (&PreparedRecord, i64)> = HashMap::new();
        for ((record, n), epoch) in updates.iter().zip(epochs) {
            by_key
                .entry((n.raw.bot_id, n.raw.update_id, n.raw.payload_sha256))
                .or_insert((record, *epoch));
        }
        let mut rows: Vec<_> = by_key.into_iter().collect();
        rows.sort_unstable_by_key(|row| row.0);

        let mut bot_ids = Vec::with_capacity(rows.len());
        let mut update_ids = Vec::with_capacity(rows.len());
        let mut hashes = Vec::with_capacity(rows.len());
        let mut types = Vec::with_capacity(rows.len());
        let mut payloads = Vec::with_capacity(rows.len());
        let mut jsonb_ok = Vec::with_capacity(rows.len());
        let mut received = Vec::with_capacity(rows.len());
        let mut kafka_offsets = Vec::with_capacity(rows.len());
        let mut kafka_timestamps = Vec::with_capacity(rows.len());
        let mut update_epochs = Vec::with_capacity(rows.len());
        for ((bot_id, update_id, hash), (record, epoch)) in &rows {
            let Content::Update(n) = &record.content else {
                continue;
            };
            bot_ids.push(*bot_id);
            update_ids.push(*update_id);
            hashes.push(hash.to_vec());
            types.push(n.raw.update_type.clone());
            payloads.push(n.raw.payload_bytes.clone());
            jsonb_ok.push(n.raw.jsonb_ok && jsonb == JsonbPayload::WhereValid);
            received.push(record.record.received_at_ms());
            kafka_offsets.push(record.record.offset);
            kafka_timestamps.push(record.record.timestamp_ms);
            update_epochs.push(*epoch);
        }
        let result = sqlx::query(
            "INSERT INTO raw_updates AS r \
                 (bot_id, update_id, payload_sha256, update_type, payload_bytes, payload, \
                  received_at, kafka_topic, kafka_partition, kafka_offset, kafka_timestamp, \
                  processor_version, update_epoch) \
             SELECT u.bot_id, u.update_id, u.sha, u.update_type, u.bytes, \
                    CASE WHEN u.jsonb_ok THEN convert_from(u.bytes, 'UTF8')::jsonb END, \
                    to_timestamp(u.received_ms / 1000.0), $10, $11, u.kafka_offset, \
                    to_timestamp(u.ts_ms / 1000.0), $12, u.update_epoch \
             FROM UNNEST($1::bigint[], $2::bigint[], $3::bytea[], $4::text[], $5::bytea[], \
                         $6::boolean[], $7::bigint[], $8::bigint[], $9::bigint[], \
                         $13::bigint[]) \
                  AS u(bot_id, update_id, sha, update_type, bytes, jsonb_ok, received_ms, \
                       kafka_offset, ts_ms, update_epoch) \
             ON CONFLICT (bot_id, update_id, payload_sha256) DO UPDATE \
                 SET processor_version = EXCLUDED.processor_version \
                 WHERE EXCLUDED.processor_version > r.processor_version",
        )
        .bind(bot_ids)
        .bind(update_ids)
        .bind(hashes)
        .bind(types)
        .bind(payloads)
        .bind(jsonb_ok)
        .bind(received)
        .bind(kafka_offsets)
        .bind(kafka_timestamps)
        .bind(self.topic)
        .bind(self.partition)
        .bind(self.processor_version)
        .bind(update_epochs)
        .execute(conn)
        .await?;
        Ok(result.rows_affected())
    }

    /// A record that now has rows closes its open dead letter (a replay after a fix).
    async fn resolve_dead_letters(
        &self,
        conn: &mut PgConnection,
        updates: &[&PreparedRecord],
    ) -> Result<(), sqlx::Error> {
        let offsets: Vec<i64> = updates.iter().map(|r| r.record.offset).collect();
        sqlx::query(
            "UPDATE dead_letters SET resolved_at = now() \
             WHERE topic = $1 AND partition = $2 AND kafka_offset = ANY($3) \
               AND resolved_at IS NULL",
        )
        .bind(self.topic)
        .bind(self.partition)
        .bind(offsets)
        .execute(conn)
        .await?;
        Ok(())
    }

    /// The `dead_letters` rows of `letters`; an open letter already stored counts another
    /// attempt and takes the new error; a resolved one is left as it is (its record has rows, and
    /// a replay must not give it an open letter too). Returns rows written.
    pub async fn write_dead_letters(
        &self,
        conn: &mut PgConnection,
        letters: &[Letter<'_>],
    ) -> Result<u64, sqlx::Error> {
        let mut offsets = Vec::with_capacity(letters.len());
        let mut bot_ids = Vec::with_capacity(letters.len());
        let mut keys = Vec::with_capacity(letters.len());
        let mut payloads = Vec::with_capacity(letters.len());
        let mut headers = Vec::with_capacity(letters.len());
        let mut classes = Vec::with_capacity(letters.len());
        let mut texts = Vec::with_capacity(letters.len());
        for (record, class, text) in letters {
            let r = &record.record;
            offsets.push(r.offset);
            bot_ids.push(r.bot_id());
            keys.push(r.key.clone());
            payloads.push(r.payload.clone());
            headers.push(r.headers_json().to_string());
            classes.push(class.as_str().to_owned());
            texts.push(text.replace('\0', "\u{fffd}"));
        }
        let result = sqlx::query(
            "INSERT INTO dead_letters AS d \
                 (topic, partition, kafka_offset, bot_id, record_key, payload, headers, \
                  error_class, error_text, first_seen, last_seen, attempts) \
             SELECT $1, $2, u.kafka_offset, u.bot_id, u.record_key, u.payload, u.headers::jsonb, \
                    u.error_class, u.error_text, now(), now(), 1 \
             FROM UNNEST($3::bigint[], $4::bigint[], $5::bytea[], $6::bytea[], $7::text[], \
                         $8::text[], $9::text[]) \
                  AS u(kafka_offset, bot_id, record_key, payload, headers, error_class, error_text) \
             ON CONFLICT (topic, partition, kafka_offset) DO UPDATE \
                 SET last_seen = now(), attempts = d.attempts + 1, \
                     error_class = EXCLUDED.error_class, error_text = EXCLUDED.error_text \
                 WHERE d.resolved_at IS NULL",
        )
        .bind(self.topic)
        .bind(self.partition)
        .bind(offsets)
        .bind(bot_ids)
        .bind(keys)
        .bind(payloads)
        .bind(headers)
        .bind(classes)
        .bind(texts)
        .execute(conn)
        .await?;
        Ok(result.rows_affected())
    }
}

/// Records that the partition's next offset was missing from Kafka (`first_offset_seen` came
/// instead of `expected_offset`).
pub(super) async fn insert_offset_gap(
    conn: &mut PgConnection,
    group_id: &str,
    topic: &str,
    partition: i32,
    expected_offset: i64,
    first_offset_seen: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO offset_gaps \
             (group_id, topic, partition, expected_offset, first_offset_seen, detected_at) \
         VALUES ($1, $2, $3, $4, $5, now())",
    )
    .bind(group_id)
    .bind(topic)
    .bind(partition)
    .bind(expected_offset)
    .bind(first_offset_seen)
    .execute(conn)
    .await?;
    Ok(())
}
