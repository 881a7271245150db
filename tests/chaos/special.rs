//! Bad and unusual updates the feeder mixes into realistic traffic, each with the effect the
//! pipeline must give it: rows (kept in `raw_updates`, bytes unchanged) or a dead letter.
//!
//! A special takes the update id of the realistic update it replaces, so ids stay increasing and
//! Telegram's queue semantics (confirming offset N forgets every id below N) stay intact.

use std::sync::Arc;

use crate::pipeline::{FUTURE_KIND, Generated};

/// Text that the constraint-violation scenario's extra CHECK constraint refuses.
pub const CONSTRAINT_POISON: &str = "chaos: this text violates a constraint";
/// SQL-injection attempts stored verbatim as message text.
pub const INJECTIONS: &[&str] = &[
    "'); DROP TABLE messages; --",
    "Robert'); DROP TABLE raw_updates;-- \\",
    "1' OR '1'='1'; DELETE FROM consumer_offsets; --",
    "$$; TRUNCATE chats; $$ \u{0027}\u{0022}",
];
/// The chat every special message is posted in (per bot).
pub const CHAOS_CHAT: i64 = -1_009_900_000_001;
/// Larger than the producer's `message.max.bytes` (1 000 000).
pub const OVERSIZED_TEXT_BYTES: usize = 1_100_000;

/// The effect an update must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// A `raw_updates` row with exactly these bytes (and its projections).
    Rows,
    /// A dead letter for every Kafka record carrying it, and no rows.
    DeadLetter,
}

/// A bad or unusual update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    /// Text with `\u0000`, which jsonb refuses (22P05): kept as bytes, text sanitised.
    NulText,
    /// Text with a lone surrogate escape, which jsonb refuses (22P02): kept as bytes.
    LoneSurrogate,
    /// Text the scenario's CHECK constraint refuses (23514): a dead letter.
    ConstraintViolation,
    /// Not JSON at all (only a webhook can deliver it).
    TruncatedJson,
    /// JSON that is not an object.
    NotAnObject,
    /// An object without `update_id`.
    NoUpdateId,
    /// Larger than the producer's `message.max.bytes`.
    Oversized,
    /// A kind this codebase does not know.
    UnknownKind,
    /// A known kind with fields this codebase does not know.
    UnknownFields,
    /// A message whose text is an SQL-injection attempt.
    SqlInjection,
    /// The realistic update itself, its first text (a message's, an edit's, a poll option's)
    /// prefixed with [`PADDING_BYTES`] of ASCII: large records in the realistic chats, so they
    /// spread over the partitions as the realistic traffic does. Unchanged without a text.
    Padded,
}

/// How many bytes [`Special::Padded`] adds to a text.
pub const PADDING_BYTES: usize = 6 * 1024;

/// The integer `update_id` of an update's bytes, if it has one. Every update here starts with
/// `{"update_id":N` (the generator's and the specials' fixed field order), so this reads no
/// further: a full JSON parse would refuse lone surrogate escapes, which Telegram does send.
pub fn update_id_of(raw: &[u8]) -> Option<i64> {
    let rest = raw.strip_prefix(br#"{"update_id":"#)?;
    let end = rest
        .iter()
        .position(|b| !(b.is_ascii_digit() || *b == b'-'))
        .unwrap_or(rest.len());
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

fn message(update_id: i64, text_json: &str, extra: &str) -> String {
    // A chat of its own per bot keeps these away from the realistic chats' message ids.
    format!(
        r#"{{"update_id":{update_id},"message":{{"message_id":{update_id},"from":{{"id":990001,"is_bot":false,"first_name":"Chaos"}},"chat":{{"id":{CHAOS_CHAT},"title":"chaos","type":"supergroup"}},"date":1760000000,"text":{text_json}{extra}}}}}"#
    )
}

/// The injection attempt an update id gets.
pub fn injection_for(update_id: i64) -> &'static str {
    INJECTIONS[update_id.unsigned_abs() as usize % INJECTIONS.len()]
}

impl Special {
    /// The special replacing `normal` (whose update id it takes), from bot `bot_id`.
    pub fn build(self, bot_id: i64, normal: &[u8]) -> Generated {
        let id = update_id_of(normal).expect("realistic updates have an update_id");
        let (raw, expect) = match self {
            Self::Padded => {
                let normal = String::from_utf8_lossy(normal).into_owned();
                let padded = match normal.find(r#""text":""#) {
                    Some(at) => {
                        let at = at + r#""text":""#.len();
                        format!("{}{}{}", &normal[..at], "p".repeat(PADDING_BYTES), &normal[at..])
                    }
                    None => normal,
                };
                (padded, Expect::Rows)
            }
            Self::NulText => (
                message(id, r#""before\u0000after""#, ""),
                Expect::Rows,
            ),
            Self::LoneSurrogate => (message(id, r#""lone \ud800 surrogate""#, ""), Expect::Rows),
            Self::ConstraintViolation => (
                message(id, &serde_json::to_string(CONSTRAINT_POISON).expect("json"), ""),
                Expect::DeadLetter,
            ),
            Self::TruncatedJson => {
                let full = message(id, r#""cut short""#, "");
                (full[..full.len() / 2].to_owned(), Expect::DeadLetter)
            }
            Self::NotAnObject => (format!("[{}]", message(id, r#""in an array""#, "")), Expect::DeadLetter),
            Self::NoUpdateId => (
                r#"{"message":{"message_id":1,"chat":{"id":-1009900000001,"type":"supergroup"},"date":1760000000,"text":"no id"}}"#
                    .to_owned(),
                Expect::DeadLetter,
            ),
            Self::Oversized => {
                let text = "x".repeat(OVERSIZED_TEXT_BYTES);
                (message(id, &format!("\"{text}\""), ""), Expect::DeadLetter)
            }
            Self::UnknownKind => (
                format!(
                    r#"{{"update_id":{id},"{FUTURE_KIND}":{{"chat":{{"id":-1009900000001,"type":"supergroup"}},"date":1760000000,"novel":{{"nested":[1,2,3],"flag":true}}}}}}"#
                ),
                Expect::Rows,
            ),
            Self::UnknownFields => (
                message(
                    id,
                    r#""with fields from the future""#,
                    r#","future_field":{"a":[1,{"b":null}],"c":"ünïcødé 🚀"},"another_new_one":42"#,
                ),
                Expect::Rows,
            ),
            Self::SqlInjection => {
                let text = injection_for(id);
                (
                    message(id, &serde_json::to_string(text).expect("json"), ""),
                    Expect::Rows,
                )
            }
        };
        let raw: Arc<[u8]> = raw.into_bytes().into();
        Generated {
            bot_id,
            update_id: update_id_of(&raw),
            raw,
            expect,
            special: Some(self),
        }
    }
}
