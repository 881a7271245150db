//! Drain benchmark (not a test): preloads a mock cluster with realistic group messages on 12
//! partitions, then measures how fast one consumer writes them into a fresh database, beside the
//! broker's own drain rate so a broker ceiling is never mistaken for the sink's.
//!
//! `cargo run --release -p consumer --example drain_benchmark -- [records] [batch_max_records]`
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use consumer::{ConsumerConfig, ConsumerStats, NoReadiness};
use processor::wire::{self, Subject, header};
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use testkit::{TestBroker, TestDb};
use tokio_util::sync::CancellationToken;

const PARTITIONS: i32 = 12;
const BOT: i64 = 7_000_000_001;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let records: i64 = args.next().map_or(Ok(20_000), |a| a.parse())?;
    let batch: usize = args.next().map_or(Ok(1000), |a| a.parse())?;
    let db = TestDb::create().await?;
    let broker = TestBroker::start().await?;
    let topic = broker.unique_topic("bench");
    broker.create_topic(&topic, PARTITIONS).await?;

    let mut pc = broker.client_config();
    pc.set("acks", "all")
        .set("linger.ms", "20")
        .set("enable.idempotence", "true");
    let producer: FutureProducer = pc.create()?;
    let started = Instant::now();
    let mut payloads = Vec::with_capacity(records as usize);
    for i in 0..records {
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
        .to_string();
        payloads.push((
            wire::record_key(BOT, &Subject::Chat(chat.to_string())),
            value,
        ));
    }
    let bot = BOT.to_string();
    for chunk in payloads.chunks(5000) {
        let mut pending = Vec::with_capacity(chunk.len());
        for (key, value) in chunk {
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: header::BOT_ID,
                    value: Some(&bot),
                })
                .insert(Header {
                    key: header::RECEIVED_AT,
                    value: Some("1760000000000"),
                });
            let record = FutureRecord::to(&topic)
                .key(key)
                .payload(value)
                .headers(headers);
            pending.push(producer.send(record, Duration::from_secs(30)));
        }
        // `send` futures do nothing until polled: drive them all at once.
        for delivery in futures::future::join_all(pending).await {
            delivery.map_err(|(e, _)| e)?;
        }
    }
    println!("produced {records} records in {:.2?}", started.elapsed());

    // The broker's own drain rate: a plain consumer reading everything, writing nothing.
    let mut cc = broker.client_config();
    cc.set("group.id", broker.unique_group("raw"))
        .set("auto.offset.reset", "earliest");
    let raw: BaseConsumer = cc.create()?;
    raw.subscribe(&[&topic])?;
    let started = Instant::now();
    let mut seen = 0;
    while seen < records {
        if let Some(Ok(m)) = raw.poll(Duration::from_millis(100)) {
            let _ = m.payload();
            seen += 1;
        }
    }
    let broker_rate = records as f64 / started.elapsed().as_secs_f64();
    drop(raw);

    let mut config =
        ConsumerConfig::new(broker.unique_group("sink"), &topic, broker.client_config());
    config.batch_max_records = batch;
    let options: sqlx::postgres::PgConnectOptions = db.url().parse()?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(PARTITIONS as u32 + 4)
        .connect_with(options)
        .await?;
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
    while ConsumerStats::get(&stats.records_consumed) < records as u64 {
        if first_at.is_none() && ConsumerStats::get(&stats.records_consumed) > 0 {
            first_at = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let total = started.elapsed();
    let writing = first_at.map_or(total, |t| t.elapsed());
    shutdown.cancel();
    task.await??;
    println!(
        "broker drain: {broker_rate:.0} records/s; sink: {records} records in {total:.2?} ({:.0}/s incl. group join, {:.0}/s from the first commit), {} batches",
        records as f64 / total.as_secs_f64(),
        records as f64 / writing.as_secs_f64(),
        ConsumerStats::get(&stats.batches_committed),
    );
    Ok(())
}
