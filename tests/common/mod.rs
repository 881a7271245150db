//! What the operator-command tests (replay, status, dlq, cli) share beyond testkit: their
//! consumer, on a pool whose sessions they can find by name, and running the `tgingest` binary.
#![allow(dead_code)]

use std::time::Duration;

use consumer::ConsumerConfig;
use testkit::sink::RunningConsumer;
use testkit::{TestBroker, TestDb};

/// How long a consumer may take to reach the log ends of a test topic.
pub const LOG_END_TIMEOUT: Duration = Duration::from_secs(45);

/// `application_name` of the in-process consumer's connections.
pub const CONSUMER_APP: &str = "operator-test-consumer";

/// testkit's test configuration with a quick idle re-read, so rewinds are noticed at once.
pub fn config(broker: &TestBroker, group: &str, topic: &str) -> ConsumerConfig {
    let mut config = testkit::sink::config(broker, group, topic);
    config.idle_reread_interval = Duration::from_millis(200);
    config
}

/// A consumer in this process on a pool of its own named [`CONSUMER_APP`].
pub async fn start_consumer(config: ConsumerConfig, db: &TestDb) -> RunningConsumer {
    RunningConsumer::start_on_own_pool(config, db, CONSUMER_APP).await
}

/// A fresh database, broker, topic and group name, with logging.
pub async fn setup(partitions: i32) -> (TestDb, TestBroker, String, String) {
    testkit::init_tracing("warn");
    testkit::sink::setup(partitions).await
}

/// Runs the `tgingest` binary with a clean environment (only `PATH`) plus `env`.
pub fn tgingest(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tgingest"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("running tgingest")
}

/// The operator's `replay --to-earliest --execute` of every partition, then waits until
/// `running` has read the whole topic (`manifest`) again and the stored offsets are back at the
/// log ends.
pub async fn replay_everything_and_wait(
    db: &TestDb,
    broker: &TestBroker,
    group: &str,
    topic: &str,
    running: &RunningConsumer,
    manifest: &[testkit::invariants::ProducedRecord],
) {
    use consumer::ops::replay::{self, ReplayTarget};
    let consumed_before = running.consumed();
    let plan = replay::plan(
        db.pool(),
        &broker.client_config(),
        group,
        topic,
        &[],
        ReplayTarget::Earliest,
    )
    .await
    .expect("the replay plan");
    replay::apply(db.pool(), &plan, false)
        .await
        .expect("the replay applies");
    let total = manifest.len() as u64;
    testkit::wait_until(
        Duration::from_secs(30),
        "the consumer re-reads the whole topic",
        || async { running.consumed() >= consumed_before + total },
    )
    .await;
    testkit::sink::wait_for_log_end(db.pool(), group, manifest, LOG_END_TIMEOUT).await;
}
