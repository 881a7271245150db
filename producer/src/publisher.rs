//! The Kafka side: an idempotent producer that publishes records and reports, per record, whether
//! the broker acknowledged it.
//!
//! Guarantees:
//! - `enable.idempotence=true` and `acks=all`: an acknowledged record is in every in-sync replica,
//!   and librdkafka's own retries never duplicate or reorder within a partition.
//! - [`Publisher::publish`] enqueues every record before awaiting any report, so a batch costs one
//!   round trip, not one per record; records of one key keep their order.
//! - A record librdkafka or the broker refuses as too large is replaced by its `tg-error` envelope
//!   and sent again, so size never blocks the confirm.
//! - [`Publisher::publish_until_acked`] retries only the records that failed, with capped
//!   backoff, until all are acknowledged or shutdown is requested; it never reports success for a
//!   record without its delivery report.
//! - After a fatal librdkafka error (e.g. idempotence fencing), and after deliveries timed out or
//!   failed with the broker's unknown server error, the producer is rebuilt from the same
//!   configuration; every later attempt uses the new one.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::future::join_all;
use processor::wire::EnvelopeReason;
use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::{BackoffPolicy, ProducerConfig};
use crate::metrics;
use crate::readiness::{KAFKA_CHECK, Readiness};
use crate::update::{OutgoingRecord, envelope_for};

/// How long to wait for room in librdkafka's queue before trying to enqueue again.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(20);
/// How long one metadata request at startup may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

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
    config: ClientConfig,
    topic: String,
    message_max_bytes: usize,
    backoff: BackoffPolicy,
    current: Mutex<(u64, Arc<FutureProducer>)>,
    /// How long a replaced producer may stay in use by attempts in flight.
    retire_after: Duration,
    readiness: Arc<dyn Readiness>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client configuration may contain passwords.
        f.debug_struct("Publisher")
            .field("topic", &self.topic)
            .field("message_max_bytes", &self.message_max_bytes)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// Builds the producer from the caller's client configuration plus the producer's own
    /// settings. Does not touch the network (see [`Publisher::check_topic`]).
    pub fn new(config: &ProducerConfig, readiness: Arc<dyn Readiness>) -> anyhow::Result<Self> {
        let mut client = config.client.clone();
        client
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", &config.compression)
            .set("message.max.bytes", config.message_max_bytes.to_string())
            .set(
                "message.timeout.ms",
                config.delivery_timeout.as_millis().to_string(),
            )
            .set("linger.ms", "5");
        let producer = create(&client)?;
        Ok(Self {
            config: client,
            topic: config.topic.clone(),
            message_max_bytes: config.message_max_bytes,
            backoff: config.backoff,
            current: Mutex::new((0, Arc::new(producer))),
            retire_after: config.delivery_timeout * 2,
            readiness,
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
                        metadata
                            .topics()
                            .iter()
                            .find(|t| t.name() == topic)
                            .map(|t| (t.error(), t.partitions().len()))
                    })
            })
            .await
            .context("the metadata task panicked")?;
            match answer {
                Ok(Some((None, partitions))) if partitions > 0 => {
                    self.readiness.ready(KAFKA_CHECK, "");
                    return Ok(());
                }
                Ok(Some((Some(error), _)))
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
                    self.readiness.not_ready(KAFKA_CHECK, &reason);
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

    /// Publishes the records once: every record is enqueued, then every delivery report awaited.
    /// Records refused for their size are replaced in place by their envelope and enqueued again.
    pub(crate) async fn publish(
        &self,
        records: &mut [OutgoingRecord],
        originals: &[&[u8]],
    ) -> Vec<RecordOutcome> {
        let (generation, producer) = self.producer();
        let started = Instant::now();
        let mut pending: Vec<Result<DeliveryFuture, KafkaError>> =
            Vec::with_capacity(records.len());
        for (index, record) in records.iter_mut().enumerate() {
            pending.push(self.enqueue(&producer, record, originals[index]).await);
        }
        let mut outcomes = Vec::with_capacity(pending.len());
        for (index, report) in join_all(pending.into_iter().map(|p| async move {
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
        .into_iter()
        .enumerate()
        {
            if let RecordOutcome::Failed(error) = &report
                && is_too_large(error)
                && records[index].envelope != Some(EnvelopeReason::TooLarge)
            {
                records[index] = self.too_large(&records[index], originals[index]);
            }
            outcomes.push(report);
        }
        ::metrics::histogram!(metrics::PUBLISH_SECONDS).record(started.elapsed().as_secs_f64());
        let failed = outcomes
            .iter()
            .filter(|o| matches!(o, RecordOutcome::Failed(_)))
            .count();
        if failed == 0 {
            self.readiness.ready(KAFKA_CHECK, "");
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
            self.readiness.not_ready(KAFKA_CHECK, &reason);
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

    fn too_large(&self, record: &OutgoingRecord, original: &[u8]) -> OutgoingRecord {
        tracing::warn!(
            key = %record.key,
            update_id = ?record.update_id,
            size = original.len(),
            "update refused as too large by Kafka; publishing a tg-error envelope instead"
        );
        let detail = format!(
            "{} bytes refused as too large (message.max.bytes {})",
            original.len(),
            self.message_max_bytes
        );
        envelope_for(
            record,
            original,
            EnvelopeReason::TooLarge,
            &detail,
            self.message_max_bytes,
        )
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
        match create(&self.config) {
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

fn is_too_large(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::MessageBatchTooLarge)
    )
}
