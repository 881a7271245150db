//! Property tests of `processor::normalize` over generated input.
//!
//! Generators are structured: realistic updates of every kind, messages whose text mixes raw
//! UTF-8, `\uXXXX` escapes, valid surrogate pairs, lone surrogates and NUL, random unknown
//! fields at every level; plus corrupted updates and arbitrary bytes. Properties: never panics,
//! deterministic, the raw payload is the input, every derived row carries the update's id, typed
//! text equals a reference decoding (UTF-16 with U+FFFD for lone surrogates and NUL), `jsonb_ok`
//! is exactly "no NUL and no lone surrogate", and every JSON-text column is JSON.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;

use processor::{Normalized, Rejection, normalize};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use serde_json::Value;

const NAMED_KINDS: [&str; 27] = [
    "message",
    "edited_message",
    "channel_post",
    "edited_channel_post",
    "business_connection",
    "business_message",
    "edited_business_message",
    "deleted_business_messages",
    "guest_message",
    "message_reaction",
    "message_reaction_count",
    "inline_query",
    "chosen_inline_result",
    "callback_query",
    "shipping_query",
    "pre_checkout_query",
    "purchased_paid_media",
    "poll",
    "poll_answer",
    "my_chat_member",
    "chat_member",
    "chat_join_request",
    "chat_boost",
    "removed_chat_boost",
    "managed_bot",
    "subscription",
    "stopped_message_generation",
];

const MESSAGE_KINDS: [&str; 7] = [
    "message",
    "edited_message",
    "channel_post",
    "edited_channel_post",
    "business_message",
    "edited_business_message",
    "guest_message",
];

// ---- text with Telegram's escapes ------------------------------------------------------------

/// One piece of a JSON string literal.
#[derive(Debug, Clone)]
enum Piece {
    /// A character written as itself (JSON-escaped only where JSON requires it).
    Raw(char),
    /// A character written as `\uXXXX` escapes (two for a supplementary character).
    Escaped(char),
    /// A single UTF-16 code unit written as `\uXXXX`: a surrogate (paired or not) or NUL.
    Unit(u16),
}

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        6 => any::<char>().prop_map(Piece::Raw),
        3 => any::<char>().prop_map(Piece::Escaped),
        2 => (0xD800u16..=0xDFFF).prop_map(Piece::Unit),
        1 => Just(Piece::Unit(0)),
        1 => Just(Piece::Raw('\0')),
        2 => prop::sample::select(vec!['"', '\\', '/', '\n', '\t', '\u{8}', '\u{c}', 'u'])
            .prop_map(Piece::Raw),
    ]
}

fn pieces() -> impl Strategy<Value = Vec<Piece>> {
    vec(piece(), 0..40)
}

fn escape_unit(unit: u16, upper: bool) -> String {
    if upper {
        format!("\\u{unit:04X}")
    } else {
        format!("\\u{unit:04x}")
    }
}

/// The pieces as the inside of a JSON string literal.
fn render(pieces: &[Piece]) -> String {
    let mut out = String::new();
    for (i, piece) in pieces.iter().enumerate() {
        let upper = i % 3 == 0;
        match piece {
            Piece::Raw('"') => out.push_str("\\\""),
            Piece::Raw('\\') => out.push_str("\\\\"),
            Piece::Raw('\n') => out.push_str("\\n"),
            Piece::Raw('\t') => out.push_str("\\t"),
            Piece::Raw(c) if (*c as u32) < 0x20 => out.push_str(&escape_unit(*c as u16, upper)),
            Piece::Raw(c) => out.push(*c),
            Piece::Escaped(c) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&escape_unit(*unit, upper));
                }
            }
            Piece::Unit(unit) => out.push_str(&escape_unit(*unit, upper)),
        }
    }
    out
}

fn units(pieces: &[Piece]) -> Vec<u16> {
    let mut units = Vec::new();
    for piece in pieces {
        match piece {
            Piece::Raw(c) | Piece::Escaped(c) => {
                let mut buf = [0u16; 2];
                units.extend_from_slice(c.encode_utf16(&mut buf));
            }
            Piece::Unit(unit) => units.push(*unit),
        }
    }
    units
}

/// Reference decoding of the pieces into what a typed text column must hold.
fn sanitised(pieces: &[Piece]) -> String {
    char::decode_utf16(units(pieces))
        .map(|c| match c {
            Ok('\0') | Err(_) => '\u{FFFD}',
            Ok(c) => c,
        })
        .collect()
}

/// Whether PostgreSQL's jsonb would refuse this string literal.
fn refused_by_jsonb(pieces: &[Piece]) -> bool {
    char::decode_utf16(units(pieces)).any(|c| matches!(c, Ok('\0') | Err(_)))
}

// ---- random JSON for unknown fields and unknown kinds ----------------------------------------

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..5).prop_map(Value::Array),
            btree_map("[a-z_]{1,10}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn has_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(members) => members.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// Unknown members: keys no Bot API object uses.
fn unknown_fields() -> impl Strategy<Value = Vec<(String, Value)>> {
    vec(("zz_[a-z_]{1,10}", arb_json()), 0..4)
}

fn members(fields: &[(String, Value)]) -> String {
    fields
        .iter()
        .map(|(k, v)| format!(",{}:{}", Value::from(k.as_str()), v))
        .collect()
}

// ---- generated updates -----------------------------------------------------------------------

#[derive(Debug, Clone)]
struct GenMessage {
    update_id: i64,
    kind: &'static str,
    message_id: i64,
    chat_id: i64,
    chat_type: &'static str,
    from_id: Option<i64>,
    first_name: Vec<Piece>,
    date: i64,
    edit_date: Option<i64>,
    business_connection_id: Option<String>,
    text: Vec<Piece>,
    message_fields: Vec<(String, Value)>,
    user_fields: Vec<(String, Value)>,
    top_fields: Vec<(String, Value)>,
    update_id_last: bool,
}

impl GenMessage {
    fn json(&self) -> String {
        let from = self.from_id.map_or(String::new(), |id| {
            format!(
                r#","from":{{"id":{id},"is_bot":false,"first_name":"{}"{}}}"#,
                render(&self.first_name),
                members(&self.user_fields)
            )
        });
        let edit = self
            .edit_date
            .map_or(String::new(), |d| format!(r#","edit_date":{d}"#));
        let connection = self
            .business_connection_id
            .as_ref()
            .map_or(String::new(), |id| {
                format!(r#","business_connection_id":{}"#, Value::from(id.as_str()))
            });
        let body = format!(
            r#"{{"message_id":{},"chat":{{"id":{},"type":"{}"}},"date":{}{edit}{from}{connection},"text":"{}"{}}}"#,
            self.message_id,
            self.chat_id,
            self.chat_type,
            self.date,
            render(&self.text),
            members(&self.message_fields)
        );
        if self.update_id_last {
            format!(
                r#"{{"{}":{body}{},"update_id":{}}}"#,
                self.kind,
                members(&self.top_fields),
                self.update_id
            )
        } else {
            format!(
                "{{\"update_id\":{},\n\"{}\":{body}{}}}",
                self.update_id,
                self.kind,
                members(&self.top_fields)
            )
        }
    }

    fn jsonb_ok(&self) -> bool {
        // The sender's fields are only rendered when there is a sender.
        let sender: &[(String, Value)] = if self.from_id.is_some() {
            &self.user_fields
        } else {
            &[]
        };
        let extras = self
            .message_fields
            .iter()
            .chain(sender)
            .chain(&self.top_fields);
        !refused_by_jsonb(&self.text)
            && (self.from_id.is_none() || !refused_by_jsonb(&self.first_name))
            && !extras.into_iter().any(|(_, v)| has_nul(v))
    }
}

fn gen_message() -> impl Strategy<Value = GenMessage> {
    (
        (
            any::<i64>(),
            prop::sample::select(MESSAGE_KINDS.to_vec()),
            prop_oneof![Just(0i64), 1i64..=i64::from(i32::MAX), any::<i64>()],
            prop_oneof![-(1i64 << 52)..(1i64 << 52), any::<i64>()],
            prop::sample::select(vec!["private", "group", "supergroup", "channel"]),
            prop::option::of(1i64..(1i64 << 52)),
            pieces(),
        ),
        (
            0i64..2_000_000_000,
            prop::option::of(0i64..2_000_000_000),
            prop::option::of("[A-Za-z0-9_-]{0,30}"),
            pieces(),
            unknown_fields(),
            unknown_fields(),
            unknown_fields(),
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                (update_id, kind, message_id, chat_id, chat_type, from_id, first_name),
                (date, edit_date, connection, text, message_fields, user_fields, top_fields, last),
            )| GenMessage {
                update_id,
                kind,
                message_id,
                chat_id,
                chat_type,
                from_id,
                first_name,
                date,
                edit_date,
                business_connection_id: connection,
                text,
                message_fields,
                user_fields,
                top_fields,
                update_id_last: last,
            },
        )
}

/// An update of any kind (named or not) whose content is random JSON, sometimes with a user and
/// a chat planted in it.
fn gen_any_update() -> impl Strategy<Value = (i64, String, String)> {
    let kind = prop_oneof![
        3 => prop::sample::select(NAMED_KINDS.to_vec()).prop_map(str::to_owned),
        1 => "[a-z_]{1,24}",
    ];
    (
        any::<i64>(),
        kind,
        arb_json(),
        any::<bool>(),
        1i64..(1i64 << 52),
    )
        .prop_map(|(update_id, kind, mut content, plant, id)| {
            if plant && let Value::Object(members) = &mut content {
                members.insert("from".into(), serde_json::json!({"id": id, "is_bot": true}));
                members.insert(
                    "chat".into(),
                    serde_json::json!({"id": -id, "type": "group"}),
                );
            }
            let text = format!(
                r#"{{"update_id":{update_id},{}:{content}}}"#,
                Value::from(kind.as_str())
            );
            (update_id, kind, text)
        })
}

// ---- what every output must satisfy ----------------------------------------------------------

fn src_update_ids(n: &Normalized) -> Vec<i64> {
    let mut ids = Vec::new();
    ids.extend(n.chats.iter().map(|r| r.src_update_id));
    ids.extend(n.users.iter().map(|r| r.src_update_id));
    ids.extend(n.messages.iter().map(|r| r.src_update_id));
    ids.extend(n.message_edits.iter().map(|r| r.src_update_id));
    ids.extend(n.message_reactions.iter().map(|r| r.src_update_id));
    ids.extend(n.message_reaction_counts.iter().map(|r| r.src_update_id));
    ids.extend(n.chat_member_events.iter().map(|r| r.src_update_id));
    ids.extend(n.callback_queries.iter().map(|r| r.src_update_id));
    ids.extend(n.polls.iter().map(|r| r.src_update_id));
    ids.extend(n.poll_answers.iter().map(|r| r.src_update_id));
    ids.extend(n.deleted_business_messages.iter().map(|r| r.src_update_id));
    ids.extend(n.business_connections.iter().map(|r| r.src_update_id));
    ids.extend(n.inline_queries.iter().map(|r| r.src_update_id));
    ids.extend(n.chosen_inline_results.iter().map(|r| r.src_update_id));
    assert_eq!(ids.len(), n.derived_row_count());
    ids
}

fn text_columns(n: &Normalized) -> Vec<&str> {
    let mut texts: Vec<&str> = Vec::new();
    for m in &n.messages {
        texts.extend(
            [
                &m.text,
                &m.caption,
                &m.media_file_id,
                &m.media_group_id,
                &m.author_signature,
            ]
            .into_iter()
            .flatten()
            .map(String::as_str),
        );
        texts.push(&m.business_connection_id);
    }
    for u in &n.users {
        texts.extend(
            [&u.first_name, &u.last_name, &u.username, &u.language_code]
                .into_iter()
                .flatten()
                .map(String::as_str),
        );
    }
    for c in &n.chats {
        texts.push(&c.chat_type);
        texts.extend(
            [&c.title, &c.username, &c.first_name, &c.last_name]
                .into_iter()
                .flatten()
                .map(String::as_str),
        );
    }
    texts
}

fn json_columns(n: &Normalized) -> Vec<&str> {
    let mut json: Vec<&str> = Vec::new();
    for m in &n.messages {
        json.extend(
            [&m.entities, &m.caption_entities, &m.forward_origin]
                .into_iter()
                .flatten()
                .map(String::as_str),
        );
    }
    for r in &n.message_reactions {
        json.push(&r.new_reaction);
        json.push(&r.old_reaction);
    }
    for e in &n.chat_member_events {
        json.extend(
            [&e.old_chat_member, &e.new_chat_member, &e.invite_link]
                .into_iter()
                .flatten()
                .map(String::as_str),
        );
    }
    for p in &n.polls {
        json.extend(
            [&p.options, &p.question_entities, &p.explanation_entities]
                .into_iter()
                .flatten()
                .map(String::as_str),
        );
    }
    json.extend(n.poll_answers.iter().map(|a| a.option_ids.as_str()));
    json.extend(
        n.message_reaction_counts
            .iter()
            .map(|c| c.reactions.as_str()),
    );
    json
}

/// The invariants of any accepted update.
fn check_invariants(input: &[u8], n: &Normalized) {
    assert_eq!(n.raw.payload_bytes, input);
    for id in src_update_ids(n) {
        assert_eq!(id, n.raw.update_id);
    }
    for text in text_columns(n) {
        assert!(!text.contains('\0'), "NUL in a text column: {text:?}");
    }
    for json in json_columns(n) {
        let value: Value = serde_json::from_str(json).expect("JSON-text columns hold JSON");
        assert!(!has_nul(&value), "NUL in a JSON-text column");
        assert!(!json.contains("\\u0000"));
    }
    let user_ids: HashSet<_> = n.users.iter().map(|u| u.user_id).collect();
    assert_eq!(user_ids.len(), n.users.len(), "one row per user");
    let chat_ids: HashSet<_> = n.chats.iter().map(|c| c.chat_id).collect();
    assert_eq!(chat_ids.len(), n.chats.len(), "one row per chat");
    assert!(n.users.iter().all(|u| u.src_date == n.src_date));
}

proptest! {
    // 400 cases by default; PROPTEST_CASES=N for a longer soak.
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(400)
    ))]

    #[test]
    fn a_generated_message_normalises_to_its_reference_decoding(m in gen_message()) {
        let input = m.json();
        let out = normalize(42, input.as_bytes()).expect("a well-formed update is accepted");
        check_invariants(input.as_bytes(), &out);

        prop_assert_eq!(out.raw.update_id, m.update_id);
        prop_assert_eq!(out.raw.update_type.as_str(), m.kind);
        prop_assert_eq!(out.raw.jsonb_ok, m.jsonb_ok());
        prop_assert_eq!(out.projection_error.as_deref(), None);
        prop_assert_eq!(out.src_date, Some(m.edit_date.unwrap_or(m.date)));

        prop_assert_eq!(out.messages.len(), 1);
        let row = &out.messages[0];
        prop_assert_eq!(row.text.clone(), Some(sanitised(&m.text)));
        prop_assert_eq!(row.message_id, m.message_id);
        prop_assert_eq!(row.chat_id, m.chat_id);
        prop_assert_eq!(row.from_user_id, m.from_id);
        prop_assert_eq!(
            row.business_connection_id.as_str(),
            m.business_connection_id.as_deref().unwrap_or("")
        );
        prop_assert_eq!(row.is_channel_post, m.kind.contains("channel_post"));
        prop_assert_eq!(out.message_edits.len(), usize::from(m.kind.starts_with("edited_")));

        if let Some(from_id) = m.from_id {
            let user = out.users.iter().find(|u| u.user_id == from_id).expect("the sender is a user");
            prop_assert_eq!(user.first_name.clone(), Some(sanitised(&m.first_name)));
        }
        prop_assert!(out.chats.iter().any(|c| c.chat_id == m.chat_id));
    }

    #[test]
    fn normalisation_is_deterministic(m in gen_message()) {
        let input = m.json();
        prop_assert_eq!(normalize(7, input.as_bytes()), normalize(7, input.as_bytes()));
    }

    #[test]
    fn an_update_of_any_kind_is_kept_under_its_kind_name((update_id, kind, text) in gen_any_update()) {
        let out = normalize(1, text.as_bytes()).expect("any object with an update_id is accepted");
        check_invariants(text.as_bytes(), &out);
        prop_assert_eq!(out.raw.update_id, update_id);
        prop_assert_eq!(&out.raw.update_type, &kind);
        prop_assert_eq!(out.kind.as_str(), kind.as_str());
        prop_assert_eq!(normalize(1, text.as_bytes()), Ok(out));
    }

    #[test]
    fn a_corrupted_update_is_accepted_or_rejected_but_never_panics(
        m in gen_message(),
        cut in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        how in 0u8..3,
    ) {
        let mut input = m.json().into_bytes();
        let at = cut.index(input.len());
        match how {
            0 => input.truncate(at),
            1 => input[at] = byte,
            _ => input.insert(at, byte),
        }
        match normalize(3, &input) {
            Ok(out) => check_invariants(&input, &out),
            Err(rejection) => prop_assert!(!rejection.class().is_empty()),
        }
        prop_assert_eq!(normalize(3, &input), normalize(3, &input));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..600)) {
        let first = normalize(5, &bytes);
        if let Ok(out) = &first {
            check_invariants(&bytes, out);
        }
        prop_assert_eq!(first, normalize(5, &bytes));
    }

    #[test]
    fn any_json_value_is_accepted_only_as_an_object_with_an_integer_update_id(
        mut value in arb_json(),
        update_id in prop_oneof![
            Just(None),
            any::<i64>().prop_map(|id| Some(Value::from(id))),
            arb_json().prop_map(Some),
        ],
    ) {
        if let (Value::Object(members), Some(id)) = (&mut value, update_id) {
            members.insert("update_id".to_owned(), id);
        }
        let text = value.to_string();
        let result = normalize(5, text.as_bytes());
        let has_integer_update_id = value
            .get("update_id")
            .is_some_and(|id| id.is_i64());
        match &result {
            Ok(out) => {
                prop_assert!(has_integer_update_id);
                check_invariants(text.as_bytes(), out);
            }
            Err(Rejection::NotObject { .. }) => prop_assert!(!value.is_object()),
            Err(Rejection::NoUpdateId) => prop_assert!(value.is_object() && value.get("update_id").is_none()),
            Err(Rejection::UpdateIdNotInteger { .. } | Rejection::UpdateIdOutOfRange { .. }) => {
                prop_assert!(!has_integer_update_id);
            }
            Err(other) => prop_assert!(false, "unexpected rejection {other:?} of {text}"),
        }
    }
}
