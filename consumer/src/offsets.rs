//! The offset store of record: one `consumer_offsets` row per (group, topic, partition) holding
//! `next_offset`, `owner_epoch` and `rewind_seq` (DESIGN.md §5).
//!
//! Guarantees: [`OffsetStore::take_ownership`] is one atomic statement that bumps the epoch, so
//! after it returns every earlier owner's fenced update ([`advance`]) matches zero rows;
//! [`OffsetStore::rewind`] moves `next_offset` and bumps `rewind_seq` without touching the epoch,
//! so the current owner re-seeks instead of being fenced; [`advance`] only moves the offset of
//! the exact (offset, epoch, rewind_seq) the caller observed; [`OffsetStore::reown`] takes a
//! partition back (DESIGN.md §5.9) to one past the greater of the stored and the caller's epoch,
//! and only from the exact row the caller observed, so two members never leapfrog each other;
//! [`advance`] also records the digest of the record it moved past, which takeover compares with
//! the log (DESIGN.md §5.10); a rewind of a partition with an open log anomaly resolves it and
//! moves the partition to the next topic incarnation, in the same transaction;
//! [`OffsetStore::start_partitions`] records, once per group and topic, the partitions the group
//! started with (`consumer_group_starts`), and every caller reads back the same count.
//! Every statement of the worker's path runs within the client-side deadline
//! ([`transaction::deadline`]); past it the connection is abandoned, never awaited. Every
//! statement on `consumer_offsets` lives in this module: the worker's, the operator commands'
//! (`replay`, `status`) and the demo's.

use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::{Executor, PgConnection, PgPool, Postgres};
use tokio::time::{Instant, error::Elapsed, timeout_at};

use crate::classify::must_close_connection;
use crate::log_anomalies::{self, Decision, Detected, LogAnomaly, Position};
use crate::transaction;

/// What a worker knows about its partition's row: its fencing token and where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ownership {
    pub partition: i32,
    pub next_offset: i64,
    pub owner_epoch: i64,
    pub rewind_seq: i64,
    /// The incarnation of the topic the partition's offsets belong to (DESIGN.md §5.10).
    pub topic_incarnation: i64,
    /// SHA-256 of the value of the record at `next_offset - 1` (`None`: unknown), as stored
    /// with the offset; the batch writer keeps it current. Checked against the log on takeover
    /// and when a fetch finds the position out of range (DESIGN.md §5.10).
    pub last_record_sha256: Option<[u8; 32]>,
}

/// The partition's row as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredOffset {
    pub next_offset: i64,
    pub owner_epoch: i64,
    pub rewind_seq: i64,
    pub topic_incarnation: i64,
}

/// Where an owner stands against its partition's stored row (DESIGN.md §5.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// The row is as the owner holds it.
    Current,
    /// Same epoch, another position (a replay, or a commit of unknown outcome that landed).
    Moved(StoredOffset),
    /// The database went back in time: an older epoch (a restored backup) or no row (deleted).
    /// Kafka assigns us the partition, so we take it back at once.
    Behind(Option<StoredOffset>),
    /// A newer epoch: another member took the partition, or an ownership statement landed late.
    Superseded(StoredOffset),
}

/// The columns an ownership statement returns, in `ownership_columns!()` order.
type OwnershipRow = (i64, i64, i64, i64, Option<Vec<u8>>);

/// What every ownership statement returns (a macro, so statements stay `&'static str`).
macro_rules! ownership_columns {
    () => {
        "next_offset, owner_epoch, rewind_seq, topic_incarnation, last_record_sha256"
    };
}

impl Ownership {
    /// The ownership a statement returned as [`OwnershipRow`].
    fn from_row(
        partition: i32,
        (next_offset, owner_epoch, rewind_seq, topic_incarnation, sha): OwnershipRow,
    ) -> Self {
        Self {
            partition,
            next_offset,
            owner_epoch,
            rewind_seq,
            topic_incarnation,
            last_record_sha256: sha.and_then(|s| <[u8; 32]>::try_from(s.as_slice()).ok()),
        }
    }

    /// The row as this owner holds it.
    pub fn stored(&self) -> StoredOffset {
        StoredOffset {
            next_offset: self.next_offset,
            owner_epoch: self.owner_epoch,
            rewind_seq: self.rewind_seq,
            topic_incarnation: self.topic_incarnation,
        }
    }

    /// How this owner stands against `stored`, the partition's row as read.
    pub fn standing(&self, stored: Option<StoredOffset>) -> Standing {
        match stored {
            None => Standing::Behind(None),
            Some(s) if s.owner_epoch < self.owner_epoch => Standing::Behind(stored),
            Some(s) if s.owner_epoch > self.owner_epoch => Standing::Superseded(s),
            Some(s)
                if s.next_offset != self.next_offset
                    || s.rewind_seq != self.rewind_seq
                    || s.topic_incarnation != self.topic_incarnation =>
            {
                Standing::Moved(s)
            }
            Some(_) => Standing::Current,
        }
    }
}

/// One stored row as operators see it: its partition and when it last changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionOffset {
    pub partition: i32,
    pub stored: StoredOffset,
    /// `updated_at`, unix milliseconds.
    pub updated_at_ms: i64,
}

/// `consumer_offsets` for one group and topic.
#[derive(Debug, Clone)]
pub struct OffsetStore {
    pool: PgPool,
    group_id: String,
    topic: String,
    statement_timeout: Duration,
}

impl OffsetStore {
    pub fn new(pool: PgPool, group_id: impl Into<String>, topic: impl Into<String>) -> Self {
        Self {
            pool,
            group_id: group_id.into(),
            topic: topic.into(),
            statement_timeout: Duration::from_secs(30),
        }
    }

    /// Bounds every statement (the ownership statement waits for a row lock held by a writer
    /// that may be frozen; the rebalance callback must get its answer, even a failure).
    pub fn with_statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = timeout;
        self
    }

    /// The client-side deadline of one transaction of this store, from now.
    fn deadline(&self) -> Instant {
        Instant::now() + transaction::deadline(self.statement_timeout)
    }

    /// Opens a transaction bounded by the statement timeout, within `deadline`; the server ends
    /// it when its client goes silent inside it (see [`transaction::begin`]), so an ownership
    /// statement frozen before its COMMIT does not keep the partition's row locked.
    async fn begin_bounded(
        &self,
        deadline: Instant,
    ) -> Result<PoolConnection<Postgres>, sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        let begun = timeout_at(
            deadline,
            transaction::begin(&mut conn, self.statement_timeout),
        )
        .await;
        match begun {
            Ok(Ok(())) => Ok(conn),
            Ok(Err(e)) => {
                transaction::roll_back(conn, must_close_connection(&e)).await;
                Err(e)
            }
            Err(_) => {
                transaction::abandon(conn);
                Err(transaction::deadline_expired(transaction::deadline(
                    self.statement_timeout,
                )))
            }
        }
    }

    /// Ends a transaction begun by [`OffsetStore::begin_bounded`] after its statement, within
    /// `deadline`: COMMIT after success, [`transaction::roll_back`] after an error, and the
    /// connection abandoned when the deadline passed.
    async fn finish<T>(
        &self,
        mut conn: PoolConnection<Postgres>,
        deadline: Instant,
        result: Result<Result<T, sqlx::Error>, Elapsed>,
    ) -> Result<T, sqlx::Error> {
        let expired =
            || transaction::deadline_expired(transaction::deadline(self.statement_timeout));
        match result {
            Ok(Ok(value)) => match timeout_at(deadline, conn.execute("COMMIT")).await {
                Ok(Ok(_)) => Ok(value),
                Ok(Err(e)) => {
                    conn.close_on_drop();
                    Err(e)
                }
                Err(_) => {
                    transaction::abandon(conn);
                    Err(expired())
                }
            },
            Ok(Err(e)) => {
                transaction::roll_back(conn, must_close_connection(&e)).await;
                Err(e)
            }
            Err(_) => {
                transaction::abandon(conn);
                Err(expired())
            }
        }
    }

    pub fn group_id(&self) -> &str {
        &self.group_id
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Takes the partition over: bumps `owner_epoch` of an existing row and returns it. `None`
    /// when there is no row yet; then call [`OffsetStore::take_ownership_from`].
    pub async fn take_ownership(&self, partition: i32) -> Result<Option<Ownership>, sqlx::Error> {
        let deadline = self.deadline();
        let mut conn = self.begin_bounded(deadline).await?;
        let statement = sqlx::query_as(concat!(
            "UPDATE consumer_offsets SET owner_epoch = owner_epoch + 1, updated_at = now() \
             WHERE group_id = $1 AND topic = $2 AND partition = $3 \
             RETURNING ",
            ownership_columns!()
        ))
        .bind(&self.group_id)
        .bind(&self.topic)
        .bind(partition)
        .fetch_optional(&mut *conn);
        let result = timeout_at(deadline, statement).await;
        let row: Option<OwnershipRow> = self.finish(conn, deadline, result).await?;
        Ok(row.map(|row| Ownership::from_row(partition, row)))
    }

    /// Takes the partition over, creating its row at `initial_offset` when there is none. One
    /// statement: a concurrent creator makes this an epoch bump of its row.
    pub async fn take_ownership_from(
        &self,
        partition: i32,
        initial_offset: i64,
    ) -> Result<Ownership, sqlx::Error> {
        let deadline = self.deadline();
        let mut conn = self.begin_bounded(deadline).await?;
        let statement = sqlx::query_as(concat!(
            "INSERT INTO consumer_offsets \
                 (group_id, topic, partition, next_offset, owner_epoch, rewind_seq, updated_at) \
             VALUES ($1, $2, $3, $4, 1, 0, now()) \
             ON CONFLICT (group_id, topic, partition) DO UPDATE \
                 SET owner_epoch = consumer_offsets.owner_epoch + 1, updated_at = now() \
             RETURNING ",
            ownership_columns!()
        ))
        .bind(&self.group_id)
        .bind(&self.topic)
        .bind(partition)
        .bind(initial_offset)
        .fetch_one(&mut *conn);
        let result = timeout_at(deadline, statement).await;
        let row: OwnershipRow = self.finish(conn, deadline, result).await?;
        Ok(Ownership::from_row(partition, row))
    }

    /// Takes the partition back for an owner at `own_epoch` that Kafka still assigns it to
    /// (DESIGN.md §5.9), from exactly the row it `observed`: an existing row gets
    /// `owner_epoch = GREATEST(stored, own) + 1` and keeps its offset; a missing row is created at
    /// `log_start` (never at the start policy: the records before it were never written).
    /// `None` when the row is no longer as observed: look again.
    pub async fn reown(
        &self,
        partition: i32,
        own_epoch: i64,
        observed: Option<StoredOffset>,
        log_start: i64,
    ) -> Result<Option<Ownership>, sqlx::Error> {
        let deadline = self.deadline();
        let mut conn = self.begin_bounded(deadline).await?;
        let statement = match observed {
            Some(row) => sqlx::query_as(concat!(
                "UPDATE consumer_offsets \
                 SET owner_epoch = GREATEST(owner_epoch, $4) + 1, updated_at = now() \
                 WHERE group_id = $1 AND topic = $2 AND partition = $3 \
                   AND owner_epoch = $5 AND next_offset = $6 AND rewind_seq = $7 \
                 RETURNING ",
                ownership_columns!()
            ))
            .bind(&self.group_id)
            .bind(&self.topic)
            .bind(partition)
            .bind(own_epoch)
            .bind(row.owner_epoch)
            .bind(row.next_offset)
            .bind(row.rewind_seq),
            None => sqlx::query_as(concat!(
                "INSERT INTO consumer_offsets \
                     (group_id, topic, partition, next_offset, owner_epoch, rewind_seq, updated_at) \
                 VALUES ($1, $2, $3, $5, $4 + 1, 0, now()) \
                 ON CONFLICT (group_id, topic, partition) DO NOTHING \
                 RETURNING ",
                ownership_columns!()
            ))
            .bind(&self.group_id)
            .bind(&self.topic)
            .bind(partition)
            .bind(own_epoch)
            .bind(log_start),
        };
        let result = timeout_at(deadline, statement.fetch_optional(&mut *conn)).await;
        let row: Option<OwnershipRow> = self.finish(conn, deadline, result).await?;
        Ok(row.map(|row| Ownership::from_row(partition, row)))
    }

    /// The number of partitions the group started with (`consumer_group_starts`): the policy of
    /// `CONSUMER_START` applies to partitions below it only (DESIGN.md §5.10). At the group's
    /// first ownership (no offsets row of this group and topic at all) `topic_partitions`, the
    /// topic's count now, is recorded; a concurrent first start records one count and both read
    /// it back. `None` for a group that has offsets rows but no recorded set (it started before
    /// the set was kept, or a replay made its rows): then no partition is known to predate it.
    pub async fn start_partitions(
        &self,
        topic_partitions: i32,
    ) -> Result<Option<i32>, sqlx::Error> {
        let deadline = self.deadline();
        let mut conn = self.begin_bounded(deadline).await?;
        let statements = async {
            sqlx::query(
                "INSERT INTO consumer_group_starts (group_id, topic, partition_count) \
                 SELECT $1, $2, $3 WHERE NOT EXISTS \
                     (SELECT 1 FROM consumer_offsets WHERE group_id = $1 AND topic = $2) \
                 ON CONFLICT (group_id, topic) DO NOTHING",
            )
            .bind(&self.group_id)
            .bind(&self.topic)
            .bind(topic_partitions)
            .execute(&mut *conn)
            .await?;
            // A new statement, so a new snapshot (READ COMMITTED): it sees the row a concurrent
            // first start committed while the insert above waited on it.
            sqlx::query_scalar(
                "SELECT partition_count FROM consumer_group_starts \
                 WHERE group_id = $1 AND topic = $2",
            )
            .bind(&self.group_id)
            .bind(&self.topic)
            .fetch_optional(&mut *conn)
            .await
        };
        let result = timeout_at(deadline, statements).await;
        self.finish(conn, deadline, result).await
    }

    /// Reads the partition's row, within the client-side deadline.
    pub async fn read(&self, partition: i32) -> Result<Option<StoredOffset>, sqlx::Error> {
        let deadline = self.deadline();
        let mut conn = self.pool.acquire().await?;
        let result = timeout_at(
            deadline,
            read(&mut *conn, &self.group_id, &self.topic, partition),
        )
        .await;
        match result {
            Ok(row) => {
                if let Err(e) = &row
                    && must_close_connection(e)
                {
                    conn.close_on_drop();
                }
                row
            }
            Err(_) => {
                transaction::abandon(conn);
                Err(transaction::deadline_expired(transaction::deadline(
                    self.statement_timeout,
                )))
            }
        }
    }

    /// Every stored row of the group and topic, by partition: what `replay`, `status` and the
    /// demo's drain read.
    pub async fn list(&self) -> Result<Vec<PartitionOffset>, sqlx::Error> {
        let rows: Vec<(i32, i64, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT partition, next_offset, owner_epoch, rewind_seq, topic_incarnation, \
                    (extract(epoch FROM updated_at) * 1000)::bigint \
             FROM consumer_offsets WHERE group_id = $1 AND topic = $2 ORDER BY partition",
        )
        .bind(&self.group_id)
        .bind(&self.topic)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(
                    partition,
                    next_offset,
                    owner_epoch,
                    rewind_seq,
                    topic_incarnation,
                    updated_at_ms,
                )| {
                    PartitionOffset {
                        partition,
                        stored: StoredOffset {
                            next_offset,
                            owner_epoch,
                            rewind_seq,
                            topic_incarnation,
                        },
                        updated_at_ms,
                    }
                },
            )
            .collect())
    }

    /// Replays: moves `next_offset` to `offset` and bumps `rewind_seq` (creating the row if
    /// needed), leaving the owner in place. The owner notices within its idle re-read interval.
    pub async fn rewind(&self, partition: i32, offset: i64) -> Result<StoredOffset, sqlx::Error> {
        self.rewind_partitions(&[RewindTarget {
            partition,
            offset,
            log: None,
        }])
        .await?
        .pop()
        .map(|rewound| rewound.stored)
        .ok_or(sqlx::Error::RowNotFound)
    }

    /// [`OffsetStore::rewind`] of several partitions in one transaction (all or none), rows
    /// locked in partition order. A partition with an open log anomaly is the operator's decision
    /// on it (DESIGN.md §5.10): the anomaly is resolved with what the rewind skips of the new
    /// log, and the partition moves to the next topic incarnation. Every rewound row forgets its
    /// last record's digest (the record before the new position is not known). Returns the rows
    /// after the rewind, by partition.
    pub async fn rewind_partitions(
        &self,
        targets: &[RewindTarget],
    ) -> Result<Vec<Rewound>, sqlx::Error> {
        let mut sorted = targets.to_vec();
        sorted.sort_by_key(|t| t.partition);
        sorted.dedup_by_key(|t| t.partition);
        let partitions: Vec<i32> = sorted.iter().map(|t| t.partition).collect();
        let offsets: Vec<i64> = sorted.iter().map(|t| t.offset).collect();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "SELECT 1 FROM consumer_offsets \
             WHERE group_id = $1 AND topic = $2 AND partition = ANY($3) \
             ORDER BY partition FOR UPDATE",
        )
        .bind(&self.group_id)
        .bind(&self.topic)
        .bind(&partitions)
        .execute(&mut *tx)
        .await?;
        let decisions: Vec<Decision> = sorted
            .iter()
            .map(|t| Decision {
                partition: t.partition,
                resume_at: t.offset,
                log: t.log,
            })
            .collect();
        let resolved =
            log_anomalies::resolve(&mut tx, &self.group_id, &self.topic, &decisions).await?;
        let bumps: Vec<i64> = sorted
            .iter()
            .map(|t| i64::from(resolved.contains_key(&t.partition)))
            .collect();
        let rows: Vec<(i32, i64, i64, i64, i64)> = sqlx::query_as(
            "INSERT INTO consumer_offsets AS o \
                 (group_id, topic, partition, next_offset, owner_epoch, rewind_seq, \
                  topic_incarnation, updated_at) \
             SELECT $1, $2, u.partition, u.target, 0, 1, u.bump, now() \
             FROM UNNEST($3::integer[], $4::bigint[], $5::bigint[]) AS u(partition, target, bump) \
             ORDER BY u.partition \
             ON CONFLICT (group_id, topic, partition) DO UPDATE \
                 SET next_offset = EXCLUDED.next_offset, rewind_seq = o.rewind_seq + 1, \
                     topic_incarnation = o.topic_incarnation + EXCLUDED.topic_incarnation, \
                     last_record_sha256 = NULL, updated_at = now() \
             RETURNING partition, next_offset, owner_epoch, rewind_seq, topic_incarnation",
        )
        .bind(&self.group_id)
        .bind(&self.topic)
        .bind(&partitions)
        .bind(&offsets)
        .bind(&bumps)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut rewound: Vec<Rewound> = rows
            .into_iter()
            .map(
                |(partition, next_offset, owner_epoch, rewind_seq, topic_incarnation)| Rewound {
                    partition,
                    stored: StoredOffset {
                        next_offset,
                        owner_epoch,
                        rewind_seq,
                        topic_incarnation,
                    },
                    resolved_anomaly: resolved.get(&partition).copied(),
                },
            )
            .collect();
        rewound.sort_by_key(|r| r.partition);
        Ok(rewound)
    }

    /// Records what `owner`'s worker found (DESIGN.md §5.10), if the partition's row is still
    /// exactly as `owner` holds it (locked first, as a rewind locks it). Returns the open anomaly
    /// (this one, or one already open), or `None` when the row moved meanwhile (a replay, a new
    /// owner): look at the row again.
    pub async fn record_anomaly(
        &self,
        owner: &Ownership,
        detected: Detected,
    ) -> Result<Option<LogAnomaly>, sqlx::Error> {
        let deadline = self.deadline();
        let mut conn = self.begin_bounded(deadline).await?;
        let statements = async {
            if !lock_if_current(&mut conn, &self.group_id, &self.topic, owner).await? {
                return Ok(None);
            }
            let position = Position {
                partition: owner.partition,
                topic_incarnation: owner.topic_incarnation,
                next_offset: owner.next_offset,
                last_record_sha256: owner.last_record_sha256,
            };
            log_anomalies::insert(&mut conn, &self.group_id, &self.topic, &position, detected)
                .await?;
            log_anomalies::open_for(&mut conn, &self.group_id, &self.topic, owner.partition).await
        };
        let result = timeout_at(deadline, statements).await;
        self.finish(conn, deadline, result).await
    }

    /// The partition's open log anomaly, if any.
    pub async fn open_anomaly(&self, partition: i32) -> Result<Option<LogAnomaly>, sqlx::Error> {
        let deadline = self.deadline();
        let mut conn = self.begin_bounded(deadline).await?;
        let result = timeout_at(
            deadline,
            log_anomalies::open_for(&mut conn, &self.group_id, &self.topic, partition),
        )
        .await;
        self.finish(conn, deadline, result).await
    }

    /// Every open log anomaly of the group and topic, by partition (`status`, `replay`).
    pub async fn open_anomalies(&self) -> Result<Vec<LogAnomaly>, sqlx::Error> {
        log_anomalies::open_all(&self.pool, &self.group_id, &self.topic).await
    }
}

/// One partition of a rewind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RewindTarget {
    pub partition: i32,
    /// Where the partition resumes.
    pub offset: i64,
    /// The log's (start, end) as the operator saw it, recorded in a resolved anomaly's decision.
    pub log: Option<(i64, i64)>,
}

/// A partition's row after a rewind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewound {
    pub partition: i32,
    pub stored: StoredOffset,
    /// The log anomaly this rewind resolved (its id), if the partition was halted.
    pub resolved_anomaly: Option<i64>,
}

pub(crate) async fn read<'e, E>(
    executor: E,
    group_id: &str,
    topic: &str,
    partition: i32,
) -> Result<Option<StoredOffset>, sqlx::Error>
where
    E: sqlx::PgExecutor<'e>,
{
    let row: Option<(i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT next_offset, owner_epoch, rewind_seq, topic_incarnation FROM consumer_offsets \
         WHERE group_id = $1 AND topic = $2 AND partition = $3",
    )
    .bind(group_id)
    .bind(topic)
    .bind(partition)
    .fetch_optional(executor)
    .await?;
    Ok(row.map(
        |(next_offset, owner_epoch, rewind_seq, topic_incarnation)| StoredOffset {
            next_offset,
            owner_epoch,
            rewind_seq,
            topic_incarnation,
        },
    ))
}

/// Locks the partition's row if it is still exactly as `owner` holds it; returns whether it is.
/// What a writer that records a fact about the partition's position (a log anomaly) takes first,
/// in the order `replay` takes it, so a decision already taken is never overtaken.
pub(crate) async fn lock_if_current(
    conn: &mut PgConnection,
    group_id: &str,
    topic: &str,
    owner: &Ownership,
) -> Result<bool, sqlx::Error> {
    let row: Option<i32> = sqlx::query_scalar(
        "SELECT partition FROM consumer_offsets \
         WHERE group_id = $1 AND topic = $2 AND partition = $3 \
           AND next_offset = $4 AND owner_epoch = $5 AND rewind_seq = $6 \
           AND topic_incarnation = $7 \
         FOR UPDATE",
    )
    .bind(group_id)
    .bind(topic)
    .bind(owner.partition)
    .bind(owner.next_offset)
    .bind(owner.owner_epoch)
    .bind(owner.rewind_seq)
    .bind(owner.topic_incarnation)
    .fetch_optional(conn)
    .await?;
    Ok(row.is_some())
}

/// The fenced compare-and-set: moves `next_offset` from `owner.next_offset` to `end` only if the
/// row is still exactly as `owner` saw it, and records the digest of the record at `end - 1`
/// (`None`: unknown). Returns whether it did.
pub(crate) async fn advance(
    conn: &mut PgConnection,
    group_id: &str,
    topic: &str,
    owner: &Ownership,
    end: i64,
    last_record_sha256: Option<&[u8; 32]>,
) -> Result<bool, sqlx::Error> {
    let result = sqlx::query(
        "UPDATE consumer_offsets SET next_offset = $4, last_record_sha256 = $8, \
                updated_at = now() \
         WHERE group_id = $1 AND topic = $2 AND partition = $3 \
           AND next_offset = $5 AND owner_epoch = $6 AND rewind_seq = $7",
    )
    .bind(group_id)
    .bind(topic)
    .bind(owner.partition)
    .bind(end)
    .bind(owner.next_offset)
    .bind(owner.owner_epoch)
    .bind(owner.rewind_seq)
    .bind(last_record_sha256.map(|d| d.as_slice()))
    .execute(conn)
    .await?;
    Ok(result.rows_affected() == 1)
}
