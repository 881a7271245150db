//! The exactly-once checker: proves, from outside the consumer, that every produced record's
//! effect is in PostgreSQL exactly once (DESIGN.md §5), for chaos and end-to-end tests.
//!
//! It is given the manifest of what was produced (topic, partition, offset, key, value bytes,
//! headers) and never calls `processor::normalize`: a record is accounted for by a `raw_updates`
//! row holding exactly its bytes, or by exactly one unresolved dead letter at its position, or by
//! a tombstone at its position (an operator's purge) — exactly one of the three, never none. It
//! also reports raw rows, dead letters and tombstones no produced record explains, the same payload stored twice for one bot, any `offset_gaps` row of the group, and
//! every partition whose stored `next_offset` differs from the log end.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::Context;
use sqlx::PgPool;

/// One record as the producer wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducedRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
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
}

/// The outcome of a check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InvariantReport {
    /// Records in the manifest.
    pub records: usize,
    /// Records accounted for by raw rows.
    pub with_rows: usize,
    /// Records accounted for by an unresolved dead letter.
    pub dead_lettered: usize,
    /// Records accounted for by a tombstone.
    pub tombstoned: usize,
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

        let raw: Vec<(i64, i64, i32, i64, Vec<u8>)> = sqlx::query_as(
            "SELECT bot_id, update_id, kafka_partition, kafka_offset, payload_bytes \
             FROM raw_updates WHERE kafka_topic = ANY($1)",
        )
        .bind(&topics)
        .fetch_all(&self.pool)
        .await
        .context("reading raw_updates")?;
        let dead: Vec<(String, i32, i64, bool)> = sqlx::query_as(
            "SELECT topic, partition, kafka_offset, resolved_at IS NOT NULL \
             FROM dead_letters WHERE topic = ANY($1)",
        )
        .bind(&topics)
        .fetch_all(&self.pool)
        .await
        .context("reading dead_letters")?;
        let tombstones: Vec<(String, i32, i64)> = sqlx::query_as(
            "SELECT topic, partition, kafka_offset FROM tombstones WHERE topic = ANY($1)",
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

        // Records against raw rows (by exact bytes) and dead letters (by position).
        let mut raw_by_payload: HashMap<&[u8], Vec<i64>> = HashMap::new();
        for (bot_id, _, _, _, payload) in &raw {
            raw_by_payload.entry(payload).or_default().push(*bot_id);
        }
        let dead_by_position: HashMap<(&str, i32, i64), bool> = dead
            .iter()
            .map(|(t, p, o, resolved)| ((t.as_str(), *p, *o), *resolved))
            .collect();
        let tombstoned: HashSet<(&str, i32, i64)> = tombstones
            .iter()
            .map(|(t, p, o)| (t.as_str(), *p, *o))
            .collect();
        let mut produced_payloads: HashSet<&[u8]> = HashSet::new();
        let mut produced_positions: HashSet<(&str, i32, i64)> = HashSet::new();
        for record in manifest {
            let payload = record.value.as_deref().unwrap_or_default();
            produced_payloads.insert(payload);
            produced_positions.insert((&record.topic, record.partition, record.offset));
            let has_rows = raw_by_payload.contains_key(payload);
            let dead_letter =
                dead_by_position.get(&(&record.topic, record.partition, record.offset));
            let open_dead_letter = dead_letter == Some(&false);
            if tombstoned.contains(&(&record.topic, record.partition, record.offset)) {
                if has_rows || open_dead_letter {
                    report.violations.push(Violation::TombstoneAndEffect {
                        topic: record.topic.clone(),
                        partition: record.partition,
                        offset: record.offset,
                        rows: has_rows,
                        open_dead_letter,
                    });
                } else {
                    report.tombstoned += 1;
                }
                continue;
            }
            match (has_rows, open_dead_letter) {
                (true, false) => report.with_rows += 1,
                (false, true) => report.dead_lettered += 1,
                (true, true) => report.violations.push(Violation::RowsAndDeadLetter {
                    topic: record.topic.clone(),
                    partition: record.partition,
                    offset: record.offset,
                }),
                (false, false) => report.violations.push(Violation::Missing {
                    topic: record.topic.clone(),
                    partition: record.partition,
                    offset: record.offset,
                    resolved_dead_letter: dead_letter == Some(&true),
                }),
            }
        }

        // What the database holds that nothing produced explains, or holds twice.
        for (bot_id, update_id, partition, offset, payload) in &raw {
            if !produced_payloads.contains(payload.as_slice()) {
                report.violations.push(Violation::UnexpectedRawRow {
                    bot_id: *bot_id,
                    update_id: *update_id,
                    kafka_partition: *partition,
                    kafka_offset: *offset,
                });
            }
        }
        for bots in raw_by_payload.values() {
            let mut per_bot: HashMap<i64, usize> = HashMap::new();
            for bot in bots {
                *per_bot.entry(*bot).or_default() += 1;
            }
            for (bot_id, rows) in per_bot {
                if rows > 1 {
                    report
                        .violations
                        .push(Violation::DuplicateRawRow { bot_id, rows });
                }
            }
        }
        for (topic, partition, offset, _) in &dead {
            if !produced_positions.contains(&(topic.as_str(), *partition, *offset)) {
                report.violations.push(Violation::UnexpectedDeadLetter {
                    topic: topic.clone(),
                    partition: *partition,
                    offset: *offset,
                });
            }
        }
        for (topic, partition, offset) in &tombstones {
            if !produced_positions.contains(&(topic.as_str(), *partition, *offset)) {
                report.violations.push(Violation::UnexpectedTombstone {
                    topic: topic.clone(),
                    partition: *partition,
                    offset: *offset,
                });
            }
        }
        for (topic, partition, expected_offset, first_offset_seen) in gaps {
            report.violations.push(Violation::OffsetGap {
                topic,
                partition,
                expected_offset,
                first_offset_seen,
            });
        }

        // Stored offsets against log ends.
        let mut log_ends: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for record in manifest {
            let end = log_ends
                .entry((record.topic.clone(), record.partition))
                .or_insert(0);
            *end = (*end).max(record.offset + 1);
        }
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

/// Runs the checker for `group` in the database behind `pool`; panics listing the violations
/// unless every invariant holds.
pub async fn assert_invariants(pool: &PgPool, group: &str, manifest: &[ProducedRecord]) {
    InvariantChecker::new(pool.clone(), group)
        .check(manifest)
        .await
        .expect("the checker runs")
        .assert_ok();
}
