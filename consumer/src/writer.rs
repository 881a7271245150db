//! The batch writer: one PostgreSQL transaction per batch holding its rows, its dead letters and
//! the fenced advance of the partition's offset (DESIGN.md §5.2, §5.4, §5.8, §6).
//!
//! Guarantees:
//! - a batch's effect and its offset commit together or not at all; the offset moves only from
//!   exactly the (next_offset, owner_epoch, rewind_seq) the worker holds, else the transaction is
//!   rolled back explicitly and the stored row is re-read to tell a fence from a rewind;
//! - no future is dropped inside a transaction: every statement is bounded by `SET LOCAL
//!   statement_timeout`, every failure path sends ROLLBACK (or closes the connection when
//!   ROLLBACK cannot be sent), so no pooled connection is ever left in an open transaction;
//! - a COMMIT whose reply is lost is resolved with `pg_xact_status` of the transaction id noted
//!   before COMMIT, on another connection — never guessed;
//! - a deterministic error splits the batch in halves, each its own transaction, down to the
//!   single record, which is retried without its `jsonb` payload and then dead-lettered with the
//!   SQLSTATE; a transient error is returned to the caller unchanged for retry.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use processor::Normalized;
use sqlx::pool::PoolConnection;
use sqlx::{AssertSqlSafe, Executor, PgConnection, PgPool, Postgres};

use crate::classify::{ErrorClass, classify, is_connection_loss, sqlstate};
use crate::failpoints;
use crate::offsets::{self, Ownership, StoredOffset};
use crate::projection::ProjectionSchema;
use crate::record::ConsumedRecord;
use crate::stats::ConsumerStats;

/// A record made ready for writing: its rows, or the reason it becomes a dead letter.
#[derive(Debug, Clone)]
pub struct PreparedRecord {
    pub record: ConsumedRecord,
    pub content: Content,
}

/// What a record contributes to the database.
#[derive(Debug, Clone)]
pub enum Content {
    /// A normalised update.
    Update(Box<Normalized>),
    /// A record that cannot become rows: the producer's error envelope, a record without a bot
    /// id, or a processor rejection.
    Rejected { class: String, text: String },
}

impl PreparedRecord {
    /// Normalises a record (pure; no I/O).
    pub fn prepare(record: ConsumedRecord) -> Self {
        let content = if let Some(reason) = record.producer_error() {
            Content::Rejected {
                class: "producer_envelope".to_owned(),
                text: reason,
            }
        } else if let Some(bot_id) = record.bot_id() {
            match processor::normalize(bot_id, record.payload_bytes()) {
                Ok(normalized) => Content::Update(Box::new(normalized)),
                Err(rejection) => Content::Rejected {
                    class: rejection.class().to_owned(),
                    text: rejection.to_string(),
                },
            }
        } else {
            Content::Rejected {
                class: "no_bot_id".to_owned(),
                text: "record has neither a tg-bot-id header nor a {bot_id}:… key".to_owned(),
            }
        };
        Self { record, content }
    }

    /// `src_date` for rows of an update that carries no date: the producer's receive time.
    fn fallback_src_date(&self) -> i64 {
        self.record.received_at_ms().unwrap_or(0).div_euclid(1000)
    }
}

/// Why a write did not commit.
#[derive(Debug)]
pub enum WriteError {
    /// Another owner took the partition (its epoch is in the stored row): stop working it.
    Fenced { stored: Option<StoredOffset> },
    /// Same owner, but the stored position moved (a replay bumped `rewind_seq`, or an earlier
    /// commit of unknown outcome landed): continue from the stored row.
    Moved { stored: StoredOffset },
    /// Retry the same work later.
    Transient(sqlx::Error),
    /// The same work fails the same way.
    Deterministic(sqlx::Error),
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::Fenced { stored } => write!(f, "fenced by a newer owner ({stored:?})"),
            WriteError::Moved { stored } => write!(f, "stored offset moved ({stored:?})"),
            WriteError::Transient(e) => write!(f, "transient database error: {e}"),
            WriteError::Deterministic(e) => write!(f, "deterministic database error: {e}"),
        }
    }
}

impl std::error::Error for WriteError {}

impl WriteError {
    fn from_sqlx(error: sqlx::Error) -> Self {
        match classify(&error) {
            ErrorClass::Transient => WriteError::Transient(error),
            ErrorClass::Deterministic => WriteError::Deterministic(error),
        }
    }
}

/// What one committed write (possibly several split transactions) did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WriteSummary {
    pub records: usize,
    pub dead_letters: usize,
    pub transactions: usize,
}

/// How a transaction treats its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan<'a> {
    /// Rows for updates, dead letters for rejected records.
    Normal,
    /// As `Normal`, but raw payloads are stored as bytes only (no `jsonb`).
    WithoutJsonb,
    /// Every record becomes a dead letter with this class and text.
    DeadLetter { class: &'a str, text: &'a str },
}

/// Writes batches of one topic for one consumer group.
#[derive(Debug, Clone)]
pub struct BatchWriter {
    pool: PgPool,
    group_id: Arc<str>,
    topic: Arc<str>,
    statement_timeout: Duration,
    processor_version: i32,
    schema: Arc<ProjectionSchema>,
    stats: Arc<ConsumerStats>,
}

/// How long the unknown-COMMIT resolution keeps asking before handing the question to the CAS.
const RESOLVE_DEADLINE: Duration = Duration::from_secs(60);

impl BatchWriter {
    pub fn new(
        pool: PgPool,
        group_id: &str,
        topic: &str,
        statement_timeout: Duration,
        processor_version: i32,
        schema: Arc<ProjectionSchema>,
        stats: Arc<ConsumerStats>,
    ) -> Self {
        Self {
            pool,
            group_id: group_id.into(),
            topic: topic.into(),
            statement_timeout,
            processor_version,
            schema,
            stats,
        }
    }

    /// Writes `records` (contiguous, the first at `owner.next_offset`) and advances the offset
    /// past them, splitting on deterministic errors. On success and on error, `owner.next_offset`
    /// is where the stored offset now is: records below it are done.
    pub async fn write(
        &self,
        owner: &mut Ownership,
        records: &[PreparedRecord],
    ) -> Result<WriteSummary, WriteError> {
        let mut summary = WriteSummary::default();
        // Ranges still to write, the earliest last (so `pop` keeps offset order).
        let mut pending: Vec<std::ops::Range<usize>> = Vec::with_capacity(8);
        pending.push(0..records.len());
        while let Some(range) = pending.pop() {
            let part = &records[range.clone()];
            if part.is_empty() {
                continue;
            }
            match self.transact(owner, part, Plan::Normal).await {
                Ok(()) => {
                    summary.records += part.len();
                    summary.dead_letters += part
                        .iter()
                        .filter(|r| matches!(r.content, Content::Rejected { .. }))
                        .count();
                    summary.transactions += 1;
                }
                Err(WriteError::Deterministic(error)) if part.len() > 1 => {
                    tracing::warn!(
                        partition = owner.partition,
                        first_offset = part[0].record.offset,
                        records = part.len(),
                        error = %error,
                        "deterministic error: splitting the batch"
                    );
                    let mid = range.start + part.len() / 2;
                    pending.push(mid..range.end);
                    pending.push(range.start..mid);
                }
                Err(WriteError::Deterministic(error)) => {
                    let dead = self.isolate(owner, &part[0], error).await?;
                    summary.records += 1;
                    summary.dead_letters += usize::from(dead);
                    summary.transactions += 1;
                }
                Err(other) => return Err(other),
            }
        }
        Ok(summary)
    }

    /// The last steps for one record that fails deterministically: without `jsonb`, then as a
    /// dead letter. Returns whether it became a dead letter.
    async fn isolate(
        &self,
        owner: &mut Ownership,
        record: &PreparedRecord,
        error: sqlx::Error,
    ) -> Result<bool, WriteError> {
        let single = std::slice::from_ref(record);
        let mut error = error;
        if matches!(record.content, Content::Update(_)) {
            match self.transact(owner, single, Plan::WithoutJsonb).await {
                Ok(()) => {
                    tracing::warn!(
                        partition = owner.partition,
                        offset = record.record.offset,
                        "record stored without its jsonb payload after a deterministic error: {error}"
                    );
                    return Ok(false);
                }
                Err(WriteError::Deterministic(e)) => error = e,
                Err(other) => return Err(other),
            }
        }
        let class = format!(
            "db_{}",
            sqlstate(&error).unwrap_or_else(|| "client".to_owned())
        );
        let text = error.to_string();
        tracing::error!(
            partition = owner.partition,
            offset = record.record.offset,
            class,
            "record dead-lettered after a deterministic database error: {text}"
        );
        match self
            .transact(
                owner,
                single,
                Plan::DeadLetter {
                    class: &class,
                    text: &text,
                },
            )
            .await
        {
            Ok(()) => Ok(true),
            // A dead letter that cannot be written must not be skipped: stall and shout.
            Err(WriteError::Deterministic(e)) => {
                tracing::error!(
                    partition = owner.partition,
                    offset = record.record.offset,
                    "cannot write the dead letter: {e}"
                );
                Err(WriteError::Transient(e))
            }
            Err(other) => Err(other),
        }
    }

    /// Records a persisting offset gap and moves the stored offset over it, in one fenced
    /// transaction.
    pub async fn record_gap(
        &self,
        owner: &mut Ownership,
        first_offset_seen: i64,
    ) -> Result<(), WriteError> {
        let mut conn = self.acquire().await?;
        let result: Result<(), WriteError> = async {
            self.begin(&mut conn).await.map_err(WriteError::from_sqlx)?;
            sqlx::query(
                "INSERT INTO offset_gaps \
                     (group_id, topic, partition, expected_offset, first_offset_seen, detected_at) \
                 VALUES ($1, $2, $3, $4, $5, now())",
            )
            .bind(&*self.group_id)
            .bind(&*self.topic)
            .bind(owner.partition)
            .bind(owner.next_offset)
            .bind(first_offset_seen)
            .execute(&mut *conn)
            .await
            .map_err(WriteError::from_sqlx)?;
            self.advance_or_explain(&mut conn, owner, first_offset_seen)
                .await?;
            conn.execute("COMMIT")
                .await
                .map_err(WriteError::from_sqlx)?;
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                owner.next_offset = first_offset_seen;
                self.stats.offset_gap();
                Ok(())
            }
            Err(e) => {
                // A COMMIT error here leaves the outcome unknown; the next CAS resolves it (a
                // landed gap record moves the stored offset, which the worker then follows).
                release_after_error(conn, &e).await;
                Err(e)
            }
        }
    }

    async fn acquire(&self) -> Result<PoolConnection<Postgres>, WriteError> {
        self.pool.acquire().await.map_err(WriteError::Transient)
    }

    /// One transaction over `records`. On success `owner.next_offset` is the end of the records.
    async fn transact(
        &self,
        owner: &mut Ownership,
        records: &[PreparedRecord],
        plan: Plan<'_>,
    ) -> Result<(), WriteError> {
        let started = Instant::now();
        let end = records
            .last()
            .map_or(owner.next_offset, |r| r.record.offset + 1);
        let mut conn = self.acquire().await?;
        let (xid, pid) = match self.begin(&mut conn).await {
            Ok(ids) => ids,
            Err(e) => {
                let e = WriteError::from_sqlx(e);
                release_after_error(conn, &e).await;
                return Err(e);
            }
        };
        let body = async {
            let written = self
                .body(&mut conn, owner.partition, records, plan)
                .await
                .map_err(WriteError::from_sqlx)?;
            failpoints::delay("consumer::before_offset_update").await;
            self.advance_or_explain(&mut conn, owner, end).await?;
            failpoints::delay("consumer::before_commit").await;
            Ok::<_, WriteError>(written)
        }
        .await;
        let written = match body {
            Ok(written) => written,
            Err(e) => {
                if let WriteError::Fenced { .. } = e {
                    self.stats.fenced();
                }
                release_after_error(conn, &e).await;
                return Err(e);
            }
        };
        self.commit(conn, &xid, pid).await?;
        owner.next_offset = end;
        for (table, rows) in written {
            self.stats.rows_written(table, rows);
        }
        for record in records {
            let class = match (&plan, &record.content) {
                (Plan::DeadLetter { class, .. }, _) => Some(*class),
                (_, Content::Rejected { class, .. }) => Some(class.as_str()),
                _ => None,
            };
            if let Some(class) = class {
                self.stats.dead_letter(class);
            }
        }
        self.stats.batch_committed(records.len(), started.elapsed());
        Ok(())
    }

    /// BEGIN, the statement timeout, and the ids needed to resolve an unknown COMMIT.
    async fn begin(&self, conn: &mut PgConnection) -> Result<(String, i32), sqlx::Error> {
        let timeout_ms = self.statement_timeout.as_millis().max(1);
        // The idle timeout ends the transaction of a writer frozen mid-batch (SIGSTOP, a VM
        // pause): otherwise its lock on the offsets row would block the next owner's ownership
        // statement for as long as the freeze lasts.
        let idle_ms = timeout_ms.saturating_mul(2);
        conn.execute(AssertSqlSafe(format!(
            "BEGIN; SET LOCAL statement_timeout = {timeout_ms}; \
             SET LOCAL idle_in_transaction_session_timeout = {idle_ms}"
        )))
        .await?;
        sqlx::query_as("SELECT pg_current_xact_id()::text, pg_backend_pid()")
            .fetch_one(conn)
            .await
    }

    /// The fenced offset update; on zero rows, re-reads the row (inside the still-open
    /// transaction, which sees the latest committed row) to say why.
    async fn advance_or_explain(
        &self,
        conn: &mut PgConnection,
        owner: &Ownership,
        end: i64,
    ) -> Result<(), WriteError> {
        if offsets::advance(conn, &self.group_id, &self.topic, owner, end)
            .await
            .map_err(WriteError::from_sqlx)?
        {
            return Ok(());
        }
        let stored = offsets::read(&mut *conn, &self.group_id, &self.topic, owner.partition)
            .await
            .map_err(WriteError::from_sqlx)?;
        match stored {
            Some(stored) if stored.owner_epoch == owner.owner_epoch => {
                Err(WriteError::Moved { stored })
            }
            stored => Err(WriteError::Fenced { stored }),
        }
    }

    /// Sends COMMIT; a lost reply is resolved with `pg_xact_status`.
    async fn commit(
        &self,
        mut conn: PoolConnection<Postgres>,
        xid: &str,
        pid: i32,
    ) -> Result<(), WriteError> {
        let result = match failpoints::hit("consumer::commit_connection_lost").await {
            Some(way) if way.trim() == "after" => {
                let committed = conn.execute("COMMIT").await;
                if committed.is_ok() {
                    self.terminate_backend(pid).await;
                    Err(sqlx::Error::Io(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "failpoint: COMMIT reply lost",
                    )))
                } else {
                    committed.map(|_| ())
                }
            }
            Some(_) => {
                self.terminate_backend(pid).await;
                conn.execute("COMMIT").await.map(|_| ())
            }
            None => conn.execute("COMMIT").await.map(|_| ()),
        };
        let error = match result {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        if !is_connection_loss(&error) {
            // The server answered COMMIT with an error: the transaction rolled back.
            let e = WriteError::from_sqlx(error);
            release_after_error(conn, &e).await;
            return Err(e);
        }
        conn.close_on_drop();
        drop(conn);
        tracing::warn!(
            xid,
            "connection lost during COMMIT: resolving with pg_xact_status ({error})"
        );
        match self.resolve(xid).await {
            Some(true) => {
                self.stats.commit_unknown(true);
                tracing::info!(xid, "the COMMIT of unknown outcome had landed");
                Ok(())
            }
            Some(false) => {
                self.stats.commit_unknown(false);
                tracing::info!(
                    xid,
                    "the COMMIT of unknown outcome had not landed: redoing the batch"
                );
                Err(WriteError::Transient(error))
            }
            // Still unknown: retrying is safe, the fenced offset update refuses a second apply
            // and the worker then follows the stored row.
            None => Err(WriteError::Transient(error)),
        }
    }

    /// `Some(true)` committed, `Some(false)` aborted, `None` still unknown at the deadline.
    async fn resolve(&self, xid: &str) -> Option<bool> {
        let deadline = Instant::now() + RESOLVE_DEADLINE;
        let mut attempt = 0u32;
        loop {
            let status: Result<Option<String>, sqlx::Error> =
                sqlx::query_scalar("SELECT pg_xact_status($1::xid8)")
                    .bind(xid)
                    .fetch_one(&self.pool)
                    .await;
            match status.as_ref().map(Option::as_deref) {
                Ok(Some("committed")) => return Some(true),
                Ok(Some("aborted")) => return Some(false),
                // "in progress": the old backend has not finished yet.
                Ok(other) => tracing::debug!(xid, ?other, "commit outcome not known yet"),
                Err(e) => tracing::warn!(xid, "cannot ask for the commit outcome yet: {e}"),
            }
            if Instant::now() >= deadline {
                tracing::error!(
                    xid,
                    "commit outcome still unknown after {RESOLVE_DEADLINE:?}"
                );
                return None;
            }
            attempt += 1;
            tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt.min(20)))).await;
        }
    }

    async fn terminate_backend(&self, pid: i32) {
        // The timeout argument (PostgreSQL 14+) waits until the backend is gone, so the COMMIT
        // sent next cannot overtake the signal.
        let result = sqlx::query("SELECT pg_terminate_backend($1, 10000)")
            .bind(pid)
            .execute(&self.pool)
            .await;
        if let Err(e) = result {
            tracing::warn!(pid, "failpoint: could not terminate the backend: {e}");
        }
    }

    /// The rows and dead letters of `records`, in the fixed table order: raw_updates, the
    /// projections, dead_letters (consumer_offsets comes last, in `transact`).
    async fn body(
        &self,
        conn: &mut PgConnection,
        partition: i32,
        records: &[PreparedRecord],
        plan: Plan<'_>,
    ) -> Result<Vec<(&'static str, u64)>, sqlx::Error> {
        let mut written = Vec::new();
        let (updates, rejected): (Vec<&PreparedRecord>, Vec<(&PreparedRecord, &str, &str)>) =
            match plan {
                Plan::DeadLetter { class, text } => (
                    Vec::new(),
                    records.iter().map(|r| (r, class, text)).collect(),
                ),
                Plan::Normal | Plan::WithoutJsonb => {
                    let mut updates = Vec::new();
                    let mut rejected = Vec::new();
                    for record in records {
                        match &record.content {
                            Content::Update(_) => updates.push(record),
                            Content::Rejected { class, text } => {
                                rejected.push((record, class.as_str(), text.as_str()))
                            }
                        }
                    }
                    (updates, rejected)
                }
            };
        if !updates.is_empty() {
            let rows = self
                .insert_raw(conn, partition, &updates, plan == Plan::WithoutJsonb)
                .await?;
            written.push(("raw_updates", rows));
            let normalized: Vec<(&Normalized, i64)> = updates
                .iter()
                .filter_map(|r| match &r.content {
                    Content::Update(n) => Some((n.as_ref(), r.fallback_src_date())),
                    Content::Rejected { .. } => None,
                })
                .collect();
            written.extend(
                self.schema
                    .upsert(conn, &normalized, self.processor_version)
                    .await?,
            );
            self.resolve_dead_letters(conn, partition, &updates).await?;
        }
        if !rejected.is_empty() {
            let rows = self.insert_dead_letters(conn, partition, &rejected).await?;
            written.push(("dead_letters", rows));
        }
        Ok(written)
    }

    async fn insert_raw(
        &self,
        conn: &mut PgConnection,
        partition: i32,
        updates: &[&PreparedRecord],
        without_jsonb: bool,
    ) -> Result<u64, sqlx::Error> {
        // One row per key (the same bytes delivered twice in a batch), the earliest kept, sorted.
        let mut by_key: HashMap<(i64, i64, [u8; 32]), &PreparedRecord> = HashMap::new();
        for record in updates {
            if let Content::Update(n) = &record.content {
                by_key
                    .entry((n.raw.bot_id, n.raw.update_id, n.raw.payload_sha256))
                    .or_insert(record);
            }
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
        for ((bot_id, update_id, hash), record) in &rows {
            let Content::Update(n) = &record.content else {
                continue;
            };
            bot_ids.push(*bot_id);
            update_ids.push(*update_id);
            hashes.push(hash.to_vec());
            types.push(n.raw.update_type.clone());
            payloads.push(n.raw.payload_bytes.clone());
            jsonb_ok.push(n.raw.jsonb_ok && !without_jsonb);
            received.push(record.record.received_at_ms());
            kafka_offsets.push(record.record.offset);
            kafka_timestamps.push(record.record.timestamp_ms);
        }
        let result = sqlx::query(
            "INSERT INTO raw_updates AS r \
                 (bot_id, update_id, payload_sha256, update_type, payload_bytes, payload, \
                  received_at, kafka_topic, kafka_partition, kafka_offset, kafka_timestamp, \
                  processor_version) \
             SELECT u.bot_id, u.update_id, u.sha, u.update_type, u.bytes, \
                    CASE WHEN u.jsonb_ok THEN convert_from(u.bytes, 'UTF8')::jsonb END, \
                    to_timestamp(u.received_ms / 1000.0), $10, $11, u.kafka_offset, \
                    to_timestamp(u.ts_ms / 1000.0), $12 \
             FROM UNNEST($1::bigint[], $2::bigint[], $3::bytea[], $4::text[], $5::bytea[], \
                         $6::boolean[], $7::bigint[], $8::bigint[], $9::bigint[]) \
                  AS u(bot_id, update_id, sha, update_type, bytes, jsonb_ok, received_ms, \
                       kafka_offset, ts_ms) \
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
        .bind(&*self.topic)
        .bind(partition)
        .bind(self.processor_version)
        .execute(conn)
        .await?;
        Ok(result.rows_affected())
    }

    /// A record that now has rows closes its open dead letter (a replay after a fix).
    async fn resolve_dead_letters(
        &self,
        conn: &mut PgConnection,
        partition: i32,
        updates: &[&PreparedRecord],
    ) -> Result<(), sqlx::Error> {
        let offsets: Vec<i64> = updates.iter().map(|r| r.record.offset).collect();
        sqlx::query(
            "UPDATE dead_letters SET resolved_at = now() \
             WHERE topic = $1 AND partition = $2 AND kafka_offset = ANY($3) \
               AND resolved_at IS NULL",
        )
        .bind(&*self.topic)
        .bind(partition)
        .bind(offsets)
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn insert_dead_letters(
        &self,
        conn: &mut PgConnection,
        partition: i32,
        rejected: &[(&PreparedRecord, &str, &str)],
    ) -> Result<u64, sqlx::Error> {
        let mut offsets = Vec::with_capacity(rejected.len());
        let mut bot_ids = Vec::with_capacity(rejected.len());
        let mut keys = Vec::with_capacity(rejected.len());
        let mut payloads = Vec::with_capacity(rejected.len());
        let mut headers = Vec::with_capacity(rejected.len());
        let mut classes = Vec::with_capacity(rejected.len());
        let mut texts = Vec::with_capacity(rejected.len());
        for (record, class, text) in rejected {
            let r = &record.record;
            offsets.push(r.offset);
            bot_ids.push(r.bot_id());
            keys.push(r.key.clone());
            payloads.push(r.payload.clone());
            headers.push(r.headers_json().to_string());
            classes.push((*class).to_owned());
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
                     error_class = EXCLUDED.error_class, error_text = EXCLUDED.error_text, \
                     resolved_at = NULL",
        )
        .bind(&*self.topic)
        .bind(partition)
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

/// Ends a failed transaction explicitly: ROLLBACK on a healthy connection, or closing the
/// connection when it is gone or ROLLBACK fails, so the pool never gets it back mid-transaction.
async fn release_after_error(mut conn: PoolConnection<Postgres>, error: &WriteError) {
    let lost = match error {
        WriteError::Transient(e) | WriteError::Deterministic(e) => is_connection_loss(e),
        WriteError::Fenced { .. } | WriteError::Moved { .. } => false,
    };
    if lost {
        conn.close_on_drop();
        return;
    }
    match tokio::time::timeout(Duration::from_secs(10), conn.execute("ROLLBACK")).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::warn!("ROLLBACK failed, closing the connection: {e}");
            conn.close_on_drop();
        }
        Err(_) => {
            tracing::warn!("ROLLBACK timed out, closing the connection");
            conn.close_on_drop();
        }
    }
}
