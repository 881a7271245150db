//! `tgingest producer` as a process: a crash between Kafka's acknowledgement and the confirm to
//! Telegram loses nothing on restart, SIGTERM drains and exits 0, and the logs (at trace level)
//! never contain the bot token. The crash is the failpoint `producer::after_publish_before_confirm`
//! (the binary exits with status 86 there), so these tests need the `failpoints` feature.

#![cfg(feature = "failpoints")]

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use botsim::{BotApi, BotApiConfig, BotInfo};
use nix::sys::signal::Signal;
use processor::wire::header;
use testkit::TestBroker;
use testkit::eventually;
use testkit::process::ChildProcess;

const TOKEN: &str = "7000000001:AAHprocessTESTtokenZZZZZZZZZZZZZZZZZ";

fn producer(api: &BotApi, broker: &TestBroker, topic: &str, failpoints: Option<&str>) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tgingest"));
    cmd.arg("producer")
        .env("TELEGRAM_BOT_TOKENS", TOKEN)
        .env("TELEGRAM_API_URL", api.base_url())
        .env("TELEGRAM_POLL_TIMEOUT", "1s")
        .env("KAFKA_BROKERS", broker.bootstrap_servers())
        .env("KAFKA_TOPIC", topic)
        .env("ADMIN_LISTEN", "off")
        .env("RUST_LOG", "trace")
        .env_remove("FAILPOINTS");
    if let Some(spec) = failpoints {
        testkit::process::with_failpoints(&mut cmd, spec);
    }
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_process_killed_between_ack_and_confirm_loses_nothing_broker() {
    let api = BotApi::start(BotApiConfig::default())
        .await
        .expect("botsim");
    api.add_bot(
        TOKEN,
        BotInfo::new(7_000_000_001, "process_test_bot", "process test"),
    );
    let broker = TestBroker::start().await.expect("broker");
    let topic = broker.unique_topic("producer-process");
    broker.create_topic(&topic, 3).await.expect("topic");

    let mut ids = Vec::new();
    for i in 0..20 {
        let body = format!(
            r#"{{"message_id":{i},"date":1760000000,"chat":{{"id":{},"type":"group","title":"g"}},"text":"m{i}"}}"#,
            -100 - i % 4
        );
        ids.push(
            api.push_kind(TOKEN, "message", body.as_bytes())
                .expect("push"),
        );
    }

    // First run: dies right after Kafka acknowledged the batch, before confirming it.
    let first = ChildProcess::spawn(
        producer(
            &api,
            &broker,
            &topic,
            Some("producer::after_publish_before_confirm=return"),
        ),
        "producer-crash",
        Duration::from_secs(90),
    )
    .expect("spawn");
    let status = first.wait(Duration::from_secs(60)).await.expect("exit");
    assert_eq!(status.code(), Some(86), "{}", first.report());
    assert_eq!(
        api.confirmed_offset(TOKEN),
        None,
        "confirmed before the crash"
    );
    let acknowledged = testkit::kafka::read_topic(
        broker.client_config(),
        &topic,
        ids.len(),
        Duration::from_secs(20),
    )
    .await
    .expect("read");
    assert_eq!(
        acknowledged.len(),
        ids.len(),
        "the batch was in Kafka before the crash"
    );

    // Second run: fetches the same batch again, publishes it again, confirms, then drains on
    // SIGTERM.
    let second = ChildProcess::spawn(
        producer(&api, &broker, &topic, None),
        "producer",
        Duration::from_secs(90),
    )
    .expect("spawn");
    let last = *ids.last().expect("ids");
    assert!(
        eventually(Duration::from_secs(30), async || api
            .confirmed_offset(TOKEN)
            == Some(last + 1))
        .await,
        "the restarted producer never confirmed: {}",
        second.report()
    );
    second.signal(Signal::SIGTERM).expect("sigterm");
    let status = second.wait(Duration::from_secs(30)).await.expect("exit");
    assert!(
        status.success(),
        "SIGTERM did not exit 0: {}",
        second.report()
    );

    let records = testkit::kafka::read_topic(
        broker.client_config(),
        &topic,
        usize::MAX,
        Duration::from_secs(4),
    )
    .await
    .expect("read");
    let in_kafka: BTreeSet<i64> = records
        .iter()
        .filter_map(|r| r.header(header::UPDATE_ID).and_then(|v| v.parse().ok()))
        .collect();
    let served: BTreeSet<i64> = ids.iter().copied().collect();
    assert_eq!(in_kafka, served, "every served update is in Kafka");
    assert!(
        records.len() >= 2 * ids.len(),
        "the batch was published twice (at-least-once)"
    );

    for run in [&first, &second] {
        let logs = run.output_text();
        assert!(
            logs.contains("TRACE") || logs.contains("DEBUG"),
            "not logged at trace level"
        );
        let secret = TOKEN.split_once(':').expect("token").1;
        assert!(
            !logs.contains(secret),
            "the token leaked into the logs of {}",
            run.name()
        );
    }
}
