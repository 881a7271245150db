//! Latency Telegram → row visible, measured from outside.
//!
//! Updates are pushed into the simulated Bot API at a fixed rate; the producer (in this process)
//! long-polls it and publishes to the mock broker; `tgingest consumer` (a child process) writes
//! PostgreSQL. A watcher on its own connection polls
//! `SELECT update_id FROM raw_updates WHERE bot_id = $1 AND update_id >= $low` every 5 ms, where
//! `low` is the smallest id not seen yet, and stamps each id the first time a committed row shows
//! it. Latency = that stamp − the push instant (one clock, this process). The figure therefore
//! includes the watcher's polling period (≤ 5 ms plus the query) and never trusts a `now()`
//! column, which is the transaction's start (DESIGN.md §7).

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use botsim::{AllowedUpdates, BotApi, BotApiConfig, BotInfo};
use producer::{IntakeMode, PollingConfig, ProducerConfig};
use rdkafka::config::ClientConfig;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use crate::child::{SystemUnderTest, consumer_env, tgingest_binary};
use crate::pg;
use crate::procstat;
use crate::report::Table;
use crate::workload::{Workload, WorkloadConfig, percentile};

const BOT: i64 = 7_200_000_001;

/// One update id seen for the first time.
#[derive(Debug, Clone, Copy)]
struct Sighting {
    id: i64,
    at: Instant,
    wall_ms: f64,
    /// `raw_updates.received_at`: when the producer got it from getUpdates.
    received_ms: Option<f64>,
}

fn wall_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
        * 1e3
}

/// The watcher: stamps each update id when its row first becomes visible.
async fn watch(
    db_url: String,
    low: Arc<AtomicI64>,
    stop: CancellationToken,
) -> anyhow::Result<Vec<Sighting>> {
    let mut conn = {
        use sqlx::Connection;
        sqlx::PgConnection::connect(&db_url).await?
    };
    let mut seen_ids = HashSet::new();
    let mut seen = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.is_cancelled() {
        tick.tick().await;
        let from = low.load(Ordering::Relaxed);
        let rows: Vec<(i64, Option<f64>)> = sqlx::query_as(
            "SELECT update_id, (extract(epoch FROM received_at) * 1000)::float8 \
             FROM raw_updates WHERE bot_id = $1 AND update_id >= $2",
        )
        .bind(BOT)
        .bind(from)
        .fetch_all(&mut conn)
        .await?;
        let now = Instant::now();
        let wall = wall_ms();
        for (id, received_ms) in rows {
            if seen_ids.insert(id) {
                seen.push(Sighting {
                    id,
                    at: now,
                    wall_ms: wall,
                    received_ms,
                });
            }
        }
        let mut next = from;
        while seen_ids.contains(&next) {
            next += 1;
        }
        low.store(next, Ordering::Relaxed);
    }
    Ok(seen)
}

/// One rate's result.
#[derive(Debug, Clone)]
pub struct LatencyResult {
    pub rate: u32,
    pub updates: usize,
    pub achieved_rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub missing: usize,
    /// p50 of push → producer received it (getUpdates), ms (wall clock, same machine).
    pub intake_p50_ms: f64,
    /// p50 of producer received → row visible (publish, broker, consumer, commit), ms.
    pub sink_p50_ms: f64,
}

/// The pipeline one latency measurement runs.
#[derive(Debug, Clone, Copy)]
pub struct Pipeline<'a> {
    /// `KAFKA_CLIENT_OPTIONS` of the consumers.
    pub client_options: Option<&'a str>,
    /// Partitions of the topic.
    pub partitions: i32,
    /// `tgingest consumer` processes in the group.
    pub processes: usize,
}

impl Default for Pipeline<'_> {
    fn default() -> Self {
        Self {
            client_options: None,
            partitions: 12,
            processes: 1,
        }
    }
}

/// Measures every rate in `rates` for `seconds` each, on one pipeline.
pub async fn measure(
    rates: &[u32],
    seconds: f64,
    pipeline: Pipeline<'_>,
    log: &Path,
) -> anyhow::Result<Vec<LatencyResult>> {
    let broker = embedded_broker::MockClusterHost::start(1)?;
    let topic = "bench.latency";
    broker.create_topic(topic, pipeline.partitions)?;
    let db = pg::create().await?;
    let api = BotApi::start(BotApiConfig::default()).await?;
    let token = format!("{BOT}:bench-latency-token");
    api.add_bot(&token, BotInfo::new(BOT, "bench_latency_bot", "bench"));
    // As if the bot had polled before: Telegram keeps allowed_updates between calls, and by
    // default drops chat_member and reaction updates as they are created.
    api.set_allowed_updates(
        &token,
        AllowedUpdates::from_names(&producer::all_update_kinds()),
    )?;
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", broker.bootstrap_servers());
    let mut config = ProducerConfig::new(
        url::Url::parse(&api.base_url())?,
        vec![SecretString::from(token.clone())],
        topic.to_owned(),
        client,
    );
    config.mode = IntakeMode::Polling(PollingConfig {
        timeout: Duration::from_secs(10),
        limit: 100,
        ..PollingConfig::default()
    });
    let shutdown = CancellationToken::new();
    let producer = tokio::spawn(producer::run(
        config,
        shutdown.clone(),
        Arc::new(producer::NoReadiness),
    ));
    let extra: Vec<(&str, String)> = pipeline
        .client_options
        .map(|o| vec![("KAFKA_CLIENT_OPTIONS", o.to_owned())])
        .unwrap_or_default();
    let env = consumer_env(
        broker.bootstrap_servers(),
        topic,
        "bench-latency",
        db.url(),
        &extra,
    );
    let mut consumers = Vec::with_capacity(pipeline.processes);
    for _ in 0..pipeline.processes.max(1) {
        consumers.push(SystemUnderTest::spawn(
            "tgingest consumer",
            &tgingest_binary()?,
            &["consumer"],
            &env,
            log,
        )?);
    }

    let wconfig = WorkloadConfig {
        seed: 77,
        duplicate_per_mille: 0,
        ..WorkloadConfig::default()
    };
    let first_id = wconfig.first_update_id;
    let mut workload = Workload::new(&wconfig)?;
    let low = Arc::new(AtomicI64::new(first_id));
    let stop_watch = CancellationToken::new();
    let watcher = tokio::spawn(watch(db.url().to_owned(), low.clone(), stop_watch.clone()));
    let mut pushed: Vec<(Instant, f64)> = Vec::new();

    let result = async {
        // Warm-up: the group join and the first batches are not part of any rate.
        for _ in 0..200 {
            anyhow::ensure!(
                api.push_update(&token, workload.next_update())?,
                "botsim dropped an update"
            );
            pushed.push((Instant::now(), wall_ms()));
        }
        wait_until_seen(
            &low,
            first_id + 200,
            Duration::from_secs(60),
            &mut consumers,
        )
        .await?;
        if consumers.len() > 1 {
            // The members join one by one: let the group settle before anything is timed.
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        let mut phases = Vec::new();
        for &rate in rates {
            let start_id = first_id + pushed.len() as i64;
            let count = (f64::from(rate) * seconds) as usize;
            let started = Instant::now();
            let mut sent = 0usize;
            while sent < count {
                let due = ((started.elapsed().as_secs_f64() * f64::from(rate)) as usize).min(count);
                while sent < due {
                    anyhow::ensure!(
                        api.push_update(&token, workload.next_update())?,
                        "botsim dropped an update"
                    );
                    pushed.push((Instant::now(), wall_ms()));
                    sent += 1;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let achieved = count as f64 / started.elapsed().as_secs_f64();
            let end_id = start_id + count as i64;
            let drained =
                wait_until_seen(&low, end_id, Duration::from_secs(60), &mut consumers).await;
            phases.push((rate, start_id, end_id, achieved, drained.is_ok()));
            eprintln!("latency {rate}/s: pushed {count} at {achieved:.0}/s");
        }
        anyhow::Ok(phases)
    }
    .await;
    stop_watch.cancel();
    let seen = watcher.await.context("watcher task")??;
    // Together: a member that leaves starts a rebalance the others would otherwise sit in.
    for consumer in &consumers {
        consumer.terminate();
    }
    for consumer in &mut consumers {
        consumer.stop(Duration::from_secs(10));
    }
    shutdown.cancel();
    let _ = producer.await;
    api.shutdown().await;
    db.drop_database().await?;
    let phases = result?;

    let mut seen_at: Vec<Option<Sighting>> = vec![None; pushed.len()];
    for sighting in seen {
        if let Some(slot) = usize::try_from(sighting.id - first_id)
            .ok()
            .and_then(|i| seen_at.get_mut(i))
        {
            *slot = Some(sighting);
        }
    }
    Ok(phases
        .into_iter()
        .map(|(rate, start, end, achieved, _)| {
            let range = (start - first_id) as usize..(end - first_id) as usize;
            let mut ms: Vec<f64> = range
                .clone()
                .filter_map(|i| seen_at[i].map(|s| (s.at - pushed[i].0).as_secs_f64() * 1e3))
                .collect();
            ms.sort_by(f64::total_cmp);
            let mut intake: Vec<f64> = range
                .clone()
                .filter_map(|i| Some(seen_at[i]?.received_ms? - pushed[i].1))
                .collect();
            intake.sort_by(f64::total_cmp);
            let mut sink: Vec<f64> = range
                .clone()
                .filter_map(|i| {
                    let s = seen_at[i]?;
                    Some(s.wall_ms - s.received_ms?)
                })
                .collect();
            sink.sort_by(f64::total_cmp);
            LatencyResult {
                rate,
                updates: range.len(),
                achieved_rate: achieved,
                p50_ms: percentile(&ms, 0.50),
                p99_ms: percentile(&ms, 0.99),
                max_ms: ms.last().copied().unwrap_or(f64::NAN),
                missing: range.len() - ms.len(),
                intake_p50_ms: percentile(&intake, 0.50),
                sink_p50_ms: percentile(&sink, 0.50),
            }
        })
        .collect())
}

async fn wait_until_seen(
    low: &AtomicI64,
    end_id: i64,
    timeout: Duration,
    consumers: &mut [SystemUnderTest],
) -> anyhow::Result<()> {
    let started = Instant::now();
    while low.load(Ordering::Relaxed) < end_id {
        for consumer in consumers.iter_mut() {
            consumer.check_alive()?;
        }
        if started.elapsed() > timeout {
            bail!(
                "rows up to id {end_id} not visible after {timeout:?} (seen up to {})",
                low.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// The `latency` benchmark table.
pub async fn run(rates: &[u32], seconds: f64, repeat: usize, log_dir: &Path) -> anyhow::Result<()> {
    // The mock broker answers a fetch that finds no data only after the full fetch.wait.max.ms
    // (librdkafka rdkafka_mock_handlers.c: "If there was no data, delay up to MaxWait"), where
    // Apache Kafka answers as soon as data arrives. The consumer's default wait is 100 ms for
    // such brokers; librdkafka's own default (500 ms) shows what that choice buys, and 10 ms
    // approximates a broker that answers at once.
    let variants: [(&str, Option<&str>); 3] = [
        ("tgingest default (fetch.wait.max.ms=100)", None),
        (
            "librdkafka default fetch.wait.max.ms=500",
            Some("fetch.wait.max.ms=500"),
        ),
        ("fetch.wait.max.ms=10", Some("fetch.wait.max.ms=10")),
    ];
    println!(
        "### Latency Telegram → row visible (watcher polls every 5 ms; {seconds} s per rate; \
         default consumer settings: linger 50 ms, batches ≤ 1000)\n"
    );
    let mut table = Table::new(&[
        "consumer Kafka settings",
        "target rate/s",
        "run",
        "load (1/5/15 min)",
        "updates",
        "achieved/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "not visible",
        "p50 push→producer ms",
        "p50 producer→visible ms",
    ]);
    for (name, options) in variants {
        for rep in 1..=repeat {
            let load = procstat::load_average();
            for r in measure(
                rates,
                seconds,
                Pipeline {
                    client_options: options,
                    ..Pipeline::default()
                },
                &log_dir.join("latency-tgingest.log"),
            )
            .await?
            {
                table.row(vec![
                    name.to_owned(),
                    r.rate.to_string(),
                    rep.to_string(),
                    load.clone(),
                    r.updates.to_string(),
                    format!("{:.0}", r.achieved_rate),
                    format!("{:.0}", r.p50_ms),
                    format!("{:.0}", r.p99_ms),
                    format!("{:.0}", r.max_ms),
                    r.missing.to_string(),
                    // Millisecond timestamps: a sub-millisecond stage can round below zero.
                    format!("{:.0}", r.intake_p50_ms.max(0.0)),
                    format!("{:.0}", r.sink_p50_ms),
                ]);
            }
        }
    }
    table.print();
    Ok(())
}
