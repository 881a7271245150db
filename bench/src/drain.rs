//! The consumer library's drain rate: one `consumer::run_with_stats` in this process writing a
//! preloaded topic of realistic group messages on 12 partitions into a fresh database, beside the
//! broker's own drain rate so a broker ceiling is never mistaken for the sink's.
//!
//! Unlike `sink`, which runs the `tgingest consumer` binary, this takes the library alone, with
//! its default settings but for `batch_max_records`. The sink's time is reported twice: from the
//! start of `run` (including the group join) and from the first consumed record.

use processor::wire::header;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use consumer::{ConsumerConfig, ConsumerStats, NoReadiness};
use rdkafka::config::ClientConfig;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio_util::sync::CancellationToken;

use crate::kafka::{self, PlannedRecord};
use crate::pg;
use crate::procstat;
use crate::report::{Table, thousands};
use crate::workload::BOT_ID;

const PARTITIONS: i32 = 12;
const TOPIC: &str = "bench.drain";

/// `records` messages over 500 chats and 3000 users, each with the producer's key and the
/// headers the consumer reads.
fn plan(records: usize) -> Vec<PlannedRecord> {
    (0..records as i64)
        .map(|i| {
            let chat = -1_001_000_000_000 - (i % 500);
            let user = 100_000 + (i % 3000);
            let value = serde_json::json!({
                "update_id": i,
                "message": {
                    "message_id": i, "date": 1_760_000_000 + i,
                    "from": {"id": user, "is_bot": false, "first_name": "Name", "last_name": "Surname", "username": format!("user{user}"), "language_code": "en"},
                    "chat": {"id": chat, "title": "A realistic supergroup title", "type": "supergroup", "username": "somegroup"},
                    "text": "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris nisi ut aliquip ex ea commodo consequat. Duis aute irure dolor in reprehenderit in voluptate velit esse cillum dolore eu fugiat nulla pariatur.",
                    "entities": [{"type": "bold", "offset": 0, "length": 5}, {"type": "url", "offset": 12, "length": 9}]
                }
            })
            .to_string()
            .into_bytes();
            let key = format!("{BOT_ID}:{chat}");
            PlannedRecord {
                partition: kafka::partition_for(&key, PARTITIONS),
                key,
                value,
                headers: vec![
                    (header::BOT_ID, BOT_ID.to_string()),
                    (header::RECEIVED_AT, "1760000000000".to_owned()),
                ],
            }
        })
        .collect()
}

/// One drain of the whole topic by the library.
struct LibraryDrain {
    /// From the start of `run`, group join included.
    total: Duration,
    /// From the first consumed record.
    writing: Duration,
    batches: u64,
}

async fn drain_once(
    bootstrap: &str,
    group: &str,
    records: u64,
    batch: usize,
) -> anyhow::Result<LibraryDrain> {
    let db = pg::create().await?;
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", bootstrap);
    let mut config = ConsumerConfig::new(group, TOPIC, client);
    config.batch_max_records = batch;
    let options: PgConnectOptions = db.url().parse()?;
    let pool = PgPoolOptions::new()
        .max_connections(PARTITIONS as u32 + 4)
        .connect_with(options)
        .await
        .context("connecting the consumer's pool")?;
    let stats = Arc::new(ConsumerStats::default());
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(consumer::run_with_stats(
        config,
        pool,
        shutdown.clone(),
        Arc::new(NoReadiness),
        stats.clone(),
    ));
    let mut first_at = None;
    while ConsumerStats::get(&stats.records_consumed) < records {
        if first_at.is_none() && ConsumerStats::get(&stats.records_consumed) > 0 {
            first_at = Some(Instant::now());
        }
        anyhow::ensure!(
            !task.is_finished(),
            "the consumer stopped before the log end"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let total = started.elapsed();
    let writing = first_at.map_or(total, |t| t.elapsed());
    shutdown.cancel();
    task.await??;
    db.drop_database().await?;
    Ok(LibraryDrain {
        total,
        writing,
        batches: ConsumerStats::get(&stats.batches_committed),
    })
}

/// The `drain` benchmark: `records` messages, `batch` records per transaction, `repeat` times.
pub async fn run(records: usize, batch: usize, repeat: usize) -> anyhow::Result<()> {
    let planned = plan(records);
    let broker = embedded_broker::MockClusterHost::start(1)?;
    broker.create_topic(TOPIC, PARTITIONS)?;
    let bootstrap = broker.bootstrap_servers().to_owned();
    let started = Instant::now();
    let counts = kafka::preload(&bootstrap, TOPIC, PARTITIONS, &planned).await?;
    kafka::verify_intact(&bootstrap, TOPIC, &counts)?;
    println!(
        "### Consumer library drain\n\n{records} records on {PARTITIONS} partitions (produced in \
         {:.2?}), batch_max_records {batch}\n",
        started.elapsed()
    );
    let total = records as i64;
    let mut table = Table::new(&[
        "run",
        "load avg",
        "broker drain upd/s",
        "sink upd/s (incl. group join)",
        "sink upd/s (from the first record)",
        "batches",
    ]);
    for rep in 1..=repeat {
        let load = procstat::load_average();
        let broker_seconds = kafka::broker_drain_seconds(&bootstrap, TOPIC, PARTITIONS, total)?;
        let drain = drain_once(
            &bootstrap,
            &format!("bench-drain-{rep}"),
            records as u64,
            batch,
        )
        .await?;
        table.row(vec![
            rep.to_string(),
            load,
            thousands(total as f64 / broker_seconds),
            thousands(total as f64 / drain.total.as_secs_f64()),
            thousands(total as f64 / drain.writing.as_secs_f64()),
            drain.batches.to_string(),
        ]);
    }
    table.print();
    Ok(())
}
