//! Alternative statement shapes of the consumer's write path, measured on the same batches
//! (`write-path`): no broker, no group, only PostgreSQL.
//!
//! The realistic workload ([`crate::workload`]) is prepared once, as the consumer prepares Kafka
//! records, and split over `workers` partitions in batches of `batch` records. Each shape writes
//! all of it into a fresh database with one concurrent task per partition, one transaction per
//! batch; shapes alternate order over the repeats. Reported per run: updates/s, rows/s, client
//! CPU per million updates, PostgreSQL CPU per million updates twice — its backends serving the
//! run's database, and the whole server ([`pg::ServerCpu`], which on a shared server includes
//! other sessions' work) — ([`procstat`]) and statements per
//! batch (sqlx's `sqlx::query` events, counted in a separate untimed pass because logging them
//! costs client CPU; once a statement is prepared on a connection each is one round trip).
//!
//! Shapes:
//! - `batchwriter`: the consumer's own `BatchWriter`, exactly as a running consumer calls it
//!   (tombstone/horizon/erasure read, update epochs, raw_updates with its jsonb copy and the
//!   counted insert, projections, dead-letter resolution, the fenced offset update);
//! - `batchwriter-no-jsonb`: the same with `JsonbPayload::Never` (bytes only): what the jsonb
//!   copy of raw payloads costs;
//! - `raw-unnest`: the raw_updates statement alone, as the writer sends it (set-based
//!   `INSERT … SELECT FROM UNNEST(…) ON CONFLICT` counted in raw_update_counts), one transaction
//!   per batch;
//! - `raw-unnest-no-jsonb`: the same without the jsonb copy;
//! - `raw-copy-staging`: the same rows by binary COPY into an UNLOGGED staging table, then one
//!   `INSERT … SELECT … ON CONFLICT` that consumes them (`WITH s AS (DELETE … RETURNING …)`), in
//!   the same transaction, sorted by key there (the heap returns the staged rows in no useful
//!   order, and unsorted upserts of shared keys deadlock concurrent workers). Rows a transaction copies are invisible to every other transaction and
//!   deleted before it commits, so concurrent workers never see each other's staging rows; the
//!   staging key (`worker` = the partition) only keeps the DELETE to the worker's own rows. The
//!   staging table is created by this benchmark in its throwaway database (as the consumer's
//!   schema would get it from `migrate`), never by the writer at run time.
//!
//! The raw-only pair isolates the transport (arrays vs COPY) of the largest table; the
//! `batchwriter` pair is the whole path.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use consumer::ConsumerStats;
use consumer::offsets::{OffsetStore, Ownership};
use consumer::projection::ProjectionSchema;
use consumer::record::ConsumedRecord;
use consumer::writer::{BatchWriter, Content, JsonbPayload, PreparedRecord};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Executor, PgConnection, PgPool};
use testkit::TestDb;
use tracing::subscriber::Interest;
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt as _};

use crate::kafka;
use crate::pg;
use crate::procstat;
use crate::report::{Table, thousands};
use crate::workload::{Workload, WorkloadConfig};

const TOPIC: &str = "bench.write_path";
const GROUP: &str = "bench-write-path";

/// A statement shape of the write path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    BatchWriter,
    BatchWriterNoJsonb,
    RawUnnest,
    RawUnnestNoJsonb,
    RawCopyStaging,
}

impl Shape {
    const ALL: [Shape; 5] = [
        Shape::BatchWriter,
        Shape::BatchWriterNoJsonb,
        Shape::RawUnnest,
        Shape::RawUnnestNoJsonb,
        Shape::RawCopyStaging,
    ];

    fn name(self) -> &'static str {
        match self {
            Shape::BatchWriter => "batchwriter",
            Shape::BatchWriterNoJsonb => "batchwriter-no-jsonb",
            Shape::RawUnnest => "raw-unnest",
            Shape::RawUnnestNoJsonb => "raw-unnest-no-jsonb",
            Shape::RawCopyStaging => "raw-copy-staging",
        }
    }
}

/// sqlx statements seen while [`COUNTING`] is on.
static STATEMENTS: AtomicU64 = AtomicU64::new(0);
static COUNTING: AtomicBool = AtomicBool::new(false);

/// Counts sqlx's per-statement events, only while [`COUNTING`] is on (sqlx formats them only when
/// a subscriber wants them).
struct StatementCounter;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for StatementCounter {
    fn register_callsite(&self, metadata: &'static tracing::Metadata<'static>) -> Interest {
        if metadata.target() == "sqlx::query" {
            Interest::sometimes()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, metadata: &tracing::Metadata<'_>, _: LayerContext<'_, S>) -> bool {
        metadata.target() == "sqlx::query" && COUNTING.load(Ordering::Relaxed)
    }

    fn on_event(&self, _: &tracing::Event<'_>, _: LayerContext<'_, S>) {
        STATEMENTS.fetch_add(1, Ordering::Relaxed);
    }
}

/// The prepared records of one partition, in batches.
struct Partition {
    partition: i32,
    batches: Vec<Vec<PreparedRecord>>,
}

fn prepare(
    updates: usize,
    batch: usize,
    workers: i32,
    seed: u64,
) -> anyhow::Result<Vec<Partition>> {
    let bytes = Workload::new(&WorkloadConfig {
        seed,
        ..WorkloadConfig::default()
    })?
    .batch(updates);
    // Keys, headers and partitions as the producer makes them: one chat's updates (and the
    // re-deliveries of its updates) go to one partition.
    let planned = kafka::plan_records(&bytes, workers, usize::MAX, kafka::WhenFull::Stop);
    let mut per_partition: Vec<Vec<PreparedRecord>> = (0..workers).map(|_| Vec::new()).collect();
    for (i, planned) in planned.into_iter().enumerate() {
        let list = &mut per_partition[planned.partition as usize];
        let offset = list.len() as i64;
        list.push(PreparedRecord::prepare(ConsumedRecord {
            topic: TOPIC.into(),
            partition: planned.partition,
            offset,
            key: Some(planned.key.into_bytes()),
            payload: Some(planned.value),
            headers: planned
                .headers
                .into_iter()
                .map(|(name, value)| (name.to_owned(), Some(value.into_bytes())))
                .collect(),
            timestamp_ms: Some(1_760_000_000_000 + i as i64),
        }));
    }
    Ok(per_partition
        .into_iter()
        .enumerate()
        .map(|(p, records)| {
            let mut batches = Vec::new();
            let mut records = records.into_iter().peekable();
            while records.peek().is_some() {
                batches.push(records.by_ref().take(batch).collect());
            }
            Partition {
                partition: p as i32,
                batches,
            }
        })
        .collect())
}

/// The staging table of the raw rows, one per database (the rows of each worker carry its key).
const STAGING_DDL: &str = "CREATE UNLOGGED TABLE raw_updates_staging ( \
     worker integer NOT NULL, bot_id bigint NOT NULL, update_id bigint NOT NULL, \
     sha bytea NOT NULL, update_type text NOT NULL, bytes bytea NOT NULL, \
     jsonb_ok boolean NOT NULL, received_ms bigint, kafka_offset bigint NOT NULL, \
     ts_ms bigint, update_epoch bigint NOT NULL, scrubbed boolean NOT NULL)";

/// The writer's own raw_updates statement (`consumer::writer::raw_upsert_sql`, with its
/// raw_update_counts CTE) reading the CTE `from`; `order` is how its rows are put in key order
/// (DESIGN.md §5.8: concurrent writers lock shared keys in one order).
fn raw_insert(from: &str, order: &str) -> String {
    consumer::writer::raw_upsert_sql(
        &format!("{from},"),
        "u",
        order,
        consumer::writer::RawShared {
            topic: "$1",
            partition: "$2",
            processor_version: "$3",
            topic_incarnation: "0",
        },
    )
}

/// One raw row: the columns both raw shapes send.
struct RawRow<'r> {
    bot_id: i64,
    update_id: i64,
    sha: &'r [u8],
    update_type: &'r str,
    bytes: &'r [u8],
    jsonb_ok: bool,
    received_ms: Option<i64>,
    kafka_offset: i64,
    ts_ms: Option<i64>,
}

/// The raw rows of `batch`, one per key (the earliest copy), as the writer dedups them.
fn raw_rows(batch: &[PreparedRecord]) -> Vec<RawRow<'_>> {
    let mut rows: Vec<RawRow<'_>> = batch
        .iter()
        .filter_map(|r| match &r.content {
            Content::Update(n) => Some(RawRow {
                bot_id: n.raw.bot_id,
                update_id: n.raw.update_id,
                sha: &n.raw.payload_sha256,
                update_type: &n.raw.update_type,
                bytes: &n.raw.payload_bytes,
                jsonb_ok: n.raw.jsonb_ok,
                received_ms: r.record.received_at_ms(),
                kafka_offset: r.record.offset,
                ts_ms: r.record.timestamp_ms,
            }),
            Content::Rejected { .. } => None,
        })
        .collect();
    rows.sort_by(|a, b| {
        (a.bot_id, a.update_id, a.sha, a.kafka_offset).cmp(&(
            b.bot_id,
            b.update_id,
            b.sha,
            b.kafka_offset,
        ))
    });
    rows.dedup_by(|b, a| (a.bot_id, a.update_id, a.sha) == (b.bot_id, b.update_id, b.sha));
    rows
}

async fn raw_unnest(
    conn: &mut PgConnection,
    partition: i32,
    batch: &[PreparedRecord],
    jsonb: JsonbPayload,
) -> anyhow::Result<()> {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        raw_insert(
            "u AS (SELECT * FROM UNNEST($4::bigint[], $5::bigint[], $6::bytea[], $7::text[], \
                 $8::bytea[], $9::boolean[], $10::bigint[], $11::bigint[], $12::bigint[], \
                 $13::bigint[], $14::boolean[]) \
             AS u(bot_id, update_id, sha, update_type, bytes, jsonb_ok, received_ms, \
                  kafka_offset, ts_ms, update_epoch, scrubbed))",
            // The arrays are sorted by the client.
            "",
        )
    });
    let rows = raw_rows(batch);
    conn.execute("BEGIN").await?;
    sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(SQL.as_str()))
        .bind(TOPIC)
        .bind(partition)
        .bind(processor::PROCESSOR_VERSION)
        .bind(rows.iter().map(|r| r.bot_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.update_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.sha.to_vec()).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| r.update_type.to_owned())
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|r| r.bytes.to_vec()).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| r.jsonb_ok && jsonb == JsonbPayload::WhereValid)
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|r| r.received_ms).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.kafka_offset).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.ts_ms).collect::<Vec<_>>())
        .bind(vec![0_i64; rows.len()])
        .bind(vec![false; rows.len()])
        .fetch_one(&mut *conn)
        .await?;
    conn.execute("COMMIT").await?;
    Ok(())
}

/// PostgreSQL's binary COPY format: the header, tuples, the trailer.
struct BinaryCopy(Vec<u8>);

impl BinaryCopy {
    fn new() -> Self {
        let mut out = Vec::with_capacity(1 << 20);
        out.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        out.extend_from_slice(&0_i32.to_be_bytes());
        out.extend_from_slice(&0_i32.to_be_bytes());
        Self(out)
    }
    fn tuple(&mut self, fields: i16) {
        self.0.extend_from_slice(&fields.to_be_bytes());
    }
    fn bytes(&mut self, value: &[u8]) {
        self.0
            .extend_from_slice(&i32::try_from(value.len()).unwrap_or(i32::MAX).to_be_bytes());
        self.0.extend_from_slice(value);
    }
    fn int8(&mut self, value: Option<i64>) {
        match value {
            Some(v) => self.bytes(&v.to_be_bytes()),
            None => self.0.extend_from_slice(&(-1_i32).to_be_bytes()),
        }
    }
    fn int4(&mut self, value: i32) {
        self.bytes(&value.to_be_bytes());
    }
    fn boolean(&mut self, value: bool) {
        self.bytes(&[u8::from(value)]);
    }
    fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&(-1_i16).to_be_bytes());
        self.0
    }
}

async fn raw_copy_staging(
    conn: &mut PgConnection,
    partition: i32,
    batch: &[PreparedRecord],
) -> anyhow::Result<()> {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        // A heap returns rows in no particular order (a page freed by the previous batch's
        // DELETE is filled again): without the sort two workers inserting copies of the same
        // updates deadlock.
        raw_insert(
            "u AS (DELETE FROM raw_updates_staging WHERE worker = $4 RETURNING *)",
            "ORDER BY u.bot_id, u.update_id, u.sha",
        )
    });
    let rows = raw_rows(batch);
    let mut data = BinaryCopy::new();
    for r in &rows {
        data.tuple(12);
        data.int4(partition);
        data.int8(Some(r.bot_id));
        data.int8(Some(r.update_id));
        data.bytes(r.sha);
        data.bytes(r.update_type.as_bytes());
        data.bytes(r.bytes);
        data.boolean(r.jsonb_ok);
        data.int8(r.received_ms);
        data.int8(Some(r.kafka_offset));
        data.int8(r.ts_ms);
        data.int8(Some(0));
        data.boolean(false);
    }
    conn.execute("BEGIN").await?;
    let mut copy = conn
        .copy_in_raw("COPY raw_updates_staging FROM STDIN (FORMAT binary)")
        .await?;
    copy.send(data.finish()).await?;
    copy.finish().await?;
    sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(SQL.as_str()))
        .bind(TOPIC)
        .bind(partition)
        .bind(processor::PROCESSOR_VERSION)
        .bind(partition)
        .fetch_one(&mut *conn)
        .await?;
    conn.execute("COMMIT").await?;
    Ok(())
}

/// One partition's batches written by `shape`.
async fn write_partition(
    shape: Shape,
    pool: PgPool,
    part: &Partition,
    schema: Arc<ProjectionSchema>,
) -> anyhow::Result<()> {
    match shape {
        Shape::BatchWriter | Shape::BatchWriterNoJsonb => {
            let jsonb = if shape == Shape::BatchWriter {
                JsonbPayload::WhereValid
            } else {
                JsonbPayload::Never
            };
            let writer = BatchWriter::new(
                pool.clone(),
                GROUP,
                TOPIC,
                Duration::from_secs(60),
                processor::PROCESSOR_VERSION,
                schema,
                Arc::new(ConsumerStats::default()),
            )
            .with_jsonb(jsonb);
            let mut owner: Ownership = OffsetStore::new(pool, GROUP, TOPIC)
                .take_ownership_from(part.partition, 0)
                .await
                .context("owning the partition")?;
            for batch in &part.batches {
                writer
                    .write(&mut owner, batch)
                    .await
                    .map_err(|e| anyhow::anyhow!("writing a batch: {e}"))?;
            }
        }
        Shape::RawUnnest | Shape::RawUnnestNoJsonb | Shape::RawCopyStaging => {
            let mut conn = pool.acquire().await?;
            for batch in &part.batches {
                match shape {
                    Shape::RawUnnest => {
                        raw_unnest(&mut conn, part.partition, batch, JsonbPayload::WhereValid)
                            .await?
                    }
                    Shape::RawUnnestNoJsonb => {
                        raw_unnest(&mut conn, part.partition, batch, JsonbPayload::Never).await?
                    }
                    _ => raw_copy_staging(&mut conn, part.partition, batch).await?,
                }
            }
        }
    }
    Ok(())
}

/// CPU seconds so far of every backend connected to `db`'s database, by pid.
async fn backend_cpu(db: &TestDb) -> anyhow::Result<HashMap<i32, f64>> {
    let pids: Vec<i32> =
        sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
            .fetch_all(db.pool())
            .await?;
    Ok(pids
        .into_iter()
        .filter_map(|pid| Some((pid, procstat::cpu_seconds(&pid.to_string()).ok()?)))
        .collect())
}

/// What one run of a shape measured.
struct Measured {
    seconds: f64,
    client_cpu: f64,
    server_cpu: f64,
    /// The CPU of the database's own backends (not the WAL writer, checkpointer, autovacuum):
    /// unlike `server_cpu`, untouched by other sessions on a shared server.
    backend_cpu: f64,
    rows: i64,
    statements: u64,
}

async fn run_shape(
    shape: Shape,
    partitions: &[Partition],
    count_statements: bool,
) -> anyhow::Result<Measured> {
    let db: TestDb = pg::create().await?;
    if shape == Shape::RawCopyStaging {
        sqlx::query(STAGING_DDL).execute(db.pool()).await?;
    }
    let options: sqlx::postgres::PgConnectOptions = db.url().parse()?;
    let pool = PgPoolOptions::new()
        .max_connections(partitions.len() as u32 + 2)
        .min_connections(partitions.len() as u32)
        .connect_with(options)
        .await?;
    let schema = Arc::new(ProjectionSchema::load(&pool).await?);
    let server = pg::ServerCpu::of(&db).await?;
    // Settle the autovacuum launched by the schema, then measure.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let backends_before = backend_cpu(&db).await?;
    let server_before = server.seconds()?;
    let client_before = procstat::cpu_seconds("self")?;
    STATEMENTS.store(0, Ordering::Relaxed);
    COUNTING.store(count_statements, Ordering::Relaxed);
    let started = Instant::now();
    let results = futures::future::join_all(
        partitions
            .iter()
            .map(|part| write_partition(shape, pool.clone(), part, schema.clone())),
    )
    .await;
    let seconds = started.elapsed().as_secs_f64();
    COUNTING.store(false, Ordering::Relaxed);
    let client_cpu = procstat::cpu_seconds("self")? - client_before;
    let server_cpu = server.seconds()? - server_before;
    // Backends that connected during the run count from zero.
    let backend_cpu: f64 = backend_cpu(&db)
        .await?
        .into_iter()
        .map(|(pid, cpu)| cpu - backends_before.get(&pid).copied().unwrap_or(0.0))
        .sum();
    for r in results {
        r.with_context(|| format!("writing with {}", shape.name()))?;
    }
    let statements = STATEMENTS.load(Ordering::Relaxed);
    let tables = [
        "raw_updates",
        "chats",
        "users",
        "messages",
        "message_edits",
        "message_reactions",
        "chat_member_events",
        "callback_queries",
        "polls",
        "dead_letters",
    ];
    let mut rows = 0;
    for (table, n) in pg::row_counts(&db, &tables).await.unwrap_or_default() {
        if shape == Shape::BatchWriter
            || shape == Shape::BatchWriterNoJsonb
            || table == "raw_updates"
        {
            rows += n;
        }
    }
    pool.close().await;
    db.drop_database().await?;
    Ok(Measured {
        seconds,
        client_cpu,
        server_cpu,
        backend_cpu,
        rows,
        statements,
    })
}

/// The `write-path` benchmark.
pub async fn run(
    updates: usize,
    batch: usize,
    workers: i32,
    repeat: usize,
    seed: u64,
) -> anyhow::Result<()> {
    let subscriber = tracing_subscriber::registry().with(StatementCounter);
    tracing::subscriber::set_global_default(subscriber)
        .context("installing the statement counter")?;
    let started = Instant::now();
    let partitions = prepare(updates, batch, workers.max(1), seed)?;
    let batches: usize = partitions.iter().map(|p| p.batches.len()).sum();
    println!(
        "### Write path: statement shapes on the same batches\n\n{updates} realistic updates \
         (seed {seed}) prepared in {:.2?}, {workers} concurrent partition workers, \
         {batch} records per batch ({batches} batches); each run into a fresh database\n",
        started.elapsed()
    );
    // Statements per batch, in one untimed pass per shape.
    let mut per_batch = Vec::new();
    for shape in Shape::ALL {
        let m = run_shape(shape, &partitions, true).await?;
        let extra = if shape == Shape::RawCopyStaging {
            // COPY … FROM STDIN is not a sqlx query event: its start and its end are each a wait.
            2 * batches as u64
        } else {
            0
        };
        per_batch.push((shape, (m.statements + extra) as f64 / batches as f64));
    }
    let mut table = Table::new(&[
        "run",
        "shape",
        "load avg",
        "updates/s",
        "rows/s",
        "client CPU s / M upd",
        "PG backends CPU s / M upd",
        "client + backends CPU s / M upd",
        "whole PG server CPU s / M upd",
        "statements / batch",
    ]);
    for rep in 0..repeat {
        let mut order: Vec<Shape> = Shape::ALL.to_vec();
        if rep % 2 == 1 {
            order.reverse();
        }
        for shape in order {
            let load = procstat::load_average();
            let m = run_shape(shape, &partitions, false).await?;
            let per_m = 1e6 / updates as f64;
            let statements = per_batch
                .iter()
                .find(|(s, _)| *s == shape)
                .map_or(0.0, |(_, n)| *n);
            table.row(vec![
                (rep + 1).to_string(),
                shape.name().to_owned(),
                load,
                thousands(updates as f64 / m.seconds),
                thousands(m.rows as f64 / m.seconds),
                format!("{:.1}", m.client_cpu * per_m),
                format!("{:.1}", m.backend_cpu * per_m),
                format!("{:.1}", (m.client_cpu + m.backend_cpu) * per_m),
                format!("{:.1}", m.server_cpu * per_m),
                format!("{statements:.1}"),
            ]);
        }
    }
    table.print();
    Ok(())
}
