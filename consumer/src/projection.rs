//! Set-based, last-writer-wins upserts of the processor's typed rows into the projection tables.
//!
//! Each projection table is declared once, in the `projection_tables!` list, which generates its
//! [`ProjectionRow`] mapping and the [`ProjectionTable`] registry; every other table list derives
//! from [`ProjectionTable::ALL`], so a table cannot be missing from one of them. Each table's
//! column types and primary key are read from the catalog at startup
//! ([`ProjectionSchema::load`]), so the statement casts every column to its declared type and
//! conflicts on the real key. For one batch, each table gets exactly one statement:
//!
//! ```sql
//! INSERT INTO t AS t (c…, processor_version)
//! SELECT CAST(u.c AS type)…, $n FROM UNNEST($1::bigint[], …) AS u(c…)
//! WHERE (SELECT (cur.src_epoch, cur.src_update_id, cur.processor_version)
//!            >= (u.src_epoch, u.src_update_id, $n)
//!        FROM t AS cur WHERE cur.key… = u.key…) IS NOT TRUE
//! ON CONFLICT (key…) DO UPDATE SET c = EXCLUDED.c…
//! WHERE (EXCLUDED.src_epoch, EXCLUDED.src_update_id, EXCLUDED.processor_version)
//!     > (t.src_epoch, t.src_update_id, t.processor_version)
//! ```
//!
//! The ordering key is the update's id within its bot's update-id epoch
//! (`migrations/0003_update_order.sql`, [`crate::update_epochs`]), never a date or a receive
//! time: `src_date` is stored (the update's own date, 0 when it has none) but orders nothing, so
//! dated and dateless rows of one table (users, chats) compare by update id.
//!
//! An erasure replaces what an update wrote with what its scrubbed copy derives
//! ([`ProjectionSchema::rewrite_updates`]): per table, in the same order, a DELETE of the rows the
//! update is still the last writer of (by key and (src_epoch, src_update_id)), then the upsert.
//!
//! Guarantees: rows are deduplicated by key inside the batch (keeping the greatest
//! (src_epoch, src_update_id)) so no statement touches a row twice (SQLSTATE 21000), and sorted
//! by key so concurrent batches lock shared rows (users, chats) in the same order; tables are
//! written in the fixed order of [`ProjectionTable::ALL`]. Equal input rewrites nothing; older
//! input never regresses a row. In the shared-state tables (chats, users, business connections:
//! [`ProjectionTable::shared_state`]) a row the guard would refuse is filtered out before the
//! insert (compared with the committed row), because `ON CONFLICT DO UPDATE … WHERE` locks the
//! conflicting row even when its `WHERE` refuses: so a batch of unchanged or older updates never
//! waits for a busy chat or user that another partition's worker is updating. The guard stays in
//! `ON CONFLICT` for a row a concurrent transaction commits between the filter and the insert.
//! The filter is a scalar subquery on purpose: the planner runs it once per row as a primary-key
//! probe, whereas a `NOT EXISTS` anti-join was planned as a hash join over a sequential scan of
//! the whole table while the table was small or its statistics stale. The other tables take no
//! filter: their rows belong to one update or one chat's history, which only the chat's
//! partition writes, and filtering every table cost up to a quarter of the sink's throughput
//! (`scripts/bench-quick`: `NOT EXISTS` on every table 0.48–0.53× the ideal, the scalar probe on
//! every table 0.38–0.58×, no filter 0.63–0.69×, this shape 0.66–0.70×).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use anyhow::{Context, bail};
use processor::Normalized;
use sqlx::{AssertSqlSafe, PgConnection, PgPool};

/// One column value of a projection row.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Value {
    Null,
    Int(i64),
    Bool(bool),
    Text(String),
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}
impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::Text(v.clone())
    }
}
impl From<&'static str> for Value {
    fn from(v: &'static str) -> Self {
        Value::Text(v.to_owned())
    }
}
impl<T> From<&Option<T>> for Value
where
    T: Clone + Into<Value>,
{
    fn from(v: &Option<T>) -> Self {
        v.clone().map_or(Value::Null, Into::into)
    }
}
impl From<&i64> for Value {
    fn from(v: &i64) -> Self {
        Value::Int(*v)
    }
}
impl From<&bool> for Value {
    fn from(v: &bool) -> Self {
        Value::Bool(*v)
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}
impl From<&&'static str> for Value {
    fn from(v: &&'static str) -> Self {
        Value::Text((*v).to_owned())
    }
}

/// A processor row struct that maps onto one projection table.
pub trait ProjectionRow {
    /// The table.
    const TABLE: &'static str;
    /// The columns written, in the order of [`ProjectionRow::push_values`]; always ends with
    /// `src_date, src_epoch, src_update_id`.
    const COLUMNS: &'static [&'static str];
    /// Appends this row's values, with the update-id epoch of its update; `src_date` is 0 when
    /// the update carries no date.
    fn push_values(&self, epoch: i64, out: &mut Vec<Value>);
}

// The one list of projection tables. Each entry names the table's [`ProjectionTable`] variant,
// the table (which is also the `Normalized` field carrying its rows), the processor row type and
// its columns; the row mapping, the registry and row collection are all generated from it.
// Exhaustive destructuring (no `..`) turns drift into compile errors: a field added to a
// processor row until its column is listed, a row list added to `Normalized` until its table is
// registered here.
macro_rules! projection_tables {
    ($(
        $variant:ident($table:ident): $ty:path = [$($field:ident),* $(,)?];
    )*) => {
        $(
            impl ProjectionRow for $ty {
                const TABLE: &'static str = stringify!($table);
                const COLUMNS: &'static [&'static str] =
                    &[$(stringify!($field),)* "src_date", "src_epoch", "src_update_id"];
                fn push_values(&self, epoch: i64, out: &mut Vec<Value>) {
                    let $ty { $($field,)* src_date, src_update_id } = self;
                    $( out.push(Value::from($field)); )*
                    out.push(Value::Int(src_date.unwrap_or(0)));
                    out.push(Value::Int(epoch));
                    out.push(Value::Int(*src_update_id));
                }
            }
        )*

        /// A projection table: the registry every table list (SQL, row collection, the demo
        /// summary, benches, the migration test) derives from.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ProjectionTable {
            $($variant,)*
        }

        impl ProjectionTable {
            /// Every projection table, in the fixed write order (deadlock freedom: every batch
            /// locks tables in this order). Shared, hot rows (chats, users) come first.
            pub const ALL: &'static [ProjectionTable] = &[$(ProjectionTable::$variant,)*];

            /// Whether the table holds the latest state of something every partition's worker
            /// may write (a chat, a user, a business connection), rather than rows of one update
            /// or one chat's history: its rows are the hot ones concurrent batches meet.
            pub const fn shared_state(self) -> bool {
                matches!(
                    self,
                    ProjectionTable::Chats
                        | ProjectionTable::Users
                        | ProjectionTable::BusinessConnections
                )
            }

            /// The table's name.
            pub const fn name(self) -> &'static str {
                match self {
                    $(ProjectionTable::$variant => <$ty as ProjectionRow>::TABLE,)*
                }
            }

            /// The columns written, ending with `src_date, src_epoch, src_update_id`.
            pub const fn columns(self) -> &'static [&'static str] {
                match self {
                    $(ProjectionTable::$variant => <$ty as ProjectionRow>::COLUMNS,)*
                }
            }

            /// This table's rows of `updates` (each with its update-id epoch), as values in
            /// column order.
            fn collect_rows(self, updates: &[(&Normalized, i64)]) -> Vec<Vec<Value>> {
                fn push<R: ProjectionRow>(rows: &[R], epoch: i64, out: &mut Vec<Vec<Value>>) {
                    for row in rows {
                        let mut values = Vec::with_capacity(R::COLUMNS.len());
                        row.push_values(epoch, &mut values);
                        out.push(values);
                    }
                }
                let mut out = Vec::new();
                for (n, epoch) in updates {
                    let Normalized {
                        kind: _,
                        src_date: _,
                        raw: _,
                        projection_error: _,
                        $($table: _,)*
                    } = n;
                    match self {
                        $(ProjectionTable::$variant => push(&n.$table, *epoch, &mut out),)*
                    }
                }
                out
            }
        }
    };
}

projection_tables! {
    Chats(chats): processor::ChatRow = [
        bot_id, chat_id, chat_type, title, username, first_name, last_name, is_forum,
    ];
    Users(users): processor::UserRow = [
        bot_id, user_id, is_bot, first_name, last_name, username, language_code, is_premium,
    ];
    Messages(messages): processor::MessageRow = [
        bot_id, chat_id, business_connection_id, message_id, message_thread_id, is_topic_message,
        is_channel_post, from_user_id, sender_chat_id, sender_business_bot_id, via_bot_id, date,
        edit_date, text, entities, caption, caption_entities, media_kind, media_file_id,
        media_file_unique_id, service_kind, media_group_id, author_signature, reply_to_message_id,
        forward_origin_type, forward_origin_user_id, forward_origin_chat_id,
        forward_origin_message_id, forward_origin_date, forward_origin,
    ];
    MessageEdits(message_edits): processor::MessageEditRow = [
        bot_id, chat_id, business_connection_id, message_id, edit_date, is_channel_post, text,
        entities, caption, caption_entities, media_kind, media_file_id, media_file_unique_id,
    ];
    MessageReactions(message_reactions): processor::MessageReactionRow = [
        bot_id, chat_id, message_id, actor_type, actor_id, new_reaction, old_reaction, date,
    ];
    MessageReactionCounts(message_reaction_counts): processor::MessageReactionCountRow = [
        bot_id, chat_id, message_id, reactions, date,
    ];
    ChatMemberEvents(chat_member_events): processor::ChatMemberEventRow = [
        bot_id, chat_id, user_id, event_kind, actor_user_id, date, old_status, new_status,
        old_chat_member, new_chat_member, invite_link, via_join_request,
        via_chat_folder_invite_link, user_chat_id, bio,
    ];
    CallbackQueries(callback_queries): processor::CallbackQueryRow = [
        bot_id, callback_query_id, from_user_id, chat_instance, data, game_short_name,
        inline_message_id, message_chat_id, message_id,
    ];
    Polls(polls): processor::PollRow = [
        bot_id, poll_id, question, question_entities, options, total_voter_count, is_closed,
        is_anonymous, poll_type, allows_multiple_answers, correct_option_id, explanation,
        explanation_entities, open_period, close_date,
    ];
    PollAnswers(poll_answers): processor::PollAnswerRow = [
        bot_id, poll_id, voter_type, voter_id, option_ids,
    ];
    DeletedBusinessMessages(deleted_business_messages): processor::DeletedBusinessMessageRow = [
        bot_id, business_connection_id, chat_id, message_id,
    ];
    BusinessConnections(business_connections): processor::BusinessConnectionRow = [
        bot_id, business_connection_id, user_id, user_chat_id, date, can_reply, rights, is_enabled,
    ];
    InlineQueries(inline_queries): processor::InlineQueryRow = [
        bot_id, inline_query_id, from_user_id, query, query_offset, chat_type,
    ];
    ChosenInlineResults(chosen_inline_results): processor::ChosenInlineResultRow = [
        bot_id, result_id, from_user_id, query, inline_message_id,
    ];
}

impl std::fmt::Display for ProjectionTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How values of a column travel in the UNNEST arrays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Carrier {
    Int,
    Bool,
    Text,
}

/// One table's prepared statement shape.
#[derive(Debug)]
struct TableStatement {
    table: ProjectionTable,
    carriers: Vec<Carrier>,
    /// Positions (in the table's column list) of the primary key columns.
    key_positions: Vec<usize>,
    src_epoch_pos: usize,
    src_update_id_pos: usize,
    sql: Arc<str>,
    /// Deletes the rows given by key that were last written by the given (epoch, update).
    delete_sql: Arc<str>,
}

/// The projection tables as the database declares them, with their upsert statements.
#[derive(Debug)]
pub struct ProjectionSchema {
    statements: Vec<TableStatement>,
}

impl ProjectionSchema {
    /// Reads column types and primary keys from the catalog and builds the statements. Fails,
    /// naming the table and column, when the schema lacks something the processor produces.
    pub async fn load(pool: &PgPool) -> anyhow::Result<Self> {
        let mut statements = Vec::with_capacity(ProjectionTable::ALL.len());
        for &table in ProjectionTable::ALL {
            let declared: Vec<(String, String)> = sqlx::query_as(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) \
                 FROM pg_attribute a \
                 WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
            )
            .bind(table.name())
            .fetch_all(pool)
            .await
            .with_context(|| format!("reading the columns of table {table}"))?;
            if declared.is_empty() {
                bail!("table {table} is missing: run `tgingest migrate`");
            }
            let types: HashMap<&str, &str> = declared
                .iter()
                .map(|(n, t)| (n.as_str(), t.as_str()))
                .collect();
            for required in [
                "src_date",
                "src_epoch",
                "src_update_id",
                "processor_version",
            ] {
                if !types.contains_key(required) {
                    bail!("table {table} has no column {required}: the schema is too old");
                }
            }
            let key: Vec<String> = sqlx::query_scalar(
                "SELECT a.attname::text \
                 FROM pg_index i \
                 CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                 WHERE i.indrelid = to_regclass($1) AND i.indisprimary \
                 ORDER BY k.n",
            )
            .bind(table.name())
            .fetch_all(pool)
            .await
            .with_context(|| format!("reading the primary key of table {table}"))?;
            if key.is_empty() {
                bail!("table {table} has no primary key to upsert on");
            }
            statements.push(TableStatement::build(table, table.columns(), &types, &key)?);
        }
        Ok(Self { statements })
    }

    /// Upserts the projection rows of `updates` (each with its update-id epoch), one
    /// statement per non-empty table, in the fixed table order. Returns rows written per table.
    pub async fn upsert(
        &self,
        conn: &mut PgConnection,
        updates: &[(&Normalized, i64)],
        processor_version: i32,
    ) -> Result<Vec<(&'static str, u64)>, sqlx::Error> {
        let mut written = Vec::new();
        for statement in &self.statements {
            let rows = statement.table.collect_rows(updates);
            if rows.is_empty() {
                continue;
            }
            let rows = statement.dedup_and_sort(rows);
            let affected = statement.execute(conn, rows, processor_version).await?;
            written.push((statement.table.name(), affected));
        }
        Ok(written)
    }
}

impl ProjectionSchema {
    /// Replaces what `old` updates wrote with what `new` updates derive, table by table in the
    /// fixed order (so it never deadlocks with a batch): in each table where `delete_in` says so,
    /// the rows of `old` that each `old` update still is the last writer of (same key, same
    /// (src_epoch, src_update_id)) are deleted; then the rows of `new` are upserted as a batch
    /// would. An erasure uses it: `old` the updates as stored, `new` the scrubbed ones. Returns
    /// (table, rows deleted, rows written) for each table touched.
    pub async fn rewrite_updates(
        &self,
        conn: &mut PgConnection,
        old: &[(&Normalized, i64)],
        new: &[(&Normalized, i64)],
        processor_version: i32,
        delete_in: impl Fn(ProjectionTable) -> bool,
    ) -> Result<Vec<(&'static str, u64, u64)>, sqlx::Error> {
        let mut out = Vec::new();
        for statement in &self.statements {
            let mut deleted = 0;
            if delete_in(statement.table) {
                let rows = statement.table.collect_rows(old);
                if !rows.is_empty() {
                    deleted = statement.delete_written(conn, rows).await?;
                }
            }
            let mut written = 0;
            let rows = statement.table.collect_rows(new);
            if !rows.is_empty() {
                let rows = statement.dedup_and_sort(rows);
                written = statement.execute(conn, rows, processor_version).await?;
            }
            if deleted > 0 || written > 0 {
                out.push((statement.table.name(), deleted, written));
            }
        }
        Ok(out)
    }
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

impl TableStatement {
    fn build(
        table: ProjectionTable,
        columns: &[&'static str],
        types: &HashMap<&str, &str>,
        key: &[String],
    ) -> anyhow::Result<Self> {
        let mut carriers = Vec::with_capacity(columns.len());
        for column in columns {
            let Some(ty) = types.get(column) else {
                bail!("table {table} has no column {column}: the schema is too old");
            };
            carriers.push(match *ty {
                "bigint" | "integer" | "smallint" => Carrier::Int,
                "boolean" => Carrier::Bool,
                _ => Carrier::Text,
            });
        }
        let mut key_positions = Vec::with_capacity(key.len());
        for k in key {
            let Some(pos) = columns.iter().position(|c| c == k) else {
                bail!("the primary key column {table}.{k} is not produced by the processor");
            };
            key_positions.push(pos);
        }
        let position = |name: &str| columns.iter().position(|c| *c == name);
        let (Some(src_epoch_pos), Some(src_update_id_pos)) =
            (position("src_epoch"), position("src_update_id"))
        else {
            bail!("projection {table} lacks its ordering key");
        };

        let column_list = columns
            .iter()
            .map(|c| quote(c))
            .collect::<Vec<_>>()
            .join(", ");
        let mut select = String::new();
        let mut unnest = String::new();
        for (i, (column, carrier)) in columns.iter().zip(&carriers).enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            let array = match carrier {
                Carrier::Int => "bigint[]",
                Carrier::Bool => "boolean[]",
                Carrier::Text => "text[]",
            };
            let _ = write!(unnest, "{sep}${}::{array}", i + 1);
            let _ = write!(
                select,
                "{sep}CAST(u.{} AS {})",
                quote(column),
                types.get(column).copied().unwrap_or("text")
            );
        }
        let version_param = columns.len() + 1;
        let updates = columns
            .iter()
            .filter(|c| !key.iter().any(|k| k == *c))
            .map(|c| format!("{0} = EXCLUDED.{0}", quote(c)))
            .chain(std::iter::once(
                "processor_version = EXCLUDED.processor_version".to_owned(),
            ))
            .chain(
                types
                    .contains_key("updated_at")
                    .then(|| "updated_at = now()".to_owned()),
            )
            .collect::<Vec<_>>()
            .join(", ");
        let key_list = key.iter().map(|k| quote(k)).collect::<Vec<_>>().join(", ");
        let cast = |column: &str| {
            format!(
                "CAST(u.{} AS {})",
                quote(column),
                types.get(column).copied().unwrap_or("text")
            )
        };
        let stored_key = key
            .iter()
            .map(|k| format!("cur.{} = {}", quote(k), cast(k)))
            .collect::<Vec<_>>()
            .join(" AND ");
        // Shared-state tables only: on the tables written row-per-update (messages and the like)
        // a probe per row costs about as much as the insert's own conflict check, for a lock no
        // other partition's worker contends (see the module header for the measurements).
        let filter = if table.shared_state() {
            format!(
                "WHERE (SELECT (cur.src_epoch, cur.src_update_id, cur.processor_version) \
                     >= ({epoch}, {update_id}, ${version_param}::integer) \
                 FROM {table} AS cur WHERE {stored_key}) IS NOT TRUE ",
                table = quote(table.name()),
                epoch = cast("src_epoch"),
                update_id = cast("src_update_id"),
            )
        } else {
            String::new()
        };
        let sql = format!(
            "INSERT INTO {table} AS t ({column_list}, processor_version) \
             SELECT {select}, ${version_param}::integer FROM UNNEST({unnest}) AS u({column_list}) \
             {filter}ON CONFLICT ({key_list}) DO UPDATE SET {updates} \
             WHERE (EXCLUDED.src_epoch, EXCLUDED.src_update_id, EXCLUDED.processor_version) \
                 > (t.src_epoch, t.src_update_id, t.processor_version)",
            table = quote(table.name()),
        );
        // Positional names: a key column may itself be src_update_id (history tables).
        let mut using = String::new();
        let mut matches = String::new();
        for (n, (k, &pos)) in key.iter().zip(&key_positions).enumerate() {
            let array = match carriers[pos] {
                Carrier::Int => "bigint[]",
                Carrier::Bool => "boolean[]",
                Carrier::Text => "text[]",
            };
            let _ = write!(using, "${}::{array}, ", n + 1);
            let _ = write!(
                matches,
                "t.{} = CAST(d.k{n} AS {}) AND ",
                quote(k),
                types.get(k.as_str()).copied().unwrap_or("text")
            );
        }
        let names: Vec<String> = (0..key.len()).map(|n| format!("k{n}")).collect();
        let delete_sql = format!(
            "DELETE FROM {table} AS t USING UNNEST({using}${e}::bigint[], ${u}::bigint[]) \
                 AS d({names}, src_epoch, src_update_id) \
             WHERE {matches}t.src_epoch = d.src_epoch AND t.src_update_id = d.src_update_id",
            table = quote(table.name()),
            e = key.len() + 1,
            u = key.len() + 2,
            names = names.join(", "),
        );
        Ok(Self {
            table,
            carriers,
            key_positions,
            src_epoch_pos,
            src_update_id_pos,
            sql: sql.into(),
            delete_sql: delete_sql.into(),
        })
    }

    fn key(&self, row: &[Value]) -> Vec<Value> {
        self.key_positions.iter().map(|&p| row[p].clone()).collect()
    }

    fn order(&self, row: &[Value]) -> (Value, Value) {
        (
            row[self.src_epoch_pos].clone(),
            row[self.src_update_id_pos].clone(),
        )
    }

    /// Collapses rows with the same key to the one with the greatest ordering key, sorted by key.
    fn dedup_and_sort(&self, rows: Vec<Vec<Value>>) -> Vec<Vec<Value>> {
        let mut best: HashMap<Vec<Value>, Vec<Value>> = HashMap::with_capacity(rows.len());
        for row in rows {
            let key = self.key(&row);
            match best.get(&key) {
                Some(existing) if self.order(existing) >= self.order(&row) => {}
                _ => {
                    best.insert(key, row);
                }
            }
        }
        let mut rows: Vec<(Vec<Value>, Vec<Value>)> = best.into_iter().collect();
        rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        rows.into_iter().map(|(_, row)| row).collect()
    }

    /// Deletes, in key order, the rows keyed as `rows` whose last writer is the row's own
    /// (src_epoch, src_update_id).
    async fn delete_written(
        &self,
        conn: &mut PgConnection,
        rows: Vec<Vec<Value>>,
    ) -> Result<u64, sqlx::Error> {
        let mut targets: Vec<(Vec<Value>, (Value, Value))> = rows
            .into_iter()
            .map(|row| (self.key(&row), self.order(&row)))
            .collect();
        targets.sort_unstable();
        targets.dedup();
        let mut query = sqlx::query(AssertSqlSafe(self.delete_sql.clone()));
        for (n, &pos) in self.key_positions.iter().enumerate() {
            let column = targets.iter().map(|(key, _)| &key[n]);
            query = bind_column(query, self.table, pos, self.carriers[pos], column)?;
        }
        let int = |v: &Value| match v {
            Value::Int(i) => *i,
            _ => 0,
        };
        let epochs: Vec<i64> = targets.iter().map(|(_, (e, _))| int(e)).collect();
        let updates: Vec<i64> = targets.iter().map(|(_, (_, u))| int(u)).collect();
        let result = query.bind(epochs).bind(updates).execute(conn).await?;
        Ok(result.rows_affected())
    }

    async fn execute(
        &self,
        conn: &mut PgConnection,
        rows: Vec<Vec<Value>>,
        processor_version: i32,
    ) -> Result<u64, sqlx::Error> {
        let mut query = sqlx::query(AssertSqlSafe(self.sql.clone()));
        for (i, &carrier) in self.carriers.iter().enumerate() {
            let column = rows.iter().map(|row| &row[i]);
            query = bind_column(query, self.table, i, carrier, column)?;
        }
        let result = query.bind(processor_version).execute(conn).await?;
        Ok(result.rows_affected())
    }
}

/// A processor field whose Rust type does not fit the column's declared type: a defect in the
/// schema or the processor, reported as a protocol error (transient: the partition stalls with
/// an error naming the column rather than dead-lettering every record).
/// Binds one column of rows as the array its carrier type names (column `index` of `table`).
fn bind_column<'q, 'v>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    table: ProjectionTable,
    index: usize,
    carrier: Carrier,
    column: impl Iterator<Item = &'v Value>,
) -> Result<sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>, sqlx::Error> {
    Ok(match carrier {
        Carrier::Int => query.bind(
            column
                .map(|v| match v {
                    Value::Int(n) => Ok(Some(*n)),
                    Value::Null => Ok(None),
                    other => Err(mismatch(table, index, other)),
                })
                .collect::<Result<Vec<Option<i64>>, _>>()?,
        ),
        Carrier::Bool => query.bind(
            column
                .map(|v| match v {
                    Value::Bool(b) => Ok(Some(*b)),
                    Value::Null => Ok(None),
                    other => Err(mismatch(table, index, other)),
                })
                .collect::<Result<Vec<Option<bool>>, _>>()?,
        ),
        Carrier::Text => query.bind(
            column
                .map(|v| match v {
                    Value::Text(s) => Some(s.clone()),
                    Value::Int(n) => Some(n.to_string()),
                    Value::Bool(b) => Some(b.to_string()),
                    Value::Null => None,
                })
                .collect::<Vec<Option<String>>>(),
        ),
    })
}

fn mismatch(table: ProjectionTable, index: usize, value: &Value) -> sqlx::Error {
    sqlx::Error::Protocol(format!(
        "projection {table} column #{index}: value {value:?} does not fit the declared type"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statement() -> TableStatement {
        let columns: &[&'static str] = &[
            "bot_id",
            "user_id",
            "first_name",
            "src_date",
            "src_epoch",
            "src_update_id",
        ];
        let types: HashMap<&str, &str> = [
            ("bot_id", "bigint"),
            ("user_id", "bigint"),
            ("first_name", "text"),
            ("src_date", "bigint"),
            ("src_epoch", "bigint"),
            ("src_update_id", "bigint"),
            ("processor_version", "integer"),
        ]
        .into_iter()
        .collect();
        TableStatement::build(
            ProjectionTable::Users,
            columns,
            &types,
            &["bot_id".into(), "user_id".into()],
        )
        .expect("a valid table shape")
    }

    fn row(user: i64, name: &str, date: i64, epoch: i64, update: i64) -> Vec<Value> {
        vec![
            Value::Int(1),
            Value::Int(user),
            Value::Text(name.into()),
            Value::Int(date),
            Value::Int(epoch),
            Value::Int(update),
        ]
    }

    #[test]
    fn duplicates_in_a_batch_collapse_to_the_newest_update_and_rows_come_out_sorted_by_key() {
        let s = statement();
        let rows = s.dedup_and_sort(vec![
            row(9, "old", 10, 0, 1),
            row(3, "only", 5, 0, 2),
            row(9, "new-epoch", 0, 1, 0),
            row(9, "later-date-lower-update", 99, 0, 2),
        ]);
        assert_eq!(
            rows,
            vec![row(3, "only", 5, 0, 2), row(9, "new-epoch", 0, 1, 0)]
        );
        let rows = s.dedup_and_sort(vec![
            row(9, "later-date-lower-update", 99, 0, 1),
            row(9, "no-date-higher-update", 0, 0, 2),
        ]);
        assert_eq!(
            rows,
            vec![row(9, "no-date-higher-update", 0, 0, 2)],
            "the date orders nothing"
        );
    }

    #[test]
    fn the_statement_is_last_writer_wins_on_the_ordering_key() {
        let sql = statement().sql;
        assert!(sql.contains("ON CONFLICT (\"bot_id\", \"user_id\") DO UPDATE SET \"first_name\" = EXCLUDED.\"first_name\""), "{sql}");
        assert!(
            sql.contains(
                "WHERE (EXCLUDED.src_epoch, EXCLUDED.src_update_id, EXCLUDED.processor_version) "
            ),
            "{sql}"
        );
        assert!(
            sql.contains(
                "UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[])"
            ),
            "{sql}"
        );
        assert!(
            sql.contains(
                "WHERE (SELECT (cur.src_epoch, cur.src_update_id, cur.processor_version) \
                 >= (CAST(u.\"src_epoch\" AS bigint), CAST(u.\"src_update_id\" AS bigint), $7::integer) \
                 FROM \"users\" AS cur WHERE \
                 cur.\"bot_id\" = CAST(u.\"bot_id\" AS bigint) AND cur.\"user_id\" = CAST(u.\"user_id\" AS bigint)) \
                 IS NOT TRUE"
            ),
            "the guard's refusals are filtered before the insert, so they lock nothing: {sql}"
        );
    }

    #[test]
    fn the_erasure_delete_matches_the_key_and_the_last_writer_only() {
        let sql = statement().delete_sql;
        assert!(
            sql.contains(
                "USING UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[]) \
                 AS d(k0, k1, src_epoch, src_update_id)"
            ),
            "{sql}"
        );
        assert!(
            sql.contains(
                "t.\"bot_id\" = CAST(d.k0 AS bigint) AND t.\"user_id\" = CAST(d.k1 AS bigint) \
                 AND t.src_epoch = d.src_epoch AND t.src_update_id = d.src_update_id"
            ),
            "{sql}"
        );
    }

    #[test]
    fn a_column_the_schema_lacks_is_named() {
        let types: HashMap<&str, &str> = [("bot_id", "bigint")].into_iter().collect();
        let err = TableStatement::build(
            ProjectionTable::Users,
            &["bot_id", "nick"],
            &types,
            &["bot_id".into()],
        )
        .expect_err("a missing column must be refused");
        assert!(
            err.to_string().contains("users has no column nick"),
            "{err}"
        );
    }
}
