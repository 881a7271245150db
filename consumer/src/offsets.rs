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
use crate::transaction::{self, IdleClient};

/// What a worker knows about its partition's row: its fencing token and where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ownership {
    pub partition: i32,
    pub next_offset: i64,
    pub owner_epoch: i64,
    pub rewind_seq: i64,
}

/// The partition's row as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredOffset {
    pub next_offset: i64,
    pub owner_epoch: i64,
    pub rewind_seq: i64,
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

impl Ownership {
    /// The ownership a statement returned as `(next_offset, owner_epoch, rewind_seq)`.
    fn from_row(partition: i32, (next_offset, owner_epoch, rewind_seq): (i64, i64, i64)) -> Self {
        Self {
            partition,
            next_offset,
            owner_epoch,
            rewind_seq,
        }
    }

    /// How this owner stands against `stored`, the partition's row as read.
    pub fn standing(&self, stored: Option<StoredOffset>) -> Standing {
        match stored {
            None => Standing::Behind(None),
            Some(s) if s.owner_epoch < self.owner_epoch => Standing::Behind(stored),
            Some(s) if s.owner_epoch > self.owner_epoch => Standing::Superseded(s),
            Some(s) if s.next_offset != self.next_offset || s.rewind_seq != self.rewind_seq => {
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

    /// Opens a transaction bounded by the statement timeout, within `deadline`.
    async fn begin_bounded(
        &self,
        deadline: Instant,
    ) -> Result<PoolConnection<Postgres>, sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        let begun = timeout_at(
            deadline,
            transaction::begin(&mut conn, self.statement_timeout, IdleClient::Tolerated),
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
        let statement = sqlx::query_as(
            "UPDATE consumer_offsets SET owner_epoch = owner_epoch + 1, updated_at = now() \
             WHERE group_id = $1 AND topic = $2 AND partition = $3 \
             RETURNING next_offset, owner_epoch, rewind_seq",
        )
        .bind(&self.group_id)
        .bind(&self.topic)
        .bind(partition)
        .fetch_optional(&mut *conn);
        let result = timeout_at(deadline, statement).await;
        let row: Option<(i64, i64, i64)> = self.finish(conn, deadline, result).await?;
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
        let statement = sqlx::query_as(
            "INSERT INTO consumer_offsets \
                 (group_id, topic, partition, next_offset, owner_epoch, rewind_seq, updated_at) \
             VALUES ($1, $2, $3, $4, 1, 0, now()) \
             ON CONFLICT (group_id, topic, partition) DO UPDATE \
                 SET owner_epoch = consumer_offsets.owner_epoch + 1, updated_at = now() \
             RETURNING next_offset, owner_epoch, rewind_seq",
        )
        .bind(&self.group_id)
        .bind(&self.topic)
        .bind(partition)
        .bind(initial_offset)
        .fetch_one(&mut *conn);
        let result = timeout_at(deadline, statement).await;
        let row: (i64, i64, i64) = self.finish(conn, deadline, result).await?;
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
            Some(row) => sqlx::query_as(
                "UPDATE consumer_offsets \
                 SET owner_epoch = GREATEST(owner_epoch, $4) + 1, updated_at = now() \
                 WHERE group_id = $1 AND topic = $2 AND partition = $3 \
                   AND owner_epoch = $5 AND next_offset = $6 AND rewind_seq = $7 \
                 RETURNING next_offset, owner_epoch, rewind_seq",
            )
            .bind(&self.group_id)
            .bind(&self.topic)
            .bind(partition)
            .bind(own_epoch)
            .bind(row.owner_epoch)
            .bind(row.next_offset)
            .bind(row.rewind_seq),
            None => sqlx::query_as(
                "INSERT INTO consumer_offsets \
                     (group_id, topic, partition, next_offset, owner_epoch, rewind_seq, updated_at) \
                 VALUES ($1, $2, $3, $5, $4 + 1, 0, now()) \
                 ON CONFLICT (group_id, topic, partition) DO NOTHING \
                 RETURNING next_offset, owner_epoch, rewind_seq",
            )
            .bind(&self.group_id)
            .bind(&self.topic)
            .bind(partition)
            .bind(own_epoch)
            .bind(log_start),
        };
        let result = timeout_at(deadline, statement.fetch_optional(&mut *conn)).await;
        let row: Option<(i64, i64, i64)> = self.finish(conn, deadline, result).await?;
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
        let rows: Vec<(i32, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT partition, next_offset, owner_epoch, rewind_seq, \
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
                |(partition, next_offset, owner_epoch, rewind_seq, updated_at_ms)| {
                    PartitionOffset {
                        partition,
                        stored: StoredOffset {
                            next_offset,
                            owner_epoch,
                            rewind_seq,
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
        self.rewind_partitions(&[(partition, offset)])
            .await?
            .pop()
            .map(|(_, stored)| stored)
            .ok_or(sqlx::Error::RowNotFound)
    }

    /// [`OffsetStore::rewind`] of several partitions in one statement (all or none), rows locked
    /// in partition order. Returns the rows after the rewind, by partition.
    pub async fn rewind_partitions(
        &self,
        targets: &[(i32, i64)],
    ) -> Result<Vec<(i32, StoredOffset)>, sqlx::Error> {
        let partitions: Vec<i32> = targets.iter().map(|t| t.0).collect();
        let offsets: Vec<i64> = targets.iter().map(|t| t.1).collect();
        let rows: Vec<(i32, i64, i64, i64)> = sqlx::query_as(
            "INSERT INTO consumer_offsets AS o \
                 (group_id, topic, partition, next_offset, owner_epoch, rewind_seq, updated_at) \
             SELECT $1, $2, u.partition, u.target, 0, 1, now() \
             FROM UNNEST($3::integer[], $4::bigint[]) AS u(partition, target) \
             ORDER BY u.partition \
             ON CONFLICT (group_id, topic, partition) DO UPDATE \
                 SET next_offset = EXCLUDED.next_offset, rewind_seq = o.rewind_seq + 1, \
                     updated_at = now() \
             RETURNING partition, next_offset, owner_epoch, rewind_seq",
        )
        .bind(&self.group_id)
        .bind(&self.topic)
        .bind(&partitions)
        .bind(&offsets)
        .fetch_all(&self.pool)
        .await?;
        let mut rewound: Vec<(i32, StoredOffset)> = rows
            .into_iter()
            .map(|(partition, next_offset, owner_epoch, rewind_seq)| {
                (
                    partition,
                    StoredOffset {
                        next_offset,
                        owner_epoch,
                        rewind_seq,
                    },
                )
            })
            .collect();
        rewound.sort_by_key(|r| r.0);
        Ok(rewound)
    }
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
    let row: Option<(i64, i64, i64)> = sqlx::query_as(
        "SELECT next_offset, owner_epoch, rewind_seq FROM consumer_offsets \
         WHERE group_id = $1 AND topic = $2 AND partition = $3",
    )
    .bind(group_id)
    .bind(topic)
    .bind(partition)
    .fetch_optional(executor)
    .await?;
    Ok(
        row.map(|(next_offset, owner_epoch, rewind_seq)| StoredOffset {
            next_offset,
            owner_epoch,
            rewind_seq,
        }),
    )
}

/// The fenced compare-and-set: moves `next_offset` from `owner.next_offset` to `end` only if the
/// row is still exactly as `owner` saw it. Returns whether it did.
pub(crate) async fn advance(
    conn: &mut PgConnection,
    group_id: &str,
    topic: &str,
    owner: &Ownership,
    end: i64,
) -> Result<bool, sqlx::Error> {
    let result = sqlx::query(
        "UPDATE consumer_offsets SET next_offset = $4, updated_at = now() \
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
    .execute(conn)
    .await?;
    Ok(result.rows_affected() == 1)
}
