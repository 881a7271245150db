//! Updates written by the consumer's own batch writer, without a broker: the reference run that
//! order-sensitive tests compare with, and the quickest way to put a projection in a database.
//!
//! [`write_in_order`] prepares each delivery as the consumer prepares a Kafka record (bot id and
//! receive-time headers), and writes them at consecutive offsets of one partition of a topic of
//! its own, in the order given, in batches, through `consumer::writer::BatchWriter` with an owned
//! offset row: exactly the transaction a running consumer commits, one after the other.
//! [`write_records`] writes given Kafka records the same way, for tests that build them.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use consumer::ConsumerStats;
use consumer::offsets::{OffsetStore, Ownership};
use consumer::projection::ProjectionSchema;
use consumer::record::ConsumedRecord;
use consumer::writer::{BatchWriter, PreparedRecord};
use processor::wire::header;
use sqlx::PgPool;

/// The topic and group the direct writes are recorded under.
pub const TOPIC: &str = "testkit.direct";
pub const GROUP: &str = "testkit-direct";

/// One copy of an update as the producer would have published it.
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    pub bot_id: i64,
    pub bytes: &'a [u8],
    /// When the producer received it (tg-received-at, unix ms).
    pub received_at_ms: i64,
}

/// The consumer's batch writer for `group` and `topic` with the current processor, and the
/// ownership of partition 0 (its offsets row created at 0 if missing).
async fn writer_owning_partition_0(
    pool: &PgPool,
    group: &str,
    topic: &str,
) -> anyhow::Result<(BatchWriter, Ownership)> {
    let schema = Arc::new(ProjectionSchema::load(pool).await?);
    let writer = BatchWriter::new(
        pool.clone(),
        group,
        topic,
        Duration::from_secs(30),
        processor::PROCESSOR_VERSION,
        schema,
        Arc::new(ConsumerStats::default()),
    );
    let owner = OffsetStore::new(pool.clone(), group, topic)
        .take_ownership_from(0, 0)
        .await
        .context("owning partition 0")?;
    Ok((writer, owner))
}

/// Writes `records` (partition 0 of `topic`, consecutive offsets from the stored one) in one
/// write of the consumer's batch writer for `group`, as a running consumer would.
pub async fn write_records(
    pool: &PgPool,
    group: &str,
    topic: &str,
    records: &[ConsumedRecord],
) -> anyhow::Result<()> {
    let (writer, mut owner) = writer_owning_partition_0(pool, group, topic).await?;
    let prepared: Vec<PreparedRecord> = records
        .iter()
        .cloned()
        .map(PreparedRecord::prepare)
        .collect();
    writer
        .write(&mut owner, &prepared)
        .await
        .context("writing the records")?;
    Ok(())
}

/// Writes `deliveries` in order, `batch` records per transaction, with the current processor.
pub async fn write_in_order(
    pool: &PgPool,
    deliveries: &[Delivery<'_>],
    batch: usize,
) -> anyhow::Result<()> {
    let (writer, mut owner) = writer_owning_partition_0(pool, GROUP, TOPIC).await?;
    for chunk in deliveries.chunks(batch.max(1)) {
        let first = owner.next_offset;
        let records: Vec<PreparedRecord> = chunk
            .iter()
            .enumerate()
            .map(|(i, d)| {
                PreparedRecord::prepare(ConsumedRecord {
                    topic: TOPIC.into(),
                    partition: 0,
                    offset: first + i as i64,
                    key: Some(format!("{}:direct", d.bot_id).into_bytes()),
                    payload: Some(d.bytes.to_vec()),
                    headers: vec![
                        (
                            header::BOT_ID.into(),
                            Some(d.bot_id.to_string().into_bytes()),
                        ),
                        (
                            header::RECEIVED_AT.into(),
                            Some(d.received_at_ms.to_string().into_bytes()),
                        ),
                    ],
                    timestamp_ms: Some(d.received_at_ms),
                })
            })
            .collect();
        writer
            .write(&mut owner, &records)
            .await
            .map_err(|e| anyhow::anyhow!("writing a direct batch at offset {first}: {e}"))?;
    }
    Ok(())
}
