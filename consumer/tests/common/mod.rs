//! What the consumer's integration tests share beyond testkit: their consumer configuration
//! (fast retries, frequent stats), their logging, and a group of two members.
#![allow(dead_code)]

use std::time::Duration;

use consumer::{ConsumerConfig, ConsumerStats};
use testkit::sink::RunningConsumer;
use testkit::{TestBroker, TestDb, wait_until};

/// Logs to the test's captured output (once per process).
pub fn init_tracing() {
    testkit::init_tracing("consumer=info,warn");
}

/// testkit's test configuration with quick retries and stats every second.
pub fn config(broker: &TestBroker, group: &str, topic: &str) -> ConsumerConfig {
    let mut config = testkit::sink::config(broker, group, topic);
    config.retry = consumer::RetryPolicy {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(500),
    };
    config.stats_interval = Duration::from_secs(1);
    config
}

/// A fresh database, broker, topic and group name, with logging.
pub async fn setup(partitions: i32) -> (TestDb, TestBroker, String, String) {
    init_tracing();
    testkit::sink::setup(partitions).await
}

/// Two consumers of one group on `db`, returned once the group has given both partitions:
/// traffic produced earlier could be drained by the first before the second joins (seen on
/// Tansu, whose group formation takes seconds).
pub async fn two_members(
    config: ConsumerConfig,
    db: &TestDb,
) -> (RunningConsumer, RunningConsumer) {
    let a = RunningConsumer::start(config.clone(), db.pool().clone());
    let b = RunningConsumer::start(config, db.pool().clone());
    wait_until(
        Duration::from_secs(45),
        "both consumers own partitions",
        || async {
            ConsumerStats::get(&a.stats.assignments) > 0
                && ConsumerStats::get(&b.stats.assignments) > 0
        },
    )
    .await;
    // The group settles: on Tansu a join takes several assignment rounds a few seconds apart
    // (seen: a third round re-assigning partitions the first member already owned), and a test
    // that counts epochs or rebalances must start after the last one.
    let counts = || {
        (
            ConsumerStats::get(&a.stats.assignments),
            ConsumerStats::get(&b.stats.assignments),
        )
    };
    let mut last = counts();
    let mut quiet_since = tokio::time::Instant::now();
    wait_until(
        Duration::from_secs(45),
        "no assignment round for 5 s",
        async || {
            let now = counts();
            if now != last {
                last = now;
                quiet_since = tokio::time::Instant::now();
            }
            quiet_since.elapsed() >= Duration::from_secs(5)
        },
    )
    .await;
    (a, b)
}
