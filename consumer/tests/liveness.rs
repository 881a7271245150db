//! The consumer under ordinary operational events: a database restored from a backup, a deleted
//! offsets row, a PostgreSQL connection dropped silently mid-batch, a database that turns
//! read-only and back, statements that time out. In each, every assigned partition makes progress
//! again within a stated bound and every record lands exactly once.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::{Duration, Instant};

use common::*;
use consumer::ConsumerStats;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use testkit::invariants::{ProducedRecord, assert_invariants};
use testkit::sink::{RunningConsumer, wait_for_log_end};
use testkit::updates::{messages, produce};
use testkit::{BrokerKind, TcpProxy, TestDb, require_broker, wait_until};

/// `SHUTDOWN_GRACE`'s default in the binary: how long SIGTERM may take.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

async fn epochs(pool: &PgPool, group: &str) -> BTreeMap<i32, i64> {
    let rows: Vec<(i32, i64)> =
        sqlx::query_as("SELECT partition, owner_epoch FROM consumer_offsets WHERE group_id = $1")
            .bind(group)
            .fetch_all(pool)
            .await
            .unwrap();
    rows.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_two_members_keep_progressing_after_a_restore_without_fencing_each_other() {
    let (db, broker, topic, group) = setup(4).await;
    require_broker(
        broker.kind(),
        &[
            BrokerKind::Mock,
            BrokerKind::HostedMock,
            BrokerKind::External,
        ],
        "Tansu 0.6 rebalances a settled two-member group every few seconds, so no window without \
         a rebalance can be held",
    );
    let cfg = config(&broker, &group, &topic);
    let (a, b) = two_members(cfg, &db).await;
    let client = broker.client_config();
    let mut manifest = produce(&client, &topic, &messages(1, 200, 4)).await;
    wait_for_log_end(db.pool(), &group, &manifest, Duration::from_secs(45)).await;
    let assignments = (
        ConsumerStats::get(&a.stats.assignments),
        ConsumerStats::get(&b.stats.assignments),
    );
    let owned = epochs(db.pool(), &group).await;
    let consumed = (a.consumed(), b.consumed());

    // A backup restored under the running group: every stored epoch is older than its owner's.
    // Then an operator deletes one partition's row, and an ownership statement retried after the
    // group moved on leaves another partition with an epoch newer than its owner's.
    // One transaction, so no worker sees the restore without the rest.
    let mut restore = db.pool().begin().await.unwrap();
    sqlx::query("UPDATE consumer_offsets SET owner_epoch = owner_epoch - 1 WHERE group_id = $1")
        .bind(&group)
        .execute(&mut *restore)
        .await
        .unwrap();
    sqlx::query("DELETE FROM consumer_offsets WHERE group_id = $1 AND partition = 1")
        .bind(&group)
        .execute(&mut *restore)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE consumer_offsets SET owner_epoch = owner_epoch + 6 \
         WHERE group_id = $1 AND partition = 2",
    )
    .bind(&group)
    .execute(&mut *restore)
    .await
    .unwrap();
    restore.commit().await.unwrap();

    for round in 1..=4 {
        manifest.extend(produce(&client, &topic, &messages(round * 1_000, 100, 4)).await);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Partition 2 waits one session timeout (6 s) before it is re-owned.
    wait_for_log_end(db.pool(), &group, &manifest, Duration::from_secs(40)).await;
    assert_invariants(db.pool(), &group, &manifest).await;
    assert!(
        a.consumed() > consumed.0 && b.consumed() > consumed.1,
        "both members made progress after the restore: {consumed:?} → ({}, {})",
        a.consumed(),
        b.consumed()
    );

    // Each partition re-owned exactly once, to one past the greater of its stored and its
    // owner's epoch: no member fenced the other back and forth.
    let expected: BTreeMap<i32, i64> = owned
        .iter()
        .map(|(&p, &e)| (p, if p == 2 { e + 6 } else { e + 1 }))
        .collect();
    assert_eq!(epochs(db.pool(), &group).await, expected);
    let fenced =
        ConsumerStats::get(&a.stats.fenced_writes) + ConsumerStats::get(&b.stats.fenced_writes);
    assert!(
        fenced <= 1,
        "only partition 2's stale newer epoch may fence a write, once: {fenced} fenced writes"
    );
    assert_eq!(
        ConsumerStats::get(&a.stats.reowned) + ConsumerStats::get(&b.stats.reowned),
        4,
        "one re-own per partition"
    );
    assert_eq!(
        (
            ConsumerStats::get(&a.stats.assignments),
            ConsumerStats::get(&b.stats.assignments)
        ),
        assignments,
        "no rebalance took part"
    );
    a.stop().await;
    b.stop().await;
}

/// Asserts that every record of `manifest` was written within `bound` of `since`.
async fn assert_resumed_within(
    db: &TestDb,
    group: &str,
    manifest: &[ProducedRecord],
    since: Instant,
    bound: Duration,
) {
    wait_for_log_end(db.pool(), group, manifest, bound + Duration::from_secs(10)).await;
    let took = since.elapsed();
    assert!(
        took <= bound,
        "every partition resumed within {bound:?}: took {took:?}"
    );
}

/// A pool to `db` whose connections pass through `proxy`.
async fn pool_through(proxy: &TcpProxy, db: &TestDb, acquire_timeout: Duration) -> PgPool {
    let options = PgConnectOptions::from_str(db.url())
        .unwrap()
        .host("127.0.0.1")
        .port(proxy.port());
    PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(acquire_timeout)
        .connect_with(options)
        .await
        .unwrap()
}

async fn postgres_address(db: &TestDb) -> std::net::SocketAddr {
    let options = PgConnectOptions::from_str(db.url()).unwrap();
    tokio::net::lookup_host((options.get_host(), options.get_port()))
        .await
        .unwrap()
        .next()
        .unwrap()
}

/// Makes every batch transaction of `db` last at least `seconds` (a statement trigger on
/// `messages`), so a connection frozen at a random moment is most likely mid-batch.
async fn slow_batches(db: &TestDb, seconds: f64) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE OR REPLACE FUNCTION test_slow_batch() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN PERFORM pg_sleep({seconds}); RETURN NULL; END $$; \
         CREATE OR REPLACE TRIGGER test_slow_batch BEFORE INSERT ON messages \
         FOR EACH STATEMENT EXECUTE FUNCTION test_slow_batch()"
    )))
    .execute(db.pool())
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_a_silently_dropped_postgres_connection_is_abandoned_at_the_transaction_deadline() {
    let (db, broker, topic, group) = setup(3).await;
    let proxy = TcpProxy::start(postgres_address(&db).await).await.unwrap();
    let acquire_timeout = Duration::from_secs(2);
    let pool = pool_through(&proxy, &db, acquire_timeout).await;
    let mut cfg = config(&broker, &group, &topic);
    cfg.statement_timeout = Duration::from_secs(2);
    let deadline = cfg.transaction_deadline();
    let consumer = RunningConsumer::start(cfg, pool);
    let client = broker.client_config();
    let mut manifest = produce(&client, &topic, &messages(1, 90, 3)).await;
    wait_for_log_end(db.pool(), &group, &manifest, Duration::from_secs(45)).await;

    // The bound: the transaction deadline, then one pool acquire timeout for each frozen idle
    // connection a worker draws (the pool pings it first), then a retry backoff.
    let bound = deadline + 3 * acquire_timeout + Duration::from_secs(4);
    slow_batches(&db, 0.5).await;
    manifest.extend(produce(&client, &topic, &messages(1_000, 300, 3)).await);
    wait_until(Duration::from_secs(20), "batches in flight", || async {
        consumer.consumed() > 90
    })
    .await;
    let frozen = proxy.black_hole();
    let frozen_at = Instant::now();
    assert!(frozen > 0, "connections were frozen");
    sqlx::query("DROP TRIGGER test_slow_batch ON messages")
        .execute(db.pool())
        .await
        .unwrap();
    assert_resumed_within(&db, &group, &manifest, frozen_at, bound).await;
    assert!(
        ConsumerStats::get(&consumer.stats.deadlines_expired) > 0,
        "a batch transaction outlived its deadline"
    );
    assert_invariants(db.pool(), &group, &manifest).await;

    // Shutdown with every partition's batch stuck on a frozen connection.
    slow_batches(&db, 0.5).await;
    let before = consumer.consumed();
    manifest.extend(produce(&client, &topic, &messages(2_000, 300, 3)).await);
    wait_until(Duration::from_secs(20), "batches in flight", || async {
        consumer.consumed() > before
    })
    .await;
    proxy.black_hole();
    let stopping = Instant::now();
    consumer.shutdown.cancel();
    tokio::time::timeout(SHUTDOWN_GRACE, consumer.task)
        .await
        .expect("the consumer stops within SHUTDOWN_GRACE")
        .unwrap()
        .unwrap();
    tracing::info!(elapsed = ?stopping.elapsed(), "stopped with frozen connections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_writes_resume_once_a_read_only_database_turns_writable() {
    let (db, broker, topic, group) = setup(2).await;
    let app = format!("consumer-test-{}", testkit::random_suffix(8));
    let cfg = config(&broker, &group, &topic);
    let retry_max = cfg.retry.max;
    let consumer = RunningConsumer::start_on_own_pool(cfg, &db, &app).await;
    let client = broker.client_config();
    let mut manifest = produce(&client, &topic, &messages(1, 60, 2)).await;
    wait_for_log_end(db.pool(), &group, &manifest, Duration::from_secs(45)).await;

    // A failover to a node that is read-only: the consumer's connections are replaced by ones
    // on which every write fails with 25006.
    let set_read_only = |on: bool| {
        let pool = db.pool().clone();
        let name = db.name().to_owned();
        async move {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "ALTER DATABASE \"{name}\" SET default_transaction_read_only = {}",
                if on { "on" } else { "off" }
            )))
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    set_read_only(true).await;
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = $1",
    )
    .bind(&app)
    .execute(db.pool())
    .await
    .unwrap();
    let errors = ConsumerStats::get(&consumer.stats.transient_errors);
    manifest.extend(produce(&client, &topic, &messages(1_000, 60, 2)).await);
    wait_until(Duration::from_secs(20), "writes failing", || async {
        ConsumerStats::get(&consumer.stats.transient_errors) >= errors + 4
    })
    .await;

    // The writable node is back: new connections write. The bound is one retry backoff plus a
    // connection per partition, with margin.
    set_read_only(false).await;
    let bound = retry_max + Duration::from_secs(5);
    assert_resumed_within(&db, &group, &manifest, Instant::now(), bound).await;
    assert_invariants(db.pool(), &group, &manifest).await;
    consumer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_statement_timeouts_halve_the_batch_and_dead_letter_nothing() {
    let (db, broker, topic, group) = setup(1).await;
    // Every `messages` row takes 0.1 s to insert; a statement may take 1 s: a batch of 50 times
    // out, and so do 25 and 12; 6 fits.
    let slow_rows = |seconds: f64| {
        let pool = db.pool().clone();
        async move {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "CREATE OR REPLACE FUNCTION test_slow_row() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN PERFORM pg_sleep({seconds}); RETURN NEW; END $$; \
                 CREATE OR REPLACE TRIGGER test_slow_row BEFORE INSERT ON messages \
                 FOR EACH ROW EXECUTE FUNCTION test_slow_row()"
            )))
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    slow_rows(0.1).await;
    let client = broker.client_config();
    let mut manifest = produce(&client, &topic, &messages(1, 60, 1)).await;
    let mut cfg = config(&broker, &group, &topic);
    cfg.statement_timeout = Duration::from_secs(1);
    cfg.linger = Duration::from_millis(200);
    let consumer = RunningConsumer::start(cfg, db.pool().clone());
    wait_until(
        Duration::from_secs(40),
        "the slow records written in halved batches",
        || async { consumer.consumed() == 60 },
    )
    .await;
    let batches = ConsumerStats::get(&consumer.stats.batches_committed);
    assert!(
        batches >= 60 / 6,
        "{batches} batches for 60 records: the batches were halved to at most 6 records"
    );
    assert!(ConsumerStats::get(&consumer.stats.timeout_halvings) >= 3);

    // A record that times out on its own is retried, alerted, and never dead-lettered.
    slow_rows(1.5).await;
    manifest.extend(produce(&client, &topic, &messages(1_000, 20, 1)).await);
    wait_until(
        Duration::from_secs(30),
        "a single record timing out repeatedly",
        || async { ConsumerStats::get(&consumer.stats.record_timeouts) >= 2 },
    )
    .await;
    sqlx::query("DROP TRIGGER test_slow_row ON messages")
        .execute(db.pool())
        .await
        .unwrap();
    wait_for_log_end(db.pool(), &group, &manifest, Duration::from_secs(30)).await;
    assert_invariants(db.pool(), &group, &manifest).await;
    assert_eq!(ConsumerStats::get(&consumer.stats.dead_letters), 0);
    let letters: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(letters, 0, "a timeout is not the record's fault");
    consumer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_a_database_unreachable_at_startup_is_waited_for_not_an_exit() {
    let (db, broker, topic, group) = setup(2).await;
    let proxy = TcpProxy::start(postgres_address(&db).await).await.unwrap();
    // The server is down when the consumer starts: every connection is closed at once.
    proxy.refuse_new(true);
    let options = PgConnectOptions::from_str(db.url())
        .unwrap()
        .host("127.0.0.1")
        .port(proxy.port());
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy_with(options);
    let consumer = RunningConsumer::start(config(&broker, &group, &topic), pool);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        !consumer.has_exited(),
        "a transient failure of the startup checks is retried, not an exit"
    );
    proxy.refuse_new(false);
    let manifest = produce(&broker.client_config(), &topic, &messages(1, 60, 2)).await;
    wait_for_log_end(db.pool(), &group, &manifest, Duration::from_secs(45)).await;
    assert_invariants(db.pool(), &group, &manifest).await;
    consumer.stop().await;
}
