//! Inspection of one pushed update's bytes: its `update_id` and its kind.
//!
//! The simulator never re-serialises an update; it only needs to know which id confirms it and which
//! kind `allowed_updates` filters on. Inspection therefore skips over every value without decoding
//! strings, so `\u0000` and lone surrogate escapes (real Telegram content that `String` refuses) do
//! not make an update unreadable. Bytes that are not a JSON object still get an id when one can be
//! found textually (a truncated update), so a malformed push can still be confirmed.

use std::fmt;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};

/// What the simulator knows about one update's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct UpdateHeader {
    /// The integer `update_id`, when the bytes carry one.
    pub id: Option<i64>,
    /// The first key other than `update_id`, when the bytes are a JSON object.
    pub kind: Option<String>,
}

/// Reads the id and the kind of an update without decoding its string contents.
pub(crate) fn inspect(raw: &[u8]) -> UpdateHeader {
    match serde_json::from_slice::<ObjectHeader>(raw) {
        Ok(header) => UpdateHeader {
            id: header.id,
            kind: header.kind,
        },
        Err(_) => UpdateHeader {
            id: scan_update_id(raw),
            kind: None,
        },
    }
}

/// Finds `"update_id": <integer>` textually, for bytes that do not parse (e.g. truncated JSON).
fn scan_update_id(raw: &[u8]) -> Option<i64> {
    const KEY: &[u8] = b"\"update_id\"";
    let start = raw.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let mut rest = raw[start..]
        .iter()
        .copied()
        .skip_while(u8::is_ascii_whitespace);
    if rest.next()? != b':' {
        return None;
    }
    let text: String = rest
        .skip_while(u8::is_ascii_whitespace)
        .enumerate()
        .take_while(|(i, b)| b.is_ascii_digit() || (*i == 0 && *b == b'-'))
        .map(|(_, b)| char::from(b))
        .collect();
    text.parse().ok()
}

struct ObjectHeader {
    id: Option<i64>,
    kind: Option<String>,
}

impl<'de> Deserialize<'de> for ObjectHeader {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(HeaderVisitor)
    }
}

struct HeaderVisitor;

impl<'de> Visitor<'de> for HeaderVisitor {
    type Value = ObjectHeader;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ObjectHeader, A::Error> {
        let mut id = None;
        let mut seen_id = false;
        let mut kind = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == "update_id" && !seen_id {
                seen_id = true;
                // A non-integer id is kept as "no id": the update is malformed, not unreadable.
                let value: &serde_json::value::RawValue = map.next_value()?;
                id = serde_json::from_str::<i64>(value.get()).ok();
            } else {
                if kind.is_none() && key != "update_id" {
                    kind = Some(key);
                }
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(ObjectHeader { id, kind })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kind_is_the_first_key_other_than_update_id() {
        let header = inspect(br#"{"edited_message":{"text":"a"},"update_id":7}"#);
        assert_eq!(header.id, Some(7));
        assert_eq!(header.kind.as_deref(), Some("edited_message"));
    }

    #[test]
    fn nul_and_lone_surrogate_escapes_do_not_hide_the_id() {
        let raw = br#"{"update_id":42,"message":{"text":"a\u0000b\ud800c"}}"#;
        let header = inspect(raw);
        assert_eq!(header.id, Some(42));
        assert_eq!(header.kind.as_deref(), Some("message"));
    }

    #[test]
    fn a_truncated_update_still_yields_its_id() {
        let header = inspect(br#"{"update_id": 913, "message":{"text":"cut"#);
        assert_eq!(header.id, Some(913));
        assert_eq!(header.kind, None);
    }

    #[test]
    fn an_object_without_update_id_has_a_kind_but_no_id() {
        let header = inspect(br#"{"message":{"text":"x"}}"#);
        assert_eq!(header.id, None);
        assert_eq!(header.kind.as_deref(), Some("message"));
    }

    #[test]
    fn a_string_update_id_is_not_an_id() {
        assert_eq!(inspect(br#"{"update_id":"12","poll":{}}"#).id, None);
    }

    #[test]
    fn a_non_object_has_neither_id_nor_kind() {
        let header = inspect(b"[1,2,3]");
        assert_eq!(
            header,
            UpdateHeader {
                id: None,
                kind: None
            }
        );
    }
}
