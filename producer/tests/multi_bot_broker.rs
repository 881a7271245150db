//! Acceptance of per-bot isolation: three bots, one revoked mid-run and one starting with a token
//! Telegram rejects. The good bot's updates all land, the bad ones are reported per bot (readiness
//! unit and metrics), and the process keeps running.
//!
//! One test per binary: the metrics recorder is process-global.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use metrics_exporter_prometheus::PrometheusBuilder;
use processor::wire::header;
use producer::readiness::Unit;
use testkit::eventually;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_bots_one_revoked_mid_run_and_one_rejected_from_the_start_broker() {
    let handle = PrometheusBuilder::new().install_recorder().unwrap();
    // Bots #1 and #2 are known to the fake Telegram; bot #3's token is rejected from the start.
    let api = start_botsim(2).await;
    let (broker, topic) = start_broker().await;
    let readiness = Arc::new(RecordingReadiness::default());
    let producer =
        RunningProducer::spawn_with(polling_config(&api, &broker, &topic, 3), readiness.clone());
    let bot = |n: usize| BOT_IDS[n - 1].to_string();

    let mut sent = Vec::new();
    for n in 1..=5 {
        sent.push(push_message(&api, n, 10, "before"));
    }
    let last = *sent.last().unwrap();
    assert!(
        eventually(Duration::from_secs(30), async || {
            producer.is_finished() || api.confirmed_offset(TOKENS[0]) == Some(last + 1)
        })
        .await,
        "bot #1's first updates were never confirmed"
    );
    assert!(!producer.is_finished(), "the producer stopped");
    // Bot #2 serves before it is revoked.
    let serving = eventually(Duration::from_secs(20), async || {
        matches!(readiness.last(&Unit::bot(2)), Some(Ok(_)))
            && metric_sample(&handle, "tgingest_bot_up", &[("bot", &bot(2))]) == Some(1.0)
    })
    .await;
    assert!(serving, "bot #2 never served");

    api.set_token_revoked(TOKENS[1], true).unwrap();
    for n in 6..=10 {
        sent.push(push_message(&api, n, 10, "after"));
    }
    let last = *sent.last().unwrap();
    assert!(
        eventually(Duration::from_secs(30), async || api
            .confirmed_offset(TOKENS[0])
            == Some(last + 1))
        .await,
        "bot #1's updates after the revocation were never confirmed"
    );
    let revoked_reported = eventually(Duration::from_secs(15), async || {
        metric_sample(&handle, "tgingest_bot_up", &[("bot", &bot(2))]) == Some(0.0)
            && matches!(readiness.last(&Unit::bot(2)), Some(Err(_)))
    })
    .await;
    assert!(
        revoked_reported,
        "bot #2's revocation is not in tgingest_bot_up:\n{}",
        handle.render()
    );

    let records = read_topic(&broker, &topic, sent.len(), Duration::from_secs(20)).await;
    for id in &sent {
        let record = record_of(&records, *id);
        assert_eq!(record.header(header::BOT_ID), Some(bot(1).as_str()));
    }
    assert_eq!(records.len(), sent.len(), "{records:#?}");

    // Reported per bot: readiness units with the reason, and metrics labelled by bot.
    for (n, needle) in [
        (2, "401"),
        (3, "token rejected by Telegram (401 Unauthorized)"),
    ] {
        match readiness.last(&Unit::bot(n)) {
            Some(Err(reason)) => assert!(reason.contains(needle), "bot #{n}: {reason}"),
            other => panic!("bot #{n} is not reported as failing: {other:?}"),
        }
    }
    assert!(matches!(readiness.last(&Unit::bot(1)), Some(Ok(_))));
    assert_eq!(
        metric_sample(&handle, "tgingest_bot_up", &[("bot", &bot(1))]),
        Some(1.0)
    );
    assert_eq!(
        metric_sample(&handle, "tgingest_bot_up", &[("bot", &bot(3))]),
        Some(0.0)
    );
    for n in [2, 3] {
        let failures = metric_sample(
            &handle,
            "tgingest_bot_failures_total",
            &[("bot", &bot(n)), ("reason", "unauthorized")],
        );
        assert!(
            failures.is_some_and(|count| count >= 1.0),
            "bot #{n}: {failures:?}\n{}",
            handle.render()
        );
    }
    assert!(!producer.is_finished(), "the producer stopped");
    producer.stop().await.unwrap();
}
