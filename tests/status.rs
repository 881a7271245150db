//! `tgingest status` run as a script runs it (`--json`, exit status 3 on thresholds) against a
//! state the test builds: consumed partitions, lag, a partition without a stored row, a recorded
//! gap, a pending dead letter and the newest update per bot.
#![allow(clippy::unwrap_used, dead_code)]

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use consumer::check::ProducedRecord;
use consumer::{ConsumerConfig, ConsumerStats, NoReadiness};
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use testkit::{TestBroker, TestDb};
use tokio_util::sync::CancellationToken;

const CONSUMER_APP: &str = "status-test-consumer";

const BOT: i64 = 7_300_000_001;

fn message(update_id: i64, chat_id: i64, user_id: i64, date: i64, text: &str) -> Vec<u8> {
    serde_json::json!({
        "update_id": update_id,
        "message": {
            "message_id": update_id,
            "from": {"id": user_id, "is_bot": false, "first_name": format!("U{user_id}")},
            "chat": {"id": chat_id, "title": format!("C{chat_id}"), "type": "supergroup"},
            "date": date,
            "text": text
        }
    })
    .to_string()
    .into_bytes()
}

fn edit(
    update_id: i64,
    chat_id: i64,
    user_id: i64,
    message_id: i64,
    date: i64,
    edit_date: i64,
) -> Vec<u8> {
    serde_json::json!({
        "update_id": update_id,
        "edited_message": {
            "message_id": message_id,
            "from": {"id": user_id, "is_bot": false, "first_name": format!("U{user_id}")},
            "chat": {"id": chat_id, "title": format!("C{chat_id}"), "type": "supergroup"},
            "date": date,
            "edit_date": edit_date,
            "text": format!("edited {message_id}")
        }
    })
    .to_string()
    .into_bytes()
}

#[derive(Debug, Clone)]
struct Outgoing {
    partition: i32,
    update_id: i64,
    chat_id: i64,
    value: Vec<u8>,
    timestamp_ms: Option<i64>,
}

impl Outgoing {
    fn new(partition: i32, update_id: i64, chat_id: i64, value: Vec<u8>) -> Self {
        Self {
            partition,
            update_id,
            chat_id,
            value,
            timestamp_ms: None,
        }
    }
}

fn producer(client: &ClientConfig) -> FutureProducer {
    let mut config = client.clone();
    config
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        // A delivery that cannot happen fails the test instead of hanging it.
        .set("message.timeout.ms", "30000");
    config.create().unwrap()
}

async fn produce(client: &ClientConfig, topic: &str, records: &[Outgoing]) -> Vec<ProducedRecord> {
    produce_with(&producer(client), topic, records).await
}

async fn produce_with(
    producer: &FutureProducer,
    topic: &str,
    records: &[Outgoing],
) -> Vec<ProducedRecord> {
    let mut pending = Vec::new();
    let mut manifest = Vec::new();
    for r in records {
        let key = format!("{BOT}:{}", r.chat_id).into_bytes();
        let headers = vec![
            ("tg-bot-id".to_owned(), BOT.to_string().into_bytes()),
            (
                "tg-update-id".to_owned(),
                r.update_id.to_string().into_bytes(),
            ),
            ("tg-received-at".to_owned(), b"1760000000000".to_vec()),
        ];
        let mut owned = OwnedHeaders::new();
        for (k, v) in &headers {
            owned = owned.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        let mut record = FutureRecord::to(topic)
            .partition(r.partition)
            .key(&key)
            .payload(&r.value)
            .headers(owned);
        if let Some(ts) = r.timestamp_ms {
            record = record.timestamp(ts);
        }
        let delivery = producer.send_result(record).map_err(|(e, _)| e).unwrap();
        pending.push((delivery, key, r.value.clone(), headers));
    }
    for (delivery, key, value, headers) in pending {
        let delivered = delivery.await.unwrap().map_err(|(e, _)| e).unwrap();
        manifest.push(ProducedRecord {
            topic: topic.to_owned(),
            partition: delivered.partition,
            offset: delivered.offset,
            key: Some(key),
            value: Some(value),
            headers: headers.into_iter().map(|(k, v)| (k, Some(v))).collect(),
        });
    }
    manifest
}

fn config(broker: &TestBroker, group: &str, topic: &str) -> ConsumerConfig {
    let mut config = ConsumerConfig::new(group, topic, broker.client_config());
    config.session_timeout = Duration::from_secs(6);
    config.batch_max_records = 50;
    config.linger = Duration::from_millis(20);
    config.statement_timeout = Duration::from_secs(10);
    config.idle_reread_interval = Duration::from_millis(200);
    config.revoke_timeout = Duration::from_secs(15);
    config
}

/// A consumer running in this process on its own pool (closed on stop, so its backends exit and
/// flush their table statistics).
struct Running {
    shutdown: CancellationToken,
    stats: Arc<ConsumerStats>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    pool: PgPool,
}

impl Running {
    async fn start(config: ConsumerConfig, db: &TestDb) -> Self {
        let options = PgConnectOptions::from_str(db.url())
            .unwrap()
            .application_name(CONSUMER_APP);
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .unwrap();
        let shutdown = CancellationToken::new();
        let stats = Arc::new(ConsumerStats::default());
        let task = tokio::spawn(consumer::run_with_stats(
            config,
            pool.clone(),
            shutdown.clone(),
            Arc::new(NoReadiness),
            stats.clone(),
        ));
        Self {
            shutdown,
            stats,
            task,
            pool,
        }
    }

    fn consumed(&self) -> u64 {
        ConsumerStats::get(&self.stats.records_consumed)
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("the consumer stops within 60s")
            .expect("the consumer task does not panic")
            .expect("the consumer returns Ok");
        self.pool.close().await;
    }
}

async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !condition().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn log_ends(manifest: &[ProducedRecord]) -> BTreeMap<i32, i64> {
    let mut ends = BTreeMap::new();
    for r in manifest {
        let end = ends.entry(r.partition).or_insert(0);
        *end = (r.offset + 1).max(*end);
    }
    ends
}

async fn stored_offsets(pool: &PgPool, group: &str) -> BTreeMap<i32, i64> {
    let rows: Vec<(i32, i64)> =
        sqlx::query_as("SELECT partition, next_offset FROM consumer_offsets WHERE group_id = $1")
            .bind(group)
            .fetch_all(pool)
            .await
            .unwrap();
    rows.into_iter().collect()
}

async fn wait_for_offsets(pool: &PgPool, group: &str, ends: &BTreeMap<i32, i64>) {
    wait_until(
        Duration::from_secs(45),
        "stored offsets at the log ends",
        || async {
            let stored = stored_offsets(pool, group).await;
            ends.iter().all(|(p, end)| stored.get(p) == Some(end))
        },
    )
    .await;
}

async fn setup(partitions: i32) -> (TestDb, TestBroker, String, String) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
    let db = TestDb::create().await.unwrap();
    let broker = TestBroker::start().await.unwrap();
    let topic = broker.unique_topic("tg-replay");
    broker.create_topic(&topic, partitions).await.unwrap();
    let group = broker.unique_group("sink");
    (db, broker, topic, group)
}

fn tgingest(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tgingest"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("running tgingest")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_status_json_matches_the_state_the_test_built() {
    let (db, broker, topic, group) = setup(4).await;
    let chat = |p: i64| -1_009_000_000_000 - p;
    let consumed: Vec<Outgoing> = (0..12_i64)
        .map(|i| {
            Outgoing::new(
                (i % 3) as i32,
                90_000 + i,
                chat(i % 3),
                message(90_000 + i, chat(i % 3), 910_000, 1_760_000_000 + i, "s"),
            )
        })
        .collect();
    let mut manifest = produce(&broker.client_config(), &topic, &consumed).await;
    // A producer envelope: becomes the one pending dead letter.
    let envelope =
        br#"{"tg_error":{"reason":"not_an_update","detail":"d","original_size":2}}"#.to_vec();
    let producer = producer(&broker.client_config());
    let key = format!("{BOT}:{}", chat(0)).into_bytes();
    let delivered = producer
        .send(
            FutureRecord::to(&topic)
                .partition(0)
                .key(&key)
                .payload(&envelope)
                .headers(
                    OwnedHeaders::new()
                        .insert(Header {
                            key: "tg-bot-id",
                            value: Some(BOT.to_string().as_bytes()),
                        })
                        .insert(Header {
                            key: "tg-error",
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
    let running = Running::start(config(&broker, &group, &topic), &db).await;
    wait_for_offsets(db.pool(), &group, &ends).await;
    running.stop().await;

    // Lag: 5 unconsumed records on partition 1; partition 3 gets 2 records and loses its row.
    let later: Vec<Outgoing> = (0..5_i64)
        .map(|i| {
            Outgoing::new(
                1,
                91_000 + i,
                chat(1),
                message(91_000 + i, chat(1), 910_000, 1_760_000_100 + i, "l"),
            )
        })
        .chain((0..2_i64).map(|i| {
            Outgoing::new(
                3,
                92_000 + i,
                chat(3),
                message(92_000 + i, chat(3), 910_000, 1_760_000_200 + i, "n"),
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
    let base = [
        "status",
        "--group",
        group.as_str(),
        "--topic",
        topic.as_str(),
    ];
    let out = tgingest(&[&base[..], &["--json"]].concat(), &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
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
