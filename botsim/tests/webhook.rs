//! Webhook mode: setWebhook / deleteWebhook / getWebhookInfo and push delivery.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use botsim::{BotApiConfig, WebhookConfig, WebhookOutcome};
use common::{TOKEN, WebhookReceiver, message, start, start_with};
use serde_json::json;
use testkit::wait_until;

fn fast_retries() -> BotApiConfig {
    BotApiConfig {
        webhook: WebhookConfig {
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_millis(400),
            ..WebhookConfig::default()
        },
        ..BotApiConfig::default()
    }
}

#[tokio::test]
async fn get_updates_conflicts_while_a_webhook_is_set() {
    let h = start().await;
    let receiver = WebhookReceiver::start().await;
    let set = h.call("setWebhook", json!({"url": receiver.url()})).await;
    assert_eq!(
        set.json(),
        json!({"ok": true, "result": true, "description": "Webhook was set"})
    );

    let answer = h.get("getUpdates", "").await;
    assert_eq!(answer.status, 409);
    assert!(
        answer
            .description()
            .starts_with("Conflict: can't use getUpdates method while webhook is active"),
        "{}",
        answer.description()
    );

    let deleted = h.call("deleteWebhook", json!({})).await;
    assert_eq!(deleted.json()["description"], "Webhook was deleted");
    assert_eq!(h.get("getUpdates", "").await.status, 200);
    let again = h.call("deleteWebhook", json!({})).await;
    assert_eq!(again.json()["description"], "Webhook is already deleted");
}

#[tokio::test]
async fn set_webhook_terminates_a_waiting_long_poll() {
    let h = start().await;
    let receiver = WebhookReceiver::start().await;
    let poll = tokio::spawn(
        h.http
            .get(format!("{}?timeout=20", h.url("getUpdates")))
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.call("setWebhook", json!({"url": receiver.url()})).await;
    let answer = common::answer(poll.await.unwrap().unwrap()).await;
    assert_eq!(answer.status, 409);
    assert_eq!(
        answer.description(),
        "Conflict: terminated by setWebhook request"
    );
}

#[tokio::test]
async fn updates_are_posted_one_per_request_with_the_secret_header_and_exact_bytes() {
    let h = start().await;
    let receiver = WebhookReceiver::start().await;
    let raw: &[u8] = br#"{"update_id":9000,"message":{"text":"a\u0000b \ud800"}}"#;
    h.api.push_update(TOKEN, raw).unwrap();
    let second = h.push("message", message("second"));

    let set = h
        .call(
            "setWebhook",
            json!({"url": receiver.url(), "secret_token": "s3cr3t_-X", "max_connections": 1}),
        )
        .await;
    assert_eq!(set.status, 200);

    let received = receiver.wait_for(2).await;
    assert_eq!(received[0].body.as_ref(), raw);
    let body: serde_json::Value = serde_json::from_slice(&received[1].body).unwrap();
    assert_eq!(body["update_id"], second);
    for request in &received {
        assert_eq!(
            request.headers["x-telegram-bot-api-secret-token"],
            "s3cr3t_-X"
        );
        assert_eq!(request.headers["content-type"], "application/json");
    }
    wait_until(Duration::from_secs(15), "the queue to drain", async || {
        h.api.pending_update_count(TOKEN).unwrap() == 0
    })
    .await;

    // Pushed while the webhook is set: delivered promptly.
    let third = h.push("message", message("third"));
    let received = receiver.wait_for(3).await;
    let body: serde_json::Value = serde_json::from_slice(&received[2].body).unwrap();
    assert_eq!(body["update_id"], third);
    assert!(format!("{:?}", h.api.requests()).contains("<redacted>"));
    assert!(!format!("{:?}", h.api.requests()).contains("s3cr3t_-X"));
}

#[tokio::test]
async fn a_failed_delivery_is_retried_with_backoff_and_reported_in_webhook_info() {
    let h = start_with(fast_retries()).await;
    let receiver = WebhookReceiver::start().await;
    receiver.script(&[500, 500, 200]);
    let id = h.push("message", message("retry me"));
    h.call(
        "setWebhook",
        json!({"url": receiver.url(), "max_connections": 1}),
    )
    .await;

    receiver.wait_for(3).await;
    wait_until(
        Duration::from_secs(15),
        "the update to be dropped after the 2xx",
        async || h.api.pending_update_count(TOKEN).unwrap() == 0,
    )
    .await;
    let attempts = h.api.webhook_attempts();
    let outcomes: Vec<(i64, u32, WebhookOutcome)> = attempts
        .iter()
        .map(|a| (a.update_id, a.attempt, a.outcome.clone()))
        .collect();
    assert_eq!(
        outcomes,
        vec![
            (id, 1, WebhookOutcome::Status(500)),
            (id, 2, WebhookOutcome::Status(500)),
            (id, 3, WebhookOutcome::Status(200)),
        ]
    );
    // The first retry is immediate, the second waits 2 × retry_base.
    let gap = attempts[2].at.duration_since(attempts[1].at).unwrap();
    assert!(
        gap >= Duration::from_millis(190),
        "second retry waited {gap:?}"
    );

    let info = h.get("getWebhookInfo", "").await.json();
    assert_eq!(info["result"]["url"], receiver.url());
    assert_eq!(info["result"]["pending_update_count"], 0);
    assert_eq!(info["result"]["max_connections"], 1);
    assert_eq!(
        info["result"]["last_error_message"],
        "Wrong response from the webhook: 500 Internal Server Error"
    );
    assert!(info["result"]["last_error_date"].as_i64().unwrap() > 1_700_000_000);
}

#[tokio::test]
async fn an_unreachable_webhook_keeps_updates_pending() {
    let h = start_with(fast_retries()).await;
    let id = h.push("message", message("nobody home"));
    // A port nobody listens on: bind, read the port, release it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    h.call(
        "setWebhook",
        json!({"url": format!("http://127.0.0.1:{port}/hook")}),
    )
    .await;
    wait_until(Duration::from_secs(15), "two failed attempts", async || {
        h.api.webhook_attempts().len() >= 2
    })
    .await;
    let attempts = h.api.webhook_attempts();
    assert!(
        attempts
            .iter()
            .all(|a| a.update_id == id && matches!(a.outcome, WebhookOutcome::Error(_)))
    );
    assert_eq!(h.api.pending_update_count(TOKEN).unwrap(), 1);
    let info = h.get("getWebhookInfo", "").await.json();
    assert_eq!(info["result"]["pending_update_count"], 1);
    assert!(info["result"]["last_error_message"].as_str().is_some());
}

#[tokio::test]
async fn deliveries_run_concurrently_up_to_max_connections() {
    let h = start().await;
    let receiver = WebhookReceiver::start().await;
    receiver.set_delay(Duration::from_millis(300));
    for i in 0..8 {
        h.push("message", message(&format!("m{i}")));
    }
    h.call(
        "setWebhook",
        json!({"url": receiver.url(), "max_connections": 4}),
    )
    .await;
    receiver.wait_for(8).await;
    assert!(receiver.max_in_flight() > 1, "deliveries overlapped");
    assert!(
        receiver.max_in_flight() <= 4,
        "at most max_connections: {}",
        receiver.max_in_flight()
    );
}

#[tokio::test]
async fn duplicates_and_shuffled_order_can_be_requested() {
    let config = BotApiConfig {
        seed: 7,
        webhook: WebhookConfig {
            duplicate_probability: 1.0,
            shuffle: true,
            ..WebhookConfig::default()
        },
        ..BotApiConfig::default()
    };
    let h = start_with(config).await;
    let receiver = WebhookReceiver::start().await;
    let ids: Vec<i64> = (0..20)
        .map(|i| h.push("message", message(&format!("m{i}"))))
        .collect();
    h.call(
        "setWebhook",
        json!({"url": receiver.url(), "max_connections": 1}),
    )
    .await;

    let received = receiver.wait_for(40).await;
    wait_until(Duration::from_secs(15), "the queue to drain", async || {
        h.api.pending_update_count(TOKEN).unwrap() == 0
    })
    .await;
    let order: Vec<i64> = received
        .iter()
        .map(|r| {
            serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["update_id"]
                .as_i64()
                .unwrap()
        })
        .collect();
    let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
    for id in &order {
        *counts.entry(*id).or_default() += 1;
    }
    assert_eq!(counts.keys().copied().collect::<Vec<_>>(), ids);
    assert!(
        counts.values().all(|&n| n == 2),
        "each update delivered exactly twice: {counts:?}"
    );
    let first_seen: Vec<i64> = order
        .iter()
        .enumerate()
        .filter(|(i, id)| !order[..*i].contains(id))
        .map(|(_, id)| *id)
        .collect();
    assert_ne!(first_seen, ids, "the order was shuffled");
}

#[tokio::test]
async fn set_webhook_validates_its_url_and_secret() {
    let h = start().await;
    let bad_url = h.call("setWebhook", json!({"url": "not a url"})).await;
    assert_eq!(bad_url.status, 400);
    assert_eq!(
        bad_url.description(),
        "Bad Request: invalid webhook URL specified"
    );
    let bad_secret = h
        .call(
            "setWebhook",
            json!({"url": "http://127.0.0.1:9/x", "secret_token": "no spaces"}),
        )
        .await;
    assert_eq!(bad_secret.status, 400);
    assert_eq!(
        bad_secret.description(),
        "Bad Request: secret token contains unallowed characters"
    );
}

#[tokio::test]
async fn drop_pending_updates_clears_the_queue_and_allowed_updates_is_reported() {
    let h = start().await;
    let receiver = WebhookReceiver::start().await;
    receiver.script(&[500; 50]);
    h.push("message", message("a"));
    h.push("message", message("b"));
    let set = h
        .call(
            "setWebhook",
            json!({"url": receiver.url(), "allowed_updates": ["message", "chat_member"], "drop_pending_updates": true}),
        )
        .await;
    assert_eq!(set.status, 200);
    let info = h.get("getWebhookInfo", "").await.json();
    assert_eq!(info["result"]["pending_update_count"], 0);
    assert_eq!(
        info["result"]["allowed_updates"],
        json!(["message", "chat_member"])
    );

    let same = h.call("setWebhook", json!({"url": receiver.url()})).await;
    assert_eq!(same.json()["description"], "Webhook is already set");

    h.call("deleteWebhook", json!({})).await;
    h.push("message", message("c"));
    h.call("deleteWebhook", json!({"drop_pending_updates": true}))
        .await;
    assert_eq!(h.api.pending_update_count(TOKEN).unwrap(), 0);
}

#[tokio::test]
async fn teloxide_can_manage_the_bot_through_json_and_multipart_requests() {
    use teloxide_core::requests::{Request, Requester};
    use teloxide_core::types::AllowedUpdate;

    let h = start().await;
    let receiver = WebhookReceiver::start().await;
    let bot = teloxide_core::Bot::new(TOKEN).set_api_url(h.api.base_url().parse().unwrap());

    let me = bot.get_me().await.unwrap();
    assert_eq!(me.id.0, u64::try_from(common::BOT_ID).unwrap());
    assert_eq!(me.username(), "ingest_test_bot");

    // teloxide sends setWebhook as multipart/form-data.
    let mut set = bot.set_webhook(receiver.url().parse().unwrap());
    set.secret_token = Some("tok_123".to_owned());
    set.allowed_updates = Some(vec![AllowedUpdate::Message, AllowedUpdate::MessageReaction]);
    set.max_connections = Some(3);
    set.send().await.unwrap();

    let info = bot.get_webhook_info().await.unwrap();
    assert_eq!(info.url.map(|u| u.to_string()), Some(receiver.url()));
    assert_eq!(info.max_connections, Some(3));
    assert_eq!(
        info.allowed_updates,
        Some(vec![AllowedUpdate::Message, AllowedUpdate::MessageReaction])
    );

    h.push("message", message("to teloxide's webhook"));
    let received = receiver.wait_for(1).await;
    assert_eq!(
        received[0].headers["x-telegram-bot-api-secret-token"],
        "tok_123"
    );

    bot.delete_webhook().await.unwrap();
    assert!(bot.get_webhook_info().await.unwrap().url.is_none());
}
