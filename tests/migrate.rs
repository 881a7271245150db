//! `tgingest migrate` against a real PostgreSQL: it creates exactly the projection registry's
//! tables plus the protocol tables in an empty database, and a second run changes nothing; with
//! `CONSUMER_ROLE` it grants that role exactly what the consumer needs, and a consumer logged in
//! as it writes, or refuses to start with one line naming what it lacks.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use consumer::projection::ProjectionTable;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use testkit::invariants::assert_invariants;
use testkit::pg::TestDb;
use testkit::sink::{RunningConsumer, wait_for_log_end};
use testkit::updates::{messages, produce};

/// What the migrations create besides the projection tables, spelled here independently of the
/// code that writes them.
const PROTOCOL_TABLES: &[&str] = &[
    "raw_updates",
    // A view over raw_updates: payloads that differ under one (bot_id, update_id).
    "raw_update_collisions",
    "dead_letters",
    "consumer_offsets",
    "offset_gaps",
    // Each bot's update-id epochs, which order projections (migrations/0003_update_order.sql).
    "bot_update_epochs",
    // Records an operator decided get neither rows nor a dead letter (purged, …).
    "tombstones",
    // The partitions each consumer group started with (CONSUMER_START=latest applies to those).
    "consumer_group_starts",
    // Partitions whose log is not the one the database remembers, and the operator's decisions.
    "log_anomalies",
    // Retention's horizons (the record horizon every writer honours) and erased data subjects
    // (as digests): operators' decisions the consumer reads and may not change.
    "retention_horizons",
    "erased_subjects",
    // Stored updates per (bot, partition), maintained by the writers: what `status` reads.
    "raw_update_counts",
    // sqlx's ledger of applied migrations.
    "_sqlx_migrations",
];

fn migrate(url: &str) -> std::process::Output {
    migrate_granting(url, None)
}

/// `tgingest migrate`, with `CONSUMER_ROLE` set to `role` when given.
fn migrate_granting(url: &str, role: Option<&str>) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tgingest"));
    command
        .arg("migrate")
        .env("DATABASE_URL", url)
        .env("DATABASE_ACQUIRE_TIMEOUT", "2s")
        .env_remove("DATABASE_URL_FILE")
        .env_remove("CONSUMER_ROLE");
    if let Some(role) = role {
        command.env("CONSUMER_ROLE", role);
    }
    command.output().expect("running tgingest migrate")
}

/// A new login role with no privileges (roles are server-wide: [`drop_role`] it after).
async fn create_role(db: &TestDb) -> String {
    let role = format!("tgingest_consumer_{}", testkit::random_suffix(8));
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE ROLE \"{role}\" LOGIN")))
        .execute(db.pool())
        .await
        .expect("creating a role");
    role
}

/// Removes `role`'s grants and default privileges in `db`, then the role.
async fn drop_role(db: &TestDb, role: &str) {
    for statement in [
        format!("DROP OWNED BY \"{role}\""),
        format!("DROP ROLE \"{role}\""),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(db.pool())
            .await
            .expect("dropping the role");
    }
}

/// Migrates `db` granting a new role, and returns the role and a pool logged in as it.
async fn granted_role(db: &TestDb) -> (String, PgPool) {
    let role = create_role(db).await;
    let out = migrate_granting(db.url(), Some(&role));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let options: PgConnectOptions = db.pool().connect_options().as_ref().clone().username(&role);
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await
        .expect("logging in as the role");
    (role, pool)
}

/// Relations the consumer only reads: the view, the migration ledger and the operators'
/// retention and erasure decisions.
const READ_ONLY: &[&str] = &[
    "raw_update_collisions",
    "_sqlx_migrations",
    "retention_horizons",
    "erased_subjects",
];

/// The tables the consumer writes: every projection and protocol table but [`READ_ONLY`].
fn written_tables() -> Vec<&'static str> {
    ProjectionTable::ALL
        .iter()
        .map(|t| t.name())
        .chain(PROTOCOL_TABLES.iter().copied())
        .filter(|t| !READ_ONLY.contains(t))
        .collect()
}

async fn has(pool: &PgPool, sql: &str, role: &str, object: &str, privilege: &str) -> bool {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .bind(role)
        .bind(object)
        .bind(privilege)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql} {object} {privilege}: {e}"))
}

async fn has_table(pool: &PgPool, role: &str, table: &str, privilege: &str) -> bool {
    has(
        pool,
        "SELECT has_table_privilege($1, $2, $3)",
        role,
        table,
        privilege,
    )
    .await
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
async fn upgrading_a_database_with_stored_updates_counts_them_for_status() {
    let db = TestDb::create_empty().await.expect("fresh database");
    // The schema as version 6 left it, holding updates of two bots on two partitions.
    testkit::pg::MIGRATOR
        .run_to(6, db.pool())
        .await
        .expect("migrating to version 6");
    sqlx::query(
        "INSERT INTO raw_updates (bot_id, update_id, payload_sha256, update_type, payload_bytes, \
             received_at, kafka_topic, kafka_partition, kafka_offset, processor_version) \
         SELECT 1 + i % 2, i, sha256(int8send(i)), 'message', '{}', \
                to_timestamp(1760000000 + i), 't', i % 3 / 2, i, 1 \
         FROM generate_series(1, 30) AS i",
    )
    .execute(db.pool())
    .await
    .expect("storing updates");

    let out = migrate(db.url());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let counted: Vec<(i64, i32, i64, i64)> = sqlx::query_as(
        "SELECT bot_id, kafka_partition, updates, extract(epoch FROM newest_received_at)::bigint \
         FROM raw_update_counts ORDER BY 1, 2",
    )
    .fetch_all(db.pool())
    .await
    .expect("reading the counts");
    let expected: Vec<(i64, i32, i64, i64)> = sqlx::query_as(
        "SELECT bot_id, kafka_partition, count(*), extract(epoch FROM max(received_at))::bigint \
         FROM raw_updates GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .fetch_all(db.pool())
    .await
    .expect("counting raw updates");
    assert_eq!(
        expected.len(),
        4,
        "two bots on two partitions: {expected:?}"
    );
    assert_eq!(counted, expected);
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

#[tokio::test]
async fn migrate_grants_the_consumer_role_exactly_select_insert_update_and_nothing_else() {
    let db = TestDb::create_empty().await.expect("fresh database");
    let role = create_role(&db).await;
    let out = migrate_granting(db.url(), Some(&role));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pool = db.pool();
    for table in written_tables() {
        for privilege in ["SELECT", "INSERT", "UPDATE"] {
            assert!(
                has_table(pool, &role, table, privilege).await,
                "{privilege} on {table}"
            );
        }
        for privilege in ["DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"] {
            assert!(
                !has_table(pool, &role, table, privilege).await,
                "{privilege} on {table} must not be granted"
            );
        }
    }
    for relation in READ_ONLY {
        assert!(
            has_table(pool, &role, relation, "SELECT").await,
            "{relation}"
        );
        for privilege in ["INSERT", "UPDATE", "DELETE"] {
            assert!(
                !has_table(pool, &role, relation, privilege).await,
                "{privilege} on {relation} must not be granted"
            );
        }
    }
    assert!(
        has(
            pool,
            "SELECT has_sequence_privilege($1, $2, $3)",
            &role,
            "dead_letters_id_seq",
            "USAGE"
        )
        .await
    );
    let (temp, create_in_db, create_in_schema): (bool, bool, bool) = sqlx::query_as(
        "SELECT has_database_privilege($1, current_database(), 'TEMPORARY'), \
                has_database_privilege($1, current_database(), 'CREATE'), \
                has_schema_privilege($1, 'public', 'CREATE')",
    )
    .bind(&role)
    .fetch_one(pool)
    .await
    .expect("reading the database privileges");
    assert!(!temp, "TEMP must not be granted (not even through PUBLIC)");
    assert!(!create_in_db && !create_in_schema, "no DDL");

    // A table a later migration adds, created by the same owner, is covered by default.
    sqlx::query("CREATE TABLE added_by_a_later_migration (id bigserial PRIMARY KEY)")
        .execute(pool)
        .await
        .expect("creating a table as the owner");
    for (privilege, granted) in [
        ("SELECT", true),
        ("INSERT", true),
        ("UPDATE", true),
        ("DELETE", false),
    ] {
        assert_eq!(
            has_table(pool, &role, "added_by_a_later_migration", privilege).await,
            granted,
            "{privilege} on a later table"
        );
    }
    assert!(
        has(
            pool,
            "SELECT has_sequence_privilege($1, $2, $3)",
            &role,
            "added_by_a_later_migration_id_seq",
            "USAGE"
        )
        .await
    );
    sqlx::query("DROP TABLE added_by_a_later_migration")
        .execute(pool)
        .await
        .expect("dropping the table");

    let absent = migrate_granting(db.url(), Some("tgingest_no_such_role"));
    assert_eq!(absent.status.code(), Some(1));
    let err = String::from_utf8_lossy(&absent.stderr);
    assert!(
        err.contains("CONSUMER_ROLE")
            && err.contains("tgingest_no_such_role")
            && err.contains("does not exist"),
        "{err}"
    );
    let owner = migrate_granting(db.url(), Some("postgres"));
    assert_eq!(
        owner.status.code(),
        Some(1),
        "the owner cannot be the consumer's role"
    );
    assert!(
        String::from_utf8_lossy(&owner.stderr).contains("is the role running migrate"),
        "{}",
        String::from_utf8_lossy(&owner.stderr)
    );
    drop_role(&db, &role).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_a_consumer_logged_in_as_the_granted_role_writes_its_batches() {
    testkit::init_tracing("consumer=info,warn");
    let (db, broker, topic, group) = testkit::sink::setup(2).await;
    let (role, as_role) = granted_role(&db).await;
    let manifest = produce(&broker.client_config(), &topic, &messages(1, 60, 2)).await;
    let consumer = RunningConsumer::start(
        testkit::sink::config(&broker, &group, &topic),
        as_role.clone(),
    );
    wait_for_log_end(db.pool(), &group, &manifest, Duration::from_secs(45)).await;
    assert_invariants(db.pool(), &group, &manifest).await;
    consumer.stop().await;
    as_role.close().await;
    drop_role(&db, &role).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_a_consumer_whose_role_lacks_one_privilege_exits_with_one_line_naming_it() {
    testkit::init_tracing("consumer=info,warn");
    let (db, broker, topic, group) = testkit::sink::setup(1).await;
    let (role, as_role) = granted_role(&db).await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "REVOKE UPDATE ON consumer_offsets FROM \"{role}\""
    )))
    .execute(db.pool())
    .await
    .expect("revoking one privilege");
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        consumer::run(
            testkit::sink::config(&broker, &group, &topic),
            as_role.clone(),
            tokio_util::sync::CancellationToken::new(),
            std::sync::Arc::new(consumer::NoReadiness),
        ),
    )
    .await
    .expect("the consumer stops at startup instead of retrying 42501");
    let err = format!(
        "{:#}",
        result.expect_err("a missing privilege fails startup")
    );
    assert!(!err.contains('\n'), "one line: {err}");
    assert!(
        err.contains("lacks UPDATE on table consumer_offsets") && err.contains(&role),
        "{err}"
    );
    as_role.close().await;
    drop_role(&db, &role).await;
}
