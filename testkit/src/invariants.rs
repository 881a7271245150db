//! The exactly-once checker: proves, from outside the consumer, that every produced record's
//! effect is in PostgreSQL exactly once (DESIGN.md §5), for chaos and end-to-end tests.
//!
//! It is given the manifest of what was produced (topic, partition, offset, key, value bytes,
//! headers) and never calls `processor::normalize`. A record is accounted for (DESIGN.md §5.11)
//! by exactly one of:
//! - its **rows**: a `raw_updates` row whose identity (`payload_sha256`) is the SHA-256 of the
//!   record's bytes and which holds exactly those bytes, or which an erasure scrubbed
//!   (`scrubbed_at` set: the bytes are the scrubbed update, the identity stays the original's);
//! - one **unresolved dead letter** at its position;
//! - a **tombstone**: one at its position (`purged` by `dlq purge`, `erased` by an erasure), an
//!   `erased` tombstone elsewhere whose `payload_sha256` is its bytes' digest (another copy of an
//!   erased record), or the record horizon of retention (`retention_horizons`): a record whose
//!   `tg-received-at` header is before it and that has no rows and no letter was retained away.
//!
//! Never none, and never a tombstone at its position together with a raw row stored at that
//! position or an open letter there. A position is (topic, topic incarnation, partition, offset):
//! a recreated topic's records reuse offsets under the next incarnation (DESIGN.md §5.10). It
//! also reports raw rows no produced record explains (including an unscrubbed row whose bytes do
//! not hash to its identity), dead letters and tombstones at positions nothing was produced at,
//! the same payload stored twice for one bot, any `offset_gaps` row of the group, every
//! partition whose stored `next_offset` differs from the log end, and every (bot, topic,
//! partition) whose stored-update count in `raw_update_counts` (what `status` reports) is not
//! the number of its `raw_updates` rows.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::Context;
use processor::wire::{header, record_digest};
use sqlx::PgPool;

/// One record as the producer wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducedRecord {
    pub topic: String,
    /// The topic incarnation the consumer writes this record's position under: 0 until an
    /// operator accepted a recreated (or truncated) log of the partition.
    pub topic_incarnation: i64,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl From<&consumer::record::ConsumedRecord> for ProducedRecord {
    /// The record as read back from the topic, in topic incarnation 0.
    fn from(r: &consumer::record::ConsumedRecord) -> Self {
        Self {
            topic: r.topic.clone(),
            topic_incarnation: 0,
            partition: r.partition,
            offset: r.offset,
            key: r.key.clone(),
            value: r.payload.clone(),
            headers: r.headers.clone(),
        }
    }
}

/// A broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// The record has neither a raw row with its bytes, nor an unresolved dead letter, nor a
    /// tombstone.
    Missing {
        topic: String,
        partition: i32,
        offset: i64,
        /// Whether a *resolved* dead letter exists for it (resolved without rows).
        resolved_dead_letter: bool,
    },
    /// The record has both a raw row with its bytes and an unresolved dead letter.
    RowsAndDeadLetter {
        topic: String,
        partition: i32,
        offset: i64,
    },
    /// The record has a tombstone and also rows or an unresolved dead letter.
    TombstoneAndEffect {
        topic: String,
        partition: i32,
        offset: i64,
        rows: bool,
        open_dead_letter: bool,
    },
    /// A raw row whose bytes no produced record has.
    UnexpectedRawRow {
        bot_id: i64,
        update_id: i64,
        kafka_partition: i32,
        kafka_offset: i64,
    },
    /// The same payload stored in more than one raw row for one bot.
    DuplicateRawRow { bot_id: i64, rows: usize },
    /// A dead letter at a position no produced record has.
    UnexpectedDeadLetter {
        topic: String,
        partition: i32,
        offset: i64,
    },
    /// A tombstone at a position no produced record has.
    UnexpectedTombstone {
        topic: String,
        partition: i32,
        offset: i64,
    },
    /// The group recorded an offset gap.
    OffsetGap {
        topic: String,
        partition: i32,
        expected_offset: i64,
        first_offset_seen: i64,
    },
    /// The stored `next_offset` is not the log end.
    OffsetNotAtLogEnd {
        topic: String,
        partition: i32,
        stored: Option<i64>,
        log_end: i64,
    },
    /// The summary `status` reads counts a different number of stored updates than
    /// `raw_updates` holds.
    StoredCountMismatch {
        bot_id: i64,
        topic: String,
        partition: i32,
        counted: i64,
        stored: i64,
    },
}

/// The outcome of a check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InvariantReport {
    /// Records in the manifest.
    pub records: usize,
    /// Records accounted for by raw rows.
    pub with_rows: usize,
    /// Of those, rows an erasure scrubbed.
    pub scrubbed: usize,
    /// Records accounted for by an unresolved dead letter.
    pub dead_lettered: usize,
    /// Records accounted for by a tombstone (purged, erased or retained away).
    pub tombstoned: usize,
    /// Of those, erased records (a tombstone at their position or for their bytes).
    pub erased: usize,
    /// Of those, records behind the retention horizon with no effect left.
    pub retained: usize,
    pub violations: Vec<Violation>,
}

impl InvariantReport {
    /// Whether every invariant holds.
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty()
    }

    /// Panics listing (the first 50) violations unless every invariant holds.
    #[track_caller]
    pub fn assert_ok(&self) {
        if !self.is_ok() {
            let listed: Vec<String> = self
                .violations
                .iter()
                .take(50)
                .map(|v| format!("  {v:?}"))
                .collect();
            panic!(
                "{} invariant violation(s) over {} records ({} with rows, {} dead letters, {} tombstones):\n{}",
                self.violations.len(),
                self.records,
                self.with_rows,
                self.dead_lettered,
                self.tombstoned,
                listed.join("\n")
            );
        }
    }
}

/// Checks one consumer group's effect in one database.
#[derive(Debug, Clone)]
pub struct InvariantChecker {
    pool: PgPool,
    group_id: String,
    log_ends: BTreeMap<(String, i32), i64>,
}

impl InvariantChecker {
    /// A checker for `group_id`'s offsets in the database behind `pool`.
    pub fn new(pool: PgPool, group_id: impl Into<String>) -> Self {
        Self {
            pool,
            group_id: group_id.into(),
            log_ends: BTreeMap::new(),
        }
    }

    /// Declares a partition's log end (its high watermark). Without it, a partition's log end is
    /// taken as one past the manifest's highest offset there; declare partitions that received
    /// no records, or whose log holds records the manifest does not list.
    pub fn with_log_end(mut self, topic: &str, partition: i32, log_end: i64) -> Self {
        self.log_ends.insert((topic.to_owned(), partition), log_end);
        self
    }

    /// [`Self::with_log_end`] for every partition of `topic`, from its (low, high) watermarks in
    /// partition order.
    pub fn with_log_ends(self, topic: &str, watermarks: &[(i64, i64)]) -> Self {
        watermarks
            .iter()
            .enumerate()
            .fold(self, |checker, (partition, (_, high))| {
                checker.with_log_end(topic, partition as i32, *high)
            })
    }

    /// Runs every check against the manifest.
    pub async fn check(&self, manifest: &[ProducedRecord]) -> anyhow::Result<InvariantReport> {
        let topics: Vec<String> = manifest
            .iter()
            .map(|r| r.topic.clone())
            .chain(self.log_ends.keys().map(|(t, _)| t.clone()))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let mut report = InvariantReport {
            records: manifest.len(),
            ..InvariantReport::default()
        };

        let raw: Vec<RawRow> = sqlx::query_as(
            "SELECT bot_id, update_id, kafka_topic, kafka_topic_incarnation, kafka_partition, \
                    kafka_offset, payload_sha256, payload_bytes, scrubbed_at IS NOT NULL \
             FROM raw_updates WHERE kafka_topic = ANY($1)",
        )
        .bind(&topics)
        .fetch_all(&self.pool)
        .await
        .context("reading raw_updates")?;
        let horizon_ms: Option<i64> = sqlx::query_scalar(
            "SELECT (extract(epoch FROM horizon) * 1000)::bigint FROM retention_horizons \
             WHERE table_name = 'raw_updates'",
        )
        .fetch_optional(&self.pool)
        .await
        .context("reading the record horizon")?;
        let dead: Vec<(String, i64, i32, i64, bool)> = sqlx::query_as(
            "SELECT topic, topic_incarnation, partition, kafka_offset, resolved_at IS NOT NULL \
             FROM dead_letters WHERE topic = ANY($1)",
        )
        .bind(&topics)
        .fetch_all(&self.pool)
        .await
        .context("reading dead_letters")?;
        let tombstones: Vec<TombstoneRow> = sqlx::query_as(
            "SELECT topic, topic_incarnation, partition, kafka_offset, kind, payload_sha256 \
             FROM tombstones WHERE topic = ANY($1)",
        )
        .bind(&topics)
        .fetch_all(&self.pool)
        .await
        .context("reading tombstones")?;
        let gaps: Vec<(String, i32, i64, i64)> = sqlx::query_as(
            "SELECT topic, partition, expected_offset, first_offset_seen \
             FROM offset_gaps WHERE group_id = $1 ORDER BY detected_at",
        )
        .bind(&self.group_id)
        .fetch_all(&self.pool)
        .await
        .context("reading offset_gaps")?;
        let offsets: Vec<(String, i32, i64)> = sqlx::query_as(
            "SELECT topic, partition, next_offset FROM consumer_offsets \
             WHERE group_id = $1 AND topic = ANY($2)",
        )
        .bind(&self.group_id)
        .bind(&topics)
        .fetch_all(&self.pool)
        .await
        .context("reading consumer_offsets")?;

        // Records against raw rows (by identity), dead letters and tombstones (by position).
        let mut raw_by_identity: HashMap<&[u8], Vec<&RawRow>> = HashMap::new();
        for row in &raw {
            raw_by_identity.entry(&row.6).or_default().push(row);
        }
        let dead_by_position: HashMap<(&str, i64, i32, i64), bool> = dead
            .iter()
            .map(|(t, i, p, o, resolved)| ((t.as_str(), *i, *p, *o), *resolved))
            .collect();
        let tombstoned: HashMap<(&str, i64, i32, i64), &str> = tombstones
            .iter()
            .map(|(t, i, p, o, kind, _)| ((t.as_str(), *i, *p, *o), kind.as_str()))
            .collect();
        let erased_identities: HashSet<&[u8]> = tombstones
            .iter()
            .filter(|t| t.4 == "erased")
            .filter_map(|t| t.5.as_deref())
            .collect();
        let mut produced_identities: HashSet<[u8; 32]> = HashSet::new();
        let mut produced_positions: HashSet<(&str, i64, i32, i64)> = HashSet::new();
        for record in manifest {
            let identity = record_digest(record.value.as_deref());
            produced_identities.insert(identity);
            let position = (
                record.topic.as_str(),
                record.topic_incarnation,
                record.partition,
                record.offset,
            );
            produced_positions.insert(position);
            let rows = raw_by_identity.get(identity.as_slice());
            let has_rows = rows.is_some();
            let dead_letter = dead_by_position.get(&position);
            let open_dead_letter = dead_letter == Some(&false);
            if let Some(kind) = tombstoned.get(&position) {
                // Another copy of the same bytes may have rows; this position may not.
                let rows_here = rows.is_some_and(|rows| {
                    rows.iter()
                        .any(|r| (r.2.as_str(), r.3, r.4, r.5) == position)
                });
                if rows_here || open_dead_letter {
                    report.violations.push(Violation::TombstoneAndEffect {
                        topic: record.topic.clone(),
                        partition: record.partition,
                        offset: record.offset,
                        rows: rows_here,
                        open_dead_letter,
                    });
                } else {
                    report.tombstoned += 1;
                    report.erased += usize::from(*kind == "erased");
                    report.retained += usize::from(*kind == "retained");
                }
                continue;
            }
            match (has_rows, open_dead_letter) {
                (true, false) => {
                    report.with_rows += 1;
                    report.scrubbed +=
                        usize::from(rows.is_some_and(|rows| rows.iter().any(|r| r.8)));
                }
                (false, true) => report.dead_lettered += 1,
                (true, true) => report.violations.push(Violation::RowsAndDeadLetter {
                    topic: record.topic.clone(),
                    partition: record.partition,
                    offset: record.offset,
                }),
                (false, false) if erased_identities.contains(identity.as_slice()) => {
                    report.tombstoned += 1;
                    report.erased += 1;
                }
                (false, false)
                    if horizon_ms
                        .is_some_and(|h| received_at_ms(record).is_some_and(|r| r < h)) =>
                {
                    report.tombstoned += 1;
                    report.retained += 1;
                }
                (false, false) => report.violations.push(Violation::Missing {
                    topic: record.topic.clone(),
                    partition: record.partition,
                    offset: record.offset,
                    resolved_dead_letter: dead_letter == Some(&true),
                }),
            }
        }

        // What the database holds that nothing produced explains, or holds twice.
        for row in &raw {
            let intact = row.8 || record_digest(Some(&row.7)).as_slice() == row.6.as_slice();
            if !intact || !produced_identities.contains(row.6.as_slice()) {
                report.violations.push(Violation::UnexpectedRawRow {
                    bot_id: row.0,
                    update_id: row.1,
                    kafka_partition: row.4,
                    kafka_offset: row.5,
                });
            }
        }
        for rows in raw_by_identity.values() {
            let mut per_bot: HashMap<i64, usize> = HashMap::new();
            for row in rows {
                *per_bot.entry(row.0).or_default() += 1;
            }
            for (bot_id, rows) in per_bot {
                if rows > 1 {
                    report
                        .violations
                        .push(Violation::DuplicateRawRow { bot_id, rows });
                }
            }
        }
        for (topic, incarnation, partition, offset, _) in &dead {
            if !produced_positions.contains(&(topic.as_str(), *incarnation, *partition, *offset)) {
                report.violations.push(Violation::UnexpectedDeadLetter {
                    topic: topic.clone(),
                    partition: *partition,
                    offset: *offset,
                });
            }
        }
        for (topic, incarnation, partition, offset, _, _) in &tombstones {
            if !produced_positions.contains(&(topic.as_str(), *incarnation, *partition, *offset)) {
                report.violations.push(Violation::UnexpectedTombstone {
                    topic: topic.clone(),
                    partition: *partition,
                    offset: *offset,
                });
            }
        }
        let counts: Vec<(i64, String, i32, i64, i64)> = sqlx::query_as(
            "SELECT bot_id, kafka_topic, kafka_partition, coalesce(c.n, 0), coalesce(r.n, 0) \
             FROM (SELECT bot_id, kafka_topic, kafka_partition, sum(updates)::bigint AS n \
                   FROM raw_update_counts WHERE kafka_topic = ANY($1) \
                   GROUP BY bot_id, kafka_topic, kafka_partition) c \
             FULL JOIN (SELECT bot_id, kafka_topic, kafka_partition, count(*) AS n \
                        FROM raw_updates WHERE kafka_topic = ANY($1) \
                        GROUP BY bot_id, kafka_topic, kafka_partition) r \
                 USING (bot_id, kafka_topic, kafka_partition) \
             WHERE coalesce(c.n, 0) <> coalesce(r.n, 0) \
             ORDER BY bot_id, kafka_topic, kafka_partition",
        )
        .bind(&topics)
        .fetch_all(&self.pool)
        .await
        .context("comparing raw_update_counts with raw_updates")?;
        for (bot_id, topic, partition, counted, stored) in counts {
            report.violations.push(Violation::StoredCountMismatch {
                bot_id,
                topic,
                partition,
                counted,
                stored,
            });
        }
        for (topic, partition, expected_offset, first_offset_seen) in gaps {
            report.violations.push(Violation::OffsetGap {
                topic,
                partition,
                expected_offset,
                first_offset_seen,
            });
        }

        // Stored offsets against log ends (of each partition's latest incarnation).
        let mut latest: BTreeMap<(String, i32), (i64, i64)> = BTreeMap::new();
        for record in manifest {
            let end = latest
                .entry((record.topic.clone(), record.partition))
                .or_insert((record.topic_incarnation, 0));
            if record.topic_incarnation > end.0 {
                *end = (record.topic_incarnation, 0);
            }
            if record.topic_incarnation == end.0 {
                end.1 = end.1.max(record.offset + 1);
            }
        }
        let mut log_ends: BTreeMap<(String, i32), i64> =
            latest.into_iter().map(|(k, (_, end))| (k, end)).collect();
        log_ends.extend(self.log_ends.clone());
        let stored: HashMap<(String, i32), i64> =
            offsets.into_iter().map(|(t, p, o)| ((t, p), o)).collect();
        for ((topic, partition), log_end) in &log_ends {
            let at = stored.get(&(topic.clone(), *partition)).copied();
            let ok = match at {
                Some(next) => next == *log_end,
                None => *log_end == 0,
            };
            if !ok {
                report.violations.push(Violation::OffsetNotAtLogEnd {
                    topic: topic.clone(),
                    partition: *partition,
                    stored: at,
                    log_end: *log_end,
                });
            }
        }
        for ((topic, partition), next) in &stored {
            if !log_ends.contains_key(&(topic.clone(), *partition)) && *next != 0 {
                report.violations.push(Violation::OffsetNotAtLogEnd {
                    topic: topic.clone(),
                    partition: *partition,
                    stored: Some(*next),
                    log_end: 0,
                });
            }
        }
        Ok(report)
    }
}

/// (topic, topic incarnation, partition, offset, kind, payload_sha256).
type TombstoneRow = (String, i64, i32, i64, String, Option<Vec<u8>>);

/// (bot_id, update_id, topic, topic incarnation, partition, offset, payload_sha256,
/// payload_bytes, scrubbed).
type RawRow = (i64, i64, String, i64, i32, i64, Vec<u8>, Vec<u8>, bool);

/// The record's `tg-received-at` header (unix ms): when retention's horizon applies to it.
fn received_at_ms(record: &ProducedRecord) -> Option<i64> {
    record
        .headers
        .iter()
        .find(|(name, _)| name == header::RECEIVED_AT)
        .and_then(|(_, value)| std::str::from_utf8(value.as_deref()?).ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Runs the checker for `group` in the database behind `pool`; panics listing the violations
/// unless every invariant holds.
pub async fn assert_invariants(pool: &PgPool, group: &str, manifest: &[ProducedRecord]) {
    InvariantChecker::new(pool.clone(), group)
        .check(manifest)
        .await
        .expect("the checker runs")
        .assert_ok();
}
