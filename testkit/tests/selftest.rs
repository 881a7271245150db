//! Self-tests of the harness: each fixture does what later tests rely on, against the real
//! PostgreSQL server, the broker the environment selects, and real child processes.
//!
//! Broker tests run on `TestBroker::start()`'s choice: the mock cluster by default,
//! `TGINGEST_TEST_BROKER=tansu` for Tansu, `KAFKA_BROKERS` for an external broker.
#![allow(clippy::unwrap_used)]

use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::Signal;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use testkit::kafka::{BrokerKind, HostedMockBroker, TestBroker};
use testkit::pg::{PrivateCluster, StopMode, TestDb, database_exists};
use testkit::process::{ChildProcess, free_port, pid_is_alive, with_failpoints};

const LONG: Duration = Duration::from_secs(60);

fn sh(script: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(script);
    cmd
}

async fn produce(broker: &TestBroker, topic: &str, key: &str, payload: &str) -> anyhow::Result<()> {
    let producer: FutureProducer = broker
        .client_config()
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "30000")
        .create()?;
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(payload),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(err, _)| err)
        .context("producing")?;
    Ok(())
}

async fn consume_one(broker: &TestBroker, topic: &str) -> anyhow::Result<(String, String)> {
    let consumer: StreamConsumer = broker
        .client_config()
        .set("group.id", broker.unique_group("selftest"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[topic])?;
    let message = tokio::time::timeout(LONG, consumer.recv())
        .await
        .context("no record within a minute")??;
    let key = String::from_utf8(message.key().context("no key")?.to_vec())?;
    let payload = String::from_utf8(message.payload().context("no payload")?.to_vec())?;
    Ok((key, payload))
}

/// Fetches metadata for `topic` with a fresh client, off the runtime.
async fn fetch_topic_metadata(
    broker: &TestBroker,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<i32>> {
    let config = broker.client_config();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = config.create()?;
        let metadata = client.fetch_metadata(Some(&topic), timeout)?;
        let found = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .context("topic not in metadata")?;
        if let Some(err) = found.error() {
            anyhow::bail!("topic error {err:?}");
        }
        Ok(found.partitions().iter().map(|p| p.leader()).collect())
    })
    .await?
}

// ---------------------------------------------------------------- broker + database

#[tokio::test]
async fn a_record_travels_from_a_producer_through_the_broker_into_a_fresh_database_which_is_dropped_afterwards()
-> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    eprintln!(
        "broker: {:?} at {}",
        broker.kind(),
        broker.bootstrap_servers()
    );
    let db = TestDb::create().await?;
    let topic = broker.unique_topic("selftest");
    broker.create_topic(&topic, 3).await?;

    let payload = format!(
        r#"{{"update_id": {}, "message": {{"text": "héllo"}}}}"#,
        rand::random::<u32>()
    );
    produce(&broker, &topic, "7:42", &payload).await?;
    let (key, received) = consume_one(&broker, &topic).await?;
    assert_eq!(key, "7:42");
    assert_eq!(received, payload);

    sqlx::query("CREATE TABLE selftest_records (payload jsonb NOT NULL)")
        .execute(db.pool())
        .await?;
    sqlx::query("INSERT INTO selftest_records (payload) VALUES ($1::jsonb)")
        .bind(&received)
        .execute(db.pool())
        .await?;
    let stored: serde_json::Value = sqlx::query_scalar("SELECT payload FROM selftest_records")
        .fetch_one(db.pool())
        .await?;
    assert_eq!(stored, serde_json::from_str::<serde_json::Value>(&payload)?);

    let name = db.name().to_owned();
    assert!(database_exists(&name).await?);
    drop(db);
    assert!(
        !database_exists(&name).await?,
        "database {name} survived its handle"
    );
    Ok(())
}

#[tokio::test]
async fn creating_a_topic_returns_only_when_every_partition_has_a_leader() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let topic = broker.unique_topic("selftest-leaders");
    broker.create_topic(&topic, 12).await?;
    let leaders = fetch_topic_metadata(&broker, &topic, Duration::from_secs(10)).await?;
    assert_eq!(leaders.len(), 12);
    assert!(leaders.iter().all(|&leader| leader >= 0), "{leaders:?}");
    // Creating it again with the same shape is accepted; another shape is not.
    broker.create_topic(&topic, 12).await?;
    assert!(broker.create_topic(&topic, 5).await.is_err());
    Ok(())
}

#[tokio::test]
async fn clients_never_create_a_missing_topic() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let topic = broker.unique_topic("selftest-missing");
    for _ in 0..2 {
        let outcome = fetch_topic_metadata(&broker, &topic, Duration::from_secs(5)).await;
        let error = format!("{:#}", outcome.unwrap_err());
        assert!(error.contains("UNKNOWN_TOPIC"), "{error}");
    }
    Ok(())
}

#[tokio::test]
async fn unique_names_never_repeat_and_keep_their_prefix() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let topics: std::collections::HashSet<String> =
        (0..100).map(|_| broker.unique_topic("t")).collect();
    let groups: std::collections::HashSet<String> =
        (0..100).map(|_| broker.unique_group("g")).collect();
    assert_eq!(topics.len(), 100);
    assert_eq!(groups.len(), 100);
    assert!(topics.iter().all(|t| t.starts_with("t-")));
    assert!(groups.iter().all(|g| g.starts_with("g-")));
    Ok(())
}

#[tokio::test]
async fn an_unavailable_broker_refuses_clients_and_keeps_its_records_when_it_returns()
-> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    testkit::require_broker(
        broker.kind(),
        &[BrokerKind::Mock, BrokerKind::HostedMock, BrokerKind::Tansu],
        "an external broker cannot be taken down by a test",
    );
    let topic = broker.unique_topic("selftest-outage");
    broker.create_topic(&topic, 2).await?;
    produce(&broker, &topic, "1:1", "before the outage").await?;

    broker.set_available(false).await?;
    broker.set_available(false).await?;
    let during = fetch_topic_metadata(&broker, &topic, Duration::from_secs(3)).await;
    assert!(
        during.is_err(),
        "metadata answered during the outage: {during:?}"
    );

    broker.set_available(true).await?;
    broker.set_available(true).await?;
    let after = fetch_topic_metadata(&broker, &topic, Duration::from_secs(30)).await?;
    assert_eq!(after.len(), 2);
    let (_, payload) = consume_one(&broker, &topic).await?;
    assert_eq!(payload, "before the outage");
    Ok(())
}

#[tokio::test]
async fn a_hosted_mock_cluster_serves_clients_and_obeys_commands() -> anyhow::Result<()> {
    let broker = TestBroker::start_with(BrokerKind::HostedMock).await?;
    let topic = broker.unique_topic("selftest-hosted");
    broker.create_topic(&topic, 4).await?;
    produce(&broker, &topic, "3:3", "hosted").await?;
    let (_, payload) = consume_one(&broker, &topic).await?;
    assert_eq!(payload, "hosted");

    broker.set_available(false).await?;
    assert!(
        fetch_topic_metadata(&broker, &topic, Duration::from_secs(3))
            .await
            .is_err()
    );
    broker.set_available(true).await?;
    fetch_topic_metadata(&broker, &topic, Duration::from_secs(30)).await?;
    Ok(())
}

#[tokio::test]
async fn a_hosted_mock_cluster_reports_bad_commands_and_dies_with_its_handle() -> anyhow::Result<()>
{
    let hosted = HostedMockBroker::start_with_brokers(1).await?;
    let error = hosted.create_topic("bad", 0).await.unwrap_err();
    assert!(format!("{error:#}").contains("err"), "{error:#}");
    // A later command still gets its own answer, not the earlier one's.
    hosted.create_topic("good", 1).await?;
    let pid = hosted.process().pid();
    drop(hosted);
    assert!(!pid_is_alive(pid));
    Ok(())
}

// ---------------------------------------------------------------- PostgreSQL

#[tokio::test]
async fn a_test_database_is_migrated_and_dropped_even_with_a_connection_still_open()
-> anyhow::Result<()> {
    let db = TestDb::create().await?;
    assert!(db.name().starts_with("tgt_"));
    assert!(db.url().ends_with(&format!("/{}", db.name())));
    let migrations_table: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text")
            .fetch_one(db.pool())
            .await?;
    assert_eq!(migrations_table.as_deref(), Some("_sqlx_migrations"));
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(db.pool())
        .await?;
    assert_eq!(applied, testkit::pg::MIGRATOR.iter().count() as i64);

    let pool = db.pool().clone();
    let _held = pool.acquire().await?;
    let name = db.name().to_owned();
    drop(db);
    assert!(!database_exists(&name).await?);
    Ok(())
}

#[tokio::test]
async fn an_empty_test_database_has_no_migrations_applied() -> anyhow::Result<()> {
    let db = TestDb::create_empty().await?;
    let migrations_table: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text")
            .fetch_one(db.pool())
            .await?;
    assert_eq!(migrations_table, None);
    Ok(())
}

#[tokio::test]
async fn old_leftover_test_databases_are_swept_when_a_new_one_is_created_but_recent_ones_stay()
-> anyhow::Result<()> {
    use sqlx::{AssertSqlSafe, Connection};
    let suffix = testkit::random_suffix(8);
    let old = format!("tgt_1000000000_{suffix}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let recent = format!("tgt_{now}_{suffix}");
    let mut admin = sqlx::PgConnection::connect(&testkit::pg::server_url()).await?;
    for name in [&old, &recent] {
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut admin)
            .await?;
    }

    let _db = TestDb::create_empty().await?;
    let old_exists = database_exists(&old).await?;
    let recent_exists = database_exists(&recent).await?;
    sqlx::query(AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{recent}\" WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await?;
    assert!(!old_exists, "{old} was not swept");
    assert!(recent_exists, "{recent} was swept although it is recent");
    Ok(())
}

#[tokio::test]
async fn a_private_cluster_keeps_committed_rows_across_an_immediate_restart() -> anyhow::Result<()>
{
    let cluster = PrivateCluster::start().await?;
    let url = cluster.url("postgres");
    {
        let pool = sqlx::PgPool::connect(&url).await?;
        sqlx::query("CREATE TABLE survivor (id int PRIMARY KEY)")
            .execute(&pool)
            .await?;
        sqlx::query("INSERT INTO survivor VALUES (1), (2)")
            .execute(&pool)
            .await?;
        pool.close().await;
    }
    let port = cluster.port();
    cluster.restart(StopMode::Immediate).await?;
    assert_eq!(cluster.port(), port);

    let pool = sqlx::PgPool::connect(&url).await?;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM survivor")
        .fetch_one(&pool)
        .await?;
    assert_eq!(count, 2);
    pool.close().await;

    cluster.stop(StopMode::Fast).await?;
    // A single connection attempt: a pool would retry until its acquire timeout.
    let refused = <sqlx::PgConnection as sqlx::Connection>::connect(&url).await;
    assert!(
        refused.is_err(),
        "the stopped cluster still accepts connections"
    );
    Ok(())
}

#[tokio::test]
async fn a_private_cluster_disappears_with_its_directory_when_dropped() -> anyhow::Result<()> {
    let cluster = PrivateCluster::start().await?;
    let data = cluster.data_dir();
    let pid_file = std::fs::read_to_string(data.join("postmaster.pid"))?;
    let postmaster: u32 = pid_file.lines().next().context("empty pid file")?.parse()?;
    assert!(pid_is_alive(postmaster));
    drop(cluster);
    assert!(!pid_is_alive(postmaster));
    assert!(!data.exists());
    Ok(())
}

// ---------------------------------------------------------------- processes

#[tokio::test]
async fn a_child_and_everything_it_started_are_killed_when_the_handle_is_dropped()
-> anyhow::Result<()> {
    let child = ChildProcess::spawn(sh("sleep 1000 & echo grandchild=$!; wait"), "dropped", LONG)?;
    let line = child
        .wait_for_line(|l| l.starts_with("grandchild="), LONG)
        .await?;
    let grandchild: u32 = line.trim_start_matches("grandchild=").parse()?;
    let pid = child.pid();
    assert!(pid_is_alive(pid) && pid_is_alive(grandchild));
    drop(child);
    assert!(!pid_is_alive(pid), "child {pid} outlived its handle");
    // The grandchild is reparented, and PID 1 may be slow to reap it.
    assert!(
        testkit::eventually(Duration::from_secs(5), async || !pid_is_alive(grandchild)).await,
        "grandchild {grandchild} outlived the handle"
    );
    Ok(())
}

#[tokio::test]
async fn the_hard_timeout_kills_a_sleeping_child() -> anyhow::Result<()> {
    let started = Instant::now();
    let child = ChildProcess::spawn(sh("sleep 1000"), "sleeper", Duration::from_secs(1))?;
    let status = child.wait(LONG).await?;
    assert_eq!(status.signal(), Some(Signal::SIGKILL as i32));
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(child.output_text().contains("hard timeout"));
    Ok(())
}

#[tokio::test]
async fn a_stopped_child_is_still_killed_on_drop() -> anyhow::Result<()> {
    let child = ChildProcess::spawn(sh("echo up; sleep 1000"), "stopped", LONG)?;
    child.wait_for_line(|l| l == "up", LONG).await?;
    child.signal(Signal::SIGSTOP)?;
    let pid = child.pid();
    drop(child);
    assert!(!pid_is_alive(pid));
    Ok(())
}

#[tokio::test]
async fn a_child_is_killed_when_its_owner_panics() -> anyhow::Result<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let outcome = std::thread::spawn(move || {
        let child = ChildProcess::spawn(sh("sleep 1000"), "panicking", LONG).unwrap();
        tx.send(child.pid()).unwrap();
        panic!("the test failed while its child ran");
    })
    .join();
    assert!(outcome.is_err());
    let pid = rx.recv()?;
    assert!(!pid_is_alive(pid));
    Ok(())
}

#[tokio::test]
async fn wait_for_line_sees_stdout_and_stderr_and_the_exit_status_is_kept() -> anyhow::Result<()> {
    let child = ChildProcess::spawn(
        sh("echo one; echo two >&2; sleep 0.2; echo three; exit 3"),
        "chatty",
        LONG,
    )?;
    assert_eq!(child.wait_for_line(|l| l == "two", LONG).await?, "two");
    let (index, _) = child.wait_for_line_from(0, |l| l == "three", LONG).await?;
    assert_eq!(index, 2);
    let status = child.wait(LONG).await?;
    assert_eq!(status.code(), Some(3));
    assert_eq!(child.exit_status().and_then(|s| s.code()), Some(3));
    let text = child.output_text();
    assert!(
        ["one", "two", "three"]
            .iter()
            .all(|l| text.lines().any(|x| x == *l)),
        "{text}"
    );
    let log = std::fs::read_to_string(child.log_path())?;
    assert!(
        log.contains("[out] one") && log.contains("[err] two"),
        "{log}"
    );
    Ok(())
}

#[tokio::test]
async fn wait_for_line_fails_at_once_when_the_child_exits_without_the_line() -> anyhow::Result<()> {
    let child = ChildProcess::spawn(sh("echo nothing useful"), "quitter", LONG)?;
    let started = Instant::now();
    let error = child
        .wait_for_line(|l| l == "never", LONG)
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10));
    let message = format!("{error:#}");
    assert!(
        message.contains("nothing useful") && message.contains("exit code 0"),
        "{message}"
    );
    Ok(())
}

#[tokio::test]
async fn a_sigterm_reaches_the_child_and_signalling_an_exited_child_is_an_error()
-> anyhow::Result<()> {
    let child = ChildProcess::spawn(
        sh("trap 'echo got-term; exit 0' TERM; echo ready; while :; do sleep 0.05; done"),
        "terminated",
        LONG,
    )?;
    child.wait_for_line(|l| l == "ready", LONG).await?;
    child.signal(Signal::SIGTERM)?;
    child.wait_for_line(|l| l == "got-term", LONG).await?;
    assert!(child.wait(LONG).await?.success());
    assert!(child.signal(Signal::SIGTERM).is_err());
    Ok(())
}

#[tokio::test]
async fn failpoints_reach_the_child_through_its_environment() -> anyhow::Result<()> {
    let mut cmd = sh("echo \"fp=$FAILPOINTS\"");
    with_failpoints(&mut cmd, "commit.before=panic;fetch=sleep(10)");
    let child = ChildProcess::spawn(cmd, "failpoints", LONG)?;
    let line = child.wait_for_line(|l| l.starts_with("fp="), LONG).await?;
    assert_eq!(line, "fp=commit.before=panic;fetch=sleep(10)");
    Ok(())
}

#[tokio::test]
async fn a_free_port_can_be_bound() -> anyhow::Result<()> {
    let port = free_port()?;
    assert_ne!(port, 0);
    std::net::TcpListener::bind(("127.0.0.1", port))?;
    Ok(())
}
