//! The exactly-once checker notices every kind of damage it is meant to catch (a checker that
//! cannot fail would prove nothing).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use consumer::ConsumerStats;
use consumer::offsets::OffsetStore;
use consumer::projection::ProjectionSchema;
use consumer::record::ConsumedRecord;
use consumer::writer::{BatchWriter, PreparedRecord};
use processor::wire::header;
use testkit::TestDb;
use testkit::invariants::{InvariantChecker, ProducedRecord, Violation};
use testkit::updates::{BOT, message};

const TOPIC: &str = "t";

fn produced(offset: i64, value: Vec<u8>) -> ProducedRecord {
    ProducedRecord {
        topic: TOPIC.into(),
        topic_incarnation: 0,
        partition: 0,
        offset,
        key: Some(format!("{BOT}:1").into_bytes()),
        value: Some(value),
        headers: vec![(header::BOT_ID.into(), Some(BOT.to_string().into_bytes()))],
    }
}

fn prepared(r: &ProducedRecord) -> PreparedRecord {
    PreparedRecord::prepare(ConsumedRecord {
        topic: r.topic.clone(),
        partition: r.partition,
        offset: r.offset,
        key: r.key.clone(),
        payload: r.value.clone(),
        headers: r.headers.clone(),
        timestamp_ms: Some(1_760_000_000_000),
    })
}

/// Four records written by the real writer: three updates and one rejected record.
async fn written() -> (TestDb, Vec<ProducedRecord>) {
    let db = TestDb::create().await.unwrap();
    let schema = Arc::new(ProjectionSchema::load(db.pool()).await.unwrap());
    let w = BatchWriter::new(
        db.pool().clone(),
        "g",
        TOPIC,
        Duration::from_secs(10),
        1,
        schema,
        Arc::new(ConsumerStats::default()),
    );
    let manifest = vec![
        produced(0, message(1, -1, 2, 1, 1_760_000_000, "a")),
        produced(1, b"not json".to_vec()),
        produced(2, message(2, -1, 2, 2, 1_760_000_000, "b")),
        produced(3, message(3, -1, 2, 3, 1_760_000_000, "c")),
    ];
    let mut owner = OffsetStore::new(db.pool().clone(), "g", TOPIC)
        .take_ownership_from(0, 0)
        .await
        .unwrap();
    let batch: Vec<_> = manifest.iter().map(prepared).collect();
    w.write(&mut owner, &batch).await.unwrap();
    (db, manifest)
}

async fn violations(db: &TestDb, manifest: &[ProducedRecord]) -> Vec<Violation> {
    InvariantChecker::new(db.pool().clone(), "g")
        .check(manifest)
        .await
        .unwrap()
        .violations
}

#[tokio::test]
async fn an_intact_database_passes() {
    let (db, manifest) = written().await;
    let report = InvariantChecker::new(db.pool().clone(), "g")
        .check(&manifest)
        .await
        .unwrap();
    assert_eq!((report.with_rows, report.dead_lettered), (3, 1));
    report.assert_ok();
}

#[tokio::test]
async fn a_lost_record_and_a_stray_row_are_reported() {
    let (db, mut manifest) = written().await;
    sqlx::query("DELETE FROM raw_updates WHERE update_id = 2")
        .execute(db.pool())
        .await
        .unwrap();
    // A raw row nothing produced (written by someone else, or a corrupted payload).
    manifest[3].value = Some(message(3, -1, 2, 3, 1_760_000_000, "changed"));
    let v = violations(&db, &manifest).await;
    assert!(
        v.contains(&Violation::Missing {
            topic: TOPIC.into(),
            partition: 0,
            offset: 2,
            resolved_dead_letter: false
        }),
        "{v:?}"
    );
    assert!(
        v.contains(&Violation::Missing {
            topic: TOPIC.into(),
            partition: 0,
            offset: 3,
            resolved_dead_letter: false
        }),
        "{v:?}"
    );
    assert!(
        v.iter()
            .any(|x| matches!(x, Violation::UnexpectedRawRow { update_id: 3, .. })),
        "{v:?}"
    );
}

#[tokio::test]
async fn rows_and_an_open_dead_letter_for_one_record_are_reported() {
    let (db, manifest) = written().await;
    sqlx::query(
        "INSERT INTO dead_letters (topic, partition, kafka_offset, error_class, error_text) VALUES ('t', 0, 0, 'x', 'x')",
    )
    .execute(db.pool())
    .await
    .unwrap();
    assert_eq!(
        violations(&db, &manifest).await,
        vec![Violation::RowsAndDeadLetter {
            topic: TOPIC.into(),
            partition: 0,
            offset: 0
        }]
    );
}

#[tokio::test]
async fn an_offset_short_of_the_log_end_is_reported() {
    let (db, manifest) = written().await;
    assert_eq!(
        InvariantChecker::new(db.pool().clone(), "g")
            .with_log_end(TOPIC, 0, 5)
            .with_log_end(TOPIC, 1, 0)
            .check(&manifest)
            .await
            .unwrap()
            .violations,
        vec![Violation::OffsetNotAtLogEnd {
            topic: TOPIC.into(),
            partition: 0,
            stored: Some(4),
            log_end: 5
        }]
    );
    // A dead letter resolved without rows no longer accounts for its record.
    sqlx::query("UPDATE dead_letters SET resolved_at = now()")
        .execute(db.pool())
        .await
        .unwrap();
    assert_eq!(
        violations(&db, &manifest).await,
        vec![Violation::Missing {
            topic: TOPIC.into(),
            partition: 0,
            offset: 1,
            resolved_dead_letter: true
        }]
    );
}

/// Gives record `at` a `tg-received-at` header of `ms`.
fn received_at(manifest: &mut [ProducedRecord], at: usize, ms: i64) {
    manifest[at].headers.push((
        header::RECEIVED_AT.into(),
        Some(ms.to_string().into_bytes()),
    ));
}

async fn sql(db: &TestDb, statement: &str) {
    sqlx::query(sqlx::AssertSqlSafe(statement.to_owned()))
        .execute(db.pool())
        .await
        .unwrap();
}

#[tokio::test]
async fn erased_scrubbed_and_retained_records_are_accounted_for() {
    let (db, mut manifest) = written().await;
    received_at(&mut manifest, 3, 1_000);
    // Update 1 erased (its tombstone carries its digest), update 2 scrubbed in place, update 3
    // behind a record horizon with its row removed.
    sql(
        &db,
        "WITH gone AS (DELETE FROM raw_updates WHERE update_id = 1 \
                       RETURNING kafka_topic, kafka_partition, kafka_offset, payload_sha256) \
         INSERT INTO tombstones (kind, topic, partition, kafka_offset, payload_sha256, reason) \
         SELECT 'erased', kafka_topic, kafka_partition, kafka_offset, payload_sha256, 'test' FROM gone",
    )
    .await;
    sql(
        &db,
        "UPDATE raw_updates SET payload_bytes = '{\"update_id\":2}', scrubbed_at = now() \
         WHERE update_id = 2",
    )
    .await;
    sql(&db, "DELETE FROM raw_updates WHERE update_id = 3").await;
    sql(
        &db,
        "INSERT INTO retention_horizons (table_name, horizon, policy) \
         VALUES ('raw_updates', to_timestamp(2), '1 day')",
    )
    .await;
    // Rows deleted behind the writers' back leave the counts `status` reads too high.
    let report = InvariantChecker::new(db.pool().clone(), "g")
        .check(&manifest)
        .await
        .unwrap();
    assert_eq!(
        report.violations,
        vec![Violation::StoredCountMismatch {
            bot_id: BOT,
            topic: "t".to_owned(),
            partition: 0,
            counted: 3,
            stored: 1,
        }]
    );
    // What erasure and retention do with the rows they delete.
    sql(
        &db,
        &format!(
            "INSERT INTO raw_update_counts \
                 (bot_id, kafka_topic, kafka_partition, counted_by, updates) \
             VALUES ({BOT}, 't', 0, 'operator', -2)"
        ),
    )
    .await;
    let report = InvariantChecker::new(db.pool().clone(), "g")
        .check(&manifest)
        .await
        .unwrap();
    report.assert_ok();
    assert_eq!(
        (
            report.erased,
            report.scrubbed,
            report.retained,
            report.tombstoned,
            report.dead_lettered
        ),
        (1, 1, 1, 2, 1),
        "{report:?}"
    );

    // Another copy of the erased bytes, at a position the database never saw: erased too.
    let mut copy = manifest[0].clone();
    copy.offset = 4;
    manifest.push(copy);
    let report = InvariantChecker::new(db.pool().clone(), "g")
        .with_log_end(TOPIC, 0, 4)
        .check(&manifest)
        .await
        .unwrap();
    report.assert_ok();
    assert_eq!(report.erased, 2, "{report:?}");
    manifest.pop();

    // A record received after the horizon may not be without an effect.
    manifest[3].headers.pop();
    received_at(&mut manifest, 3, 3_000);
    assert_eq!(
        violations(&db, &manifest).await,
        vec![Violation::Missing {
            topic: TOPIC.into(),
            partition: 0,
            offset: 3,
            resolved_dead_letter: false
        }]
    );
}

#[tokio::test]
async fn a_tombstone_beside_a_row_at_its_position_and_a_changed_unscrubbed_row_are_reported() {
    let (db, manifest) = written().await;
    sql(
        &db,
        "INSERT INTO tombstones (kind, topic, partition, kafka_offset, reason) \
         VALUES ('erased', 't', 0, 0, 'test')",
    )
    .await;
    sql(
        &db,
        "UPDATE raw_updates SET payload_bytes = '{\"update_id\":2}' WHERE update_id = 2",
    )
    .await;
    let v = violations(&db, &manifest).await;
    assert!(
        v.contains(&Violation::TombstoneAndEffect {
            topic: TOPIC.into(),
            partition: 0,
            offset: 0,
            rows: true,
            open_dead_letter: false
        }),
        "{v:?}"
    );
    assert!(
        v.iter()
            .any(|x| matches!(x, Violation::UnexpectedRawRow { update_id: 2, .. })),
        "bytes that do not hash to the row's identity, without scrubbed_at: {v:?}"
    );
}
