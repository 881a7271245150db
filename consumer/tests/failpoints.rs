//! Crash windows that signals cannot hit reliably, driven by failpoints (compiled only with
//! `--features failpoints`): a zombie inside its transaction, and COMMITs whose connection is cut.
//!
//! Failpoints are process-global, so the tests here take a lock and run one at a time.
#![cfg(feature = "failpoints")]
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use consumer::offsets::OffsetStore;
use consumer::projection::ProjectionSchema;
use consumer::record::ConsumedRecord;
use consumer::writer::{BatchWriter, PreparedRecord, WriteError};
use consumer::{AssignmentStrategy, ConsumerStats};
use processor::wire::header;
use testkit::TestDb;
use testkit::invariants::assert_invariants;
use testkit::sink::{RunningConsumer, wait_for_log_end};
use testkit::updates::{BOT, message, messages, produce};
use testkit::wait_until;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn record(offset: i64, value: Vec<u8>) -> PreparedRecord {
    PreparedRecord::prepare(ConsumedRecord {
        topic: "t".into(),
        partition: 0,
        offset,
        key: Some(format!("{BOT}:1").into_bytes()),
        payload: Some(value),
        headers: vec![(header::BOT_ID.into(), Some(BOT.to_string().into_bytes()))],
        timestamp_ms: Some(1_760_000_000_000),
    })
}

async fn writer(db: &TestDb, stats: Arc<ConsumerStats>) -> BatchWriter {
    let schema = Arc::new(ProjectionSchema::load(db.pool()).await.unwrap());
    BatchWriter::new(
        db.pool().clone(),
        "g",
        "t",
        Duration::from_secs(10),
        1,
        schema,
        stats,
    )
}

async fn raw_rows(db: &TestDb) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM raw_updates")
        .fetch_one(db.pool())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_cut_before_it_landed_is_resolved_as_aborted_and_redone() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let db = TestDb::create().await.unwrap();
    let stats = Arc::new(ConsumerStats::default());
    let w = writer(&db, stats.clone()).await;
    let mut owner = OffsetStore::new(db.pool().clone(), "g", "t")
        .take_ownership_from(0, 0)
        .await
        .unwrap();
    let batch: Vec<_> = (0..3)
        .map(|i| record(i, message(i + 1, -1, 2, i + 1, 1_760_000_000, "x")))
        .collect();

    fail::cfg("consumer::commit_connection_lost", "1*return(before)").unwrap();
    let err = w.write(&mut owner, &batch).await.unwrap_err();
    fail::remove("consumer::commit_connection_lost");
    assert!(matches!(err, WriteError::Transient(_)), "{err}");
    assert_eq!(ConsumerStats::get(&stats.commit_unknown_aborted), 1);
    assert_eq!(owner.next_offset, 0, "the position did not move");
    assert_eq!(raw_rows(&db).await, 0, "nothing landed");

    w.write(&mut owner, &batch).await.unwrap();
    assert_eq!(owner.next_offset, 3);
    assert_eq!(raw_rows(&db).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_cut_after_it_landed_is_resolved_as_committed_and_not_redone() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let db = TestDb::create().await.unwrap();
    let stats = Arc::new(ConsumerStats::default());
    let w = writer(&db, stats.clone()).await;
    let mut owner = OffsetStore::new(db.pool().clone(), "g", "t")
        .take_ownership_from(0, 0)
        .await
        .unwrap();
    let batch: Vec<_> = (0..3)
        .map(|i| record(i, message(i + 1, -1, 2, i + 1, 1_760_000_000, "x")))
        .collect();

    fail::cfg("consumer::commit_connection_lost", "1*return(after)").unwrap();
    let summary = w.write(&mut owner, &batch).await.unwrap();
    fail::remove("consumer::commit_connection_lost");
    assert_eq!(summary.records, 3);
    assert_eq!(ConsumerStats::get(&stats.commit_unknown_committed), 1);
    assert_eq!(owner.next_offset, 3);
    assert_eq!(raw_rows(&db).await, 3);
    let stored = OffsetStore::new(db.pool().clone(), "g", "t")
        .read(0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.next_offset, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_a_zombie_held_inside_its_transaction_is_fenced_and_the_checker_passes() {
    let _serial = SERIAL.lock().await;
    let (db, broker, topic, group) = setup(1).await;
    let mut cfg = config(&broker, &group, &topic);
    // Eager: every rebalance revokes and re-takes the partition, bumping its epoch.
    cfg.assignment_strategy = AssignmentStrategy::Range;
    // The revoke gives up on the held worker quickly; the database must fence it.
    cfg.revoke_timeout = Duration::from_secs(1);

    let first = RunningConsumer::start(cfg.clone(), db.pool().clone());
    wait_until(
        Duration::from_secs(30),
        "the first consumer owns the partition",
        || async { ConsumerStats::get(&first.stats.assignments) >= 1 },
    )
    .await;
    // Held for 8 s inside its first batch transaction, rows written, offset not yet moved.
    fail::cfg("consumer::before_offset_update", "1*return(8000)").unwrap();
    let mut manifest = produce(&broker.client_config(), &topic, &messages(1, 40, 1)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = RunningConsumer::start(cfg, db.pool().clone());

    wait_until(
        Duration::from_secs(40),
        "the held worker is fenced",
        || async { ConsumerStats::get(&first.stats.fenced_writes) >= 1 },
    )
    .await;
    fail::remove("consumer::before_offset_update");
    manifest.extend(produce(&broker.client_config(), &topic, &messages(1_000, 40, 1)).await);
    wait_for_log_end(db.pool(), &group, &manifest, Duration::from_secs(40)).await;
    assert_invariants(db.pool(), &group, &manifest).await;
    first.stop().await;
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_a_writer_frozen_after_its_offset_update_blocks_nobody_and_never_lands() {
    let _serial = SERIAL.lock().await;
    let (db, broker, topic, group) = setup(1).await;
    let mut cfg = config(&broker, &group, &topic);
    cfg.assignment_strategy = AssignmentStrategy::Range;
    cfg.revoke_timeout = Duration::from_secs(1);
    // Idle-in-transaction timeout is twice this: the frozen writer's session dies after 6 s.
    cfg.statement_timeout = Duration::from_secs(3);

    let first = RunningConsumer::start(cfg.clone(), db.pool().clone());
    wait_until(
        Duration::from_secs(30),
        "the first consumer owns the partition",
        || async { ConsumerStats::get(&first.stats.assignments) >= 1 },
    )
    .await;
    // Frozen for 12 s holding the offsets row lock (the offset update done, COMMIT not sent).
    fail::cfg("consumer::before_commit", "1*return(12000)").unwrap();
    let mut manifest = produce(&broker.client_config(), &topic, &messages(1, 40, 1)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = RunningConsumer::start(cfg, db.pool().clone());

    // While the writer is still frozen, its session is ended by the idle timeout and the next
    // owner gets through the ownership statement (liveness: a frozen zombie blocks nobody).
    let epoch = || async {
        sqlx::query_scalar::<_, i64>("SELECT owner_epoch FROM consumer_offsets WHERE group_id = $1")
            .bind(&group)
            .fetch_optional(db.pool())
            .await
            .unwrap()
            .unwrap_or(0)
    };
    wait_until(
        Duration::from_secs(10),
        "a new owner while the writer is frozen",
        || async { epoch().await >= 2 },
    )
    .await;
    // When it wakes, its COMMIT fails: the batch it held never lands twice.
    wait_until(
        Duration::from_secs(20),
        "the frozen writer's COMMIT fails",
        || async { ConsumerStats::get(&first.stats.transient_errors) >= 1 },
    )
    .await;
    fail::remove("consumer::before_commit");
    manifest.extend(produce(&broker.client_config(), &topic, &messages(1_000, 40, 1)).await);
    wait_for_log_end(db.pool(), &group, &manifest, Duration::from_secs(30)).await;
    assert_invariants(db.pool(), &group, &manifest).await;
    first.stop().await;
    second.stop().await;
}
