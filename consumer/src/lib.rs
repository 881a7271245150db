//! consumer — the Kafka consumer group that writes Telegram updates into PostgreSQL with
//! exactly-once effect (DESIGN.md §5, §6).
//!
//! For every record of the topic, after any sequence of crashes, restarts, rebalances and
//! replays, its effect is in PostgreSQL exactly once: its rows, or its dead letter. The database
//! is the offset store of record: each batch's rows, dead letters and the fenced advance of its
//! partition's `next_offset` commit in one transaction ([`writer`]); ownership is taken
//! atomically on assignment ([`offsets`], [`group`]); a worker per partition builds contiguous
//! batches ([`worker`]). Kafka commits are an advisory mirror.
//!
//! Entry point: [`run`]. Startup checks of the database that fail transiently (a server still
//! starting, a terminated session) are retried with jittered backoff for up to a minute, never
//! an exit. The guarantee is verified from outside, given what was produced, by the
//! exactly-once checker of the test kit (`testkit::invariants`), which this crate never depends on.

mod budget;
mod classify;
pub mod config;
mod failpoints;
mod group;
pub mod log_anomalies;
pub mod offsets;
pub mod ops;
pub mod privileges;
pub mod projection;
pub mod raw_counts;
mod readiness;
pub mod record;
mod stats;
mod transaction;
mod update_epochs;
mod worker;
pub mod writer;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use rdkafka::consumer::Consumer;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub use config::{AssignmentStrategy, ConfigError, ConsumerConfig, RetryPolicy, StartPolicy};
pub use offsets::{OffsetStore, Ownership, StoredOffset};
pub use readiness::{NoReadiness, Readiness};
pub use stats::{ConsumerStats, PARTITION_SERIES_PREFIX, describe as describe_metrics};

/// Tables the consumer writes besides the projections.
const PROTOCOL_TABLES: &[&str] = &[
    "raw_updates",
    "consumer_offsets",
    "dead_letters",
    "offset_gaps",
    "tombstones",
    "log_anomalies",
    "consumer_group_starts",
    "bot_update_epochs",
];

/// Runs the consumer until `shutdown` is cancelled: joins the group, works every assigned
/// partition, and on shutdown finishes in-flight batches, leaves the group and returns `Ok`.
///
/// Fails at startup, with one line naming the problem, on an invalid configuration, a schema
/// that lacks what this build writes, a database role that may not write it, or a missing topic.
///
/// Runs on the caller's (multi-thread) tokio runtime plus one OS thread that polls the group
/// consumer. Size `pool` for one connection per partition this process may own, plus two (idle
/// re-reads, commit-outcome resolution); fewer only serialises the partitions' writes.
pub async fn run(
    config: ConsumerConfig,
    pool: PgPool,
    shutdown: CancellationToken,
    readiness: Arc<dyn Readiness>,
) -> anyhow::Result<()> {
    run_with_stats(
        config,
        pool,
        shutdown,
        readiness,
        Arc::new(ConsumerStats::default()),
    )
    .await
}

/// [`run`], counting protocol events into `stats` (which the caller may read at any time).
pub async fn run_with_stats(
    config: ConsumerConfig,
    pool: PgPool,
    shutdown: CancellationToken,
    readiness: Arc<dyn Readiness>,
    stats: Arc<ConsumerStats>,
) -> anyhow::Result<()> {
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid consumer configuration: {e}"))?;
    stats::describe();
    readiness.not_ready(readiness::CHECK_KAFKA, "not yet in the group");
    let schema = Arc::new(check_database_with_retry(&pool, &config.retry, &shutdown).await?);
    readiness.ready(readiness::CHECK_POSTGRES, "");

    let writer = writer::BatchWriter::new(
        pool.clone(),
        &config.group_id,
        &config.topic,
        config.statement_timeout,
        config.processor_version,
        schema,
        stats.clone(),
    )
    .with_jsonb(if config.store_jsonb {
        writer::JsonbPayload::WhereValid
    } else {
        writer::JsonbPayload::Never
    });
    let store = OffsetStore::new(pool.clone(), &config.group_id, &config.topic)
        .with_statement_timeout(config.statement_timeout);
    let (commands_tx, commands_rx) = std::sync::mpsc::channel();
    let topic = config.topic.clone();
    let shared = Arc::new(group::Shared::new(
        tokio::runtime::Handle::current(),
        config,
        store,
        writer,
        stats,
        readiness.clone(),
        shutdown.clone(),
        commands_tx,
    ));
    let consumer = group::create_consumer(shared)?;

    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<anyhow::Result<()>>();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<anyhow::Result<()>>();
    std::thread::Builder::new()
        .name("tgingest-consumer-poll".to_owned())
        .spawn(move || {
            // Everything about the consumer, including its drop, happens on this thread.
            let metadata = consumer
                .fetch_metadata(Some(&topic), Duration::from_secs(15))
                .with_context(|| {
                    format!("cannot reach the Kafka brokers to look up topic {topic}")
                });
            let found =
                metadata.and_then(|m| match m.topics().iter().find(|t| t.name() == topic) {
                    Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(()),
                    _ => bail!("topic {topic} does not exist (topics are never auto-created)"),
                });
            if let Err(e) = found {
                let _ = started_tx.send(Err(e));
                drop(consumer);
                let _ = done_tx.send(Ok(()));
                return;
            }
            let _ = started_tx.send(Ok(()));
            let result = group::poll_loop(consumer, commands_rx);
            let _ = done_tx.send(result);
        })
        .context("spawning the consumer's polling thread")?;

    started_rx
        .await
        .context("the consumer's polling thread ended during startup")??;

    let probe = tokio::spawn(probe_postgres(pool, readiness, shutdown.clone()));
    let result = done_rx
        .await
        .context("the consumer's polling thread panicked")?;
    probe.abort();
    result
}

/// How long startup keeps retrying database checks that fail transiently (a restarting server,
/// a terminated session, a failover) before it gives up.
const STARTUP_RETRY_WINDOW: Duration = Duration::from_secs(60);

/// The startup checks of the database (schema, privileges, projection tables), retried with
/// jittered backoff while they fail transiently (DESIGN.md §6), for up to
/// [`STARTUP_RETRY_WINDOW`] or until shutdown; a deterministic failure (a missing table, a
/// missing privilege) ends startup at once with its one line.
async fn check_database_with_retry(
    pool: &PgPool,
    retry: &RetryPolicy,
    shutdown: &CancellationToken,
) -> anyhow::Result<projection::ProjectionSchema> {
    let started = std::time::Instant::now();
    let mut attempt = 0u32;
    loop {
        let error = match check_database(pool).await {
            Ok(schema) => return Ok(schema),
            Err(error) => error,
        };
        let transient = error
            .chain()
            .filter_map(|cause| cause.downcast_ref::<sqlx::Error>())
            .any(|e| classify::classify(e) == classify::ErrorClass::Transient);
        if !transient || started.elapsed() >= STARTUP_RETRY_WINDOW {
            return Err(error);
        }
        tracing::warn!(
            attempt,
            "checking the database at startup failed, retrying: {error:#}"
        );
        tokio::select! {
            () = shutdown.cancelled() => return Err(error),
            () = tokio::time::sleep(retry.delay(attempt)) => {}
        }
        attempt = attempt.saturating_add(1);
    }
}

async fn check_database(pool: &PgPool) -> anyhow::Result<projection::ProjectionSchema> {
    for table in PROTOCOL_TABLES.iter().chain(privileges::READ_ONLY_TABLES) {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(*table)
            .fetch_one(pool)
            .await
            .context("checking the database schema")?;
        if !exists {
            bail!("table {table} is missing: run `tgingest migrate` first");
        }
    }
    let written: Vec<&str> = PROTOCOL_TABLES
        .iter()
        .copied()
        .chain(projection::ProjectionTable::ALL.iter().map(|t| t.name()))
        .collect();
    privileges::check(pool, &written).await?;
    privileges::check_readable(pool, privileges::READ_ONLY_TABLES).await?;
    projection::ProjectionSchema::load(pool)
        .await
        .context("checking the projection tables")
}

/// Keeps the `postgres` readiness check current while nothing else touches the database.
async fn probe_postgres(pool: PgPool, readiness: Arc<dyn Readiness>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        let probe = tokio::time::timeout(
            Duration::from_secs(5),
            sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&pool),
        )
        .await;
        match probe {
            Ok(Ok(_)) => readiness.ready(readiness::CHECK_POSTGRES, ""),
            Ok(Err(e)) => readiness.not_ready(readiness::CHECK_POSTGRES, &e.to_string()),
            Err(_) => {
                readiness.not_ready(readiness::CHECK_POSTGRES, "no answer to SELECT 1 within 5s")
            }
        }
    }
}
