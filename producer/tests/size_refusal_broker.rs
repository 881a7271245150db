//! A record the broker refuses for its size (the topic's `max.message.bytes` is below the
//! producer's limit). The broker refuses the whole produce batch, so the refused update's batch
//! mates are refused with it. Neither test broker enforces topic limits: the failpoint
//! `producer::topic_limit` injects the broker's MSG_SIZE_TOO_LARGE delivery error.
//!
//! Needs the `failpoints` feature (CI runs the suite with it); without it this file is empty.
//! The failpoint registry is process-global: one test per binary.

#![cfg(feature = "failpoints")]
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use processor::wire::header;
use sha2::{Digest, Sha256};
use testkit::eventually;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_the_broker_refuses_becomes_a_hashed_envelope_and_its_batch_mates_land_unchanged_broker()
 {
    let api = start_botsim(1).await;
    let (broker, topic) = start_broker().await;
    let before = push_message(&api, 1, 9, "a");
    let text = "z".repeat(20_000);
    let big = push_message(&api, 2, 9, &text);
    let after = push_message(&api, 3, 9, "c");
    let big_bytes = format!(
        r#"{{"update_id":{big},"message":{{"message_id":2,"chat":{{"id":9}},"text":"{text}"}}}}"#
    );
    // The topic takes 10 000 bytes; the producer's own limit (1 MB) lets the update through.
    fail::cfg("producer::topic_limit", "return(10000)").unwrap();
    let producer = RunningProducer::spawn(polling_config(&api, &broker, &topic, 1));
    let confirmed = eventually(Duration::from_secs(30), async || {
        api.confirmed_offset(TOKENS[0]) == Some(after + 1)
    })
    .await;
    let records = count_records(&broker, &topic).await;
    producer.stop().await.unwrap();
    fail::remove("producer::topic_limit");
    assert!(
        confirmed,
        "the refusal blocked the confirm (confirmed {:?}, {records} records written)",
        api.confirmed_offset(TOKENS[0])
    );

    let records = read_topic(&broker, &topic, usize::MAX, Duration::from_secs(3)).await;
    assert_eq!(records.len(), 3, "nothing is written twice: {records:#?}");
    for innocent in [before, after] {
        let record = record_of(&records, innocent);
        assert_eq!(
            record.header(header::ERROR),
            None,
            "a batch mate of the refused update was mislabelled"
        );
        assert!(
            record
                .value
                .starts_with(format!(r#"{{"update_id":{innocent},"#).as_bytes())
        );
    }
    let envelope = record_of(&records, big);
    let error = envelope.header(header::ERROR).unwrap();
    assert!(error.starts_with("too_large"), "{error}");
    assert_eq!(envelope.key, format!("{}:9", BOT_IDS[0]));
    assert_eq!(
        envelope.header(header::ORIGINAL_SIZE),
        Some(big_bytes.len().to_string().as_str())
    );
    let value: serde_json::Value = serde_json::from_slice(&envelope.value).unwrap();
    assert!(
        value.get("original").is_none(),
        "the envelope embeds the refused original"
    );
    assert_eq!(value["tg_error"]["original_size"], big_bytes.len());
    let sha256: String = Sha256::digest(big_bytes.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(value["tg_error"]["original_sha256"], sha256.as_str());
}
