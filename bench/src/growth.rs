//! Growth curve: does the sink's insert speed hold as the database grows? For each stored size, a
//! fresh database is preloaded with that many stored updates (bulk `COPY`, not through the
//! broker), then `tgingest consumer` drains the same fresh workload topic into it (timed as in
//! `sink`, [`sink::measure_drain`]); the figure is compared with the empty database's in the same
//! run, and the bytes each stored update costs (table + indexes + TOAST) are reported with what
//! dominates them.
//!
//! The preload is history of the same bot, shaped like the workload: the workload topic is
//! drained once into a template database, and its rows — raw updates and every projection table
//! — are copied `k` times into the target (k = stored / the template's raw updates, rounded), each
//! copy moved into the past so it collides with nothing: update ids, message ids and Kafka offsets
//! shifted down by the template's span per copy, dates and times by a day per copy, and the text
//! ids of callback queries, polls and inline queries suffixed with the copy's number. Chats and
//! users stay the same chats and users (their ids are not shifted), so the new messages land
//! inside the same chats' index ranges as the stored ones, as a live bot's would. Tables keyed by
//! the entity alone (chats, users, business connections: latest state, not history) get one copy,
//! older than the workload, which the workload's updates then rewrite. So every table holds
//! rows in the template's proportions, except those three, which do not grow with history.
//!
//! The load: each table's indexes and primary key are dropped, the copies streamed from the
//! template with `COPY (SELECT …) TO STDOUT (FORMAT binary)` into `COPY … FROM STDIN (FORMAT
//! binary, FREEZE)` (after a TRUNCATE in the same transaction), then the primary keys and indexes
//! re-created from the definitions the migrated database had (`pg_get_constraintdef`,
//! `pg_get_indexdef`): the schema is exactly the migrations'. `raw_update_counts` is filled as
//! migration 7 fills it, the bot's update-id epoch copied from the template, every table
//! vacuumed and analysed, and a CHECKPOINT taken, so nothing of the preload is left for the
//! measured drain to do. The
//! drain must add exactly the template's raw updates (the history collides with none of them).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use futures::StreamExt;
use sqlx::{AssertSqlSafe, Connection, PgConnection};
use testkit::TestDb;

use crate::kafka;
use crate::pg;
use crate::procstat;
use crate::report::{Table, thousands};
use crate::sink::{self, Drain};

/// Settings of one `growth` run.
#[derive(Debug, Clone)]
pub struct GrowthSettings {
    /// Stored updates to preload before each measurement (0: an empty database).
    pub stored: Vec<usize>,
    /// Updates of the workload topic drained at every size.
    pub updates: usize,
    pub partitions: i32,
    pub partition_budget_bytes: usize,
    pub repeat: usize,
    pub seed: u64,
    pub log_dir: PathBuf,
}

/// Columns whose value is moved per history copy (`g` = the copy's number, from 1).
fn history_expr(column: &str, spans: &Spans) -> String {
    match column {
        "update_id" | "src_update_id" => format!("{column} - g * {}", spans.update_ids),
        "message_id" => format!("{column} - g * {}", spans.message_ids),
        "kafka_offset" => format!("{column} - g * {}", spans.offsets),
        "date" | "src_date" | "edit_date" => format!("{column} - g * 86400"),
        "received_at" | "kafka_timestamp" | "inserted_at" | "updated_at" => {
            format!("{column} - g * interval '1 day'")
        }
        "callback_query_id" | "poll_id" | "inline_query_id" => format!("{column} || '~' || g"),
        _ => column.to_owned(),
    }
}

/// Key columns that [`history_expr`] makes distinct per copy: a table whose primary key has one
/// of them can hold many copies; the others hold one.
const MOVED_KEYS: &[&str] = &[
    "update_id",
    "src_update_id",
    "message_id",
    "callback_query_id",
    "poll_id",
    "inline_query_id",
];

/// How far one history copy moves the template's ids.
#[derive(Debug, Clone, Copy)]
struct Spans {
    update_ids: i64,
    message_ids: i64,
    offsets: i64,
}

impl Spans {
    async fn of(template: &TestDb) -> anyhow::Result<Self> {
        let (update_ids, offsets): (i64, i64) = sqlx::query_as(
            "SELECT max(update_id) - min(update_id) + 1, max(kafka_offset) + 1 FROM raw_updates",
        )
        .fetch_one(template.pool())
        .await?;
        let mut low = i64::MAX;
        let mut high = i64::MIN;
        for table in tables_with_column(template, "message_id").await? {
            let (min, max): (Option<i64>, Option<i64>) = sqlx::query_as(AssertSqlSafe(format!(
                "SELECT min(message_id), max(message_id) FROM {table}"
            )))
            .fetch_one(template.pool())
            .await?;
            if let (Some(min), Some(max)) = (min, max) {
                low = low.min(min);
                high = high.max(max);
            }
        }
        Ok(Self {
            update_ids,
            message_ids: if high >= low { high - low + 1 } else { 1 },
            offsets,
        })
    }
}

async fn tables_with_column(db: &TestDb, column: &str) -> anyhow::Result<Vec<String>> {
    let tables: Vec<String> = sink::data_tables().into_iter().map(str::to_owned).collect();
    Ok(sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.columns \
         WHERE table_schema = 'public' AND column_name = $1 AND table_name = ANY($2)",
    )
    .bind(column)
    .bind(&tables)
    .fetch_all(db.pool())
    .await?)
}

/// A table's columns in order, with their types.
async fn columns(conn: &mut PgConnection, table: &str) -> anyhow::Result<Vec<(String, String)>> {
    Ok(sqlx::query_as(
        "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute \
         WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await?)
}

/// A table's primary key columns.
async fn key_columns(conn: &mut PgConnection, table: &str) -> anyhow::Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT a.attname::text FROM pg_index i \
         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
         WHERE i.indrelid = $1::regclass AND i.indisprimary",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await?)
}

/// The index-backed constraints (name, definition) and the other indexes (name, definition) of a
/// table, as the migrations made them.
async fn index_definitions(
    conn: &mut PgConnection,
    table: &str,
) -> anyhow::Result<(Vec<(String, String)>, Vec<(String, String)>)> {
    let constraints = sqlx::query_as(
        "SELECT conname::text, pg_get_constraintdef(oid) FROM pg_constraint \
         WHERE conrelid = $1::regclass AND conindid <> 0 ORDER BY conname",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await?;
    let indexes = sqlx::query_as(
        "SELECT c.relname::text, pg_get_indexdef(i.indexrelid) FROM pg_index i \
         JOIN pg_class c ON c.oid = i.indexrelid \
         WHERE i.indrelid = $1::regclass \
           AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid) \
         ORDER BY c.relname",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await?;
    Ok((constraints, indexes))
}

async fn execute(conn: &mut PgConnection, sql: String) -> anyhow::Result<()> {
    sqlx::query(AssertSqlSafe(sql.clone()))
        .execute(&mut *conn)
        .await
        .with_context(|| sql)?;
    Ok(())
}

/// Streams `copies` history copies of `table` from the template into the empty `table` of the
/// target (no indexes), frozen; returns the rows written.
async fn copy_history(
    src: &mut PgConnection,
    dst: &mut PgConnection,
    table: &str,
    copies: usize,
    spans: &Spans,
) -> anyhow::Result<u64> {
    let cols = columns(src, table).await?;
    let keys = key_columns(src, table).await?;
    let copies = if keys.iter().any(|k| MOVED_KEYS.contains(&k.as_str())) {
        copies
    } else {
        1
    };
    let select = cols
        .iter()
        .map(|(name, ty)| format!("({})::{ty}", history_expr(name, spans)))
        .collect::<Vec<_>>()
        .join(", ");
    let mut tx = dst.begin().await?;
    execute(&mut tx, format!("TRUNCATE {table}")).await?;
    let mut sink = tx
        .copy_in_raw(&format!("COPY {table} FROM STDIN (FORMAT binary, FREEZE)"))
        .await
        .with_context(|| format!("COPY into {table}"))?;
    {
        let mut source = src
            .copy_out_raw(&format!(
                "COPY (SELECT {select} FROM {table}, generate_series(1, {copies}) AS g) \
                 TO STDOUT (FORMAT binary)"
            ))
            .await
            .with_context(|| format!("COPY out of {table}"))?;
        // The server sends a message per row; one CopyData of about a megabyte goes back.
        let mut buffer = Vec::with_capacity(2 << 20);
        while let Some(chunk) = source.next().await {
            buffer.extend_from_slice(&chunk?);
            if buffer.len() >= 1 << 20 {
                sink.send(buffer.as_slice()).await?;
                buffer.clear();
            }
        }
        if !buffer.is_empty() {
            sink.send(buffer.as_slice()).await?;
        }
    }
    let rows = sink.finish().await?;
    tx.commit().await?;
    Ok(rows)
}

/// Preloads `target` (freshly migrated) with history copies of `template`'s rows, about `stored`
/// raw updates; returns the raw updates stored.
async fn preload(template: &TestDb, target: &TestDb, stored: usize) -> anyhow::Result<i64> {
    let spans = Spans::of(template).await?;
    let raw: i64 = sqlx::query_scalar("SELECT count(*) FROM raw_updates")
        .fetch_one(template.pool())
        .await?;
    let copies = ((stored as f64 / raw.max(1) as f64).round() as usize).max(1);
    let mut src = template.connect().await?;
    let mut dst = target.connect().await?;
    execute(&mut dst, "SET maintenance_work_mem = '512MB'".to_owned()).await?;
    for table in sink::data_tables() {
        let (constraints, indexes) = index_definitions(&mut dst, table).await?;
        for (name, _) in &indexes {
            execute(&mut dst, format!("DROP INDEX {name}")).await?;
        }
        for (name, _) in &constraints {
            execute(
                &mut dst,
                format!("ALTER TABLE {table} DROP CONSTRAINT {name}"),
            )
            .await?;
        }
        let started = Instant::now();
        let rows = copy_history(&mut src, &mut dst, table, copies, &spans).await?;
        let copied = started.elapsed();
        for (name, definition) in &constraints {
            execute(
                &mut dst,
                format!("ALTER TABLE {table} ADD CONSTRAINT {name} {definition}"),
            )
            .await?;
        }
        for (_, definition) in &indexes {
            execute(&mut dst, definition.clone()).await?;
        }
        eprintln!(
            "growth preload: {table} {rows} rows copied in {:.1} s, indexed in {:.1} s",
            copied.as_secs_f64(),
            (started.elapsed() - copied).as_secs_f64()
        );
    }
    // As migration 7 counts the updates stored before it.
    execute(
        &mut dst,
        "INSERT INTO raw_update_counts \
             (bot_id, kafka_topic, kafka_partition, counted_by, updates, newest_received_at) \
         SELECT bot_id, kafka_topic, kafka_partition, 'consumer', count(*), max(received_at) \
           FROM raw_updates GROUP BY bot_id, kafka_topic, kafka_partition"
            .to_owned(),
    )
    .await?;
    // The bot's epoch, started before the oldest copy.
    let epochs: Vec<(i64, i64, f64, f64)> = sqlx::query_as(
        "SELECT bot_id, epoch, extract(epoch FROM started_at)::float8, \
                extract(epoch FROM last_received_at)::float8 FROM bot_update_epochs",
    )
    .fetch_all(template.pool())
    .await?;
    let days_back = f64::from(u32::try_from(copies)?) + 1.0;
    for (bot, epoch, started, last) in epochs {
        sqlx::query(
            "INSERT INTO bot_update_epochs (bot_id, epoch, started_at, last_received_at) \
             VALUES ($1, $2, to_timestamp($3), to_timestamp($4))",
        )
        .bind(bot)
        .bind(epoch)
        .bind(started - days_back * 86400.0)
        .bind(last)
        .execute(&mut dst)
        .await?;
    }
    for table in sink::data_tables()
        .into_iter()
        .chain(["raw_update_counts", "bot_update_epochs"])
    {
        execute(&mut dst, format!("VACUUM (ANALYZE) {table}")).await?;
    }
    // The preload's dirty pages are written now, not by a checkpoint inside the measured drain.
    execute(&mut dst, "CHECKPOINT".to_owned()).await?;
    src.close().await?;
    dst.close().await?;
    Ok(sqlx::query_scalar("SELECT count(*) FROM raw_updates")
        .fetch_one(target.pool())
        .await?)
}

/// Bytes of one table: heap (main fork), indexes, and the rest (TOAST, free space and visibility
/// maps).
#[derive(Debug, Clone)]
struct TableSize {
    table: String,
    /// The planner's row count (exact after the preload's VACUUM ANALYZE).
    rows: f64,
    heap: i64,
    indexes: i64,
    toast: i64,
}

impl TableSize {
    fn total(&self) -> i64 {
        self.heap + self.indexes + self.toast
    }
}

async fn table_sizes(db: &TestDb) -> anyhow::Result<Vec<TableSize>> {
    let mut sizes = Vec::new();
    for table in sink::data_tables() {
        let (heap, indexes, total, rows): (i64, i64, i64, f32) = sqlx::query_as(
            "SELECT pg_relation_size($1::regclass), pg_indexes_size($1::regclass), \
                    pg_total_relation_size($1::regclass), \
                    greatest(reltuples, 0) FROM pg_class WHERE oid = $1::regclass",
        )
        .bind(table)
        .fetch_one(db.pool())
        .await?;
        sizes.push(TableSize {
            table: table.to_owned(),
            rows: f64::from(rows),
            heap,
            indexes,
            toast: total - heap - indexes,
        });
    }
    sizes.sort_by_key(|s| std::cmp::Reverse(s.total()));
    Ok(sizes)
}

/// The largest indexes of the data tables: (index, bytes).
async fn largest_indexes(db: &TestDb, n: i64) -> anyhow::Result<Vec<(String, i64)>> {
    let tables: Vec<String> = sink::data_tables().into_iter().map(str::to_owned).collect();
    Ok(sqlx::query_as(
        "SELECT c.relname::text, pg_relation_size(i.indexrelid) FROM pg_index i \
         JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid \
         WHERE t.relname = ANY($1) ORDER BY 2 DESC LIMIT $2",
    )
    .bind(&tables)
    .bind(n)
    .fetch_all(db.pool())
    .await?)
}

/// One measurement at one stored size.
#[derive(Debug)]
struct Point {
    requested: usize,
    stored: i64,
    preload_seconds: f64,
    sizes: Vec<TableSize>,
    largest_indexes: Vec<(String, i64)>,
    drain: Drain,
}

async fn measure(
    settings: &GrowthSettings,
    pre: &sink::Preloaded,
    template: &TestDb,
    template_raw: i64,
    stored: usize,
    group: &str,
) -> anyhow::Result<Point> {
    let db = pg::create().await?;
    let result = async {
        let started = Instant::now();
        let stored_now = if stored > 0 {
            preload(template, &db, stored).await?
        } else {
            0
        };
        let preload_seconds = started.elapsed().as_secs_f64();
        let sizes = table_sizes(&db).await?;
        let largest_indexes = largest_indexes(&db, 5).await?;
        let drain = sink::drain_with_tgingest(
            pre.broker.bootstrap_servers(),
            &pre.topic,
            group,
            &db,
            pre.total,
            &[],
            &settings.log_dir.join("growth-tgingest.log"),
        )
        .await?;
        let after: i64 = sqlx::query_scalar("SELECT count(*) FROM raw_updates")
            .fetch_one(db.pool())
            .await?;
        anyhow::ensure!(
            after == stored_now + template_raw,
            "after the drain raw_updates holds {after} rows: {stored_now} stored + \
             {template_raw} of the workload expected (the history collided with the workload)"
        );
        anyhow::Ok(Point {
            requested: stored,
            stored: stored_now,
            preload_seconds,
            sizes,
            largest_indexes,
            drain,
        })
    }
    .await;
    db.drop_database().await?;
    result
}

fn mib(bytes: i64) -> String {
    format!("{:.0} MiB", bytes as f64 / 1_048_576.0)
}

/// The `growth` benchmark.
pub async fn run(settings: &GrowthSettings) -> anyhow::Result<()> {
    let pre = sink::preload_topic(
        settings.seed,
        settings.updates,
        settings.partitions,
        settings.partition_budget_bytes,
        kafka::WhenFull::Stop,
    )
    .await?;
    println!(
        "### Growth ({} records on {} partitions drained into databases already holding {} \
         stored updates)\n",
        pre.total,
        pre.partitions,
        settings
            .stored
            .iter()
            .map(|s| thousands(*s as f64))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("Workload: {}\n", pre.profile.summary());
    let template = pg::create().await?;
    let result = async {
        sink::drain_with_tgingest(
            pre.broker.bootstrap_servers(),
            &pre.topic,
            "bench-growth-template",
            &template,
            pre.total,
            &[],
            &settings.log_dir.join("growth-tgingest.log"),
        )
        .await?;
        let template_raw: i64 = sqlx::query_scalar("SELECT count(*) FROM raw_updates")
            .fetch_one(template.pool())
            .await?;
        let mut table = Table::new(&[
            "run",
            "stored updates",
            "load (1/5/15 min)",
            "preload s",
            "stored bytes/update (table+indexes+TOAST)",
            "tgingest upd/s",
            "vs empty database (target at 10M ≥ 0.8×)",
            "client CPU-s/M upd",
            "PG CPU-s/M upd",
        ]);
        let mut largest: Option<Point> = None;
        for rep in 1..=settings.repeat {
            let mut sizes = settings.stored.clone();
            if rep % 2 == 0 {
                sizes.reverse();
            }
            let mut points = Vec::new();
            for stored in sizes {
                let load = procstat::load_average();
                let point = measure(
                    settings,
                    &pre,
                    &template,
                    template_raw,
                    stored,
                    &format!("bench-growth-{rep}-{stored}"),
                )
                .await?;
                eprintln!(
                    "growth run {rep}: {} stored, preload {:.0} s, {:.0}/s",
                    point.stored,
                    point.preload_seconds,
                    point.drain.rate()
                );
                points.push((load, point));
            }
            points.sort_by_key(|(_, p)| p.requested);
            let empty = points
                .iter()
                .find(|(_, p)| p.stored == 0)
                .map(|(_, p)| p.drain.rate());
            for (load, p) in points {
                let total: i64 = p.sizes.iter().map(TableSize::total).sum();
                table.row(vec![
                    rep.to_string(),
                    thousands(p.stored as f64),
                    load,
                    format!("{:.0}", p.preload_seconds),
                    if p.stored > 0 {
                        format!("{:.0}", total as f64 / p.stored as f64)
                    } else {
                        "—".to_owned()
                    },
                    thousands(p.drain.rate()),
                    empty.map_or_else(
                        || "n/a".to_owned(),
                        |e| format!("{:.2}×", p.drain.rate() / e),
                    ),
                    format!("{:.1}", p.drain.cpu_per_million()),
                    format!("{:.1}", p.drain.pg_cpu_per_million()),
                ]);
                if largest.as_ref().is_none_or(|l| p.stored > l.stored) {
                    largest = Some(p);
                }
            }
        }
        println!("Sink throughput by stored updates (same topic, same run):\n");
        table.print();
        if let Some(p) = largest.filter(|p| p.stored > 0) {
            let per = |b: i64| format!("{:.0}", b as f64 / p.stored as f64);
            println!(
                "What a stored update costs at {} stored updates (bytes per stored update; \
                 the rest = TOAST, free space and visibility maps):\n",
                thousands(p.stored as f64)
            );
            let mut sizes = Table::new(&[
                "table",
                "rows",
                "total",
                "heap B/upd",
                "indexes B/upd",
                "rest B/upd",
                "total B/upd",
            ]);
            for s in &p.sizes {
                sizes.row(vec![
                    s.table.clone(),
                    thousands(s.rows),
                    mib(s.total()),
                    per(s.heap),
                    per(s.indexes),
                    per(s.toast),
                    per(s.total()),
                ]);
            }
            let total: i64 = p.sizes.iter().map(TableSize::total).sum();
            sizes.row(vec![
                "all data tables".to_owned(),
                String::new(),
                mib(total),
                per(p.sizes.iter().map(|s| s.heap).sum()),
                per(p.sizes.iter().map(|s| s.indexes).sum()),
                per(p.sizes.iter().map(|s| s.toast).sum()),
                per(total),
            ]);
            sizes.print();
            println!(
                "Largest indexes: {}\n",
                p.largest_indexes
                    .iter()
                    .map(|(i, b)| format!("{i} {} ({} B/upd)", mib(*b), per(*b)))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        anyhow::Ok(())
    }
    .await;
    template.drop_database().await?;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table whose primary key has none of the moved keys gets one history copy, not k: the
    /// growth curve would silently leave it small. Only the latest-state tables may.
    #[tokio::test]
    async fn only_the_latest_state_tables_get_a_single_history_copy() {
        let db = pg::create().await.expect("database");
        let mut conn = db.connect().await.expect("connect");
        let mut single = Vec::new();
        for table in sink::data_tables() {
            let keys = key_columns(&mut conn, table).await.expect("key columns");
            assert!(!keys.is_empty(), "{table} has no primary key");
            if !keys.iter().any(|k| MOVED_KEYS.contains(&k.as_str())) {
                single.push(table);
            }
        }
        conn.close().await.expect("close");
        db.drop_database().await.expect("drop");
        assert_eq!(single, ["chats", "users", "business_connections"]);
    }
}
