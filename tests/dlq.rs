//! `tgingest dlq` against a fresh PostgreSQL database: dead letters are produced by the consumer's
//! own batch writer (no broker needed), then listed, shown, redriven and purged through the
//! library and the binary.
#![allow(clippy::unwrap_used)]

mod common;

use consumer::OffsetStore;
use consumer::ops::dead_letters::{self as dlq, ListFilter, Selection};
use consumer::record::ConsumedRecord;
use processor::wire::{self, EnvelopeReason, Subject, header};
use sqlx::PgPool;
use testkit::TestDb;
use testkit::invariants::{InvariantChecker, ProducedRecord, Violation};
use tgingest::progress::Progress;

const BOT: i64 = 7_200_000_001;
const CHAT: i64 = -1_008_000_000_000;
const TOPIC: &str = "tg.updates";
const GROUP: &str = "dlq-test";

fn message(update_id: i64, text: &str) -> Vec<u8> {
    serde_json::json!({
        "update_id": update_id,
        "message": {
            "message_id": update_id,
            "from": {"id": 900_001, "is_bot": false, "first_name": "Ann"},
            "chat": {"id": CHAT, "title": "Ops", "type": "supergroup"},
            "date": 1_760_000_000 + update_id,
            "text": text
        }
    })
    .to_string()
    .into_bytes()
}

fn record(offset: i64, payload: Vec<u8>, extra_headers: &[(&str, &str)]) -> ConsumedRecord {
    let mut headers = vec![
        (
            header::BOT_ID.to_owned(),
            Some(BOT.to_string().into_bytes()),
        ),
        (
            header::RECEIVED_AT.to_owned(),
            Some(b"1760000000000".to_vec()),
        ),
    ];
    for (k, v) in extra_headers {
        headers.push(((*k).to_owned(), Some(v.as_bytes().to_vec())));
    }
    ConsumedRecord {
        topic: TOPIC.to_owned(),
        partition: 0,
        offset,
        key: Some(wire::record_key(BOT, &Subject::Chat(CHAT.to_string())).into_bytes()),
        payload: Some(payload),
        headers,
        timestamp_ms: Some(1_760_000_000_000 + offset),
    }
}

fn manifest(records: &[ConsumedRecord]) -> Vec<ProducedRecord> {
    records.iter().map(ProducedRecord::from).collect()
}

/// Writes `records` (offsets 0..n of partition 0) through the consumer's batch writer.
async fn consume(pool: &PgPool, records: &[ConsumedRecord]) {
    testkit::direct::write_records(pool, GROUP, TOPIC, records)
        .await
        .expect("the consumer's writer writes the records");
}

/// Runs the binary against the test's database.
fn tgingest_on(args: &[&str], db: &TestDb) -> std::process::Output {
    common::tgingest(args, &[("DATABASE_URL", db.url())])
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

async fn letter_state(pool: &PgPool, offset: i64) -> (Option<i64>, i32, String) {
    sqlx::query_as(
        "SELECT (extract(epoch FROM resolved_at) * 1000000)::bigint, attempts, error_class \
         FROM dead_letters WHERE kafka_offset = $1",
    )
    .bind(offset)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_dead_letter_from_a_fixable_condition_is_redriven_into_rows_exactly_once() {
    let db = TestDb::create().await.unwrap();
    let pool = db.pool().clone();
    // The fixable condition: a constraint an operator added by mistake.
    sqlx::query(
        "ALTER TABLE messages ADD CONSTRAINT no_poison CHECK (text IS DISTINCT FROM 'poison')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let records = vec![
        record(0, message(1, "fine"), &[]),
        record(1, message(2, "poison"), &[]),
        record(2, message(3, "also fine"), &[]),
    ];
    consume(&pool, &records).await;
    let (resolved, attempts, class) = letter_state(&pool, 1).await;
    assert_eq!((resolved, attempts, class.as_str()), (None, 1, "db_23514"));

    let out = tgingest_on(&["dlq", "list", "--json"], &db);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["kafka_offset"], 1);
    assert_eq!(listed[0]["error_class"], "db_23514");
    let id = listed[0]["id"].as_i64().unwrap();

    let out = tgingest_on(&["dlq", "show", &id.to_string()], &db);
    let text = stdout(&out);
    assert!(out.status.success());
    assert!(
        text.contains("\"text\":\"poison\""),
        "the payload is shown: {text}"
    );
    assert!(text.contains("no_poison"), "the error is shown: {text}");
    assert!(
        text.contains(header::BOT_ID),
        "the headers are shown: {text}"
    );

    // Still broken: the redrive fails, counts the attempt and keeps the letter pending.
    let out = tgingest_on(&["dlq", "redrive", "--id", &id.to_string()], &db);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout(&out).contains("redriven: 0, still failing: 1"),
        "{}",
        stdout(&out)
    );
    assert_eq!(letter_state(&pool, 1).await.0, None);
    assert_eq!(letter_state(&pool, 1).await.1, 2);

    sqlx::query("ALTER TABLE messages DROP CONSTRAINT no_poison")
        .execute(&pool)
        .await
        .unwrap();
    let out = tgingest_on(&["dlq", "redrive", "--class", "db_23514"], &db);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout(&out).contains("redriven: 1,"), "{}", stdout(&out));
    let (resolved, attempts, _) = letter_state(&pool, 1).await;
    assert!(resolved.is_some(), "the letter is resolved");
    let (xmin, raw_offset): (String, i64) = sqlx::query_as(
        "SELECT m.xmin::text, r.kafka_offset FROM messages m \
         JOIN raw_updates r ON r.bot_id = m.bot_id AND r.update_id = m.src_update_id \
         WHERE m.text = 'poison'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(raw_offset, 1, "the raw row names the record's position");
    InvariantChecker::new(pool.clone(), GROUP)
        .check(&manifest(&records))
        .await
        .unwrap()
        .assert_ok();

    // Exactly once: a second redrive of the same letter changes nothing.
    let out = tgingest_on(&["dlq", "redrive", "--id", &id.to_string()], &db);
    assert!(out.status.success());
    assert!(
        stdout(&out)
            .contains("redriven: 0, still failing: 0, unchanged (already resolved or absent): 1"),
        "{}",
        stdout(&out)
    );
    let again = dlq::redrive(
        &pool,
        &Selection::All,
        processor::PROCESSOR_VERSION,
        None,
        &Progress::plain(),
    )
    .await
    .unwrap();
    assert!(again.redriven.is_empty() && again.still_failing.is_empty());
    assert_eq!(
        letter_state(&pool, 1).await,
        (resolved, attempts, "db_23514".to_owned())
    );
    let xmin_after: String =
        sqlx::query_scalar("SELECT xmin::text FROM messages WHERE text = 'poison'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(xmin_after, xmin, "the redriven row is not written twice");
    let pending = dlq::list(&pool, &ListFilter::default()).await.unwrap();
    assert!(pending.is_empty(), "nothing pending: {pending:?}");
}

#[tokio::test]
async fn an_envelope_is_redriven_from_its_original_bytes_and_a_hopeless_one_stays_pending() {
    let db = TestDb::create().await.unwrap();
    let pool = db.pool().clone();
    let original = message(10, "was too large once");
    let recoverable = wire::envelope_value(EnvelopeReason::TooLarge, "x", &original, true);
    let hopeless = wire::envelope_value(
        EnvelopeReason::NotAnUpdate,
        "the object has no update_id",
        br#"{"a":1}"#,
        true,
    );
    let records = vec![
        record(
            0,
            recoverable,
            &[
                (header::ERROR, "too_large: x"),
                (header::ORIGINAL_SIZE, "99"),
            ],
        ),
        record(
            1,
            hopeless,
            &[(header::ERROR, "not_an_update: no update_id")],
        ),
    ];
    consume(&pool, &records).await;
    let letters = dlq::list(&pool, &ListFilter::default()).await.unwrap();
    assert_eq!(letters.len(), 2);
    assert!(letters.iter().all(|l| l.error_class == "producer_envelope"));

    let outcome = dlq::redrive(
        &pool,
        &Selection::Class("producer_envelope".into()),
        processor::PROCESSOR_VERSION,
        None,
        &Progress::plain(),
    )
    .await
    .unwrap();
    assert_eq!(outcome.redriven, vec![letters[0].id]);
    assert_eq!(outcome.still_failing.len(), 1);
    assert_eq!(outcome.still_failing[0].0, letters[1].id);
    assert_eq!(outcome.still_failing[0].1, "no_update_id", "{outcome:?}");
    let text: String = sqlx::query_scalar("SELECT text FROM messages WHERE message_id = 10")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(text, "was too large once");
    let pending = dlq::list(&pool, &ListFilter::default()).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].attempts, 2);
    assert_eq!(pending[0].error_class, "no_update_id");
    let all = dlq::list(
        &pool,
        &ListFilter {
            include_resolved: true,
            ..ListFilter::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(all.len(), 2);
}

#[tokio::test]
async fn purge_refuses_without_yes_and_deletes_only_the_selection() {
    let db = TestDb::create().await.unwrap();
    let pool = db.pool().clone();
    let records: Vec<ConsumedRecord> = (0..3)
        .map(|i| record(i, b"not json".to_vec(), &[]))
        .collect();
    consume(&pool, &records).await;
    sqlx::query("UPDATE dead_letters SET resolved_at = now() WHERE kafka_offset = 0")
        .execute(&pool)
        .await
        .unwrap();
    let count = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM dead_letters")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    assert_eq!(count().await, 3);

    let out = tgingest_on(&["dlq", "purge", "--resolved"], &db);
    assert_eq!(out.status.code(), Some(2), "refused without --yes");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"));
    assert_eq!(count().await, 3);

    let out = tgingest_on(&["dlq", "purge", "--resolved", "--yes"], &db);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout(&out).contains("deleted 1 dead letters"));
    assert_eq!(count().await, 2);

    let since_future = tgingest_on(
        &["dlq", "list", "--since", "2999-01-01T00:00:00Z", "--json"],
        &db,
    );
    let listed: serde_json::Value = serde_json::from_slice(&since_future.stdout).unwrap();
    assert_eq!(
        listed.as_array().unwrap().len(),
        0,
        "the time filter applies"
    );
    let recent = tgingest_on(&["dlq", "list", "--since", "1h", "--partition", "0"], &db);
    assert!(
        stdout(&recent).contains("2 dead letters"),
        "{}",
        stdout(&recent)
    );
}

/// A replay as the consumer does it: the stored offset rewound to 0, then the same records read
/// again through the batch writer.
async fn replay(pool: &PgPool, records: &[ConsumedRecord]) {
    OffsetStore::new(pool.clone(), GROUP, TOPIC)
        .rewind(0, 0)
        .await
        .unwrap();
    consume(pool, records).await;
}

async fn tombstones(pool: &PgPool) -> Vec<(String, i64, Option<i64>, String)> {
    sqlx::query_as("SELECT kind, kafka_offset, bot_id, reason FROM tombstones ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_replay_after_a_redrive_never_reopens_the_resolved_letter() {
    let db = TestDb::create().await.unwrap();
    let pool = db.pool().clone();
    let original = message(20, "redriven from the envelope");
    let records = vec![
        record(0, message(19, "before"), &[]),
        record(
            1,
            wire::envelope_value(EnvelopeReason::TooLarge, "x", &original, true),
            &[
                (header::ERROR, "too_large: x"),
                (header::ORIGINAL_SIZE, "99"),
            ],
        ),
    ];
    consume(&pool, &records).await;
    let outcome = dlq::redrive(
        &pool,
        &Selection::All,
        processor::PROCESSOR_VERSION,
        None,
        &Progress::plain(),
    )
    .await
    .unwrap();
    assert_eq!(outcome.redriven.len(), 1, "{outcome:?}");
    let resolved = letter_state(&pool, 1).await;
    assert!(resolved.0.is_some());
    // The checker matches rows by bytes: a redriven envelope's rows hold the original bytes.
    let mut checked = manifest(&records);
    checked[1].value = Some(original.clone());
    let checker = InvariantChecker::new(pool.clone(), GROUP);
    checker.check(&checked).await.unwrap().assert_ok();

    // The replay reads the envelope again, which is still an envelope.
    replay(&pool, &records).await;
    let open = dlq::list(&pool, &ListFilter::default()).await.unwrap();
    assert!(
        open.is_empty(),
        "the replay re-opened a resolved letter: {open:?}"
    );
    assert_eq!(
        letter_state(&pool, 1).await,
        resolved,
        "the resolved letter is left as it was"
    );
    checker.check(&checked).await.unwrap().assert_ok();
}

#[tokio::test]
async fn a_purge_leaves_a_tombstone_that_a_replay_keeps_and_the_checker_counts() {
    let db = TestDb::create().await.unwrap();
    let pool = db.pool().clone();
    let records = vec![
        record(0, message(30, "kept"), &[]),
        record(1, b"not json".to_vec(), &[]),
        record(2, message(31, "kept too"), &[]),
    ];
    consume(&pool, &records).await;
    let letters = dlq::list(&pool, &ListFilter::default()).await.unwrap();
    assert_eq!(letters.len(), 1);
    let purged = dlq::purge(&pool, &Selection::Ids(vec![letters[0].id]))
        .await
        .unwrap();
    let checker = InvariantChecker::new(pool.clone(), GROUP);
    let report = checker.check(&manifest(&records)).await.unwrap();
    report.assert_ok();
    assert_eq!((purged.deleted, purged.tombstoned), (1, 1));
    assert_eq!((report.with_rows, report.tombstoned), (2, 1));
    let stones = tombstones(&pool).await;
    assert_eq!(stones.len(), 1, "{stones:?}");
    assert_eq!((stones[0].0.as_str(), stones[0].1), ("purged", 1));
    assert_eq!(stones[0].2, Some(BOT), "the record's bot is named");
    assert!(stones[0].3.contains("not_json"), "why: {}", stones[0].3);

    // The replay reads the record again: the tombstone stands, no letter comes back.
    replay(&pool, &records).await;
    let letters: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(letters, 0, "a purged record came back as a dead letter");
    assert_eq!(tombstones(&pool).await, stones);
    checker
        .check(&manifest(&records))
        .await
        .unwrap()
        .assert_ok();

    // A record with neither rows, nor a letter, nor a tombstone is still a violation.
    sqlx::query("DELETE FROM tombstones")
        .execute(&pool)
        .await
        .unwrap();
    let report = checker.check(&manifest(&records)).await.unwrap();
    assert!(
        matches!(
            report.violations.as_slice(),
            [Violation::Missing { offset: 1, .. }]
        ),
        "{report:?}"
    );
}
