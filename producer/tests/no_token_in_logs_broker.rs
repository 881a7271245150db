//! Secrets never reach the logs: the producer is run at trace level (its own events, reqwest,
//! hyper, librdkafka through the `log` bridge) through startup failures, every Telegram fault, a
//! broker outage and the webhook, and the captured text must contain neither a bot token nor the
//! webhook secret.
//!
//! One test per binary: the subscriber is process-global, so every task and thread is captured.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use botsim::Fault;
use common::*;
use testkit::BrokerKind;
use testkit::eventually;

const SECRET: &str = "hook-SECRET-zz9-plural-z-alpha";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_at_trace_level_never_contain_a_token_or_the_webhook_secret_broker() {
    let logs = capture_logs_globally(tracing::Level::TRACE);

    let api = start_botsim(1).await;
    let (broker, topic) = start_broker().await;

    // Startup: a rejected token (the only one, so the process ends), and a Bot API that refuses
    // connections (retried until stopped).
    let mut rejected = polling_config(&api, &broker, &topic, 2);
    rejected.tokens.remove(0);
    let mut run = RunningProducer::spawn(rejected);
    let error = run.join(Duration::from_secs(20)).await.unwrap_err();
    tracing::error!("startup failed: {error:#}");
    let mut unreachable = polling_config(&api, &broker, &topic, 1);
    unreachable.api_url = "http://127.0.0.1:1/".parse().unwrap();
    let run = RunningProducer::spawn(unreachable);
    assert!(
        eventually(Duration::from_secs(10), async || logs
            .text()
            .contains("Connection refused"))
        .await,
        "the refused connection was not logged"
    );
    run.stop().await.unwrap();

    // Polling through every fault, then a broker outage.
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
        Fault::MalformedBody,
        Fault::Stall(Duration::from_secs(6)),
    ] {
        api.inject_on(TOKENS[0], "getUpdates", fault).unwrap();
    }
    let id = api
        .push_kind(
            TOKENS[0],
            "message",
            br#"{"message_id":1,"chat":{"id":2},"text":"a"}"#,
        )
        .unwrap();
    assert!(
        eventually(Duration::from_secs(40), async || api
            .confirmed_offset(TOKENS[0])
            == Some(id + 1))
        .await
    );
    if broker.kind() != BrokerKind::External {
        broker.set_available(false).await.unwrap();
        let down = api
            .push_kind(
                TOKENS[0],
                "message",
                br#"{"message_id":2,"chat":{"id":2},"text":"b"}"#,
            )
            .unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        broker.set_available(true).await.unwrap();
        assert!(
            eventually(Duration::from_secs(40), async || api
                .confirmed_offset(TOKENS[0])
                == Some(down + 1))
            .await
        );
    }
    producer.stop().await.unwrap();

    // Webhook: registration, a wrong secret, a right one.
    let (mut config, addr) = into_webhook(polling_config(&api, &broker, &topic, 1), SECRET);
    if let producer::IntakeMode::Webhook(webhook) = &mut config.mode {
        webhook.public_url = Some(format!("http://{addr}/").parse().unwrap());
    }
    let producer = RunningProducer::spawn(config);
    let up = eventually(Duration::from_secs(30), async || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()
    })
    .await;
    assert!(up);
    assert_eq!(post(addr, "not-the-secret").await, 401);
    assert_eq!(post(addr, SECRET).await, 200);
    producer.stop().await.unwrap();

    let text = logs.text();
    assert!(
        text.lines().filter(|l| l.contains("TRACE")).count() > 20,
        "trace level was not captured"
    );
    for expected in [
        "token rejected by Telegram",
        "rate limited (429)",
        "getUpdates conflict (409)",
        "server error 502",
        "malformed response",
        "request timed out",
        "webhook registered",
        "wrong secret token",
    ] {
        assert!(
            text.contains(expected),
            "the scenario {expected:?} was not logged"
        );
    }
    for token in TOKENS {
        let (_, secret_part) = token.split_once(':').unwrap();
        assert!(
            !text.contains(secret_part),
            "a bot token leaked into the logs"
        );
    }
    assert!(
        !text.contains(SECRET),
        "the webhook secret leaked into the logs"
    );
}

async fn post(addr: SocketAddr, secret: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("http://{addr}/webhook/{}", BOT_IDS[0]))
        .header(producer::SECRET_HEADER, secret)
        .body(r#"{"update_id":5,"message":{"chat":{"id":1}}}"#)
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}
