//! The Kafka wire contract (DESIGN.md §3): everything a record of the updates topic carries
//! besides the update's own bytes, written by the producer and read by the consumer, the operator
//! commands and the tests.
//!
//! This module is the only place that spells it:
//! - the header names ([`header`]) and the headers of an update record, in their order;
//! - the record key: `"{bot_id}:{chat_id}"`, `"{bot_id}:u{user_id}"` or `"{bot_id}"`
//!   ([`record_key`]), and the bot id and subject read back from it ([`bot_id_of_key`],
//!   [`subject_of_key`]);
//! - the `tg-error` envelope that replaces bytes which cannot be published as an update: its
//!   headers ([`envelope_headers`]), its value ([`envelope_value`],
//!   [`envelope_value_identified`]), and what is read back from that value: the original bytes
//!   ([`envelope_original`]) and the summary ([`envelope_summary`]);
//! - headers as JSON (`dead_letters.headers`) and back ([`headers_to_json`], [`headers_from_json`]);
//! - [`hex`] and [`unhex`], the lowercase hex that JSON uses for bytes that are not UTF-8.
//!
//! Guarantees: no I/O and no Kafka client types (headers are name/bytes pairs), so every crate can
//! use it; decoding never panics on foreign input, it answers `None` instead; encode and decode
//! round-trip (the unit tests below hold the exact bytes).
//!
//! Envelope value (a JSON object):
//!
//! ```json
//! {"tg_error": {"reason": "not_an_update", "detail": "…", "original_size": 17},
//!  "original": "<the original bytes as a JSON string, when they are UTF-8 and fit>"}
//! ```
//!
//! `original_hex` replaces `original` for bytes that are not UTF-8 (webhook bodies only). An
//! envelope that cannot carry the original (the broker refused it for its size) identifies it
//! instead: `tg_error.original_sha256` is the lowercase hex SHA-256 of the original bytes
//! ([`envelope_value_identified`]). Envelopes written before that field existed decode the same
//! ([`envelope_summary`] answers `None` for the hash). The `tg-error` header holds
//! `"{reason}: {detail}"`; `tg-original-size` the original length.

use std::fmt::Write;

use serde_json::Value;
use sha2::{Digest, Sha256};

/// The header names of an updates-topic record.
pub mod header {
    /// The bot the update was received for (decimal).
    pub const BOT_ID: &str = "tg-bot-id";
    /// The update's `update_id` (decimal); absent when the bytes carry none.
    pub const UPDATE_ID: &str = "tg-update-id";
    /// The update's kind: its first key other than `update_id`.
    pub const UPDATE_TYPE: &str = "tg-update-type";
    /// When the producer received the update, unix milliseconds (decimal).
    pub const RECEIVED_AT: &str = "tg-received-at";
    /// The value's media type, always [`super::CONTENT_TYPE_JSON`].
    pub const CONTENT_TYPE: &str = "content-type";
    /// W3C trace context, when tracing is on.
    pub const TRACEPARENT: &str = "traceparent";
    /// Marks an envelope: `"{reason}: {detail}"`.
    pub const ERROR: &str = "tg-error";
    /// An envelope's original length in bytes (decimal).
    pub const ORIGINAL_SIZE: &str = "tg-original-size";
}

/// The value of the `content-type` header.
pub const CONTENT_TYPE_JSON: &str = "application/json";

/// The `tg-update-type` of an object that has an `update_id` and nothing else.
pub const NO_KIND: &str = "unknown";

/// The headers of an update record, in their order.
pub fn update_headers(
    bot_id: i64,
    update_id: i64,
    kind: &str,
    received_at_ms: i64,
) -> Vec<(&'static str, String)> {
    vec![
        (header::BOT_ID, bot_id.to_string()),
        (header::UPDATE_ID, update_id.to_string()),
        (header::UPDATE_TYPE, kind.to_owned()),
        (header::RECEIVED_AT, received_at_ms.to_string()),
        (header::CONTENT_TYPE, CONTENT_TYPE_JSON.to_owned()),
    ]
}

/// The headers known for bytes that carry no update id: the bot and the receive time. An
/// envelope is built on them ([`envelope_headers`]).
pub fn unidentified_headers(bot_id: i64, received_at_ms: i64) -> Vec<(&'static str, String)> {
    vec![
        (header::BOT_ID, bot_id.to_string()),
        (header::RECEIVED_AT, received_at_ms.to_string()),
    ]
}

/// The entity an update belongs to: its chat when it has one, else its user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// The chat id, as its JSON integer text (never reformatted, so any size survives).
    Chat(String),
    /// The user id, as its JSON integer text.
    User(String),
    /// Neither (e.g. `poll`).
    Bot,
}

/// The record key of an update: `"{bot}:{chat}"`, `"{bot}:u{user}"` or `"{bot}"`, so every chat's
/// updates stay in one partition.
pub fn record_key(bot_id: i64, subject: &Subject) -> String {
    match subject {
        Subject::Chat(chat) => format!("{bot_id}:{chat}"),
        Subject::User(user) => format!("{bot_id}:u{user}"),
        Subject::Bot => bot_id.to_string(),
    }
}

/// The bot id a record key starts with, if the key is one of [`record_key`]'s shapes.
pub fn bot_id_of_key(key: &[u8]) -> Option<i64> {
    let key = std::str::from_utf8(key).ok()?;
    key.split(':').next()?.parse().ok()
}

/// The subject a record key names, the inverse of [`record_key`]: `None` for a key of another
/// shape.
pub fn subject_of_key(key: &[u8]) -> Option<Subject> {
    let key = std::str::from_utf8(key).ok()?;
    let mut parts = key.splitn(2, ':');
    parts.next()?.parse::<i64>().ok()?;
    let Some(rest) = parts.next() else {
        return Some(Subject::Bot);
    };
    let integer = |s: &str| s.parse::<i64>().is_ok().then(|| s.to_owned());
    match rest.strip_prefix('u') {
        Some(user) => integer(user).map(Subject::User),
        None => integer(rest).map(Subject::Chat),
    }
}

/// Why bytes could not be published as an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvelopeReason {
    /// Not JSON at all (only possible for webhook bodies).
    NotJson,
    /// JSON, but not an object with an integer `update_id`.
    NotAnUpdate,
    /// Larger than the producer's `message.max.bytes`.
    TooLarge,
}

impl EnvelopeReason {
    /// The reason's name as it appears in the envelope and the `tg-error` header.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotJson => "not_json",
            Self::NotAnUpdate => "not_an_update",
            Self::TooLarge => "too_large",
        }
    }
}

/// The headers of the envelope that replaces a record with `headers` whose original bytes are
/// `original_size` long: the record's own headers (its `content-type` moved last), then
/// `content-type`, `tg-error` and `tg-original-size`.
pub fn envelope_headers(
    headers: &[(&'static str, String)],
    reason: EnvelopeReason,
    detail: &str,
    original_size: usize,
) -> Vec<(&'static str, String)> {
    let mut out: Vec<(&'static str, String)> = headers
        .iter()
        .filter(|(name, _)| *name != header::CONTENT_TYPE)
        .cloned()
        .collect();
    out.push((header::CONTENT_TYPE, CONTENT_TYPE_JSON.to_owned()));
    out.push((header::ERROR, format!("{}: {detail}", reason.as_str())));
    out.push((header::ORIGINAL_SIZE, original_size.to_string()));
    out
}

/// Whether a header is one an envelope adds to the headers of the record it replaces (so
/// unwrapping an envelope drops it).
pub fn is_envelope_header(name: &str) -> bool {
    name == header::ERROR || name == header::ORIGINAL_SIZE
}

/// The value of an envelope for `original`: the summary alone, or with the original bytes
/// (`original` when they are UTF-8, else `original_hex`) when `with_original`.
pub fn envelope_value(
    reason: EnvelopeReason,
    detail: &str,
    original: &[u8],
    with_original: bool,
) -> Vec<u8> {
    let summary = serde_json::json!({
        "reason": reason.as_str(),
        "detail": detail,
        "original_size": original.len(),
    });
    let value = if !with_original {
        serde_json::json!({ "tg_error": summary })
    } else {
        match std::str::from_utf8(original) {
            Ok(text) => serde_json::json!({ "tg_error": summary, "original": text }),
            Err(_) => serde_json::json!({ "tg_error": summary, "original_hex": hex(original) }),
        }
    };
    value.to_string().into_bytes()
}

/// The value of an envelope that leaves `original` out and identifies it by its size and SHA-256:
/// for bytes that cannot travel at all (the broker refused them for their size).
pub fn envelope_value_identified(reason: EnvelopeReason, detail: &str, original: &[u8]) -> Vec<u8> {
    let summary = serde_json::json!({
        "reason": reason.as_str(),
        "detail": detail,
        "original_size": original.len(),
        "original_sha256": hex(&Sha256::digest(original)),
    });
    serde_json::json!({ "tg_error": summary })
        .to_string()
        .into_bytes()
}

/// What an envelope's value says about the bytes it replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeSummary {
    /// [`EnvelopeReason::as_str`] of the reason (kept as text: a newer producer may add reasons).
    pub reason: String,
    /// The producer's detail.
    pub detail: String,
    /// The original length in bytes.
    pub original_size: Option<u64>,
    /// Lowercase hex SHA-256 of the original, in envelopes that left it out for its size.
    pub original_sha256: Option<String>,
}

/// The summary of an envelope's value; `None` for a value that is not an envelope.
pub fn envelope_summary(value: &[u8]) -> Option<EnvelopeSummary> {
    let value: Value = serde_json::from_slice(value).ok()?;
    let summary = value.get("tg_error")?;
    let text = |name: &str| summary.get(name).and_then(Value::as_str).map(str::to_owned);
    Some(EnvelopeSummary {
        reason: text("reason")?,
        detail: text("detail").unwrap_or_default(),
        original_size: summary.get("original_size").and_then(Value::as_u64),
        original_sha256: text("original_sha256"),
    })
}

/// The original bytes inside an envelope's value, when it kept them.
pub fn envelope_original(value: &[u8]) -> Option<Vec<u8>> {
    let value: Value = serde_json::from_slice(value).ok()?;
    if let Some(text) = value.get("original").and_then(Value::as_str) {
        return Some(text.as_bytes().to_vec());
    }
    value
        .get("original_hex")
        .and_then(Value::as_str)
        .and_then(unhex)
}

/// Headers as a JSON object (`dead_letters.headers`): UTF-8 values as strings, values that are
/// not UTF-8 or hold NUL (refused by `jsonb`) as `{"hex": …}` so nothing is lost, a header
/// without a value as `null`. NUL in a name becomes U+FFFD; the first of equal names wins.
pub fn headers_to_json<'a>(
    headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
) -> Value {
    let mut object = serde_json::Map::new();
    for (name, value) in headers {
        let value = match value {
            None => Value::Null,
            Some(bytes) => match std::str::from_utf8(bytes) {
                Ok(text) if !text.contains('\0') => Value::String(text.to_owned()),
                _ => serde_json::json!({ "hex": hex(bytes) }),
            },
        };
        object
            .entry(name.replace('\0', "\u{fffd}"))
            .or_insert(value);
    }
    Value::Object(object)
}

/// Headers back from [`headers_to_json`]'s object (anything else holds no headers).
pub fn headers_from_json(headers: Option<&Value>) -> Vec<(String, Option<Vec<u8>>)> {
    let Some(Value::Object(map)) = headers else {
        return Vec::new();
    };
    map.iter()
        .map(|(name, value)| {
            let bytes = match value {
                Value::String(s) => Some(s.as_bytes().to_vec()),
                Value::Object(o) => o.get("hex").and_then(Value::as_str).and_then(unhex),
                _ => None,
            };
            (name.clone(), bytes)
        })
        .collect()
}

/// A record's identity within its log, as the consumer stores it for the last record it
/// committed (DESIGN.md §5.10): SHA-256 of the record's value, of no bytes when it has none.
pub fn record_digest(value: Option<&[u8]>) -> [u8; 32] {
    Sha256::digest(value.unwrap_or_default()).into()
}

/// Bytes as lowercase hex, two digits a byte.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// Bytes back from [`hex`] (either case); `None` for anything that is not whole hex bytes.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_update_record_carries_the_producer_headers_in_order() {
        assert_eq!(
            update_headers(42, 5, "message", 1_700_000_000_000),
            vec![
                ("tg-bot-id", "42".to_owned()),
                ("tg-update-id", "5".to_owned()),
                ("tg-update-type", "message".to_owned()),
                ("tg-received-at", "1700000000000".to_owned()),
                ("content-type", "application/json".to_owned()),
            ]
        );
        assert_eq!(
            unidentified_headers(42, 7),
            vec![
                ("tg-bot-id", "42".to_owned()),
                ("tg-received-at", "7".to_owned())
            ]
        );
    }

    #[test]
    fn the_key_names_the_bot_then_the_chat_or_the_user() {
        assert_eq!(
            record_key(42, &Subject::Chat("-100123".into())),
            "42:-100123"
        );
        assert_eq!(record_key(42, &Subject::User("7".into())), "42:u7");
        assert_eq!(record_key(42, &Subject::Bot), "42");
    }

    #[test]
    fn the_subject_is_read_back_from_every_key_shape_and_nothing_else() {
        for subject in [
            Subject::Chat("-100123".into()),
            Subject::User("7".into()),
            Subject::Bot,
        ] {
            assert_eq!(
                subject_of_key(record_key(5, &subject).as_bytes()),
                Some(subject)
            );
        }
        for key in [&b"x:1"[..], b"5:ux", b"5:chat", b"\xff"] {
            assert_eq!(subject_of_key(key), None, "{key:?}");
        }
    }

    #[test]
    fn the_bot_id_is_read_back_from_every_key_shape_and_nothing_else() {
        for subject in [
            Subject::Chat("-5".into()),
            Subject::User("77".into()),
            Subject::Bot,
        ] {
            assert_eq!(
                bot_id_of_key(record_key(5, &subject).as_bytes()),
                Some(5),
                "{subject:?}"
            );
        }
        assert_eq!(bot_id_of_key(b"x:1"), None);
        assert_eq!(bot_id_of_key(b""), None);
        assert_eq!(bot_id_of_key(&[0xff, b':', b'1']), None);
    }

    #[test]
    fn an_envelope_keeps_the_record_headers_and_adds_its_own_last() {
        let headers = update_headers(3, 14, "message", 0);
        let out = envelope_headers(&headers, EnvelopeReason::TooLarge, "big", 20_000);
        assert_eq!(out[..headers.len()], headers[..]);
        assert_eq!(
            out[headers.len()..],
            [
                ("tg-error", "too_large: big".to_owned()),
                ("tg-original-size", "20000".to_owned()),
            ]
        );
        let bare = envelope_headers(&unidentified_headers(3, 0), EnvelopeReason::NotJson, "d", 1);
        let names: Vec<_> = bare.iter().map(|(name, _)| *name).collect();
        assert_eq!(
            names,
            [
                "tg-bot-id",
                "tg-received-at",
                "content-type",
                "tg-error",
                "tg-original-size"
            ]
        );
        let added: Vec<_> = out
            .iter()
            .filter(|(name, _)| is_envelope_header(name))
            .map(|(name, _)| *name)
            .collect();
        assert_eq!(added, ["tg-error", "tg-original-size"]);
    }

    #[test]
    fn an_envelope_value_has_its_exact_bytes() {
        assert_eq!(
            String::from_utf8(envelope_value(
                EnvelopeReason::NotAnUpdate,
                "d",
                b"[1]",
                true
            ))
            .unwrap(),
            r#"{"original":"[1]","tg_error":{"detail":"d","original_size":3,"reason":"not_an_update"}}"#
        );
        assert_eq!(
            String::from_utf8(envelope_value(
                EnvelopeReason::NotJson,
                "d",
                &[0xff, 0],
                true
            ))
            .unwrap(),
            r#"{"original_hex":"ff00","tg_error":{"detail":"d","original_size":2,"reason":"not_json"}}"#
        );
        assert_eq!(
            String::from_utf8(envelope_value(EnvelopeReason::TooLarge, "d", b"abc", false))
                .unwrap(),
            r#"{"tg_error":{"detail":"d","original_size":3,"reason":"too_large"}}"#
        );
    }

    #[test]
    fn an_identified_envelope_has_its_exact_bytes_and_no_original() {
        let value = envelope_value_identified(EnvelopeReason::TooLarge, "d", b"abc");
        assert_eq!(
            String::from_utf8(value.clone()).unwrap(),
            r#"{"tg_error":{"detail":"d","original_sha256":"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad","original_size":3,"reason":"too_large"}}"#
        );
        assert_eq!(envelope_original(&value), None);
        assert_eq!(
            envelope_summary(&value).unwrap().original_sha256.as_deref(),
            Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
    }

    #[test]
    fn envelopes_without_a_hash_still_decode() {
        for (value, reason) in [
            (
                envelope_value(EnvelopeReason::TooLarge, "big", b"abc", false),
                "too_large",
            ),
            (
                envelope_value(EnvelopeReason::NotJson, "nj", &[0xff], true),
                "not_json",
            ),
        ] {
            let summary = envelope_summary(&value).unwrap();
            assert_eq!(summary.reason, reason);
            assert_eq!(summary.original_sha256, None);
        }
        assert_eq!(
            envelope_summary(&envelope_value(
                EnvelopeReason::TooLarge,
                "big",
                b"abc",
                false
            )),
            Some(EnvelopeSummary {
                reason: "too_large".into(),
                detail: "big".into(),
                original_size: Some(3),
                original_sha256: None,
            })
        );
        assert_eq!(envelope_summary(br#"{"update_id":1}"#), None);
        assert_eq!(envelope_summary(b"not json"), None);
    }

    #[test]
    fn the_original_round_trips_through_the_envelope_value() {
        for original in [&b"{\"a\":\"\\u0000\"}"[..], &[0xff, 0x00, 0x41], b""] {
            let value = envelope_value(EnvelopeReason::NotJson, "detail", original, true);
            assert_eq!(envelope_original(&value), Some(original.to_vec()));
            let bare = envelope_value(EnvelopeReason::NotJson, "detail", original, false);
            assert_eq!(envelope_original(&bare), None);
        }
        assert_eq!(envelope_original(b"not json"), None);
        assert_eq!(envelope_original(br#"{"original_hex":"f"}"#), None);
    }

    #[test]
    fn headers_round_trip_through_json_whatever_their_bytes() {
        let headers: Vec<(String, Option<Vec<u8>>)> = vec![
            ("a".into(), Some(b"plain".to_vec())),
            ("b".into(), Some(vec![0xff, 0x00])),
            ("c".into(), Some(b"x\0y".to_vec())),
            ("d".into(), None),
        ];
        let json = headers_to_json(
            headers
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_deref())),
        );
        assert_eq!(json["a"], "plain");
        assert_eq!(json["b"]["hex"], "ff00");
        assert_eq!(json["c"]["hex"], "780079");
        assert!(json["d"].is_null());
        assert_eq!(headers_from_json(Some(&json)), headers);
        assert!(headers_from_json(None).is_empty());
        assert!(headers_from_json(Some(&Value::Null)).is_empty());
    }

    #[test]
    fn the_first_of_equal_header_names_wins_and_nul_in_a_name_is_replaced() {
        let json = headers_to_json([
            ("k", Some(&b"first"[..])),
            ("k", Some(&b"second"[..])),
            ("n\0", None),
        ]);
        assert_eq!(json["k"], "first");
        assert!(json.get("n\u{fffd}").is_some());
    }

    #[test]
    fn hex_is_lowercase_two_digits_a_byte_and_unhex_reverses_it() {
        assert_eq!(hex(&[0x00, 0x0f, 0xab, 0xff]), "000fabff");
        assert_eq!(hex(&[]), "");
        assert_eq!(unhex("000fabff"), Some(vec![0x00, 0x0f, 0xab, 0xff]));
        assert_eq!(unhex("ABff"), Some(vec![0xab, 0xff]));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex("é0"), None);
    }
}
