//! Webhook intake: the secret is checked before anything reaches Kafka, 200 means Kafka has the
//! update, and a broker outage is answered with 5xx so Telegram retries.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use processor::wire::header;
use testkit::eventually;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "webhook-secret_0123456789";

async fn post(addr: SocketAddr, bot_id: i64, secret: Option<&str>, body: &[u8]) -> u16 {
    let client = reqwest::Client::new();
    let mut request = client
        .post(format!("http://{addr}/webhook/{bot_id}"))
        .header("content-type", "application/json")
        .body(body.to_vec())
        .timeout(Duration::from_secs(20));
    if let Some(secret) = secret {
        request = request.header(producer::SECRET_HEADER, secret);
    }
    request.send().await.unwrap().status().as_u16()
}

/// Waits until the webhook endpoint accepts connections (startup runs getMe and a topic check).
async fn wait_listening(addr: SocketAddr) {
    let up = eventually(Duration::from_secs(30), async || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()
    })
    .await;
    assert!(up, "the webhook endpoint never listened on {addr}");
}

/// One bot behind a webhook producer with [`SECRET`], listening.
async fn serve_webhook() -> (
    botsim::BotApi,
    testkit::TestBroker,
    String,
    RunningProducer,
    SocketAddr,
) {
    let api = start_botsim(1).await;
    let (broker, topic) = start_broker().await;
    let (config, addr) = into_webhook(polling_config(&api, &broker, &topic, 1), SECRET);
    let producer = RunningProducer::spawn(config);
    wait_listening(addr).await;
    (api, broker, topic, producer, addr)
}

fn update(id: i64, chat: i64, text: &str) -> Vec<u8> {
    format!(r#"{{"update_id":{id},"message":{{"message_id":{id},"chat":{{"id":{chat}}},"text":"{text}"}}}}"#)
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_missing_secret_is_refused_with_401_and_writes_nothing_broker() {
    let (_api, broker, topic, producer, addr) = serve_webhook().await;

    let bot = BOT_IDS[0];
    assert_eq!(post(addr, bot, None, &update(1, 1, "no secret")).await, 401);
    assert_eq!(
        post(addr, bot, Some("wrong"), &update(2, 1, "short")).await,
        401
    );
    let same_length_wrong: String = SECRET.chars().rev().collect();
    assert_eq!(
        post(
            addr,
            bot,
            Some(&same_length_wrong),
            &update(3, 1, "same length")
        )
        .await,
        401
    );
    assert_eq!(post(addr, bot, Some(""), &update(4, 1, "empty")).await, 401);
    // A bot this producer does not serve, with the right secret.
    assert_eq!(
        post(addr, 42, Some(SECRET), &update(5, 1, "stranger")).await,
        404
    );
    // The right secret: accepted, and the only record in the topic.
    assert_eq!(
        post(addr, bot, Some(SECRET), &update(6, 1, "welcome")).await,
        200
    );

    let records = read_topic(&broker, &topic, usize::MAX, Duration::from_secs(4)).await;
    producer.stop().await.unwrap();
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0].value, update(6, 1, "welcome"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_means_kafka_has_the_update_byte_identical_with_key_and_headers_broker() {
    let api = start_botsim(1).await;
    let (broker, topic) = start_broker().await;
    let (config, addr) = into_webhook(polling_config(&api, &broker, &topic, 1), SECRET);
    let producer = RunningProducer::spawn(config);
    wait_listening(addr).await;

    let raw = update(77, -100500, r"lone \udc00 and nul \u0000");
    assert_eq!(post(addr, BOT_IDS[0], Some(SECRET), &raw).await, 200);
    // Not JSON at all: still acknowledged, as a tg-error envelope (a dead letter downstream).
    assert_eq!(
        post(addr, BOT_IDS[0], Some(SECRET), b"{\"update_id\":78,").await,
        200
    );

    let records = read_topic(&broker, &topic, 2, Duration::from_secs(20)).await;
    producer.stop().await.unwrap();
    assert_eq!(records.len(), 2);
    let record = records
        .iter()
        .find(|r| r.header(header::ERROR).is_none())
        .unwrap();
    assert_eq!(record.value, raw);
    assert_eq!(record.key, format!("{}:-100500", BOT_IDS[0]));
    assert_eq!(record.header(header::UPDATE_ID), Some("77"));
    assert_eq!(record.header(header::UPDATE_TYPE), Some("message"));
    assert_eq!(
        record.header(header::BOT_ID),
        Some(BOT_IDS[0].to_string().as_str())
    );
    let envelope = records
        .iter()
        .find(|r| r.header(header::ERROR).is_some())
        .unwrap();
    assert!(
        envelope
            .header(header::ERROR)
            .unwrap()
            .starts_with("not_json")
    );
    let value: serde_json::Value = serde_json::from_slice(&envelope.value).unwrap();
    assert_eq!(value["original"], "{\"update_id\":78,");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_makes_the_endpoint_answer_5xx_until_it_returns_broker() {
    let api = start_botsim(1).await;
    let (broker, topic) =
        start_controlled_broker("an external broker cannot be taken down by a test").await;
    let (config, addr) = into_webhook(polling_config(&api, &broker, &topic, 1), SECRET);
    let producer = RunningProducer::spawn(config);
    wait_listening(addr).await;
    assert_eq!(
        post(addr, BOT_IDS[0], Some(SECRET), &update(1, 1, "up")).await,
        200
    );

    broker.set_available(false).await.unwrap();
    let status = post(addr, BOT_IDS[0], Some(SECRET), &update(2, 1, "down")).await;
    assert!(
        (500..600).contains(&status),
        "answered {status} while Kafka was down"
    );

    broker.set_available(true).await.unwrap();
    let mut status = 0;
    for _ in 0..10 {
        status = post(addr, BOT_IDS[0], Some(SECRET), &update(2, 1, "down")).await;
        if status == 200 {
            break;
        }
    }
    assert_eq!(status, 200, "never accepted after the broker returned");
    let records = read_topic(&broker, &topic, usize::MAX, Duration::from_secs(5)).await;
    producer.stop().await.unwrap();
    assert!(records.iter().any(|r| r.value == update(2, 1, "down")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setwebhook_at_startup_lets_telegram_push_updates_into_kafka_broker() {
    let api = start_botsim(1).await;
    let (broker, topic) = start_broker().await;
    let (mut config, addr) = into_webhook(polling_config(&api, &broker, &topic, 1), SECRET);
    if let producer::IntakeMode::Webhook(webhook) = &mut config.mode {
        webhook.public_url = Some(format!("http://{addr}/").parse().unwrap());
    }
    // Queued before the webhook exists: Telegram keeps it and pushes it once the webhook is set.
    let early = api
        .push_kind(
            TOKENS[0],
            "message",
            br#"{"message_id":1,"chat":{"id":8},"text":"early"}"#,
        )
        .unwrap();
    let producer = RunningProducer::spawn(config);
    wait_listening(addr).await;
    let late = api
        .push_kind(
            TOKENS[0],
            "message",
            br#"{"message_id":2,"chat":{"id":8},"text":"late"}"#,
        )
        .unwrap();

    let records = read_topic(&broker, &topic, 2, Duration::from_secs(30)).await;
    assert!(
        eventually(Duration::from_secs(10), async || api
            .pending_update_count(TOKENS[0])
            .unwrap()
            == 0)
        .await,
        "Telegram still holds updates: the webhook did not acknowledge them"
    );
    producer.stop().await.unwrap();
    let ids: Vec<&str> = records
        .iter()
        .filter_map(|r| r.header(header::UPDATE_ID))
        .collect();
    assert!(ids.contains(&early.to_string().as_str()), "{ids:?}");
    assert!(ids.contains(&late.to_string().as_str()), "{ids:?}");

    let requests = api.requests();
    let set = requests.iter().find(|r| r.method == "setwebhook").unwrap();
    assert_eq!(
        set.params.get("url"),
        Some(format!("http://{addr}/webhook/{}", BOT_IDS[0]).as_str())
    );
    assert_eq!(set.params.get("secret_token"), Some(SECRET));
    let allowed: Vec<String> =
        serde_json::from_str(set.params.get("allowed_updates").unwrap()).unwrap();
    assert!(
        allowed.iter().any(|k| k == "message_reaction_count"),
        "{allowed:?}"
    );
    assert!(
        !requests.iter().any(|r| r.method == "deletewebhook"),
        "a webhook replica must never delete the webhook"
    );
    assert_eq!(set.params.get("drop_pending_updates"), Some("false"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_readiness_recovers_after_an_outage_without_further_requests_broker() {
    let api = start_botsim(1).await;
    let (broker, topic) =
        start_controlled_broker("an external broker cannot be taken down by a test").await;
    let (config, addr) = into_webhook(polling_config(&api, &broker, &topic, 1), SECRET);
    let readiness = std::sync::Arc::new(RecordingReadiness::default());
    let producer = RunningProducer::spawn_with(config, readiness.clone());
    wait_listening(addr).await;
    broker.set_available(false).await.unwrap();
    let status = post(addr, BOT_IDS[0], Some(SECRET), &update(1, 1, "down")).await;
    assert_eq!(status, 503, "answered {status} while Kafka was down");
    assert_eq!(
        readiness.history(producer::KAFKA_CHECK).last(),
        Some(&false),
        "the failed publish was not reported"
    );

    // Back, and no request arrives: in Kubernetes none can reach a pod that is not ready.
    broker.set_available(true).await.unwrap();
    let recovered = eventually(Duration::from_secs(15), async || {
        readiness.history(producer::KAFKA_CHECK).last() == Some(&true)
    })
    .await;
    assert!(
        recovered,
        "Kafka readiness did not recover within 15 s without traffic"
    );
    producer.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setwebhook_rate_limited_at_startup_waits_retry_after_and_registers_broker() {
    let api = start_botsim(1).await;
    api.inject_on(
        TOKENS[0],
        "setWebhook",
        botsim::Fault::TooManyRequests { retry_after: 2 },
    )
    .unwrap();
    let (broker, topic) = start_broker().await;
    let (mut config, addr) = into_webhook(polling_config(&api, &broker, &topic, 1), SECRET);
    if let producer::IntakeMode::Webhook(webhook) = &mut config.mode {
        webhook.public_url = Some(format!("http://{addr}/").parse().unwrap());
    }
    let mut producer = RunningProducer::spawn(config);
    let set_webhook = |api: &botsim::BotApi| -> Vec<botsim::RequestRecord> {
        api.requests()
            .into_iter()
            .filter(|r| r.method == "setwebhook")
            .collect()
    };
    let registered = producer
        .serves_until(Duration::from_secs(20), async || {
            set_webhook(&api).iter().any(|r| r.status == 200)
        })
        .await;
    assert!(registered, "setWebhook was never retried");
    let calls = set_webhook(&api);
    assert_eq!(calls[0].status, 429, "{calls:#?}");
    let waited = calls[1]
        .at
        .duration_since(calls[0].at + calls[0].duration)
        .unwrap_or_default();
    assert!(
        waited >= Duration::from_secs(2),
        "setWebhook was retried {waited:?} after a 429 with retry_after 2"
    );
    let id = push_message(&api, 1, 4, "pushed");
    let records = read_topic(&broker, &topic, 1, Duration::from_secs(20)).await;
    assert_eq!(
        records[0].header(header::UPDATE_ID),
        Some(id.to_string().as_str())
    );
    producer.stop().await.unwrap();
}

/// Bytes of a body that announces 16 MiB: what an attacker streams slowly or never finishes.
const ANNOUNCED_BODY: usize = 16 * 1024 * 1024;
/// One chunk of such a body (shared, so the senders themselves use no memory per request).
const BODY_CHUNK: &[u8] = &[b' '; 16 * 1024];

/// Sends the head of a webhook request with `secret` and `sent` bytes of a body that announces
/// 16 MiB and never finishes; returns the status the endpoint answered within `wait`, if any.
async fn post_unfinished(
    addr: SocketAddr,
    bot_id: i64,
    secret: &str,
    sent: usize,
    wait: Duration,
) -> Option<u16> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let head = format!(
        "POST /webhook/{bot_id} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         content-length: {ANNOUNCED_BODY}\r\n{}: {secret}\r\n\r\n",
        producer::SECRET_HEADER
    );
    let sending = tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await?;
        let mut left = sent;
        while left > 0 {
            let n = left.min(BODY_CHUNK.len());
            writer.write_all(&BODY_CHUNK[..n]).await?;
            left -= n;
        }
        // The body never finishes: the connection stays open until the test ends.
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok::<_, std::io::Error>(writer)
    });
    let mut answer = [0_u8; 12];
    let read = tokio::time::timeout(wait, reader.read_exact(&mut answer)).await;
    sending.abort();
    match read {
        Ok(Ok(_)) => std::str::from_utf8(&answer[9..12]).ok()?.parse().ok(),
        _ => None,
    }
}

/// The process's resident set size, and its peak since the last reset, in KiB.
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap()
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_refused_before_the_body_is_read_broker() {
    let (_api, broker, topic, producer, addr) = serve_webhook().await;
    let bot = BOT_IDS[0];

    // Two hundred unauthenticated requests, each 512 KiB into a body that never finishes.
    // Writing 5 to clear_refs resets the peak (VmHWM) to the current RSS.
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let (baseline, _) = rss_kib();
    let answers = futures::future::join_all(
        (0..200).map(|_| post_unfinished(addr, bot, "wrong", 512 * 1024, Duration::from_secs(5))),
    )
    .await;
    let (now, peak) = rss_kib();
    let grown_mib = (if reset { peak } else { now }).saturating_sub(baseline) / 1024;
    assert!(
        grown_mib < 50,
        "peak RSS grew by {grown_mib} MiB over 200 unauthenticated requests"
    );
    let refused = answers.iter().filter(|a| **a == Some(401)).count();
    assert_eq!(refused, 200, "answers: {answers:?}");

    let started = Instant::now();
    let status = post_unfinished(addr, bot, "wrong", 1024, Duration::from_secs(1)).await;
    assert_eq!(
        status,
        Some(401),
        "no 401 within 1 s for a wrong secret and a body that never finishes"
    );
    assert!(started.elapsed() < Duration::from_secs(1));

    // An authenticated update still lands.
    assert_eq!(
        post(addr, bot, Some(SECRET), &update(1, 1, "real")).await,
        200
    );
    let records = read_topic(&broker, &topic, 1, Duration::from_secs(10)).await;
    producer.stop().await.unwrap();
    assert_eq!(records.len(), 1);
}
