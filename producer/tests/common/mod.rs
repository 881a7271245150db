//! Shared harness of the producer's integration tests: a simulated Bot API (botsim), a test
//! broker with a fresh topic, the producer running in-process, and a reader of the topic.
//!
//! Every test owns its own botsim, broker and topic; nothing is shared between tests.

#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use botsim::{BotApi, BotApiConfig, BotInfo};
use producer::readiness::Unit;
use producer::{
    BackoffPolicy, IntakeMode, NoReadiness, PollingConfig, ProducerConfig, Readiness, WebhookConfig,
};
use secrecy::SecretString;
use testkit::{BrokerKind, TestBroker};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Partitions of every test topic.
pub const PARTITIONS: i32 = 3;

/// Tokens of the test bots: realistic shape, so a leak would be recognisable in logs.
pub const TOKENS: [&str; 3] = [
    "7000000001:AAHtestTOKENoneXXXXXXXXXXXXXXXXXXXX",
    "7000000002:AAHtestTOKENtwoYYYYYYYYYYYYYYYYYYYY",
    "7000000003:AAHtestTOKENthreeZZZZZZZZZZZZZZZZZZ",
];
/// Ids of the test bots (the digits before the colon of their tokens).
pub const BOT_IDS: [i64; 3] = [7_000_000_001, 7_000_000_002, 7_000_000_003];

/// The fake Telegram with the test bots registered.
pub async fn start_botsim(bots: usize) -> BotApi {
    let api = BotApi::start(BotApiConfig::default()).await.unwrap();
    for (index, token) in TOKENS.iter().take(bots).enumerate() {
        api.add_bot(
            token,
            BotInfo::new(BOT_IDS[index], format!("test_bot_{index}"), "Test"),
        );
    }
    api
}

/// Queues a text message in `chat` for the first bot; returns its update id.
pub fn push_message(api: &BotApi, message_id: i64, chat: i64, text: &str) -> i64 {
    let payload =
        format!(r#"{{"message_id":{message_id},"chat":{{"id":{chat}}},"text":"{text}"}}"#);
    api.push_kind(TOKENS[0], "message", payload.as_bytes())
        .unwrap()
}

/// A broker (backend from the environment) with a fresh topic.
pub async fn start_broker() -> (TestBroker, String) {
    let broker = TestBroker::start().await.unwrap();
    let topic = broker.unique_topic("producer");
    broker.create_topic(&topic, PARTITIONS).await.unwrap();
    (broker, topic)
}

/// [`start_broker`] for a test that needs a broker under its control (to take it down, or to
/// know its topics' replication): scripts/test excludes such tests with an external broker, and
/// `require_broker` fails them there, saying `why`.
pub async fn start_controlled_broker(why: &str) -> (TestBroker, String) {
    let (broker, topic) = start_broker().await;
    testkit::require_broker(
        broker.kind(),
        &[BrokerKind::Mock, BrokerKind::HostedMock, BrokerKind::Tansu],
        why,
    );
    (broker, topic)
}

/// A polling configuration with test-sized timeouts: 1 s long polls, fast backoff.
pub fn polling_config(
    api: &BotApi,
    broker: &TestBroker,
    topic: &str,
    bots: usize,
) -> ProducerConfig {
    polling_config_bots(api, broker.client_config(), topic, bots)
}

/// [`polling_config`] for one bot and any Kafka client configuration.
pub fn polling_config_for(
    api: &BotApi,
    client: rdkafka::ClientConfig,
    topic: &str,
) -> ProducerConfig {
    polling_config_bots(api, client, topic, 1)
}

fn polling_config_bots(
    api: &BotApi,
    client: rdkafka::ClientConfig,
    topic: &str,
    bots: usize,
) -> ProducerConfig {
    let tokens = TOKENS
        .iter()
        .take(bots)
        .map(|t| SecretString::from((*t).to_owned()))
        .collect();
    let mut config = ProducerConfig::new(
        api.base_url().parse().unwrap(),
        tokens,
        topic.to_owned(),
        client,
    );
    config.mode = IntakeMode::Polling(PollingConfig {
        timeout: Duration::from_secs(1),
        limit: 100,
        request_timeout: Some(Duration::from_secs(3)),
        ..PollingConfig::default()
    });
    config.delivery_timeout = Duration::from_secs(3);
    config.backoff = BackoffPolicy {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(400),
    };
    config
}

/// Turns a polling configuration into a webhook one listening on a free port with `secret`.
pub fn into_webhook(mut config: ProducerConfig, secret: &str) -> (ProducerConfig, SocketAddr) {
    let port = testkit::free_port().unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    config.mode = IntakeMode::Webhook(WebhookConfig::new(
        addr,
        SecretString::from(secret.to_owned()),
    ));
    (config, addr)
}

/// The producer running in a task of the test's runtime.
pub struct RunningProducer {
    pub shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl RunningProducer {
    pub fn spawn(config: ProducerConfig) -> Self {
        Self::spawn_with(config, Arc::new(NoReadiness))
    }

    pub fn spawn_with(config: ProducerConfig, readiness: Arc<dyn Readiness>) -> Self {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(producer::run(config, shutdown.clone(), readiness));
        Self {
            shutdown,
            task: Some(task),
        }
    }

    /// Requests shutdown and waits (bounded) for `run` to return.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.join(Duration::from_secs(20)).await
    }

    /// Waits (bounded) for `run` to return on its own.
    pub async fn join(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let task = self.task.take().context("already joined")?;
        match tokio::time::timeout(timeout, task).await {
            Ok(joined) => joined.context("the producer task panicked")?,
            Err(_) => bail!("the producer did not return within {timeout:?}"),
        }
    }

    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Fails the test, with the producer's own error, if `run` returned.
    pub async fn assert_running(&mut self) {
        if self.is_finished() {
            let error = self.join(Duration::from_secs(1)).await;
            panic!("the producer stopped: {error:?}");
        }
    }

    /// Waits up to `timeout` for `condition`, failing the test at once if the producer stops
    /// meanwhile; whether `condition` held.
    pub async fn serves_until(
        &mut self,
        timeout: Duration,
        mut condition: impl AsyncFnMut() -> bool,
    ) -> bool {
        let held =
            testkit::eventually(timeout, async || self.is_finished() || condition().await).await;
        self.assert_running().await;
        held
    }
}

impl Drop for RunningProducer {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// One record read back from the topic.
pub use testkit::kafka::ConsumedRecord as Consumed;

/// Reads the topic from the beginning until `count` records arrived or `timeout` passed.
pub async fn read_topic(
    broker: &TestBroker,
    topic: &str,
    count: usize,
    timeout: Duration,
) -> Vec<Consumed> {
    read_topic_with(broker.client_config(), topic, count, timeout).await
}

/// [`read_topic`] for any client configuration (a mock cluster the test owns).
pub async fn read_topic_with(
    config: rdkafka::ClientConfig,
    topic: &str,
    count: usize,
    timeout: Duration,
) -> Vec<Consumed> {
    testkit::kafka::read_topic(config, topic, count, timeout)
        .await
        .unwrap()
}

/// The record whose `tg-update-id` header is `update_id` (panics when there is none).
pub fn record_of(records: &[Consumed], update_id: i64) -> &Consumed {
    let id = update_id.to_string();
    records
        .iter()
        .find(|r| r.header(processor::wire::header::UPDATE_ID) == Some(id.as_str()))
        .unwrap_or_else(|| panic!("no record of update {update_id}: {records:#?}"))
}

/// Counts the records in the topic right now (reads until 2 s pass without a new one).
pub async fn count_records(broker: &TestBroker, topic: &str) -> usize {
    read_topic(broker, topic, usize::MAX, Duration::from_secs(3))
        .await
        .len()
}

/// getUpdates requests botsim answered, in order.
pub fn get_updates_requests(api: &BotApi) -> Vec<botsim::RequestRecord> {
    api.requests()
        .into_iter()
        .filter(|r| r.method == "getupdates")
        .collect()
}

/// A log buffer a tracing subscriber writes into (the test asserts on what was logged).
#[derive(Clone, Default)]
pub struct LogBuffer(Arc<std::sync::Mutex<Vec<u8>>>);

impl LogBuffer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// The value of the sample `name{labels…}` whose label set contains every `labels` pair.
pub fn metric_sample(
    handle: &metrics_exporter_prometheus::PrometheusHandle,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    handle
        .render()
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|line| {
            labels
                .iter()
                .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .find_map(|line| line.rsplit(' ').next()?.parse().ok())
}

fn log_subscriber(level: tracing::Level, buffer: &LogBuffer) -> impl tracing::Subscriber {
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false)
        .with_writer(buffer.clone())
        .finish()
}

/// Captures the log events of every thread at `level` and above (the subscriber is
/// process-global: one such test per binary).
pub fn capture_logs_globally(level: tracing::Level) -> LogBuffer {
    let buffer = LogBuffer::default();
    // `try_init` also bridges the `log` crate (librdkafka's and reqwest's own logging).
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false)
        .with_writer(buffer.clone())
        .try_init()
        .unwrap();
    buffer
}

/// Captures this thread's log events at `level` and above while the guard lives (on a
/// current-thread runtime, the producer's tasks log on this thread too).
pub fn capture_thread_logs(
    level: tracing::Level,
) -> (LogBuffer, tracing::subscriber::DefaultGuard) {
    let buffer = LogBuffer::default();
    let guard = tracing::subscriber::set_default(log_subscriber(level, &buffer));
    (buffer, guard)
}

/// Records every readiness report, for tests that assert on them.
#[derive(Debug, Default)]
pub struct RecordingReadiness(std::sync::Mutex<Vec<(Unit, Result<String, String>)>>);

impl RecordingReadiness {
    /// Every report of `unit`, in order (`true` = ready).
    pub fn history(&self, unit: &Unit) -> Vec<bool> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(u, _)| u == unit)
            .map(|(_, state)| state.is_ok())
            .collect()
    }

    /// The last report of `unit`: `Ok(detail)` or `Err(reason)`.
    pub fn last(&self, unit: &Unit) -> Option<Result<String, String>> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(u, _)| u == unit)
            .map(|(_, state)| state.clone())
    }

    /// Every reason `unit` was reported not ready for, in order.
    pub fn reasons(&self, unit: &Unit) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(u, _)| u == unit)
            .filter_map(|(_, state)| state.clone().err())
            .collect()
    }

    /// How many reports arrived so far.
    pub fn reports(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// What `/readyz` would have answered after each report (ready iff every unit reported so far
    /// is ready), in order.
    pub fn process_ready_over_time(&self) -> Vec<bool> {
        let mut units = std::collections::BTreeMap::new();
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(unit, state)| {
                units.insert(unit.clone(), state.is_ok());
                units.values().all(|ready| *ready)
            })
            .collect()
    }
}

impl Readiness for RecordingReadiness {
    fn ready(&self, unit: &Unit, detail: &str) {
        self.0
            .lock()
            .unwrap()
            .push((unit.clone(), Ok(detail.to_owned())));
    }
    fn not_ready(&self, unit: &Unit, reason: &str) {
        self.0
            .lock()
            .unwrap()
            .push((unit.clone(), Err(reason.to_owned())));
    }
    fn withdraw(&self, _unit: &Unit) {
        // The producer's units live as long as the producer: it withdraws none.
    }
}
