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
//! Every Kafka position written or matched carries the writer's topic incarnation (DESIGN.md
//! §5.10), so records of a recreated topic never meet the old log's rows at the same offset.
//!
//! Before it writes anything, a batch consults what operators decided (DESIGN.md §5.11), in ONE
//! indexed round trip ([`RecordWriter::honour`]): the tombstones in the batch's offset range, the
//! record horizon of retention (`retention_horizons`) and the erased subjects among those the
//! batch's records mention (`erased_subjects`, by digest). A record with a tombstone, or received
//! before the horizon, gets no rows and no dead letter (retention's records stay retained); a
//! record that mentions an erased subject is scrubbed by `processor::erasure` before it is
//! written — its raw row keeps the original bytes' digest as its identity and is marked scrubbed —
//! or, when it is the subject's own, gets an `erased` tombstone and nothing else (written after
//! dead_letters, in the fixed order). So a replay, a redrive or a record read after an erasure or
//! a retention run never brings back what they removed.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use processor::Normalized;
use processor::erasure::{self, DataSubject, Scrubbed};
use processor::wire::{self, Subject};
use sqlx::PgConnection;

use super::prepare::{Content, DeadLetterClass, PreparedRecord};
use crate::offsets::Ownership;
use crate::projection::ProjectionSchema;
use crate::raw_counts;
use crate::update_epochs::{self, UpdateArrival};

/// Where raw payloads are also stored as `jsonb`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonbPayload {
    /// Wherever the processor found the bytes valid for `jsonb`.
    WhereValid,
    /// Nowhere: bytes only (the retry after PostgreSQL refused a payload's `jsonb`).
    Never,
}

/// The SQL expressions (placeholders, usually) of what every row of one raw_updates statement
/// shares.
#[derive(Debug, Clone, Copy)]
pub struct RawShared<'a> {
    pub topic: &'a str,
    pub partition: &'a str,
    pub processor_version: &'a str,
    pub topic_incarnation: &'a str,
}

/// The batch's `raw_updates` upsert, its inserted rows counted for `status` in the same statement
/// ([`crate::raw_counts`]); yields how many rows it inserted or raised the processor version of.
/// The rows come from `source`, a FROM item named `u` with the columns (bot_id, update_id, sha,
/// update_type, bytes, jsonb_ok, received_ms, kafka_offset, ts_ms, update_epoch, scrubbed), in
/// key order (or put in it by `order`, empty or an ORDER BY clause); `ctes` is empty or common
/// table expressions `source` reads, each followed by a comma. The one statement shape the
/// writer runs (and the benchmarks compare against).
///
/// A row already stored with the same or a newer processor version is filtered out before the
/// insert (`NOT EXISTS` on the primary key): `ON CONFLICT DO UPDATE … WHERE` would lock it, and
/// parse its jsonb copy, even though its `WHERE` refuses, so a replay of stored updates writes
/// nothing at all. Measured on first writes (`scripts/bench-quick`, same machine, back to back):
/// 0.66–0.70× the ideal with it, 0.63–0.69× without.
pub fn raw_upsert_sql(ctes: &str, source: &str, order: &str, shared: RawShared<'_>) -> String {
    let RawShared {
        topic,
        partition,
        processor_version,
        topic_incarnation,
    } = shared;
    raw_counts::count_inserted(
        ctes,
        &format!(
            "INSERT INTO raw_updates AS r \
                 (bot_id, update_id, payload_sha256, update_type, payload_bytes, payload, \
                  received_at, kafka_topic, kafka_partition, kafka_offset, kafka_timestamp, \
                  processor_version, update_epoch, kafka_topic_incarnation, scrubbed_at) \
             SELECT u.bot_id, u.update_id, u.sha, u.update_type, u.bytes, \
                    CASE WHEN u.jsonb_ok THEN convert_from(u.bytes, 'UTF8')::jsonb END, \
                    to_timestamp(u.received_ms / 1000.0), {topic}, {partition}, u.kafka_offset, \
                    to_timestamp(u.ts_ms / 1000.0), {processor_version}, u.update_epoch, \
                    {topic_incarnation}, CASE WHEN u.scrubbed THEN now() END \
             FROM {source} \
             WHERE NOT EXISTS (SELECT 1 FROM raw_updates AS cur \
                 WHERE cur.bot_id = u.bot_id AND cur.update_id = u.update_id \
                   AND cur.payload_sha256 = u.sha \
                   AND cur.processor_version >= {processor_version}) {order} \
             ON CONFLICT (bot_id, update_id, payload_sha256) DO UPDATE \
                 SET processor_version = EXCLUDED.processor_version \
                 WHERE EXCLUDED.processor_version > r.processor_version"
        ),
        topic,
        partition,
    )
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
    /// The topic incarnation of the records' positions (DESIGN.md §5.10).
    topic_incarnation: i64,
    partition: i32,
    processor_version: i32,
    schema: &'a ProjectionSchema,
}

impl<'a> RecordWriter<'a> {
    pub fn new(
        topic: &'a str,
        topic_incarnation: i64,
        partition: i32,
        processor_version: i32,
        schema: &'a ProjectionSchema,
    ) -> Self {
        Self {
            topic,
            topic_incarnation,
            partition,
            processor_version,
            schema,
        }
    }

    /// The rows and dead letters of `records` as `plan` says, in the fixed table order, as the
    /// operators' decisions allow ([`Self::honour`]). Returns rows written per table.
    pub(super) async fn write_batch(
        &self,
        conn: &mut PgConnection,
        records: &[PreparedRecord],
        plan: Plan<'_>,
    ) -> Result<Vec<(&'static str, u64)>, sqlx::Error> {
        let fates = self.honour(conn, records).await?;
        let Sorted {
            kept,
            scrubbed,
            erased,
        } = Sorted::of(&fates);
        let records = kept.into_iter();
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
            written.extend(
                self.write_marked_updates(conn, &updates, jsonb, &scrubbed)
                    .await?,
            );
            self.resolve_dead_letters(conn, &updates).await?;
        }
        if !rejected.is_empty() {
            let rows = self.write_dead_letters(conn, &rejected).await?;
            written.push(("dead_letters", rows));
        }
        if !erased.is_empty() {
            let rows = self.write_erased_tombstones(conn, &erased).await?;
            written.push(("tombstones", rows));
        }
        Ok(written)
    }

    /// What the operators' decisions make of each record (DESIGN.md §5.11), read in ONE
    /// statement: the tombstones in the records' offset range, the record horizon of retention,
    /// and the erased subjects among those the records mention. In record order.
    pub async fn honour<'r>(
        &self,
        conn: &mut PgConnection,
        records: &'r [PreparedRecord],
    ) -> Result<Vec<Fate<'r>>, sqlx::Error> {
        let offsets = records.iter().map(|r| r.record.offset);
        let (Some(first), Some(last)) = (offsets.clone().min(), offsets.max()) else {
            return Ok(Vec::new());
        };
        let mentions: Vec<Vec<DataSubject>> = records.iter().map(mentioned).collect();
        let mut digests: HashMap<DataSubject, [u8; 32]> = HashMap::new();
        for subject in mentions.iter().flatten() {
            digests.entry(*subject).or_insert_with(|| subject.digest());
        }
        let lookup: Vec<Vec<u8>> = digests.values().map(|d| d.to_vec()).collect();
        type Row = (i32, Option<i64>, Option<Vec<u8>>);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT 0, kafka_offset, NULL::bytea FROM tombstones \
             WHERE topic = $1 AND topic_incarnation = $5 AND partition = $2 \
               AND kafka_offset BETWEEN $3 AND $4 \
             UNION ALL \
             SELECT 1, (extract(epoch FROM horizon) * 1000)::bigint, NULL FROM retention_horizons \
             WHERE table_name = 'raw_updates' \
             UNION ALL \
             SELECT 2, bot_id, subject_sha256 FROM erased_subjects \
             WHERE subject_sha256 = ANY($6::bytea[])",
        )
        .bind(self.topic)
        .bind(self.partition)
        .bind(first)
        .bind(last)
        .bind(self.topic_incarnation)
        .bind(lookup)
        .fetch_all(conn)
        .await?;
        let mut tombstoned = HashSet::new();
        let mut horizon_ms = None;
        let mut erased: HashSet<(Option<i64>, Vec<u8>)> = HashSet::new();
        for (what, number, digest) in rows {
            match (what, number, digest) {
                (0, Some(offset), _) => {
                    tombstoned.insert(offset);
                }
                (1, horizon, _) => horizon_ms = horizon,
                (2, bot_id, Some(digest)) => {
                    erased.insert((bot_id, digest));
                }
                _ => {}
            }
        }
        let is_erased = |bot_id: Option<i64>, subject: &DataSubject| {
            let digest = digests.get(subject).map(|d| d.to_vec()).unwrap_or_default();
            erased.contains(&(None, digest.clone()))
                || bot_id.is_some_and(|b| erased.contains(&(Some(b), digest)))
        };
        let any_erased = !erased.is_empty();
        let mut fates = Vec::with_capacity(records.len());
        for (record, mentions) in records.iter().zip(&mentions) {
            if tombstoned.contains(&record.record.offset) {
                fates.push(Fate::Withheld(Withheld::Tombstoned));
                continue;
            }
            if let (Some(horizon), Some(received)) = (horizon_ms, record.record.received_at_ms())
                && received < horizon
            {
                fates.push(Fate::Withheld(Withheld::Retained));
                continue;
            }
            if !any_erased {
                fates.push(Fate::AsIs(record));
                continue;
            }
            let bot_id = record.record.bot_id();
            let mut subjects: Vec<DataSubject> = mentions
                .iter()
                .filter(|s| is_erased(bot_id, s))
                .copied()
                .collect();
            if subjects.is_empty() {
                fates.push(Fate::AsIs(record));
                continue;
            }
            // A user's erasure is also their private chat's, as `forget` records it.
            let companions: Vec<DataSubject> = subjects
                .iter()
                .filter_map(|s| match s {
                    DataSubject::User(id) => Some(DataSubject::Chat(*id)),
                    DataSubject::Chat(_) => None,
                })
                .collect();
            subjects.extend(companions);
            fates.push(scrub_record(record, &subjects));
        }
        Ok(fates)
    }

    /// The `raw_updates` rows and projections of `updates` (records without an update are
    /// skipped). Leaves dead letters alone and consults nothing: the caller has
    /// ([`Self::honour`]). Returns rows written per table.
    pub async fn write_updates(
        &self,
        conn: &mut PgConnection,
        updates: &[&PreparedRecord],
        jsonb: JsonbPayload,
    ) -> Result<Vec<(&'static str, u64)>, sqlx::Error> {
        self.write_marked_updates(conn, updates, jsonb, &ScrubbedKeys::new())
            .await
    }

    /// The `raw_updates` rows and projections of the records `fates` let through (as they are, or
    /// scrubbed), exactly as a batch writes them; erased and withheld records get nothing here.
    pub async fn write_allowed_updates(
        &self,
        conn: &mut PgConnection,
        fates: &[Fate<'_>],
        jsonb: JsonbPayload,
    ) -> Result<Vec<(&'static str, u64)>, sqlx::Error> {
        let Sorted { kept, scrubbed, .. } = Sorted::of(fates);
        if kept.is_empty() {
            return Ok(Vec::new());
        }
        self.write_marked_updates(conn, &kept, jsonb, &scrubbed)
            .await
    }

    /// [`Self::write_updates`], marking the raw rows in `scrubbed` as scrubbed.
    async fn write_marked_updates(
        &self,
        conn: &mut PgConnection,
        updates: &[&PreparedRecord],
        jsonb: JsonbPayload,
        scrubbed: &ScrubbedKeys,
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
            self.insert_raw(conn, &updates, &epochs, jsonb, scrubbed)
                .await?,
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

    /// The `raw_updates` rows of `updates`, each with its update-id epoch (`epochs[i]`); those
    /// in `scrubbed` are marked scrubbed.
    async fn insert_raw(
        &self,
        conn: &mut PgConnection,
        updates: &[(&PreparedRecord, &Normalized)],
        epochs: &[i64],
        jsonb: JsonbPayload,
        scrubbed: &ScrubbedKeys,
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
        let mut scrubbed_rows = Vec::with_capacity(rows.len());
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
            scrubbed_rows.push(scrubbed.contains(&(*bot_id, *update_id, *hash)));
        }
        // The inserted rows are counted for `status` by the same statement.
        static INSERT: LazyLock<String> = LazyLock::new(|| {
            raw_upsert_sql(
                "",
                "UNNEST($1::bigint[], $2::bigint[], $3::bytea[], $4::text[], $5::bytea[], \
                        $6::boolean[], $7::bigint[], $8::bigint[], $9::bigint[], \
                        $13::bigint[], $15::boolean[]) \
                 AS u(bot_id, update_id, sha, update_type, bytes, jsonb_ok, received_ms, \
                      kafka_offset, ts_ms, update_epoch, scrubbed)",
                "",
                RawShared {
                    topic: "$10",
                    partition: "$11",
                    processor_version: "$12",
                    topic_incarnation: "$14",
                },
            )
        });
        let written: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(INSERT.as_str()))
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
            .bind(self.topic_incarnation)
            .bind(scrubbed_rows)
            .fetch_one(conn)
            .await?;
        Ok(u64::try_from(written).unwrap_or(0))
    }

    /// The `erased` tombstones of records that are an erased subject's own, read after the
    /// erasure: their position, the update and the digest of their bytes (so other copies of the
    /// same bytes are known erased), never the subject. A position that has one keeps it.
    async fn write_erased_tombstones(
        &self,
        conn: &mut PgConnection,
        erased: &[&PreparedRecord],
    ) -> Result<u64, sqlx::Error> {
        let mut sorted: Vec<&PreparedRecord> = erased.to_vec();
        sorted.sort_unstable_by_key(|r| r.record.offset);
        let mut offsets = Vec::with_capacity(sorted.len());
        let mut bot_ids = Vec::with_capacity(sorted.len());
        let mut update_ids = Vec::with_capacity(sorted.len());
        let mut digests = Vec::with_capacity(sorted.len());
        let mut kinds = Vec::with_capacity(sorted.len());
        for record in sorted {
            offsets.push(record.record.offset);
            bot_ids.push(record.record.bot_id());
            let (update_id, kind) = match &record.content {
                Content::Update(n) => (Some(n.raw.update_id), Some(n.raw.update_type.clone())),
                Content::Rejected { .. } => (None, None),
            };
            update_ids.push(update_id);
            kinds.push(kind);
            digests.push(record.record.value_sha256().to_vec());
        }
        let result = sqlx::query(
            "INSERT INTO tombstones \
                 (kind, topic, topic_incarnation, partition, kafka_offset, bot_id, update_id, \
                  payload_sha256, reason, detail) \
             SELECT 'erased', $1, $2, $3, u.kafka_offset, u.bot_id, u.update_id, u.sha, \
                    'its data subject was erased (read after the erasure)', \
                    jsonb_build_object('update_type', u.update_type) \
             FROM UNNEST($4::bigint[], $5::bigint[], $6::bigint[], $7::bytea[], $8::text[]) \
                  AS u(kafka_offset, bot_id, update_id, sha, update_type) \
             ORDER BY u.kafka_offset \
             ON CONFLICT (topic, topic_incarnation, partition, kafka_offset) DO NOTHING",
        )
        .bind(self.topic)
        .bind(self.topic_incarnation)
        .bind(self.partition)
        .bind(offsets)
        .bind(bot_ids)
        .bind(update_ids)
        .bind(digests)
        .bind(kinds)
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
             WHERE topic = $1 AND topic_incarnation = $4 AND partition = $2 \
               AND kafka_offset = ANY($3) AND resolved_at IS NULL",
        )
        .bind(self.topic)
        .bind(self.partition)
        .bind(offsets)
        .bind(self.topic_incarnation)
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
                 (topic, topic_incarnation, partition, kafka_offset, bot_id, record_key, \
                  payload, headers, error_class, error_text, first_seen, last_seen, attempts) \
             SELECT $1, $10, $2, u.kafka_offset, u.bot_id, u.record_key, u.payload, u.headers::jsonb, \
                    u.error_class, u.error_text, now(), now(), 1 \
             FROM UNNEST($3::bigint[], $4::bigint[], $5::bytea[], $6::bytea[], $7::text[], \
                         $8::text[], $9::text[]) \
                  AS u(kafka_offset, bot_id, record_key, payload, headers, error_class, error_text) \
             ON CONFLICT (topic, topic_incarnation, partition, kafka_offset) DO UPDATE \
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
        .bind(self.topic_incarnation)
        .execute(conn)
        .await?;
        Ok(result.rows_affected())
    }
}

/// Raw row keys (bot_id, update_id, payload_sha256) written scrubbed.
type ScrubbedKeys = HashSet<(i64, i64, [u8; 32])>;

/// What the operators' decisions make of one record ([`RecordWriter::honour`]).
#[derive(Debug)]
pub enum Fate<'r> {
    /// Written as it is.
    AsIs(&'r PreparedRecord),
    /// Written scrubbed of erased subjects: its payload is the scrubbed bytes, its update's
    /// `payload_sha256` the original bytes' digest (the raw row's identity).
    Scrubbed(Box<PreparedRecord>),
    /// The erased subject's own: an `erased` tombstone, nothing else.
    Erased(&'r PreparedRecord),
    /// Nothing is written: its effect was decided before.
    Withheld(Withheld),
}

/// Why a record gets nothing written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Withheld {
    /// A tombstone at its position (purged, erased).
    Tombstoned,
    /// Received before retention's record horizon.
    Retained,
}

/// The subjects `record` mentions: those its update mentions, and the chat or user its key
/// names.
fn mentioned(record: &PreparedRecord) -> Vec<DataSubject> {
    let mut out = match &record.content {
        Content::Update(n) => erasure::mentioned(n),
        Content::Rejected { .. } => Vec::new(),
    };
    let keyed = record
        .record
        .key
        .as_deref()
        .and_then(wire::subject_of_key)
        .and_then(|subject| match subject {
            Subject::Chat(id) => id.parse().ok().map(DataSubject::Chat),
            Subject::User(id) => id.parse().ok().map(DataSubject::User),
            Subject::Bot => None,
        });
    if let Some(subject) = keyed
        && !out.contains(&subject)
    {
        out.push(subject);
    }
    out
}

/// `record` with `subjects` scrubbed away ([`processor::erasure::scrub`]). A record the
/// processor rejected cannot be scrubbed: it mentions a subject only through its key (their
/// chat), so it is theirs.
fn scrub_record<'r>(record: &'r PreparedRecord, subjects: &[DataSubject]) -> Fate<'r> {
    let Content::Update(n) = &record.content else {
        return Fate::Erased(record);
    };
    match erasure::scrub(&n.raw.payload_bytes, subjects) {
        Scrubbed::Untouched => Fate::AsIs(record),
        Scrubbed::Erased => Fate::Erased(record),
        Scrubbed::Scrubbed(bytes) => {
            let Ok(mut scrubbed) = processor::normalize(n.raw.bot_id, &bytes) else {
                return Fate::Erased(record);
            };
            scrubbed.raw.payload_sha256 = n.raw.payload_sha256;
            let mut copy = record.record.clone();
            copy.payload = Some(bytes);
            Fate::Scrubbed(Box::new(PreparedRecord {
                record: copy,
                content: Content::Update(Box::new(scrubbed)),
            }))
        }
    }
}

/// Fates sorted by what is written: the records to write (as they are or scrubbed, in order),
/// the raw rows among them to mark scrubbed, and the records that get an `erased` tombstone.
struct Sorted<'f> {
    kept: Vec<&'f PreparedRecord>,
    scrubbed: ScrubbedKeys,
    erased: Vec<&'f PreparedRecord>,
}

impl<'f> Sorted<'f> {
    fn of(fates: &'f [Fate<'_>]) -> Self {
        let mut sorted = Self {
            kept: Vec::with_capacity(fates.len()),
            scrubbed: ScrubbedKeys::new(),
            erased: Vec::new(),
        };
        for fate in fates {
            match fate {
                Fate::AsIs(record) => sorted.kept.push(*record),
                Fate::Scrubbed(record) => {
                    if let Content::Update(n) = &record.content {
                        sorted.scrubbed.insert((
                            n.raw.bot_id,
                            n.raw.update_id,
                            n.raw.payload_sha256,
                        ));
                    }
                    sorted.kept.push(record.as_ref());
                }
                Fate::Erased(record) => sorted.erased.push(*record),
                Fate::Withheld(_) => {}
            }
        }
        sorted
    }
}

/// Records that the partition's next offset, `owner.next_offset`, was missing from Kafka
/// (`first_offset_seen` came instead).
pub(super) async fn insert_offset_gap(
    conn: &mut PgConnection,
    group_id: &str,
    topic: &str,
    owner: &Ownership,
    first_offset_seen: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO offset_gaps \
             (group_id, topic, topic_incarnation, partition, expected_offset, \
              first_offset_seen, detected_at) \
         VALUES ($1, $2, $6, $3, $4, $5, now())",
    )
    .bind(group_id)
    .bind(topic)
    .bind(owner.partition)
    .bind(owner.next_offset)
    .bind(first_offset_seen)
    .bind(owner.topic_incarnation)
    .execute(conn)
    .await?;
    Ok(())
}
