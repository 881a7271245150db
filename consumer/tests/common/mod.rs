//! Shared harness of the consumer's integration tests: realistic updates, producing them with a
//! manifest for the invariant checker, running consumers in-process, waiting for conditions.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use consumer::check::{InvariantChecker, ProducedRecord};
use consumer::{ConsumerConfig, ConsumerStats, NoReadiness};
use processor::wire::{self, CONTENT_TYPE_JSON, Subject, header};
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::PgPool;
use testkit::{TestBroker, TestDb};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const BOT: i64 = 7_000_000_001;

/// Logs to the test's captured output (once per process).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "consumer=info,warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A group text message, as Telegram sends it.
pub fn message(
    update_id: i64,
    chat_id: i64,
    user_id: i64,
    message_id: i64,
    date: i64,
    text: &str,
) -> Vec<u8> {
    serde_json::json!({
        "update_id": update_id,
        "message": {
            "message_id": message_id,
            "from": {"id": user_id, "is_bot": false, "first_name": format!("User{user_id}"), "language_code": "en"},
            "chat": {"id": chat_id, "title": format!("Chat {chat_id}"), "type": "supergroup"},
            "date": date,
            "text": text
        }
    })
    .to_string()
    .into_bytes()
}

/// An edit of a group text message.
pub fn edited(
    update_id: i64,
    chat_id: i64,
    user_id: i64,
    message_id: i64,
    date: i64,
    edit_date: i64,
    text: &str,
) -> Vec<u8> {
    serde_json::json!({
        "update_id": update_id,
        "edited_message": {
            "message_id": message_id,
            "from": {"id": user_id, "is_bot": false, "first_name": format!("User{user_id}")},
            "chat": {"id": chat_id, "title": format!("Chat {chat_id}"), "type": "supergroup"},
            "date": date,
            "edit_date": edit_date,
            "text": text
        }
    })
    .to_string()
    .into_bytes()
}

/// A record to produce: partition, key, value, headers.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub partition: i32,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Outgoing {
    /// An update with the producer's headers, keyed by chat.
    pub fn update(partition: i32, chat_id: i64, update_id: i64, value: Vec<u8>) -> Self {
        Self {
            partition,
            key: wire::record_key(BOT, &Subject::Chat(chat_id.to_string())).into_bytes(),
            value,
            headers: vec![
                (header::BOT_ID.into(), BOT.to_string().into_bytes()),
                (header::UPDATE_ID.into(), update_id.to_string().into_bytes()),
                (header::RECEIVED_AT.into(), b"1760000000000".to_vec()),
                (
                    header::CONTENT_TYPE.into(),
                    CONTENT_TYPE_JSON.as_bytes().to_vec(),
                ),
            ],
        }
    }
}

/// `n` messages spread over `partitions` partitions and a few chats and users.
pub fn messages(first_update_id: i64, n: usize, partitions: i32) -> Vec<Outgoing> {
    (0..n as i64)
        .map(|i| {
            let update_id = first_update_id + i;
            let chat_id = -1_001_000_000_000 - (update_id % 7);
            let user_id = 100_000 + (update_id % 13);
            let partition = (chat_id.rem_euclid(i64::from(partitions))) as i32;
            Outgoing::update(
                partition,
                chat_id,
                update_id,
                message(
                    update_id,
                    chat_id,
                    user_id,
                    update_id,
                    1_760_000_000 + i,
                    &format!("hello {update_id}"),
                ),
            )
        })
        .collect()
}

/// Produces the records (acks=all, idempotent) and returns their manifest in produce order.
pub async fn produce(
    broker: &TestBroker,
    topic: &str,
    records: &[Outgoing],
) -> Vec<ProducedRecord> {
    produce_with(&broker.client_config(), topic, records).await
}

/// [`produce`] with a client configuration (for tasks that cannot borrow the broker).
pub async fn produce_with(
    config: &ClientConfig,
    topic: &str,
    records: &[Outgoing],
) -> Vec<ProducedRecord> {
    let mut config = config.clone();
    config
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5");
    let producer: FutureProducer = config.create().expect("a producer");
    let mut manifest = Vec::with_capacity(records.len());
    let mut pending = Vec::with_capacity(records.len());
    for r in records {
        let mut headers = OwnedHeaders::new();
        for (k, v) in &r.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        let record = FutureRecord::to(topic)
            .partition(r.partition)
            .key(&r.key)
            .payload(&r.value)
            .headers(headers);
        pending.push(producer.send(record, Duration::from_secs(30)));
    }
    // `send` futures do nothing until polled: drive them all at once.
    let deliveries = futures::future::join_all(pending).await;
    for (r, delivery) in records.iter().zip(deliveries) {
        let delivery = delivery.expect("delivered");
        manifest.push(ProducedRecord {
            topic: topic.to_owned(),
            partition: delivery.partition,
            offset: delivery.offset,
            key: Some(r.key.clone()),
            value: Some(r.value.clone()),
            headers: r
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), Some(v.clone())))
                .collect(),
        });
    }
    manifest
}

/// A consumer configuration for tests: short session timeout, small batches, quick retries.
pub fn config(broker: &TestBroker, group: &str, topic: &str) -> ConsumerConfig {
    let mut config = ConsumerConfig::new(group, topic, broker.client_config());
    config.session_timeout = Duration::from_secs(6);
    config.batch_max_records = 50;
    config.linger = Duration::from_millis(20);
    config.statement_timeout = Duration::from_secs(10);
    config.retry = consumer::RetryPolicy {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(500),
    };
    config.revoke_timeout = Duration::from_secs(15);
    config.stats_interval = Duration::from_secs(1);
    config
}

/// A consumer running in this process.
pub struct Running {
    pub shutdown: CancellationToken,
    pub stats: Arc<ConsumerStats>,
    pub task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub fn start(config: ConsumerConfig, pool: PgPool) -> Self {
        let shutdown = CancellationToken::new();
        let stats = Arc::new(ConsumerStats::default());
        let task = tokio::spawn(consumer::run_with_stats(
            config,
            pool,
            shutdown.clone(),
            Arc::new(NoReadiness),
            stats.clone(),
        ));
        Self {
            shutdown,
            stats,
            task,
        }
    }

    /// Cancels and waits for a clean exit.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("the consumer stops within 60s")
            .expect("the consumer task does not panic")
            .expect("the consumer returns Ok");
    }

    pub fn consumed(&self) -> u64 {
        ConsumerStats::get(&self.stats.records_consumed)
    }
}

/// Waits until `condition` holds, polling every 100 ms; panics with `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the group's stored offsets reach the manifest's log ends on every partition.
pub async fn wait_for_log_end(
    db: &TestDb,
    group: &str,
    manifest: &[ProducedRecord],
    timeout: Duration,
) {
    let mut ends = std::collections::BTreeMap::new();
    for r in manifest {
        let e = ends.entry(r.partition).or_insert(0i64);
        *e = (*e).max(r.offset + 1);
    }
    let pool = db.pool().clone();
    let group = group.to_owned();
    wait_until(timeout, "stored offsets at the log end", || {
        let pool = pool.clone();
        let group = group.clone();
        let ends = ends.clone();
        async move {
            let rows: Vec<(i32, i64)> = sqlx::query_as(
                "SELECT partition, next_offset FROM consumer_offsets WHERE group_id = $1",
            )
            .bind(&group)
            .fetch_all(&pool)
            .await
            .unwrap_or_default();
            ends.iter()
                .all(|(p, end)| rows.iter().any(|(rp, o)| rp == p && o == end))
        }
    })
    .await;
}

/// Runs the invariant checker and panics listing violations.
pub async fn assert_invariants(db: &TestDb, group: &str, manifest: &[ProducedRecord]) {
    InvariantChecker::new(db.pool().clone(), group)
        .check(manifest)
        .await
        .expect("the checker runs")
        .assert_ok();
}

/// A fresh database, broker and topic.
pub async fn setup(partitions: i32) -> (TestDb, TestBroker, String, String) {
    init_tracing();
    let db = TestDb::create().await.expect("a test database");
    let broker = TestBroker::start().await.expect("a broker");
    let topic = broker.unique_topic("tg-updates");
    broker
        .create_topic(&topic, partitions)
        .await
        .expect("a topic");
    let group = broker.unique_group("sink");
    (db, broker, topic, group)
}

/// The fixture updates of tests/fixtures/updates, by file name.
pub fn fixtures() -> Vec<(String, Vec<u8>)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/updates");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("the fixtures directory") {
        let path = entry.expect("a directory entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            out.push((name, std::fs::read(&path).expect("a fixture")));
        }
    }
    out.sort();
    out
}
