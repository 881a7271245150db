//! A read-only view of one topic for the operator commands (DESIGN.md §9): partitions,
//! watermarks, offsets for times, single records by offset, and the topic's durability
//! (replication factor, `min.insync.replicas`), through a Kafka client that never joins the group
//! and never commits.
//!
//! Guarantees: a time is resolved to an offset by checking the broker's answer against the
//! timestamps of the records around it and, when they disagree, by a search between the
//! watermarks, because brokers disagree (the mock answers "end", Tansu 0.6 answers 0 for a time
//! past the end). `min.insync.replicas` is read with DescribeConfigs where the broker answers it
//! and is otherwise unknown (with the reason), never an error: librdkafka's mock cluster has no
//! DescribeConfigs. Calls block: run them on a blocking thread.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde::Serialize;

use crate::record::ConsumedRecord;

/// How long one broker request of the operator commands may take.
const BROKER_TIMEOUT: Duration = Duration::from_secs(15);
/// How long reading the topic's configuration may take (a broker without DescribeConfigs may
/// leave the request unanswered).
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

/// A replication factor below this cannot lose a broker without losing or stopping writes.
pub const DURABLE_REPLICATION_FACTOR: usize = 3;
/// A `min.insync.replicas` below this lets `acks=all` be satisfied by a single replica.
pub const DURABLE_MIN_INSYNC_REPLICAS: u32 = 2;

/// What the topic's durability rests on, as the brokers report it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TopicDurability {
    /// Replicas per partition (the fewest of any partition), from the metadata.
    pub replication_factor: Option<usize>,
    /// The topic's `min.insync.replicas` (DescribeConfigs); `None` when the broker cannot say.
    pub min_insync_replicas: Option<u32>,
    /// Why `min_insync_replicas` is unknown (no DescribeConfigs, not reported, not permitted).
    pub min_insync_replicas_unknown: Option<String>,
}

impl TopicDurability {
    /// One sentence for each setting below what survives the loss of a broker: a replication
    /// factor below 3, a `min.insync.replicas` below 2. Unknown values warn about nothing.
    pub fn warnings(&self, topic: &str) -> Vec<String> {
        let mut warnings = Vec::new();
        if let Some(rf) = self
            .replication_factor
            .filter(|rf| *rf < DURABLE_REPLICATION_FACTOR)
        {
            warnings.push(format!(
                "topic {topic} has replication factor {rf} (below {DURABLE_REPLICATION_FACTOR}): \
                 losing one broker can lose acknowledged updates or stop intake"
            ));
        }
        if let Some(min) = self
            .min_insync_replicas
            .filter(|min| *min < DURABLE_MIN_INSYNC_REPLICAS)
        {
            warnings.push(format!(
                "topic {topic} has min.insync.replicas {min} (below \
                 {DURABLE_MIN_INSYNC_REPLICAS}): an acknowledged update can live on a single disk"
            ));
        }
        warnings
    }
}

/// A read-only view of one topic through a consumer that never joins a group: partitions,
/// watermarks, offsets for times, and single records by offset. Its calls block: run them on a
/// blocking thread.
pub struct TopicReader {
    consumer: BaseConsumer,
    /// The caller's client settings, for the admin request of [`TopicReader::durability`].
    client: ClientConfig,
    topic: String,
}

impl std::fmt::Debug for TopicReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicReader")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl TopicReader {
    /// A reader for `topic` with the caller's client settings (bootstrap servers, security).
    pub fn new(client: &ClientConfig, topic: &str) -> anyhow::Result<Self> {
        let mut config = client.clone();
        // A group id is needed for a consumer queue; the reader only assigns, so it never joins
        // the group and never commits.
        config
            .set("group.id", "tgingest-operator-reader")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", "error");
        let consumer: BaseConsumer = config
            .create()
            .context("creating a Kafka client to read the topic")?;
        Ok(Self {
            consumer,
            client: client.clone(),
            topic: topic.to_owned(),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The topic's partitions, sorted; an error naming the topic when it does not exist.
    pub fn partitions(&self) -> anyhow::Result<Vec<i32>> {
        let metadata = self
            .consumer
            .fetch_metadata(Some(&self.topic), BROKER_TIMEOUT)
            .with_context(|| format!("cannot reach the Kafka brokers to look up {}", self.topic))?;
        let topic = metadata
            .topics()
            .iter()
            .find(|t| t.name() == self.topic)
            .filter(|t| t.error().is_none() && !t.partitions().is_empty());
        let Some(topic) = topic else {
            bail!("topic {} does not exist", self.topic);
        };
        let mut ids: Vec<i32> = topic.partitions().iter().map(|p| p.id()).collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// The topic's replication factor (from the metadata) and `min.insync.replicas`
    /// (DescribeConfigs, unknown with the reason where the broker cannot say). Fails only when the
    /// metadata cannot be read.
    pub fn durability(&self) -> anyhow::Result<TopicDurability> {
        let metadata = self
            .consumer
            .fetch_metadata(Some(&self.topic), BROKER_TIMEOUT)
            .with_context(|| format!("cannot reach the Kafka brokers to look up {}", self.topic))?;
        let replication_factor = metadata
            .topics()
            .iter()
            .find(|t| t.name() == self.topic)
            .and_then(|t| t.partitions().iter().map(|p| p.replicas().len()).min());
        let broker = metadata.brokers().first().map(|b| b.id());
        let described = match replication_factor {
            Some(_) => self.describe("min.insync.replicas", broker),
            None => Err(format!("topic {} is not listed by the brokers", self.topic)),
        };
        let (min_insync_replicas, min_insync_replicas_unknown) = match described {
            Ok(Some(value)) => match value.trim().parse::<u32>() {
                Ok(min) => (Some(min), None),
                Err(_) => (None, Some(format!("the broker reported {value:?}"))),
            },
            Ok(None) => (None, Some("not reported by the broker".to_owned())),
            Err(reason) => (None, Some(reason)),
        };
        Ok(TopicDurability {
            replication_factor,
            min_insync_replicas,
            min_insync_replicas_unknown,
        })
    }

    /// The topic's configuration entry `name` (DescribeConfigs), asked of `broker`: `None` when
    /// the broker does not report it; `Err` with the reason when it cannot answer.
    ///
    /// The producer reads the topic's configuration the same way (`publisher.rs`, for
    /// `max.message.bytes` and `min.insync.replicas`); the two crates may not depend on each
    /// other and no shared crate may hold Kafka I/O, so this small request exists twice.
    fn describe(&self, name: &str, broker: Option<i32>) -> Result<Option<String>, String> {
        let admin: AdminClient<DefaultClientContext> = self
            .client
            .create()
            .map_err(|e| format!("creating a Kafka admin client: {e}"))?;
        let mut options = AdminOptions::new().request_timeout(Some(DESCRIBE_TIMEOUT));
        // Any broker answers for a topic. Without a broker id librdkafka waits for the
        // controller, which a broker without DescribeConfigs may never name (the mock cluster):
        // the request would time out instead of failing at once as unsupported.
        if let Some(broker) = broker {
            options = options.broker_id(broker);
        }
        // librdkafka completes the request within its timeout, answered or not.
        let resources = futures::executor::block_on(
            admin.describe_configs([&ResourceSpecifier::Topic(&self.topic)], &options),
        )
        .map_err(|e| format!("DescribeConfigs failed: {e}"))?;
        for resource in resources {
            let resource = resource.map_err(|code| format!("DescribeConfigs failed: {code}"))?;
            if let Some(entry) = resource.get(name) {
                return Ok(entry.value.clone());
            }
        }
        Ok(None)
    }

    /// (log start, log end) of a partition.
    pub fn watermarks(&self, partition: i32) -> anyhow::Result<(i64, i64)> {
        self.consumer
            .fetch_watermarks(&self.topic, partition, BROKER_TIMEOUT)
            .with_context(|| format!("reading the watermarks of {}/{partition}", self.topic))
    }

    /// The broker's answer to offsets-for-times; `None` where it answered "end" or nothing.
    pub fn offsets_for_time(
        &self,
        partitions: &[i32],
        time_ms: i64,
    ) -> anyhow::Result<BTreeMap<i32, Option<i64>>> {
        let mut request = TopicPartitionList::new();
        for &partition in partitions {
            request.add_partition_offset(&self.topic, partition, Offset::Offset(time_ms))?;
        }
        let answer = self
            .consumer
            .offsets_for_times(request, BROKER_TIMEOUT)
            .with_context(|| format!("asking the broker for offsets of {}", self.topic))?;
        Ok(answer
            .elements()
            .iter()
            .map(|e| {
                let offset = match e.offset() {
                    Offset::Offset(o) if e.error().is_ok() => Some(o),
                    _ => None,
                };
                (e.partition(), offset)
            })
            .collect())
    }

    /// The first record at or after `offset` (which must be below the log end).
    pub fn read(&self, partition: i32, offset: i64) -> anyhow::Result<ConsumedRecord> {
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(&self.topic, partition, Offset::Offset(offset))?;
        // A fresh assignment discards whatever an earlier read prefetched.
        self.consumer.unassign().context("resetting the reader")?;
        self.consumer
            .assign(&assignment)
            .context("assigning the reader")?;
        let deadline = Instant::now() + BROKER_TIMEOUT;
        while Instant::now() < deadline {
            match self.consumer.poll(Duration::from_millis(200)) {
                Some(Ok(message))
                    if message.partition() == partition && message.offset() >= offset =>
                {
                    return Ok(ConsumedRecord::from_message(&message));
                }
                Some(Ok(_)) | None => {}
                Some(Err(e)) => {
                    return Err(e).with_context(|| {
                        format!("reading {}/{partition} at offset {offset}", self.topic)
                    });
                }
            }
        }
        bail!(
            "no record at or after offset {offset} of {}/{partition} within {BROKER_TIMEOUT:?}",
            self.topic
        )
    }

    fn timestamp_at(&self, partition: i32, offset: i64) -> anyhow::Result<(i64, i64)> {
        let record = self.read(partition, offset)?;
        let ts = record.timestamp_ms.with_context(|| {
            format!(
                "record {}/{partition}@{} has no timestamp",
                self.topic, record.offset
            )
        })?;
        Ok((record.offset, ts))
    }

    /// The first offset in `[low, high]` whose record's timestamp is at or after `time_ms`
    /// (`high` when none is), starting from the broker's answer `hint` and checking it against the
    /// records at and before it. Timestamps are assumed non-decreasing within the partition, as
    /// the broker's own time index assumes.
    pub fn first_offset_at_or_after(
        &self,
        partition: i32,
        time_ms: i64,
        (low, high): (i64, i64),
        hint: Option<i64>,
    ) -> anyhow::Result<i64> {
        if low >= high {
            return Ok(high);
        }
        if let Some(candidate) = hint.filter(|c| (low..=high).contains(c)) {
            let at_or_after =
                candidate == high || self.timestamp_at(partition, candidate)?.1 >= time_ms;
            let before = candidate == low || {
                let (offset, ts) = self.timestamp_at(partition, candidate - 1)?;
                offset < candidate && ts < time_ms
            };
            if at_or_after && before {
                return Ok(candidate);
            }
            tracing::info!(
                partition,
                candidate,
                "the broker's offset for the time does not match the record timestamps; searching"
            );
        }
        let (mut lo, mut hi) = (low, high);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let (offset, ts) = self.timestamp_at(partition, mid)?;
            if ts >= time_ms {
                hi = mid;
            } else {
                lo = offset + 1;
            }
        }
        Ok(lo)
    }
}
