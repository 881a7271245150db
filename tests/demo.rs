//! `tgingest demo` end to end: the real binary, a fresh database, the embedded broker and the
//! simulated Telegram. The database must hold exactly what the simulated Telegram sent —
//! regenerated here from the same seed, not read back from the demo — and one dead letter for
//! the malformed update.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use testkit::pg::TestDb;
use testkit::process::ChildProcess;

#[tokio::test]
async fn the_demo_stores_exactly_what_the_simulated_telegram_sent() {
    let db = TestDb::create_empty().await.expect("fresh database");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tgingest"));
    cmd.args([
        "demo",
        "--duration",
        "4s",
        "--rate",
        "150",
        "--seed",
        "42",
        "--chats",
        "3",
        "--users",
        "30",
        "--partitions",
        "6",
    ])
    .env("DATABASE_URL", db.url())
    .env_remove("KAFKA_BROKERS")
    .env_remove("TELEGRAM_BOT_TOKENS")
    .env_remove("TELEGRAM_BOT_TOKENS_FILE");
    let demo = ChildProcess::spawn(cmd, "demo", Duration::from_secs(150)).expect("spawn demo");
    let status = demo
        .wait(Duration::from_secs(140))
        .await
        .expect("demo exits");
    let output = demo.output_text();
    assert!(status.success(), "demo failed:\n{output}");
    // A clean run logs no error: not even rdkafka's complaint about closing the already closed
    // group consumer when it is dropped (telemetry::is_second_consumer_close, issue #17).
    let errors: Vec<&str> = output.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert!(
        errors.is_empty(),
        "a clean demo logged errors:\n{}",
        errors.join("\n")
    );
    // The embedded broker has one replica by design: a new user sees no durability warning.
    assert!(
        !output.contains("replication factor") && !output.contains("min.insync.replicas"),
        "the demo warned about durability:\n{output}"
    );

    let sent: usize = output
        .lines()
        .find_map(|l| l.strip_prefix("simulated Telegram sent "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no 'simulated Telegram sent N' line:\n{output}"));
    assert!(sent > 100, "the demo sent only {sent} updates");

    // What the demo sent: its opening updates (one malformed), then the generator's stream.
    let mut traffic = tgingest::demo::simulated_traffic(42, 3, 30);
    let mut expected: Vec<Vec<u8>> = tgingest::demo::opening_updates(&mut traffic).into();
    let malformed = expected.remove(1);
    while expected.len() + 1 < sent {
        expected.push(traffic.next_update());
    }
    let expected: BTreeSet<Vec<u8>> = expected.into_iter().collect();

    let stored: Vec<Vec<u8>> = sqlx::query_scalar("SELECT payload_bytes FROM raw_updates")
        .fetch_all(db.pool())
        .await
        .expect("reading raw_updates");
    let stored_set: BTreeSet<Vec<u8>> = stored.iter().cloned().collect();
    assert_eq!(stored.len(), stored_set.len(), "a payload is stored twice");
    assert_eq!(
        stored_set.len(),
        expected.len(),
        "stored {} payloads, sent {} valid updates",
        stored_set.len(),
        expected.len()
    );
    assert!(
        stored_set == expected,
        "stored payloads differ from what was sent"
    );

    let dead: Vec<(String, Option<Vec<u8>>)> =
        sqlx::query_as("SELECT error_class, payload FROM dead_letters WHERE resolved_at IS NULL")
            .fetch_all(db.pool())
            .await
            .expect("reading dead_letters");
    assert_eq!(dead.len(), 1, "expected one dead letter: {dead:?}");
    // The producer wrapped the malformed update in a tg-error envelope holding its exact text.
    let envelope: serde_json::Value =
        serde_json::from_slice(dead[0].1.as_deref().unwrap_or_default()).expect("envelope json");
    assert_eq!(
        envelope["original"].as_str().map(str::as_bytes),
        Some(malformed.as_slice()),
        "the dead letter does not carry the malformed update: {envelope}"
    );

    // Derived rows exist for the simulated chat traffic.
    let messages: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(db.pool())
        .await
        .expect("count");
    assert!(messages > 0);
    assert!(output.contains("Try next"), "{output}");
}

#[test]
fn the_demo_refuses_a_real_token_with_the_in_memory_broker() {
    let out = Command::new(env!("CARGO_BIN_EXE_tgingest"))
        .args(["demo", "--duration", "1s"])
        .env("TELEGRAM_BOT_TOKENS", "123456:AAE-secretpart_xyz")
        .env_remove("KAFKA_BROKERS")
        .output()
        .expect("run demo");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("a real bot token needs a real broker"),
        "{err}"
    );
    assert!(!err.contains("secretpart"), "{err}");
}

#[test]
fn the_demo_says_how_to_start_postgresql_when_it_is_unreachable() {
    let port = testkit::free_port().expect("port");
    let out = Command::new(env!("CARGO_BIN_EXE_tgingest"))
        .args(["demo", "--duration", "1s"])
        .env(
            "DATABASE_URL",
            format!("postgres://postgres@127.0.0.1:{port}/demo"),
        )
        .env_remove("KAFKA_BROKERS")
        .env_remove("TELEGRAM_BOT_TOKENS")
        .output()
        .expect("run demo");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("docker compose up -d postgres"), "{err}");
}
