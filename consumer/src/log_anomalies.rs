//! Log anomalies (DESIGN.md §5.10): the `log_anomalies` table, the one record of a partition
//! whose log is no longer the log the database remembers.
//!
//! The offset store (`OffsetStore`) runs these statements in its transactions,
//! next to the offsets row they concern; this module never touches `consumer_offsets` itself
//! except to read the incarnation a resolution moves to.
//!
//! Guarantees:
//! - an anomaly is recorded only while the partition's offsets row is exactly as the detecting
//!   worker holds it, with the row locked first as a rewind locks it, so a late detection never
//!   overrides an operator's decision already taken;
//! - at most one anomaly per partition of a group is open (a unique partial index); recording one
//!   that is already open returns the open one;
//! - an open anomaly halts its partition on every member, across restarts, until a rewind of the
//!   partition resolves it ([`resolve`], called by `OffsetStore::rewind_partitions` in its
//!   transaction), recording who decided, when, where the partition resumes, how many records
//!   of the new log it skips and the new topic incarnation.

use std::collections::HashMap;
use std::fmt;

use serde::Serialize;
use sqlx::PgConnection;

/// What is wrong with the partition's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyKind {
    /// The stored `next_offset` is above the log end: the topic was recreated or truncated.
    PastLogEnd,
    /// The record at `next_offset - 1` is not the one committed: truncated and refilled.
    Refilled,
}

impl AnomalyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AnomalyKind::PastLogEnd => "past_log_end",
            AnomalyKind::Refilled => "refilled",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "past_log_end" => Some(AnomalyKind::PastLogEnd),
            "refilled" => Some(AnomalyKind::Refilled),
            _ => None,
        }
    }
}

impl fmt::Display for AnomalyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a worker found, to be recorded against the position it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Detected {
    pub kind: AnomalyKind,
    /// The log's (start, end) as the broker reported it.
    pub log: (i64, i64),
    /// Refilled: the digest of the record the log now holds at `next_offset - 1`.
    pub found_sha256: Option<[u8; 32]>,
}

/// One recorded anomaly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogAnomaly {
    pub id: i64,
    pub partition: i32,
    pub kind: AnomalyKind,
    pub topic_incarnation: i64,
    /// The stored `next_offset` when it was detected.
    pub stored_offset: i64,
    pub log_start: i64,
    pub log_end: i64,
    /// Refilled: the committed digest of the record at `stored_offset - 1` (hex).
    pub expected_sha256: Option<String>,
    /// Refilled: the digest of the record the log held there instead (hex).
    pub found_sha256: Option<String>,
    /// Unix milliseconds.
    pub detected_at_ms: i64,
}

impl fmt::Display for LogAnomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            AnomalyKind::PastLogEnd => write!(
                f,
                "log anomaly #{} on partition {}: the stored offset {} is past the log end {} (log start {}): the topic was recreated or truncated",
                self.id, self.partition, self.stored_offset, self.log_end, self.log_start
            ),
            AnomalyKind::Refilled => write!(
                f,
                "log anomaly #{} on partition {}: the record at offset {} is not the one committed (the log was truncated and refilled, or the topic recreated)",
                self.id,
                self.partition,
                self.stored_offset - 1
            ),
        }
    }
}

type AnomalyRow = (
    i64,
    i32,
    String,
    i64,
    i64,
    i64,
    i64,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    i64,
);

macro_rules! anomaly_columns {
    () => {
        "id, partition, kind, topic_incarnation, stored_offset, log_start, log_end, \
         expected_sha256, found_sha256, (extract(epoch FROM detected_at) * 1000)::bigint"
    };
}

fn from_row(row: AnomalyRow) -> LogAnomaly {
    let (id, partition, kind, topic_incarnation, stored_offset, log_start, log_end, e, f, at) = row;
    LogAnomaly {
        id,
        partition,
        // The CHECK constraint allows only these two.
        kind: AnomalyKind::parse(&kind).unwrap_or(AnomalyKind::PastLogEnd),
        topic_incarnation,
        stored_offset,
        log_start,
        log_end,
        expected_sha256: e.map(|d| processor::wire::hex(&d)),
        found_sha256: f.map(|d| processor::wire::hex(&d)),
        detected_at_ms: at,
    }
}

/// Where an operator resumes one partition, and the log as they saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decision {
    pub partition: i32,
    pub resume_at: i64,
    pub log: Option<(i64, i64)>,
}

/// The position a detection was made against: the offsets row as the worker holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Position {
    pub partition: i32,
    pub topic_incarnation: i64,
    pub next_offset: i64,
    pub last_record_sha256: Option<[u8; 32]>,
}

/// Records `detected` at `position` unless an anomaly of the partition is open already. The
/// caller holds the partition's offsets row locked, exactly as `position` says.
pub(crate) async fn insert(
    conn: &mut PgConnection,
    group_id: &str,
    topic: &str,
    position: &Position,
    detected: Detected,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO log_anomalies \
             (group_id, topic, partition, kind, topic_incarnation, stored_offset, \
              log_start, log_end, expected_sha256, found_sha256) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (group_id, topic, partition) WHERE resolved_at IS NULL DO NOTHING",
    )
    .bind(group_id)
    .bind(topic)
    .bind(position.partition)
    .bind(detected.kind.as_str())
    .bind(position.topic_incarnation)
    .bind(position.next_offset)
    .bind(detected.log.0)
    .bind(detected.log.1)
    .bind(
        (detected.kind == AnomalyKind::Refilled)
            .then_some(position.last_record_sha256)
            .flatten()
            .map(|d| d.to_vec()),
    )
    .bind(detected.found_sha256.map(|d| d.to_vec()))
    .execute(conn)
    .await?;
    Ok(())
}

/// Every open anomaly of the group and topic, by partition.
pub(crate) async fn open_all<'e, E>(
    executor: E,
    group_id: &str,
    topic: &str,
) -> Result<Vec<LogAnomaly>, sqlx::Error>
where
    E: sqlx::PgExecutor<'e>,
{
    let rows: Vec<AnomalyRow> = sqlx::query_as(concat!(
        "SELECT ",
        anomaly_columns!(),
        " FROM log_anomalies \
         WHERE group_id = $1 AND topic = $2 AND resolved_at IS NULL ORDER BY partition"
    ))
    .bind(group_id)
    .bind(topic)
    .fetch_all(executor)
    .await?;
    Ok(rows.into_iter().map(from_row).collect())
}

/// The partition's open anomaly, if any.
pub(crate) async fn open_for(
    conn: &mut PgConnection,
    group_id: &str,
    topic: &str,
    partition: i32,
) -> Result<Option<LogAnomaly>, sqlx::Error> {
    let row: Option<AnomalyRow> = sqlx::query_as(concat!(
        "SELECT ",
        anomaly_columns!(),
        " FROM log_anomalies \
         WHERE group_id = $1 AND topic = $2 AND partition = $3 AND resolved_at IS NULL"
    ))
    .bind(group_id)
    .bind(topic)
    .bind(partition)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(from_row))
}

/// Resolves the open anomalies of the `targets` partitions: the operator's decision, recorded
/// with where each partition resumes, how many records of the new log before that it skips, and
/// the topic incarnation it moves to. Runs inside the rewind's transaction, after the offsets
/// rows are locked. Returns the resolved anomaly id by partition.
pub(crate) async fn resolve(
    conn: &mut PgConnection,
    group_id: &str,
    topic: &str,
    decisions: &[Decision],
) -> Result<HashMap<i32, i64>, sqlx::Error> {
    let partitions: Vec<i32> = decisions.iter().map(|d| d.partition).collect();
    let resume: Vec<i64> = decisions.iter().map(|d| d.resume_at).collect();
    let starts: Vec<Option<i64>> = decisions.iter().map(|d| d.log.map(|l| l.0)).collect();
    let ends: Vec<Option<i64>> = decisions.iter().map(|d| d.log.map(|l| l.1)).collect();
    let rows: Vec<(i32, i64)> = sqlx::query_as(
        "UPDATE log_anomalies AS a \
         SET resolved_at = now(), resolved_by = current_user, \
             resolution = jsonb_build_object( \
                 'resume_at', u.target, \
                 'log_start', u.log_start, \
                 'log_end', u.log_end, \
                 'skipped_records', GREATEST(u.target - u.log_start, 0), \
                 'topic_incarnation', o.topic_incarnation + 1) \
         FROM UNNEST($3::integer[], $4::bigint[], $5::bigint[], $6::bigint[]) \
                  AS u(partition, target, log_start, log_end) \
              JOIN consumer_offsets AS o \
                ON o.group_id = $1 AND o.topic = $2 AND o.partition = u.partition \
         WHERE a.group_id = $1 AND a.topic = $2 AND a.partition = u.partition \
           AND a.resolved_at IS NULL \
         RETURNING a.partition, a.id",
    )
    .bind(group_id)
    .bind(topic)
    .bind(&partitions)
    .bind(&resume)
    .bind(&starts)
    .bind(&ends)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().collect())
}
