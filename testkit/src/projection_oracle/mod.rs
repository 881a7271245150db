//! The projection oracle: the final state every projection table must hold after a set of
//! updates, computed without the processor, and its comparison with PostgreSQL.
//!
//! [`Expected::from_updates`] reads each update's bytes with the oracle's own model
//! ([`model`]), turns it into the rows the schema describes ([`expect`]) and applies the
//! documented ordering rule (`migrations/0003_update_order.sql`): for each primary key, the row
//! of the update with the greatest (`src_epoch`, `src_update_id`) wins; history tables
//! (`message_edits`, `chat_member_events`, `chosen_inline_results`) have the update in their key,
//! so each update keeps its row. Delivery order, duplicates, replays and receive times do not
//! enter: the input is a set. Tombstoned updates (purged, erased, retained: `0002_tombstones.sql`)
//! have no effect and are left out ([`tombstoned_updates`]).
//!
//! [`State::read`] reads the same tables from PostgreSQL (every column but `processor_version`
//! and `updated_at`, see [`tables`]) and [`State::compare`] lists every difference, naming the
//! table and primary key of the row: missing, unexpected, or which columns differ with both
//! values. Comparing two read states (a shuffled run with an in-order one) works the same way.
//!
//! Guarantees: the oracle refuses ([`OracleError`]) input it cannot predict instead of guessing
//! (kinds it does not model, two different payloads under one update id of one epoch, …); a
//! column the database has and the oracle does not know fails the read, so a schema change
//! cannot silently escape the comparison. Tables left without prediction: none — every table of
//! `ProjectionTable::ALL` is compared; the kinds that feed `business_connections` and
//! `deleted_business_messages` are refused, so for input the oracle accepts those tables must be
//! empty.

pub mod expect;
pub mod model;
pub mod tables;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use anyhow::Context;
use serde_json::Value;
use sqlx::PgPool;

pub use expect::Row;
pub use tables::{TABLES, TableSpec};

/// One update the pipeline was given and must have projected.
#[derive(Debug, Clone, Copy)]
pub struct Update<'a> {
    pub bot_id: i64,
    /// The bot's update-id epoch this update belongs to (0 for a bot whose ids never restarted).
    pub epoch: i64,
    pub bytes: &'a [u8],
}

/// Why the oracle cannot predict a state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OracleError {
    /// The update's rows cannot be predicted (the reason says why).
    #[error("bot {bot_id}, update {update_id:?}: {reason}")]
    Unpredictable {
        bot_id: i64,
        update_id: Option<i64>,
        reason: String,
    },
    /// Two different payloads carry one update id in one epoch: which rows win depends on
    /// delivery order, so there is no single expected state.
    #[error(
        "bot {bot_id}, epoch {epoch}, update {update_id}: two different payloads under one update id"
    )]
    Collision {
        bot_id: i64,
        epoch: i64,
        update_id: i64,
    },
}

/// The rows of every projection table: table → (rendered primary key → row).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    tables: BTreeMap<&'static str, BTreeMap<String, Row>>,
}

/// The state the oracle predicts.
pub type Expected = State;

/// One difference between two states, naming its row.
#[derive(Debug, Clone, PartialEq)]
pub enum Mismatch {
    /// The expected state has the row; the actual one does not.
    Missing { table: &'static str, key: String },
    /// The actual state has a row the expected one does not.
    Unexpected { table: &'static str, key: String },
    /// Both have the row; these columns differ: (column, expected, actual).
    Differs {
        table: &'static str,
        key: String,
        columns: Vec<(&'static str, Value, Value)>,
    },
}

impl Mismatch {
    /// The table of the row.
    pub fn table(&self) -> &'static str {
        match self {
            Self::Missing { table, .. }
            | Self::Unexpected { table, .. }
            | Self::Differs { table, .. } => table,
        }
    }

    /// The row's primary key, rendered as in every message: `(bot_id=1, chat_id=-5, …)`.
    pub fn key(&self) -> &str {
        match self {
            Self::Missing { key, .. }
            | Self::Unexpected { key, .. }
            | Self::Differs { key, .. } => key,
        }
    }
}

/// A value for a message: JSON, strings cut at 120 characters.
fn shown(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 120 {
        format!("{}…", text.chars().take(120).collect::<String>())
    } else {
        text
    }
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing { table, key } => write!(f, "{table} {key}: missing"),
            Self::Unexpected { table, key } => write!(f, "{table} {key}: unexpected row"),
            Self::Differs {
                table,
                key,
                columns,
            } => {
                write!(f, "{table} {key}:")?;
                for (i, (column, expected, actual)) in columns.iter().enumerate() {
                    let sep = if i == 0 { "" } else { ";" };
                    write!(
                        f,
                        "{sep} {column} expected {} found {}",
                        shown(expected),
                        shown(actual)
                    )?;
                }
                Ok(())
            }
        }
    }
}

/// `(bot_id=1, chat_id=-5, …)`, the way every mismatch names a row.
fn render_key(spec: &TableSpec, row: &Row) -> String {
    let parts: Vec<String> = spec
        .key
        .iter()
        .map(|k| {
            let value = spec.position(k).map_or(&Value::Null, |at| &row[at]);
            format!("{k}={value}")
        })
        .collect();
    format!("({})", parts.join(", "))
}

/// The ordering key of a row: (src_epoch, src_update_id).
fn ordering(spec: &TableSpec, row: &Row) -> (i64, i64) {
    let get = |column: &str| {
        spec.position(column)
            .and_then(|at| row[at].as_i64())
            .unwrap_or(i64::MIN)
    };
    (get("src_epoch"), get("src_update_id"))
}

impl State {
    /// The state after `updates` (any order, duplicates allowed), by the ordering rule.
    pub fn from_updates<'a>(
        updates: impl IntoIterator<Item = Update<'a>>,
    ) -> Result<Self, OracleError> {
        // One payload per (bot, epoch, update id): duplicates collapse, a different payload is
        // a collision.
        let mut distinct: BTreeMap<(i64, i64, i64), &'a [u8]> = BTreeMap::new();
        let mut derived = Vec::new();
        for update in updates {
            let d =
                expect::derive(update.bot_id, update.epoch, update.bytes).map_err(|reason| {
                    OracleError::Unpredictable {
                        bot_id: update.bot_id,
                        update_id: id_of(update.bytes),
                        reason,
                    }
                })?;
            let key = (update.bot_id, update.epoch, d.update_id);
            match distinct.get(&key) {
                Some(seen) if *seen == update.bytes => continue,
                Some(_) => {
                    return Err(OracleError::Collision {
                        bot_id: update.bot_id,
                        epoch: update.epoch,
                        update_id: d.update_id,
                    });
                }
                None => {
                    distinct.insert(key, update.bytes);
                }
            }
            derived.push(d);
        }
        let mut state = State::default();
        for d in derived {
            for (spec, row) in d.rows {
                state.upsert(spec, row);
            }
        }
        Ok(state)
    }

    /// [`State::from_updates`] without the updates in `tombstoned` (bot id, update id): a
    /// purged, erased or retained record has no effect.
    pub fn from_updates_except<'a>(
        updates: impl IntoIterator<Item = Update<'a>>,
        tombstoned: &BTreeSet<(i64, i64)>,
    ) -> Result<Self, OracleError> {
        Self::from_updates(
            updates
                .into_iter()
                .filter(|u| id_of(u.bytes).is_none_or(|id| !tombstoned.contains(&(u.bot_id, id)))),
        )
    }

    /// Last writer wins on (src_epoch, src_update_id); a row of the same update (the same key
    /// twice in one update never happens for accepted input) keeps the first.
    fn upsert(&mut self, spec: &'static TableSpec, row: Row) {
        let rows = self.tables.entry(spec.name).or_default();
        let key = render_key(spec, &row);
        match rows.get(&key) {
            Some(existing) if ordering(spec, existing) >= ordering(spec, &row) => {}
            _ => {
                rows.insert(key, row);
            }
        }
    }

    /// Reads every projection table's rows of `bots` from PostgreSQL. Fails when a table has a
    /// column the oracle does not know.
    pub async fn read(pool: &PgPool, bots: &[i64]) -> anyhow::Result<Self> {
        let mut state = State::default();
        for spec in TABLES {
            state
                .tables
                .insert(spec.name, read_table(pool, spec, bots).await?);
        }
        Ok(state)
    }

    /// Rows of `table` in this state.
    pub fn rows(&self, table: &str) -> usize {
        self.tables.get(table).map_or(0, BTreeMap::len)
    }

    /// Rows over all tables.
    pub fn total_rows(&self) -> usize {
        self.tables.values().map(BTreeMap::len).sum()
    }

    /// Every difference between this (expected) state and `actual`, by table in
    /// `ProjectionTable::ALL` order, then by key.
    pub fn compare(&self, actual: &State) -> Vec<Mismatch> {
        let empty = BTreeMap::new();
        let mut out = Vec::new();
        for spec in TABLES {
            let expected = self.tables.get(spec.name).unwrap_or(&empty);
            let found = actual.tables.get(spec.name).unwrap_or(&empty);
            for (key, row) in expected {
                let Some(other) = found.get(key) else {
                    out.push(Mismatch::Missing {
                        table: spec.name,
                        key: key.clone(),
                    });
                    continue;
                };
                let columns: Vec<(&'static str, Value, Value)> = spec
                    .columns
                    .iter()
                    .zip(row.iter().zip(other))
                    .filter(|(_, (a, b))| a != b)
                    .map(|(c, (a, b))| (*c, a.clone(), b.clone()))
                    .collect();
                if !columns.is_empty() {
                    out.push(Mismatch::Differs {
                        table: spec.name,
                        key: key.clone(),
                        columns,
                    });
                }
            }
            for key in found.keys().filter(|k| !expected.contains_key(*k)) {
                out.push(Mismatch::Unexpected {
                    table: spec.name,
                    key: key.clone(),
                });
            }
        }
        out
    }
}

/// The integer `update_id` of an update's bytes.
fn id_of(bytes: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(bytes).ok()?;
    serde_json::from_str::<Value>(&model::sanitise(text))
        .ok()?
        .get("update_id")?
        .as_i64()
}

async fn read_table(
    pool: &PgPool,
    spec: &'static TableSpec,
    bots: &[i64],
) -> anyhow::Result<BTreeMap<String, Row>> {
    // The table name comes from the oracle's fixed list, never from input.
    let sql = format!(
        "SELECT (to_jsonb(t) - 'updated_at' - 'processor_version')::text FROM {} t \
         WHERE bot_id = ANY($1)",
        spec.name
    );
    let texts: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(bots)
        .fetch_all(pool)
        .await
        .with_context(|| format!("reading projection table {}", spec.name))?;
    let mut rows = BTreeMap::new();
    for text in texts {
        let Value::Object(mut object) = serde_json::from_str(&text)? else {
            anyhow::bail!("{}: to_jsonb gave a non-object", spec.name);
        };
        let row: Row = spec
            .columns
            .iter()
            .map(|c| object.remove(*c).unwrap_or(Value::Null))
            .collect();
        if let Some(unknown) = object.keys().next() {
            anyhow::bail!(
                "table {} has column {unknown}, which the projection oracle does not know: \
                 teach testkit::projection_oracle what it must hold",
                spec.name
            );
        }
        rows.insert(render_key(spec, &row), row);
    }
    Ok(rows)
}

/// The updates of `bots` with a tombstone (any kind): they must have no effect.
pub async fn tombstoned_updates(
    pool: &PgPool,
    bots: &[i64],
) -> anyhow::Result<BTreeSet<(i64, i64)>> {
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT bot_id, update_id FROM tombstones \
         WHERE bot_id = ANY($1) AND update_id IS NOT NULL",
    )
    .bind(bots)
    .fetch_all(pool)
    .await
    .context("reading tombstones")?;
    Ok(rows.into_iter().collect())
}

/// What [`check`] found.
#[derive(Debug, Default)]
pub struct Report {
    /// Rows the oracle expects, over all tables.
    pub expected_rows: usize,
    /// Rows PostgreSQL holds for the bots, over all tables.
    pub actual_rows: usize,
    /// Every differing row.
    pub mismatches: Vec<Mismatch>,
}

impl Report {
    /// Whether PostgreSQL holds exactly the expected state.
    pub fn is_clean(&self) -> bool {
        self.mismatches.is_empty()
    }

    /// The first `n` mismatches, one a line, and how many more there are.
    pub fn describe(&self, n: usize) -> String {
        let mut lines: Vec<String> = self
            .mismatches
            .iter()
            .take(n)
            .map(|m| m.to_string())
            .collect();
        if self.mismatches.len() > n {
            lines.push(format!("… and {} more", self.mismatches.len() - n));
        }
        lines.join("\n")
    }
}

/// Predicts the state after `updates` minus those in `tombstoned` (bot id, update id), reads
/// the projections of `bots` from `pool` and compares.
pub async fn check<'a>(
    pool: &PgPool,
    bots: &[i64],
    updates: impl IntoIterator<Item = Update<'a>>,
    tombstoned: &BTreeSet<(i64, i64)>,
) -> anyhow::Result<Report> {
    let expected = State::from_updates_except(updates, tombstoned)?;
    let actual = State::read(pool, bots).await?;
    Ok(Report {
        expected_rows: expected.total_rows(),
        actual_rows: actual.total_rows(),
        mismatches: expected.compare(&actual),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::updates::{callback_query, edited, message, poll, poll_answer};
    use serde_json::json;

    fn state(updates: &[(i64, Vec<u8>)]) -> State {
        State::from_updates(updates.iter().map(|(epoch, bytes)| Update {
            bot_id: 1,
            epoch: *epoch,
            bytes,
        }))
        .unwrap()
    }

    fn column(state: &State, table: &str, key: &str, column: &str) -> Value {
        let spec = tables::table(table).unwrap();
        let row = state.tables[table]
            .get(key)
            .unwrap_or_else(|| panic!("{table} {key} not in {:?}", state.tables[table].keys()));
        row[spec.position(column).unwrap()].clone()
    }

    #[test]
    fn the_oracle_knows_every_projection_table_and_column() {
        use consumer::projection::ProjectionTable;
        let names: Vec<&str> = ProjectionTable::ALL.iter().map(|t| t.name()).collect();
        let ours: Vec<&str> = TABLES.iter().map(|t| t.name).collect();
        assert_eq!(ours, names);
        for table in ProjectionTable::ALL {
            let spec = tables::table(table.name()).unwrap();
            let mut written: Vec<&str> = table.columns().to_vec();
            let mut known: Vec<&str> = spec.columns.to_vec();
            written.sort_unstable();
            known.sort_unstable();
            assert_eq!(known, written, "{table}");
        }
    }

    #[test]
    fn an_edit_delivered_before_its_original_still_wins_and_is_kept_as_history() {
        let original = message(10, -100, 42, 7, 1_000, "first");
        let edit = edited(11, -100, 42, 7, 1_000, 1_005, "second");
        for input in [
            vec![(0, original.clone()), (0, edit.clone())],
            vec![(0, edit.clone()), (0, original.clone()), (0, edit.clone())],
        ] {
            let s = state(&input);
            let key = r#"(bot_id=1, chat_id=-100, business_connection_id="", message_id=7)"#;
            assert_eq!(column(&s, "messages", key, "text"), "second");
            assert_eq!(column(&s, "messages", key, "src_date"), 1_005);
            assert_eq!(column(&s, "messages", key, "src_update_id"), 11);
            assert_eq!(s.rows("message_edits"), 1);
        }
    }

    #[test]
    fn a_newer_dateless_update_beats_an_older_dated_one_and_has_src_date_zero() {
        let s = state(&[
            (0, callback_query(20, "cb", 42, "Newer", -100, 7, "x")),
            (0, message(19, -100, 42, 7, 1_000, "hi")),
        ]);
        let key = "(bot_id=1, user_id=42)";
        assert_eq!(column(&s, "users", key, "first_name"), "Newer");
        assert_eq!(column(&s, "users", key, "src_date"), 0);
        assert_eq!(column(&s, "users", key, "src_update_id"), 20);
    }

    #[test]
    fn a_tombstoned_update_has_no_effect() {
        let original = message(10, -100, 42, 7, 1_000, "kept");
        let purged = edited(11, -100, 42, 7, 1_000, 1_005, "purged");
        let s = State::from_updates_except(
            [&original, &purged].map(|bytes| Update {
                bot_id: 1,
                epoch: 0,
                bytes,
            }),
            &BTreeSet::from([(1, 11)]),
        )
        .unwrap();
        let key = r#"(bot_id=1, chat_id=-100, business_connection_id="", message_id=7)"#;
        assert_eq!(column(&s, "messages", key, "text"), "kept");
        assert_eq!(s.rows("message_edits"), 0);
    }

    #[test]
    fn a_later_epoch_wins_over_higher_ids_of_an_earlier_one() {
        let s = state(&[
            (1, poll(5, "p", "restarted", 1)),
            (0, poll(900, "p", "old", 3)),
        ]);
        let key = r#"(bot_id=1, poll_id="p")"#;
        assert_eq!(column(&s, "polls", key, "question"), "restarted");
        assert_eq!(column(&s, "polls", key, "src_epoch"), 1);
    }

    #[test]
    fn poll_answers_keep_each_voters_latest_answer() {
        let s = state(&[
            (0, poll_answer(31, "p", 42, "A", &[])),
            (0, poll_answer(30, "p", 42, "A", &[1])),
        ]);
        let key = r#"(bot_id=1, poll_id="p", voter_type="user", voter_id=42)"#;
        assert_eq!(column(&s, "poll_answers", key, "option_ids"), json!([]));
    }

    #[test]
    fn two_payloads_under_one_update_id_are_refused_and_unmodelled_kinds_too() {
        let a = message(10, -100, 42, 7, 1_000, "a");
        let b = message(10, -100, 42, 7, 1_000, "b");
        let err = State::from_updates([&a, &b].map(|bytes| Update {
            bot_id: 1,
            epoch: 0,
            bytes,
        }))
        .unwrap_err();
        assert!(
            matches!(err, OracleError::Collision { update_id: 10, .. }),
            "{err}"
        );
        let business = br#"{"update_id":3,"business_connection":{"id":"b","user":{"id":1,"is_bot":false},"date":1}}"#;
        let err = State::from_updates([Update {
            bot_id: 1,
            epoch: 0,
            bytes: business,
        }])
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("does not model kind business_connection"),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_kind_yields_the_chats_and_users_found_by_shape_and_nothing_else() {
        let update =
            br#"{"update_id":4,"future_kind":{"chat":{"id":-5,"type":"supergroup"},"date":9,
            "deep":[{"who":{"id":8,"is_bot":false,"first_name":"N"}}],"origin":{"type":"user"}}}"#;
        let s = state(&[(0, update.to_vec())]);
        assert_eq!(
            (s.rows("chats"), s.rows("users"), s.total_rows()),
            (1, 1, 2)
        );
        assert_eq!(column(&s, "chats", "(bot_id=1, chat_id=-5)", "src_date"), 0);
    }

    #[test]
    fn nul_and_lone_surrogates_in_text_become_replacement_characters() {
        let update = br#"{"update_id":4,"message":{"message_id":1,"date":5,"chat":{"id":2,"type":"private"},"text":"a\u0000b\ud800c"}}"#;
        let s = state(&[(0, update.to_vec())]);
        let key = r#"(bot_id=1, chat_id=2, business_connection_id="", message_id=1)"#;
        assert_eq!(column(&s, "messages", key, "text"), "a\u{FFFD}b\u{FFFD}c");
    }

    #[test]
    fn a_comparison_names_missing_unexpected_and_differing_rows() {
        let expected = state(&[(0, message(10, -100, 42, 7, 1_000, "hi"))]);
        let mut actual = expected.clone();
        let messages = actual.tables.get_mut("messages").unwrap();
        let key = r#"(bot_id=1, chat_id=-100, business_connection_id="", message_id=7)"#;
        let spec = tables::table("messages").unwrap();
        messages.get_mut(key).unwrap()[spec.position("text").unwrap()] = json!("bye");
        actual.tables.get_mut("users").unwrap().clear();
        let extra = state(&[(0, poll(11, "p", "q", 0))]);
        actual.tables.insert("polls", extra.tables["polls"].clone());
        let found: Vec<String> = expected
            .compare(&actual)
            .iter()
            .map(|m| m.to_string())
            .collect();
        assert_eq!(
            found,
            [
                "users (bot_id=1, user_id=42): missing".to_owned(),
                format!(r#"messages {key}: text expected "hi" found "bye""#),
                r#"polls (bot_id=1, poll_id="p"): unexpected row"#.to_owned(),
            ]
        );
    }
}
