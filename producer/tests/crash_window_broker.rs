//! The crash window of at-least-once intake: Kafka acknowledged a batch, Telegram was not told
//! yet. A poller dying exactly there (the failpoint `producer::after_publish_before_confirm`)
//! must lose nothing: the next start fetches the batch again and publishes it again (duplicates
//! in Kafka are allowed, losses are not).
//!
//! Needs the `failpoints` feature (CI runs the suite with it); without it this file is empty.
//! The failpoint registry is process-global: one test per binary.

#![cfg(feature = "failpoints")]
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use processor::wire::header;
use testkit::eventually;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_kafka_ack_and_confirm_loses_nothing_on_restart_broker() {
    let api = start_botsim(1).await;
    let (broker, topic) = start_broker().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            api.push_kind(
                TOKENS[0],
                "message",
                format!(r#"{{"message_id":{i},"chat":{{"id":{i}}},"text":"t"}}"#).as_bytes(),
            )
            .unwrap(),
        );
    }
    // The poller dies once, right after Kafka acknowledged the batch.
    fail::cfg("producer::after_publish_before_confirm", "1*panic(crash)").unwrap();
    let mut first = RunningProducer::spawn(polling_config(&api, &broker, &topic, 1));
    let outcome = first.join(Duration::from_secs(30)).await;
    assert!(outcome.is_err(), "the producer survived the crash point");
    let published = read_topic(&broker, &topic, ids.len(), Duration::from_secs(20)).await;
    assert_eq!(
        published.len(),
        ids.len(),
        "the batch was acknowledged before the crash"
    );
    assert_eq!(
        api.confirmed_offset(TOKENS[0]),
        None,
        "confirmed despite the crash"
    );

    fail::remove("producer::after_publish_before_confirm");
    let second = RunningProducer::spawn(polling_config(&api, &broker, &topic, 1));
    let last = *ids.last().unwrap();
    assert!(
        eventually(Duration::from_secs(30), async || api
            .confirmed_offset(TOKENS[0])
            == Some(last + 1))
        .await,
        "the restarted producer never confirmed the batch"
    );
    second.stop().await.unwrap();
    let records = read_topic(&broker, &topic, usize::MAX, Duration::from_secs(4)).await;
    for id in &ids {
        let copies = records
            .iter()
            .filter(|r| r.header(header::UPDATE_ID) == Some(id.to_string().as_str()))
            .count();
        assert!(copies >= 1, "update {id} lost");
    }
    // The restart re-published the unconfirmed batch: each update is there twice.
    assert_eq!(records.len(), 2 * ids.len());
}
