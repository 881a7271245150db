//! Shared harness of the operator-command tests (replay, status): updates built as Telegram
//! sends them, produced to a test topic with the producer's key and headers, and a consumer
//! running in-process whose stored offsets the tests wait on.
#![allow(clippy::unwrap_used, dead_code)]

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use consumer::check::ProducedRecord;
use consumer::{ConsumerConfig, ConsumerStats, NoReadiness};
use processor::wire::{self, Subject, header};
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use testkit::{TestBroker, TestDb};
use tokio_util::sync::CancellationToken;

/// The bot every test update comes from.
pub const BOT: i64 = 7_100_000_001;
/// `application_name` of the in-process consumer's connections.
pub const CONSUMER_APP: &str = "operator-test-consumer";

pub fn message(update_id: i64, chat_id: i64, user_id: i64, date: i64, text: &str) -> Vec<u8> {
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

pub fn edit(
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
pub struct Outgoing {
    pub partition: i32,
    pub update_id: i64,
    pub chat_id: i64,
    pub value: Vec<u8>,
    pub timestamp_ms: Option<i64>,
}

impl Outgoing {
    pub fn new(partition: i32, update_id: i64, chat_id: i64, value: Vec<u8>) -> Self {
        Self {
            partition,
            update_id,
            chat_id,
            value,
            timestamp_ms: None,
        }
    }
}

pub fn producer(client: &ClientConfig) -> FutureProducer {
    let mut config = client.clone();
    config
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        // A delivery that cannot happen fails the test instead of hanging it.
        .set("message.timeout.ms", "30000");
    config.create().unwrap()
}

pub async fn produce(
    client: &ClientConfig,
    topic: &str,
    records: &[Outgoing],
) -> Vec<ProducedRecord> {
    produce_with(&producer(client), topic, records).await
}

pub async fn produce_with(
    producer: &FutureProducer,
    topic: &str,
    records: &[Outgoing],
) -> Vec<ProducedRecord> {
    let mut pending = Vec::new();
    let mut manifest = Vec::new();
    for r in records {
        let key = wire::record_key(BOT, &Subject::Chat(r.chat_id.to_string())).into_bytes();
        let headers = vec![
            (header::BOT_ID.to_owned(), BOT.to_string().into_bytes()),
            (
                header::UPDATE_ID.to_owned(),
                r.update_id.to_string().into_bytes(),
            ),
            (header::RECEIVED_AT.to_owned(), b"1760000000000".to_vec()),
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

pub fn config(broker: &TestBroker, group: &str, topic: &str) -> ConsumerConfig {
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
pub struct Running {
    pub shutdown: CancellationToken,
    pub stats: Arc<ConsumerStats>,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub pool: PgPool,
}

impl Running {
    pub async fn start(config: ConsumerConfig, db: &TestDb) -> Self {
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

    pub fn consumed(&self) -> u64 {
        ConsumerStats::get(&self.stats.records_consumed)
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("the consumer stops within 60s")
            .expect("the consumer task does not panic")
            .expect("the consumer returns Ok");
        self.pool.close().await;
    }
}

pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut condition: F)
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

pub fn log_ends(manifest: &[ProducedRecord]) -> BTreeMap<i32, i64> {
    let mut ends = BTreeMap::new();
    for r in manifest {
        let end = ends.entry(r.partition).or_insert(0);
        *end = (r.offset + 1).max(*end);
    }
    ends
}

pub async fn stored_offsets(pool: &PgPool, group: &str) -> BTreeMap<i32, i64> {
    let rows: Vec<(i32, i64)> =
        sqlx::query_as("SELECT partition, next_offset FROM consumer_offsets WHERE group_id = $1")
            .bind(group)
            .fetch_all(pool)
            .await
            .unwrap();
    rows.into_iter().collect()
}

pub async fn wait_for_offsets(pool: &PgPool, group: &str, ends: &BTreeMap<i32, i64>) {
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

pub async fn setup(partitions: i32) -> (TestDb, TestBroker, String, String) {
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

/// Runs the `tgingest` binary with a clean environment (only `PATH`) plus `env`.
pub fn tgingest(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tgingest"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("running tgingest")
}
