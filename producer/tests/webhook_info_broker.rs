//! Webhook mode shows what Telegram holds for each bot: getWebhookInfo is read per bot and its
//! pending update count and last delivery error are exported as metrics (the last error message
//! as a log line when it changes), with the age of the last delivery this producer received.
//!
//! One test per binary: the metrics recorder and the log subscriber are process-global.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use testkit::eventually;

const SECRET: &str = "info-secret_42";

fn sample(handle: &PrometheusHandle, name: &str, bot: i64) -> Option<f64> {
    metric_sample(handle, name, &[("bot", &bot.to_string())])
}

/// Points the bot's webhook at `url` with `secret`, as an operator would.
async fn set_webhook(api: &botsim::BotApi, url: &str, secret: &str) {
    let answer = reqwest::Client::new()
        .post(format!("{}/bot{}/setWebhook", api.base_url(), TOKENS[0]))
        .json(&serde_json::json!({"url": url, "secret_token": secret}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_updates_and_delivery_errors_are_exported_per_bot_broker() {
    let handle = PrometheusBuilder::new().install_recorder().unwrap();
    let logs = capture_logs_globally(tracing::Level::INFO);
    let api = start_botsim(1).await;
    let (broker, topic) = start_broker().await;
    let (mut config, addr) = into_webhook(polling_config(&api, &broker, &topic, 1), SECRET);
    if let producer::IntakeMode::Webhook(webhook) = &mut config.mode {
        webhook.info_interval = Duration::from_millis(300);
    }
    let producer = RunningProducer::spawn(config);
    let url = format!("http://{addr}{}", producer::webhook_path(BOT_IDS[0]));
    // Registered at an address where nothing listens: every delivery fails, Telegram keeps the
    // updates.
    let nowhere = format!(
        "http://127.0.0.1:{}{}",
        testkit::free_port().unwrap(),
        producer::webhook_path(BOT_IDS[0])
    );
    set_webhook(&api, &nowhere, SECRET).await;
    push_message(&api, 1, 6, "held");
    push_message(&api, 2, 6, "held too");
    let bot = BOT_IDS[0];
    let held = eventually(Duration::from_secs(20), async || {
        sample(&handle, "tgingest_webhook_pending_updates", bot) == Some(2.0)
            && sample(
                &handle,
                "tgingest_webhook_last_error_timestamp_seconds",
                bot,
            )
            .is_some_and(|date| date > 0.0)
    })
    .await;
    assert!(
        held,
        "what Telegram holds is not exported:\n{}",
        handle.render()
    );
    let info: serde_json::Value = reqwest::Client::new()
        .post(format!(
            "{}/bot{}/getWebhookInfo",
            api.base_url(),
            TOKENS[0]
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let message = info["result"]["last_error_message"].as_str().unwrap();
    let text = logs.text();
    assert!(
        text.lines().any(|l| l.contains("WARN")
            && l.contains("webhook delivery error")
            && l.contains(message)),
        "the last delivery error ({message}) was not logged:\n{text}"
    );

    // Nothing was delivered meanwhile: the age of the last delivery grows.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let age = sample(&handle, "tgingest_webhook_last_delivery_age_seconds", bot);
    assert!(age.is_some_and(|age| age >= 2.5), "{age:?}");

    // Fixed: Telegram delivers, holds nothing, and the last delivery is recent.
    set_webhook(&api, &url, SECRET).await;
    let drained = eventually(Duration::from_secs(20), async || {
        sample(&handle, "tgingest_webhook_pending_updates", bot) == Some(0.0)
            && sample(&handle, "tgingest_webhook_last_delivery_age_seconds", bot)
                .is_some_and(|age| age < 2.0)
    })
    .await;
    assert!(
        drained,
        "the recovery is not exported:\n{}",
        handle.render()
    );
    assert_eq!(
        read_topic(&broker, &topic, 2, Duration::from_secs(20))
            .await
            .len(),
        2
    );
    // The error is logged when it changes, not at every read.
    let errors = logs
        .text()
        .lines()
        .filter(|l| l.contains("webhook delivery error"))
        .count();
    assert_eq!(errors, 1, "{}", logs.text());
    producer.stop().await.unwrap();
}
