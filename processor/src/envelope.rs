//! The outer `Update` object: its `update_id` and which member carries the content.
//!
//! Members are read in document order without decoding their values (serde_json `RawValue`), so
//! the kind is the first key other than `update_id` whatever comes after it, and a value this
//! processor cannot model (a huge number, an unknown structure) cannot make the envelope fail.
//! Duplicate keys resolve as PostgreSQL's `jsonb` resolves them: the last value wins.

use std::fmt;

use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::rejection::Rejection;

/// The parsed envelope of one update.
#[derive(Debug)]
pub(crate) struct Envelope<'a> {
    pub update_id: i64,
    /// The first member key other than `update_id`, if any.
    pub kind_key: Option<String>,
    /// The (last) value of that member.
    pub content: Option<&'a RawValue>,
}

/// Parses the envelope from (rewritten) JSON text.
pub(crate) fn parse(text: &str) -> Result<Envelope<'_>, Rejection> {
    let first = text
        .bytes()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first != Some(b'{') {
        // Tell "valid JSON but not an object" from "not JSON" without building the value.
        return match serde_json::from_str::<IgnoredAny>(text) {
            Err(error) => Err(not_json(&error)),
            Ok(_) => Err(Rejection::NotObject {
                found: match first {
                    Some(b'[') => "array",
                    Some(b'"') => "string",
                    Some(b't' | b'f') => "boolean",
                    Some(b'n') => "null",
                    _ => "number",
                },
            }),
        };
    }
    let Members(members) = serde_json::from_str::<Members<'_>>(text).map_err(|e| not_json(&e))?;

    let update_id = members
        .iter()
        .rev()
        .find(|(key, _)| key == "update_id")
        .map(|(_, value)| *value)
        .ok_or(Rejection::NoUpdateId)?;
    let update_id = integer(update_id.get())?;

    let kind_key = members
        .iter()
        .map(|(key, _)| key)
        .find(|key| *key != "update_id")
        .cloned();
    let content = kind_key.as_ref().and_then(|kind| {
        members
            .iter()
            .rev()
            .find(|(key, _)| key == kind)
            .map(|(_, value)| *value)
    });
    Ok(Envelope {
        update_id,
        kind_key,
        content,
    })
}

fn not_json(error: &serde_json::Error) -> Rejection {
    Rejection::NotJson {
        message: error.to_string(),
    }
}

/// The `update_id` literal as an i64, or why it is not one.
fn integer(literal: &str) -> Result<i64, Rejection> {
    if let Ok(value) = serde_json::from_str::<i64>(literal) {
        return Ok(value);
    }
    let found = match literal.as_bytes().first() {
        Some(b'"') => "string",
        Some(b't' | b'f') => "boolean",
        Some(b'n') => "null",
        Some(b'[') => "array",
        Some(b'{') => "object",
        _ if literal.bytes().any(|b| matches!(b, b'.' | b'e' | b'E')) => "fraction",
        _ => {
            return Err(Rejection::UpdateIdOutOfRange {
                literal: literal.chars().take(40).collect(),
            });
        }
    };
    Err(Rejection::UpdateIdNotInteger { found })
}

/// The members of a JSON object, in document order, values undecoded.
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de> serde::Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor;

        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = Members<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, &'de RawValue>()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }

        deserializer.deserialize_map(MembersVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(text: &str) -> Result<(i64, Option<String>, Option<String>), Rejection> {
        parse(text).map(|e| {
            (
                e.update_id,
                e.kind_key,
                e.content.map(|c| c.get().to_owned()),
            )
        })
    }

    #[test]
    fn the_kind_is_the_first_key_other_than_update_id_even_when_update_id_comes_last() {
        assert_eq!(
            envelope(r#"{"message":{"a":1},"extra":2,"update_id":5}"#),
            Ok((5, Some("message".into()), Some(r#"{"a":1}"#.into())))
        );
    }

    #[test]
    fn duplicate_keys_take_the_last_value_like_jsonb() {
        assert_eq!(
            envelope(r#"{"update_id":1,"poll":1,"update_id":2,"poll":3}"#),
            Ok((2, Some("poll".into()), Some("3".into())))
        );
    }

    #[test]
    fn an_object_with_only_update_id_has_no_kind() {
        assert_eq!(envelope(r#" {"update_id": 9} "#), Ok((9, None, None)));
    }

    #[test]
    fn update_ids_of_every_wrong_type_are_classified() {
        let found = |text: &str| match parse(text) {
            Err(Rejection::UpdateIdNotInteger { found }) => found,
            other => panic!("{other:?}"),
        };
        assert_eq!(found(r#"{"update_id":"1"}"#), "string");
        assert_eq!(found(r#"{"update_id":1.0}"#), "fraction");
        assert_eq!(found(r#"{"update_id":1e3}"#), "fraction");
        assert_eq!(found(r#"{"update_id":null}"#), "null");
        assert_eq!(found(r#"{"update_id":true}"#), "boolean");
        assert_eq!(found(r#"{"update_id":[1]}"#), "array");
        assert_eq!(found(r#"{"update_id":{}}"#), "object");
    }

    #[test]
    fn the_extremes_of_i64_are_accepted_and_beyond_them_rejected() {
        assert_eq!(
            envelope(r#"{"update_id":9223372036854775807}"#).map(|e| e.0),
            Ok(i64::MAX)
        );
        assert_eq!(
            envelope(r#"{"update_id":-9223372036854775808}"#).map(|e| e.0),
            Ok(i64::MIN)
        );
        assert_eq!(
            parse(r#"{"update_id":9223372036854775808}"#).map(|e| e.update_id),
            Err(Rejection::UpdateIdOutOfRange {
                literal: "9223372036854775808".into()
            })
        );
    }

    #[test]
    fn an_out_of_range_literal_is_shortened_in_the_rejection() {
        let text = format!(r#"{{"update_id":{}}}"#, "9".repeat(500));
        match parse(&text) {
            Err(Rejection::UpdateIdOutOfRange { literal }) => assert_eq!(literal.len(), 40),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn non_objects_are_classified_by_type() {
        for (text, expected) in [
            ("[1]", "array"),
            (r#""s""#, "string"),
            ("12", "number"),
            ("-1", "number"),
            ("true", "boolean"),
            ("null", "null"),
        ] {
            assert_eq!(
                parse(text).map(|e| e.update_id),
                Err(Rejection::NotObject { found: expected })
            );
        }
    }

    #[test]
    fn malformed_json_and_trailing_garbage_are_not_json() {
        for text in [
            r#"{"update_id":1"#,
            r#"{"update_id":1} x"#,
            "[1,",
            "nul",
            r#"{'a':1}"#,
        ] {
            assert!(
                matches!(parse(text), Err(Rejection::NotJson { .. })),
                "{text}"
            );
        }
    }

    #[test]
    fn a_huge_float_in_a_member_does_not_break_the_envelope() {
        assert_eq!(
            envelope(r#"{"update_id":1,"message":{"x":1e400}}"#).map(|e| e.0),
            Ok(1)
        );
    }
}
