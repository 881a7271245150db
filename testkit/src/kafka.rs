//! Kafka-protocol brokers for tests, chosen by the environment, behind one handle
//! ([`TestBroker`]).
//!
//! Backends ([`BrokerKind`]), picked by [`BrokerKind::from_env`]:
//! - `KAFKA_BROKERS` set → **External**: used as is, never controlled (no outages);
//! - else `TGINGEST_TEST_BROKER=tansu` → **Tansu**: a real broker process with sqlite storage in a
//!   temporary directory, so it can be killed and restarted with its data;
//! - `TGINGEST_TEST_BROKER=hosted-mock` → **HostedMock**: librdkafka's mock cluster in a helper
//!   process ([`HostedMockBroker`]);
//! - otherwise (or `TGINGEST_TEST_BROKER=mock`) → **Mock**: librdkafka's mock cluster on a thread
//!   of the test process ([`MockClusterHost`]). Its listeners are real TCP ports, so child
//!   processes of the test can use it too.
//!
//! Guarantees: [`TestBroker::create_topic`] returns only once metadata shows every partition with a
//! leader; [`TestBroker::client_config`] never auto-creates topics; names from
//! [`TestBroker::unique_topic`] and [`TestBroker::unique_group`] carry random suffixes, so tests
//! never share them, even on an external broker; everything a backend started is stopped on drop.
//!
//! Security settings for an external broker, read from the environment and applied by
//! [`TestBroker::client_config`] (see [`SECURITY_ENV`]): `KAFKA_SECURITY_PROTOCOL`,
//! `KAFKA_SASL_MECHANISM`, `KAFKA_SASL_USERNAME`, `KAFKA_SASL_PASSWORD`, `KAFKA_SSL_CA_LOCATION`,
//! `KAFKA_SSL_CERTIFICATE_LOCATION`, `KAFKA_SSL_KEY_LOCATION`, `KAFKA_SSL_KEY_PASSWORD`,
//! `KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM`.

mod mock;
mod tansu;

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;

pub use mock::{DEFAULT_MOCK_BROKERS, HostedMockBroker, MockClusterHost, mock_kafka_binary};
pub use tansu::tansu_binary;

/// Environment variables carrying an external broker's security settings, and the librdkafka
/// property each one sets.
pub const SECURITY_ENV: &[(&str, &str)] = &[
    ("KAFKA_SECURITY_PROTOCOL", "security.protocol"),
    ("KAFKA_SASL_MECHANISM", "sasl.mechanism"),
    ("KAFKA_SASL_USERNAME", "sasl.username"),
    ("KAFKA_SASL_PASSWORD", "sasl.password"),
    ("KAFKA_SSL_CA_LOCATION", "ssl.ca.location"),
    ("KAFKA_SSL_CERTIFICATE_LOCATION", "ssl.certificate.location"),
    ("KAFKA_SSL_KEY_LOCATION", "ssl.key.location"),
    ("KAFKA_SSL_KEY_PASSWORD", "ssl.key.password"),
    (
        "KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM",
        "ssl.endpoint.identification.algorithm",
    ),
];

/// How long [`TestBroker::create_topic`] waits for every partition to have a leader.
const TOPIC_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Which broker a [`TestBroker`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    /// librdkafka's mock cluster, in the test process.
    Mock,
    /// librdkafka's mock cluster, in a `mock-kafka` helper process.
    HostedMock,
    /// A Tansu broker process with sqlite storage.
    Tansu,
    /// The broker at `KAFKA_BROKERS`, not under the test's control.
    External,
}

impl BrokerKind {
    /// The backend the environment asks for (see the module documentation).
    pub fn from_env() -> anyhow::Result<Self> {
        if std::env::var_os("KAFKA_BROKERS").is_some_and(|v| !v.is_empty()) {
            return Ok(Self::External);
        }
        match std::env::var("TGINGEST_TEST_BROKER").as_deref() {
            Err(_) | Ok("") | Ok("mock") => Ok(Self::Mock),
            Ok("hosted-mock") => Ok(Self::HostedMock),
            Ok("tansu") => Ok(Self::Tansu),
            Ok(other) => bail!(
                "TGINGEST_TEST_BROKER={other:?} is not one of mock, hosted-mock, tansu (or set KAFKA_BROKERS)"
            ),
        }
    }
}

/// Fails the calling test unless it runs on one of the brokers in `capable`.
///
/// A test that a broker cannot carry is excluded from that broker's run by the nextest filter in
/// `scripts/test`, which prints it with its reason; it never returns early and counts as a pass.
/// This guard makes a run that missed the filter fail loudly instead.
pub fn require_broker(actual: BrokerKind, capable: &[BrokerKind], reason: &str) {
    assert!(
        capable.contains(&actual),
        "this test cannot run on {actual:?} ({reason}); scripts/test excludes it there"
    );
}

/// A broker for one test; stopped on drop (External: left alone).
pub struct TestBroker {
    kind: BrokerKind,
    bootstrap: String,
    security: Vec<(String, String)>,
    backend: Backend,
}

#[derive(Debug)]
enum Backend {
    Mock(MockClusterHost),
    HostedMock(HostedMockBroker),
    Tansu(tansu::TansuBroker),
    External,
}

impl std::fmt::Debug for TestBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Security settings may hold passwords: print only their keys.
        let security: Vec<&str> = self.security.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("TestBroker")
            .field("kind", &self.kind)
            .field("bootstrap", &self.bootstrap)
            .field("security_settings", &security)
            .field("backend", &self.backend)
            .finish()
    }
}

impl TestBroker {
    /// Starts the backend the environment selects ([`BrokerKind::from_env`]).
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(BrokerKind::from_env()?).await
    }

    /// Starts a specific backend (for scenarios only one broker can carry).
    pub async fn start_with(kind: BrokerKind) -> anyhow::Result<Self> {
        let (bootstrap, security, backend) = match kind {
            BrokerKind::Mock => {
                let host = MockClusterHost::start(DEFAULT_MOCK_BROKERS)?;
                (
                    host.bootstrap_servers().to_owned(),
                    Vec::new(),
                    Backend::Mock(host),
                )
            }
            BrokerKind::HostedMock => {
                let hosted = HostedMockBroker::start().await?;
                (
                    hosted.bootstrap_servers().to_owned(),
                    Vec::new(),
                    Backend::HostedMock(hosted),
                )
            }
            BrokerKind::Tansu => {
                let broker = tansu::TansuBroker::start().await?;
                (
                    broker.bootstrap_servers(),
                    Vec::new(),
                    Backend::Tansu(broker),
                )
            }
            BrokerKind::External => {
                let servers = std::env::var("KAFKA_BROKERS")
                    .ok()
                    .filter(|v| !v.is_empty())
                    .context("the External broker needs KAFKA_BROKERS")?;
                (servers, security_from_env(), Backend::External)
            }
        };
        Ok(Self {
            kind,
            bootstrap,
            security,
            backend,
        })
    }

    /// Which backend this is.
    pub fn kind(&self) -> BrokerKind {
        self.kind
    }

    /// The `bootstrap.servers` value.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// Security settings (librdkafka property, value) applied to clients; empty unless External.
    pub fn security_settings(&self) -> &[(String, String)] {
        &self.security
    }

    /// A client configuration for this broker: bootstrap servers, `allow.auto.create.topics=false`
    /// and the security settings. Add group, acks and the like yourself.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap)
            .set("allow.auto.create.topics", "false");
        for (key, value) in &self.security {
            config.set(key, value);
        }
        config
    }

    /// A topic name no other test uses: `{prefix}-{random}`.
    pub fn unique_topic(&self, prefix: &str) -> String {
        format!("{prefix}-{}", crate::random_suffix(12))
    }

    /// A consumer group id no other test uses: `{prefix}-{random}`.
    pub fn unique_group(&self, prefix: &str) -> String {
        format!("{prefix}-{}", crate::random_suffix(12))
    }

    /// Creates a topic and waits until metadata shows every partition with a leader. An existing
    /// topic with the same partition count is accepted (an external broker may already have it).
    pub async fn create_topic(&self, name: &str, partitions: i32) -> anyhow::Result<()> {
        match &self.backend {
            Backend::Mock(host) => host.create_topic(name, partitions)?,
            Backend::HostedMock(hosted) => hosted.create_topic(name, partitions).await?,
            // Tansu keeps one replica; an external broker applies its own default (-1).
            Backend::Tansu(_) => {
                create_with_admin(self.client_config(), name, partitions, 1).await?
            }
            Backend::External => {
                create_with_admin(self.client_config(), name, partitions, -1).await?
            }
        }
        await_topic(self.client_config(), name, partitions, TOPIC_READY_TIMEOUT).await
    }

    /// Deletes a topic and waits until metadata no longer lists it. The mock cluster cannot
    /// delete topics: an error there.
    pub async fn delete_topic(&self, name: &str) -> anyhow::Result<()> {
        if matches!(self.backend, Backend::Mock(_) | Backend::HostedMock(_)) {
            bail!("the mock cluster cannot delete topics");
        }
        let admin: AdminClient<DefaultClientContext> = self
            .client_config()
            .create()
            .context("creating a Kafka admin client")?;
        let results = admin
            .delete_topics(
                &[name],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
            )
            .await
            .with_context(|| format!("deleting topic {name}"))?;
        for result in results {
            if let Err((topic, code)) = result {
                bail!("deleting topic {topic}: {code}");
            }
        }
        let config = self.client_config();
        let topic = name.to_owned();
        tokio::task::spawn_blocking(move || {
            let client: BaseConsumer = config.create().context("creating a metadata client")?;
            let deadline = Instant::now() + TOPIC_READY_TIMEOUT;
            loop {
                // A failed metadata request proves nothing: asked again.
                if !listed(&client, &topic, Duration::from_secs(5)).unwrap_or(true) {
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    bail!("topic {topic} still listed {TOPIC_READY_TIMEOUT:?} after its deletion");
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
        .await
        .context("the metadata task panicked")?
    }

    /// Takes the broker away (`false`) or brings it back (`true`), for outage tests.
    ///
    /// Mock: every broker refuses connections (existing ones are closed) and accepts them again,
    /// on the same ports. Tansu: the process is SIGKILLed, then restarted on the same port with the
    /// same sqlite file. Asking for the current state again is a no-op. External: an error, since
    /// it cannot be controlled.
    pub async fn set_available(&self, available: bool) -> anyhow::Result<()> {
        match &self.backend {
            Backend::Mock(host) => host.set_available(available),
            Backend::HostedMock(hosted) => hosted.set_available(available).await,
            // Idempotent, like the mock's broker_up/broker_down.
            Backend::Tansu(broker) if broker.is_running().await == available => Ok(()),
            Backend::Tansu(broker) => {
                if available {
                    broker.restart().await
                } else {
                    broker.kill().await
                }
            }
            Backend::External => bail!(
                "the external broker at {} cannot be taken down or brought up by a test",
                self.bootstrap
            ),
        }
    }
}

impl TestBroker {
    /// Moves the leadership of `topic`'s `partition` to broker `broker`, as a controller does
    /// when a leader fails (mock cluster only: broker ids 1 to [`DEFAULT_MOCK_BROKERS`]; the
    /// log stays, the leader epoch is bumped). Tansu has a single broker and an external broker
    /// cannot be controlled: an error.
    pub async fn set_partition_leader(
        &self,
        topic: &str,
        partition: i32,
        broker: i32,
    ) -> anyhow::Result<()> {
        match &self.backend {
            Backend::Mock(host) => host.set_partition_leader(topic, partition, broker),
            Backend::HostedMock(hosted) => {
                hosted.set_partition_leader(topic, partition, broker).await
            }
            Backend::Tansu(_) | Backend::External => bail!(
                "only the mock cluster can move partition leaders on a test's command, not {:?}",
                self.kind
            ),
        }
    }

    /// The leader broker id of every partition of `topic`, in partition order, as metadata
    /// reports it now (-1 for a partition without a leader).
    pub async fn partition_leaders(&self, topic: &str) -> anyhow::Result<Vec<i32>> {
        let config = self.client_config();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            let client: BaseConsumer = config.create().context("creating a metadata client")?;
            let metadata = client
                .fetch_metadata(Some(&topic), Duration::from_secs(10))
                .with_context(|| format!("reading metadata of {topic}"))?;
            let listed = metadata
                .topics()
                .iter()
                .find(|t| t.name() == topic)
                .with_context(|| format!("metadata does not list {topic}"))?;
            let mut partitions: Vec<(i32, i32)> = listed
                .partitions()
                .iter()
                .map(|p| (p.id(), p.leader()))
                .collect();
            partitions.sort_unstable();
            Ok(partitions.into_iter().map(|(_, leader)| leader).collect())
        })
        .await
        .context("the metadata task panicked")?
    }

    /// What the broker process printed so far (Tansu: the running process; the hosted mock: its
    /// helper), so a test can tell a broker's own crash from a fault of the code under test.
    /// `None` for brokers without a process of their own.
    pub async fn process_output(&self) -> Option<String> {
        match &self.backend {
            Backend::Tansu(broker) => broker.output().await,
            Backend::HostedMock(hosted) => Some(hosted.process().output_text()),
            Backend::Mock(_) | Backend::External => None,
        }
    }

    /// Takes the broker down cleanly: Tansu gets SIGTERM (SIGKILL only if it outlives the wait);
    /// the mock cluster has no clean shutdown and goes down as in [`TestBroker::set_available`].
    /// Bring it back with `set_available(true)`.
    pub async fn stop_cleanly(&self) -> anyhow::Result<()> {
        match &self.backend {
            Backend::Tansu(broker) if broker.is_running().await => {
                broker.stop_with(nix::sys::signal::Signal::SIGTERM).await
            }
            _ => self.set_available(false).await,
        }
    }
}

fn security_from_env() -> Vec<(String, String)> {
    SECURITY_ENV
        .iter()
        .filter_map(|(var, key)| {
            std::env::var(var)
                .ok()
                .filter(|v| !v.is_empty())
                .map(|v| ((*key).to_owned(), v))
        })
        .collect()
}

async fn create_with_admin(
    config: ClientConfig,
    name: &str,
    partitions: i32,
    replication: i32,
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        config.create().context("creating a Kafka admin client")?;
    let results = admin
        .create_topics(
            &[NewTopic::new(
                name,
                partitions,
                TopicReplication::Fixed(replication),
            )],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .with_context(|| format!("creating topic {name}"))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => bail!("creating topic {topic}: {code}"),
        }
    }
    Ok(())
}

/// Waits until metadata shows `topic` with exactly `partitions` partitions, each with a leader.
pub async fn await_topic(
    config: ClientConfig,
    topic: &str,
    partitions: i32,
    timeout: Duration,
) -> anyhow::Result<()> {
    let topic = topic.to_owned();
    // Metadata requests block; keep them off the runtime's threads.
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = config.create().context("creating a metadata client")?;
        let deadline = Instant::now() + timeout;
        loop {
            let state = match client.fetch_metadata(Some(&topic), Duration::from_secs(5)) {
                Err(err) => format!("metadata request failed: {err}"),
                Ok(metadata) => match metadata.topics().iter().find(|t| t.name() == topic) {
                    None => "topic absent from metadata".to_owned(),
                    Some(t) => {
                        let ready = t.error().is_none()
                            && t.partitions().len() == partitions as usize
                            && t.partitions()
                                .iter()
                                .all(|p| p.error().is_none() && p.leader() >= 0);
                        if ready {
                            return Ok(());
                        }
                        if t.error().is_none() && t.partitions().len() > partitions as usize {
                            bail!(
                                "topic {topic} exists with {} partitions, not {partitions}",
                                t.partitions().len()
                            );
                        }
                        format!(
                            "topic error {:?}, {} of {partitions} partitions",
                            t.error(),
                            t.partitions().len()
                        )
                    }
                },
            };
            if Instant::now() >= deadline {
                bail!("topic {topic} not ready after {timeout:?}: {state}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .context("the metadata task panicked")?
}

/// One record read back from a topic by [`read_topic`].
#[derive(Debug, Clone)]
pub struct ConsumedRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub value: Vec<u8>,
    pub headers: std::collections::BTreeMap<String, String>,
}

impl ConsumedRecord {
    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// The record as the exactly-once checker's manifest lists it (topic incarnation 0, no
    /// headers).
    pub fn as_produced(&self, topic: &str) -> crate::invariants::ProducedRecord {
        crate::invariants::ProducedRecord {
            topic: topic.to_owned(),
            topic_incarnation: 0,
            partition: self.partition,
            offset: self.offset,
            key: Some(self.key.clone().into_bytes()),
            value: Some(self.value.clone()),
            headers: Vec::new(),
        }
    }
}

/// Whether metadata lists `topic` (without an error for it).
fn listed(client: &BaseConsumer, topic: &str, timeout: Duration) -> anyhow::Result<bool> {
    let metadata = client.fetch_metadata(Some(topic), timeout)?;
    Ok(metadata
        .topics()
        .iter()
        .any(|t| t.name() == topic && t.error().is_none()))
}

/// Whether the broker's metadata lists `topic` now (one request, 10 s at most).
pub async fn topic_listed(config: ClientConfig, topic: &str) -> anyhow::Result<bool> {
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = config.create().context("creating a metadata client")?;
        listed(&client, &topic, Duration::from_secs(10))
    })
    .await
    .context("the metadata task panicked")?
}

/// How many partitions metadata lists for `topic`; an error when none.
fn partition_count(client: &BaseConsumer, topic: &str) -> anyhow::Result<i32> {
    let metadata = client
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .with_context(|| format!("reading metadata of {topic}"))?;
    let partitions = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().len())
        .unwrap_or(0);
    if partitions == 0 {
        bail!("topic {topic} has no partitions");
    }
    Ok(i32::try_from(partitions)?)
}

/// (low, high) watermarks of every partition of `topic`, in partition order.
pub async fn watermarks(config: ClientConfig, topic: &str) -> anyhow::Result<Vec<(i64, i64)>> {
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = config.create().context("creating a metadata client")?;
        (0..partition_count(&client, &topic)?)
            .map(|p| {
                client
                    .fetch_watermarks(&topic, p, Duration::from_secs(10))
                    .with_context(|| format!("watermarks of partition {p}"))
            })
            .collect()
    })
    .await
    .context("the watermark task panicked")?
}

/// Reads `topic` from the beginning of every partition (in a throwaway group, committing
/// nothing) until `count` records arrived or `timeout` passed.
pub async fn read_topic(
    mut config: ClientConfig,
    topic: &str,
    count: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<ConsumedRecord>> {
    use rdkafka::message::{Headers, Message};
    use rdkafka::{Offset, TopicPartitionList};

    config
        .set(
            "group.id",
            format!("testkit-reader-{}", crate::random_suffix(12)),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    let topic = topic.to_owned();
    // Polling blocks; keep it off the runtime's threads.
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.create().context("creating a topic reader")?;
        let mut tpl = TopicPartitionList::new();
        for partition in 0..partition_count(&consumer, &topic)? {
            tpl.add_partition_offset(&topic, partition, Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < count && Instant::now() < deadline {
            let message = match consumer.poll(Duration::from_millis(200)) {
                None => continue,
                Some(Err(e)) => {
                    eprintln!("topic reader: consumer error (ignored): {e}");
                    continue;
                }
                Some(Ok(m)) => m,
            };
            let mut headers = std::collections::BTreeMap::new();
            if let Some(h) = message.headers() {
                for header in h.iter() {
                    headers.insert(
                        header.key.to_owned(),
                        String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned(),
                    );
                }
            }
            out.push(ConsumedRecord {
                partition: message.partition(),
                offset: message.offset(),
                key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
                value: message.payload().unwrap_or_default().to_vec(),
                headers,
            });
        }
        Ok(out)
    })
    .await
    .context("the topic reader panicked")?
}
