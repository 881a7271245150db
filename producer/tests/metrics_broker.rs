//! The operator's metrics tell the truth: updates received by bot and kind, Telegram errors by
//! code, publish latency, the last confirmed update id, and the age of the oldest unconfirmed
//! update, which grows while Kafka is down and returns to zero once the batch is confirmed.
//!
//! One test per binary: the metrics recorder is process-global.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use botsim::Fault;
use common::*;
use metrics_exporter_prometheus::PrometheusBuilder;
use testkit::BrokerKind;
use testkit::eventually;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_updates_errors_and_confirms_and_age_the_unconfirmed_broker() {
    let handle = PrometheusBuilder::new().install_recorder().unwrap();
    let api = start_botsim(1).await;
    let (broker, topic) = start_broker().await;
    let bot = BOT_IDS[0].to_string();
    let producer = RunningProducer::spawn(polling_config(&api, &broker, &topic, 1));
    assert!(
        eventually(Duration::from_secs(15), async || !get_updates_requests(
            &api
        )
        .is_empty())
        .await
    );
    for fault in [
        Fault::TooManyRequests { retry_after: 1 },
        Fault::Conflict,
        Fault::ServerError(502),
    ] {
        api.inject_on(TOKENS[0], "getUpdates", fault).unwrap();
    }
    api.push_kind(
        TOKENS[0],
        "message",
        br#"{"message_id":1,"chat":{"id":2},"text":"a"}"#,
    )
    .unwrap();
    let poll = api
        .push_kind(
            TOKENS[0],
            "poll",
            br#"{"id":"p","question":"q","options":[]}"#,
        )
        .unwrap();
    assert!(
        eventually(Duration::from_secs(30), async || {
            metric_sample(
                &handle,
                "tgingest_last_confirmed_update_id",
                &[("bot", &bot)],
            ) == Some(poll as f64)
        })
        .await,
        "last confirmed id never reached {poll}:\n{}",
        handle.render()
    );
    let received = |kind: &str| {
        metric_sample(
            &handle,
            "tgingest_updates_received_total",
            &[("bot", &bot), ("kind", kind)],
        )
    };
    assert_eq!(received("message"), Some(1.0));
    assert_eq!(received("poll"), Some(1.0));
    for code in ["429", "409", "502"] {
        assert_eq!(
            metric_sample(&handle, "tgingest_telegram_errors_total", &[("code", code)]),
            Some(1.0),
            "code {code}"
        );
    }
    assert!(metric_sample(&handle, "tgingest_publish_seconds_count", &[]).unwrap() >= 1.0);
    assert_eq!(
        metric_sample(
            &handle,
            "tgingest_oldest_unconfirmed_age_seconds",
            &[("bot", &bot)]
        ),
        Some(0.0)
    );

    if broker.kind() == BrokerKind::External {
        eprintln!("skipped the outage part: an external broker cannot be taken down");
    } else {
        broker.set_available(false).await.unwrap();
        let held = api
            .push_kind(
                TOKENS[0],
                "message",
                br#"{"message_id":2,"chat":{"id":2},"text":"b"}"#,
            )
            .unwrap();
        // Each failed publish attempt (3 s delivery timeout) refreshes the age.
        let aged = eventually(Duration::from_secs(15), async || {
            metric_sample(
                &handle,
                "tgingest_oldest_unconfirmed_age_seconds",
                &[("bot", &bot)],
            )
            .is_some_and(|age| age >= 2.5)
        })
        .await;
        assert!(
            aged,
            "the age never grew while Kafka was down:\n{}",
            handle.render()
        );
        assert!(metric_sample(&handle, "tgingest_publish_failures_total", &[]).unwrap() >= 1.0);
        broker.set_available(true).await.unwrap();
        assert!(
            eventually(Duration::from_secs(40), async || {
                metric_sample(
                    &handle,
                    "tgingest_last_confirmed_update_id",
                    &[("bot", &bot)],
                ) == Some(held as f64)
                    && metric_sample(
                        &handle,
                        "tgingest_oldest_unconfirmed_age_seconds",
                        &[("bot", &bot)],
                    ) == Some(0.0)
            })
            .await,
            "not confirmed, or the age not reset, after the broker returned:\n{}",
            handle.render()
        );
    }
    producer.stop().await.unwrap();
}
