//! The one spelling of a time in operator reports: RFC 3339, UTC, milliseconds.

/// Unix milliseconds as RFC 3339 UTC with milliseconds (the number itself when out of range).
pub fn format_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    )
}
