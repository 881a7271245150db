//! Catch-up: the release `tgingest consumer` draining the largest backlog the mock cluster holds,
//! (a) into an empty database (the first write), (b) again after `tgingest replay --to-earliest
//! --execute` into the database that already holds every row (all unchanged: the primary keys
//! absorb the raw rows and the last-writer-wins guard refuses every projection row, so nothing is
//! rewritten), and (c) into another empty database with an in-flight budget so large it never
//! binds — whether `CONSUMER_MAX_INFLIGHT_BYTES` throttles catch-up.
//!
//! The backlog: every partition filled to the byte budget the mock cluster keeps intact (updates
//! that would overflow a full partition are skipped, [`kafka::WhenFull::Skip`]), verified intact
//! before anything is measured. Drains are timed as in `sink` ([`sink::measure_drain`]: the
//! window runs from the first committed batch to the last; start-up and group join are reported
//! apart). The replay's rows written are read from `pg_stat_user_tables` (inserted + updated +
//! deleted tuples of every data table while the replay drained): 0 means nothing was rewritten.
//! The first write is compared with the ideal COPY of its own rows over parallel connections
//! (`sink`'s [`sink::ideal_load`]; the ceiling is the best connection count). Order alternates
//! between runs. Nothing here asserts a time.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use testkit::TestDb;

use crate::child::{consumer_env, tgingest_binary};
use crate::kafka;
use crate::pg;
use crate::procstat;
use crate::report::{Table, thousands};
use crate::sink::{self, Drain, IdealLoad, IdealRows};

/// A budget that never binds: far more than the whole backlog's bytes.
pub const UNBOUNDED_INFLIGHT_BYTES: usize = 64 << 30;

/// Settings of one `catchup` run.
#[derive(Debug, Clone)]
pub struct CatchupSettings {
    pub partitions: i32,
    /// Uncompressed bytes per partition at most (the mock cluster keeps ~5 MB compressed).
    pub partition_budget_bytes: usize,
    pub repeat: usize,
    pub seed: u64,
    pub log_dir: std::path::PathBuf,
    /// Connection counts of the ideal load of the first write's rows (empty: none).
    pub ideal_connections: Vec<usize>,
}

/// The measurements of one catch-up run, in the order they ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Into an empty database, default budget; the database is kept for the replay.
    First,
    /// After `replay --to-earliest --execute`, into the database the first write filled.
    Unchanged,
    /// Into an empty database, with [`UNBOUNDED_INFLIGHT_BYTES`].
    Unbounded,
    /// The ideal COPY of the first write's rows.
    Ideal,
}

/// Runs `tgingest replay --to-earliest --execute` for `group` on `topic`; returns its seconds.
pub fn replay_to_earliest(
    bootstrap: &str,
    topic: &str,
    group: &str,
    db: &TestDb,
    log: &Path,
) -> anyhow::Result<f64> {
    let env = consumer_env(bootstrap, topic, group, db.url(), &[]);
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let started = Instant::now();
    let status = std::process::Command::new(tgingest_binary()?)
        .args(["replay", "--to-earliest", "--execute"])
        .envs(env)
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .status()
        .context("running tgingest replay")?;
    anyhow::ensure!(
        status.success(),
        "tgingest replay exited with {status} (see {})",
        log.display()
    );
    Ok(started.elapsed().as_secs_f64())
}

/// Tuples inserted, updated and deleted so far in the data tables (`pg_stat_user_tables`).
pub async fn tuples_written(db: &TestDb) -> anyhow::Result<i64> {
    // The consumer's backends flush their counters when they exit, just after its process does.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let tables: Vec<String> = sink::data_tables().into_iter().map(str::to_owned).collect();
    Ok(sqlx::query_scalar(
        "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)::bigint \
         FROM pg_stat_user_tables WHERE relname = ANY($1)",
    )
    .bind(&tables)
    .fetch_one(db.pool())
    .await?)
}

/// The `catchup` benchmark.
pub async fn run(settings: &CatchupSettings) -> anyhow::Result<()> {
    let started = Instant::now();
    // Enough updates to fill nearly every partition (the busiest chats fill theirs long before
    // the quiet ones); those of a full partition are skipped.
    let updates = settings.partition_budget_bytes * settings.partitions as usize / 300;
    let pre = sink::preload_topic(
        settings.seed,
        updates,
        settings.partitions,
        settings.partition_budget_bytes,
        kafka::WhenFull::Skip,
    )
    .await?;
    let bootstrap = pre.broker.bootstrap_servers().to_owned();
    println!(
        "### Catch-up ({} records = the backlog, {} partitions of {}–{} records, {:.0} MB \
         uncompressed; preloaded and verified intact in {:.0} s)\n",
        pre.total,
        pre.partitions,
        pre.counts.iter().min().copied().unwrap_or(0),
        pre.counts.iter().max().copied().unwrap_or(0),
        pre.bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    println!("Workload: {}\n", pre.profile.summary());
    let log = settings.log_dir.join("catchup-tgingest.log");
    let mut summary = Table::new(&[
        "run",
        "order",
        "load (1/5/15 min)",
        "broker drain upd/s",
        "first write upd/s",
        "unchanged replay upd/s",
        "unchanged / first (target ≥ 2×)",
        "tuples written by the replay",
        "first write, budget unbounded upd/s",
        "default / unbounded budget (target ≥ 0.8×)",
        "ideal ceiling upd/s",
        "first write / ideal ceiling",
    ]);
    let mut cpu = Table::new(&[
        "run",
        "drain",
        "upd/s",
        "startup s",
        "client CPU-s/M upd",
        "PG CPU-s/M upd",
        "CPU-s/M upd (client+PG)",
    ]);
    let mut ideal_table = Table::new(&["run", "connections", "upd/s", "vs first write"]);
    let mut ideal_rows: Option<Arc<IdealRows>> = None;
    let mut reference_rows: Option<Vec<(String, i64)>> = None;
    let unbounded = [(
        "CONSUMER_MAX_INFLIGHT_BYTES",
        UNBOUNDED_INFLIGHT_BYTES.to_string(),
    )];
    for rep in 1..=settings.repeat {
        let forward = rep % 2 == 1;
        let load = procstat::load_average();
        let broker_seconds =
            kafka::broker_drain_seconds(&bootstrap, &pre.topic, pre.partitions, pre.total)?;
        let mut order = vec![Step::First, Step::Unchanged, Step::Unbounded, Step::Ideal];
        let mut connections = settings.ideal_connections.clone();
        if !forward {
            order = vec![Step::Ideal, Step::Unbounded, Step::First, Step::Unchanged];
            connections.reverse();
        }
        let group = format!("bench-catchup-{rep}");
        let mut filled: Option<TestDb> = None;
        let mut first: Option<Drain> = None;
        let mut unchanged: Option<(Drain, i64, f64)> = None;
        let mut free: Option<Drain> = None;
        let mut ideal: Vec<IdealLoad> = Vec::new();
        for step in order {
            match step {
                Step::First => {
                    let db = pg::create().await?;
                    let drain = sink::drain_with_tgingest(
                        &bootstrap,
                        &pre.topic,
                        &group,
                        &db,
                        pre.total,
                        &[],
                        &log,
                    )
                    .await;
                    let checked = async {
                        let drain = drain?;
                        let counts = pg::row_counts(&db, &sink::data_tables()).await?;
                        let reference = reference_rows.get_or_insert_with(|| counts.clone());
                        anyhow::ensure!(
                            *reference == counts,
                            "the first write left {counts:?}, the first run {reference:?}"
                        );
                        if ideal_rows.is_none() && !settings.ideal_connections.is_empty() {
                            ideal_rows = Some(Arc::new(sink::export_ideal_rows(&db, 1000).await?));
                        }
                        anyhow::Ok(drain)
                    }
                    .await;
                    match checked {
                        Ok(drain) => {
                            first = Some(drain);
                            filled = Some(db);
                        }
                        Err(e) => {
                            db.drop_database().await?;
                            return Err(e);
                        }
                    }
                    eprintln!("catchup run {rep}: first write {:.0}/s", first_rate(first));
                }
                Step::Unchanged => {
                    let db = filled.take().context("the replay needs the first write")?;
                    let measured = async {
                        let before = tuples_written(&db).await?;
                        let replay_seconds =
                            replay_to_earliest(&bootstrap, &pre.topic, &group, &db, &log)?;
                        let drain = sink::drain_with_tgingest(
                            &bootstrap,
                            &pre.topic,
                            &group,
                            &db,
                            pre.total,
                            &[],
                            &log,
                        )
                        .await?;
                        let written = tuples_written(&db).await? - before;
                        let counts = pg::row_counts(&db, &sink::data_tables()).await?;
                        anyhow::ensure!(
                            Some(&counts) == reference_rows.as_ref(),
                            "after the replay the database holds {counts:?}, before {:?}",
                            reference_rows
                        );
                        anyhow::Ok((drain, written, replay_seconds))
                    }
                    .await;
                    db.drop_database().await?;
                    let measured = measured?;
                    eprintln!(
                        "catchup run {rep}: unchanged replay {:.0}/s, {} tuples written",
                        measured.0.rate(),
                        measured.1
                    );
                    unchanged = Some(measured);
                }
                Step::Unbounded => {
                    let db = pg::create().await?;
                    let drain = sink::drain_with_tgingest(
                        &bootstrap,
                        &pre.topic,
                        &format!("{group}-unbounded"),
                        &db,
                        pre.total,
                        &unbounded,
                        &log,
                    )
                    .await;
                    db.drop_database().await?;
                    let drain = drain?;
                    eprintln!(
                        "catchup run {rep}: first write, budget unbounded {:.0}/s",
                        drain.rate()
                    );
                    free = Some(drain);
                }
                Step::Ideal => {
                    // The first run's rows are exported by its first write; in an even run the
                    // ideal goes first only once they exist.
                    let Some(rows) = ideal_rows.clone() else {
                        continue;
                    };
                    for &n in &connections {
                        let l = sink::ideal_load(&rows, n).await?;
                        eprintln!(
                            "catchup run {rep}: ideal over {n} connections {:.0}/s",
                            pre.total as f64 / l.seconds
                        );
                        ideal.push(l);
                    }
                    ideal.sort_by_key(|l| l.connections);
                }
            }
        }
        let first = first.context("the first write did not run")?;
        let (replayed, written, replay_seconds) =
            unchanged.context("the unchanged replay did not run")?;
        let free = free.context("the unbounded drain did not run")?;
        let ideal_rate = |l: &IdealLoad| pre.total as f64 / l.seconds.max(1e-9);
        let ceiling = ideal
            .iter()
            .max_by(|a, b| ideal_rate(a).total_cmp(&ideal_rate(b)));
        summary.row(vec![
            rep.to_string(),
            if forward {
                "first, unchanged, unbounded, ideal"
            } else {
                "ideal, unbounded, first, unchanged"
            }
            .to_owned(),
            load,
            thousands(pre.total as f64 / broker_seconds),
            thousands(first.rate()),
            thousands(replayed.rate()),
            format!("{:.2}×", replayed.rate() / first.rate()),
            thousands(written as f64),
            thousands(free.rate()),
            format!("{:.2}×", first.rate() / free.rate()),
            ceiling.map_or_else(
                || "n/a".to_owned(),
                |l| format!("{} ({} conn)", thousands(ideal_rate(l)), l.connections),
            ),
            ceiling.map_or_else(
                || "n/a".to_owned(),
                |l| format!("{:.2}×", first.rate() / ideal_rate(l)),
            ),
        ]);
        for (name, d) in [
            ("first write", first),
            ("unchanged replay", replayed),
            ("first write, budget unbounded", free),
        ] {
            let startup = if name == "unchanged replay" {
                format!(
                    "{:.1} (+ replay command {replay_seconds:.1})",
                    d.startup_seconds
                )
            } else {
                format!("{:.1}", d.startup_seconds)
            };
            cpu.row(vec![
                rep.to_string(),
                name.to_owned(),
                thousands(d.rate()),
                startup,
                format!("{:.1}", d.cpu_per_million()),
                format!("{:.1}", d.pg_cpu_per_million()),
                format!("{:.1}", d.cpu_per_million() + d.pg_cpu_per_million()),
            ]);
        }
        for l in &ideal {
            ideal_table.row(vec![
                rep.to_string(),
                l.connections.to_string(),
                thousands(ideal_rate(l)),
                format!("{:.2}×", ideal_rate(l) / first.rate()),
            ]);
        }
    }
    println!(
        "Catch-up with consumer defaults (CONSUMER_MAX_INFLIGHT_BYTES {} B) unless marked; the \
         unbounded budget is {} B; same run, order alternating:\n",
        consumer::config::DEFAULT_MAX_INFLIGHT_BYTES,
        UNBOUNDED_INFLIGHT_BYTES
    );
    summary.print();
    println!("CPU per drain (client = the consumer process; PG = the whole server):\n");
    cpu.print();
    if !ideal_table.is_empty() {
        println!("Ideal COPY of the first write's rows by parallel connections:\n");
        ideal_table.print();
    }
    if let Some(rows) = &reference_rows {
        let total: i64 = rows.iter().map(|(_, n)| n).sum();
        println!(
            "Rows of the backlog: {} in {} tables ({})\n",
            thousands(total as f64),
            rows.len(),
            rows.iter()
                .map(|(t, n)| format!("{t} {}", thousands(*n as f64)))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

fn first_rate(first: Option<Drain>) -> f64 {
    first.map_or(0.0, |d| d.rate())
}
