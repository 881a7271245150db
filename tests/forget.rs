//! `tgingest forget` against a real broker (mock cluster by default; Tansu in the second pass)
//! and a fresh database: after the erasure, and again after `replay --to-earliest`, after
//! `replay --reprocess-from-db` and after the person writes again, no table holds the erased
//! user's id or any of their strings — raw payload bytes and dead letters included — while the
//! other people's data stays, and the exactly-once checker accounts for every record.
#![allow(clippy::unwrap_used)]

mod common;

use consumer::record::ConsumedRecord;
use processor::wire::{self, Subject, header};
use serde_json::{Value, json};
use sqlx::PgPool;
use testkit::TestDb;
use testkit::invariants::{InvariantChecker, InvariantReport, ProducedRecord};
use testkit::sink::wait_for_log_end;
use testkit::updates::{BOT, Outgoing, produce};

use common::*;

/// The person who asked to be forgotten, and what identifies them.
const ZELDA: i64 = 987_654_321;
const TRACES: &[&str] = &[
    "987654321",
    "Zelda",
    "Quist",
    "zelda_q",
    "harbour plan",
    "hello bot",
];
/// Other people and the group they share.
const YANN: i64 = 555_111_222;
const XENA: i64 = 555_111_333;
const GROUP: i64 = -1_009_876_000_111;

fn zelda() -> Value {
    json!({"id": ZELDA, "is_bot": false, "first_name": "Zelda", "last_name": "Quist",
           "username": "zelda_q", "language_code": "nl"})
}

fn yann() -> Value {
    json!({"id": YANN, "is_bot": false, "first_name": "Yann", "username": "yann_b"})
}

fn the_group() -> Value {
    json!({"id": GROUP, "type": "supergroup", "title": "Harbour team"})
}

fn update(update_id: i64, kind: &str, content: Value) -> Vec<u8> {
    let mut object = serde_json::Map::new();
    object.insert("update_id".into(), update_id.into());
    object.insert(kind.into(), content);
    Value::Object(object).to_string().into_bytes()
}

fn in_group(update_id: i64, value: Vec<u8>) -> Outgoing {
    Outgoing::update(0, GROUP, update_id, value)
}

/// Everything Zelda did or appears in, and what others did around her.
fn history() -> Vec<Outgoing> {
    let own = json!({"message_id": 10, "from": zelda(), "chat": the_group(), "date": 1_760_000_010,
                     "text": "Zelda's harbour plan"});
    let mut records = vec![
        in_group(1001, update(1001, "message", own.clone())),
        in_group(
            1002,
            update(
                1002,
                "edited_message",
                json!({"message_id": 10, "from": zelda(), "chat": the_group(), "date": 1_760_000_010,
                       "edit_date": 1_760_000_020, "text": "Zelda's revised harbour plan"}),
            ),
        ),
        // Yann replies to her, quoting her.
        in_group(
            1003,
            update(
                1003,
                "message",
                json!({"message_id": 11, "from": yann(), "chat": the_group(), "date": 1_760_000_030,
                       "text": "agreed with this", "reply_to_message": own,
                       "quote": {"text": "harbour plan", "position": 8}}),
            ),
        ),
        // Yann forwards her message and mentions her.
        in_group(
            1004,
            update(
                1004,
                "message",
                json!({"message_id": 12, "from": yann(), "chat": the_group(), "date": 1_760_000_040,
                       "text": "forwarded note", "forward_from": zelda(),
                       "forward_origin": {"type": "user", "sender_user": zelda(), "date": 1_760_000_010}}),
            ),
        ),
        in_group(
            1005,
            update(
                1005,
                "message",
                json!({"message_id": 13, "from": yann(), "chat": the_group(), "date": 1_760_000_050,
                       "text": "ask her",
                       "entities": [{"type": "text_mention", "offset": 0, "length": 3, "user": zelda()}]}),
            ),
        ),
        // Her reaction, her button press, her vote.
        in_group(
            1006,
            update(
                1006,
                "message_reaction",
                json!({"chat": the_group(), "message_id": 11, "user": zelda(), "date": 1_760_000_060,
                       "old_reaction": [], "new_reaction": [{"type": "emoji", "emoji": "👍"}]}),
            ),
        ),
        in_group(
            1007,
            update(
                1007,
                "callback_query",
                json!({"id": "cbq-zelda", "from": zelda(), "chat_instance": "ci-1", "data": "vote-yes",
                       "message": {"message_id": 11, "chat": the_group(), "date": 1_760_000_030}}),
            ),
        ),
        Outgoing::update(
            1,
            ZELDA,
            1011,
            update(
                1011,
                "poll_answer",
                json!({"poll_id": "poll-1", "user": zelda(), "option_ids": [1]}),
            ),
        ),
        // Yann adds Xena and her; Yann makes her an administrator.
        in_group(
            1008,
            update(
                1008,
                "message",
                json!({"message_id": 14, "from": yann(), "chat": the_group(), "date": 1_760_000_070,
                       "new_chat_participant": {"id": XENA, "is_bot": false, "first_name": "Xena"},
                       "new_chat_member": {"id": XENA, "is_bot": false, "first_name": "Xena"},
                       "new_chat_members": [{"id": XENA, "is_bot": false, "first_name": "Xena"}, zelda()]}),
            ),
        ),
        in_group(
            1009,
            update(
                1009,
                "chat_member",
                json!({"chat": the_group(), "from": yann(), "date": 1_760_000_080,
                       "old_chat_member": {"status": "member", "user": zelda()},
                       "new_chat_member": {"status": "administrator", "user": zelda(),
                                           "can_be_edited": false}}),
            ),
        ),
        // Her private chat with the bot.
        Outgoing::update(
            1,
            ZELDA,
            1010,
            update(
                1010,
                "message",
                json!({"message_id": 1, "from": zelda(),
                       "chat": {"id": ZELDA, "type": "private", "first_name": "Zelda", "username": "zelda_q"},
                       "date": 1_760_000_090, "text": "hello bot"}),
            ),
        ),
        // Yann's own message: nothing of hers.
        in_group(
            1012,
            update(
                1012,
                "message",
                json!({"message_id": 15, "from": yann(), "chat": the_group(), "date": 1_760_000_100,
                       "text": "Yann's own note"}),
            ),
        ),
        // Bytes the processor rejects, in her private chat: a dead letter.
        Outgoing::update(1, ZELDA, 1013, b"not json, from Zelda".to_vec()),
    ];
    // Her first message delivered again (a producer retry): another copy of the same bytes.
    let again = records[0].clone();
    records.push(again);
    records
}

/// Every row of every table of the schema as one text (bytea as its escaped text), by table.
async fn every_row(pool: &PgPool) -> Vec<(String, String)> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut out = Vec::new();
    for table in tables {
        let columns: Vec<(String, String)> = sqlx::query_as(
            "SELECT column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1",
        )
        .bind(&table)
        .fetch_all(pool)
        .await
        .unwrap();
        let exprs: Vec<String> = columns
            .iter()
            .map(|(c, t)| {
                if t == "bytea" {
                    format!("coalesce(encode(\"{c}\", 'escape'), '')")
                } else {
                    format!("coalesce(\"{c}\"::text, '')")
                }
            })
            .collect();
        let sql = format!(
            "SELECT concat_ws(' | ', {}) FROM \"{table}\"",
            exprs.join(", ")
        );
        let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_all(pool)
            .await
            .unwrap();
        out.extend(rows.into_iter().map(|r| (table.clone(), r)));
    }
    out.sort();
    out
}

/// Panics naming the table and row of any trace of the erased person.
async fn assert_no_trace(pool: &PgPool, traces: &[&str], when: &str) {
    let rows = every_row(pool).await;
    assert!(!rows.is_empty());
    for (table, row) in &rows {
        for trace in traces {
            assert!(
                !row.contains(trace),
                "{when}: {table} still holds {trace:?}: {row}"
            );
        }
    }
}

/// Panics unless each text is somewhere in `table`.
async fn assert_kept(pool: &PgPool, table: &str, texts: &[&str]) {
    let rows = every_row(pool).await;
    for text in texts {
        assert!(
            rows.iter().any(|(t, r)| t == table && r.contains(text)),
            "{table} lost {text:?}"
        );
    }
}

async fn check(pool: &PgPool, group: &str, manifest: &[ProducedRecord]) -> InvariantReport {
    let report = InvariantChecker::new(pool.clone(), group)
        .check(manifest)
        .await
        .unwrap();
    report.assert_ok();
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_forget_a_user_then_replay_reprocess_and_new_traffic_leave_no_trace_of_them() {
    let (db, broker, topic, group) = setup(2).await;
    let mut manifest = produce(&broker.client_config(), &topic, &history()).await;
    let running = start_consumer(config(&broker, &group, &topic), &db).await;
    wait_for_log_end(db.pool(), &group, &manifest, LOG_END_TIMEOUT).await;
    let before = check(db.pool(), &group, &manifest).await;
    assert_eq!(before.dead_lettered, 1, "{before:?}");
    // The database holds her, as the test expects.
    let rows = every_row(db.pool()).await;
    for trace in TRACES {
        assert!(
            rows.iter().any(|(_, r)| r.contains(trace)),
            "{trace} was never stored"
        );
    }

    // The erasure runs while the consumer runs.
    let out = tgingest(
        &["forget", "--user", &ZELDA.to_string(), "--yes"],
        &[("DATABASE_URL", db.url())],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!said.contains(&ZELDA.to_string()), "{said}");
    assert!(said.contains("1 dead letters"), "{said}");
    assert_no_trace(db.pool(), TRACES, "after forget").await;
    assert_kept(
        db.pool(),
        "messages",
        &[
            "agreed with this",
            "forwarded note",
            "ask her",
            "Yann's own note",
        ],
    )
    .await;
    assert_kept(db.pool(), "users", &["yann_b", "Xena"]).await;
    assert_kept(db.pool(), "chats", &["Harbour team"]).await;
    let erased = check(db.pool(), &group, &manifest).await;
    // Her message and its copy, her edit, reaction, button press, vote, promotion, private
    // message and dead letter: erased; Yann's reply, forward, mention and additions: scrubbed.
    assert_eq!((erased.erased, erased.scrubbed), (9, 4), "{erased:?}");
    assert_eq!(erased.dead_lettered, 0);

    // Replay everything: the records still in Kafka bring nothing of hers back.
    replay_everything_and_wait(&db, &broker, &group, &topic, &running, &manifest).await;
    assert_no_trace(db.pool(), TRACES, "after replay --to-earliest").await;
    assert_kept(
        db.pool(),
        "messages",
        &["agreed with this", "Yann's own note"],
    )
    .await;
    check(db.pool(), &group, &manifest).await;

    // Rebuild the projections from the stored raw updates.
    let out = tgingest(
        &["replay", "--reprocess-from-db"],
        &[("DATABASE_URL", db.url())],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_no_trace(db.pool(), TRACES, "after replay --reprocess-from-db").await;
    assert_kept(db.pool(), "messages", &["forwarded note", "ask her"]).await;

    // She writes again: read after the erasure, it is erased on the way in.
    let later = produce(
        &broker.client_config(),
        &topic,
        &[in_group(
            1020,
            update(
                1020,
                "message",
                json!({"message_id": 20, "from": zelda(), "chat": the_group(), "date": 1_760_001_000,
                       "text": "Zelda's harbour plan, again"}),
            ),
        )],
    )
    .await;
    manifest.extend(later);
    wait_for_log_end(db.pool(), &group, &manifest, LOG_END_TIMEOUT).await;
    running.stop().await;
    assert_no_trace(db.pool(), TRACES, "after new traffic").await;
    let after = check(db.pool(), &group, &manifest).await;
    assert_eq!(after.erased, 10, "{after:?}");
}

const TOPIC: &str = "tg.updates";

fn record(offset: i64, chat: i64, value: Vec<u8>) -> ConsumedRecord {
    ConsumedRecord {
        topic: TOPIC.to_owned(),
        partition: 0,
        offset,
        key: Some(wire::record_key(BOT, &Subject::Chat(chat.to_string())).into_bytes()),
        payload: Some(value),
        headers: vec![
            (
                header::BOT_ID.to_owned(),
                Some(BOT.to_string().into_bytes()),
            ),
            (
                header::RECEIVED_AT.to_owned(),
                Some(b"1760000000000".to_vec()),
            ),
        ],
        timestamp_ms: Some(1_760_000_000_000),
    }
}

/// Writes the records (offsets from 0) through the consumer's batch writer for `group`.
async fn consume(pool: &PgPool, group: &str, records: &[ConsumedRecord]) {
    testkit::direct::write_records(pool, group, TOPIC, records)
        .await
        .expect("the consumer's writer writes the records");
}

fn manifest_of(records: &[ConsumedRecord]) -> Vec<ProducedRecord> {
    records.iter().map(ProducedRecord::from).collect()
}

#[tokio::test]
async fn forget_a_chat_erases_everything_in_it_and_its_forwards_elsewhere_for_one_bot_only() {
    let db = TestDb::create().await.unwrap();
    let pool = db.pool().clone();
    let other_bot = BOT + 1;
    let mut records = vec![
        record(
            0,
            GROUP,
            update(
                1,
                "message",
                json!({"message_id": 1, "from": yann(), "chat": the_group(), "date": 1,
                       "text": "inside the harbour team"}),
            ),
        ),
        record(
            1,
            GROUP,
            update(
                2,
                "message_reaction_count",
                json!({"chat": the_group(), "message_id": 1, "date": 2,
                       "reactions": [{"type": {"type": "emoji", "emoji": "👍"}, "total_count": 3}]}),
            ),
        ),
        // In Yann's private chat, a forward from the group: scrubbed, Yann's text stays.
        record(
            2,
            YANN,
            update(
                3,
                "message",
                json!({"message_id": 2, "from": yann(),
                       "chat": {"id": YANN, "type": "private", "first_name": "Yann"}, "date": 3,
                       "text": "look at this",
                       "forward_origin": {"type": "chat", "sender_chat": the_group(), "date": 1}}),
            ),
        ),
    ];
    // The same group seen by another bot: not erased by a forget scoped to the first bot.
    let mut elsewhere = record(
        3,
        GROUP,
        update(
            4,
            "message",
            json!({"message_id": 3, "from": yann(), "chat": the_group(), "date": 4,
                   "text": "seen by the other bot"}),
        ),
    );
    elsewhere.headers[0].1 = Some(other_bot.to_string().into_bytes());
    elsewhere.key =
        Some(wire::record_key(other_bot, &Subject::Chat(GROUP.to_string())).into_bytes());
    records.push(elsewhere);
    consume(&pool, "g1", &records).await;
    let manifest = manifest_of(&records);
    check(&pool, "g1", &manifest).await;

    let out = tgingest(
        &[
            "forget",
            "--chat",
            &GROUP.to_string(),
            "--bot",
            &BOT.to_string(),
            "--yes",
        ],
        &[("DATABASE_URL", db.url())],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The other bot's copy of the group stays.
    let bot_rows = every_row(&pool).await;
    assert!(
        bot_rows
            .iter()
            .any(|(t, r)| t == "messages" && r.contains("seen by the other bot")),
        "the other bot's data stays"
    );
    let of_this_bot: Vec<&(String, String)> = bot_rows
        .iter()
        .filter(|(_, r)| !r.contains(&other_bot.to_string()))
        .collect();
    for (table, row) in of_this_bot {
        for trace in [&GROUP.to_string()[..], "Harbour team", "harbour team"] {
            assert!(!row.contains(trace), "{table} still holds {trace:?}: {row}");
        }
    }
    assert_kept(&pool, "messages", &["look at this"]).await;
    let report = check(&pool, "g1", &manifest).await;
    assert_eq!((report.erased, report.scrubbed), (2, 1), "{report:?}");

    // Running it again finds nothing left to erase and changes nothing.
    let before = every_row(&pool).await;
    let again = tgingest(
        &[
            "forget",
            "--chat",
            &GROUP.to_string(),
            "--bot",
            &BOT.to_string(),
            "--yes",
            "--json",
        ],
        &[("DATABASE_URL", db.url())],
    );
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let said: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(
        (
            &said["raw_updates_erased"],
            &said["raw_updates_scrubbed"],
            &said["tombstones_written"]
        ),
        (&json!(0), &json!(0), &json!(0)),
        "{said}"
    );
    let unchanged = |rows: &[(String, String)]| -> Vec<(String, String)> {
        // The erasure's own bookkeeping (completed_at) moves; nothing else may.
        rows.iter()
            .filter(|(t, _)| t != "erased_subjects")
            .cloned()
            .collect()
    };
    assert_eq!(unchanged(&every_row(&pool).await), unchanged(&before));

    // The records written again (as a replay writes them) bring nothing back.
    consume(&pool, "g2", &records).await;
    let again = every_row(&pool).await;
    assert_eq!(
        again
            .iter()
            .filter(|(t, r)| t != "consumer_offsets"
                && t != "tombstones"
                && !r.contains(&other_bot.to_string())
                && r.contains(&GROUP.to_string()))
            .count(),
        0,
        "a second write of the records brought the chat back"
    );
    check(&pool, "g2", &manifest).await;
}
