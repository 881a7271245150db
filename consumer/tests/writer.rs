//! The batch writer against real PostgreSQL, without a broker: fencing, rewinds, isolation of
//! bad records, and order-independence of the written rows.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use consumer::ConsumerStats;
use consumer::offsets::{OffsetStore, Ownership};
use consumer::projection::ProjectionSchema;
use consumer::record::ConsumedRecord;
use consumer::writer::{BatchWriter, PreparedRecord, WriteError};
use processor::wire::header;
use proptest::prelude::*;
use sqlx::PgPool;
use testkit::TestDb;
use testkit::updates::{
    BOT, callback_query, chosen_inline_result, edited, inline_query, message, poll, poll_answer,
};

const TOPIC: &str = "tg.updates";
const GROUP: &str = "sink";

async fn writer(pool: &PgPool, processor_version: i32) -> BatchWriter {
    let schema = Arc::new(ProjectionSchema::load(pool).await.unwrap());
    BatchWriter::new(
        pool.clone(),
        GROUP,
        TOPIC,
        Duration::from_secs(10),
        processor_version,
        schema,
        Arc::new(ConsumerStats::default()),
    )
}

/// When the test records were received (tg-received-at, ms), unless a test says otherwise.
const RECEIVED_AT_MS: i64 = 1_760_000_000_000;

fn record(offset: i64, value: Vec<u8>) -> PreparedRecord {
    record_received_at(offset, value, RECEIVED_AT_MS)
}

fn record_received_at(offset: i64, value: Vec<u8>, received_at_ms: i64) -> PreparedRecord {
    PreparedRecord::prepare(ConsumedRecord {
        topic: TOPIC.into(),
        partition: 0,
        offset,
        key: Some(format!("{BOT}:1").into_bytes()),
        payload: Some(value),
        headers: vec![
            (header::BOT_ID.into(), Some(BOT.to_string().into_bytes())),
            (
                header::RECEIVED_AT.into(),
                Some(received_at_ms.to_string().into_bytes()),
            ),
        ],
        timestamp_ms: Some(received_at_ms),
    })
}

/// Records at offsets `first..`, one per payload.
fn records(first: i64, payloads: Vec<Vec<u8>>) -> Vec<PreparedRecord> {
    payloads
        .into_iter()
        .enumerate()
        .map(|(i, p)| record(first + i as i64, p))
        .collect()
}

async fn own(pool: &PgPool) -> Ownership {
    OffsetStore::new(pool.clone(), GROUP, TOPIC)
        .take_ownership_from(0, 0)
        .await
        .unwrap()
}

async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

#[tokio::test]
async fn a_batch_commits_its_rows_and_advances_the_offset_in_one_transaction() {
    let db = TestDb::create().await.unwrap();
    let w = writer(db.pool(), 1).await;
    let mut owner = own(db.pool()).await;
    let batch = records(
        0,
        (1..=5)
            .map(|i| message(i, -100, 42, i, 1_760_000_000, "hi"))
            .collect(),
    );
    let summary = w.write(&mut owner, &batch).await.unwrap();
    assert_eq!(
        (summary.records, summary.dead_letters, summary.transactions),
        (5, 0, 1)
    );
    assert_eq!(owner.next_offset, 5);
    let stored = OffsetStore::new(db.pool().clone(), GROUP, TOPIC)
        .read(0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.next_offset, 5);
    assert_eq!(count(db.pool(), "SELECT count(*) FROM messages").await, 5);
    assert_eq!(count(db.pool(), "SELECT count(*) FROM users").await, 1);
}

/// (stored updates, newest received_at in ms) of the test bot in the summary `status` reads.
async fn counted(pool: &PgPool) -> (i64, Option<i64>) {
    sqlx::query_as(
        "SELECT coalesce(sum(updates), 0)::bigint, \
                (extract(epoch FROM max(newest_received_at)) * 1000)::bigint \
         FROM raw_update_counts WHERE bot_id = $1",
    )
    .bind(BOT)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn the_status_summary_counts_each_stored_update_once_through_duplicates_and_version_bumps() {
    let db = TestDb::create().await.unwrap();
    let (v1, v2) = (writer(db.pool(), 1).await, writer(db.pool(), 2).await);
    let mut owner = own(db.pool()).await;
    let five: Vec<Vec<u8>> = (1..=5)
        .map(|i| message(i, -100, 42, i, 1_760_000_000, "hi"))
        .collect();
    v1.write(&mut owner, &records(0, five.clone()))
        .await
        .unwrap();
    assert_eq!(counted(db.pool()).await, (5, Some(RECEIVED_AT_MS)));
    // The same bytes again (a duplicate delivery), then with a newer processor (the stored rows'
    // processor_version is raised, nothing is inserted): still five.
    v1.write(&mut owner, &records(5, five.clone()))
        .await
        .unwrap();
    v2.write(&mut owner, &records(10, five)).await.unwrap();
    let bumped = count(
        db.pool(),
        "SELECT count(*) FROM raw_updates WHERE processor_version = 2",
    );
    assert_eq!(
        bumped.await,
        5,
        "the version bump did not happen: the test proves nothing"
    );
    assert_eq!(counted(db.pool()).await, (5, Some(RECEIVED_AT_MS)));
    // A new update received later, and an older one received earlier: six, then seven, the
    // newest time moves forward only.
    let later = record_received_at(
        15,
        message(6, -100, 42, 6, 1_760_000_000, "hi"),
        RECEIVED_AT_MS + 60_000,
    );
    v1.write(&mut owner, &[later]).await.unwrap();
    let earlier = record_received_at(
        16,
        message(7, -100, 42, 7, 1_760_000_000, "hi"),
        RECEIVED_AT_MS - 60_000,
    );
    v1.write(&mut owner, &[earlier]).await.unwrap();
    assert_eq!(counted(db.pool()).await, (7, Some(RECEIVED_AT_MS + 60_000)));
    assert_eq!(
        count(db.pool(), "SELECT count(*) FROM raw_updates").await,
        7
    );
}

#[tokio::test]
async fn a_worker_with_a_stale_epoch_is_fenced_and_writes_nothing() {
    let db = TestDb::create().await.unwrap();
    let w = writer(db.pool(), 1).await;
    let mut zombie = own(db.pool()).await;
    let store = OffsetStore::new(db.pool().clone(), GROUP, TOPIC);
    let successor = store.take_ownership(0).await.unwrap().unwrap();
    assert_eq!(successor.owner_epoch, zombie.owner_epoch + 1);

    let batch = records(0, vec![message(1, -100, 42, 1, 1_760_000_000, "zombie")]);
    let err = w.write(&mut zombie, &batch).await.unwrap_err();
    assert!(
        matches!(err, WriteError::Fenced { stored: Some(s) } if s.owner_epoch == successor.owner_epoch),
        "{err}"
    );
    assert_eq!(zombie.next_offset, 0);
    assert_eq!(
        count(db.pool(), "SELECT count(*) FROM raw_updates").await,
        0
    );
    assert_eq!(count(db.pool(), "SELECT count(*) FROM messages").await, 0);
    assert_eq!(store.read(0).await.unwrap().unwrap().next_offset, 0);
    // No connection is left inside a transaction.
    assert_eq!(
        count(db.pool(), "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state LIKE 'idle in transaction%'").await,
        0
    );
}

#[tokio::test]
async fn a_replay_is_reported_as_moved_not_fenced_and_writes_nothing() {
    let db = TestDb::create().await.unwrap();
    let w = writer(db.pool(), 1).await;
    let mut owner = own(db.pool()).await;
    w.write(
        &mut owner,
        &records(0, vec![message(1, -100, 42, 1, 1_760_000_000, "a")]),
    )
    .await
    .unwrap();
    let store = OffsetStore::new(db.pool().clone(), GROUP, TOPIC);
    let rewound = store.rewind(0, 0).await.unwrap();
    assert_eq!(
        (rewound.next_offset, rewound.owner_epoch, rewound.rewind_seq),
        (0, owner.owner_epoch, 1)
    );

    let err = w
        .write(
            &mut owner,
            &records(1, vec![message(2, -100, 42, 2, 1_760_000_001, "b")]),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, WriteError::Moved { stored } if stored.next_offset == 0 && stored.rewind_seq == 1),
        "{err}"
    );
    assert_eq!(
        count(db.pool(), "SELECT count(*) FROM raw_updates").await,
        1
    );
}

#[tokio::test]
async fn a_deterministic_database_error_isolates_the_record_as_a_dead_letter_and_the_rest_lands() {
    let db = TestDb::create().await.unwrap();
    // A constraint only one record violates stands in for any data-dependent error (22xxx/23xxx).
    sqlx::query(
        "ALTER TABLE messages ADD CONSTRAINT test_no_poison CHECK (text IS DISTINCT FROM 'poison')",
    )
    .execute(db.pool())
    .await
    .unwrap();
    let w = writer(db.pool(), 1).await;
    let mut owner = own(db.pool()).await;
    let payloads: Vec<Vec<u8>> = (1..=9)
        .map(|i| {
            message(
                i,
                -100,
                42,
                i,
                1_760_000_000,
                if i == 6 { "poison" } else { "fine" },
            )
        })
        .collect();
    let summary = w.write(&mut owner, &records(0, payloads)).await.unwrap();
    assert_eq!(summary.records, 9);
    assert_eq!(summary.dead_letters, 1);
    assert!(summary.transactions > 2, "the batch was split: {summary:?}");
    assert_eq!(owner.next_offset, 9);
    assert_eq!(count(db.pool(), "SELECT count(*) FROM messages").await, 8);
    let (offset, class): (i64, String) = sqlx::query_as(
        "SELECT kafka_offset, error_class FROM dead_letters WHERE resolved_at IS NULL",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!((offset, class.as_str()), (5, "db_23514"));
    assert_eq!(
        count(db.pool(), "SELECT count(*) FROM raw_updates").await,
        8,
        "the poison record has no rows"
    );
}

#[tokio::test]
async fn rows_for_a_record_resolve_its_open_dead_letter() {
    let db = TestDb::create().await.unwrap();
    sqlx::query(
        "ALTER TABLE messages ADD CONSTRAINT test_no_poison CHECK (text IS DISTINCT FROM 'poison')",
    )
    .execute(db.pool())
    .await
    .unwrap();
    let w = writer(db.pool(), 1).await;
    let mut owner = own(db.pool()).await;
    let batch = records(0, vec![message(1, -100, 42, 1, 1_760_000_000, "poison")]);
    w.write(&mut owner, &batch).await.unwrap();
    assert_eq!(
        count(
            db.pool(),
            "SELECT count(*) FROM dead_letters WHERE resolved_at IS NULL"
        )
        .await,
        1
    );

    // The operator fixes the cause and replays.
    sqlx::query("ALTER TABLE messages DROP CONSTRAINT test_no_poison")
        .execute(db.pool())
        .await
        .unwrap();
    let store = OffsetStore::new(db.pool().clone(), GROUP, TOPIC);
    let stored = store.rewind(0, 0).await.unwrap();
    owner.next_offset = stored.next_offset;
    owner.rewind_seq = stored.rewind_seq;
    w.write(&mut owner, &batch).await.unwrap();
    assert_eq!(
        count(
            db.pool(),
            "SELECT count(*) FROM dead_letters WHERE resolved_at IS NULL"
        )
        .await,
        0
    );
    assert_eq!(count(db.pool(), "SELECT count(*) FROM messages").await, 1);
}

#[tokio::test]
async fn payloads_jsonb_refuses_are_stored_as_bytes_not_dead_lettered() {
    let db = TestDb::create().await.unwrap();
    let w = writer(db.pool(), 1).await;
    let mut owner = own(db.pool()).await;
    let nul = br#"{"update_id":5,"message":{"message_id":1,"chat":{"id":-100,"type":"group","title":"t"},"date":1760000000,"text":"a\u0000b"}}"#.to_vec();
    let surrogate = br#"{"update_id":6,"message":{"message_id":2,"chat":{"id":-100,"type":"group","title":"t"},"date":1760000000,"text":"x\ud83dy"}}"#.to_vec();
    w.write(
        &mut owner,
        &records(0, vec![nul.clone(), surrogate.clone()]),
    )
    .await
    .unwrap();
    let rows: Vec<(Vec<u8>, bool)> =
        sqlx::query_as("SELECT payload_bytes, payload IS NULL FROM raw_updates ORDER BY update_id")
            .fetch_all(db.pool())
            .await
            .unwrap();
    assert_eq!(rows, vec![(nul, true), (surrogate, true)]);
    let texts: Vec<String> = sqlx::query_scalar("SELECT text FROM messages ORDER BY message_id")
        .fetch_all(db.pool())
        .await
        .unwrap();
    assert_eq!(texts, ["a\u{fffd}b", "x\u{fffd}y"]);
    assert_eq!(
        count(db.pool(), "SELECT count(*) FROM dead_letters").await,
        0
    );
}

#[tokio::test]
async fn without_the_jsonb_copy_payloads_are_bytes_only_and_raw_payload_jsonb_reads_them() {
    let db = TestDb::create().await.unwrap();
    let w = writer(db.pool(), 1)
        .await
        .with_jsonb(consumer::writer::JsonbPayload::Never);
    let mut owner = own(db.pool()).await;
    let plain = message(5, -100, 42, 1, 1_760_000_000, "hi");
    let nul = br#"{"update_id":6,"message":{"message_id":2,"chat":{"id":-100,"type":"group","title":"t"},"date":1760000000,"text":"a\u0000b"}}"#.to_vec();
    let surrogate = br#"{"update_id":7,"message":{"message_id":3,"chat":{"id":-100,"type":"group","title":"t"},"date":1760000000,"text":"x\ud83dy"}}"#.to_vec();
    let summary = w
        .write(
            &mut owner,
            &records(0, vec![plain.clone(), nul.clone(), surrogate.clone()]),
        )
        .await
        .unwrap();
    // One transaction: no payload was refused, because none was converted.
    assert_eq!((summary.transactions, summary.dead_letters), (1, 0));
    type Row = (Vec<u8>, bool, Option<String>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT payload_bytes, payload IS NULL, raw_payload_jsonb(payload_bytes)::text \
         FROM raw_updates ORDER BY update_id",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    let expected: String = sqlx::query_scalar("SELECT convert_from($1, 'UTF8')::jsonb::text")
        .bind(&plain)
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(
        rows,
        vec![
            (plain, true, Some(expected)),
            (nul, true, None),
            (surrogate, true, None),
        ]
    );
    assert_eq!(count(db.pool(), "SELECT count(*) FROM messages").await, 3);
    assert_eq!(counted(db.pool()).await.0, 3);
}

#[tokio::test]
async fn edits_out_of_order_and_before_their_message_end_with_the_newest_text_and_full_history() {
    let db = TestDb::create().await.unwrap();
    let w = writer(db.pool(), 1).await;
    let mut owner = own(db.pool()).await;
    let t = 1_760_000_000;
    // Delivered: second edit, first edit, then the original message, each in its own batch.
    let deliveries = [
        edited(12, -100, 42, 77, t, t + 20, "third version"),
        edited(11, -100, 42, 77, t, t + 10, "second version"),
        message(10, -100, 42, 77, t, "first version"),
    ];
    for (offset, payload) in deliveries.into_iter().enumerate() {
        w.write(&mut owner, &records(offset as i64, vec![payload]))
            .await
            .unwrap();
    }
    let text: String =
        sqlx::query_scalar("SELECT text FROM messages WHERE chat_id = -100 AND message_id = 77")
            .fetch_one(db.pool())
            .await
            .unwrap();
    assert_eq!(text, "third version");
    let history: Vec<(i64, String)> = sqlx::query_as(
        "SELECT src_update_id, text FROM message_edits WHERE chat_id = -100 AND message_id = 77 ORDER BY edit_date",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    assert_eq!(
        history,
        vec![(11, "second version".into()), (12, "third version".into())]
    );
}

#[tokio::test]
async fn a_newer_processor_version_rewrites_rows_of_the_same_update_but_never_beats_a_newer_update()
{
    let db = TestDb::create().await.unwrap();
    let v1 = writer(db.pool(), 1).await;
    let v2 = writer(db.pool(), 2).await;
    let mut owner = own(db.pool()).await;
    let t = 1_760_000_000;
    v1.write(
        &mut owner,
        &records(
            0,
            vec![
                message(1, -100, 42, 1, t, "old"),
                edited(2, -100, 42, 1, t, t + 5, "new"),
            ],
        ),
    )
    .await
    .unwrap();
    // A replay of the original message with a newer processor must not regress the edit.
    v2.write(
        &mut owner,
        &records(2, vec![message(1, -100, 42, 1, t, "old")]),
    )
    .await
    .unwrap();
    let (text, version): (String, i32) =
        sqlx::query_as("SELECT text, processor_version FROM messages WHERE message_id = 1")
            .fetch_one(db.pool())
            .await
            .unwrap();
    assert_eq!((text.as_str(), version), ("new", 1));
    // A replay of the edit itself with the newer processor rewrites its rows.
    v2.write(
        &mut owner,
        &records(3, vec![edited(2, -100, 42, 1, t, t + 5, "new")]),
    )
    .await
    .unwrap();
    let version: i32 =
        sqlx::query_scalar("SELECT processor_version FROM messages WHERE message_id = 1")
            .fetch_one(db.pool())
            .await
            .unwrap();
    assert_eq!(version, 2);
}

/// The name `users` holds for user 42.
async fn user_name(pool: &PgPool) -> String {
    sqlx::query_scalar("SELECT first_name FROM users WHERE user_id = 42")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_late_webhook_retry_of_an_older_dateless_update_never_overwrites_a_newer_one() {
    let db = TestDb::create().await.unwrap();
    let w = writer(db.pool(), 1).await;
    let t = RECEIVED_AT_MS;
    let older = callback_query(10, "cb1", 42, "Old", -100, 1, "a");
    let newer = inline_query(11, "iq1", 42, "New", "q");
    let deliveries = [
        (older.clone(), t),
        (newer, t + 1_000),
        // Telegram retries the callback query's webhook a minute later.
        (older, t + 60_000),
    ];
    apply(db.pool(), &w, &deliveries, 1).await;
    assert_eq!(user_name(db.pool()).await, "New");
    // A dated message with an older update id loses to the dateless newer one too.
    let message = message(9, -100, 42, 5, 1_800_000_000, "hi");
    apply(db.pool(), &w, &[(message, t + 120_000)], 1).await;
    assert_eq!(user_name(db.pool()).await, "New");
}

#[tokio::test]
async fn after_an_update_id_restart_the_new_epoch_wins_and_old_copies_never_beat_it() {
    let db = TestDb::create().await.unwrap();
    let w = writer(db.pool(), 1).await;
    let t = RECEIVED_AT_MS;
    let day = 86_400_000;
    let old = callback_query(1_000, "cb1", 42, "Old", -100, 1, "a");
    let batches = [
        vec![(old.clone(), t)],
        // A week without updates: Telegram restarts the ids, lower. In the same batch, a copy of
        // the old update that some retry path received even later.
        vec![
            (inline_query(5, "iq1", 42, "Restarted", "q"), t + 7 * day),
            (old.clone(), t + 7 * day + 1_000),
        ],
        // A replay of the old update's record, and the first copy of another old update (a
        // late redrive), both received before the restart.
        vec![
            (old, t),
            (inline_query(1_001, "iq2", 42, "Late", "q"), t + 60_000),
        ],
    ];
    for batch in batches {
        apply(db.pool(), &w, &batch, batch.len()).await;
    }
    assert_eq!(user_name(db.pool()).await, "Restarted");
    let epochs: Vec<(i64, i64)> =
        sqlx::query_as("SELECT update_id, update_epoch FROM raw_updates ORDER BY update_id")
            .fetch_all(db.pool())
            .await
            .unwrap();
    assert_eq!(epochs, [(5, 1), (1_000, 0), (1_001, 0)]);
}

#[tokio::test]
async fn a_batch_that_changes_no_shared_row_never_waits_on_a_hot_chat_or_user() {
    let db = TestDb::create().await.unwrap();
    let w = writer(db.pool(), 1).await;
    let t = RECEIVED_AT_MS;
    let stored = [
        (message(10, -100, 42, 1, 1_760_000_000, "hi"), t),
        (callback_query(11, "cb1", 42, "New", -100, 1, "a"), t),
    ];
    apply(db.pool(), &w, &stored, 2).await;

    // Another transaction (another partition's worker, an operator) holds every shared row the
    // batch will meet: the chat, the user, the bot's update-id epochs.
    let mut holder = db.pool().begin().await.unwrap();
    let mut tables: Vec<&str> = consumer::projection::ProjectionTable::ALL
        .iter()
        .filter(|t| t.shared_state())
        .map(|t| t.name())
        .collect();
    tables.push("bot_update_epochs");
    for table in &tables {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT 1 FROM {table} FOR UPDATE"
        )))
        .fetch_all(&mut *holder)
        .await
        .unwrap();
    }

    // A replay of the stored updates, unchanged, and an older update of the same user and chat:
    // the guard refuses every stored shared row, so the batch must not wait for the holder.
    let mut owner = own(db.pool()).await;
    let replay = [
        record_received_at(owner.next_offset, stored[0].0.clone(), t),
        record_received_at(owner.next_offset + 1, stored[1].0.clone(), t),
        record_received_at(
            owner.next_offset + 2,
            callback_query(9, "cb0", 42, "Old", -100, 1, "b"),
            t,
        ),
    ];
    let written = tokio::time::timeout(Duration::from_secs(5), w.write(&mut owner, &replay))
        .await
        .expect("a batch that changes no shared row waited for another transaction's row lock")
        .unwrap();
    assert_eq!(written.records, 3);
    holder.rollback().await.unwrap();
    assert_eq!(user_name(db.pool()).await, "New");
    assert_eq!(
        count(db.pool(), "SELECT count(*) FROM raw_updates").await,
        3
    );
    assert_eq!(
        count(db.pool(), "SELECT count(*) FROM callback_queries").await,
        2
    );
}

/// Every projection table's content, as text, in key order (updated_at excluded: it records when,
/// not what).
async fn projection_state(pool: &PgPool) -> Vec<String> {
    let mut state = Vec::new();
    for table in consumer::projection::ProjectionTable::ALL {
        let sql = format!(
            "SELECT coalesce(string_agg(r, E'\\n' ORDER BY r), '') FROM \
             (SELECT (to_jsonb(t) - 'updated_at')::text AS r FROM {table} t) s"
        );
        let rows: String = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(pool)
            .await
            .unwrap();
        state.push(format!("{table}:\n{rows}"));
    }
    let raw: String = sqlx::query_scalar(
        "SELECT coalesce(string_agg(encode(payload_bytes, 'escape'), E'\\n' ORDER BY bot_id, update_id, payload_sha256), '') FROM raw_updates",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    state.push(raw);
    state
}

async fn reset(pool: &PgPool) {
    let tables: Vec<&str> = consumer::projection::ProjectionTable::ALL
        .iter()
        .map(|t| t.name())
        .collect();
    let sql = format!(
        "TRUNCATE raw_updates, raw_update_counts, bot_update_epochs, dead_letters, \
         consumer_offsets, {}",
        tables.join(", ")
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(pool)
        .await
        .unwrap();
}

/// Applies `deliveries` (payload, receive time in ms) in batches of `batch` records.
async fn apply(pool: &PgPool, w: &BatchWriter, deliveries: &[(Vec<u8>, i64)], batch: usize) {
    let mut owner = own(pool).await;
    for chunk in deliveries.chunks(batch.max(1)) {
        let first = owner.next_offset;
        let batch: Vec<PreparedRecord> = chunk
            .iter()
            .enumerate()
            .map(|(i, (payload, received))| {
                record_received_at(first + i as i64, payload.clone(), *received)
            })
            .collect();
        w.write(&mut owner, &batch).await.unwrap();
    }
}

/// Updates of every projected kind, in update-id order: messages and edits (some before the
/// original), and the dateless kinds — callback and inline queries, chosen inline results,
/// polls, poll answers — whose users and chats are the same as the messages' (the same user
/// under changing names), so dated and dateless rows of `users` and `chats` compete.
fn update_history() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec((0i64..3, 0i64..4, 0i64..4, 0u8..9, "[a-z]{0,6}"), 1..40).prop_map(
        |specs| {
            specs
                .into_iter()
                .enumerate()
                .map(|(i, (chat, msg, user, kind, text))| {
                    let update_id = 500 + i as i64;
                    let chat_id = -100 - chat;
                    let user_id = 42 + user;
                    let date = 1_760_000_000 + msg * 10;
                    match kind {
                        0 => message(update_id, chat_id, user_id, msg, date, &text),
                        // Edits share dates on purpose: equal edit_date, the update id decides.
                        1 | 2 => edited(
                            update_id,
                            chat_id,
                            user_id,
                            msg,
                            date,
                            date + 5 + i as i64 % 3,
                            &text,
                        ),
                        3 => callback_query(
                            update_id,
                            &format!("cb{msg}"),
                            user_id,
                            &text,
                            chat_id,
                            msg,
                            &text,
                        ),
                        4 => inline_query(update_id, &format!("iq{msg}"), user_id, &text, &text),
                        5 => chosen_inline_result(
                            update_id,
                            &format!("r{msg}"),
                            user_id,
                            &text,
                            &text,
                        ),
                        6 => poll(update_id, &format!("p{msg}"), &text, user),
                        7 => {
                            poll_answer(update_id, &format!("p{msg}"), user_id, &text, &[user % 2])
                        }
                        _ => poll_answer(update_id, &format!("p{msg}"), user_id, &text, &[]),
                    }
                })
                .collect()
        },
    )
}

#[test]
fn shuffled_duplicated_redelivery_converges_to_the_in_order_rows() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (in_order_db, shuffled_db) = runtime.block_on(async {
        (
            TestDb::create().await.unwrap(),
            TestDb::create().await.unwrap(),
        )
    });
    let (w1, w2) = runtime.block_on(async {
        (
            writer(in_order_db.pool(), 1).await,
            writer(shuffled_db.pool(), 1).await,
        )
    });
    let config = ProptestConfig {
        cases: 24,
        ..ProptestConfig::default()
    };
    proptest!(config, |(
        history in update_history(),
        seed in any::<u64>(),
        duplicates in prop::collection::vec(any::<prop::sample::Index>(), 0..15),
        batch_in_order in 1usize..8,
        batch_shuffled in 1usize..8,
        // Any receive time within 5 days (a webhook retry comes later than a newer update; a
        // restart of update ids needs 7 days of silence, so this is one epoch).
        received in prop::collection::vec(0i64..5 * 86_400_000, 60),
    )| {
        // In order: received one second apart, in update-id order.
        let in_order: Vec<(Vec<u8>, i64)> = history
            .iter()
            .enumerate()
            .map(|(i, p)| (p.clone(), RECEIVED_AT_MS + 1_000 * i as i64))
            .collect();
        let mut redelivered = history.clone();
        for d in &duplicates {
            redelivered.push(history[d.index(history.len())].clone());
        }
        // A deterministic Fisher–Yates shuffle from the seed.
        let mut state = seed | 1;
        for i in (1..redelivered.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            redelivered.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let redelivered: Vec<(Vec<u8>, i64)> = redelivered
            .into_iter()
            .zip(&received)
            .map(|(p, r)| (p, RECEIVED_AT_MS + r))
            .collect();
        let (expected, actual) = runtime.block_on(async {
            reset(in_order_db.pool()).await;
            reset(shuffled_db.pool()).await;
            apply(in_order_db.pool(), &w1, &in_order, batch_in_order).await;
            apply(shuffled_db.pool(), &w2, &redelivered, batch_shuffled).await;
            (projection_state(in_order_db.pool()).await, projection_state(shuffled_db.pool()).await)
        });
        prop_assert_eq!(expected, actual);
        // The summary `status` reads counts every stored update once, however delivered.
        let (counted, stored) = runtime.block_on(async {
            (
                counted(shuffled_db.pool()).await.0,
                count(shuffled_db.pool(), "SELECT count(*) FROM raw_updates").await,
            )
        });
        prop_assert_eq!(counted, stored);
    });
}
