//! The Kafka side: an idempotent producer that publishes records and reports, per record, whether
//! the broker acknowledged it.
//!
//! Guarantees:
//! - `enable.idempotence=true` and `acks=all`: an acknowledged record is in every in-sync replica,
//!   and librdkafka's own retries never duplicate or reorder within a partition.
//! - [`Publisher::publish`] enqueues every record before awaiting any report, so a batch costs one
//!   round trip, not one per record; records of one key keep their order.
//! - The record limit is the producer's `message.max.bytes` (the caller's Kafka client setting is
//!   kept, never overridden), lowered to the topic's `max.message.bytes` when the broker reports
//!   a lower one (DescribeConfigs, at startup and after a refusal).
//! - A record librdkafka or the broker refuses as too large is replaced by a `tg-error` envelope
//!   that identifies it (size, SHA-256, update id) without carrying it, and that is sent instead,
//!   so size never blocks the confirm. The broker refuses whole batches: the refused record's
//!   batch mates are sent again unchanged, never mislabelled, and nothing is retried forever for
//!   its size.
//! - [`Publisher::publish_until_acked`] retries only the records that failed, with capped
//!   backoff, until all are acknowledged or shutdown is requested; it never reports success for a
//!   record without its delivery report.
//! - Topics are never auto-created: every client built here sets `allow.auto.create.topics=false`
//!   (librdkafka's producer default lets the broker create a missing topic on the first send).
//! - [`KAFKA_CHECK`] follows every publish; while it is not ready, a metadata probe can turn it
//!   ready again without traffic ([`Publisher::probe_while_not_ready`]).
//! - After a fatal librdkafka error (e.g. idempotence fencing), and after deliveries timed out or
//!   failed with the broker's unknown server error, the producer is rebuilt from the same
//!   configuration; every later attempt uses the new one.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::future::join_all;
use processor::wire::EnvelopeReason;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::{BackoffPolicy, ProducerConfig};
use crate::metrics;
use crate::readiness::{KAFKA_CHECK, Readiness};
use crate::update::{OutgoingRecord, fits, identified_envelope};

/// How long to wait for room in librdkafka's queue before trying to enqueue again.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(20);
/// How long one metadata request at startup may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one readiness probe's metadata request may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long reading the topic's configuration may take.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Refusals of a record sent by itself before it is taken to be too large (one could be a
/// concurrent attempt's large record sharing its produce batch).
const SOLO_REFUSALS: u32 = 2;
/// No broker known for DescribeConfigs: librdkafka picks the controller.
const ANY_BROKER: i32 = -1;
/// librdkafka's default `batch.size`.
const DEFAULT_BATCH_SIZE: usize = 1_000_000;

/// The outcome of one record in one attempt.
#[derive(Debug)]
pub(crate) enum RecordOutcome {
    /// Acknowledged by the broker.
    Acked,
    /// Not acknowledged; may be retried.
    Failed(KafkaError),
}

/// Publishing stopped before every record was acknowledged, because shutdown was requested.
#[derive(Debug, thiserror::Error)]
#[error("shutdown requested before every record was acknowledged ({unacked} left)")]
pub(crate) struct Interrupted {
    pub(crate) unacked: usize,
}

/// One Kafka producer (rebuilt after fatal errors) and the topic it writes to.
pub struct Publisher {
    /// The producer's client configuration (`batch.size` may be lowered at run time).
    config: Mutex<ClientConfig>,
    /// The caller's client configuration, for the admin requests.
    admin_config: ClientConfig,
    topic: String,
    /// The producer's `message.max.bytes`: the caller's Kafka client setting when given, else
    /// [`ProducerConfig::message_max_bytes`].
    producer_limit: usize,
    /// The largest record sent (see [`Publisher::record_limit`]).
    record_limit: AtomicUsize,
    /// The broker could not report the topic's limit (logged once).
    topic_limit_unknown: AtomicBool,
    /// The broker asked for the topic's configuration (from the startup metadata).
    describe_broker: AtomicI32,
    backoff: BackoffPolicy,
    current: Mutex<(u64, Arc<FutureProducer>)>,
    /// How long a replaced producer may stay in use by attempts in flight.
    retire_after: Duration,
    readiness: Arc<dyn Readiness>,
    /// What was last reported for [`KAFKA_CHECK`] (the probe runs only while it is `false`).
    kafka_ready: AtomicBool,
    /// The topic's replication factor (lowest over its partitions) from the startup metadata;
    /// 0 until known.
    replication: AtomicUsize,
    /// The topic's `min.insync.replicas` (DescribeConfigs); 0 where the broker cannot say.
    min_insync: AtomicU32,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client configuration may contain passwords.
        f.debug_struct("Publisher")
            .field("topic", &self.topic)
            .field("record_limit", &self.record_limit())
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// Builds the producer from the caller's client configuration plus the producer's own
    /// settings. Does not touch the network (see [`Publisher::check_topic`]). A
    /// `message.max.bytes` in the caller's client configuration is kept, and is the record limit.
    pub fn new(config: &ProducerConfig, readiness: Arc<dyn Readiness>) -> anyhow::Result<Self> {
        let mut client = config.client.clone();
        let producer_limit = match config.client.get("message.max.bytes") {
            Some(value) => {
                let limit = value
                    .trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|limit| *limit >= 4096)
                    .with_context(|| {
                        format!(
                            "message.max.bytes {value:?} in the Kafka client settings: must be a \
                             number of bytes, at least 4096"
                        )
                    })?;
                if limit != config.message_max_bytes {
                    tracing::info!(
                        message_max_bytes = limit,
                        "message.max.bytes from the Kafka client settings is the record limit"
                    );
                }
                limit
            }
            None => {
                client.set("message.max.bytes", config.message_max_bytes.to_string());
                config.message_max_bytes
            }
        };
        client
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", &config.compression)
            .set(
                "message.timeout.ms",
                config.delivery_timeout.as_millis().to_string(),
            )
            .set("linger.ms", "5")
            // librdkafka's producer default lets the broker create a missing topic with the
            // broker's defaults (partitions, replication) on the first send.
            .set("allow.auto.create.topics", "false");
        let producer = create(&client)?;
        let mut admin_config = config.client.clone();
        admin_config.set("allow.auto.create.topics", "false");
        Ok(Self {
            config: Mutex::new(client),
            admin_config,
            topic: config.topic.clone(),
            producer_limit,
            record_limit: AtomicUsize::new(producer_limit),
            topic_limit_unknown: AtomicBool::new(false),
            describe_broker: AtomicI32::new(ANY_BROKER),
            backoff: config.backoff,
            current: Mutex::new((0, Arc::new(producer))),
            retire_after: config.delivery_timeout * 2,
            readiness,
            kafka_ready: AtomicBool::new(false),
            replication: AtomicUsize::new(0),
            min_insync: AtomicU32::new(0),
        })
    }

    /// The topic records go to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Fails when the topic does not exist (a startup error naming it); retries while the
    /// brokers cannot be reached, until `shutdown`.
    pub async fn check_topic(&self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let mut backoff = Backoff::new(self.backoff);
        loop {
            let producer = self.producer().1;
            let topic = self.topic.clone();
            let answer = tokio::task::spawn_blocking(move || {
                producer
                    .client()
                    .fetch_metadata(Some(&topic), METADATA_TIMEOUT)
                    .map(|metadata| {
                        let broker = metadata.brokers().first().map(|b| b.id());
                        metadata
                            .topics()
                            .iter()
                            .find(|t| t.name() == topic)
                            .map(|t| {
                                let replication =
                                    t.partitions().iter().map(|p| p.replicas().len()).min();
                                (t.error(), t.partitions().len(), (broker, replication))
                            })
                    })
            })
            .await
            .context("the metadata task panicked")?;
            match answer {
                Ok(Some((None, partitions, (broker, replication)))) if partitions > 0 => {
                    self.describe_broker
                        .store(broker.unwrap_or(ANY_BROKER), Ordering::Relaxed);
                    self.replication
                        .store(replication.unwrap_or(0), Ordering::Relaxed);
                    self.refresh_topic_limit().await;
                    self.report_ready();
                    return Ok(());
                }
                Ok(Some((Some(error), _, _)))
                    if RDKafkaErrorCode::from(error)
                        == RDKafkaErrorCode::UnknownTopicOrPartition =>
                {
                    bail!(
                        "Kafka topic {:?} does not exist (create it; topics are never auto-created)",
                        self.topic
                    );
                }
                Ok(None) => bail!("Kafka topic {:?} does not exist", self.topic),
                other => {
                    let reason = match other {
                        Ok(state) => format!("topic metadata incomplete: {state:?}"),
                        Err(e) => format!("metadata request failed: {e}"),
                    };
                    self.report_not_ready(&reason);
                    let delay = backoff.next_delay();
                    tracing::warn!(topic = %self.topic, %reason, retry_in = ?delay, "Kafka not reachable yet");
                    tokio::select! {
                        () = shutdown.cancelled() => bail!("shutdown requested while waiting for Kafka"),
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    fn report_ready(&self) {
        self.kafka_ready.store(true, Ordering::Relaxed);
        self.readiness.ready(KAFKA_CHECK, "");
    }

    fn report_not_ready(&self, reason: &str) {
        self.kafka_ready.store(false, Ordering::Relaxed);
        self.readiness.not_ready(KAFKA_CHECK, reason);
    }

    /// Exports the topic's durability as the broker reported it at startup (replication factor
    /// from the metadata, `min.insync.replicas` from DescribeConfigs where the broker answers it)
    /// and, when `expect_durable` is set, warns once for each below what survives a broker loss:
    /// a replication factor below 3, a `min.insync.replicas` below 2.
    pub(crate) fn check_durability(&self, expect_durable: bool) {
        let replication = Some(self.replication.load(Ordering::Relaxed)).filter(|r| *r > 0);
        let min_insync = Some(self.min_insync.load(Ordering::Relaxed)).filter(|m| *m > 0);
        metrics::topic_durability(&self.topic, replication, min_insync);
        if !expect_durable {
            return;
        }
        if let Some(replication) = replication.filter(|r| *r < 3) {
            tracing::warn!(
                topic = %self.topic,
                replication_factor = replication,
                "the topic's replication factor is below 3: losing one broker can lose \
                 acknowledged updates or stop intake"
            );
        }
        if let Some(min_insync) = min_insync.filter(|m| *m < 2) {
            tracing::warn!(
                topic = %self.topic,
                min_insync_replicas = min_insync,
                "the topic's min.insync.replicas is below 2: acks=all is satisfied by one replica, \
                 so an acknowledged update can live on a single disk"
            );
        }
    }

    /// While [`KAFKA_CHECK`] is reported not ready, asks the brokers for the topic's metadata every
    /// `interval` and reports it ready once they answer with every partition led, so readiness
    /// recovers without traffic (a webhook pod that no request reaches while it is not ready).
    /// Runs until `stop`.
    pub(crate) async fn probe_while_not_ready(&self, interval: Duration, stop: &CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
            if self.kafka_ready.load(Ordering::Relaxed) {
                continue;
            }
            match self.probe().await {
                Ok(()) if !self.kafka_ready.load(Ordering::Relaxed) => {
                    tracing::info!(topic = %self.topic, "Kafka answers again (metadata probe): ready");
                    self.report_ready();
                }
                Ok(()) => {}
                Err(reason) => tracing::debug!(topic = %self.topic, %reason, "Kafka probe failed"),
            }
        }
    }

    /// One metadata request for the topic: `Ok` when it lists the topic with every partition led.
    async fn probe(&self) -> Result<(), String> {
        let producer = self.producer().1;
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || {
            let metadata = producer
                .client()
                .fetch_metadata(Some(&topic), PROBE_TIMEOUT)
                .map_err(|e| e.to_string())?;
            let listed = metadata.topics().iter().find(|t| t.name() == topic);
            match listed {
                Some(t)
                    if t.error().is_none()
                        && !t.partitions().is_empty()
                        && t.partitions().iter().all(|p| p.leader() >= 0) =>
                {
                    Ok(())
                }
                _ => Err("the topic is not listed with every partition led".to_owned()),
            }
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Publishes the records once: every record is enqueued, then every delivery report awaited.
    /// Records the broker refuses for their size are settled ([`Publisher::settle_refused`]):
    /// innocent ones are sent again unchanged, the one too large is replaced in place by an
    /// envelope that identifies it, and that envelope is sent.
    pub(crate) async fn publish(
        &self,
        records: &mut [OutgoingRecord],
        originals: &[&[u8]],
    ) -> Vec<RecordOutcome> {
        let (generation, producer) = self.producer();
        let started = Instant::now();
        let mut outcomes = self.attempt(&producer, records, originals).await;
        let refused: Vec<usize> = outcomes
            .iter()
            .enumerate()
            .filter(|(index, outcome)| {
                matches!(outcome, RecordOutcome::Failed(error) if is_too_large(error))
                    && records[*index].envelope != Some(EnvelopeReason::TooLarge)
            })
            .map(|(index, _)| index)
            .collect();
        if !refused.is_empty() {
            let alone = records.len() == 1;
            self.settle_refused(records, originals, &refused, &mut outcomes, alone)
                .await;
        }
        ::metrics::histogram!(metrics::PUBLISH_SECONDS).record(started.elapsed().as_secs_f64());
        let failed = outcomes
            .iter()
            .filter(|o| matches!(o, RecordOutcome::Failed(_)))
            .count();
        if failed == 0 {
            self.report_ready();
        } else {
            ::metrics::counter!(metrics::PUBLISH_FAILURES).increment(1);
            let first = outcomes.iter().find_map(|o| match o {
                RecordOutcome::Failed(e) => Some(e.to_string()),
                RecordOutcome::Acked => None,
            });
            let reason = format!(
                "{failed} of {} records not acknowledged: {}",
                outcomes.len(),
                first.unwrap_or_default()
            );
            self.report_not_ready(&reason);
            let codes: Vec<Option<RDKafkaErrorCode>> = outcomes
                .iter()
                .filter_map(|o| match o {
                    RecordOutcome::Failed(e) => Some(e.rdkafka_error_code()),
                    RecordOutcome::Acked => None,
                })
                .collect();
            let cause = if codes.contains(&Some(RDKafkaErrorCode::MessageTimedOut)) {
                Some("timeout")
            } else if codes.contains(&Some(RDKafkaErrorCode::Unknown)) {
                Some("unknown_broker_error")
            } else {
                None
            };
            self.replace_after_failure(generation, &producer, cause);
        }
        outcomes
    }

    /// One attempt: every record enqueued, then every delivery report awaited. A record
    /// librdkafka refuses for its size is replaced in place by its envelope before it is enqueued.
    async fn attempt(
        &self,
        producer: &FutureProducer,
        records: &mut [OutgoingRecord],
        originals: &[&[u8]],
    ) -> Vec<RecordOutcome> {
        let mut pending: Vec<Result<DeliveryFuture, KafkaError>> =
            Vec::with_capacity(records.len());
        if let Some(limit) = injected_topic_limit()
            && records.iter().any(|r| r.value.len() >= limit)
        {
            pending.extend(records.iter().map(|_| Err(broker_size_refusal())));
        } else {
            for (index, record) in records.iter_mut().enumerate() {
                pending.push(self.enqueue(producer, record, originals[index]).await);
            }
        }
        join_all(pending.into_iter().map(|p| async move {
            match p {
                Ok(future) => match future.await {
                    Ok(Ok(_delivery)) => RecordOutcome::Acked,
                    Ok(Err((error, _message))) => RecordOutcome::Failed(error),
                    Err(_canceled) => RecordOutcome::Failed(KafkaError::Canceled),
                },
                Err(error) => RecordOutcome::Failed(error),
            }
        }))
        .await
    }

    /// Settles the records at `refused`, which the broker refused for their size. The broker
    /// refuses a whole produce batch, so a refused record may be innocent. The topic's limit is
    /// read again; a record over it is too large for certain. Every other one is sent again by
    /// itself, and is taken to be too large only when refused by itself [`SOLO_REFUSALS`] times
    /// (`alone`: the attempt that was refused held it alone, which counts as one). A record too
    /// large is replaced by an envelope without its bytes, identifying it by size, SHA-256 and
    /// update id, and the envelope is sent. Innocent records go again unchanged. Nothing here
    /// loops: each record is sent at most [`SOLO_REFUSALS`] + 1 more times.
    async fn settle_refused(
        &self,
        records: &mut [OutgoingRecord],
        originals: &[&[u8]],
        refused: &[usize],
        outcomes: &mut [RecordOutcome],
        alone: bool,
    ) {
        self.refresh_topic_limit().await;
        let limit = self.record_limit();
        for &index in refused {
            let one = index..=index;
            let mut solo_refusals = u32::from(alone);
            let mut too_large = !fits(&records[index], limit);
            while !too_large && solo_refusals < SOLO_REFUSALS {
                let producer = self.producer().1;
                let outcome = self
                    .attempt(
                        &producer,
                        &mut records[one.clone()],
                        &originals[one.clone()],
                    )
                    .await
                    .pop();
                match outcome {
                    Some(RecordOutcome::Failed(error)) if is_too_large(&error) => {
                        solo_refusals += 1;
                        too_large = solo_refusals >= SOLO_REFUSALS;
                        outcomes[index] = RecordOutcome::Failed(error);
                    }
                    Some(outcome) => {
                        outcomes[index] = outcome;
                        break;
                    }
                    None => break,
                }
            }
            if !too_large {
                continue;
            }
            records[index] = self.refused_by_broker(&records[index], originals[index], limit);
            let producer = self.producer().1;
            if let Some(outcome) = self
                .attempt(&producer, &mut records[one.clone()], &originals[one])
                .await
                .pop()
            {
                if matches!(&outcome, RecordOutcome::Failed(error) if is_too_large(error)) {
                    tracing::error!(
                        topic = %self.topic,
                        key = %records[index].key,
                        "the broker refused even the small tg-error envelope for its size: the \
                         topic's max.message.bytes is far too low; retrying"
                    );
                }
                outcomes[index] = outcome;
            }
        }
    }

    /// Publishes until every record is acknowledged, retrying only the failed ones with capped
    /// backoff. `on_retry` runs before each wait (the poller refreshes its age gauge there).
    /// Returns early, without success, only when `shutdown` is cancelled between attempts.
    pub(crate) async fn publish_until_acked(
        &self,
        records: &mut [OutgoingRecord],
        originals: &[&[u8]],
        shutdown: &CancellationToken,
        mut on_retry: impl FnMut(),
    ) -> Result<(), Interrupted> {
        let mut backoff = Backoff::new(self.backoff);
        let mut pending: Vec<usize> = (0..records.len()).collect();
        loop {
            let mut batch: Vec<OutgoingRecord> =
                pending.iter().map(|&i| records[i].clone()).collect();
            let batch_originals: Vec<&[u8]> = pending.iter().map(|&i| originals[i]).collect();
            let outcomes = self.publish(&mut batch, &batch_originals).await;
            let mut still = Vec::new();
            let mut first_error = None;
            for ((index, record), outcome) in pending.iter().zip(batch).zip(outcomes) {
                // Envelope replacements made during the attempt are kept for the retry.
                records[*index] = record;
                if let RecordOutcome::Failed(error) = outcome {
                    first_error.get_or_insert(error);
                    still.push(*index);
                }
            }
            if still.is_empty() {
                return Ok(());
            }
            pending = still;
            on_retry();
            if shutdown.is_cancelled() {
                return Err(Interrupted {
                    unacked: pending.len(),
                });
            }
            let delay = backoff.next_delay();
            tracing::warn!(
                topic = %self.topic,
                unacked = pending.len(),
                attempt = backoff.attempts(),
                retry_in = ?delay,
                error = %first_error.map(|e| e.to_string()).unwrap_or_default(),
                "Kafka did not acknowledge every record; retrying (the confirm waits)"
            );
            tokio::select! {
                () = shutdown.cancelled() => {
                    return Err(Interrupted { unacked: pending.len() });
                }
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Waits until every enqueued record got its delivery report (bounded by `timeout`).
    pub async fn flush(&self, timeout: Duration) {
        let producer = self.producer().1;
        let result = tokio::task::spawn_blocking(move || producer.flush(timeout)).await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "Kafka flush did not complete"),
            Err(e) => tracing::warn!(error = %e, "the Kafka flush task failed"),
        }
    }

    async fn enqueue(
        &self,
        producer: &FutureProducer,
        record: &mut OutgoingRecord,
        original: &[u8],
    ) -> Result<DeliveryFuture, KafkaError> {
        loop {
            let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
            for (name, value) in &record.headers {
                headers = headers.insert(Header {
                    key: name,
                    value: Some(value.as_bytes()),
                });
            }
            let attempt = producer.send_result(
                FutureRecord::to(&self.topic)
                    .key(record.key.as_bytes())
                    .payload(record.value.as_slice())
                    .headers(headers),
            );
            // Drop the refused record at once: it borrows `record`, which may be replaced below.
            match attempt.map_err(|(error, _refused)| error) {
                Ok(future) => return Ok(future),
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => {
                    tokio::time::sleep(QUEUE_FULL_PAUSE).await;
                }
                Err(error) if is_too_large(&error) => {
                    if record.envelope == Some(EnvelopeReason::TooLarge) {
                        return Err(error);
                    }
                    *record = self.too_large(record, original);
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// The envelope of a record librdkafka refused for its size before sending it.
    fn too_large(&self, record: &OutgoingRecord, original: &[u8]) -> OutgoingRecord {
        tracing::warn!(
            key = %record.key,
            update_id = ?record.update_id,
            size = original.len(),
            "update refused as too large by the Kafka client; publishing a tg-error envelope instead"
        );
        let detail = format!(
            "{} bytes refused as too large by the Kafka client (message.max.bytes {})",
            original.len(),
            self.producer_limit
        );
        identified_envelope(record, original, EnvelopeReason::TooLarge, &detail)
    }

    /// The envelope of a record the broker refused for its size.
    fn refused_by_broker(
        &self,
        record: &OutgoingRecord,
        original: &[u8],
        limit: usize,
    ) -> OutgoingRecord {
        tracing::warn!(
            key = %record.key,
            update_id = ?record.update_id,
            size = original.len(),
            limit,
            "update refused as too large by the broker; publishing a tg-error envelope that \
             identifies it (size, SHA-256, update id) instead"
        );
        let detail = format!(
            "{} bytes refused as too large by the broker (record limit {limit})",
            original.len()
        );
        identified_envelope(record, original, EnvelopeReason::TooLarge, &detail)
    }

    /// The largest record sent: the producer's `message.max.bytes`, or the topic's
    /// `max.message.bytes` when the broker reported a lower one.
    pub(crate) fn record_limit(&self) -> usize {
        self.record_limit.load(Ordering::Relaxed)
    }

    /// Reads the topic's `max.message.bytes` (DescribeConfigs) and lowers the record limit to it
    /// when it is below the producer's; librdkafka's batches are then kept under it too
    /// (`batch.size`), so innocent records are not refused with a large one. Where the broker
    /// cannot say (no DescribeConfigs, no permission), the producer's limit stays; that is logged
    /// once, at info.
    async fn refresh_topic_limit(&self) {
        match self.describe_topic_limit().await {
            Ok(Some(topic_limit)) => {
                let limit = topic_limit.min(self.producer_limit);
                let before = self.record_limit.swap(limit, Ordering::Relaxed);
                if limit < before {
                    tracing::warn!(
                        topic = %self.topic,
                        topic_limit,
                        producer_limit = self.producer_limit,
                        "the topic's max.message.bytes is below the producer's message.max.bytes: \
                         larger updates become tg-error envelopes"
                    );
                    self.limit_batches(limit);
                }
            }
            outcome => {
                if !self.topic_limit_unknown.swap(true, Ordering::Relaxed) {
                    let reason = match outcome {
                        Err(reason) => reason,
                        Ok(_) => "max.message.bytes not reported".to_owned(),
                    };
                    tracing::info!(
                        topic = %self.topic,
                        %reason,
                        limit = self.producer_limit,
                        "the broker does not report the topic's max.message.bytes; the producer's \
                         message.max.bytes is the record limit"
                    );
                }
            }
        }
    }

    async fn describe_topic_limit(&self) -> Result<Option<usize>, String> {
        let config = self.admin_config.clone();
        let admin = tokio::task::spawn_blocking(move || {
            config.create::<AdminClient<DefaultClientContext>>()
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        let mut options = AdminOptions::new().request_timeout(Some(DESCRIBE_TIMEOUT));
        // Any broker answers for a topic. Without a broker id librdkafka waits for the
        // controller, which a broker without DescribeConfigs may never name (the mock cluster):
        // the request would time out instead of failing at once as unsupported.
        let broker = self.describe_broker.load(Ordering::Relaxed);
        if broker != ANY_BROKER {
            options = options.broker_id(broker);
        }
        let topic = ResourceSpecifier::Topic(&self.topic);
        let answer = tokio::time::timeout(
            DESCRIBE_TIMEOUT + Duration::from_secs(1),
            admin.describe_configs([&topic], &options),
        )
        .await;
        // Dropping a client joins its threads: not on the runtime.
        tokio::task::spawn_blocking(move || drop(admin));
        let resources = answer
            .map_err(|_| "DescribeConfigs timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        for resource in resources {
            let resource = resource.map_err(|code| code.to_string())?;
            if let Some(min_insync) = resource
                .get("min.insync.replicas")
                .and_then(|entry| entry.value.as_deref())
                .and_then(|value| value.trim().parse::<u32>().ok())
            {
                self.min_insync.store(min_insync, Ordering::Relaxed);
            }
            if let Some(value) = resource
                .get("max.message.bytes")
                .and_then(|entry| entry.value.as_deref())
            {
                return value
                    .trim()
                    .parse()
                    .map(Some)
                    .map_err(|_| format!("max.message.bytes {value:?} is not a number"));
            }
        }
        Ok(None)
    }

    /// Keeps librdkafka's produce batches under `limit` from now on: a new producer with
    /// `batch.size` at most `limit` replaces the current one.
    fn limit_batches(&self, limit: usize) {
        let mut config = self.config.lock().unwrap_or_else(|p| p.into_inner());
        let batch = config
            .get("batch.size")
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(DEFAULT_BATCH_SIZE);
        if batch <= limit {
            return;
        }
        config.set("batch.size", limit.to_string());
        match create(&config) {
            Ok(fresh) => {
                let mut guard = self.current.lock().unwrap_or_else(|p| p.into_inner());
                let generation = guard.0 + 1;
                let old = std::mem::replace(&mut *guard, (generation, Arc::new(fresh)));
                retire(old.1, self.retire_after);
            }
            Err(e) => {
                tracing::error!(error = %e, "recreating the Kafka producer with a smaller batch.size failed");
            }
        }
    }

    fn producer(&self) -> (u64, Arc<FutureProducer>) {
        let guard = self.current.lock().unwrap_or_else(|p| p.into_inner());
        (guard.0, Arc::clone(&guard.1))
    }

    /// Rebuilds the producer when `used` (generation `generation`) has a fatal error, or when
    /// deliveries failed for a `cause` that a fresh idempotence session cures: timeouts and the
    /// broker's unknown server error. Callers that saw an older generation do nothing: someone
    /// already rebuilt it.
    ///
    /// Why timeouts too: after timed-out deliveries librdkafka bumps the idempotent producer's
    /// epoch locally (KIP-360). Kafka accepts that, but brokers without KIP-360 support (Tansu 0.6
    /// panics on it and stops serving) do not; a fresh producer asks the broker for a new
    /// producer id instead. Why unknown server errors: a broker that failed on this producer's
    /// state (Tansu 0.6 after a restart answers every retry of the same session that way) may
    /// accept a new session. Nothing is lost either way: the failed records are sent again, and
    /// the retry is a new idempotence session in every case.
    fn replace_after_failure(
        &self,
        generation: u64,
        used: &FutureProducer,
        cause: Option<&'static str>,
    ) {
        let fatal = used.client().fatal_error();
        if fatal.is_none() && cause.is_none() {
            return;
        }
        let mut guard = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if guard.0 != generation {
            return;
        }
        let config = self
            .config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match create(&config) {
            Ok(fresh) => {
                match &fatal {
                    Some((code, reason)) => {
                        tracing::error!(?code, %reason, "fatal Kafka producer error; producer recreated");
                        ::metrics::counter!(metrics::PRODUCER_RECREATED, "cause" => "fatal")
                            .increment(1);
                    }
                    None => {
                        let cause = cause.unwrap_or("timeout");
                        tracing::info!(
                            cause,
                            "deliveries failed; producer recreated for the retry"
                        );
                        ::metrics::counter!(metrics::PRODUCER_RECREATED, "cause" => cause)
                            .increment(1);
                    }
                }
                let old = std::mem::replace(&mut *guard, (generation + 1, Arc::new(fresh)));
                retire(old.1, self.retire_after);
            }
            Err(e) => {
                tracing::error!(error = %e, "recreating the Kafka producer failed; will try again");
            }
        }
    }

    /// The current producer generation (tests observe recreation through it).
    pub fn generation(&self) -> u64 {
        self.producer().0
    }
}

/// Drops a replaced producer on a blocking thread once the attempts still using it are done:
/// dropping a librdkafka producer purges, flushes (up to 500 ms) and joins its thread, which must
/// not stall the runtime.
fn retire(old: Arc<FutureProducer>, wait_at_most: Duration) {
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        while Arc::strong_count(&old) > 1 && started.elapsed() < wait_at_most {
            std::thread::sleep(Duration::from_millis(100));
        }
        drop(old);
    });
}

fn create(config: &ClientConfig) -> anyhow::Result<FutureProducer> {
    config
        .create::<FutureProducer>()
        .context("creating the Kafka producer (check the Kafka client settings)")
}

/// Neither test broker enforces a topic's `max.message.bytes`. With the `failpoints` feature,
/// `producer::topic_limit=return(N)` makes every publish attempt that holds a record value of N
/// bytes or more fail as a produce batch over such a limit does: every record of the attempt gets
/// the broker's MSG_SIZE_TOO_LARGE delivery error and none is written.
fn injected_topic_limit() -> Option<usize> {
    fail::fail_point!("producer::topic_limit", |arg| arg
        .and_then(|limit| limit.trim().parse().ok()));
    None
}

/// The delivery error of a record the broker refused for its size.
fn broker_size_refusal() -> KafkaError {
    KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)
}

fn is_too_large(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::MessageBatchTooLarge)
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::readiness::NoReadiness;

    fn config(client: ClientConfig) -> ProducerConfig {
        ProducerConfig::new(
            "https://api.telegram.org".parse().unwrap(),
            Vec::new(),
            "tg.updates".to_owned(),
            client,
        )
    }

    fn message_max_bytes(publisher: &Publisher) -> Option<String> {
        let config = publisher.config.lock().unwrap();
        config.get("message.max.bytes").map(str::to_owned)
    }

    #[test]
    fn the_callers_message_max_bytes_is_kept_and_is_the_record_limit() {
        let mut client = ClientConfig::new();
        client.set("message.max.bytes", "200000");
        let publisher = Publisher::new(&config(client), Arc::new(NoReadiness)).unwrap();
        assert_eq!(message_max_bytes(&publisher).as_deref(), Some("200000"));
        assert_eq!(publisher.record_limit(), 200_000);

        let publisher =
            Publisher::new(&config(ClientConfig::new()), Arc::new(NoReadiness)).unwrap();
        assert_eq!(message_max_bytes(&publisher).as_deref(), Some("1000000"));
        assert_eq!(publisher.record_limit(), 1_000_000);
    }

    #[test]
    fn a_message_max_bytes_that_is_not_a_usable_size_is_refused_naming_it() {
        for value in ["lots", "100"] {
            let mut client = ClientConfig::new();
            client.set("message.max.bytes", value);
            let error = Publisher::new(&config(client), Arc::new(NoReadiness)).unwrap_err();
            assert!(
                error.to_string().starts_with("message.max.bytes"),
                "{error}"
            );
        }
    }

    #[test]
    fn every_client_the_publisher_builds_forbids_topic_auto_creation() {
        // librdkafka's producer default is to let the broker auto-create a missing topic.
        let publisher =
            Publisher::new(&config(ClientConfig::new()), Arc::new(NoReadiness)).unwrap();
        let producer = publisher.config.lock().unwrap();
        assert_eq!(producer.get("allow.auto.create.topics"), Some("false"));
        assert_eq!(
            publisher.admin_config.get("allow.auto.create.topics"),
            Some("false")
        );
    }
}
