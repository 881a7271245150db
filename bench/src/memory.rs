//! Memory: peak RSS (`VmHWM`) of a `tgingest consumer` process facing a large backlog while
//! PostgreSQL is stalled.
//!
//! The topic is preloaded as full as the mock broker holds (every partition up to the byte
//! budget, checked intact). A side connection holds `LOCK TABLE raw_updates IN ACCESS EXCLUSIVE
//! MODE` in an open transaction, so every batch transaction blocks on its first write while
//! librdkafka keeps prefetching. The consumer's RSS is sampled every 100 ms for the stall; then
//! the lock is released and the backlog must drain completely (the stall cost nothing but time).
//! A consumer on an empty topic with the same partitions gives the baseline.

use std::path::Path;
use std::time::{Duration, Instant};

use sqlx::Connection;

use crate::child::{SystemUnderTest, consumer_env, tgingest_binary};
use crate::pg;
use crate::procstat;
use crate::report::Table;
use crate::sink::{measure_drain, preload_topic, tgingest_progress_sql};

/// The consumer settings one row measures.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// CONSUMER_QUEUE_KBYTES_PER_PARTITION.
    pub queue_kib: u32,
    /// CONSUMER_BATCH_MAX_RECORDS.
    pub batch_records: u64,
    /// CONSUMER_MAX_INFLIGHT_BYTES.
    pub inflight_bytes: usize,
    /// Whether these are the consumer's defaults.
    pub defaults: bool,
}

impl Settings {
    /// `defaults`, or `K:R:B`.
    pub fn parse(spec: &str) -> anyhow::Result<Self> {
        if spec == "defaults" {
            return Ok(Self {
                queue_kib: consumer::config::DEFAULT_QUEUE_KBYTES_PER_PARTITION,
                batch_records: 1000,
                inflight_bytes: consumer::config::DEFAULT_MAX_INFLIGHT_BYTES,
                defaults: true,
            });
        }
        let parts: Vec<&str> = spec.split(':').collect();
        let [k, r, b] = parts[..] else {
            anyhow::bail!("memory config {spec:?} is neither `defaults` nor K:R:B");
        };
        Ok(Self {
            queue_kib: k.parse()?,
            batch_records: r.parse()?,
            inflight_bytes: b.parse()?,
            defaults: false,
        })
    }
}

/// Peak and plateau of one stalled consumer.
#[derive(Debug, Clone, Copy)]
pub struct Stalled {
    pub hwm_kib: u64,
    pub rss_end_kib: u64,
    pub drain_seconds: f64,
}

async fn stalled_consumer(
    bootstrap: &str,
    topic: &str,
    total: i64,
    settings: Settings,
    stall: Duration,
    log: &Path,
) -> anyhow::Result<Stalled> {
    let db = pg::create().await?;
    let result = async {
        let mut lock = db.connect().await?;
        let mut tx = lock.begin().await?;
        sqlx::query("LOCK TABLE raw_updates IN ACCESS EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await?;
        let group = format!(
            "bench-memory-{}-{}-{}",
            settings.queue_kib, settings.batch_records, settings.inflight_bytes
        );
        // The stall must not turn into statement timeouts and retries.
        let mut extra = vec![("CONSUMER_STATEMENT_TIMEOUT", "600s".to_owned())];
        if !settings.defaults {
            extra.extend([
                (
                    "CONSUMER_QUEUE_KBYTES_PER_PARTITION",
                    settings.queue_kib.to_string(),
                ),
                (
                    "CONSUMER_BATCH_MAX_RECORDS",
                    settings.batch_records.to_string(),
                ),
                (
                    "CONSUMER_MAX_INFLIGHT_BYTES",
                    settings.inflight_bytes.to_string(),
                ),
            ]);
        }
        let env = consumer_env(bootstrap, topic, &group, db.url(), &extra);
        let mut sut = SystemUnderTest::spawn(
            "tgingest consumer",
            &tgingest_binary()?,
            &["consumer"],
            &env,
            log,
        )?;
        let pid = sut.pid();
        let started = Instant::now();
        let mut rss = 0;
        while started.elapsed() < stall {
            sut.check_alive()?;
            rss = procstat::status_kib(&pid, "VmRSS")?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let hwm_kib = procstat::status_kib(&pid, "VmHWM")?;
        tx.rollback().await?;
        let drain = measure_drain(
            std::slice::from_mut(&mut sut),
            &db,
            &tgingest_progress_sql(&group, topic),
            total,
            Duration::from_secs(600),
        )
        .await?;
        sut.stop(Duration::from_secs(20));
        anyhow::Ok(Stalled {
            hwm_kib,
            rss_end_kib: rss,
            drain_seconds: drain.seconds,
        })
    }
    .await;
    db.drop_database().await?;
    result
}

/// Peak RSS of a consumer with nothing to read on `partitions` partitions.
async fn idle_consumer(bootstrap: &str, topic: &str, log: &Path) -> anyhow::Result<u64> {
    let db = pg::create().await?;
    let result = async {
        let env = consumer_env(bootstrap, topic, "bench-memory-idle", db.url(), &[]);
        let mut sut = SystemUnderTest::spawn(
            "tgingest consumer",
            &tgingest_binary()?,
            &["consumer"],
            &env,
            log,
        )?;
        tokio::time::sleep(Duration::from_secs(8)).await;
        sut.check_alive()?;
        let hwm = procstat::status_kib(&sut.pid(), "VmHWM")?;
        sut.stop(Duration::from_secs(10));
        anyhow::Ok(hwm)
    }
    .await;
    db.drop_database().await?;
    result
}

/// The `memory` benchmark table.
pub async fn run(
    seed: u64,
    partitions: i32,
    budget: usize,
    configs: &[Settings],
    stall: Duration,
    repeat: usize,
    log_dir: &Path,
) -> anyhow::Result<()> {
    // Enough updates to fill every partition; those of a full partition are skipped.
    let updates = budget * partitions as usize / 550;
    let pre = preload_topic(
        seed,
        updates,
        partitions,
        budget,
        crate::kafka::WhenFull::Skip,
    )
    .await?;
    let bootstrap = pre.broker.bootstrap_servers().to_owned();
    let empty = "bench.memory.empty";
    pre.broker.create_topic(empty, partitions)?;
    let log = log_dir.join("memory-tgingest.log");
    println!(
        "### Memory (backlog {} records, {:.0} MB uncompressed over {} partitions; PostgreSQL \
         stalled {} s by LOCK TABLE raw_updates)\n",
        pre.total,
        pre.bytes as f64 / 1e6,
        partitions,
        stall.as_secs()
    );
    let mut table = Table::new(&[
        "CONSUMER_QUEUE_KBYTES_PER_PARTITION (K)",
        "CONSUMER_BATCH_MAX_RECORDS (R)",
        "CONSUMER_MAX_INFLIGHT_BYTES (B)",
        "run",
        "load (1/5/15 min)",
        "P×K",
        "min(B, P×R×mean record)",
        "peak RSS (VmHWM)",
        "RSS at end of stall",
        "drain after release s",
    ]);
    let idle = idle_consumer(&bootstrap, empty, &log).await?;
    table.row(vec![
        "idle (empty topic)".to_owned(),
        "-".to_owned(),
        "-".to_owned(),
        "1".to_owned(),
        procstat::load_average(),
        "0".to_owned(),
        "0".to_owned(),
        format!("{:.0} MiB", idle as f64 / 1024.0),
        "-".to_owned(),
        "-".to_owned(),
    ]);
    let mean_record = pre.bytes as f64 / pre.total.max(1) as f64;
    for &settings in configs {
        for rep in 1..=repeat {
            let load = procstat::load_average();
            let s =
                stalled_consumer(&bootstrap, &pre.topic, pre.total, settings, stall, &log).await?;
            let p = f64::from(partitions);
            let prefetch_mib = p * f64::from(settings.queue_kib) / 1024.0;
            let batches_mib = (p * settings.batch_records as f64 * mean_record)
                .min(settings.inflight_bytes as f64)
                / 1_048_576.0;
            let mark = if settings.defaults { " (default)" } else { "" };
            table.row(vec![
                format!("{}{mark}", settings.queue_kib),
                format!("{}{mark}", settings.batch_records),
                format!("{}{mark}", settings.inflight_bytes),
                rep.to_string(),
                load,
                format!("{prefetch_mib:.0} MiB"),
                format!("{batches_mib:.0} MiB"),
                format!("{:.0} MiB", s.hwm_kib as f64 / 1024.0),
                format!("{:.0} MiB", s.rss_end_kib as f64 / 1024.0),
                format!("{:.1}", s.drain_seconds),
            ]);
            eprintln!("memory {settings:?} run {rep}: peak {} KiB", s.hwm_kib);
        }
    }
    table.print();
    Ok(())
}
