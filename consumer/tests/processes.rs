//! Crash tests with real consumer processes — the shipped `tgingest consumer` binary, built by
//! the cargo running the tests: SIGKILL churn, scaling up and down, SIGTERM drain. The broker is
//! the mock cluster, reached over TCP by the child processes; data stays far below its 5 MB
//! per-partition cap.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use testkit::invariants::assert_invariants;
use testkit::sink::wait_for_log_end;
use testkit::updates::{messages, produce};
use testkit::{BrokerKind, ChildProcess, TestBroker, TestDb};

/// The `tgingest` binary, built (or found up to date) with the cargo running the tests. This
/// crate's tests cannot name another package's binary with `CARGO_BIN_EXE_*`.
fn tgingest_binary() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            // target/<profile>/deps/processes-… → target/<profile>/tgingest
            let exe = std::env::current_exe().unwrap();
            let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
            let path = profile_dir.join("tgingest");
            if let Some(cargo) = std::env::var_os("CARGO") {
                let mut build = Command::new(cargo);
                build.args(["build", "-p", "tgingest", "--bin", "tgingest"]);
                if profile_dir.ends_with("release") {
                    build.arg("--release");
                }
                if cfg!(feature = "failpoints") {
                    build.args(["--features", "tgingest/failpoints"]);
                }
                let status = build.status().unwrap();
                assert!(status.success(), "building the tgingest binary failed");
            }
            assert!(
                path.is_file(),
                "{} is missing: `cargo build --bin tgingest`",
                path.display()
            );
            path
        })
        .clone()
}

fn spawn_sink(
    db: &TestDb,
    broker: &TestBroker,
    topic: &str,
    group: &str,
    name: &str,
) -> ChildProcess {
    let mut cmd = Command::new(tgingest_binary());
    cmd.arg("consumer")
        .env("DATABASE_URL", db.url())
        .env("KAFKA_BROKERS", broker.bootstrap_servers())
        .env("KAFKA_TOPIC", topic)
        .env("KAFKA_GROUP_ID", group)
        .env("KAFKA_SESSION_TIMEOUT", "6s")
        .env("ADMIN_LISTEN", "off")
        .env("RUST_LOG", "consumer=info,tgingest=info,warn")
        .env_remove("DATABASE_URL_FILE")
        .env_remove("FAILPOINTS");
    ChildProcess::spawn(cmd, name, Duration::from_secs(300)).unwrap()
}

async fn started(child: &ChildProcess) {
    child
        .wait_for_line(
            |l| l.contains("starting") && l.contains("consumer"),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
}

/// Consumer churn runs on the mock cluster (or an external Kafka). On Tansu it is skipped, with the
/// reason printed: Tansu 0.6's group coordinator panics under members SIGKILLed and rejoining every
/// few seconds (DESIGN.md §8), which would test Tansu, not tgingest. The first CI pass runs these
/// tests on the mock cluster.
fn churn_broker() -> BrokerKind {
    let kind = BrokerKind::from_env().unwrap();
    testkit::require_broker(
        kind,
        &[
            BrokerKind::Mock,
            BrokerKind::HostedMock,
            BrokerKind::External,
        ],
        "consumer churn crashes Tansu 0.6's group coordinator",
    );
    match kind {
        BrokerKind::External => BrokerKind::External,
        _ => BrokerKind::Mock,
    }
}

async fn setup_processes(
    partitions: i32,
    kind: BrokerKind,
) -> (TestDb, TestBroker, String, String) {
    init_tracing();
    let db = TestDb::create().await.unwrap();
    let broker = TestBroker::start_with(kind).await.unwrap();
    let topic = broker.unique_topic("tg-updates");
    broker.create_topic(&topic, partitions).await.unwrap();
    let group = broker.unique_group("sink");
    (db, broker, topic, group)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_three_processes_under_sigkill_churn_lose_and_double_nothing() {
    let kind = churn_broker();
    let (db, broker, topic, group) = setup_processes(6, kind).await;
    let mut sinks: Vec<ChildProcess> = (0..3)
        .map(|i| spawn_sink(&db, &broker, &topic, &group, &format!("sink-{i}-0")))
        .collect();
    for s in &sinks {
        started(s).await;
    }

    // At least 20k updates produced over ~20 s while one process is SIGKILLed and restarted every
    // ~3 s; traffic goes on (up to 60 rounds) until the churn has landed four kills, so every kill
    // falls during traffic however slowly processes start on a loaded machine.
    const MIN_KILLS: usize = 4;
    let kills_landed = Arc::new(AtomicUsize::new(0));
    let producing = {
        let broker_config = broker.client_config();
        let topic = topic.clone();
        let kills_landed = kills_landed.clone();
        tokio::spawn(async move {
            let mut manifest = Vec::new();
            let mut round = 0;
            while round < 20 || (kills_landed.load(Ordering::SeqCst) < MIN_KILLS && round < 60) {
                let batch = messages(round * 1_000, 1_000, 6);
                manifest.extend(produce(&broker_config, &topic, &batch).await);
                tokio::time::sleep(Duration::from_millis(900)).await;
                round += 1;
            }
            (manifest, round)
        })
    };
    let mut kills: u64 = 0;
    let mut generation = 1;
    while !producing.is_finished() {
        tokio::time::sleep(Duration::from_millis(2_500 + (kills % 3) * 700)).await;
        if producing.is_finished() {
            break;
        }
        // Kill a process that owns partitions (it logged an ownership and is writing), so the
        // crash lands in the middle of real work rather than on an idle newcomer.
        let Some(victim) = (0..sinks.len())
            .map(|i| (i + kills as usize) % sinks.len())
            .find(|&i| sinks[i].output_text().contains("took ownership"))
        else {
            continue;
        };
        sinks[victim].signal(Signal::SIGKILL).unwrap();
        sinks[victim].wait(Duration::from_secs(10)).await.unwrap();
        kills += 1;
        kills_landed.fetch_add(1, Ordering::SeqCst);
        sinks[victim] = spawn_sink(
            &db,
            &broker,
            &topic,
            &group,
            &format!("sink-{victim}-{generation}"),
        );
        generation += 1;
        started(&sinks[victim]).await;
    }
    let (manifest, rounds) = producing.await.unwrap();
    assert_eq!(manifest.len() as i64, rounds * 1_000);
    assert!(
        kills >= MIN_KILLS as u64,
        "the churn killed {kills} owning processes during traffic"
    );

    // The group settles (dead members time out after 6 s), then the oracle runs.
    wait_for_log_end(db.pool(), &group, &manifest, Duration::from_secs(60)).await;
    assert_invariants(db.pool(), &group, &manifest).await;
    let moves: i64 = sqlx::query_scalar(
        "SELECT sum(owner_epoch - 1)::bigint FROM consumer_offsets WHERE group_id = $1",
    )
    .bind(&group)
    .fetch_one(db.pool())
    .await
    .unwrap();
    eprintln!("churn: {kills} owning processes SIGKILLed, {moves} ownership transfers");
    assert!(
        moves >= 3,
        "partitions changed owner repeatedly ({moves} transfers)"
    );
    for s in &sinks {
        s.signal(Signal::SIGTERM).unwrap();
    }
    for s in &sinks {
        assert!(
            s.wait(Duration::from_secs(30)).await.unwrap().success(),
            "{}",
            s.report()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_scaling_one_to_three_to_one_process_under_load_loses_and_doubles_nothing() {
    let kind = churn_broker();
    let (db, broker, topic, group) = setup_processes(6, kind).await;
    let first = spawn_sink(&db, &broker, &topic, &group, "scale-0");
    started(&first).await;
    let mut manifest = Vec::new();
    let config = broker.client_config();
    for round in 0..4 {
        manifest.extend(produce(&config, &topic, &messages(round * 1_000, 500, 6)).await);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let extra: Vec<ChildProcess> = (1..3)
        .map(|i| spawn_sink(&db, &broker, &topic, &group, &format!("scale-{i}")))
        .collect();
    for round in 4..10 {
        manifest.extend(produce(&config, &topic, &messages(round * 1_000, 500, 6)).await);
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    // Scale down by SIGTERM: each leaves the group after finishing its in-flight batch.
    for s in &extra {
        s.signal(Signal::SIGTERM).unwrap();
    }
    for round in 10..14 {
        manifest.extend(produce(&config, &topic, &messages(round * 1_000, 500, 6)).await);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for s in &extra {
        assert!(
            s.wait(Duration::from_secs(30)).await.unwrap().success(),
            "{}",
            s.report()
        );
        assert!(
            s.output_text()
                .lines()
                .any(|l| l.contains("stopped") && l.contains("component=\"consumer\"")),
            "{}",
            s.report()
        );
    }
    wait_for_log_end(db.pool(), &group, &manifest, Duration::from_secs(40)).await;
    assert_invariants(db.pool(), &group, &manifest).await;
    first.signal(Signal::SIGTERM).unwrap();
    assert!(
        first.wait(Duration::from_secs(30)).await.unwrap().success(),
        "{}",
        first.report()
    );
}
