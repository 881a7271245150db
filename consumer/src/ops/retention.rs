//! Retention (DESIGN.md §5.11, §9; `migrations/0006_retention_and_erasure.sql`): removes rows
//! older than a per-table policy in bounded transactions, without long locks, and records the
//! record horizon every writer honours so that no replay brings them back.
//!
//! Policies and what they remove:
//! - `raw_updates`: raw rows received before the **record horizon** (now - the policy). The
//!   horizon is recorded (`retention_horizons`, never moved back) and waited into effect BEFORE
//!   anything is deleted: every batch, redrive and reprocess that starts afterwards withholds
//!   records received before it (`crate::writer::RecordWriter::honour`), and the transactions
//!   that began earlier are waited for (`wait_for_earlier_transactions`). A record behind the
//!   horizon is accounted for as retained (the checker counts it), so `replay --to-earliest` of
//!   a topic that still holds it writes nothing for it.
//! - a projection (any table of [`ProjectionTable::ALL`]): rows whose last write (`updated_at`) is
//!   older than the policy. The policy must be at least the record horizon's (checked before
//!   anything runs: [`check`], [`plan`]), so every such row was last written by a record behind
//!   the horizon, which no writer writes again. No index on `updated_at` (it would make every
//!   rewrite of a users, chats or messages row a non-HOT update on the consumer's hot path), so a
//!   projection is walked once per run in ranges of physical blocks (TID range scans).
//! - `dead_letters` (resolved letters, by `resolved_at`), `log_anomalies` (resolved ones, by
//!   `resolved_at`), `offset_gaps` (by `detected_at`): bookkeeping no replay recreates. An open
//!   dead letter is never retained (it is its record's effect and an operator's open item).
//!
//! Tombstones, erased subjects, offsets, epochs and group starts are never retained.
//!
//! Guarantees: every transaction deletes at most one batch of rows (or one range of blocks) and
//! takes row locks with SKIP LOCKED, so it never waits for a consumer and never deadlocks with
//! one (a row a writer holds right now is being rewritten, and is left for the next run); tables
//! are visited in the writers' fixed order (raw_updates, the projections in
//! [`ProjectionTable::ALL`] order, then the bookkeeping tables); an interrupted run leaves
//! nothing inconsistent (the horizon is recorded first; what is not yet deleted is withheld from
//! every writer and removed by the next run). Runs with the owner's credentials: the consumer's
//! role may not DELETE.

use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;
use sqlx::PgPool;

use super::progress::Progress;
use super::time::format_time;
use crate::projection::ProjectionTable;

/// A table a retention policy can apply to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetainedTable {
    /// The record horizon.
    RawUpdates,
    Projection(ProjectionTable),
    DeadLetters,
    LogAnomalies,
    OffsetGaps,
}

const BOOKKEEPING: [RetainedTable; 3] = [
    RetainedTable::DeadLetters,
    RetainedTable::LogAnomalies,
    RetainedTable::OffsetGaps,
];

impl RetainedTable {
    /// The table named `name`, if a policy may apply to it.
    pub fn parse(name: &str) -> Option<Self> {
        Self::all().into_iter().find(|t| t.name() == name)
    }

    /// Every table a policy may apply to, in the order a run visits them.
    pub fn all() -> Vec<Self> {
        std::iter::once(Self::RawUpdates)
            .chain(ProjectionTable::ALL.iter().map(|t| Self::Projection(*t)))
            .chain(BOOKKEEPING)
            .collect()
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::RawUpdates => "raw_updates",
            Self::Projection(t) => t.name(),
            Self::DeadLetters => "dead_letters",
            Self::LogAnomalies => "log_anomalies",
            Self::OffsetGaps => "offset_gaps",
        }
    }

    /// The rows of this table older than the cutoff `$1` (unix ms): what the policy removes.
    fn older_than_cutoff(self) -> &'static str {
        match self {
            Self::RawUpdates => "received_at < to_timestamp($1::bigint / 1000.0)",
            Self::Projection(_) => "updated_at < to_timestamp($1::bigint / 1000.0)",
            Self::DeadLetters | Self::LogAnomalies => {
                "resolved_at IS NOT NULL AND resolved_at < to_timestamp($1::bigint / 1000.0)"
            }
            Self::OffsetGaps => "detected_at < to_timestamp($1::bigint / 1000.0)",
        }
    }
}

impl std::fmt::Display for RetainedTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Keep `table`'s rows for `keep`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub table: RetainedTable,
    pub keep: Duration,
}

/// Checks a set of policies on their own: one per table, none of zero length, and no projection
/// kept for less than `raw_updates` (a replay or `--reprocess-from-db` would write its removed
/// rows again from the records still there). The error names the table.
pub fn check(policies: &[Policy]) -> Result<(), String> {
    for (i, p) in policies.iter().enumerate() {
        if p.keep.is_zero() {
            return Err(format!("{}: a policy of zero keeps nothing", p.table));
        }
        if policies[..i].iter().any(|q| q.table == p.table) {
            return Err(format!("{}: more than one policy", p.table));
        }
    }
    let raw = policies
        .iter()
        .find(|p| p.table == RetainedTable::RawUpdates);
    for p in policies {
        if let (RetainedTable::Projection(_), Some(raw)) = (p.table, raw)
            && p.keep < raw.keep
        {
            return Err(format!(
                "{}: keeps rows for less than raw_updates ({} < {}); a replay or --reprocess-from-db would write them again from the raw updates still kept: keep it at least as long",
                p.table,
                humantime::format_duration(p.keep),
                humantime::format_duration(raw.keep)
            ));
        }
    }
    Ok(())
}

/// What a run will do: each table's cutoff (unix ms) and the record horizon after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetentionPlan {
    pub now_ms: i64,
    /// The record horizon after this run (the stored one, moved forward by a `raw_updates`
    /// policy); `None` when neither exists.
    pub horizon_ms: Option<i64>,
    #[serde(skip)]
    pub policies: Vec<Policy>,
    /// (table, cutoff) in the order the run visits them.
    pub cutoffs: Vec<(String, i64)>,
}

/// Plans a run at `now_ms`: each policy's cutoff, and the record horizon, never earlier than the
/// stored one. Refuses a projection policy whose cutoff is after the record horizon (with no
/// `raw_updates` policy now, the stored horizon is the one that counts).
pub async fn plan(
    pool: &PgPool,
    policies: &[Policy],
    now_ms: i64,
) -> anyhow::Result<RetentionPlan> {
    if let Err(reason) = check(policies) {
        bail!("retention policy {reason}");
    }
    let stored: Option<i64> = sqlx::query_scalar(
        "SELECT (extract(epoch FROM horizon) * 1000)::bigint FROM retention_horizons \
         WHERE table_name = 'raw_updates'",
    )
    .fetch_optional(pool)
    .await
    .context("reading the record horizon")?;
    let cutoff =
        |p: &Policy| now_ms.saturating_sub(i64::try_from(p.keep.as_millis()).unwrap_or(i64::MAX));
    let mut ordered: Vec<Policy> = Vec::new();
    for table in RetainedTable::all() {
        ordered.extend(policies.iter().filter(|p| p.table == table));
    }
    let raw = ordered
        .iter()
        .find(|p| p.table == RetainedTable::RawUpdates)
        .map(cutoff);
    let horizon_ms = match (stored, raw) {
        (Some(s), Some(r)) => Some(s.max(r)),
        (s, r) => s.or(r),
    };
    for p in &ordered {
        if let RetainedTable::Projection(_) = p.table {
            match horizon_ms {
                None => bail!(
                    "retention policy {}: needs a raw_updates policy (no record horizon yet): without one, a replay or --reprocess-from-db writes its removed rows again",
                    p.table
                ),
                Some(h) if cutoff(p) > h => bail!(
                    "retention policy {}: removes rows written after the record horizon ({}); keep it at least until the horizon or shorten the raw_updates policy",
                    p.table,
                    format_time(h)
                ),
                Some(_) => {}
            }
        }
    }
    Ok(RetentionPlan {
        now_ms,
        horizon_ms,
        cutoffs: ordered
            .iter()
            .map(|p| {
                let at = if p.table == RetainedTable::RawUpdates {
                    horizon_ms.unwrap_or_else(|| cutoff(p))
                } else {
                    cutoff(p)
                };
                (p.table.name().to_owned(), at)
            })
            .collect(),
        policies: ordered,
    })
}

/// What a run removed (or, dry, would remove) from one table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableReport {
    pub table: String,
    /// Rows older than this were removed (RFC 3339).
    pub cutoff: String,
    pub removed: u64,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetentionReport {
    pub dry_run: bool,
    /// The record horizon after the run (RFC 3339).
    pub horizon: Option<String>,
    pub tables: Vec<TableReport>,
}

/// Counts what [`apply`] would remove, changing nothing.
pub async fn dry_run(pool: &PgPool, plan: &RetentionPlan) -> anyhow::Result<RetentionReport> {
    let mut tables = Vec::new();
    for (policy, (name, cutoff_ms)) in plan.policies.iter().zip(&plan.cutoffs) {
        let sql = format!(
            "SELECT count(*) FROM {name} WHERE {}",
            policy.table.older_than_cutoff()
        );
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(*cutoff_ms)
            .fetch_one(pool)
            .await
            .with_context(|| format!("counting the rows of {name} to remove"))?;
        tables.push(TableReport {
            table: name.clone(),
            cutoff: format_time(*cutoff_ms),
            removed: n.unsigned_abs(),
        });
    }
    Ok(RetentionReport {
        dry_run: true,
        horizon: plan.horizon_ms.map(format_time),
        tables,
    })
}

/// Blocks of a projection walked per transaction (8 MiB with 8 KiB blocks).
const BLOCKS_PER_TRANSACTION: i64 = 1024;

/// Runs a plan: records the horizons, waits until every writer honours them, then deletes table
/// by table, at most `batch_size` rows (raw_updates, bookkeeping) or `BLOCKS_PER_TRANSACTION`
/// blocks (projections) per transaction.
pub async fn apply(
    pool: &PgPool,
    plan: &RetentionPlan,
    batch_size: i64,
    progress: &dyn Progress,
) -> anyhow::Result<RetentionReport> {
    let batch_size = batch_size.max(1);
    let mut tx = pool
        .begin()
        .await
        .context("recording the retention horizons")?;
    let mut cutoffs = Vec::with_capacity(plan.policies.len());
    for (policy, (name, cutoff_ms)) in plan.policies.iter().zip(&plan.cutoffs) {
        let keep_s = i64::try_from(policy.keep.as_secs()).unwrap_or(i64::MAX);
        // The horizon never moves back, whatever the policy says now.
        let stored: i64 = sqlx::query_scalar(
            "INSERT INTO retention_horizons AS h (table_name, horizon, policy) \
             VALUES ($1, to_timestamp($2::bigint / 1000.0), make_interval(secs => $3)) \
             ON CONFLICT (table_name) DO UPDATE \
                 SET horizon = GREATEST(h.horizon, EXCLUDED.horizon), policy = EXCLUDED.policy, \
                     decided_by = current_user, decided_at = now() \
             RETURNING (extract(epoch FROM horizon) * 1000)::bigint",
        )
        .bind(name)
        .bind(*cutoff_ms)
        .bind(keep_s as f64)
        .fetch_one(&mut *tx)
        .await
        .with_context(|| format!("recording the retention horizon of {name}"))?;
        cutoffs.push((policy.table, stored));
    }
    tx.commit()
        .await
        .context("recording the retention horizons")?;
    wait_for_earlier_transactions(pool, WAIT_FOR_WRITERS).await?;

    let mut tables = Vec::with_capacity(cutoffs.len());
    for (table, cutoff_ms) in cutoffs {
        let removed = match table {
            RetainedTable::Projection(_) => {
                remove_by_blocks(pool, table, cutoff_ms, progress).await?
            }
            _ => remove_by_rows(pool, table, cutoff_ms, batch_size, progress).await?,
        };
        tracing::info!(table = table.name(), removed, cutoff = %format_time(cutoff_ms), "retention removed rows");
        tables.push(TableReport {
            table: table.name().to_owned(),
            cutoff: format_time(cutoff_ms),
            removed,
        });
    }
    let horizon: Option<i64> = sqlx::query_scalar(
        "SELECT (extract(epoch FROM horizon) * 1000)::bigint FROM retention_horizons \
         WHERE table_name = 'raw_updates'",
    )
    .fetch_optional(pool)
    .await
    .context("reading the record horizon")?;
    Ok(RetentionReport {
        dry_run: false,
        horizon: horizon.map(format_time),
        tables,
    })
}

/// Deletes the rows older than the cutoff, `batch_size` per transaction, oldest first where an
/// index orders them.
async fn remove_by_rows(
    pool: &PgPool,
    table: RetainedTable,
    cutoff_ms: i64,
    batch_size: i64,
    progress: &dyn Progress,
) -> anyhow::Result<u64> {
    let name = table.name();
    let order = match table {
        RetainedTable::RawUpdates => " ORDER BY received_at",
        _ => "",
    };
    let delete = format!(
        "DELETE FROM {name} WHERE ctid = ANY(ARRAY( \
             SELECT ctid FROM {name} WHERE {}{order} LIMIT $2 FOR UPDATE SKIP LOCKED))",
        table.older_than_cutoff()
    );
    // Removed raw updates leave the stored-update counts `status` reads in the same statement.
    let sql = match table {
        RetainedTable::RawUpdates => crate::raw_counts::uncount_deleted(&delete, name),
        _ => format!("WITH d AS ({delete} RETURNING 1) SELECT count(*) FROM d"),
    };
    progress.start(&format!("retention: {name}"), 0);
    let mut removed = 0;
    loop {
        let deleted: i64 = with_retries(|| async {
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql.clone()))
                .bind(cutoff_ms)
                .bind(batch_size)
                .fetch_one(pool)
                .await
        })
        .await
        .with_context(|| format!("deleting rows of {name}"))?;
        let deleted = u64::try_from(deleted).unwrap_or(0);
        removed += deleted;
        progress.advance(deleted);
        if deleted == 0 {
            break;
        }
    }
    progress.finish();
    Ok(removed)
}

/// Deletes a projection's rows last written before the cutoff, one range of blocks per
/// transaction.
async fn remove_by_blocks(
    pool: &PgPool,
    table: RetainedTable,
    cutoff_ms: i64,
    progress: &dyn Progress,
) -> anyhow::Result<u64> {
    let name = table.name();
    let blocks = relation_blocks(pool, name).await?;
    let sql = format!(
        "DELETE FROM {name} WHERE ctid = ANY(ARRAY( \
             SELECT ctid FROM {name} \
             WHERE ctid >= format('(%s,0)', $2::bigint)::tid \
               AND ctid < format('(%s,0)', $3::bigint)::tid AND {} \
             FOR UPDATE SKIP LOCKED))",
        table.older_than_cutoff()
    );
    progress.start(
        &format!("retention: {name} (blocks)"),
        u64::try_from(blocks).unwrap_or(0),
    );
    let mut removed = 0;
    let mut start = 0;
    while start < blocks {
        let end = start + BLOCKS_PER_TRANSACTION;
        removed += with_retries(|| async {
            sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(cutoff_ms)
                .bind(start)
                .bind(end)
                .execute(pool)
                .await
        })
        .await
        .with_context(|| format!("deleting rows of {name}"))?
        .rows_affected();
        progress.advance(u64::try_from(end.min(blocks) - start).unwrap_or(0));
        start = end;
    }
    progress.finish();
    Ok(removed)
}

/// The number of blocks of a table now (rows appended later are newer than any cutoff).
pub(super) async fn relation_blocks(pool: &PgPool, table: &str) -> anyhow::Result<i64> {
    sqlx::query_scalar(
        "SELECT pg_relation_size(to_regclass($1)) / current_setting('block_size')::bigint",
    )
    .bind(table)
    .fetch_one(pool)
    .await
    .with_context(|| format!("reading the size of {table}"))
}

/// How long an operator decision waits for the transactions that began before it to end.
pub(super) const WAIT_FOR_WRITERS: Duration = Duration::from_secs(600);

/// Waits until every transaction of this database that began before now has ended, so every
/// writer still running has read a decision committed before this call (READ COMMITTED: each
/// statement of a later transaction sees it). A transaction still open after `timeout` fails the
/// call, naming its backend: nothing has been removed yet, and running the command again
/// continues.
pub(super) async fn wait_for_earlier_transactions(
    pool: &PgPool,
    timeout: Duration,
) -> anyhow::Result<()> {
    let since: String = sqlx::query_scalar("SELECT clock_timestamp()::text")
        .fetch_one(pool)
        .await
        .context("reading the server's clock")?;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let open: Vec<(i32, String, String)> = sqlx::query_as(
            "SELECT pid, coalesce(application_name, ''), xact_start::text FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid() \
               AND backend_type = 'client backend' AND xact_start < $1::timestamptz \
             ORDER BY xact_start",
        )
        .bind(&since)
        .fetch_all(pool)
        .await
        .context("listing open transactions")?;
        if open.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            let (pid, app, started) = &open[0];
            bail!(
                "{} transaction(s) that began before the decision are still open after {} (the oldest: backend {pid}, application {app:?}, since {started}); the decision is recorded, run the command again once they end",
                open.len(),
                humantime::format_duration(timeout)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs a statement again on a deadlock or serialization failure (another writer won; the
/// statement changed nothing), at most a few times.
pub(super) async fn with_retries<T, F, Fut>(mut attempt: F) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    let mut tries = 0;
    loop {
        match attempt().await {
            Err(e)
                if tries < 5
                    && crate::classify::sqlstate(&e)
                        .is_some_and(|c| c == "40P01" || c == "40001") =>
            {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50 * tries)).await;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn policy(table: &str, days: u64) -> Policy {
        Policy {
            table: RetainedTable::parse(table).expect("a retainable table"),
            keep: DAY * u32::try_from(days).expect("days"),
        }
    }

    #[test]
    fn every_projection_and_the_bookkeeping_tables_take_policies_and_nothing_else_does() {
        for table in ProjectionTable::ALL {
            assert!(RetainedTable::parse(table.name()).is_some(), "{table}");
        }
        for name in [
            "raw_updates",
            "dead_letters",
            "log_anomalies",
            "offset_gaps",
        ] {
            assert!(RetainedTable::parse(name).is_some(), "{name}");
        }
        for name in [
            "tombstones",
            "erased_subjects",
            "consumer_offsets",
            "bot_update_epochs",
            "consumer_group_starts",
            "retention_horizons",
        ] {
            assert_eq!(RetainedTable::parse(name), None, "{name}");
        }
    }

    #[test]
    fn a_projection_kept_shorter_than_the_raw_updates_is_refused_naming_it() {
        let err = check(&[policy("raw_updates", 400), policy("messages", 30)])
            .expect_err("shorter than raw_updates");
        assert!(
            err.starts_with("messages: keeps rows for less than raw_updates"),
            "{err}"
        );
        check(&[policy("raw_updates", 400), policy("messages", 400)]).expect("as long is fine");
        check(&[policy("dead_letters", 7), policy("raw_updates", 400)])
            .expect("bookkeeping is not tied to the horizon");
    }

    #[test]
    fn duplicate_and_zero_policies_are_refused() {
        assert!(check(&[policy("messages", 1), policy("messages", 2)]).is_err());
        assert!(check(&[policy("raw_updates", 0)]).is_err());
    }
}
