//! `tgingest status` run as a script runs it (`--json`, exit status 3 on thresholds) against a
//! state the test builds: consumed partitions, lag, a partition without a stored row, a recorded
//! gap, a pending dead letter and the newest update per bot; the topic's durability (replication
//! factor, `min.insync.replicas`); and each bot of a running producer process, as its admin
//! server reports it, beside a producer that cannot be reached.
#![allow(clippy::unwrap_used, dead_code)]

use std::process::Command;
use std::time::Duration;

use botsim::{BotApi, BotApiConfig, BotInfo};
use processor::wire::{self, EnvelopeReason, Subject, header};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use testkit::process::{ChildProcess, free_port};
use testkit::sink::{log_ends, wait_for_offsets};
use testkit::updates::{BOT, Outgoing, message, produce, producer};
use testkit::{BrokerKind, TestBroker, eventually};

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_status_json_matches_the_state_the_test_built() {
    let (db, broker, topic, group) = setup(4).await;
    let chat = |p: i64| -1_009_000_000_000 - p;
    let consumed: Vec<Outgoing> = (0..12_i64)
        .map(|i| {
            Outgoing::update(
                (i % 3) as i32,
                chat(i % 3),
                90_000 + i,
                message(
                    90_000 + i,
                    chat(i % 3),
                    910_000,
                    90_000 + i,
                    1_760_000_000 + i,
                    "s",
                ),
            )
        })
        .collect();
    let mut manifest = produce(&broker.client_config(), &topic, &consumed).await;
    // A producer envelope: becomes the one pending dead letter.
    let envelope = wire::envelope_value(EnvelopeReason::NotAnUpdate, "d", b"[]", false);
    let producer = producer(&broker.client_config());
    let key = wire::record_key(BOT, &Subject::Chat(chat(0).to_string())).into_bytes();
    let delivered = producer
        .send(
            FutureRecord::to(&topic)
                .partition(0)
                .key(&key)
                .payload(&envelope)
                .headers(
                    OwnedHeaders::new()
                        .insert(Header {
                            key: header::BOT_ID,
                            value: Some(BOT.to_string().as_bytes()),
                        })
                        .insert(Header {
                            key: header::ERROR,
                            value: Some("not_an_update: d".as_bytes()),
                        }),
                ),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    let mut ends = log_ends(&manifest);
    ends.insert(0, delivered.offset + 1);
    ends.insert(3, 0);
    let running = start_consumer(config(&broker, &group, &topic), &db).await;
    wait_for_offsets(db.pool(), &group, &ends, LOG_END_TIMEOUT).await;
    running.stop().await;

    // Lag: 5 unconsumed records on partition 1; partition 3 gets 2 records and loses its row.
    let later: Vec<Outgoing> = (0..5_i64)
        .map(|i| {
            Outgoing::update(
                1,
                chat(1),
                91_000 + i,
                message(
                    91_000 + i,
                    chat(1),
                    910_000,
                    91_000 + i,
                    1_760_000_100 + i,
                    "l",
                ),
            )
        })
        .chain((0..2_i64).map(|i| {
            Outgoing::update(
                3,
                chat(3),
                92_000 + i,
                message(
                    92_000 + i,
                    chat(3),
                    910_000,
                    92_000 + i,
                    1_760_000_200 + i,
                    "n",
                ),
            )
        }))
        .collect();
    manifest.extend(produce(&broker.client_config(), &topic, &later).await);
    sqlx::query("DELETE FROM consumer_offsets WHERE group_id = $1 AND partition = 3")
        .bind(&group)
        .execute(db.pool())
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO offset_gaps (group_id, topic, partition, expected_offset, first_offset_seen) \
         VALUES ($1, $2, 2, 1, 3)",
    )
    .bind(&group)
    .bind(&topic)
    .execute(db.pool())
    .await
    .unwrap();

    let env = [
        ("DATABASE_URL", db.url()),
        ("KAFKA_BROKERS", broker.bootstrap_servers()),
    ];
    let base = status_args(&group, &topic);
    let report = status_json(&base, &env);
    let p = |i: usize| &report["partitions"][i];
    assert_eq!(report["partitions"].as_array().unwrap().len(), 4);
    // Partition 0: 4 messages + the envelope, all consumed.
    assert_eq!(
        (
            p(0)["log_end"].as_i64(),
            p(0)["stored_offset"].as_i64(),
            p(0)["lag"].as_i64()
        ),
        (Some(5), Some(5), Some(0))
    );
    assert_eq!(
        (
            p(1)["log_end"].as_i64(),
            p(1)["stored_offset"].as_i64(),
            p(1)["lag"].as_i64()
        ),
        (Some(9), Some(4), Some(5))
    );
    assert_eq!(
        (p(2)["gaps"].as_i64(), p(2)["lag"].as_i64()),
        (Some(1), Some(0))
    );
    assert!(p(2)["last_write"].is_string());
    assert_eq!(
        (p(3)["log_end"].as_i64(), p(3)["lag"].as_i64()),
        (Some(2), Some(2))
    );
    assert!(p(3)["stored_offset"].is_null() && p(3)["last_write"].is_null());
    assert_eq!(report["total_lag"], 7);
    assert_eq!(report["bots"].as_array().unwrap().len(), 1);
    assert_eq!(report["bots"][0]["bot_id"], BOT);
    assert_eq!(report["bots"][0]["raw_updates"], 12);
    assert_eq!(
        report["bots"][0]["newest_update"], "2025-10-09T08:53:20.000Z",
        "tg-received-at of the updates"
    );
    assert_eq!(report["dead_letters"]["pending"], 1);
    assert_eq!(report["dead_letters"]["by_class"]["producer_envelope"], 1);
    assert_eq!(report["breaches"].as_array().unwrap().len(), 0);

    let out = tgingest(&[&base[..], &["--max-lag", "4"]].concat(), &env);
    assert_eq!(out.status.code(), Some(3), "lag 5 > 4");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("PARTITION") && text.contains("partition 1 lags 5 records"),
        "{text}"
    );
    let out = tgingest(&[&base[..], &["--max-age", "1h"]].concat(), &env);
    assert_eq!(out.status.code(), Some(3), "the newest update is from 2025");
    let out = tgingest(
        &[&base[..], &["--max-lag", "5", "--max-age", "100000d"]].concat(),
        &env,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_status_shows_the_topic_durability_and_warns_below_three_replicas() {
    let (db, broker, topic, group) = setup(2).await;
    let env = [
        ("DATABASE_URL", db.url()),
        ("KAFKA_BROKERS", broker.bootstrap_servers()),
    ];
    let base = status_args(&group, &topic);
    let report = status_json(&base, &env);
    let durability = &report["durability"];
    let text_out = tgingest(&base, &env);
    let text = String::from_utf8_lossy(&text_out.stdout);
    assert_eq!(
        text_out.status.code(),
        Some(0),
        "a warning is not a breach: {text}"
    );
    let rf_warning = format!("WARNING: topic {topic} has replication factor 1 (below 3)");
    match broker.kind() {
        // The mock cluster keeps one replica and has no DescribeConfigs.
        BrokerKind::Mock | BrokerKind::HostedMock => {
            assert_eq!(durability["replication_factor"], 1, "{durability}");
            assert!(durability["min_insync_replicas"].is_null(), "{durability}");
            assert!(
                durability["min_insync_replicas_unknown"].is_string(),
                "the reason it is unknown: {durability}"
            );
            assert!(
                text.contains(
                    "topic durability: replication factor 1, min.insync.replicas unknown"
                ),
                "{text}"
            );
            assert!(text.contains(&rf_warning), "{text}");
            assert!(!text.contains("min.insync.replicas 1 (below 2)"), "{text}");
        }
        // Tansu 0.6 keeps one replica and answers DescribeConfigs with only the configuration a
        // topic was created with: none here, `min.insync.replicas=1` on a second topic.
        BrokerKind::Tansu => {
            assert_eq!(durability["replication_factor"], 1, "{durability}");
            assert!(durability["min_insync_replicas"].is_null(), "{durability}");
            assert_eq!(
                durability["min_insync_replicas_unknown"], "not reported by the broker",
                "{durability}"
            );
            assert!(text.contains("min.insync.replicas unknown"), "{text}");
            assert!(text.contains(&rf_warning), "{text}");

            let configured = broker.unique_topic("min-insync");
            create_topic_with(&broker, &configured, &[("min.insync.replicas", "1")]).await;
            let args = status_args(&group, &configured);
            let report = status_json(&args, &env);
            assert_eq!(
                report["durability"]["min_insync_replicas"], 1,
                "{}",
                report["durability"]
            );
            let out = tgingest(&args, &env);
            let text = String::from_utf8_lossy(&out.stdout);
            assert_eq!(out.status.code(), Some(0), "{text}");
            assert!(
                text.contains("replication factor 1, min.insync.replicas 1\n"),
                "{text}"
            );
            assert!(
                text.contains(&format!(
                    "WARNING: topic {configured} has min.insync.replicas 1 (below 2)"
                )),
                "{text}"
            );
        }
        // An external broker's topics may be replicated: the warnings follow what it reports.
        BrokerKind::External => {
            let rf = durability["replication_factor"].as_u64().unwrap();
            assert!(rf >= 1, "{durability}");
            assert_eq!(text.contains("has replication factor"), rf < 3, "{text}");
            match durability["min_insync_replicas"].as_u64() {
                Some(min) => {
                    assert_eq!(text.contains("has min.insync.replicas"), min < 2, "{text}")
                }
                None => assert!(durability["min_insync_replicas_unknown"].is_string()),
            }
        }
    }
}

/// Creates a one-partition, one-replica topic with `configs` (testkit creates topics without any)
/// and waits until it is led.
async fn create_topic_with(broker: &TestBroker, name: &str, configs: &[(&str, &str)]) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        broker.client_config().create().unwrap();
    let mut topic = NewTopic::new(name, 1, TopicReplication::Fixed(1));
    for (key, value) in configs {
        topic = topic.set(key, value);
    }
    let results = admin
        .create_topics(
            &[topic],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .unwrap();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    testkit::kafka::await_topic(broker.client_config(), name, 1, Duration::from_secs(30))
        .await
        .unwrap();
}

const GOOD_TOKEN: &str = "7100000001:AAHstatusTESTgoodTOKENzzzzzzzzzzzzzzz";
const REVOKED_TOKEN: &str = "7100000002:AAHstatusTESTrevokedTOKENzzzzzzzzzzzz";

/// The arguments of `tgingest status` for one group and topic.
fn status_args<'a>(group: &'a str, topic: &'a str) -> [&'a str; 5] {
    ["status", "--group", group, "--topic", topic]
}

/// `tgingest <base> --json`, which must succeed, parsed.
fn status_json(base: &[&str], env: &[(&str, &str)]) -> serde_json::Value {
    let out = tgingest(&[base, &["--json"]].concat(), env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// GET `url` as JSON; `None` when it cannot be read.
async fn get_json(url: &str) -> Option<serde_json::Value> {
    reqwest::get(url).await.ok()?.json().await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_each_producer_bot_and_an_unreachable_producer() {
    let (db, broker, topic, group) = setup(1).await;
    let api = BotApi::start(BotApiConfig::default()).await.unwrap();
    api.add_bot(GOOD_TOKEN, BotInfo::new(7_100_000_001, "good_bot", "good"));
    api.add_bot(
        REVOKED_TOKEN,
        BotInfo::new(7_100_000_002, "revoked_bot", "revoked"),
    );
    api.set_token_revoked(REVOKED_TOKEN, true).unwrap();

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tgingest"));
    cmd.arg("producer")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "TELEGRAM_BOT_TOKENS",
            format!("{GOOD_TOKEN},{REVOKED_TOKEN}"),
        )
        .env("TELEGRAM_API_URL", api.base_url())
        .env("TELEGRAM_POLL_TIMEOUT", "1s")
        .env("KAFKA_BROKERS", broker.bootstrap_servers())
        .env("KAFKA_TOPIC", &topic)
        .env("ADMIN_LISTEN", "127.0.0.1:0");
    let producer = ChildProcess::spawn(cmd, "producer", Duration::from_secs(180)).unwrap();
    let line = producer
        .wait_for_line(
            |l| l.contains("admin server listening"),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    let addr = line
        .split_whitespace()
        .find_map(|word| word.strip_prefix("local_addr="))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_owned();
    let admin = format!("http://{addr}");
    // Bot #1 polls; bot #2's token is rejected and it is retried, not ready.
    let units_url = format!("{admin}/units");
    assert!(
        eventually(Duration::from_secs(30), async || {
            get_json(&units_url).await.is_some_and(|answer| {
                let unit = |name: &str| {
                    answer["units"]
                        .as_array()
                        .and_then(|units| units.iter().find(|u| u["unit"] == name).cloned())
                };
                unit("bot #1").is_some_and(|u| u["ready"] == true)
                    && unit("bot #2").is_some_and(|u| {
                        u["ready"] == false && u["detail"].as_str().unwrap_or("").contains("401")
                    })
            })
        })
        .await,
        "the producer never reported bot #1 ready and bot #2 rejected: {:?}\n{}",
        get_json(&units_url).await,
        producer.report()
    );

    let unreachable = format!("http://127.0.0.1:{}", free_port().unwrap());
    let env = [
        ("DATABASE_URL", db.url()),
        ("KAFKA_BROKERS", broker.bootstrap_servers()),
    ];
    let base = [
        &status_args(&group, &topic)[..],
        &["--producer-admin", &admin, "--producer-admin", &unreachable],
    ]
    .concat();
    let never_a_token = |output: &str| {
        for token in [GOOD_TOKEN, REVOKED_TOKEN] {
            let key = token.split_once(':').unwrap().1;
            assert!(!output.contains(key), "a token in the output:\n{output}");
        }
    };

    // JSON: every unit of the producer, and the unreachable one with its reason; not a breach.
    let out = tgingest(&[&base[..], &["--json"]].concat(), &env);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    never_a_token(&stdout);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let producers = report["producers"].as_array().unwrap();
    assert_eq!(producers.len(), 2, "{report:#}");
    let first = &producers[0];
    assert_eq!(first["admin_url"], format!("{admin}/"));
    assert_eq!(
        (&first["reachable"], &first["ready"]),
        (&serde_json::json!(true), &serde_json::json!(false)),
        "{first:#}"
    );
    let units = first["units"].as_array().unwrap();
    let unit = |name: &str| units.iter().find(|u| u["unit"] == name).unwrap();
    assert_eq!(unit("bot #1")["ready"], true, "{first:#}");
    assert_eq!(unit("bot #1")["detail"], "polling", "{first:#}");
    assert_eq!(unit("bot #2")["ready"], false, "{first:#}");
    assert_eq!(
        unit("bot #2")["detail"],
        "getMe failed: token rejected by Telegram (401 Unauthorized)"
    );
    assert_eq!(unit("kafka")["ready"], true, "{first:#}");
    let second = &producers[1];
    assert_eq!(second["admin_url"], format!("{unreachable}/"));
    assert_eq!(second["reachable"], false, "{second:#}");
    assert!(second["ready"].is_null() && second["units"] == serde_json::json!([]));
    assert!(
        second["error"].as_str().unwrap().contains(&unreachable),
        "{second:#}"
    );
    assert_eq!(report["breaches"], serde_json::json!([]));

    // Text: a line per unit, the failure's detail, the unreachable producer.
    let out = tgingest(&base, &env);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    never_a_token(&text);
    let line_of = |needle: &str| {
        text.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{text}"))
            .to_owned()
    };
    assert!(
        line_of(&format!("producer {admin}/")).ends_with("NOT READY"),
        "{text}"
    );
    let bot2 = line_of("bot #2");
    assert!(
        bot2.contains("NOT READY")
            && bot2.contains("getMe failed: token rejected by Telegram (401"),
        "{bot2}"
    );
    let bot1 = line_of("bot #1");
    assert!(
        bot1.contains("ready") && bot1.contains("polling") && !bot1.contains("NOT"),
        "{bot1}"
    );
    assert!(
        line_of(&format!("producer {unreachable}/")).contains("UNREACHABLE"),
        "{text}"
    );

    // --require-bots-ready: the rejected bot and the unreachable producer are breaches.
    let out = tgingest(&[&base[..], &["--require-bots-ready"]].concat(), &env);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{text}");
    let breaches: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("THRESHOLD:"))
        .collect();
    assert_eq!(breaches.len(), 2, "{text}");
    assert!(
        breaches[0].contains(&format!(
            "producer {admin}/: bot #2 is not ready: getMe failed"
        )),
        "{text}"
    );
    assert!(breaches[1].contains(&unreachable), "{text}");

    // The same producers from the environment, comma-separated; every bot ready: no breach.
    api.set_token_revoked(REVOKED_TOKEN, false).unwrap();
    assert!(
        eventually(Duration::from_secs(60), async || get_json(&units_url)
            .await
            .is_some_and(|answer| answer["ready"] == true))
        .await,
        "bot #2 never recovered: {:?}\n{}",
        get_json(&units_url).await,
        producer.report()
    );
    let admin_env = format!("{admin}, ");
    let env_urls = [
        ("DATABASE_URL", db.url()),
        ("KAFKA_BROKERS", broker.bootstrap_servers()),
        ("STATUS_PRODUCER_ADMIN_URLS", admin_env.as_str()),
    ];
    let out = tgingest(
        &[
            "status",
            "--group",
            &group,
            "--topic",
            &topic,
            "--json",
            "--require-bots-ready",
        ],
        &env_urls,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["producers"].as_array().unwrap().len(),
        1,
        "{report:#}"
    );
    assert_eq!(report["producers"][0]["ready"], true, "{report:#}");

    producer.signal(nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = producer.wait(Duration::from_secs(30)).await.unwrap();
    assert!(status.success(), "{}", producer.report());
}
