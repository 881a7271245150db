//! Scaling curve: sink throughput and Telegram → row latency against the topic's partitions and
//! the number of `tgingest consumer` processes in the group, with the CPU split between the
//! consumers and PostgreSQL.
//!
//! For each partition count P (default 1, 12, 48) a topic is preloaded with a prefix of the
//! workload: up to `updates` records, cut where the busiest partition reaches the byte budget
//! (chat sizes are skewed, so the other partitions hold less: more partitions, more records, not
//! proportionally more), and for each process count N ≤ P (default 1, 2, 4) a group of N consumer processes
//! drains it into a fresh database, timed as in `sink` ([`sink::measure_drain`]: first committed
//! batch to the last; the members join one by one, so the window includes the group's
//! rebalances, as a real scale-out would). Client CPU is the N processes' together, PostgreSQL's
//! the whole server's. Then the latency pipeline of `latency` ([`latency::measure`]: simulated
//! Bot API → producer → mock broker → the N consumers → PostgreSQL, watched from outside) runs at
//! one fixed rate on a P-partition topic. Points alternate their order between runs; speed-ups
//! are against the one-partition, one-process drain of the same run.

use std::path::Path;
use std::time::Duration;

use crate::child::{SystemUnderTest, consumer_env, tgingest_binary};
use crate::kafka;
use crate::latency::{self, Pipeline};
use crate::pg;
use crate::procstat;
use crate::report::{Table, thousands};
use crate::sink::{self, Drain};

/// Settings of one `scaling` run.
#[derive(Debug, Clone)]
pub struct ScalingSettings {
    pub partitions: Vec<i32>,
    pub processes: Vec<usize>,
    /// Updates generated for the throughput topics at most.
    pub updates: usize,
    pub partition_budget_bytes: usize,
    /// Rate of the latency measurement, updates/s.
    pub rate: u32,
    pub seconds: f64,
    pub repeat: usize,
    pub seed: u64,
    pub log_dir: std::path::PathBuf,
}

/// Drains `pre`'s topic with a group of `processes` consumers into a fresh database.
async fn drain_with_group(
    pre: &sink::Preloaded,
    processes: usize,
    group: &str,
    log: &Path,
) -> anyhow::Result<Drain> {
    let db = pg::create().await?;
    let env = consumer_env(
        pre.broker.bootstrap_servers(),
        &pre.topic,
        group,
        db.url(),
        &[],
    );
    let result = async {
        let mut suts = Vec::with_capacity(processes);
        for _ in 0..processes {
            suts.push(SystemUnderTest::spawn(
                "tgingest consumer",
                &tgingest_binary()?,
                &["consumer"],
                &env,
                log,
            )?);
        }
        let drain = sink::measure_drain(
            &mut suts,
            &db,
            &sink::tgingest_progress_sql(group, &pre.topic),
            pre.total,
            Duration::from_secs(600),
        )
        .await;
        for sut in &suts {
            sut.terminate();
        }
        for sut in &mut suts {
            sut.stop(Duration::from_secs(20));
        }
        drain
    }
    .await;
    db.drop_database().await?;
    result
}

/// The `scaling` benchmark.
pub async fn run(settings: &ScalingSettings) -> anyhow::Result<()> {
    println!(
        "### Scaling (partitions × consumer processes; each topic a prefix of the workload cut \
         where its busiest partition is full; latency at {}/s for {} s)\n",
        settings.rate, settings.seconds
    );
    let mut table = Table::new(&[
        "partitions",
        "processes",
        "run",
        "load (1/5/15 min)",
        "records",
        "upd/s",
        "speed-up vs 1×1",
        "startup s",
        "client CPU-s/M upd",
        "PG CPU-s/M upd",
        "PG share of CPU",
        "p50 ms",
        "p99 ms (target < 250)",
        "max ms",
        "not visible",
    ]);
    let log = settings.log_dir.join("scaling-tgingest.log");
    let mut base: Option<f64> = None;
    let mut rows = Vec::new();
    let mut partitions = settings.partitions.clone();
    partitions.sort_unstable();
    for (i, &p) in partitions.iter().enumerate() {
        let updates = settings
            .updates
            .min(settings.partition_budget_bytes * p as usize / 550);
        let pre = sink::preload_topic(
            settings.seed,
            updates,
            p,
            settings.partition_budget_bytes,
            kafka::WhenFull::Stop,
        )
        .await?;
        for rep in 1..=settings.repeat {
            let mut processes: Vec<usize> = settings
                .processes
                .iter()
                .copied()
                .filter(|n| *n >= 1 && *n <= p as usize)
                .collect();
            if (rep + i) % 2 == 0 {
                processes.reverse();
            }
            for n in processes {
                let load = procstat::load_average();
                let drain =
                    drain_with_group(&pre, n, &format!("bench-scaling-{p}-{n}-{rep}"), &log)
                        .await?;
                let latency = latency::measure(
                    &[settings.rate],
                    settings.seconds,
                    Pipeline {
                        client_options: None,
                        partitions: p,
                        processes: n,
                    },
                    &log,
                )
                .await?;
                let l = latency
                    .first()
                    .ok_or_else(|| anyhow::anyhow!("no latency result"))?;
                if p == partitions[0] && n == 1 {
                    base.get_or_insert(drain.rate());
                }
                eprintln!(
                    "scaling {p} partitions {n} processes run {rep}: {:.0}/s, p99 {:.0} ms",
                    drain.rate(),
                    l.p99_ms
                );
                rows.push((p, n, rep, load, pre.total, drain, l.clone()));
            }
        }
    }
    rows.sort_by_key(|r| (r.0, r.1, r.2));
    for (p, n, rep, load, total, d, l) in rows {
        let cpu = d.cpu_per_million();
        let pg_cpu = d.pg_cpu_per_million();
        table.row(vec![
            p.to_string(),
            n.to_string(),
            rep.to_string(),
            load,
            thousands(total as f64),
            thousands(d.rate()),
            base.map_or_else(|| "n/a".to_owned(), |b| format!("{:.2}×", d.rate() / b)),
            format!("{:.1}", d.startup_seconds),
            format!("{cpu:.1}"),
            format!("{pg_cpu:.1}"),
            format!("{:.0}%", 100.0 * pg_cpu / (cpu + pg_cpu).max(1e-9)),
            format!("{:.0}", l.p50_ms),
            format!("{:.0}", l.p99_ms),
            format!("{:.0}", l.max_ms),
            l.missing.to_string(),
        ]);
    }
    table.print();
    Ok(())
}
