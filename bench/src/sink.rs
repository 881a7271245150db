//! Sink throughput: the `tgingest consumer` process draining a preloaded topic into a fresh
//! schema, against (a) an ideal bulk load of the same final rows with COPY, (b) the broker's own
//! drain rate, (c) a typical hand-written Python consumer; and the scaling of the sink with 1, 2
//! and 4 partition workers.
//!
//! How each figure is taken (all in one run, on one preloaded topic):
//! - **tgingest**: the binary runs as a child process; the benchmark polls
//!   `sum(consumer_offsets.next_offset)` every 20 ms. The window runs from the first committed
//!   batch to the last, so process start and group join are excluded (reported apart). CPU is
//!   the child's utime+stime over the window (`/proc/PID/stat`), plus the CPU of its PostgreSQL
//!   backends.
//! - **ideal COPY**: the final rows of every table tgingest wrote are exported with `COPY … TO
//!   STDOUT` and loaded into a fresh database with the same schema and indexes by `COPY … FROM
//!   STDIN`, one transaction per batch of the same size (records / batch_max_records
//!   transactions, each carrying its share of every table), on one connection.
//! - **Python**: `bench/python/baseline.py` as a child process, polled the same way through its
//!   own offsets table.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use consumer::projection::ProjectionTable;
use futures::StreamExt;
use sqlx::{AssertSqlSafe, Connection};
use testkit::TestDb;

use crate::child::{SystemUnderTest, consumer_env, tgingest_binary};
use crate::kafka;
use crate::pg;
use crate::procstat;
use crate::report::{Table, thousands};
use crate::workload::{Workload, WorkloadConfig, WorkloadProfile};

/// Every table tgingest writes rows into for an update: raw updates and the projection registry.
pub fn data_tables() -> Vec<&'static str> {
    std::iter::once("raw_updates")
        .chain(ProjectionTable::ALL.iter().map(|t| t.name()))
        .collect()
}

/// Settings of one `sink` run.
#[derive(Debug, Clone)]
pub struct SinkSettings {
    pub updates: usize,
    pub partitions: i32,
    pub partition_budget_bytes: usize,
    pub batch: usize,
    pub repeat: usize,
    pub python: Option<PathBuf>,
    pub log_dir: PathBuf,
    pub seed: u64,
    /// Also drain with tgingest over TCP when the main runs use the Unix socket.
    pub tcp_comparison: bool,
}

/// One drain of a topic by a system under test.
#[derive(Debug, Clone, Copy)]
pub struct Drain {
    /// Records committed inside the timed window.
    pub records: i64,
    /// The timed window: first committed batch to the last.
    pub seconds: f64,
    /// From process start to the first committed batch.
    pub startup_seconds: f64,
    /// Child CPU seconds inside the window.
    pub cpu: f64,
    /// PostgreSQL backend CPU seconds inside the window.
    pub pg_cpu: f64,
}

impl Drain {
    pub fn rate(&self) -> f64 {
        self.records as f64 / self.seconds.max(1e-9)
    }
    pub fn cpu_per_million(&self) -> f64 {
        self.cpu / self.records.max(1) as f64 * 1e6
    }
    pub fn pg_cpu_per_million(&self) -> f64 {
        self.pg_cpu / self.records.max(1) as f64 * 1e6
    }
}

/// Waits until `progress_sql` (a single bigint) reaches `total`, timing from its first move.
pub async fn measure_drain(
    sut: &mut SystemUnderTest,
    db: &TestDb,
    progress_sql: &str,
    total: i64,
    timeout: Duration,
) -> anyhow::Result<Drain> {
    let spawned = Instant::now();
    let pid = sut.pid();
    let mut first: Option<(Instant, i64, f64, f64)> = None;
    loop {
        sut.check_alive()?;
        // Before the system under test creates its tables the query fails: that is "0".
        let progress: i64 = sqlx::query_scalar(AssertSqlSafe(progress_sql.to_owned()))
            .fetch_one(db.pool())
            .await
            .unwrap_or(0);
        let now = Instant::now();
        if progress > 0 && first.is_none() {
            first = Some((
                now,
                progress,
                procstat::cpu_seconds(&pid)?,
                pg::backend_cpu_seconds(db).await?,
            ));
        }
        if progress >= total {
            let cpu = procstat::cpu_seconds(&pid)?;
            let pg_cpu = pg::backend_cpu_seconds(db).await?;
            let (t0, p0, cpu0, pg0) = first.unwrap_or((now, 0, cpu, pg_cpu));
            return Ok(Drain {
                records: total - p0,
                seconds: (now - t0).as_secs_f64(),
                startup_seconds: (t0 - spawned).as_secs_f64(),
                cpu: cpu - cpu0,
                pg_cpu: pg_cpu - pg0,
            });
        }
        if spawned.elapsed() > timeout {
            bail!("only {progress} of {total} records committed after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SQL for tgingest's progress: the sum of its stored next offsets.
pub fn tgingest_progress_sql(group: &str, topic: &str) -> String {
    format!(
        "SELECT coalesce(sum(next_offset), 0)::bigint FROM consumer_offsets \
         WHERE group_id = '{group}' AND topic = '{topic}'"
    )
}

/// Runs `tgingest consumer` on `topic` into `db` until all `total` records are committed.
pub async fn drain_with_tgingest(
    bootstrap: &str,
    topic: &str,
    group: &str,
    db: &TestDb,
    total: i64,
    extra_env: &[(&str, String)],
    log: &Path,
) -> anyhow::Result<Drain> {
    let env = consumer_env(bootstrap, topic, group, db.url(), extra_env);
    let mut sut = SystemUnderTest::spawn(
        "tgingest consumer",
        &tgingest_binary()?,
        &["consumer"],
        &env,
        log,
    )?;
    let drain = measure_drain(
        &mut sut,
        db,
        &tgingest_progress_sql(group, topic),
        total,
        Duration::from_secs(600),
    )
    .await;
    sut.stop(Duration::from_secs(20));
    drain
}

/// The result of the ideal bulk load.
#[derive(Debug, Clone, Copy)]
pub struct IdealLoad {
    pub rows: usize,
    pub transactions: usize,
    pub seconds: f64,
    /// This process's CPU (the COPY client) during the load.
    pub client_cpu: f64,
    /// The loading backend's CPU during the load.
    pub pg_cpu: f64,
}

/// Exports every row of [`data_tables`] from `source` and loads them into a fresh database
/// with COPY, in `transactions` transactions; the fresh database is dropped afterwards.
pub async fn ideal_copy(source: &TestDb, transactions: usize) -> anyhow::Result<IdealLoad> {
    let mut export = source.connect().await?;
    let mut tables: Vec<(&str, Vec<u8>, Vec<usize>)> = Vec::new();
    for table in data_tables() {
        let mut data = Vec::new();
        {
            let mut stream = export
                .copy_out_raw(&format!("COPY {table} TO STDOUT"))
                .await
                .with_context(|| format!("exporting {table}"))?;
            while let Some(chunk) = stream.next().await {
                data.extend_from_slice(&chunk?);
            }
        }
        // Text COPY escapes newlines inside values, so every row ends at a raw '\n'.
        let mut ends: Vec<usize> = data
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .map(|(i, _)| i + 1)
            .collect();
        ends.insert(0, 0);
        tables.push((table, data, ends));
    }
    export.close().await?;

    let target = pg::create().await?;
    let result = async {
        let mut conn = target.connect().await?;
        let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut conn)
            .await?;
        let backend = backend.to_string();
        let cpu0 = procstat::cpu_seconds("self")?;
        let pg0 = procstat::cpu_seconds(&backend)?;
        let started = Instant::now();
        let mut rows = 0;
        for t in 0..transactions {
            let mut tx = conn.begin().await?;
            for (table, data, ends) in &tables {
                let n = ends.len() - 1;
                let (from, to) = (n * t / transactions, n * (t + 1) / transactions);
                if from == to {
                    continue;
                }
                let mut copy = tx
                    .copy_in_raw(&format!("COPY {table} FROM STDIN"))
                    .await
                    .with_context(|| format!("COPY into {table}"))?;
                let t0 = Instant::now();
                copy.send(&data[ends[from]..ends[to]]).await?;
                let t1 = Instant::now();
                rows += copy.finish().await? as usize;
                if std::env::var_os("BENCH_DEBUG").is_some() {
                    eprintln!("{table}: send {:?} finish {:?}", t1 - t0, t1.elapsed());
                }
            }
            tx.commit().await?;
        }
        let seconds = started.elapsed().as_secs_f64();
        let load = IdealLoad {
            rows,
            transactions,
            seconds,
            client_cpu: procstat::cpu_seconds("self")? - cpu0,
            pg_cpu: procstat::cpu_seconds(&backend)? - pg0,
        };
        conn.close().await?;
        anyhow::Ok(load)
    }
    .await;
    target.drop_database().await?;
    result
}

/// SQL for the Python baseline's progress.
fn python_progress_sql(group: &str, topic: &str) -> String {
    format!(
        "SELECT coalesce(sum(next_offset), 0)::bigint FROM kafka_offsets \
         WHERE group_id = '{group}' AND topic = '{topic}'"
    )
}

/// Runs the Python baseline on `topic` into the empty database `db`.
pub async fn drain_with_python(
    python: &Path,
    bootstrap: &str,
    topic: &str,
    group: &str,
    db: &TestDb,
    total: i64,
    log: &Path,
) -> anyhow::Result<Drain> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/baseline.py");
    let script = script.to_string_lossy().into_owned();
    let env = vec![
        ("KAFKA_BROKERS".to_owned(), bootstrap.to_owned()),
        ("KAFKA_TOPIC".to_owned(), topic.to_owned()),
        ("KAFKA_GROUP_ID".to_owned(), group.to_owned()),
        ("DATABASE_URL".to_owned(), db.url().to_owned()),
    ];
    let mut sut = SystemUnderTest::spawn(
        "python baseline",
        &python.to_path_buf(),
        &[script.as_str()],
        &env,
        log,
    )?;
    let drain = measure_drain(
        &mut sut,
        db,
        &python_progress_sql(group, topic),
        total,
        Duration::from_secs(900),
    )
    .await;
    sut.stop(Duration::from_secs(10));
    drain
}

/// A preloaded mock cluster topic.
pub struct Preloaded {
    pub broker: embedded_broker::MockClusterHost,
    pub topic: String,
    pub partitions: i32,
    pub total: i64,
    pub bytes: usize,
    pub profile: WorkloadProfile,
}

/// Generates the workload, preloads `partitions` partitions within the per-partition budget and
/// verifies nothing was dropped by the broker.
pub async fn preload_topic(
    seed: u64,
    updates: usize,
    partitions: i32,
    budget: usize,
    when_full: kafka::WhenFull,
) -> anyhow::Result<Preloaded> {
    let workload = Workload::new(&WorkloadConfig {
        seed,
        ..WorkloadConfig::default()
    })?
    .batch(updates);
    let records = kafka::plan_records(&workload, partitions, budget, when_full);
    let profile = WorkloadProfile::of(&workload[..records.len().min(workload.len())]);
    let broker = embedded_broker::MockClusterHost::start(1)?;
    let topic = format!("bench.updates.{partitions}");
    broker.create_topic(&topic, partitions)?;
    let counts = kafka::preload(broker.bootstrap_servers(), &topic, partitions, &records).await?;
    kafka::verify_intact(broker.bootstrap_servers(), &topic, &counts)?;
    Ok(Preloaded {
        topic,
        partitions,
        total: records.len() as i64,
        bytes: records.iter().map(kafka::PlannedRecord::size).sum(),
        profile,
        broker,
    })
}

/// The `sink` benchmark: tgingest vs ideal COPY vs broker drain vs Python, `repeat` times.
pub async fn run(settings: &SinkSettings) -> anyhow::Result<()> {
    let started = Instant::now();
    let pre = preload_topic(
        settings.seed,
        settings.updates,
        settings.partitions,
        settings.partition_budget_bytes,
        kafka::WhenFull::Stop,
    )
    .await?;
    let bootstrap = pre.broker.bootstrap_servers().to_owned();
    println!(
        "### Sink ({} records, {} partitions, {:.0} MB, preloaded in {:.1} s)\n",
        pre.total,
        pre.partitions,
        pre.bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    println!("Workload: {}\n", pre.profile.summary());
    let transactions = (pre.total as usize).div_ceil(settings.batch);
    let mut table = Table::new(&[
        "run",
        "load (1/5/15 min)",
        "broker drain upd/s",
        "tgingest upd/s",
        "tgingest rows/s",
        "tgingest over TCP upd/s",
        "tgingest CPU-s/M upd",
        "its PG CPU-s/M upd",
        "startup s",
        "ideal COPY upd/s",
        "ideal CPU-s/M (client+PG)",
        "tgingest / ideal",
        "Python upd/s",
        "Python CPU-s/M upd",
        "Python PG CPU-s/M",
        "tgingest / Python (throughput)",
        "Python / tgingest (CPU-s)",
    ]);
    let mut rows_table = Table::new(&["table", "rows"]);
    for rep in 1..=settings.repeat {
        let load = procstat::load_average();
        let broker_seconds =
            kafka::broker_drain_seconds(&bootstrap, &pre.topic, pre.partitions, pre.total)?;
        let broker_rate = pre.total as f64 / broker_seconds;

        let db = pg::create().await?;
        let sink = drain_with_tgingest(
            &bootstrap,
            &pre.topic,
            &format!("bench-sink-{rep}"),
            &db,
            pre.total,
            &[("CONSUMER_BATCH_MAX_RECORDS", settings.batch.to_string())],
            &settings.log_dir.join("sink-tgingest.log"),
        )
        .await?;
        let counts = pg::row_counts(&db, &data_tables()).await?;
        let rows: i64 = counts.iter().map(|(_, n)| n).sum();
        if rep == 1 {
            for (t, n) in &counts {
                rows_table.row(vec![t.clone(), thousands(*n as f64)]);
            }
        }
        let ideal = ideal_copy(&db, transactions).await?;
        db.drop_database().await?;
        let tcp = if settings.tcp_comparison && pg::unix_socket_dir().is_some() {
            let tcp_db = pg::tcp_server().create_db().await?;
            let drain = drain_with_tgingest(
                &bootstrap,
                &pre.topic,
                &format!("bench-sink-tcp-{rep}"),
                &tcp_db,
                pre.total,
                &[("CONSUMER_BATCH_MAX_RECORDS", settings.batch.to_string())],
                &settings.log_dir.join("sink-tgingest.log"),
            )
            .await;
            tcp_db.drop_database().await?;
            Some(drain?)
        } else {
            None
        };
        anyhow::ensure!(
            ideal.rows as i64 == rows && ideal.transactions == transactions,
            "the ideal load wrote {} rows in {} transactions, tgingest {rows}",
            ideal.rows,
            ideal.transactions
        );
        let ideal_rate = pre.total as f64 / ideal.seconds;
        let ideal_cpu = (ideal.client_cpu + ideal.pg_cpu) / pre.total as f64 * 1e6;

        let na = || "n/a".to_owned();
        let python = match &settings.python {
            Some(python) => {
                let db = pg::create_empty().await?;
                let drain = drain_with_python(
                    python,
                    &bootstrap,
                    &pre.topic,
                    &format!("bench-python-{rep}"),
                    &db,
                    pre.total,
                    &settings.log_dir.join("sink-python.log"),
                )
                .await;
                db.drop_database().await?;
                Some(drain?)
            }
            None => None,
        };
        table.row(vec![
            rep.to_string(),
            load,
            thousands(broker_rate),
            thousands(sink.rate()),
            thousands(rows as f64 / pre.total as f64 * sink.rate()),
            tcp.map_or_else(na, |t| thousands(t.rate())),
            format!("{:.1}", sink.cpu_per_million()),
            format!("{:.1}", sink.pg_cpu_per_million()),
            format!("{:.1}", sink.startup_seconds),
            thousands(ideal_rate),
            format!("{ideal_cpu:.1}"),
            format!("{:.2}×", sink.rate() / ideal_rate),
            python.map_or_else(na, |p| thousands(p.rate())),
            python.map_or_else(na, |p| format!("{:.1}", p.cpu_per_million())),
            python.map_or_else(na, |p| format!("{:.1}", p.pg_cpu_per_million())),
            python.map_or_else(na, |p| format!("{:.2}×", sink.rate() / p.rate())),
            python.map_or_else(na, |p| {
                format!("{:.2}×", p.cpu_per_million() / sink.cpu_per_million())
            }),
        ]);
        eprintln!(
            "sink run {rep}: tgingest {:.0}/s, ideal {:.0}/s, broker {:.0}/s{}",
            sink.rate(),
            ideal_rate,
            broker_rate,
            python.map_or(String::new(), |p| format!(", python {:.0}/s", p.rate()))
        );
    }
    table.print();
    println!(
        "Rows written by tgingest (run 1), also the rows of the ideal load ({transactions} transactions):\n"
    );
    rows_table.print();
    Ok(())
}

/// The `scaling` benchmark: one topic each with 1, 2 and 4 partitions (so 1, 2 and 4 partition
/// workers), the same per-partition volume each (weak scaling), `repeat` times.
pub async fn scaling(
    seed: u64,
    per_partition_budget: usize,
    repeat: usize,
    log_dir: &Path,
) -> anyhow::Result<()> {
    println!("### Scaling (partition workers = partitions; same bytes per partition)\n");
    let mut table = Table::new(&[
        "partitions (workers)",
        "run",
        "load (1/5/15 min)",
        "records",
        "broker drain upd/s",
        "tgingest upd/s",
        "CPU-s/M upd",
        "PG CPU-s/M upd",
        "speed-up vs 1",
    ]);
    let mut base: Option<f64> = None;
    for partitions in [1, 2, 4] {
        let pre = preload_topic(
            seed,
            400_000,
            partitions,
            per_partition_budget,
            kafka::WhenFull::Stop,
        )
        .await?;
        let bootstrap = pre.broker.bootstrap_servers().to_owned();
        for rep in 1..=repeat {
            let load = procstat::load_average();
            let broker_seconds =
                kafka::broker_drain_seconds(&bootstrap, &pre.topic, partitions, pre.total)?;
            let db = pg::create().await?;
            let drain = drain_with_tgingest(
                &bootstrap,
                &pre.topic,
                &format!("bench-scaling-{partitions}-{rep}"),
                &db,
                pre.total,
                &[],
                &log_dir.join("scaling-tgingest.log"),
            )
            .await;
            db.drop_database().await?;
            let drain = drain?;
            // Relative to the first one-partition run.
            let speedup = drain.rate() / *base.get_or_insert(drain.rate());
            table.row(vec![
                partitions.to_string(),
                rep.to_string(),
                load,
                pre.total.to_string(),
                thousands(pre.total as f64 / broker_seconds),
                thousands(drain.rate()),
                format!("{:.1}", drain.cpu_per_million()),
                format!("{:.1}", drain.pg_cpu_per_million()),
                format!("{speedup:.2}×"),
            ]);
            eprintln!(
                "scaling {partitions} partitions run {rep}: {:.0}/s",
                drain.rate()
            );
        }
    }
    table.print();
    Ok(())
}
