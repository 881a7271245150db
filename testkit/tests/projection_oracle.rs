//! Self-tests of the projection oracle against real PostgreSQL: the traffic generator's updates,
//! written by the consumer's batch writer, are exactly the state the oracle predicts; a
//! corrupted row and a lost edit each make it fail, naming the row.
#![allow(clippy::unwrap_used)]

use botsim::traffic::{TrafficConfig, TrafficGenerator};
use testkit::TestDb;
use testkit::direct::{Delivery, write_in_order};
use testkit::projection_oracle::{self, Mismatch, Report, State, Update};

const BOT: i64 = 7_000_000_001;
/// Enough traffic for every kind the generator emits to show up several times.
const UPDATES: usize = 1_500;

fn traffic() -> Vec<Vec<u8>> {
    TrafficGenerator::new(3, TrafficConfig::default()).batch(UPDATES)
}

fn kind_of(bytes: &[u8]) -> String {
    let value: serde_json::Value = serde_json::from_slice(bytes).unwrap();
    let object = value.as_object().unwrap();
    object.keys().find(|k| *k != "update_id").unwrap().clone()
}

fn update_id(bytes: &[u8]) -> i64 {
    let value: serde_json::Value = serde_json::from_slice(bytes).unwrap();
    value["update_id"].as_i64().unwrap()
}

/// Writes `written` into a fresh database in order and checks it against the oracle's
/// prediction for `predicted`.
async fn run(written: &[Vec<u8>], predicted: &[Vec<u8>]) -> (TestDb, Report) {
    let db = TestDb::create().await.unwrap();
    let deliveries: Vec<Delivery<'_>> = written
        .iter()
        .enumerate()
        .map(|(i, bytes)| Delivery {
            bot_id: BOT,
            bytes,
            received_at_ms: 1_760_000_000_000 + i as i64 * 1_000,
        })
        .collect();
    write_in_order(db.pool(), &deliveries, 100).await.unwrap();
    let report = check(&db, predicted).await;
    (db, report)
}

async fn check(db: &TestDb, predicted: &[Vec<u8>]) -> Report {
    let updates = predicted.iter().map(|bytes| Update {
        bot_id: BOT,
        epoch: 0,
        bytes,
    });
    projection_oracle::check(db.pool(), &[BOT], updates, &Default::default())
        .await
        .unwrap()
}

#[tokio::test]
async fn the_generators_traffic_written_in_order_is_exactly_the_predicted_state() {
    let traffic = traffic();
    let (db, report) = run(&traffic, &traffic).await;
    assert!(report.is_clean(), "{}", report.describe(20));
    // Not vacuous: every table the generator feeds holds rows, in the oracle and in PostgreSQL.
    let predicted = State::from_updates(traffic.iter().map(|bytes| Update {
        bot_id: BOT,
        epoch: 0,
        bytes,
    }))
    .unwrap();
    for table in [
        "chats",
        "users",
        "messages",
        "message_edits",
        "message_reactions",
        "message_reaction_counts",
        "chat_member_events",
        "callback_queries",
        "polls",
        "poll_answers",
    ] {
        assert!(predicted.rows(table) > 0, "no {table} rows predicted");
        eprintln!("{table}: {} rows", predicted.rows(table));
    }
    assert_eq!(report.expected_rows, report.actual_rows);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM message_edits")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(stored as usize, predicted.rows("message_edits"));
}

#[tokio::test]
async fn a_corrupted_projection_row_fails_the_oracle_naming_that_row() {
    let traffic = traffic();
    let (db, report) = run(&traffic, &traffic).await;
    assert!(report.is_clean(), "{}", report.describe(20));
    let (chat_id, message_id): (i64, i64) = sqlx::query_as(
        "UPDATE messages SET text = 'corrupted by the self-test' \
         WHERE (chat_id, message_id) = (SELECT chat_id, message_id FROM messages \
                WHERE text IS NOT NULL ORDER BY chat_id, message_id LIMIT 1) \
         RETURNING chat_id, message_id",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    let report = check(&db, &traffic).await;
    let key = format!(
        r#"(bot_id={BOT}, chat_id={chat_id}, business_connection_id="", message_id={message_id})"#
    );
    assert_eq!(report.mismatches.len(), 1, "{}", report.describe(20));
    let mismatch = &report.mismatches[0];
    assert!(matches!(mismatch, Mismatch::Differs { .. }), "{mismatch}");
    let text = mismatch.to_string();
    assert!(
        text.starts_with(&format!("messages {key}: text expected "))
            && text.ends_with(r#"found "corrupted by the self-test""#),
        "{text}"
    );
}

#[tokio::test]
async fn a_lost_edit_fails_the_oracle_naming_the_edit_and_the_message() {
    let traffic = traffic();
    // The last edit of the chat's messages: with it lost, the message keeps an older text.
    let (lost, _) = traffic
        .iter()
        .enumerate()
        .rev()
        .find(|(_, bytes)| kind_of(bytes) == "edited_message")
        .unwrap();
    let edit: serde_json::Value = serde_json::from_slice(&traffic[lost]).unwrap();
    let edited = &edit["edited_message"];
    let (chat_id, message_id) = (
        edited["chat"]["id"].as_i64().unwrap(),
        edited["message_id"].as_i64().unwrap(),
    );
    let mut written = traffic.clone();
    written.remove(lost);
    let (_db, report) = run(&written, &traffic).await;
    let message = format!(
        r#"(bot_id={BOT}, chat_id={chat_id}, business_connection_id="", message_id={message_id})"#
    );
    let history = format!(
        r#"(bot_id={BOT}, chat_id={chat_id}, business_connection_id="", message_id={message_id}, src_update_id={})"#,
        update_id(&traffic[lost])
    );
    assert!(!report.is_clean());
    let described = report.describe(50);
    assert!(
        report
            .mismatches
            .iter()
            .any(|m| matches!(m, Mismatch::Missing { .. })
                && m.table() == "message_edits"
                && m.key() == history),
        "the lost edit's history row is not named:\n{described}"
    );
    assert!(
        report
            .mismatches
            .iter()
            .any(|m| matches!(m, Mismatch::Differs { .. })
                && m.table() == "messages"
                && m.key() == message
                && m.to_string().contains(" text expected ")),
        "the message's stale text is not named:\n{described}"
    );
}
