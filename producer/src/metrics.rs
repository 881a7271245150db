//! The producer's metrics (names are part of the operator contract: dashboards and alerts use
//! them).
//!
//! - `tgingest_updates_received_total{bot,kind}`: updates received from Telegram.
//! - `tgingest_publish_seconds`: time from handing a batch (or a webhook update) to Kafka until
//!   every delivery report of it arrived, successful or not.
//! - `tgingest_telegram_errors_total{code}`: failed Bot API calls by HTTP code, or `network`,
//!   `timeout`, `malformed`.
//! - `tgingest_last_confirmed_update_id{bot}`: the highest update id Telegram was told to forget.
//! - `tgingest_oldest_unconfirmed_age_seconds{bot}`: how long the oldest update this process holds
//!   unconfirmed has been waiting since it was received (0 when none). Telegram keeps unconfirmed
//!   updates for 24 hours only, so this is the operator's alarm.
//! - `tgingest_publish_failures_total`: publish attempts that did not get every ack (retried).
//! - `tgingest_producer_recreated_total{cause}`: Kafka producers rebuilt (`fatal` error, or
//!   deliveries `timeout`).
//! - `tgingest_webhook_rejected_total{reason}`: webhook requests refused before Kafka.
//! - `tgingest_unconfirmable_batches_total{bot}`: getUpdates answers in which no element has an
//!   `update_id`, so nothing can be confirmed and Telegram serves them again (alert on any).

pub(crate) const UPDATES_RECEIVED: &str = "tgingest_updates_received_total";
pub(crate) const PUBLISH_SECONDS: &str = "tgingest_publish_seconds";
pub(crate) const TELEGRAM_ERRORS: &str = "tgingest_telegram_errors_total";
pub(crate) const LAST_CONFIRMED: &str = "tgingest_last_confirmed_update_id";
pub(crate) const OLDEST_UNCONFIRMED_AGE: &str = "tgingest_oldest_unconfirmed_age_seconds";
pub(crate) const PUBLISH_FAILURES: &str = "tgingest_publish_failures_total";
pub(crate) const PRODUCER_RECREATED: &str = "tgingest_producer_recreated_total";
pub(crate) const WEBHOOK_REJECTED: &str = "tgingest_webhook_rejected_total";
pub(crate) const UNCONFIRMABLE_BATCHES: &str = "tgingest_unconfirmable_batches_total";

/// Registers descriptions with the installed recorder (idempotent; harmless without one).
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        UPDATES_RECEIVED,
        "Updates received from Telegram, by bot and kind"
    );
    describe_histogram!(
        PUBLISH_SECONDS,
        Unit::Seconds,
        "Time until every delivery report of a batch arrived"
    );
    describe_counter!(
        TELEGRAM_ERRORS,
        "Failed Bot API calls, by HTTP code or failure class"
    );
    describe_gauge!(
        LAST_CONFIRMED,
        "Highest update id confirmed to Telegram, by bot"
    );
    describe_gauge!(
        OLDEST_UNCONFIRMED_AGE,
        Unit::Seconds,
        "Age of the oldest update held unconfirmed, by bot (Telegram drops them after 24 h)"
    );
    describe_counter!(
        PUBLISH_FAILURES,
        "Publish attempts that were not fully acknowledged"
    );
    describe_counter!(
        PRODUCER_RECREATED,
        "Kafka producers rebuilt after a fatal error"
    );
    describe_counter!(
        WEBHOOK_REJECTED,
        "Webhook requests refused before reaching Kafka"
    );
    describe_counter!(
        UNCONFIRMABLE_BATCHES,
        "getUpdates answers without any update_id (cannot be confirmed), by bot"
    );
}

pub(crate) fn telegram_error(code: &str) {
    metrics::counter!(TELEGRAM_ERRORS, "code" => code.to_owned()).increment(1);
}

pub(crate) fn received(bot_id: i64, kind: &str) {
    metrics::counter!(UPDATES_RECEIVED, "bot" => bot_id.to_string(), "kind" => kind.to_owned())
        .increment(1);
}

pub(crate) fn last_confirmed(bot_id: i64, update_id: i64) {
    // f64 is exact for every id below 2^53; Telegram's update ids are 32-bit.
    metrics::gauge!(LAST_CONFIRMED, "bot" => bot_id.to_string()).set(update_id as f64);
}

pub(crate) fn oldest_unconfirmed_age(bot_id: i64, seconds: f64) {
    metrics::gauge!(OLDEST_UNCONFIRMED_AGE, "bot" => bot_id.to_string()).set(seconds);
}

pub(crate) fn unconfirmable_batch(bot_id: i64) {
    metrics::counter!(UNCONFIRMABLE_BATCHES, "bot" => bot_id.to_string()).increment(1);
}
