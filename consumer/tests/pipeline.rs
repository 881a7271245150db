//! End-to-end tests of `consumer::run` in-process: a real broker (mock cluster by default,
//! `TGINGEST_TEST_BROKER=tansu` or `KAFKA_BROKERS` for the others) and a fresh PostgreSQL database.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use consumer::{AssignmentStrategy, ConsumerStats, OffsetStore};
use processor::wire::header;
use testkit::invariants::assert_invariants;
use testkit::sink::{RunningConsumer, wait_for_log_end};
use testkit::updates::{BOT, Outgoing, fixtures, message, messages, produce};
use testkit::wait_until;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_fixture_updates_and_messages_become_rows_and_the_checker_passes() {
    let (db, broker, topic, group) = setup(4).await;
    let mut outgoing: Vec<Outgoing> = fixtures()
        .into_iter()
        .enumerate()
        .map(|(i, (_, bytes))| {
            let update_id: i64 = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["update_id"].as_i64())
                .unwrap_or(i as i64);
            Outgoing::update((i % 4) as i32, i as i64, update_id, bytes)
        })
        .collect();
    let fixture_count = outgoing.len();
    assert!(
        fixture_count >= 20,
        "the fixtures are present ({fixture_count})"
    );
    outgoing.extend(messages(1_000, 300, 4));
    let manifest = produce(&broker.client_config(), &topic, &outgoing).await;

    let consumer = RunningConsumer::start(config(&broker, &group, &topic), db.pool().clone());
    wait_for_log_end(db.pool(), &group, &manifest, Duration::from_secs(45)).await;
    assert_invariants(db.pool(), &group, &manifest).await;

    let raw: i64 = sqlx::query_scalar("SELECT count(*) FROM raw_updates")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(
        raw as usize,
        fixture_count + 300,
        "one raw row per distinct update"
    );
    let text: String = sqlx::query_scalar(
        "SELECT text FROM messages WHERE bot_id = $1 AND chat_id = $2 AND message_id = $3",
    )
    .bind(BOT)
    .bind(-1_001_000_000_000_i64 - (1_150 % 7))
    .bind(1_150_i64)
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(text, "hello 1150");
    let users: i64 =
        sqlx::query_scalar("SELECT count(*) FROM users WHERE user_id BETWEEN 100000 AND 100012")
            .fetch_one(db.pool())
            .await
            .unwrap();
    assert_eq!(users, 13, "each generated user is upserted once");
    let json_ok: i64 =
        sqlx::query_scalar("SELECT count(*) FROM raw_updates WHERE payload IS NOT NULL")
            .fetch_one(db.pool())
            .await
            .unwrap();
    assert!(
        json_ok as usize >= fixture_count + 300 - 2,
        "payloads are queryable as jsonb"
    );
    let kafka_mirror_ok = consumer.consumed() as usize == manifest.len();
    assert!(
        kafka_mirror_ok,
        "every record consumed exactly once: {}",
        consumer.consumed()
    );
    consumer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_a_poison_record_becomes_a_dead_letter_while_its_batch_lands() {
    let (db, broker, topic, group) = setup(1).await;
    let mut outgoing = messages(1, 20, 1);
    outgoing.insert(
        7,
        Outgoing::update(0, 1, 0, b"{\"update_id\": \"not a number\"}".to_vec()),
    );
    outgoing.insert(
        12,
        Outgoing::update(0, 1, 0, b"\xff\xfe not utf-8".to_vec()),
    );
    let mut envelope = Outgoing::update(0, 1, 0, b"{\"original_size\": 12000000}".to_vec());
    envelope
        .headers
        .push((header::ERROR.into(), b"too_large: 12000000 bytes".to_vec()));
    outgoing.insert(15, envelope);
    let manifest = produce(&broker.client_config(), &topic, &outgoing).await;

    let consumer = RunningConsumer::start(config(&broker, &group, &topic), db.pool().clone());
    wait_for_log_end(db.pool(), &group, &manifest, Duration::from_secs(45)).await;
    assert_invariants(db.pool(), &group, &manifest).await;

    let dead: Vec<(i64, String, Option<Vec<u8>>)> = sqlx::query_as(
        "SELECT kafka_offset, error_class, payload FROM dead_letters WHERE resolved_at IS NULL ORDER BY kafka_offset",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    let classes: Vec<&str> = dead.iter().map(|d| d.1.as_str()).collect();
    assert_eq!(
        classes,
        ["update_id_not_integer", "not_utf8", "producer_envelope"]
    );
    assert_eq!(dead[0].0, manifest[7].offset);
    assert_eq!(
        dead[1].2.as_deref(),
        manifest[12].value.as_deref(),
        "the payload is kept byte-exact"
    );
    let raw: i64 = sqlx::query_scalar("SELECT count(*) FROM raw_updates")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(raw, 20, "every good record of the batch is written");
    assert_eq!(ConsumerStats::get(&consumer.stats.dead_letters), 3);
    consumer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_a_restart_resumes_from_stored_offsets_without_duplicates() {
    let (db, broker, topic, group) = setup(3).await;
    let mut manifest = produce(&broker.client_config(), &topic, &messages(1, 150, 3)).await;
    let first = RunningConsumer::start(config(&broker, &group, &topic), db.pool().clone());
    wait_for_log_end(db.pool(), &group, &manifest, Duration::from_secs(45)).await;
    assert_eq!(first.consumed(), 150);
    first.stop().await;

    manifest.extend(produce(&broker.client_config(), &topic, &messages(1_000, 90, 3)).await);
    let second = RunningConsumer::start(config(&broker, &group, &topic), db.pool().clone());
    wait_for_log_end(db.pool(), &group, &manifest, Duration::from_secs(45)).await;
    assert_invariants(db.pool(), &group, &manifest).await;
    assert_eq!(
        second.consumed(),
        90,
        "the restarted consumer reads only what is new"
    );
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_latest_skips_history_only_in_partitions_the_group_started_with() {
    // Neither test broker can add partitions: a group that started when the topic had two is
    // seeded instead, and partitions 2 and 3 play the ones added since.
    let (db, broker, topic, group) = setup(4).await;
    sqlx::query(
        "INSERT INTO consumer_group_starts (group_id, topic, partition_count) VALUES ($1, $2, 2)",
    )
    .bind(&group)
    .bind(&topic)
    .execute(db.pool())
    .await
    .expect("seeding the partitions the group started with");
    let before = produce(&broker.client_config(), &topic, &messages(1, 120, 4)).await;
    let mut config = config(&broker, &group, &topic);
    config.start_policy = consumer::StartPolicy::Latest;
    let consumer = RunningConsumer::start(config, db.pool().clone());
    // The older partitions start at their log end; only then is anything produced to them.
    let old_ends: std::collections::BTreeMap<i32, i64> = testkit::sink::log_ends(&before)
        .into_iter()
        .filter(|(p, _)| *p < 2)
        .collect();
    assert_eq!(old_ends.len(), 2, "the history covers partitions 0 and 1");
    testkit::sink::wait_for_offsets(db.pool(), &group, &old_ends, Duration::from_secs(45)).await;
    let after = produce(&broker.client_config(), &topic, &messages(1_000, 120, 4)).await;

    let everything: Vec<_> = before.iter().chain(&after).cloned().collect();
    wait_for_log_end(db.pool(), &group, &everything, Duration::from_secs(45)).await;
    let expected: Vec<_> = before
        .iter()
        .filter(|r| r.partition >= 2)
        .chain(&after)
        .cloned()
        .collect();
    assert_invariants(db.pool(), &group, &expected).await;
    let history_written: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT kafka_partition, count(*) FROM raw_updates \
         WHERE update_id < 1000 GROUP BY kafka_partition ORDER BY 1",
    )
    .fetch_all(db.pool())
    .await
    .expect("counting the history written");
    let history_in_new: Vec<(i32, i64)> = [2, 3]
        .into_iter()
        .map(|p| (p, before.iter().filter(|r| r.partition == p).count() as i64))
        .collect();
    assert_eq!(
        history_written, history_in_new,
        "records produced before the start land in the partitions added since, and only there"
    );
    consumer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_without_the_jsonb_copy_payloads_are_stored_as_bytes_only_and_read_by_raw_payload_jsonb()
 {
    let (db, broker, topic, group) = setup(2).await;
    let manifest = produce(&broker.client_config(), &topic, &messages(1, 60, 2)).await;
    let mut cfg = config(&broker, &group, &topic);
    cfg.store_jsonb = false;
    let running = RunningConsumer::start(cfg, db.pool().clone());
    wait_for_log_end(db.pool(), &group, &manifest, Duration::from_secs(45)).await;
    assert_invariants(db.pool(), &group, &manifest).await;
    let (raw, with_jsonb, readable): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(payload), count(raw_payload_jsonb(payload_bytes)) \
         FROM raw_updates",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(
        (raw, with_jsonb, readable),
        (60, 0, 60),
        "bytes only, every payload readable as jsonb on demand"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_an_exhausted_inflight_budget_still_drains_every_partition_exactly_once() {
    // A budget of one byte: a worker may take one record past it, so every batch holds exactly
    // one record, workers of six partitions take turns, and nothing waits for a linger.
    let (db, broker, topic, group) = setup(6).await;
    let manifest = produce(&broker.client_config(), &topic, &messages(1, 240, 6)).await;
    let mut cfg = config(&broker, &group, &topic);
    cfg.max_inflight_bytes = 1;
    cfg.linger = Duration::from_secs(30);
    let running = RunningConsumer::start(cfg, db.pool().clone());
    wait_for_log_end(db.pool(), &group, &manifest, Duration::from_secs(60)).await;
    assert_invariants(db.pool(), &group, &manifest).await;
    assert_eq!(running.consumed(), 240);
    assert_eq!(
        ConsumerStats::get(&running.stats.batches_committed),
        240,
        "with the budget exhausted by one record, every batch holds one record"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_a_budget_for_one_batch_is_handed_out_in_whole_batches() {
    // Room for one 50-record batch (and a half): six partitions with a backlog take turns,
    // and each turn fills a whole batch rather than six workers splitting the room.
    let (db, broker, topic, group) = setup(6).await;
    let outgoing = messages(1, 1_200, 6);
    let mean = mean_record_bytes(&outgoing);
    let manifest = produce(&broker.client_config(), &topic, &outgoing).await;
    let mut cfg = config(&broker, &group, &topic);
    cfg.max_inflight_bytes = mean * 75;
    let running = RunningConsumer::start(cfg, db.pool().clone());
    wait_for_log_end(db.pool(), &group, &manifest, Duration::from_secs(60)).await;
    assert_invariants(db.pool(), &group, &manifest).await;
    let batches = ConsumerStats::get(&running.stats.batches_committed);
    assert!(
        batches <= 1_200 / 35,
        "{batches} batches for 1200 records: the budget was split into slivers"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_behind_a_small_budget_no_partition_waits_while_another_commits_more_than_two_batches()
 {
    // 48 partitions, each preloaded with 5 batches of backlog, and room for 4 batches. A
    // partition waits from the commit of one of its batches to the start of its next; in that
    // time every other partition commits at most K = 2 batches: the budget grants reservations
    // in the order workers asked, one batch each (1 per wait), and one more may slip in between
    // the commit's offset update and the worker's return to the queue.
    const PARTITIONS: i32 = 48;
    const PER_PARTITION: i64 = 100;
    const BATCH: usize = 20;
    const K: i64 = 2;
    let (db, broker, topic, group) = setup(PARTITIONS).await;
    // On Tansu a partition between two batches can be waiting for its next fetch rather than
    // for the budget (seen: up to 4 commits of another partition in such a wait), so the count
    // would measure fetching, not the budget's order.
    testkit::require_broker(
        broker.kind(),
        &[testkit::BrokerKind::Mock],
        "needs every partition's backlog fetched ahead, as the mock cluster does",
    );
    // Every batch's offset update, with the time it ran (inside the batch transaction, so only
    // committed batches are logged).
    for statement in [
        "CREATE TABLE commit_log (partition integer, next_offset bigint, at timestamptz)",
        "CREATE FUNCTION log_commit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
             INSERT INTO commit_log VALUES (NEW.partition, NEW.next_offset, clock_timestamp()); \
             RETURN NEW; END $$",
        "CREATE TRIGGER log_commit AFTER UPDATE ON consumer_offsets FOR EACH ROW \
             WHEN (NEW.next_offset <> OLD.next_offset) EXECUTE FUNCTION log_commit()",
    ] {
        sqlx::query(statement).execute(db.pool()).await.unwrap();
    }
    let outgoing: Vec<Outgoing> = (0..PARTITIONS)
        .flat_map(|p| {
            (0..PER_PARTITION).map(move |i| {
                let update_id = 1 + i64::from(p) * PER_PARTITION + i;
                let chat_id = -1_001_000_000_000 - i64::from(p);
                let value = message(
                    update_id,
                    chat_id,
                    100_000 + i64::from(p),
                    i,
                    1_760_000_000 + i,
                    "hello",
                );
                Outgoing::update(p, chat_id, update_id, value)
            })
        })
        .collect();
    let mean = mean_record_bytes(&outgoing);
    let manifest = produce(&broker.client_config(), &topic, &outgoing).await;
    let mut cfg = config(&broker, &group, &topic);
    cfg.batch_max_records = BATCH;
    cfg.max_inflight_bytes = mean * BATCH * 4;
    let running = RunningConsumer::start(cfg, db.pool().clone());
    wait_for_log_end(db.pool(), &group, &manifest, Duration::from_secs(60)).await;
    assert_invariants(db.pool(), &group, &manifest).await;
    running.stop().await;

    // A wait of partition p: from a commit of p to the start of p's next batch (its rows'
    // inserted_at is its transaction's start). The most commits of one other partition in one.
    let batches: i64 = sqlx::query_scalar("SELECT count(*) FROM commit_log")
        .fetch_one(db.pool())
        .await
        .unwrap();
    let worst: Option<(i32, i32, i64)> = sqlx::query_as(
        "WITH waits AS ( \
             SELECT c.partition AS p, c.at AS from_at, min(r.inserted_at) AS to_at \
             FROM commit_log c \
             JOIN raw_updates r ON r.kafka_partition = c.partition \
                               AND r.kafka_offset = c.next_offset \
             GROUP BY c.partition, c.at) \
         SELECT w.p, o.partition, count(*) FROM waits w \
         JOIN commit_log o ON o.partition <> w.p AND o.at > w.from_at AND o.at < w.to_at \
         GROUP BY w.p, w.from_at, o.partition ORDER BY count(*) DESC LIMIT 1",
    )
    .fetch_optional(db.pool())
    .await
    .unwrap();
    assert!(
        batches >= i64::from(PARTITIONS) * 5,
        "{batches} batches: every partition's backlog is at least 5 batches"
    );
    if let Some((p, q, n)) = worst {
        assert!(
            n <= K,
            "partition {q} committed {n} batches while partition {p}, with a backlog, waited"
        );
    }
}

/// The mean bytes of the records (value and key), as the budget sizes them.
fn mean_record_bytes(outgoing: &[Outgoing]) -> usize {
    outgoing
        .iter()
        .map(|o| o.value.len() + o.key.len())
        .sum::<usize>()
        / outgoing.len()
}

async fn two_consumers_share_partitions(strategy: AssignmentStrategy) {
    let (db, broker, topic, group) = setup(6).await;
    let mut cfg = config(&broker, &group, &topic);
    cfg.assignment_strategy = strategy;
    let (a, b) = two_members(cfg, &db).await;
    let mut manifest = Vec::new();
    let client = broker.client_config();
    for round in 0..6 {
        manifest.extend(produce(&client, &topic, &messages(round * 1_000, 100, 6)).await);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    wait_for_log_end(db.pool(), &group, &manifest, Duration::from_secs(50)).await;
    assert_invariants(db.pool(), &group, &manifest).await;
    assert!(
        a.consumed() > 0 && b.consumed() > 0,
        "both consumers worked: {} and {}",
        a.consumed(),
        b.consumed()
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_two_cooperative_consumers_in_one_group_share_partitions_and_the_checker_passes() {
    two_consumers_share_partitions(AssignmentStrategy::CooperativeSticky).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_two_eager_consumers_in_one_group_share_partitions_and_the_checker_passes() {
    two_consumers_share_partitions(AssignmentStrategy::Range).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_a_replay_is_followed_by_the_running_consumer_and_rewrites_nothing() {
    let (db, broker, topic, group) = setup(2).await;
    let manifest = produce(&broker.client_config(), &topic, &messages(1, 120, 2)).await;
    let consumer = RunningConsumer::start(config(&broker, &group, &topic), db.pool().clone());
    wait_for_log_end(db.pool(), &group, &manifest, Duration::from_secs(45)).await;
    let snapshot = |pool: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, String>(
            "SELECT string_agg(m::text, '\n' ORDER BY chat_id, message_id) FROM messages m",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let before = snapshot(db.pool().clone()).await;

    let store = OffsetStore::new(db.pool().clone(), &group, &topic);
    for partition in 0..2 {
        store.rewind(partition, 0).await.unwrap();
    }
    wait_until(Duration::from_secs(30), "both replays followed", || async {
        ConsumerStats::get(&consumer.stats.rewinds_followed) >= 2
    })
    .await;
    wait_until(
        Duration::from_secs(30),
        "everything consumed twice",
        || async { consumer.consumed() >= 240 },
    )
    .await;
    wait_for_log_end(db.pool(), &group, &manifest, Duration::from_secs(30)).await;
    assert_invariants(db.pool(), &group, &manifest).await;
    assert_eq!(
        snapshot(db.pool().clone()).await,
        before,
        "equal input rewrites no row (updated_at unchanged)"
    );
    assert_eq!(
        ConsumerStats::get(&consumer.stats.fenced_writes),
        0,
        "a replay never fences the owner"
    );
    consumer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_terminated_postgres_backends_are_survived_and_the_checker_passes() {
    let (db, broker, topic, group) = setup(3).await;
    let app = format!("consumer-test-{}", testkit::random_suffix(8));
    let options: sqlx::postgres::PgConnectOptions = db.url().parse().unwrap();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(6)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options.application_name(&app))
        .await
        .unwrap();
    let consumer = RunningConsumer::start(config(&broker, &group, &topic), pool);
    let mut manifest = Vec::new();
    let mut terminated = 0i64;
    let client = broker.client_config();
    for round in 0..8 {
        manifest.extend(produce(&client, &topic, &messages(round * 1_000, 80, 3)).await);
        tokio::time::sleep(Duration::from_millis(150)).await;
        let killed: i64 = sqlx::query_scalar(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = $1",
        )
        .bind(&app)
        .fetch_one(db.pool())
        .await
        .unwrap();
        terminated += killed;
    }
    assert!(
        terminated > 0,
        "the test terminated some of the consumer's backends"
    );
    wait_for_log_end(db.pool(), &group, &manifest, Duration::from_secs(50)).await;
    assert_invariants(db.pool(), &group, &manifest).await;
    consumer.stop().await;
}

/// The mock cluster keeps about 5 MB per partition and silently deletes older record sets, which
/// is exactly retention deleting records the group had not written yet.
async fn deleted_records_are_recorded_as_a_gap(strategy: AssignmentStrategy) {
    let (db, broker, topic, group) = setup(1).await;
    testkit::require_broker(
        broker.kind(),
        &[testkit::BrokerKind::Mock],
        "deleting records needs the mock cluster's 5 MB log cap",
    );
    let big = "a".repeat(100_000);
    let outgoing: Vec<Outgoing> = (1..=70)
        .map(|i| Outgoing::update(0, -5, i, message(i, -5, 9, i, 1_760_000_000 + i, &big)))
        .collect();
    let manifest = produce(&broker.client_config(), &topic, &outgoing).await;
    // The group had a stored offset at 0 before the records were deleted.
    OffsetStore::new(db.pool().clone(), &group, &topic)
        .rewind(0, 0)
        .await
        .unwrap();

    let mut cfg = config(&broker, &group, &topic);
    cfg.assignment_strategy = strategy;
    let consumer = RunningConsumer::start(cfg, db.pool().clone());
    wait_for_log_end(db.pool(), &group, &manifest, Duration::from_secs(45)).await;
    let gaps: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT expected_offset, first_offset_seen FROM offset_gaps WHERE group_id = $1",
    )
    .bind(&group)
    .fetch_all(db.pool())
    .await
    .unwrap();
    assert_eq!(gaps.len(), 1, "one gap recorded: {gaps:?}");
    let (expected, first_seen) = gaps[0];
    assert_eq!(expected, 0);
    assert!(
        first_seen > 0 && first_seen < 70,
        "the log start moved: {first_seen}"
    );
    assert_eq!(ConsumerStats::get(&consumer.stats.offset_gaps), 1);

    // Everything still in the log is written exactly once; the checker names the gap.
    let kept: Vec<_> = manifest
        .iter()
        .filter(|r| r.offset >= first_seen)
        .cloned()
        .collect();
    let report = testkit::invariants::InvariantChecker::new(db.pool().clone(), &group)
        .check(&kept)
        .await
        .unwrap();
    assert_eq!(report.with_rows, kept.len());
    assert_eq!(
        report.violations,
        vec![testkit::invariants::Violation::OffsetGap {
            topic: topic.clone(),
            partition: 0,
            expected_offset: 0,
            first_offset_seen: first_seen,
        }]
    );
    consumer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_records_deleted_before_they_were_written_are_recorded_as_a_gap_cooperative() {
    deleted_records_are_recorded_as_a_gap(AssignmentStrategy::CooperativeSticky).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_records_deleted_before_they_were_written_are_recorded_as_a_gap_eager() {
    deleted_records_are_recorded_as_a_gap(AssignmentStrategy::Range).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_a_broker_outage_is_waited_out_and_the_checker_passes() {
    let (db, broker, topic, group) = setup(3).await;
    let consumer = RunningConsumer::start(config(&broker, &group, &topic), db.pool().clone());
    let mut manifest = produce(&broker.client_config(), &topic, &messages(1, 150, 3)).await;
    wait_for_log_end(db.pool(), &group, &manifest, Duration::from_secs(40)).await;
    broker.set_available(false).await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    broker.set_available(true).await.unwrap();
    manifest.extend(produce(&broker.client_config(), &topic, &messages(1_000, 150, 3)).await);
    wait_for_log_end(db.pool(), &group, &manifest, Duration::from_secs(45)).await;
    assert_invariants(db.pool(), &group, &manifest).await;
    consumer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_a_postgres_outage_longer_than_the_session_timeout_keeps_the_group_membership() {
    init_tracing();
    let cluster = testkit::PrivateCluster::start().await.unwrap();
    let admin = sqlx::PgPool::connect(&cluster.url("postgres"))
        .await
        .unwrap();
    sqlx::query("CREATE DATABASE sink")
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(6)
        .acquire_timeout(Duration::from_secs(2))
        .connect(&cluster.url("sink"))
        .await
        .unwrap();
    testkit::pg::MIGRATOR.run(&pool).await.unwrap();
    let broker = testkit::TestBroker::start().await.unwrap();
    let topic = broker.unique_topic("tg-updates");
    broker.create_topic(&topic, 3).await.unwrap();
    let group = broker.unique_group("sink");

    let consumer = RunningConsumer::start(config(&broker, &group, &topic), pool.clone());
    let mut manifest = produce(&broker.client_config(), &topic, &messages(1, 90, 3)).await;
    wait_until(
        Duration::from_secs(40),
        "the first records written",
        || async { consumer.consumed() == 90 },
    )
    .await;
    cluster.stop(testkit::StopMode::Fast).await.unwrap();
    manifest.extend(produce(&broker.client_config(), &topic, &messages(1_000, 90, 3)).await);
    // Longer than the 6 s session timeout: an evicted member would be revoked and re-assigned.
    tokio::time::sleep(Duration::from_secs(9)).await;
    cluster.start_again().await.unwrap();
    wait_until(
        Duration::from_secs(40),
        "everything written after the outage",
        || async { consumer.consumed() == 180 },
    )
    .await;
    assert!(
        ConsumerStats::get(&consumer.stats.transient_errors) > 0,
        "the outage was felt"
    );
    assert_eq!(
        ConsumerStats::get(&consumer.stats.revocations),
        0,
        "the member was never evicted"
    );
    let report = testkit::invariants::InvariantChecker::new(pool.clone(), &group)
        .check(&manifest)
        .await
        .unwrap();
    report.assert_ok();
    consumer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_a_missing_topic_is_a_startup_error_naming_it() {
    let (db, broker, _topic, group) = setup(1).await;
    let missing = broker.unique_topic("absent");
    let result = tokio::time::timeout(
        Duration::from_secs(40),
        consumer::run(
            config(&broker, &group, &missing),
            db.pool().clone(),
            tokio_util::sync::CancellationToken::new(),
            std::sync::Arc::new(consumer::NoReadiness),
        ),
    )
    .await
    .expect("startup fails promptly");
    let err = format!(
        "{:#}",
        result.expect_err("a missing topic must fail startup")
    );
    assert!(
        err.contains(&missing) && err.contains("does not exist"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_an_unmigrated_database_is_a_startup_error_saying_to_migrate() {
    init_tracing();
    let db = testkit::TestDb::create_empty().await.unwrap();
    let broker = testkit::TestBroker::start().await.unwrap();
    let result = consumer::run(
        config(&broker, "g", "t"),
        db.pool().clone(),
        tokio_util::sync::CancellationToken::new(),
        std::sync::Arc::new(consumer::NoReadiness),
    )
    .await;
    let err = format!(
        "{:#}",
        result.expect_err("an empty database must fail startup")
    );
    assert!(
        err.contains("raw_updates is missing") && err.contains("tgingest migrate"),
        "{err}"
    );
}
