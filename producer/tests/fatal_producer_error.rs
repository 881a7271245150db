//! A fatal librdkafka error (here: an idempotence sequence desynchronisation the mock cluster
//! injects) makes the producer unusable; the producer is rebuilt and the update still lands.
//!
//! Runs on a mock cluster the test owns (fault injection needs its handle), so it is not a
//! `broker` test: Tansu cannot inject Produce errors.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use processor::wire::header;
use rdkafka::mocking::MockCluster;
use rdkafka::types::RDKafkaApiKey;
use rdkafka::types::RDKafkaRespErr;
use testkit::eventually;

#[tokio::test(flavor = "current_thread")]
async fn a_fatal_producer_error_rebuilds_the_producer_and_the_update_still_lands() {
    let logs = LogBuffer::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(logs.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let cluster = MockCluster::new(1).unwrap();
    let topic = format!("fatal-{}", testkit::random_suffix(8));
    cluster.create_topic(&topic, PARTITIONS, 1).unwrap();
    let mut client = rdkafka::ClientConfig::new();
    client
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("allow.auto.create.topics", "false");

    let api = start_botsim(1).await;
    let mut config = polling_config_for(&api, client.clone(), &topic);
    config.delivery_timeout = Duration::from_secs(5);
    let producer = RunningProducer::spawn(config);
    assert!(
        eventually(Duration::from_secs(15), async || !get_updates_requests(
            &api
        )
        .is_empty())
        .await
    );

    // The head-of-line ProduceRequest fails with a sequence error: librdkafka declares the
    // idempotent producer fatally broken.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER],
    );
    let id = api
        .push_kind(
            TOKENS[0],
            "message",
            br#"{"message_id":1,"chat":{"id":4},"text":"x"}"#,
        )
        .unwrap();
    assert!(
        eventually(Duration::from_secs(40), async || api
            .confirmed_offset(TOKENS[0])
            == Some(id + 1))
        .await,
        "never confirmed; logs:\n{}",
        logs.text()
    );
    let records = read_topic_with(client, &topic, 1, Duration::from_secs(20)).await;
    producer.stop().await.unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(
        records[0].header(header::UPDATE_ID),
        Some(id.to_string().as_str())
    );
    let text = logs.text();
    assert!(
        text.contains("fatal Kafka producer error; producer recreated"),
        "the producer was not rebuilt:\n{text}"
    );
}
