//! Sink throughput: the `tgingest consumer` process draining a preloaded topic into a fresh
//! schema, against (a) the honest ceiling: an ideal bulk load of the same final rows with COPY
//! over 1, 2, 4 and 8 connections in parallel, (b) the broker's own drain rate, (c) a typical
//! hand-written Python consumer run as a consumer group of 1, 2 and 4 processes.
//!
//! How each figure is taken (all in one run, on one preloaded topic):
//! - **tgingest**: the binary runs as a child process; the benchmark polls
//!   `sum(consumer_offsets.next_offset)` every 20 ms. The window runs from the first committed
//!   batch to the last, so process start and group join are excluded (reported apart).
//! - **ideal load**: the final rows of every table tgingest wrote are exported once (from the
//!   first run) with `COPY … TO STDOUT`, each tagged with the Kafka partition and offset of the
//!   update it came from (projection rows through `src_update_id`), and cut into the batches a
//!   partition worker makes: per partition, consecutive runs of `batch` offsets, one transaction
//!   each carrying that batch's share of every table. They are loaded with `COPY … FROM STDIN`
//!   into a fresh database with the same schema and indexes over N connections in parallel,
//!   partition p on connection p mod N (as partitions are spread over workers), each connection
//!   taking its batches in offset order round-robin over its partitions. The ceiling is the
//!   best N.
//! - **Python**: `bench/python/baseline.py` as N child processes in one consumer group (each
//!   gets its share of the partitions), polled the same way through their own offsets table;
//!   its figure is the best N. Row counts are taken after every run and must not depend on N.
//! - **Order**: odd runs measure tgingest, then the ideal loads (1 → 8 connections), then Python
//!   (1 → 4 processes); even runs the reverse, so a drift in the machine's load does not always
//!   favour the same system.
//! - **CPU**: client CPU is utime + stime of the system's own processes over the window
//!   (`/proc/PID/stat`; the benchmark process itself for the ideal load); PostgreSQL CPU is the
//!   whole server's over the window, ended backends and background processes included
//!   ([`pg::ServerCpu`]). Both are reported per million updates (Kafka records) and per million
//!   rows, so systems that write different rows per update can be compared.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use consumer::projection::ProjectionTable;
use futures::StreamExt;
use sqlx::{AssertSqlSafe, Connection, PgConnection};
use testkit::TestDb;

use crate::child::{SystemUnderTest, consumer_env, tgingest_binary};
use crate::kafka;
use crate::pg;
use crate::procstat;
use crate::report::{Table, thousands};
use crate::workload::{Mix, Workload, WorkloadConfig, WorkloadProfile};

/// Every table tgingest writes rows into for an update: raw updates and the projection registry.
pub fn data_tables() -> Vec<&'static str> {
    std::iter::once("raw_updates")
        .chain(ProjectionTable::ALL.iter().map(|t| t.name()))
        .collect()
}

/// The tables the Python baseline writes.
const PYTHON_TABLES: &[&str] = &["raw_updates", "chats", "users", "messages"];

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
    /// Connection counts of the ideal load.
    pub ideal_connections: Vec<usize>,
    /// Process counts of the Python consumer group.
    pub python_processes: Vec<usize>,
    /// How the topic's updates spread over the update kinds.
    pub mix: Mix,
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
    /// CPU seconds of the system's processes inside the window.
    pub cpu: f64,
    /// PostgreSQL server CPU seconds inside the window.
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

    /// The drain's figures, given the `rows` the whole topic of `total` records left behind:
    /// the window holds the same share of them as of the records.
    fn figures(&self, total: i64, rows: i64) -> Figures {
        let updates = self.records as f64;
        Figures {
            updates,
            rows: rows as f64 * updates / total.max(1) as f64,
            seconds: self.seconds,
            client_cpu: self.cpu,
            pg_cpu: self.pg_cpu,
        }
    }
}

/// Throughput and CPU of one measured window, in the units every system is compared in.
#[derive(Debug, Clone, Copy)]
struct Figures {
    /// Updates (Kafka records) written inside the window.
    updates: f64,
    /// Rows written inside the window.
    rows: f64,
    seconds: f64,
    /// The system's own processes.
    client_cpu: f64,
    /// The PostgreSQL server.
    pg_cpu: f64,
}

impl Figures {
    fn updates_per_second(&self) -> f64 {
        self.updates / self.seconds.max(1e-9)
    }
    fn rows_per_second(&self) -> f64 {
        self.rows / self.seconds.max(1e-9)
    }
    fn cpu(&self) -> f64 {
        self.client_cpu + self.pg_cpu
    }
    fn per_million_updates(&self, cpu: f64) -> f64 {
        cpu / self.updates.max(1.0) * 1e6
    }
    fn per_million_rows(&self, cpu: f64) -> f64 {
        cpu / self.rows.max(1.0) * 1e6
    }
}

/// Waits until `progress_sql` (a single bigint) reaches `total`, timing from its first move.
/// `suts` are the processes of one system (their CPU is added up).
pub async fn measure_drain(
    suts: &mut [SystemUnderTest],
    db: &TestDb,
    progress_sql: &str,
    total: i64,
    timeout: Duration,
) -> anyhow::Result<Drain> {
    let spawned = Instant::now();
    let server = pg::ServerCpu::of(db).await?;
    let pids: Vec<String> = suts.iter().map(SystemUnderTest::pid).collect();
    let client_cpu =
        || -> anyhow::Result<f64> { pids.iter().map(|pid| procstat::cpu_seconds(pid)).sum() };
    let mut first: Option<(Instant, i64, f64, f64)> = None;
    loop {
        for sut in suts.iter_mut() {
            sut.check_alive()?;
        }
        // Before the system under test creates its tables the query fails: that is "0".
        let progress: i64 = sqlx::query_scalar(AssertSqlSafe(progress_sql.to_owned()))
            .fetch_one(db.pool())
            .await
            .unwrap_or(0);
        let now = Instant::now();
        if progress > 0 && first.is_none() {
            first = Some((now, progress, client_cpu()?, server.seconds()?));
        }
        if progress >= total {
            let cpu = client_cpu()?;
            let pg_cpu = server.seconds()?;
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
        std::slice::from_mut(&mut sut),
        db,
        &tgingest_progress_sql(group, topic),
        total,
        Duration::from_secs(600),
    )
    .await;
    sut.stop(Duration::from_secs(20));
    drain
}

/// One batch transaction of the ideal load.
#[derive(Debug)]
struct IdealBatch {
    partition: i32,
    /// Index of the batch within its partition.
    index: i64,
    /// COPY text rows per table, in [`IdealRows::tables`] order (empty: nothing for that table).
    tables: Vec<Vec<u8>>,
}

/// The final rows of a tgingest run, cut into partition workers' batches.
#[derive(Debug)]
pub struct IdealRows {
    tables: Vec<&'static str>,
    /// Ordered by (index, partition): offset order, round-robin over partitions.
    batches: Vec<IdealBatch>,
    rows: usize,
}

impl IdealRows {
    /// Batch transactions (= tgingest's batches on a drain of full batches).
    pub fn transactions(&self) -> usize {
        self.batches.len()
    }
}

/// Exports every row of [`data_tables`] from `source`, each assigned to the batch of the record
/// it came from: (Kafka partition, offset / `batch`). Projection rows are traced through
/// `src_update_id` to their update's raw row.
pub async fn export_ideal_rows(source: &TestDb, batch: usize) -> anyhow::Result<IdealRows> {
    let mut export = source.connect().await?;
    let tables = data_tables();
    let mut batches: BTreeMap<(i64, i32), Vec<Vec<u8>>> = BTreeMap::new();
    let mut rows = 0;
    for (t, table) in tables.iter().enumerate() {
        let query = if *table == "raw_updates" {
            format!("SELECT r.kafka_partition, r.kafka_offset / {batch}, r.* FROM raw_updates r")
        } else {
            // An update id seen with several payloads (or in several records) counts at its
            // first position.
            format!(
                "SELECT coalesce(r.kafka_partition, -1), coalesce(r.kafka_offset, 0) / {batch}, t.* \
                 FROM {table} t LEFT JOIN ( \
                   SELECT DISTINCT ON (bot_id, update_id) bot_id, update_id, kafka_partition, \
                          kafka_offset \
                     FROM raw_updates ORDER BY bot_id, update_id, kafka_partition, kafka_offset \
                 ) r ON r.bot_id = t.bot_id AND r.update_id = t.src_update_id"
            )
        };
        let mut data = Vec::new();
        {
            let mut stream = export
                .copy_out_raw(&format!("COPY ({query}) TO STDOUT"))
                .await
                .with_context(|| format!("exporting {table}"))?;
            while let Some(chunk) = stream.next().await {
                data.extend_from_slice(&chunk?);
            }
        }
        // Text COPY escapes newlines inside values, so every row ends at a raw '\n'; the first
        // two columns are the partition and the batch index, the rest is the table's row.
        for line in data.split_inclusive(|b| *b == b'\n') {
            let mut fields = line.splitn(3, |b| *b == b'\t');
            let (Some(partition), Some(index), Some(row)) =
                (fields.next(), fields.next(), fields.next())
            else {
                bail!("unexpected COPY line from {table}");
            };
            let partition: i32 = std::str::from_utf8(partition)?.parse()?;
            let index: i64 = std::str::from_utf8(index)?.parse()?;
            anyhow::ensure!(
                partition >= 0,
                "a row of {table} comes from an update with no raw row"
            );
            let slot = batches
                .entry((index, partition))
                .or_insert_with(|| vec![Vec::new(); tables.len()]);
            slot[t].extend_from_slice(row);
            rows += 1;
        }
    }
    export.close().await?;
    Ok(IdealRows {
        tables,
        batches: batches
            .into_iter()
            .map(|((index, partition), tables)| IdealBatch {
                partition,
                index,
                tables,
            })
            .collect(),
        rows,
    })
}

/// The result of one ideal load.
#[derive(Debug, Clone, Copy)]
pub struct IdealLoad {
    pub connections: usize,
    pub rows: usize,
    pub transactions: usize,
    pub seconds: f64,
    /// This process's CPU (the COPY clients) during the load.
    pub client_cpu: f64,
    /// The PostgreSQL server's CPU during the load.
    pub pg_cpu: f64,
}

impl IdealLoad {
    fn figures(&self, updates: i64) -> Figures {
        Figures {
            updates: updates as f64,
            rows: self.rows as f64,
            seconds: self.seconds,
            client_cpu: self.client_cpu,
            pg_cpu: self.pg_cpu,
        }
    }
}

/// Loads `rows` into a fresh database over `connections` connections in parallel (partition p
/// on connection p mod `connections`); the database is dropped afterwards.
pub async fn ideal_load(rows: &Arc<IdealRows>, connections: usize) -> anyhow::Result<IdealLoad> {
    anyhow::ensure!(connections > 0, "the ideal load needs a connection");
    let target = pg::create().await?;
    let result = async {
        let server = pg::ServerCpu::of(&target).await?;
        let mut conns = Vec::with_capacity(connections);
        for _ in 0..connections {
            conns.push(target.connect().await?);
        }
        let cpu0 = procstat::cpu_seconds("self")?;
        let pg0 = server.seconds()?;
        let started = Instant::now();
        let shares: Vec<_> = conns
            .into_iter()
            .enumerate()
            .map(|(share, conn)| {
                tokio::spawn(load_share(conn, Arc::clone(rows), share, connections))
            })
            .collect();
        let mut written = 0;
        let mut transactions = 0;
        let mut loaded = Vec::with_capacity(connections);
        for share in shares {
            let (w, t, conn) = share.await.context("an ideal load connection panicked")??;
            written += w;
            transactions += t;
            loaded.push(conn);
        }
        let seconds = started.elapsed().as_secs_f64();
        let load = IdealLoad {
            connections,
            rows: written,
            transactions,
            seconds,
            client_cpu: procstat::cpu_seconds("self")? - cpu0,
            pg_cpu: server.seconds()? - pg0,
        };
        for conn in loaded {
            conn.close().await?;
        }
        anyhow::Ok(load)
    }
    .await;
    target.drop_database().await?;
    result
}

/// One connection's share of the ideal load: the batches of partitions p with p mod `of` =
/// `share`, one transaction each. Returns rows and transactions written.
async fn load_share(
    mut conn: PgConnection,
    rows: Arc<IdealRows>,
    share: usize,
    of: usize,
) -> anyhow::Result<(usize, usize, PgConnection)> {
    let mut written = 0;
    let mut transactions = 0;
    let debug = std::env::var_os("BENCH_DEBUG").is_some();
    for batch in rows
        .batches
        .iter()
        .filter(|b| b.partition as usize % of == share)
    {
        let mut tx = conn.begin().await?;
        for (table, data) in rows.tables.iter().zip(&batch.tables) {
            if data.is_empty() {
                continue;
            }
            let mut copy = tx
                .copy_in_raw(&format!("COPY {table} FROM STDIN"))
                .await
                .with_context(|| format!("COPY into {table}"))?;
            let t0 = Instant::now();
            copy.send(data.as_slice()).await?;
            let t1 = Instant::now();
            written += copy.finish().await? as usize;
            if debug {
                eprintln!(
                    "{table} (partition {} batch {}): send {:?} finish {:?}",
                    batch.partition,
                    batch.index,
                    t1 - t0,
                    t1.elapsed()
                );
            }
        }
        tx.commit().await?;
        transactions += 1;
    }
    Ok((written, transactions, conn))
}

/// SQL for the Python baseline's progress.
fn python_progress_sql(group: &str, topic: &str) -> String {
    format!(
        "SELECT coalesce(sum(next_offset), 0)::bigint FROM kafka_offsets \
         WHERE group_id = '{group}' AND topic = '{topic}'"
    )
}

/// The Python baseline as a consumer group of `processes` processes.
#[derive(Debug, Clone, Copy)]
pub struct PythonGroup<'a> {
    pub interpreter: &'a Path,
    pub processes: usize,
}

/// Runs the Python consumer `python` on `topic` into the empty database `db`.
pub async fn drain_with_python(
    python: PythonGroup<'_>,
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
    let mut suts = Vec::with_capacity(python.processes);
    for _ in 0..python.processes {
        suts.push(SystemUnderTest::spawn(
            "python baseline",
            &python.interpreter.to_path_buf(),
            &[script.as_str()],
            &env,
            log,
        )?);
    }
    let drain = measure_drain(
        &mut suts,
        db,
        &python_progress_sql(group, topic),
        total,
        Duration::from_secs(900),
    )
    .await;
    // Together: a member that leaves starts a rebalance the others would otherwise sit in.
    for sut in &suts {
        sut.terminate();
    }
    for sut in &mut suts {
        sut.stop(Duration::from_secs(10));
    }
    drain
}

/// A preloaded mock cluster topic.
pub struct Preloaded {
    pub broker: embedded_broker::MockClusterHost,
    pub topic: String,
    pub partitions: i32,
    pub total: i64,
    /// Records per partition.
    pub counts: Vec<i64>,
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
    preload_mix(seed, Mix::Realistic, updates, partitions, budget, when_full).await
}

/// [`preload_topic`] of a workload with the given kind mix.
pub async fn preload_mix(
    seed: u64,
    mix: Mix,
    updates: usize,
    partitions: i32,
    budget: usize,
    when_full: kafka::WhenFull,
) -> anyhow::Result<Preloaded> {
    let workload = Workload::new(&WorkloadConfig {
        seed,
        mix,
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
        counts,
        bytes: records.iter().map(kafka::PlannedRecord::size).sum(),
        profile,
        broker,
    })
}

/// The systems a `sink` run compares, in the order of odd runs.
#[derive(Debug, Clone, Copy)]
enum System {
    Tgingest,
    Ideal,
    Python,
}

/// One Python consumer group run.
#[derive(Debug, Clone)]
struct PythonRun {
    processes: usize,
    drain: Drain,
    /// Rows per table after the run, in [`PYTHON_TABLES`] order.
    counts: Vec<(String, i64)>,
    /// Records in raw_updates, by distinct (partition, offset).
    positions: i64,
}

impl PythonRun {
    fn rows(&self) -> i64 {
        self.counts.iter().map(|(_, n)| n).sum()
    }
}

/// The best of several runs by updates per second.
fn best<T>(runs: &[T], rate: impl Fn(&T) -> f64) -> Option<&T> {
    runs.iter().max_by(|a, b| rate(a).total_cmp(&rate(b)))
}

/// A figure or "n/a".
fn or_na<T>(value: Option<T>, show: impl Fn(T) -> String) -> String {
    value.map_or_else(|| "n/a".to_owned(), show)
}

/// The `sink` benchmark: tgingest vs the parallel ideal load vs broker drain vs the Python
/// consumer group, `repeat` times, alternating the order.
pub async fn run(settings: &SinkSettings) -> anyhow::Result<()> {
    let started = Instant::now();
    let pre = preload_mix(
        settings.seed,
        settings.mix,
        settings.updates,
        settings.partitions,
        settings.partition_budget_bytes,
        kafka::WhenFull::Stop,
    )
    .await?;
    let bootstrap = pre.broker.bootstrap_servers().to_owned();
    println!(
        "### Sink, {} mix ({} records, {} partitions, {:.0} MB, preloaded in {:.1} s)\n",
        match settings.mix {
            Mix::Realistic => "realistic",
            Mix::Even => "even (every update kind the same count)",
        },
        pre.total,
        pre.partitions,
        pre.bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    println!("Workload: {}\n", pre.profile.summary());
    let mut summary = Table::new(&[
        "run",
        "order",
        "load (1/5/15 min)",
        "broker drain upd/s",
        "tgingest upd/s",
        "tgingest over TCP upd/s",
        "tgingest startup s",
        "ideal 1 conn upd/s",
        "ideal ceiling upd/s",
        "tgingest / ideal ceiling",
        "tgingest / ideal 1 conn",
        "Python best upd/s",
        "tgingest / Python best",
    ]);
    let mut ideal_table = Table::new(&[
        "run",
        "connections",
        "transactions",
        "upd/s",
        "rows/s",
        "client CPU-s/M rows",
        "PG CPU-s/M rows",
        "CPU-s/M upd (client+PG)",
        "vs 1 conn",
    ]);
    let mut python_table = Table::new(&[
        "run",
        "processes",
        "upd/s",
        "rows/s",
        "startup s",
        "client CPU-s/M upd",
        "PG CPU-s/M upd",
        "raw_updates",
        "chats",
        "users",
        "messages",
        "distinct records in raw_updates",
        "same rows as the first run",
    ]);
    let mut efficiency = Table::new(&[
        "run",
        "system",
        "upd/s",
        "rows/s",
        "rows/upd",
        "client CPU-s/M upd",
        "PG CPU-s/M upd",
        "CPU-s/M upd (client+PG)",
        "CPU-s/M rows (client+PG)",
        "CPU/row vs ideal ceiling",
    ]);
    let mut rows_table = Table::new(&["table", "rows"]);
    let mut ideal_rows: Option<Arc<IdealRows>> = None;
    let mut python_reference: Option<(Vec<(String, i64)>, i64)> = None;
    let tgingest_env = [("CONSUMER_BATCH_MAX_RECORDS", settings.batch.to_string())];
    for rep in 1..=settings.repeat {
        let forward = rep % 2 == 1;
        let load = procstat::load_average();
        let broker_seconds =
            kafka::broker_drain_seconds(&bootstrap, &pre.topic, pre.partitions, pre.total)?;
        let broker_rate = pre.total as f64 / broker_seconds;

        let mut order = vec![System::Tgingest, System::Ideal, System::Python];
        let mut connections = settings.ideal_connections.clone();
        let mut processes = settings.python_processes.clone();
        if !forward {
            order.reverse();
            connections.reverse();
            processes.reverse();
        }
        let mut sink: Option<(Drain, i64)> = None;
        let mut tcp: Option<Drain> = None;
        let mut ideal: Vec<IdealLoad> = Vec::new();
        let mut python: Vec<PythonRun> = Vec::new();
        for system in &order {
            match system {
                System::Tgingest => {
                    let db = pg::create().await?;
                    let drain = drain_with_tgingest(
                        &bootstrap,
                        &pre.topic,
                        &format!("bench-sink-{rep}"),
                        &db,
                        pre.total,
                        &tgingest_env,
                        &settings.log_dir.join("sink-tgingest.log"),
                    )
                    .await;
                    let counted = match drain {
                        Ok(drain) => {
                            async {
                                let counts = pg::row_counts(&db, &data_tables()).await?;
                                if ideal_rows.is_none() {
                                    ideal_rows = Some(Arc::new(
                                        export_ideal_rows(&db, settings.batch).await?,
                                    ));
                                }
                                anyhow::Ok((drain, counts))
                            }
                            .await
                        }
                        Err(e) => Err(e),
                    };
                    db.drop_database().await?;
                    let (drain, counts) = counted?;
                    let rows: i64 = counts.iter().map(|(_, n)| n).sum();
                    if rows_table.is_empty() {
                        for (t, n) in &counts {
                            rows_table.row(vec![t.clone(), thousands(*n as f64)]);
                        }
                    }
                    let expected = ideal_rows.as_ref().map_or(0, |r| r.rows);
                    anyhow::ensure!(
                        rows as usize == expected,
                        "tgingest wrote {rows} rows in run {rep}, {expected} in the first run"
                    );
                    sink = Some((drain, rows));
                    if settings.tcp_comparison && pg::unix_socket_dir().is_some() {
                        let tcp_db = pg::tcp_server().create_db().await?;
                        let drain = drain_with_tgingest(
                            &bootstrap,
                            &pre.topic,
                            &format!("bench-sink-tcp-{rep}"),
                            &tcp_db,
                            pre.total,
                            &tgingest_env,
                            &settings.log_dir.join("sink-tgingest.log"),
                        )
                        .await;
                        tcp_db.drop_database().await?;
                        tcp = Some(drain?);
                    }
                }
                System::Ideal => {
                    let rows = ideal_rows
                        .clone()
                        .context("the ideal load needs tgingest's rows of the first run")?;
                    for &n in &connections {
                        let load = ideal_load(&rows, n).await?;
                        anyhow::ensure!(
                            load.rows == rows.rows && load.transactions == rows.transactions(),
                            "the ideal load over {n} connections wrote {} rows in {} \
                             transactions, expected {} in {}",
                            load.rows,
                            load.transactions,
                            rows.rows,
                            rows.transactions()
                        );
                        eprintln!(
                            "sink run {rep}: ideal over {n} connections {:.0}/s",
                            pre.total as f64 / load.seconds
                        );
                        ideal.push(load);
                    }
                    ideal.sort_by_key(|l| l.connections);
                }
                System::Python => {
                    let Some(interpreter) = &settings.python else {
                        continue;
                    };
                    for &n in &processes {
                        let db = pg::create_empty().await?;
                        let group = format!("bench-python-{rep}-{n}");
                        let drain = drain_with_python(
                            PythonGroup {
                                interpreter,
                                processes: n,
                            },
                            &bootstrap,
                            &pre.topic,
                            &group,
                            &db,
                            pre.total,
                            &settings.log_dir.join("sink-python.log"),
                        )
                        .await;
                        let counted = match drain {
                            Ok(drain) => {
                                async {
                                    let counts = pg::row_counts(&db, PYTHON_TABLES).await?;
                                    let positions: i64 = sqlx::query_scalar(
                                        "SELECT count(DISTINCT (kafka_partition, kafka_offset)) \
                                     FROM raw_updates",
                                    )
                                    .fetch_one(db.pool())
                                    .await?;
                                    anyhow::Ok(PythonRun {
                                        processes: n,
                                        drain,
                                        counts,
                                        positions,
                                    })
                                }
                                .await
                            }
                            Err(e) => Err(e),
                        };
                        db.drop_database().await?;
                        let run = counted?;
                        eprintln!(
                            "sink run {rep}: python with {n} processes {:.0}/s",
                            run.drain.rate()
                        );
                        python.push(run);
                    }
                    python.sort_by_key(|p| p.processes);
                }
            }
        }
        let (sink, sink_rows) = sink.context("tgingest did not run")?;
        let sink_figures = sink.figures(pre.total, sink_rows);
        let ideal_figures = |l: &IdealLoad| l.figures(pre.total);
        let ideal_one = ideal.iter().find(|l| l.connections == 1);
        let ceiling = best(&ideal, |l| ideal_figures(l).updates_per_second());
        let python_best = best(&python, |p| p.drain.rate());
        let rate = |f: Figures| f.updates_per_second();
        summary.row(vec![
            rep.to_string(),
            if forward {
                "tgingest, ideal, Python"
            } else {
                "Python, ideal, tgingest"
            }
            .to_owned(),
            load,
            thousands(broker_rate),
            thousands(sink.rate()),
            or_na(tcp, |t| thousands(t.rate())),
            format!("{:.1}", sink.startup_seconds),
            or_na(ideal_one, |l| thousands(rate(ideal_figures(l)))),
            or_na(ceiling, |l| {
                format!(
                    "{} ({} conn)",
                    thousands(rate(ideal_figures(l))),
                    l.connections
                )
            }),
            or_na(ceiling, |l| {
                format!("{:.2}×", sink.rate() / rate(ideal_figures(l)))
            }),
            or_na(ideal_one, |l| {
                format!("{:.2}×", sink.rate() / rate(ideal_figures(l)))
            }),
            or_na(python_best, |p| {
                format!("{} ({} proc)", thousands(p.drain.rate()), p.processes)
            }),
            or_na(python_best, |p| {
                format!("{:.2}×", sink.rate() / p.drain.rate())
            }),
        ]);
        let base = ideal_one.map(|l| rate(ideal_figures(l)));
        for l in &ideal {
            let f = ideal_figures(l);
            ideal_table.row(vec![
                rep.to_string(),
                l.connections.to_string(),
                l.transactions.to_string(),
                thousands(f.updates_per_second()),
                thousands(f.rows_per_second()),
                format!("{:.1}", f.per_million_rows(f.client_cpu)),
                format!("{:.1}", f.per_million_rows(f.pg_cpu)),
                format!("{:.1}", f.per_million_updates(f.cpu())),
                or_na(base, |b| format!("{:.2}×", f.updates_per_second() / b)),
            ]);
        }
        for p in &python {
            let f = p.drain.figures(pre.total, p.rows());
            let reference = python_reference.get_or_insert_with(|| (p.counts.clone(), p.positions));
            let same = reference.0 == p.counts && reference.1 == p.positions;
            if !same {
                eprintln!(
                    "sink run {rep}: python with {} processes left {:?} ({} records), the first \
                     run {:?} ({} records)",
                    p.processes, p.counts, p.positions, reference.0, reference.1
                );
            }
            let mut row = vec![
                rep.to_string(),
                p.processes.to_string(),
                thousands(f.updates_per_second()),
                thousands(f.rows_per_second()),
                format!("{:.1}", p.drain.startup_seconds),
                format!("{:.1}", f.per_million_updates(f.client_cpu)),
                format!("{:.1}", f.per_million_updates(f.pg_cpu)),
            ];
            row.extend(p.counts.iter().map(|(_, n)| thousands(*n as f64)));
            row.push(format!(
                "{} of {}",
                thousands(p.positions as f64),
                thousands(pre.total as f64)
            ));
            row.push(if same { "yes" } else { "NO" }.to_owned());
            python_table.row(row);
        }
        let ceiling_figures = ceiling.map(ideal_figures);
        let mut systems = vec![("tgingest".to_owned(), sink_figures)];
        if let Some(l) = ceiling {
            systems.push((
                format!("ideal ceiling ({} conn)", l.connections),
                ideal_figures(l),
            ));
        }
        if let Some(p) = python_best {
            systems.push((
                format!("Python best ({} proc)", p.processes),
                p.drain.figures(pre.total, p.rows()),
            ));
        }
        for (name, f) in systems {
            efficiency.row(vec![
                rep.to_string(),
                name,
                thousands(f.updates_per_second()),
                thousands(f.rows_per_second()),
                format!("{:.2}", f.rows / f.updates.max(1.0)),
                format!("{:.1}", f.per_million_updates(f.client_cpu)),
                format!("{:.1}", f.per_million_updates(f.pg_cpu)),
                format!("{:.1}", f.per_million_updates(f.cpu())),
                format!("{:.1}", f.per_million_rows(f.cpu())),
                or_na(ceiling_figures, |c| {
                    format!(
                        "{:.2}×",
                        f.per_million_rows(f.cpu()) / c.per_million_rows(c.cpu())
                    )
                }),
            ]);
        }
        eprintln!(
            "sink run {rep}: tgingest {:.0}/s, ideal ceiling {}, broker {:.0}/s{}",
            sink.rate(),
            or_na(ceiling, |l| format!("{:.0}/s", rate(ideal_figures(l)))),
            broker_rate,
            or_na(python_best, |p| format!(
                ", python best {:.0}/s",
                p.drain.rate()
            ))
        );
    }
    println!(
        "Each system against the ceilings, same run (order alternates between runs; the ideal \
         ceiling is the best connection count, Python's figure its best process count):\n"
    );
    summary.print();
    println!(
        "Ideal load of tgingest's rows by parallel connections (partition p on connection p mod N):\n"
    );
    ideal_table.print();
    if settings.python.is_some() {
        println!(
            "Python consumer group by processes (rows counted after each run; a process count \
             that lost or duplicated records would not leave the first run's rows; exact \
             redeliveries share an update id, so raw_updates holds fewer rows than records):\n"
        );
        python_table.print();
    }
    println!(
        "Efficiency: CPU of the system's processes (client) and of the whole PostgreSQL server \
         over the measured window, per million updates and per million rows written:\n"
    );
    efficiency.print();
    let transactions = ideal_rows.as_ref().map_or(0, |r| r.transactions());
    println!(
        "Rows written by tgingest (every run), also the rows of the ideal load ({transactions} \
         batch transactions):\n"
    );
    rows_table.print();
    Ok(())
}
