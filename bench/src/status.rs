//! What `tgingest status` costs on a large database: `stored` raw updates preloaded (server-side,
//! `INSERT … SELECT` from `generate_series`, in chunks) into a schema at version 6, then
//!
//! - the per-bot query `status` ran before schema 7 (a count and max over all of `raw_updates`),
//! - the upgrade to schema 7 (its one-time count of the stored updates, under a SHARE lock),
//! - the per-bot query `status` runs now (over `raw_update_counts`),
//! - the whole report, `consumer::ops::status::collect`, against an in-process mock cluster
//!   holding an empty topic of the same partitions.
//!
//! Each query is timed `repeat` times after one untimed run (a warm cache: the best case for the
//! scan); the table shows the fastest and the slowest.

use std::time::{Duration, Instant};

use anyhow::Context;
use consumer::ops::status::{Thresholds, collect};
use embedded_broker::MockClusterHost;
use rdkafka::config::ClientConfig;

use crate::pg;
use crate::report::{Table, thousands};

const TOPIC: &str = "bench.status";
const CHUNK: usize = 1_000_000;

/// The per-bot query of `status` before schema 7.
const SCAN_QUERY: &str = "SELECT bot_id, (extract(epoch FROM max(received_at)) * 1000)::bigint, \
     count(*) FROM raw_updates GROUP BY bot_id ORDER BY bot_id";
/// Runs the measurement.
pub async fn run(stored: usize, bots: i64, partitions: i32, repeat: usize) -> anyhow::Result<()> {
    let db = pg::create_empty().await?;
    let migrator = &testkit::pg::MIGRATOR;
    migrator
        .run_to(6, db.pool())
        .await
        .context("migrating to schema 6")?;

    let started = Instant::now();
    let mut from = 0;
    while from < stored {
        let to = (from + CHUNK).min(stored);
        // A short group message per update, its bytes and its jsonb, spread over `bots` bots and
        // `partitions` partitions; one received_at per second.
        sqlx::query(
            "WITH u AS (SELECT i, \
                 format('{\"update_id\":%s,\"message\":{\"message_id\":%s,\"date\":%s,\
\"from\":{\"id\":%s,\"is_bot\":false,\"first_name\":\"Name\",\"username\":\"user%s\"},\
\"chat\":{\"id\":-100%s,\"type\":\"supergroup\",\"title\":\"A realistic group title\"},\
\"text\":\"A short message of ordinary length, about as long as most are.\"}}', \
                        i, i, 1760000000 + i, 100000 + i % 3000, i % 3000, i % 500) AS json \
               FROM generate_series($1::bigint, $2::bigint - 1) AS i) \
             INSERT INTO raw_updates (bot_id, update_id, payload_sha256, update_type, \
                 payload_bytes, payload, received_at, kafka_topic, kafka_partition, \
                 kafka_offset, kafka_timestamp, processor_version) \
             SELECT 7000000001 + i % $3, i, sha256(convert_to(json, 'UTF8')), 'message', \
                    convert_to(json, 'UTF8'), json::jsonb, to_timestamp(1760000000 + i), $4, \
                    (i % $5)::integer, i / $5, to_timestamp(1760000000 + i), 1 \
             FROM u",
        )
        .bind(i64::try_from(from)?)
        .bind(i64::try_from(to)?)
        .bind(bots)
        .bind(TOPIC)
        .bind(i64::from(partitions))
        .execute(db.pool())
        .await
        .with_context(|| format!("preloading updates {from}..{to}"))?;
        from = to;
        eprintln!(
            "status bench: {from} of {stored} updates stored after {:.0} s",
            started.elapsed().as_secs_f64()
        );
    }
    sqlx::query("VACUUM ANALYZE raw_updates")
        .execute(db.pool())
        .await?;
    let preload = started.elapsed();
    let size: String =
        sqlx::query_scalar("SELECT pg_size_pretty(pg_total_relation_size('raw_updates'))")
            .fetch_one(db.pool())
            .await?;

    let scan = time_query(&db, SCAN_QUERY, repeat).await?;
    let started = Instant::now();
    migrator
        .run(db.pool())
        .await
        .context("migrating to schema 7")?;
    let upgrade = started.elapsed();
    let summary = time_query(&db, consumer::raw_counts::PER_BOT, repeat).await?;
    let summary_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM raw_update_counts")
        .fetch_one(db.pool())
        .await?;

    let cluster = MockClusterHost::start(1)?;
    cluster.create_topic(TOPIC, partitions)?;
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", cluster.bootstrap_servers());
    let mut reports = Vec::with_capacity(repeat);
    let mut counted = 0;
    for _ in 0..=repeat {
        let started = Instant::now();
        let report = collect(db.pool(), &client, "bench", TOPIC, Thresholds::default()).await?;
        reports.push(started.elapsed());
        counted = report.bots.iter().map(|b| b.raw_updates).sum::<i64>();
    }
    reports.remove(0);
    anyhow::ensure!(
        usize::try_from(counted)? == stored,
        "status counted {counted} stored updates, {stored} were stored"
    );

    println!(
        "### `status` on {} stored updates ({bots} bots, {partitions} partitions; raw_updates {size}, preloaded in {:.0} s)\n",
        thousands(stored as f64),
        preload.as_secs_f64()
    );
    let mut table = Table::new(&["what", "rows read", "fastest", "slowest"]);
    let (fast, slow) = extremes(&scan);
    table.row(vec![
        "per-bot query before schema 7 (scan of raw_updates)".to_owned(),
        thousands(stored as f64),
        fast,
        slow,
    ]);
    table.row(vec![
        "upgrade to schema 7 (one-time count, writers wait)".to_owned(),
        thousands(stored as f64),
        seconds(upgrade),
        "—".to_owned(),
    ]);
    let (fast, slow) = extremes(&summary);
    table.row(vec![
        "per-bot query from schema 7 (raw_update_counts)".to_owned(),
        thousands(summary_rows as f64),
        fast,
        slow,
    ]);
    let (fast, slow) = extremes(&reports);
    table.row(vec![
        "whole `status` report (database and mock broker)".to_owned(),
        "—".to_owned(),
        fast,
        slow,
    ]);
    table.print();
    db.drop_database().await?;
    Ok(())
}

/// Runs `sql` once untimed, then `repeat` times timed.
async fn time_query(
    db: &testkit::TestDb,
    sql: &'static str,
    repeat: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(repeat);
    for i in 0..=repeat {
        let started = Instant::now();
        let rows = sqlx::query(sql).fetch_all(db.pool()).await?;
        anyhow::ensure!(!rows.is_empty(), "{sql} returned nothing");
        if i > 0 {
            times.push(started.elapsed());
        }
    }
    Ok(times)
}

fn extremes(times: &[Duration]) -> (String, String) {
    let fast = times.iter().min().copied().unwrap_or_default();
    let slow = times.iter().max().copied().unwrap_or_default();
    (seconds(fast), seconds(slow))
}

fn seconds(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{:.1} ms", d.as_secs_f64() * 1000.0)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}
