//! The offset store of record: one `consumer_offsets` row per (group, topic, partition) holding
//! `next_offset`, `owner_epoch` and `rewind_seq` (DESIGN.md §5).
//!
//! Guarantees: [`OffsetStore::take_ownership`] is one atomic statement that bumps the epoch, so
//! after it returns every earlier owner's fenced update ([`advance`]) matches zero rows;
//! [`OffsetStore::rewind`] moves `next_offset` and bumps `rewind_seq` without touching the epoch,
//! so the current owner re-seeks instead of being fenced; [`advance`] only moves the offset of
//! the exact (offset, epoch, rewind_seq) the caller observed. Every statement on
//! `consumer_offsets` lives in this module: the worker's, the operator commands' (`replay`,
//! `status`) and the demo's.

use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::{Executor, PgConnection, PgPool, Postgres};

use crate::classify::is_connection_loss;
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

    /// Opens a transaction bounded by the statement timeout.
    async fn begin_bounded(&self) -> Result<PoolConnection<Postgres>, sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        if let Err(e) =
            transaction::begin(&mut conn, self.statement_timeout, IdleClient::Tolerated).await
        {
            transaction::roll_back(conn, is_connection_loss(&e)).await;
            return Err(e);
        }
        Ok(conn)
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
        let mut conn = self.begin_bounded().await?;
        let result = sqlx::query_as(
            "UPDATE consumer_offsets SET owner_epoch = owner_epoch + 1, updated_at = now() \
             WHERE group_id = $1 AND topic = $2 AND partition = $3 \
             RETURNING next_offset, owner_epoch, rewind_seq",
        )
        .bind(&self.group_id)
        .bind(&self.topic)
        .bind(partition)
        .fetch_optional(&mut *conn)
        .await;
        let row: Option<(i64, i64, i64)> = finish(conn, result).await?;
        Ok(row.map(|(next_offset, owner_epoch, rewind_seq)| Ownership {
            partition,
            next_offset,
            owner_epoch,
            rewind_seq,
        }))
    }

    /// Takes the partition over, creating its row at `initial_offset` when there is none. One
    /// statement: a concurrent creator makes this an epoch bump of its row.
    pub async fn take_ownership_from(
        &self,
        partition: i32,
        initial_offset: i64,
    ) -> Result<Ownership, sqlx::Error> {
        let mut conn = self.begin_bounded().await?;
        let result = sqlx::query_as(
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
        .fetch_one(&mut *conn)
        .await;
        let (next_offset, owner_epoch, rewind_seq): (i64, i64, i64) = finish(conn, result).await?;
        Ok(Ownership {
            partition,
            next_offset,
            owner_epoch,
            rewind_seq,
        })
    }

    /// Reads the partition's row.
    pub async fn read(&self, partition: i32) -> Result<Option<StoredOffset>, sqlx::Error> {
        read(&self.pool, &self.group_id, &self.topic, partition).await
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

/// Ends a transaction explicitly: COMMIT after success (closing the connection when COMMIT fails);
/// [`transaction::roll_back`] after an error.
async fn finish<T>(
    mut conn: PoolConnection<Postgres>,
    result: Result<T, sqlx::Error>,
) -> Result<T, sqlx::Error> {
    match result {
        Ok(value) => match conn.execute("COMMIT").await {
            Ok(_) => Ok(value),
            Err(e) => {
                conn.close_on_drop();
                Err(e)
            }
        },
        Err(e) => {
            transaction::roll_back(conn, is_connection_loss(&e)).await;
            Err(e)
        }
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
