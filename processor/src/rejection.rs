//! Why an input is not an update at all, as a dead letter records it.
//!
//! A rejection means the bytes cannot become a `raw_updates` row: there is no object with an
//! integer `update_id` to key it by. Everything that *is* such an object is accepted, however
//! odd the rest (unknown kinds and fields, wrong-typed known fields, text PostgreSQL's `jsonb`
//! refuses). Each variant has a stable snake_case [`Rejection::class`] for dead letters and
//! metrics; the `Display` text adds detail but never echoes the input's content.

use thiserror::Error;

/// The reason the processor refuses an input.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Rejection {
    /// Zero bytes, or only JSON whitespace.
    #[error("empty input")]
    Empty,
    /// The bytes are not UTF-8 (JSON text must be).
    #[error("input is not valid UTF-8 (invalid sequence at byte {valid_up_to})")]
    NotUtf8 {
        /// Length of the longest valid UTF-8 prefix.
        valid_up_to: usize,
    },
    /// The text is not one well-formed JSON value.
    #[error("input is not JSON: {message}")]
    NotJson {
        /// serde_json's description, with line and column.
        message: String,
    },
    /// Arrays/objects nest deeper than the parser supports (no Telegram update comes close).
    #[error("JSON nests {depth} levels deep; at most {max} are supported")]
    TooDeep {
        /// The deepest nesting found.
        depth: usize,
        /// The supported maximum.
        max: usize,
    },
    /// The JSON value is not an object.
    #[error("top-level JSON value is {found}, not an object")]
    NotObject {
        /// The JSON type found: "array", "string", "number", "boolean" or "null".
        found: &'static str,
    },
    /// The object has no `update_id` member.
    #[error("object has no update_id")]
    NoUpdateId,
    /// `update_id` is present but not a JSON integer.
    #[error("update_id is {found}, not an integer")]
    UpdateIdNotInteger {
        /// The JSON type found ("fraction" for a number with a fraction or exponent).
        found: &'static str,
    },
    /// `update_id` is an integer outside the signed 64-bit range.
    #[error("update_id {literal} does not fit a signed 64-bit integer")]
    UpdateIdOutOfRange {
        /// The literal, shortened to at most 40 characters.
        literal: String,
    },
}

impl Rejection {
    /// A stable snake_case name for the reason, for the dead letter's `error_class`.
    pub fn class(&self) -> &'static str {
        match self {
            Rejection::Empty => "empty",
            Rejection::NotUtf8 { .. } => "not_utf8",
            Rejection::NotJson { .. } => "not_json",
            Rejection::TooDeep { .. } => "too_deep",
            Rejection::NotObject { .. } => "not_object",
            Rejection::NoUpdateId => "no_update_id",
            Rejection::UpdateIdNotInteger { .. } => "update_id_not_integer",
            Rejection::UpdateIdOutOfRange { .. } => "update_id_out_of_range",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_is_distinct_snake_case() {
        let all = [
            Rejection::Empty,
            Rejection::NotUtf8 { valid_up_to: 0 },
            Rejection::NotJson {
                message: String::new(),
            },
            Rejection::TooDeep { depth: 0, max: 0 },
            Rejection::NotObject { found: "array" },
            Rejection::NoUpdateId,
            Rejection::UpdateIdNotInteger { found: "string" },
            Rejection::UpdateIdOutOfRange {
                literal: String::new(),
            },
        ];
        let classes: std::collections::BTreeSet<_> = all.iter().map(Rejection::class).collect();
        assert_eq!(classes.len(), all.len());
        for class in classes {
            assert!(
                class
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit()),
                "{class}"
            );
        }
    }

    #[test]
    fn the_message_names_the_reason() {
        let rejection = Rejection::NotObject { found: "array" };
        assert_eq!(
            rejection.to_string(),
            "top-level JSON value is array, not an object"
        );
    }
}
