//! What the consumer's integration tests share beyond testkit: their consumer configuration
//! (fast retries, frequent stats) and their logging.
#![allow(dead_code)]

use std::time::Duration;

use consumer::ConsumerConfig;
use testkit::{TestBroker, TestDb};

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
