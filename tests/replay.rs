//! `tgingest replay` against a real broker (mock cluster by default; `TGINGEST_TEST_BROKER=tansu`
//! or `KAFKA_BROKERS` for the others) and a fresh PostgreSQL database: rewinds while consumers
//! run, time targets verified against record timestamps, processor-version reprocessing, and the
//! database-only rebuild.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use consumer::ConsumerStats;
use consumer::ops::replay::{self, ReplayTarget};
use processor::wire::{self, Subject, header};
use sqlx::PgPool;
use testkit::TestDb;
use testkit::invariants::InvariantChecker;
use testkit::sink::{log_ends, stored_offsets, wait_for_log_end, wait_for_offsets};
use testkit::updates::{BOT, Outgoing, edited, message, produce, produce_with, producer};
use testkit::wait_until;
use tgingest::progress::Progress;
use tokio_util::sync::CancellationToken;

mod common;
use common::*;

const PROJECTIONS: &[&str] = &["chats", "users", "messages", "message_edits"];

/// Every row of `table`: its content without the bookkeeping columns → (xmin, src_update_id,
/// processor_version, full row as text).
async fn rows(pool: &PgPool, table: &str) -> BTreeMap<String, (String, i64, i32, String)> {
    let source = if table == "raw_updates" {
        "update_id"
    } else {
        "src_update_id"
    };
    let sql = format!(
        "SELECT (to_jsonb(t) - 'updated_at' - 'processor_version')::text, xmin::text, \
                {source}, processor_version, to_jsonb(t)::text FROM {table} t"
    );
    let rows: Vec<(String, String, i64, i32, String)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .fetch_all(pool)
        .await
        .unwrap();
    rows.into_iter()
        .map(|(key, xmin, src, version, full)| (key, (xmin, src, version, full)))
        .collect()
}

/// `n_tup_upd` per table, after the consumer's backends have exited and flushed their counters.
async fn updates_counted(pool: &PgPool) -> BTreeMap<String, i64> {
    wait_until(
        Duration::from_secs(20),
        "the consumer's sessions are gone",
        || async {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            )
            .bind(CONSUMER_APP)
            .fetch_one(pool)
            .await
            .unwrap();
            n == 0
        },
    )
    .await;
    let read = || async {
        let mut conn = pool.acquire().await.unwrap();
        sqlx::query("SELECT pg_stat_clear_snapshot()")
            .execute(&mut *conn)
            .await
            .unwrap();
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT relname::text, n_tup_upd FROM pg_stat_user_tables \
             WHERE relname = ANY($1) ORDER BY relname",
        )
        .bind(
            PROJECTIONS
                .iter()
                .chain(&["raw_updates"])
                .map(|t| t.to_string())
                .collect::<Vec<_>>(),
        )
        .fetch_all(&mut *conn)
        .await
        .unwrap();
        rows.into_iter().collect::<BTreeMap<_, _>>()
    };
    // An exiting backend flushes its counters just after it leaves pg_stat_activity.
    let mut last = read().await;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = read().await;
        if now == last {
            return now;
        }
        last = now;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_replay_to_earliest_during_live_traffic_rewrites_no_row_and_the_checker_passes() {
    let (db, broker, topic, group) = setup(3).await;
    // History: 20 chats and 30 users shared by many messages, so replay meets every row again.
    let history: Vec<Outgoing> = (0..240)
        .map(|i| {
            let chat = -1_002_000_000_000 - (i % 20);
            Outgoing::update(
                (i % 3) as i32,
                chat,
                1_000 + i,
                message(
                    1_000 + i,
                    chat,
                    200_000 + (i % 30),
                    1_000 + i,
                    1_760_000_000 + i,
                    &format!("h{i}"),
                ),
            )
        })
        .collect();
    let mut manifest = produce(&broker.client_config(), &topic, &history).await;
    let first = start_consumer(config(&broker, &group, &topic), &db).await;
    wait_for_log_end(db.pool(), &group, &manifest, LOG_END_TIMEOUT).await;
    first.stop().await;
    let baseline_updates = updates_counted(db.pool()).await;
    let mut before = BTreeMap::new();
    for table in PROJECTIONS.iter().chain(&["raw_updates"]) {
        before.insert(*table, rows(db.pool(), table).await);
    }

    let running = start_consumer(config(&broker, &group, &topic), &db).await;
    // Live traffic: each update has its own chat and user, so it only inserts rows.
    let client = broker.client_config();
    let live_topic = topic.clone();
    let live_stop = CancellationToken::new();
    let stop = live_stop.clone();
    let live = tokio::spawn(async move {
        let producer = producer(&client);
        let mut produced = Vec::new();
        let mut round = 0_i64;
        // Until a second after the rewind, and at least 10 rounds.
        while round < 10 || !stop.is_cancelled() {
            round += 1;
            let batch: Vec<Outgoing> = (0..8)
                .map(|j| {
                    let id = 50_000 + round * 8 + j;
                    Outgoing::update(
                        (id % 3) as i32,
                        -1_003_000_000_000 - id,
                        id,
                        message(
                            id,
                            -1_003_000_000_000 - id,
                            300_000 + id,
                            id,
                            1_770_000_000 + id,
                            "live",
                        ),
                    )
                })
                .collect();
            produced.extend(produce_with(&producer, &live_topic, &batch).await);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        produced
    });
    // The rewind must reach workers that own their partitions and are writing live traffic.
    wait_until(
        Duration::from_secs(30),
        "the consumer works all partitions",
        || async { ConsumerStats::get(&running.stats.assignments) >= 3 && running.consumed() > 0 },
    )
    .await;
    let consumed_before = running.consumed();
    let plan = replay::plan(
        db.pool(),
        &broker.client_config(),
        &group,
        &topic,
        &[],
        ReplayTarget::Earliest,
    )
    .await
    .unwrap();
    assert_eq!(plan.partitions.len(), 3);
    assert!(plan.partitions.iter().all(|p| p.target == p.log_start));
    assert!(
        plan.total_rereads() >= 240,
        "the whole history is re-read: {plan:?}"
    );
    let applied = replay::apply(db.pool(), &plan, false).await.unwrap();
    assert!(
        applied
            .iter()
            .all(|a| a.next_offset == 0 && a.rewind_seq >= 1)
    );
    // Traffic goes on while the workers follow the rewind.
    tokio::time::sleep(Duration::from_secs(1)).await;
    live_stop.cancel();

    let live_manifest = live.await.unwrap();
    manifest.extend(live_manifest.iter().cloned());
    wait_for_log_end(db.pool(), &group, &manifest, LOG_END_TIMEOUT).await;
    let reread = running.consumed() - consumed_before;
    assert!(
        reread >= 240,
        "the running consumer re-read the history after the rewind (consumed {reread})"
    );
    assert!(
        ConsumerStats::get(&running.stats.rewinds_followed) >= 1,
        "workers followed the rewind"
    );
    running.stop().await;

    for (table, old) in &before {
        let now = rows(db.pool(), table).await;
        for (key, value) in old {
            assert_eq!(
                now.get(key),
                Some(value),
                "{table}: row {key} was rewritten or changed by the replay"
            );
        }
        let added = now.len() - old.len();
        let expected = if *table == "message_edits" {
            0
        } else {
            live_manifest.len()
        };
        assert_eq!(added, expected, "{table}: only the live updates added rows");
    }
    assert_eq!(
        updates_counted(db.pool()).await,
        baseline_updates,
        "no projection or raw row was updated (n_tup_upd)"
    );
    InvariantChecker::new(db.pool().clone(), &group)
        .check(&manifest)
        .await
        .unwrap()
        .assert_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_replay_by_time_rereads_exactly_the_records_at_or_after_that_time() {
    let (db, broker, topic, group) = setup(3).await;
    let base = 1_750_000_000_000_i64;
    // Partition p's record i has timestamp base + (i + 4p) s: the cut falls at a different
    // offset on each partition.
    let records: Vec<Outgoing> = (0..3)
        .flat_map(|p| {
            (0..30).map(move |i| {
                let id = 10_000 + p * 100 + i;
                let mut r = Outgoing::update(
                    p as i32,
                    -1_004_000_000_000 - p,
                    id,
                    message(
                        id,
                        -1_004_000_000_000 - p,
                        400_000 + i,
                        id,
                        1_760_000_000 + i,
                        "t",
                    ),
                );
                r.timestamp_ms = Some(base + (i + 4 * p) * 1_000);
                r
            })
        })
        .collect();
    let manifest = produce(&broker.client_config(), &topic, &records).await;
    let running = start_consumer(config(&broker, &group, &topic), &db).await;
    let ends = log_ends(&manifest);
    wait_for_offsets(db.pool(), &group, &ends, LOG_END_TIMEOUT).await;

    let cut = base + 17_500;
    let mut expected = BTreeMap::new();
    for r in &manifest {
        let ts = records
            .iter()
            .find(|o| o.value == *r.value.as_ref().unwrap())
            .and_then(|o| o.timestamp_ms)
            .unwrap();
        if ts >= cut {
            let first = expected.entry(r.partition).or_insert(r.offset);
            *first = (*first).min(r.offset);
        }
    }
    let plan = replay::plan(
        db.pool(),
        &broker.client_config(),
        &group,
        &topic,
        &[],
        ReplayTarget::Time(cut),
    )
    .await
    .unwrap();
    for p in &plan.partitions {
        assert_eq!(
            Some(&p.target),
            expected.get(&p.partition),
            "partition {}: {plan:?}",
            p.partition
        );
        assert_eq!(p.rereads(), ends[&p.partition] - p.target);
    }
    // Past the end (Tansu answers 0 here, the mock "end") and before the start.
    let past = replay::plan(
        db.pool(),
        &broker.client_config(),
        &group,
        &topic,
        &[1],
        ReplayTarget::Time(base + 3_600_000),
    )
    .await
    .unwrap();
    assert_eq!(past.partitions[0].target, ends[&1]);
    assert_eq!(past.partitions[0].rereads(), 0);
    let before = replay::plan(
        db.pool(),
        &broker.client_config(),
        &group,
        &topic,
        &[2],
        ReplayTarget::Time(base - 1),
    )
    .await
    .unwrap();
    assert_eq!(before.partitions[0].target, 0);

    let consumed_before = running.consumed();
    let applied = replay::apply(db.pool(), &plan, false).await.unwrap();
    for a in &applied {
        assert_eq!(
            a.next_offset, expected[&a.partition],
            "stored offset moved to the cut"
        );
    }
    wait_for_offsets(db.pool(), &group, &ends, LOG_END_TIMEOUT).await;
    // Let any further (wrong) re-read show up before counting.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let reread = running.consumed() - consumed_before;
    let want: i64 = expected.iter().map(|(p, first)| ends[p] - first).sum();
    assert_eq!(
        reread as i64, want,
        "exactly the records at or after the time were consumed again"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_a_processor_version_bump_and_replay_rewrite_exactly_the_affected_rows() {
    let (db, broker, topic, group) = setup(2).await;
    let chat = -1_005_000_000_000_i64;
    // Partition 0: the original messages. Partition 1: later edits of every third message (by
    // the same users in the same chat), and messages of another chat.
    let mut records = Vec::new();
    for i in 0..30_i64 {
        records.push(Outgoing::update(
            0,
            chat,
            20_000 + i,
            message(
                20_000 + i,
                chat,
                500_000 + i % 5,
                20_000 + i,
                1_760_000_000 + i,
                &format!("m{i}"),
            ),
        ));
    }
    for i in (0..30_i64).step_by(3) {
        records.push(Outgoing::update(
            1,
            chat,
            30_000 + i,
            edited(
                30_000 + i,
                chat,
                500_000 + i % 5,
                20_000 + i,
                1_760_000_000 + i,
                1_760_001_000 + i,
                &format!("edited {}", 20_000 + i),
            ),
        ));
    }
    for i in 0..10_i64 {
        records.push(Outgoing::update(
            1,
            chat - 1,
            40_000 + i,
            message(
                40_000 + i,
                chat - 1,
                600_000 + i,
                40_000 + i,
                1_760_000_500 + i,
                "other",
            ),
        ));
    }
    let manifest = produce(&broker.client_config(), &topic, &records).await;
    let ends = log_ends(&manifest);
    let first = start_consumer(config(&broker, &group, &topic), &db).await;
    wait_for_offsets(db.pool(), &group, &ends, LOG_END_TIMEOUT).await;
    first.stop().await;

    let old = processor::PROCESSOR_VERSION;
    let mut before = BTreeMap::new();
    for table in PROJECTIONS {
        before.insert(*table, rows(db.pool(), table).await);
    }
    let mut upgraded = config(&broker, &group, &topic);
    upgraded.processor_version = old + 1;
    let running = start_consumer(upgraded, &db).await;
    let plan = replay::plan(
        db.pool(),
        &broker.client_config(),
        &group,
        &topic,
        &[0],
        ReplayTarget::Earliest,
    )
    .await
    .unwrap();
    assert_eq!(plan.partitions.len(), 1);
    assert_eq!(plan.partitions[0].rereads(), 30);
    let consumed_before = running.consumed();
    replay::apply(db.pool(), &plan, false).await.unwrap();
    wait_until(Duration::from_secs(45), "partition 0 re-read", || async {
        running.consumed() - consumed_before >= 30
            && stored_offsets(db.pool(), &group).await.unwrap().get(&0) == Some(&ends[&0])
    })
    .await;
    running.stop().await;

    let replayed: BTreeSet<i64> = (20_000..20_030).collect();
    let (mut rewritten, mut kept) = (0, 0);
    for (table, old_rows) in &before {
        let now = rows(db.pool(), table).await;
        assert_eq!(now.len(), old_rows.len(), "{table}: no row added or lost");
        for (key, (xmin, src, version, _)) in old_rows {
            let (new_xmin, new_src, new_version, _) = now
                .get(key)
                .unwrap_or_else(|| panic!("{table}: {key} vanished"));
            assert_eq!(
                new_src, src,
                "{table}: {key} still derives from the same update"
            );
            if replayed.contains(src) {
                assert_eq!(
                    *new_version,
                    old + 1,
                    "{table}: {key} is rewritten by the newer processor"
                );
                assert_ne!(new_xmin, xmin, "{table}: {key} was rewritten");
                rewritten += 1;
            } else {
                assert_eq!(
                    (new_xmin, *new_version),
                    (xmin, *version),
                    "{table}: {key} derives from a newer or unreplayed update and is untouched"
                );
                kept += 1;
            }
        }
    }
    // The edited messages (10), their users and chat, and the other chat's rows stay untouched.
    assert!(
        rewritten >= 20 && kept >= 20,
        "both kinds occur: rewritten {rewritten}, kept {kept}"
    );
    let edited_kept: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM messages WHERE chat_id = $1 AND src_update_id >= 30000 AND processor_version = $2",
    )
    .bind(chat)
    .bind(old)
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(
        edited_kept, 10,
        "messages whose newest state is an edit are not regressed or rewritten"
    );
    let raw_raised: i64 =
        sqlx::query_scalar("SELECT count(*) FROM raw_updates WHERE processor_version = $1")
            .bind(old + 1)
            .fetch_one(db.pool())
            .await
            .unwrap();
    assert_eq!(
        raw_raised, 30,
        "exactly the replayed raw updates carry the new version"
    );
}

/// The consumer's batch writer for group "g", topic "t", owning partition 0 from offset 0.
async fn writer_owning_partition_0(
    pool: &PgPool,
) -> (consumer::writer::BatchWriter, consumer::Ownership) {
    let schema = Arc::new(
        consumer::projection::ProjectionSchema::load(pool)
            .await
            .unwrap(),
    );
    let writer = consumer::writer::BatchWriter::new(
        pool.clone(),
        "g",
        "t",
        Duration::from_secs(10),
        processor::PROCESSOR_VERSION,
        schema,
        Arc::new(ConsumerStats::default()),
    );
    let owner = consumer::OffsetStore::new(pool.clone(), "g", "t")
        .take_ownership_from(0, 0)
        .await
        .unwrap();
    (writer, owner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reprocess_from_db_restores_deleted_projections_and_rewrites_nothing_at_the_same_version() {
    let db = TestDb::create().await.unwrap();
    let pool = db.pool().clone();
    let (writer, mut owner) = writer_owning_partition_0(&pool).await;
    let chat = -1_006_000_000_000_i64;
    let records: Vec<consumer::writer::PreparedRecord> = (0..60_i64)
        .map(|i| {
            let bytes = if i % 4 == 3 {
                edited(
                    70_000 + i,
                    chat,
                    700_000 + i % 7,
                    70_000 + i - 3,
                    1_760_000_000 + i - 3,
                    1_760_002_000 + i,
                    &format!("edited {}", 70_000 + i - 3),
                )
            } else {
                message(
                    70_000 + i,
                    chat,
                    700_000 + i % 7,
                    70_000 + i,
                    1_760_000_000 + i,
                    &format!("r{i}"),
                )
            };
            consumer::writer::PreparedRecord::prepare(consumer::record::ConsumedRecord {
                topic: "t".into(),
                partition: 0,
                offset: i,
                key: Some(wire::record_key(BOT, &Subject::Chat(chat.to_string())).into_bytes()),
                payload: Some(bytes),
                headers: vec![(header::BOT_ID.into(), Some(BOT.to_string().into_bytes()))],
                timestamp_ms: Some(1_760_000_000_000 + i),
            })
        })
        .collect();
    writer.write(&mut owner, &records).await.unwrap();
    let before: BTreeMap<&str, _> = {
        let mut m = BTreeMap::new();
        for t in PROJECTIONS {
            m.insert(*t, rows(&pool, t).await);
        }
        m
    };
    assert_eq!(before["messages"].len(), 45);
    assert_eq!(before["message_edits"].len(), 15);

    sqlx::query("DELETE FROM messages")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM users")
        .execute(&pool)
        .await
        .unwrap();
    let summary =
        replay::reprocess_from_db(&pool, processor::PROCESSOR_VERSION, 7, &Progress::plain())
            .await
            .unwrap();
    assert_eq!(summary.raw_updates, 60);
    assert_eq!(summary.rejected, 0);
    assert_eq!(summary.raw_versions_raised, 0);
    for t in PROJECTIONS {
        let now = rows(&pool, t).await;
        let same: BTreeSet<_> = now.keys().collect();
        assert_eq!(
            same,
            before[t].keys().collect(),
            "{t}: the same rows as the consumer wrote"
        );
        if *t == "chats" || *t == "message_edits" {
            for (key, value) in &before[t] {
                assert_eq!(now.get(key), Some(value), "{t}: {key} was not rewritten");
            }
        }
    }
    assert_eq!(
        summary.rows_written.get("chats").copied().unwrap_or(0),
        0,
        "equal rows are not rewritten"
    );

    let upgraded = replay::reprocess_from_db(
        &pool,
        processor::PROCESSOR_VERSION + 1,
        1000,
        &Progress::plain(),
    )
    .await
    .unwrap();
    assert_eq!(upgraded.raw_versions_raised, 60);
    let stale: i64 =
        sqlx::query_scalar("SELECT count(*) FROM messages WHERE processor_version <> $1")
            .bind(processor::PROCESSOR_VERSION + 1)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        stale, 0,
        "a newer processor rewrites every row derived from the raw updates"
    );
    let again = replay::reprocess_from_db(
        &pool,
        processor::PROCESSOR_VERSION + 1,
        1000,
        &Progress::plain(),
    )
    .await
    .unwrap();
    assert!(
        again.rows_written.values().all(|n| *n == 0),
        "a second run at the same version writes nothing: {again:?}"
    );
}

/// DESIGN.md §5.8: reprocessing locks tables in the worker's order (raw_updates, then the
/// projections), so it never deadlocks with a live consumer writing the same keys. The test holds
/// what a worker holds after its first statement (the raw row), lets the reprocess run into it,
/// then takes what the worker takes next (the chat row): in the reverse order the reprocess would
/// already hold the chat row and one side would die with 40P01.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reprocess_from_db_takes_the_workers_table_order_and_never_deadlocks_with_it() {
    let db = TestDb::create().await.unwrap();
    let pool = db.pool().clone();
    let (writer, mut owner) = writer_owning_partition_0(&pool).await;
    let chat = -1_006_100_000_000_i64;
    let record = consumer::writer::PreparedRecord::prepare(consumer::record::ConsumedRecord {
        topic: "t".into(),
        partition: 0,
        offset: 0,
        key: Some(wire::record_key(BOT, &Subject::Chat(chat.to_string())).into_bytes()),
        payload: Some(message(
            81_000,
            chat,
            700_001,
            81_000,
            1_760_000_000,
            "hello",
        )),
        headers: vec![(header::BOT_ID.into(), Some(BOT.to_string().into_bytes()))],
        timestamp_ms: Some(1_760_000_000_000),
    });
    writer.write(&mut owner, &[record]).await.unwrap();

    // The "worker": its first table.
    let mut worker = pool.begin().await.unwrap();
    sqlx::query("SET LOCAL lock_timeout = '20s'")
        .execute(&mut *worker)
        .await
        .unwrap();
    sqlx::query("SELECT 1 FROM raw_updates WHERE bot_id = $1 AND update_id = 81000 FOR UPDATE")
        .bind(BOT)
        .fetch_one(&mut *worker)
        .await
        .unwrap();
    let reprocess = tokio::spawn({
        let pool = pool.clone();
        async move {
            replay::reprocess_from_db(
                &pool,
                processor::PROCESSOR_VERSION + 1,
                100,
                &Progress::plain(),
            )
            .await
        }
    });
    wait_until(
        Duration::from_secs(20),
        "the reprocess waits for the worker's row lock",
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            waiting >= 1
        },
    )
    .await;
    // The "worker": its next table, then COMMIT.
    let next =
        sqlx::query("UPDATE chats SET updated_at = now() WHERE bot_id = $1 AND chat_id = $2")
            .bind(BOT)
            .bind(chat)
            .execute(&mut *worker)
            .await;
    assert!(
        next.is_ok(),
        "the worker's second table is held by the reprocess: {next:?}"
    );
    worker.commit().await.unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(30), reprocess)
        .await
        .expect("the reprocess finishes once the worker committed")
        .unwrap();
    let summary = summary.expect("the reprocess is not a deadlock victim");
    assert_eq!(summary.raw_versions_raised, 1);
}

/// The command as an operator runs it: the plan by default (a table, or JSON), changes only
/// with `--execute`, never the epoch, and refuses skips.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_the_replay_command_shows_the_plan_unless_told_to_execute_it_and_refuses_skips() {
    let (db, broker, topic, group) = setup(2).await;
    let records: Vec<Outgoing> = (0..20_i64)
        .map(|i| {
            Outgoing::update(
                (i % 2) as i32,
                -1_007_000_000_000 - i % 2,
                80_000 + i,
                message(
                    80_000 + i,
                    -1_007_000_000_000 - i % 2,
                    800_000,
                    80_000 + i,
                    1_760_000_000 + i,
                    "x",
                ),
            )
        })
        .collect();
    let manifest = produce(&broker.client_config(), &topic, &records).await;
    let running = start_consumer(config(&broker, &group, &topic), &db).await;
    wait_for_log_end(db.pool(), &group, &manifest, LOG_END_TIMEOUT).await;
    running.stop().await;
    let row = |p: i32| {
        let pool = db.pool().clone();
        let group = group.clone();
        async move {
            sqlx::query_as::<_, (i64, i64, i64)>(
                "SELECT next_offset, owner_epoch, rewind_seq FROM consumer_offsets WHERE group_id = $1 AND partition = $2",
            )
            .bind(&group)
            .bind(p)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let before = row(0).await;
    let env = [
        ("DATABASE_URL", db.url()),
        ("KAFKA_BROKERS", broker.bootstrap_servers()),
    ];
    let base = [
        "replay",
        "--group",
        group.as_str(),
        "--topic",
        topic.as_str(),
    ];
    let run = |extra: &[&str]| tgingest(&[&base[..], extra].concat(), &env);
    let ok = |out: &std::process::Output| {
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };

    // No flag: the plan, and nothing changed.
    let text = ok(&run(&["--partitions", "0", "--to-offset", "4"]));
    assert!(
        text.contains("nothing changed") && text.contains("--execute"),
        "{text}"
    );
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some("0"))
        .unwrap_or_else(|| panic!("{text}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        cols,
        ["0", "0", "10", "10", "4", "6"],
        "partition, log start, end, stored, target, re-read: {text}"
    );
    assert_eq!(row(0).await, before, "showing the plan changes nothing");

    // The plan as JSON, and the old `--dry-run` still only shows it.
    let text = ok(&run(&["--partitions", "0", "--to-offset", "4", "--json"]));
    let json: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(json["executed"], false, "{json}");
    assert_eq!(json["plan"]["total_rereads"], 6, "{json}");
    let p0 = &json["plan"]["partitions"][0];
    assert_eq!(
        (
            &p0["partition"],
            &p0["stored"],
            &p0["target"],
            &p0["rereads"],
            &p0["skips"]
        ),
        (&0.into(), &10.into(), &4.into(), &6.into(), &0.into()),
        "{json}"
    );
    ok(&run(&[
        "--partitions",
        "0",
        "--to-offset",
        "4",
        "--dry-run",
    ]));
    assert_eq!(
        row(0).await,
        before,
        "neither --json nor --dry-run changes anything"
    );
    let out = run(&[
        "--partitions",
        "0",
        "--to-offset",
        "4",
        "--dry-run",
        "--execute",
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "--dry-run contradicts --execute"
    );
    assert_eq!(row(0).await, before);

    // --execute applies it.
    let text = ok(&run(&[
        "--partitions",
        "0",
        "--to-offset",
        "4",
        "--execute",
        "--json",
    ]));
    let json: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(json["executed"], true, "{json}");
    assert_eq!(json["applied"][0]["next_offset"], 4, "{json}");
    assert_eq!(
        row(0).await,
        (4, before.1, before.2 + 1),
        "next_offset moved, rewind_seq bumped, owner_epoch kept"
    );
    assert_eq!(row(1).await.0, 10, "partitions not named are untouched");

    let out = run(&["--partitions", "0", "--to-offset", "8", "--execute"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--allow-skip"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(row(0).await.0, 4, "a refused skip changes nothing");

    let out = run(&["--to-earliest", "--to-offset", "3"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "two targets are a configuration error"
    );

    // Rebuilding from the database: the plan counts the raw updates, --execute rebuilds.
    let reprocess = |extra: &[&str]| {
        tgingest(
            &[&["replay", "--reprocess-from-db", "--json"][..], extra].concat(),
            &[("DATABASE_URL", db.url())],
        )
    };
    let json: serde_json::Value = serde_json::from_str(&ok(&reprocess(&[]))).unwrap();
    assert_eq!(json["executed"], false, "{json}");
    assert_eq!(json["reprocess_from_db"]["raw_updates"], 20, "{json}");
    let json: serde_json::Value = serde_json::from_str(&ok(&reprocess(&["--execute"]))).unwrap();
    assert_eq!(json["executed"], true, "{json}");
    assert_eq!(json["summary"]["raw_updates"], 20, "{json}");
}
