//! `tgingest migrate` against a real PostgreSQL: it creates exactly the projection registry's
//! tables plus the protocol tables in an empty database, and a second run changes nothing.

use std::collections::BTreeSet;
use std::process::Command;

use consumer::projection::ProjectionTable;
use sqlx::PgPool;
use testkit::pg::TestDb;

/// What the migrations create besides the projection tables, spelled here independently of the
/// code that writes them.
const PROTOCOL_TABLES: &[&str] = &[
    "raw_updates",
    // A view over raw_updates: payloads that differ under one (bot_id, update_id).
    "raw_update_collisions",
    "dead_letters",
    "consumer_offsets",
    "offset_gaps",
    // The partitions each consumer group started with (CONSUMER_START=latest applies to those).
    "consumer_group_starts",
    // sqlx's ledger of applied migrations.
    "_sqlx_migrations",
];

fn migrate(url: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tgingest"))
        .arg("migrate")
        .env("DATABASE_URL", url)
        .env("DATABASE_ACQUIRE_TIMEOUT", "2s")
        .env_remove("DATABASE_URL_FILE")
        .output()
        .expect("running tgingest migrate")
}

/// Every table, column, index and constraint of the public schema, as sorted text.
async fn schema_fingerprint(pool: &PgPool) -> Vec<String> {
    let mut rows: Vec<String> = sqlx::query_scalar(
        "SELECT format('column %s.%s %s %s %s', table_name, column_name, data_type, is_nullable,
                       coalesce(column_default, ''))
           FROM information_schema.columns WHERE table_schema = 'public'
         UNION ALL
         SELECT format('index %s', indexdef) FROM pg_indexes WHERE schemaname = 'public'
         UNION ALL
         SELECT format('constraint %s %s', conrelid::regclass, pg_get_constraintdef(oid))
           FROM pg_constraint WHERE connamespace = 'public'::regnamespace
         UNION ALL
         SELECT format('migration %s %s %s', version, success, encode(checksum, 'hex'))
           FROM _sqlx_migrations",
    )
    .fetch_all(pool)
    .await
    .expect("reading the catalog");
    rows.sort();
    rows
}

#[tokio::test]
async fn migrate_creates_the_schema_and_a_second_run_changes_nothing() {
    let db = TestDb::create_empty().await.expect("fresh database");

    let first = migrate(db.url());
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(String::from_utf8_lossy(&first.stdout).starts_with("applied migrations"));

    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .fetch_all(db.pool())
    .await
    .expect("listing tables");
    // Set equality, both ways: a migration that adds a table the projection registry lacks fails
    // here as surely as a registered table no migration creates.
    let created: BTreeSet<String> = tables.into_iter().collect();
    let expected: BTreeSet<String> = ProjectionTable::ALL
        .iter()
        .map(|t| t.name())
        .chain(PROTOCOL_TABLES.iter().copied())
        .map(str::to_owned)
        .collect();
    let unregistered: Vec<&String> = created.difference(&expected).collect();
    let missing: Vec<&String> = expected.difference(&created).collect();
    assert!(
        unregistered.is_empty() && missing.is_empty(),
        "created by the migrations but neither a registered projection nor a protocol table: \
         {unregistered:?}; expected but not created: {missing:?}"
    );
    let before = schema_fingerprint(db.pool()).await;

    let second = migrate(db.url());
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert!(
        String::from_utf8_lossy(&second.stdout).starts_with("schema is up to date"),
        "{}",
        String::from_utf8_lossy(&second.stdout)
    );
    assert_eq!(before, schema_fingerprint(db.pool()).await);
}

#[tokio::test]
async fn migrate_against_an_unreachable_server_fails_with_one_line_naming_it() {
    let port = testkit::free_port().expect("a free port");
    let out = migrate(&format!(
        "postgres://postgres:hunter2@127.0.0.1:{port}/nowhere"
    ));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let error_lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(error_lines.len(), 1, "{err}");
    assert!(
        error_lines[0].contains(&format!(
            "cannot connect to PostgreSQL at 127.0.0.1:{port}/nowhere"
        )),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
}
