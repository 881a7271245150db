//! `RawUpdateRow::jsonb_ok` checked against the real oracle: PostgreSQL's `jsonb` input.
//!
//! The consumer stores `payload_bytes::jsonb` exactly when `jsonb_ok` is true, so a false
//! positive is a failed insert and a false negative a needlessly NULL `payload`. Every fixture and
//! a list of hostile payloads (escapes, numbers at `numeric`'s limits) are sent through one
//! `psql` session against `TGINGEST_TEST_PG_URL` (default
//! postgres://postgres@127.0.0.1:5432/postgres); without a reachable server the test fails, like
//! every other database test.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::process::{Command, Stdio};

use processor::normalize;

fn server_url() -> String {
    std::env::var("TGINGEST_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// For each payload, whether PostgreSQL accepts it as jsonb.
fn postgres_accepts(payloads: &[Vec<u8>]) -> Vec<bool> {
    let mut script = String::from(
        "CREATE FUNCTION pg_temp.accepts(t text) RETURNS boolean LANGUAGE plpgsql AS $$\n\
         BEGIN PERFORM t::jsonb; RETURN true; EXCEPTION WHEN others THEN RETURN false; END $$;\n",
    );
    for payload in payloads {
        let hex: String = payload.iter().map(|b| format!("{b:02x}")).collect();
        script.push_str(&format!(
            "SELECT pg_temp.accepts(convert_from(decode('{hex}', 'hex'), 'UTF8'));\n"
        ));
    }
    let mut child = Command::new("psql")
        .args([
            "-X",
            "-q",
            "-t",
            "-A",
            "-v",
            "ON_ERROR_STOP=1",
            &server_url(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running psql (apt-get install postgresql-client)");
    // psql exits early when it cannot connect; its exit status below says why.
    let _ = child.stdin.take().unwrap().write_all(script.as_bytes());
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "PostgreSQL not usable (scripts/start-postgres): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answers: Vec<bool> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| line == "t")
        .collect();
    assert_eq!(answers.len(), payloads.len(), "one answer per payload");
    answers
}

fn update_with(member: &str) -> Vec<u8> {
    format!(r#"{{"update_id":1,"message":{{"x":{member}}}}}"#).into_bytes()
}

#[test]
fn jsonb_ok_agrees_with_postgresql_on_fixtures_and_hostile_payloads() {
    let mut payloads: Vec<Vec<u8>> = Vec::new();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/updates");
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    names.sort();
    payloads.extend(names.iter().map(|p| std::fs::read(p).unwrap()));
    for member in [
        r#""plain""#,
        r#""\u0000""#,
        r#""\\u0000""#,
        r#""\ud800""#,
        r#""\udc00""#,
        r#""\ud83d\ude00""#,
        r#""\uD83D\uDE00""#,
        r#""\ud800\ud800""#,
        r#""\ud800\ud83d\ude00""#,
        r#""\ude00\ud83d""#,
        r#""\\\ud800""#,
        r#""\"\ud800""#,
        r#"{"k\u0000":1}"#,
        r#""\u00e9\u2028\uffff\ufffe""#,
        "1e131071",
        "1e131072",
        "9.99e131070",
        "10e131071",
        "1e-16383",
        "1e-16384",
        "1.5e-16383",
        "0e999999",
        "0.0e-20000",
        "-0.000001e-16378",
        "0e1073741822",
        "0e1073741823",
        "0e-1073741822",
        "1E+400",
        "123456789012345678901234567890",
        "-9223372036854775809",
        "[1e400, 2.5e-400]",
    ] {
        payloads.push(update_with(member));
    }

    let accepted = postgres_accepts(&payloads);
    for (payload, pg) in payloads.iter().zip(accepted) {
        let out = normalize(1, payload).unwrap_or_else(|r| {
            panic!("{r}: {}", String::from_utf8_lossy(payload));
        });
        assert_eq!(
            out.raw.jsonb_ok,
            pg,
            "jsonb_ok disagrees with PostgreSQL on {}",
            String::from_utf8_lossy(payload)
        );
    }
}
