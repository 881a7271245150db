//! Each bot is its own unit: a token Telegram rejects, at startup or later, stops only that bot,
//! is reported by that bot's readiness unit, and is retried; the process ends only when no bot
//! can run (every token rejected at startup).

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use botsim::Fault;
use common::*;
use producer::readiness::Unit;
use testkit::eventually;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_token_stops_only_its_own_bot_broker() {
    // Only the first token is known to the fake Telegram: the second is rejected with 401.
    let api = start_botsim(1).await;
    let (broker, topic) = start_broker().await;
    let readiness = Arc::new(RecordingReadiness::default());
    let mut producer =
        RunningProducer::spawn_with(polling_config(&api, &broker, &topic, 2), readiness.clone());
    let id = push_message(&api, 1, 3, "hi");
    let confirmed = producer
        .serves_until(Duration::from_secs(30), async || {
            api.confirmed_offset(TOKENS[0]) == Some(id + 1)
        })
        .await;
    assert!(confirmed, "the good bot's update was never confirmed");
    assert_eq!(
        read_topic(&broker, &topic, 1, Duration::from_secs(20))
            .await
            .len(),
        1
    );
    match readiness.last(&Unit::bot(2)) {
        Some(Err(reason)) => assert!(
            reason.contains("token rejected by Telegram (401 Unauthorized)"),
            "{reason}"
        ),
        other => panic!("bot #2 is not reported as rejected: {other:?}"),
    }
    assert!(matches!(readiness.last(&Unit::bot(1)), Some(Ok(_))));
    // Still retried (with backoff) and still running a while later.
    let attempts = |api: &botsim::BotApi| {
        api.requests()
            .iter()
            .filter(|r| r.method == "getme" && r.status == 401)
            .count()
    };
    let before = attempts(&api);
    assert!(
        eventually(Duration::from_secs(10), async || attempts(&api) > before).await,
        "the rejected token was not tried again"
    );
    producer.assert_running().await;
    producer.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_ends_with_one_line_only_when_every_token_is_rejected() {
    let api = botsim::BotApi::start(botsim::BotApiConfig::default())
        .await
        .unwrap();
    let mut client = rdkafka::ClientConfig::new();
    client.set("bootstrap.servers", "127.0.0.1:1");
    let config = producer::ProducerConfig::new(
        api.base_url().parse().unwrap(),
        TOKENS[..2]
            .iter()
            .map(|t| secrecy::SecretString::from((*t).to_owned()))
            .collect(),
        "unused".to_owned(),
        client,
    );
    let mut producer = RunningProducer::spawn(config);
    let error = producer.join(Duration::from_secs(20)).await.unwrap_err();
    let text = format!("{error:#}");
    assert_eq!(
        text,
        "no bot can run: every token was rejected by Telegram (401 Unauthorized): bot #1, bot #2"
    );
    for token in TOKENS {
        assert!(!text.contains(token));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_revoked_bot_keeps_the_process_not_ready_without_flapping_broker() {
    let api = start_botsim(2).await;
    let (broker, topic) = start_broker().await;
    let readiness = Arc::new(RecordingReadiness::default());
    let mut producer =
        RunningProducer::spawn_with(polling_config(&api, &broker, &topic, 2), readiness.clone());
    let ready = eventually(Duration::from_secs(20), async || {
        readiness.process_ready_over_time().last() == Some(&true)
    })
    .await;
    assert!(ready, "never ready with both bots polling");
    let revoked_at = readiness.reports();
    api.set_token_revoked(TOKENS[1], true).unwrap();
    let reported = eventually(Duration::from_secs(15), async || {
        readiness.process_ready_over_time()[revoked_at..].contains(&false)
    })
    .await;
    assert!(reported, "the revoked token was never reported");
    // Bot #1 keeps answering (1 s long polls) meanwhile: none of its answers may turn the process
    // ready again while bot #2 is revoked.
    let polls = |api: &botsim::BotApi| {
        get_updates_requests(api)
            .iter()
            .filter(|r| r.bot.is_some_and(|b| b.id == BOT_IDS[0]) && r.status == 200)
            .count()
    };
    let before = polls(&api);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(polls(&api) >= before + 2, "bot #1 stopped polling");
    producer.assert_running().await;
    let over_time = readiness.process_ready_over_time();
    let first_down = revoked_at
        + over_time[revoked_at..]
            .iter()
            .position(|ready| !ready)
            .unwrap();
    assert!(
        over_time[first_down..].iter().all(|ready| !ready),
        "readiness flapped while bot #2 was revoked: {:?}",
        &over_time[first_down..]
    );
    match readiness.last(&Unit::bot(2)) {
        Some(Err(reason)) => assert!(reason.contains("401"), "{reason}"),
        other => panic!("bot #2 is not reported as revoked: {other:?}"),
    }

    // Un-revoked, bot #2 serves again and the process turns ready.
    api.set_token_revoked(TOKENS[1], false).unwrap();
    let id = api
        .push_kind(
            TOKENS[1],
            "message",
            br#"{"message_id":1,"chat":{"id":5},"text":"back"}"#,
        )
        .unwrap();
    assert!(
        eventually(Duration::from_secs(20), async || api
            .confirmed_offset(TOKENS[1])
            == Some(id + 1))
        .await,
        "bot #2 never recovered"
    );
    assert!(
        eventually(Duration::from_secs(5), async || readiness
            .process_ready_over_time()
            .last()
            == Some(&true))
        .await
    );
    producer.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_bot_whose_getme_keeps_failing_still_has_its_route_broker() {
    let api = start_botsim(2).await;
    for _ in 0..200 {
        api.inject_on(TOKENS[1], "getMe", Fault::ServerError(502))
            .unwrap();
    }
    let (broker, topic) = start_broker().await;
    let (config, addr) = into_webhook(polling_config(&api, &broker, &topic, 2), "s3cret");
    let readiness = Arc::new(RecordingReadiness::default());
    let mut producer = RunningProducer::spawn_with(config, readiness.clone());
    let client = reqwest::Client::new();
    let post = async |bot: i64, update_id: i64| {
        client
            .post(format!("http://{addr}{}", producer::webhook_path(bot)))
            .header(producer::SECRET_HEADER, "s3cret")
            .body(format!(
                r#"{{"update_id":{update_id},"message":{{"message_id":1,"chat":{{"id":9}}}}}}"#
            ))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .ok()
    };
    let served = eventually(Duration::from_secs(20), async || {
        post(BOT_IDS[1], 41).await == Some(200)
    })
    .await;
    producer.assert_running().await;
    assert!(served, "bot #2's webhook route was never served");
    let records = read_topic(&broker, &topic, 1, Duration::from_secs(20)).await;
    assert_eq!(
        record_of(&records, 41).header(processor::wire::header::BOT_ID),
        Some(BOT_IDS[1].to_string().as_str())
    );
    producer.stop().await.unwrap();
}
