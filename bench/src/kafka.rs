//! The broker side of the benchmarks: records built exactly as the producer builds them, a
//! preload that stays inside the mock cluster's per-partition cap, and the broker's own drain
//! rate (a bare `BaseConsumer`, no database), so a broker ceiling is never read as the sink's.
//!
//! librdkafka's mock cluster silently deletes a partition's oldest records past about 5 MB
//! (DESIGN.md §8). [`plan_records`] therefore cuts the workload before any partition exceeds a
//! byte budget, and [`verify_intact`] checks afterwards that every partition still starts at
//! offset 0 and holds exactly what was sent; a benchmark never runs on a silently truncated topic.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use crate::workload::BOT_ID;

/// One record ready to publish.
#[derive(Debug, Clone)]
pub struct PlannedRecord {
    pub partition: i32,
    pub key: String,
    pub value: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

impl PlannedRecord {
    /// Key + value + headers: what counts against the broker's per-partition cap (before
    /// compression).
    pub fn size(&self) -> usize {
        self.key.len()
            + self.value.len()
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}

/// The partition a key goes to: a stable hash, so every chat stays in one partition.
pub fn partition_for(key: &str, partitions: i32) -> i32 {
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    (hasher.finish() % partitions as u64) as i32
}

/// How [`plan_records`] treats an update that would take its partition past the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Stop there: the records are a prefix of the stream (sink benchmarks).
    Stop,
    /// Skip it and go on filling the other partitions (the largest backlog the broker holds).
    Skip,
}

/// Records for `updates` (key and headers from `producer::update::record_for`), within
/// `budget_bytes` per partition.
pub fn plan_records(
    updates: &[Vec<u8>],
    partitions: i32,
    budget_bytes: usize,
    when_full: WhenFull,
) -> Vec<PlannedRecord> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64;
    let mut used = vec![0usize; partitions as usize];
    let mut planned = Vec::with_capacity(updates.len());
    for raw in updates {
        let record = producer::update::record_for(BOT_ID, raw, now_ms, 1_000_000);
        let planned_record = PlannedRecord {
            partition: partition_for(&record.key, partitions),
            key: record.key,
            value: record.value,
            headers: record.headers,
        };
        let slot = &mut used[planned_record.partition as usize];
        if *slot + planned_record.size() > budget_bytes {
            match when_full {
                WhenFull::Stop => break,
                WhenFull::Skip => continue,
            }
        }
        *slot += planned_record.size();
        planned.push(planned_record);
    }
    planned
}

/// A producer configured like tgingest's (idempotent, `acks=all`, zstd unless
/// `BENCH_COMPRESSION` names another codec).
pub fn producer(bootstrap: &str) -> anyhow::Result<FutureProducer> {
    let compression = std::env::var("BENCH_COMPRESSION").unwrap_or_else(|_| "zstd".to_owned());
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("compression.type", &compression)
        .set("linger.ms", "20")
        .set("allow.auto.create.topics", "false")
        .create()
        .context("creating the preload producer")
}

/// Publishes `records` and waits for every acknowledgement; returns the count per partition.
pub async fn preload(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    records: &[PlannedRecord],
) -> anyhow::Result<Vec<i64>> {
    let producer = producer(bootstrap)?;
    let mut counts = vec![0i64; partitions as usize];
    for chunk in records.chunks(20_000) {
        let mut acks = Vec::with_capacity(chunk.len());
        for record in chunk {
            let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
            for (key, value) in &record.headers {
                headers = headers.insert(Header {
                    key,
                    value: Some(value.as_bytes()),
                });
            }
            let future = producer
                .send_result(
                    FutureRecord::to(topic)
                        .partition(record.partition)
                        .key(&record.key)
                        .payload(&record.value)
                        .headers(headers),
                )
                .map_err(|(e, _)| e)
                .context("queueing a preload record")?;
            acks.push(future);
            counts[record.partition as usize] += 1;
        }
        for ack in futures::future::join_all(acks).await {
            ack.context("preload delivery future dropped")?
                .map_err(|(e, _)| e)
                .context("preload record not acknowledged")?;
        }
    }
    Ok(counts)
}

/// Fails unless every partition starts at offset 0 and ends at exactly the expected count.
pub fn verify_intact(bootstrap: &str, topic: &str, counts: &[i64]) -> anyhow::Result<()> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "tgingest-bench-verify")
        .create()?;
    for (partition, expected) in counts.iter().enumerate() {
        let (low, high) =
            consumer.fetch_watermarks(topic, partition as i32, Duration::from_secs(10))?;
        if low != 0 || high != *expected {
            bail!(
                "partition {partition} holds offsets {low}..{high}, expected 0..{expected}: the \
                 mock cluster dropped records (per-partition cap); lower the budget"
            );
        }
    }
    Ok(())
}

/// Seconds a bare `BaseConsumer` takes to read all `total` records of `topic` from the start.
pub fn broker_drain_seconds(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    total: i64,
) -> anyhow::Result<f64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "tgingest-bench-broker-drain")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let started = Instant::now();
    let mut seen = 0i64;
    while seen < total {
        if started.elapsed() > Duration::from_secs(300) {
            bail!("broker drain read only {seen} of {total} records in 300 s");
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(_)) => seen += 1,
            Some(Err(e)) => bail!("broker drain: {e}"),
            None => {}
        }
    }
    Ok(started.elapsed().as_secs_f64())
}
