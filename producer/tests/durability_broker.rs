//! The producer checks what the topic's durability rests on: topics are never auto-created (even
//! when the caller's client settings do not say so), and a replication factor below 3 or a
//! `min.insync.replicas` below 2 is warned about at startup, once, with a metric, unless the
//! caller expects a single-broker setup (the demo).

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use common::*;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use testkit::eventually;

/// The process-global recorder, shared by this binary's tests (their topics differ).
fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| PrometheusBuilder::new().install_recorder().unwrap())
}

fn sample(name: &str, topic: &str) -> Option<f64> {
    metric_sample(recorder(), name, &[("topic", topic)])
}

/// Runs a producer on a fresh one-replica topic until it polls, and returns what it logged.
async fn startup_logs(expect_durable_topic: bool) -> (String, String) {
    let (logs, _guard) = capture_thread_logs(tracing::Level::INFO);
    recorder();
    let api = start_botsim(1).await;
    let (broker, topic) =
        start_controlled_broker("an external broker's topics may be replicated").await;
    let mut config = polling_config(&api, &broker, &topic, 1);
    config.expect_durable_topic = expect_durable_topic;
    let producer = RunningProducer::spawn(config);
    assert!(
        eventually(Duration::from_secs(20), async || !get_updates_requests(
            &api
        )
        .is_empty())
        .await
    );
    producer.stop().await.unwrap();
    (logs.text(), topic)
}

#[tokio::test(flavor = "current_thread")]
async fn a_topic_with_one_replica_is_warned_about_once_with_a_metric_broker() {
    let (text, topic) = startup_logs(true).await;
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("replication factor"))
        .collect();
    assert_eq!(warnings.len(), 1, "{text}");
    assert!(warnings[0].contains(&topic), "{}", warnings[0]);
    assert_eq!(
        sample("tgingest_topic_replication_factor", &topic),
        Some(1.0)
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_single_broker_setup_that_expects_it_sees_no_durability_warning_broker() {
    let (text, topic) = startup_logs(false).await;
    assert!(
        !text
            .lines()
            .any(|l| l.contains("WARN") && (l.contains("replication") || l.contains("insync"))),
        "{text}"
    );
    // The metric is exported all the same.
    assert_eq!(
        sample("tgingest_topic_replication_factor", &topic),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_is_never_auto_created_even_when_the_client_settings_omit_it_broker() {
    let api = start_botsim(1).await;
    let (broker, _topic) = start_broker().await;
    let missing = broker.unique_topic("absent");
    // Only the bootstrap servers: librdkafka's producer default would let the broker create it.
    let mut client = rdkafka::ClientConfig::new();
    client.set("bootstrap.servers", broker.bootstrap_servers());
    for (key, value) in broker.security_settings() {
        client.set(key, value);
    }
    let mut producer = RunningProducer::spawn(polling_config_for(&api, client, &missing));
    let error = producer.join(Duration::from_secs(30)).await.unwrap_err();
    let text = format!("{error:#}");
    assert!(text.contains(&missing), "{text}");
    assert!(text.contains("does not exist"), "{text}");
}
