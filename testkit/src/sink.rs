//! The consumer (the sink) running inside the test's process, and what tests wait on: the group's
//! stored offsets reaching the log ends.
//!
//! A [`RunningConsumer`] is `consumer::run_with_stats` on the test's runtime; stopping it checks
//! that the consumer shut down cleanly (within 60 s, no panic, `Ok`), so every test that stops a
//! consumer also tests its shutdown.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use consumer::{ConsumerConfig, ConsumerStats, NoReadiness};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::invariants::ProducedRecord;
use crate::{TestBroker, TestDb, wait_until};

/// A fresh database, a broker with a topic of `partitions` partitions, and a group name:
/// `(db, broker, topic, group)`.
pub async fn setup(partitions: i32) -> (TestDb, TestBroker, String, String) {
    let db = TestDb::create().await.expect("a test database");
    let broker = TestBroker::start().await.expect("a broker");
    let topic = broker.unique_topic("tg-updates");
    broker
        .create_topic(&topic, partitions)
        .await
        .expect("a topic");
    let group = broker.unique_group("sink");
    (db, broker, topic, group)
}

/// A consumer configuration sized for tests: a short session timeout, small batches, a short
/// linger. Test crates add what their tests depend on.
pub fn config(broker: &TestBroker, group: &str, topic: &str) -> ConsumerConfig {
    let mut config = ConsumerConfig::new(group, topic, broker.client_config());
    config.session_timeout = Duration::from_secs(6);
    config.batch_max_records = 50;
    config.linger = Duration::from_millis(20);
    config.statement_timeout = Duration::from_secs(10);
    config.revoke_timeout = Duration::from_secs(15);
    config
}

/// A consumer running in this process.
#[derive(Debug)]
pub struct RunningConsumer {
    pub shutdown: CancellationToken,
    pub stats: Arc<ConsumerStats>,
    pub task: JoinHandle<anyhow::Result<()>>,
    /// The consumer's pool.
    pub pool: PgPool,
    /// Whether [`RunningConsumer::stop`] closes `pool` (it is the consumer's own).
    owns_pool: bool,
}

impl RunningConsumer {
    /// Starts a consumer on `pool`, which the caller keeps using.
    pub fn start(config: ConsumerConfig, pool: PgPool) -> Self {
        Self::spawn(config, pool, false)
    }

    /// Starts a consumer on a pool of its own (8 connections named `application_name`), closed
    /// when it stops so its backends exit and flush their table statistics.
    pub async fn start_on_own_pool(
        config: ConsumerConfig,
        db: &TestDb,
        application_name: &str,
    ) -> Self {
        let options = PgConnectOptions::from_str(db.url())
            .expect("the test database URL")
            .application_name(application_name);
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .max_lifetime(Some(consumer::config::POOL_MAX_LIFETIME))
            .connect_with(options)
            .await
            .expect("a pool for the consumer");
        Self::spawn(config, pool, true)
    }

    fn spawn(config: ConsumerConfig, pool: PgPool, owns_pool: bool) -> Self {
        let shutdown = CancellationToken::new();
        let stats = Arc::new(ConsumerStats::default());
        let task = tokio::spawn(consumer::run_with_stats(
            config,
            pool.clone(),
            shutdown.clone(),
            Arc::new(NoReadiness),
            stats.clone(),
        ));
        Self {
            shutdown,
            stats,
            task,
            pool,
            owns_pool,
        }
    }

    /// Whether the consumer's task has ended (it returned, with or without an error).
    pub fn has_exited(&self) -> bool {
        self.task.is_finished()
    }

    /// Records consumed so far.
    pub fn consumed(&self) -> u64 {
        ConsumerStats::get(&self.stats.records_consumed)
    }

    /// Cancels and waits for a clean exit; panics unless the consumer returns `Ok` within 60 s.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("the consumer stops within 60s")
            .expect("the consumer task does not panic")
            .expect("the consumer returns Ok");
        if self.owns_pool {
            self.pool.close().await;
        }
    }
}

/// Each partition's log end (one past its highest offset) in the manifest.
pub fn log_ends(manifest: &[ProducedRecord]) -> BTreeMap<i32, i64> {
    let mut ends = BTreeMap::new();
    for r in manifest {
        let end = ends.entry(r.partition).or_insert(0);
        *end = (r.offset + 1).max(*end);
    }
    ends
}

/// The group's stored `next_offset` per partition.
pub async fn stored_offsets(pool: &PgPool, group: &str) -> anyhow::Result<BTreeMap<i32, i64>> {
    let rows: Vec<(i32, i64)> =
        sqlx::query_as("SELECT partition, next_offset FROM consumer_offsets WHERE group_id = $1")
            .bind(group)
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().collect())
}

/// Waits until the group's stored offsets equal `ends` on every partition listed there; panics
/// after `timeout`.
pub async fn wait_for_offsets(
    pool: &PgPool,
    group: &str,
    ends: &BTreeMap<i32, i64>,
    timeout: Duration,
) {
    wait_until(timeout, "stored offsets at the log ends", async || {
        // A failing read (the database restarting, say) is "not yet".
        let stored = stored_offsets(pool, group).await.unwrap_or_default();
        ends.iter().all(|(p, end)| stored.get(p) == Some(end))
    })
    .await;
}

/// [`wait_for_offsets`] at the manifest's [`log_ends`].
pub async fn wait_for_log_end(
    pool: &PgPool,
    group: &str,
    manifest: &[ProducedRecord],
    timeout: Duration,
) {
    wait_for_offsets(pool, group, &log_ends(manifest), timeout).await;
}
