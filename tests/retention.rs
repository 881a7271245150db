//! `tgingest retention` against a real broker (mock cluster by default; Tansu in the second pass)
//! and a fresh database: it removes exactly what the policies say, and a later
//! `replay --to-earliest` of a topic that still holds every record brings none of it back, while
//! the exactly-once checker accounts for the removed records as retained.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;

use processor::wire::header;
use sqlx::PgPool;
use testkit::invariants::InvariantChecker;
use testkit::sink::wait_for_log_end;
use testkit::updates::{Outgoing, message, produce};
use tgingest::replay::now_ms;

use common::*;

const DAY_MS: i64 = 86_400_000;
/// Chats: one with old and new messages, one with old messages only, one with new ones only.
const MIXED: i64 = -1_007_000_000_001;
const OLD_ONLY: i64 = -1_007_000_000_002;
const NEW_ONLY: i64 = -1_007_000_000_003;

/// A message received `days_ago`.
fn received(days_ago: i64, chat: i64, update_id: i64, user: i64) -> Outgoing {
    let partition = i32::from(chat == OLD_ONLY);
    let mut record = Outgoing::update(
        partition,
        chat,
        update_id,
        message(
            update_id,
            chat,
            user,
            update_id,
            1_760_000_000 + update_id,
            &format!("m{update_id}"),
        ),
    );
    let at = (now_ms() - days_ago * DAY_MS).to_string().into_bytes();
    for (name, value) in &mut record.headers {
        if name == header::RECEIVED_AT {
            *value = at.clone();
        }
    }
    record
}

async fn ids(pool: &PgPool, sql: &str) -> BTreeSet<i64> {
    sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// What the test looks at: raw update ids, message ids, user ids, chat ids, open letters.
async fn state(pool: &PgPool) -> [BTreeSet<i64>; 5] {
    [
        ids(pool, "SELECT update_id FROM raw_updates").await,
        ids(pool, "SELECT message_id FROM messages").await,
        ids(pool, "SELECT user_id FROM users").await,
        ids(pool, "SELECT chat_id FROM chats").await,
        ids(
            pool,
            "SELECT kafka_offset FROM dead_letters WHERE resolved_at IS NULL",
        )
        .await,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_retention_removes_what_the_policies_say_and_replay_to_earliest_brings_none_back() {
    let (db, broker, topic, group) = setup(2).await;
    // 30 updates received 100 days ago by users 201-203, 20 yesterday by users 301-302.
    let mut records: Vec<Outgoing> = (1..=30)
        .map(|i| {
            received(
                100,
                if i % 2 == 0 { MIXED } else { OLD_ONLY },
                i,
                201 + i % 3,
            )
        })
        .chain(
            (101..=120)
                .map(|i| received(1, if i % 2 == 0 { MIXED } else { NEW_ONLY }, i, 301 + i % 2)),
        )
        .collect();
    // An old record the processor rejects: an open dead letter, which retention never removes.
    let mut poison = received(100, OLD_ONLY, 31, 201);
    poison.value = b"not json".to_vec();
    records.push(poison);
    let manifest = produce(&broker.client_config(), &topic, &records).await;
    let running = start_consumer(config(&broker, &group, &topic), &db).await;
    wait_for_log_end(db.pool(), &group, &manifest, LOG_END_TIMEOUT).await;
    // Rows are last written when their update is consumed: age the old updates' rows as if
    // they had been consumed when they were received.
    for table in ["messages", "users", "chats"] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {table} SET updated_at = now() - interval '100 days' WHERE src_update_id <= 31"
        )))
        .execute(db.pool())
        .await
        .unwrap();
    }
    let [raw, messages, users, chats, letters] = state(db.pool()).await;
    assert_eq!(raw.len(), 50);
    assert_eq!(users, BTreeSet::from([201, 202, 203, 301, 302]));
    assert_eq!(chats, BTreeSet::from([MIXED, OLD_ONLY, NEW_ONLY]));
    assert_eq!(letters.len(), 1);
    assert_eq!(messages.len(), 50);

    let keep = [
        "--keep",
        "raw_updates=30d",
        "--keep",
        "messages=60d,users=60d,chats=60d,dead_letters=30d",
    ];
    let env = [("DATABASE_URL", db.url())];
    // A dry run counts and changes nothing.
    let dry = tgingest(
        &[&["retention", "--dry-run", "--json"][..], &keep].concat(),
        &env,
    );
    assert!(
        dry.status.success(),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&dry.stdout).unwrap();
    let removed = |report: &serde_json::Value| -> Vec<(String, u64)> {
        report["tables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["table"].as_str().unwrap().to_owned(),
                    t["removed"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let expected: Vec<(String, u64)> = [
        ("raw_updates", 30),
        ("chats", 1),
        ("users", 3),
        ("messages", 30),
        ("dead_letters", 0),
    ]
    .iter()
    .map(|(t, n)| ((*t).to_owned(), *n))
    .collect();
    assert_eq!(removed(&report), expected, "{report}");
    assert_eq!(
        state(db.pool()).await[0].len(),
        50,
        "a dry run removes nothing"
    );

    // The run itself, while the consumer runs.
    let run = tgingest(
        &[&["retention", "--yes", "--json"][..], &keep].concat(),
        &env,
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(removed(&report), expected, "{report}");
    let after = state(db.pool()).await;
    let new: BTreeSet<i64> = (101..=120).collect();
    assert_eq!(
        after[0], new,
        "raw_updates: exactly the old updates are gone"
    );
    assert_eq!(after[1], new, "messages: exactly the old ones are gone");
    assert_eq!(after[2], BTreeSet::from([301, 302]));
    assert_eq!(after[3], BTreeSet::from([MIXED, NEW_ONLY]));
    assert_eq!(after[4], letters, "an open dead letter is never retained");

    // Every record is still in Kafka: replaying them all writes nothing back.
    replay_everything_and_wait(&db, &broker, &group, &topic, &running, &manifest).await;
    running.stop().await;
    assert_eq!(state(db.pool()).await, after, "the replay resurrected rows");
    let attempts: i32 = sqlx::query_scalar("SELECT attempts FROM dead_letters")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(attempts, 1, "the old letter was not written again");

    // Nor does a rebuild from the database.
    let out = tgingest(&["replay", "--reprocess-from-db"], &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        state(db.pool()).await,
        after,
        "the rebuild resurrected rows"
    );

    let report = InvariantChecker::new(db.pool().clone(), &group)
        .check(&manifest)
        .await
        .unwrap();
    report.assert_ok();
    assert_eq!(
        (report.retained, report.with_rows, report.dead_lettered),
        (30, 20, 1),
        "{report:?}"
    );

    // With the horizon 30 days back, a projection policy that removes younger rows is refused.
    let refused = tgingest(&["retention", "--keep", "messages=10d", "--yes"], &env);
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("messages: removes rows written after the record horizon"),
        "{err}"
    );
}
