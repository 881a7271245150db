//! A lexical pass over the JSON text of one update, run before serde sees it.
//!
//! Telegram forwards user-supplied text verbatim, so an update can contain `\u0000` escapes and
//! lone UTF-16 surrogate escapes (`"\ud800"`). serde_json refuses lone surrogates when decoding a
//! string, PostgreSQL's `jsonb` refuses both (22P05, 22P02) and PostgreSQL `text` refuses NUL.
//! This pass:
//!
//! - rewrites every `\u0000` escape and every lone surrogate escape to `\ufffd`. The rewrite has
//!   the same length, so serde's line/column positions still point into the original text, and
//!   it is applied to the typed view only: the caller keeps the original bytes untouched;
//! - reports whether PostgreSQL's `jsonb` input would accept the *original* text (no such
//!   escape, every number within `numeric`'s limits, size within `jsonb`'s limit);
//! - measures the nesting depth, so input deeper than serde_json's recursion limit is refused
//!   with its own reason instead of an opaque parse error.
//!
//! It respects string boundaries and `\\` (so `"\\u0000"` is a backslash followed by text, not
//! an escape), never panics, and passes malformed JSON through for serde to diagnose.

use std::borrow::Cow;

/// The deepest nesting accepted for a whole update. The content is decoded into a
/// `serde_json::Value`, which refuses a 128th nested level; the content sits one level inside the
/// update object, so a whole update may nest 128 levels. (Reading the envelope itself is
/// iterative in serde_json and has no such limit.)
pub(crate) const MAX_DEPTH: usize = 128;

/// PostgreSQL stores a `jsonb` value in at most 0x0FFF_FFFF bytes (JENTRY_OFFLENMASK). The text
/// form is a close proxy for the binary size; anything near the limit is refused as `jsonb`.
const JSONB_MAX_TEXT_BYTES: usize = 0x0FFF_FFFF;

const REPLACEMENT_ESCAPE: &[u8; 6] = b"\\ufffd";

/// What the lexical pass found in one JSON text.
#[derive(Debug)]
pub(crate) struct Scan<'a> {
    /// The text to hand to serde: the input, with NUL and lone surrogate escapes rewritten.
    pub(crate) text: Cow<'a, str>,
    pub(crate) nul_escapes: usize,
    pub(crate) lone_surrogates: usize,
    /// False when some number literal is outside PostgreSQL `numeric`'s range.
    pub(crate) numbers_fit_numeric: bool,
    pub(crate) max_depth: usize,
}

impl Scan<'_> {
    /// Whether PostgreSQL would accept the original text as `jsonb` (given that it is valid JSON).
    pub(crate) fn jsonb_ok(&self) -> bool {
        self.nul_escapes == 0
            && self.lone_surrogates == 0
            && self.numbers_fit_numeric
            && self.text.len() < JSONB_MAX_TEXT_BYTES
    }
}

/// Runs the lexical pass over `input`.
pub(crate) fn scan(input: &str) -> Scan<'_> {
    let bytes = input.as_bytes();
    let mut rewritten: Option<Vec<u8>> = None;
    let mut nul_escapes = 0;
    let mut lone_surrogates = 0;
    let mut numbers_fit_numeric = true;
    let mut depth = 0usize;
    let mut max_depth = 0usize;
    let mut in_string = false;
    let mut i = 0;

    while i < bytes.len() {
        let byte = bytes[i];
        if in_string {
            match byte {
                b'"' => {
                    in_string = false;
                    i += 1;
                }
                b'\\' if bytes.get(i + 1) == Some(&b'u') => {
                    let Some(unit) = hex4(bytes, i + 2) else {
                        // Malformed escape: serde reports it with a position.
                        i += 2;
                        continue;
                    };
                    let lone = match unit {
                        0xD800..=0xDBFF => {
                            let low_follows = bytes.get(i + 6) == Some(&b'\\')
                                && bytes.get(i + 7) == Some(&b'u')
                                && matches!(hex4(bytes, i + 8), Some(0xDC00..=0xDFFF));
                            if low_follows {
                                i += 12;
                                continue;
                            }
                            true
                        }
                        0xDC00..=0xDFFF => true,
                        _ => false,
                    };
                    if lone || unit == 0 {
                        if lone {
                            lone_surrogates += 1;
                        } else {
                            nul_escapes += 1;
                        }
                        let out = rewritten.get_or_insert_with(|| bytes.to_vec());
                        out[i..i + 6].copy_from_slice(REPLACEMENT_ESCAPE);
                    }
                    i += 6;
                }
                // Any other escape: skip the escaped byte so `\"` and `\\` do not end the string.
                b'\\' => i += 2,
                _ => i += 1,
            }
        } else {
            match byte {
                b'"' => {
                    in_string = true;
                    i += 1;
                }
                b'{' | b'[' => {
                    depth += 1;
                    max_depth = max_depth.max(depth);
                    i += 1;
                }
                b'}' | b']' => {
                    depth = depth.saturating_sub(1);
                    i += 1;
                }
                b'-' | b'0'..=b'9' => {
                    let start = i;
                    while i < bytes.len()
                        && matches!(bytes[i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
                    {
                        i += 1;
                    }
                    if !fits_postgres_numeric(&bytes[start..i]) {
                        numbers_fit_numeric = false;
                    }
                }
                _ => i += 1,
            }
        }
    }

    let text = match rewritten {
        // Only ASCII escapes were replaced by ASCII of the same length, so UTF-8 is preserved;
        // the fallback keeps this total without a panic path.
        Some(out) => match String::from_utf8(out) {
            Ok(text) => Cow::Owned(text),
            Err(_) => Cow::Borrowed(input),
        },
        None => Cow::Borrowed(input),
    };
    Scan {
        text,
        nul_escapes,
        lone_surrogates,
        numbers_fit_numeric,
        max_depth,
    }
}

/// The four hex digits at `at`, as a UTF-16 code unit.
fn hex4(bytes: &[u8], at: usize) -> Option<u32> {
    let digits = bytes.get(at..at + 4)?;
    digits.iter().try_fold(0u32, |acc, &d| {
        let v = (d as char).to_digit(16)?;
        Some(acc * 16 + v)
    })
}

/// Whether PostgreSQL 15's `numeric_in` accepts this JSON number literal.
///
/// Mirrors `set_var_from_str` + `make_result`: the exponent must be below INT_MAX/2 in
/// magnitude, the display scale (fraction digits minus exponent, floored at 0) at most 16383,
/// and a non-zero value's base-10000 weight at most 32767 (131072 digits before the point).
/// A literal that is not a JSON number is reported as fitting: serde rejects it anyway.
fn fits_postgres_numeric(literal: &[u8]) -> bool {
    const EXPONENT_LIMIT: i64 = i32::MAX as i64 / 2;
    const DSCALE_MAX: i64 = 0x3FFF;
    const WEIGHT_MAX: i64 = i16::MAX as i64;

    let unsigned = literal.strip_prefix(b"-").unwrap_or(literal);
    let int_len = unsigned.iter().take_while(|b| b.is_ascii_digit()).count();
    let (int_digits, rest) = unsigned.split_at(int_len);
    let (frac_digits, rest) = match rest.strip_prefix(b".") {
        Some(after_point) => {
            let n = after_point
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            after_point.split_at(n)
        }
        None => (&rest[..0], rest),
    };
    let exponent: i64 = match rest.first() {
        None => 0,
        Some(b'e' | b'E') => {
            let exp = &rest[1..];
            let (negative, digits) = match exp.first() {
                Some(b'-') => (true, &exp[1..]),
                Some(b'+') => (false, &exp[1..]),
                _ => (false, exp),
            };
            if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                return true;
            }
            let magnitude = digits.iter().fold(0i64, |acc, &d| {
                acc.saturating_mul(10).saturating_add(i64::from(d - b'0'))
            });
            if negative { -magnitude } else { magnitude }
        }
        Some(_) => return true,
    };
    if int_digits.is_empty() {
        return true;
    }
    if exponent >= EXPONENT_LIMIT || exponent <= -EXPONENT_LIMIT {
        return false;
    }
    let frac_len = i64::try_from(frac_digits.len()).unwrap_or(i64::MAX);
    let dscale = frac_len.saturating_sub(exponent).max(0);
    if dscale > DSCALE_MAX {
        return false;
    }
    // Decimal weight of the first non-zero digit (0 = units); zero has no weight to overflow.
    let int_len = i64::try_from(int_digits.len()).unwrap_or(i64::MAX);
    let first_nonzero = match int_digits.iter().position(|&d| d != b'0') {
        Some(k) => Some(int_len - 1 - k as i64),
        None => frac_digits
            .iter()
            .position(|&d| d != b'0')
            .map(|k| -(k as i64) - 1),
    };
    match first_nonzero {
        None => true,
        Some(decimal_weight) => (decimal_weight + exponent).div_euclid(4) <= WEIGHT_MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_high_surrogate_is_rewritten_and_counted() {
        let scan = scan(r#"{"t":"a\ud800b"}"#);
        assert_eq!(scan.text, r#"{"t":"a\ufffdb"}"#);
        assert_eq!(scan.lone_surrogates, 1);
        assert!(!scan.jsonb_ok());
    }

    #[test]
    fn a_lone_low_surrogate_is_rewritten_and_counted() {
        let scan = scan(r#"["\uDC00"]"#);
        assert_eq!(scan.text, r#"["\ufffd"]"#);
        assert_eq!(scan.lone_surrogates, 1);
    }

    #[test]
    fn a_valid_surrogate_pair_is_left_alone_in_either_case() {
        for text in [r#"["\ud83d\ude00"]"#, r#"["\uD83D\uDE00"]"#] {
            let scan = scan(text);
            assert!(matches!(scan.text, Cow::Borrowed(_)));
            assert_eq!(scan.lone_surrogates, 0);
            assert!(scan.jsonb_ok());
        }
    }

    #[test]
    fn a_high_surrogate_followed_by_another_high_is_two_lone_surrogates() {
        let scan = scan(r#"["\ud800\ud800"]"#);
        assert_eq!(scan.text, r#"["\ufffd\ufffd"]"#);
        assert_eq!(scan.lone_surrogates, 2);
    }

    #[test]
    fn a_high_surrogate_at_the_end_of_a_pair_attempt_keeps_the_following_low() {
        // The first high is lone; the second high pairs with the low.
        let scan = scan(r#"["\ud800\ud83d\ude00"]"#);
        assert_eq!(scan.text, r#"["\ufffd\ud83d\ude00"]"#);
        assert_eq!(scan.lone_surrogates, 1);
    }

    #[test]
    fn a_nul_escape_is_rewritten_and_makes_jsonb_refuse() {
        let scan = scan(r#"{"a\u0000":"x\u0000"}"#);
        assert_eq!(scan.text, r#"{"a\ufffd":"x\ufffd"}"#);
        assert_eq!(scan.nul_escapes, 2);
        assert!(!scan.jsonb_ok());
    }

    #[test]
    fn an_escaped_backslash_before_u_is_text_not_an_escape() {
        let scan = scan(r#"["\\ud800", "\\u0000", "\"\ud800"]"#);
        assert_eq!(scan.text, r#"["\\ud800", "\\u0000", "\"\ufffd"]"#);
        assert_eq!(scan.lone_surrogates, 1);
        assert_eq!(scan.nul_escapes, 0);
    }

    #[test]
    fn escape_like_text_outside_strings_is_not_rewritten() {
        let scan = scan(r#"\ud800 "x" \u0000"#);
        assert!(matches!(scan.text, Cow::Borrowed(_)));
        assert_eq!(scan.lone_surrogates + scan.nul_escapes, 0);
    }

    #[test]
    fn truncated_escapes_do_not_panic() {
        for text in [
            r#""\"#,
            r#""\u"#,
            r#""\ud8"#,
            r#""\ud800\"#,
            r#""\ud800\u"#,
            r#""\ud800\udc"#,
        ] {
            let scan = scan(text);
            assert_eq!(scan.text.len(), text.len());
        }
    }

    #[test]
    fn non_ascii_text_survives_a_rewrite_byte_for_byte() {
        let scan = scan("[\"Привет 👋 \\ud800 日本\"]");
        assert_eq!(scan.text, "[\"Привет 👋 \\ufffd 日本\"]");
    }

    #[test]
    fn content_within_max_depth_is_exactly_what_serde_json_values_can_hold() {
        let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let parse = |text: &str| serde_json::from_str::<serde_json::Value>(text);
        assert!(parse(&nested(MAX_DEPTH - 1)).is_ok());
        let error = parse(&nested(MAX_DEPTH)).expect_err("one level too deep");
        assert!(error.to_string().contains("recursion limit"), "{error}");
    }

    #[test]
    fn depth_counts_only_brackets_outside_strings() {
        let scan = scan(r#"{"a":[{"b":"[[[{{{"}]}"#);
        assert_eq!(scan.max_depth, 3);
    }

    #[test]
    fn numbers_within_numeric_limits_fit() {
        for literal in [
            "0",
            "-0",
            "1",
            "-17",
            "3.25",
            "1e1000",
            "1e-1000",
            "1e131071",
            "1e-16383",
            "0e999999",
            "12345678901234567890123",
            "0.5E+3",
            "9.99e131070",
        ] {
            assert!(fits_postgres_numeric(literal.as_bytes()), "{literal}");
        }
    }

    #[test]
    fn numbers_beyond_numeric_limits_do_not_fit() {
        // Each verified against PostgreSQL 15 ("value overflows numeric format").
        for literal in [
            "1e131072",
            "10e131071",
            "1e-16384",
            "1.5e-16383",
            "0.0e-20000",
            "0.000001e-16378",
            "1e2147483647",
            "0e1073741823",
            "0e-1073741822",
            "1e99999999999999999999999",
        ] {
            assert!(!fits_postgres_numeric(literal.as_bytes()), "{literal}");
        }
    }

    #[test]
    fn a_huge_number_in_the_text_makes_jsonb_refuse() {
        assert!(!scan(r#"{"n":1e131072}"#).jsonb_ok());
        assert!(scan(r#"{"n":1e131071}"#).jsonb_ok());
    }
}
