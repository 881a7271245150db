//! The processor: the bytes of one Telegram update in, typed relational rows out.
//!
//! [`normalize`] is pure — no I/O, no clock, no randomness — and total: for every input it
//! returns either a [`Normalized`] or a [`Rejection`], never panics, and returns equal output for
//! equal input. What it guarantees:
//!
//! - **Nothing is dropped.** Every JSON object with an integer `update_id` becomes a
//!   [`RawUpdateRow`] holding the input bytes exactly, whatever its kind (an unknown kind keeps
//!   its key as `update_type`) and whatever its fields. Only input that is not such an object,
//!   or nests deeper than [`MAX_NESTING_DEPTH`], is rejected, with a reason for the dead letter.
//! - **Telegram's hostile text is stored.** User text can contain `\u0000` and lone UTF-16
//!   surrogate escapes, which serde_json and PostgreSQL refuse. The raw row keeps them (and says
//!   whether PostgreSQL's `jsonb` would accept the payload, [`RawUpdateRow::jsonb_ok`]); typed
//!   columns get U+FFFD in their place.
//! - **Rows converge under any delivery order.** Every derived row carries the update's
//!   `src_update_id` and source date; the consumer's last-writer-wins upsert on
//!   (update-id epoch, `src_update_id`, `processor_version`) makes shuffled, duplicated and
//!   replayed input end in the same rows (see `migrations/0003_update_order.sql`).
//! - **Users and chats are found wherever they appear**, including copies nested in replies,
//!   origins, members and entities, and in kinds this processor does not otherwise model.
//!
//! Pipeline: UTF-8 check → lexical pass (`json_text`: escape rewrite, `jsonb` verdict, depth)
//! → envelope (`envelope`: `update_id`, kind) → raw row → content decoded once → users and
//! chats (`actors`) → kind-specific rows (`project`).
//!
//! [`wire`] is the Kafka wire contract around those bytes (header names, record key, the
//! `tg-error` envelope, header JSON, hex), kept here so every crate shares it without Kafka types.
//! [`erasure`] says what of an update belongs to a data subject and scrubs it out, so `forget`
//! and every writer turn the same bytes into the same scrubbed bytes.

mod actors;
mod envelope;
pub mod erasure;
mod json_text;
mod kind;
mod model;
mod project;
mod rejection;
mod rows;
pub mod wire;

use serde_json::Value;
use sha2::{Digest, Sha256};

pub use kind::{UPDATE_KINDS, UpdateKind};
pub use rejection::Rejection;
pub use rows::{
    BusinessConnectionRow, CallbackQueryRow, ChatMemberEventRow, ChatRow, ChosenInlineResultRow,
    DeletedBusinessMessageRow, InlineQueryRow, MessageEditRow, MessageReactionCountRow,
    MessageReactionRow, MessageRow, Normalized, PollAnswerRow, PollRow, RawUpdateRow, UserRow,
};

/// Version of the normalisation rules, stored with every row. Bump it when the rows derived from
/// the same input change, so a replay rewrites rows derived by an older processor (it breaks ties
/// between rows from the same update, never beats a newer update).
pub const PROCESSOR_VERSION: i32 = 1;

/// The deepest array/object nesting accepted; deeper input is rejected as [`Rejection::TooDeep`].
pub const MAX_NESTING_DEPTH: usize = json_text::MAX_DEPTH;

/// Normalises the bytes of one update received by bot `bot_id`.
pub fn normalize(bot_id: i64, bytes: &[u8]) -> Result<Normalized, Rejection> {
    if bytes
        .iter()
        .all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        return Err(Rejection::Empty);
    }
    let text = std::str::from_utf8(bytes).map_err(|error| Rejection::NotUtf8 {
        valid_up_to: error.valid_up_to(),
    })?;
    let scan = json_text::scan(text);
    if scan.max_depth > MAX_NESTING_DEPTH {
        return Err(Rejection::TooDeep {
            depth: scan.max_depth,
            max: MAX_NESTING_DEPTH,
        });
    }
    let envelope = envelope::parse(&scan.text)?;
    let kind = envelope
        .kind_key
        .as_deref()
        .map_or(UpdateKind::Absent, UpdateKind::from_key);

    let raw = RawUpdateRow {
        bot_id,
        update_id: envelope.update_id,
        update_type: kind.as_str().to_owned(),
        payload_bytes: bytes.to_vec(),
        payload_sha256: Sha256::digest(bytes).into(),
        jsonb_ok: scan.jsonb_ok(),
    };
    let mut out = Normalized {
        kind,
        src_date: None,
        raw,
        chats: Vec::new(),
        users: Vec::new(),
        messages: Vec::new(),
        message_edits: Vec::new(),
        message_reactions: Vec::new(),
        message_reaction_counts: Vec::new(),
        chat_member_events: Vec::new(),
        callback_queries: Vec::new(),
        polls: Vec::new(),
        poll_answers: Vec::new(),
        deleted_business_messages: Vec::new(),
        business_connections: Vec::new(),
        inline_queries: Vec::new(),
        chosen_inline_results: Vec::new(),
        projection_error: None,
    };

    let Some(content) = envelope.content else {
        return Ok(out);
    };
    let content: Value = match serde_json::from_str(content.get()) {
        Ok(content) => content,
        Err(error) => {
            // Valid JSON serde_json cannot hold as a Value (a float beyond f64): keep raw only.
            out.projection_error = Some(format!("content cannot be decoded: {error}"));
            return Ok(out);
        }
    };
    let update_id = envelope.update_id;
    out.src_date = project::source_date(&out.kind, &content);
    (out.users, out.chats) = actors::collect(bot_id, update_id, out.src_date, &content);
    let kind = out.kind.clone();
    let source = project::Source {
        bot_id,
        update_id,
        src_date: out.src_date,
        kind: &kind,
    };
    if let Err(error) = project::project(&source, &content, &mut out) {
        out.projection_error = Some(error.to_string());
    }
    out.shrink_to_fit();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_whitespace_only_input_is_rejected_as_empty() {
        for input in [&b""[..], b"   ", b"\r\n\t "] {
            assert_eq!(normalize(1, input), Err(Rejection::Empty));
        }
    }

    #[test]
    fn invalid_utf8_is_rejected_with_the_offset_of_the_bad_byte() {
        assert_eq!(
            normalize(1, b"{\"update_id\":1,\"x\":\"\xff\"}"),
            Err(Rejection::NotUtf8 { valid_up_to: 20 })
        );
    }

    #[test]
    fn nesting_up_to_the_limit_is_accepted_and_beyond_it_rejected() {
        let nested = |depth: usize| {
            format!(
                r#"{{"update_id":1,"x":{}{}}}"#,
                "[".repeat(depth - 1),
                "]".repeat(depth - 1)
            )
        };
        let ok = normalize(1, nested(MAX_NESTING_DEPTH).as_bytes()).expect("at the limit");
        assert_eq!(ok.raw.update_type, "x");
        assert_eq!(ok.projection_error, None);
        assert_eq!(
            normalize(1, nested(MAX_NESTING_DEPTH + 1).as_bytes()),
            Err(Rejection::TooDeep {
                depth: MAX_NESTING_DEPTH + 1,
                max: MAX_NESTING_DEPTH
            })
        );
    }

    #[test]
    fn a_lone_surrogate_is_sanitised_in_text_but_kept_in_raw() {
        let input = br#"{"update_id":3,"message":{"message_id":1,"date":10,"chat":{"id":5,"type":"private"},"text":"a\ud800b\u0000c"}}"#;
        let out = normalize(1, input).expect("accepted");
        assert_eq!(out.raw.payload_bytes, input.to_vec());
        assert!(!out.raw.jsonb_ok);
        assert_eq!(out.messages[0].text.as_deref(), Some("a\u{FFFD}b\u{FFFD}c"));
    }

    #[test]
    fn row_lists_hold_no_spare_capacity() {
        let update = br#"{"update_id":7,"message":{"message_id":3,"date":1700000000,
            "chat":{"id":-100,"type":"supergroup","title":"t"},
            "from":{"id":42,"is_bot":false,"first_name":"A"},"text":"hi"}}"#;
        let out = normalize(1, update).expect("accepted");
        assert_eq!(out.messages.len(), 1);
        assert!(!out.users.is_empty() && !out.chats.is_empty());
        assert_eq!(out.messages.capacity(), out.messages.len());
        assert_eq!(out.users.capacity(), out.users.len());
        assert_eq!(out.chats.capacity(), out.chats.len());
    }

    #[test]
    fn the_sha256_is_of_the_exact_input_bytes() {
        let out = normalize(1, br#"{"update_id":1}"#).expect("accepted");
        // sha256 of {"update_id":1}, computed independently with `sha256sum`.
        let expected = "fb6e1dd6334c3500ac3f7b1034dae6c90c82223a7a604c658bb95e03c6408e80";
        let actual: String = out
            .raw
            .payload_sha256
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(actual, expected);
    }

    #[test]
    fn a_float_beyond_f64_keeps_the_raw_row_and_explains_the_skipped_projection() {
        let out = normalize(1, br#"{"update_id":4,"message":{"x":1e400}}"#).expect("accepted");
        assert_eq!(out.raw.update_type, "message");
        assert!(out.raw.jsonb_ok);
        assert!(out.messages.is_empty());
        assert!(
            out.projection_error
                .as_deref()
                .is_some_and(|e| e.contains("number out of range")),
            "{:?}",
            out.projection_error
        );
    }
}
