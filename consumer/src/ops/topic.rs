//! A read-only view of one topic for the operator commands (DESIGN.md §9): partitions,
//! watermarks, offsets for times, and single records by offset, through a Kafka client that never
//! joins the group and never commits.
//!
//! Guarantees: a time is resolved to an offset by checking the broker's answer against the
//! timestamps of the records around it and, when they disagree, by a search between the
//! watermarks, because brokers disagree (the mock answers "end", Tansu 0.6 answers 0 for a time
//! past the end). Calls block: run them on a blocking thread.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::record::ConsumedRecord;

/// How long one broker request of the operator commands may take.
const BROKER_TIMEOUT: Duration = Duration::from_secs(15);

/// A read-only view of one topic through a consumer that never joins a group: partitions,
/// watermarks, offsets for times, and single records by offset. Its calls block: run them on a
/// blocking thread.
pub struct TopicReader {
    consumer: BaseConsumer,
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
