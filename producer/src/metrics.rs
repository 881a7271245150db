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

//! - `tgingest_bot_up{bot}`: 1 while the bot is served (its getUpdates answers; in webhook mode,
//!   its getMe, setWebhook and getWebhookInfo succeed), 0 while its token is rejected or its
//!   calls fail.
//! - `tgingest_bot_failures_total{bot,reason}`: failed Bot API calls of one bot, by `reason`
//!   (`unauthorized`, `rate_limited`, `conflict`, `server_error`, `refused`, `timeout`,
//!   `network`, `malformed`).
//! - `tgingest_webhook_pending_updates{bot}`: updates Telegram holds for the bot's webhook
//!   (getWebhookInfo); Telegram drops them after 24 hours.
//! - `tgingest_webhook_last_error_timestamp_seconds{bot}`: Unix time of Telegram's last failed
//!   delivery to the webhook (0: none reported).
//! - `tgingest_webhook_last_delivery_age_seconds{bot}`: seconds since this process last
//!   received an authenticated delivery for the bot (since the webhook started, before the
//!   first).
//! - `tgingest_topic_replication_factor{topic}` and `tgingest_topic_min_insync_replicas{topic}`:
//!   the topic's durability as the broker reported it at startup (absent where it cannot say).

pub(crate) const UPDATES_RECEIVED: &str = "tgingest_updates_received_total";
pub(crate) const PUBLISH_SECONDS: &str = "tgingest_publish_seconds";
pub(crate) const TELEGRAM_ERRORS: &str = "tgingest_telegram_errors_total";
pub(crate) const LAST_CONFIRMED: &str = "tgingest_last_confirmed_update_id";
pub(crate) const OLDEST_UNCONFIRMED_AGE: &str = "tgingest_oldest_unconfirmed_age_seconds";
pub(crate) const PUBLISH_FAILURES: &str = "tgingest_publish_failures_total";
pub(crate) const PRODUCER_RECREATED: &str = "tgingest_producer_recreated_total";
pub(crate) const WEBHOOK_REJECTED: &str = "tgingest_webhook_rejected_total";
pub(crate) const UNCONFIRMABLE_BATCHES: &str = "tgingest_unconfirmable_batches_total";
pub(crate) const BOT_UP: &str = "tgingest_bot_up";
pub(crate) const BOT_FAILURES: &str = "tgingest_bot_failures_total";
pub(crate) const WEBHOOK_PENDING: &str = "tgingest_webhook_pending_updates";
pub(crate) const WEBHOOK_LAST_ERROR: &str = "tgingest_webhook_last_error_timestamp_seconds";
pub(crate) const WEBHOOK_DELIVERY_AGE: &str = "tgingest_webhook_last_delivery_age_seconds";
pub(crate) const TOPIC_REPLICATION: &str = "tgingest_topic_replication_factor";
pub(crate) const TOPIC_MIN_INSYNC: &str = "tgingest_topic_min_insync_replicas";

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
    describe_gauge!(
        BOT_UP,
        "1 while the bot is served, 0 while it fails, by bot"
    );
    describe_counter!(
        BOT_FAILURES,
        "Failed Bot API calls of one bot, by bot and reason"
    );
    describe_gauge!(
        WEBHOOK_PENDING,
        "Updates Telegram holds for the bot's webhook (getWebhookInfo), by bot"
    );
    describe_gauge!(
        WEBHOOK_LAST_ERROR,
        Unit::Seconds,
        "Unix time of Telegram's last failed webhook delivery (0: none), by bot"
    );
    describe_gauge!(
        WEBHOOK_DELIVERY_AGE,
        Unit::Seconds,
        "Seconds since this process last received a webhook delivery, by bot"
    );
    describe_gauge!(
        TOPIC_REPLICATION,
        "Replication factor of the topic (lowest over its partitions), by topic"
    );
    describe_gauge!(
        TOPIC_MIN_INSYNC,
        "min.insync.replicas of the topic, by topic"
    );
}

/// A failed Bot API call of bot `bot_id`.
pub(crate) fn telegram_error(bot_id: i64, error: &crate::telegram::TelegramError) {
    metrics::counter!(TELEGRAM_ERRORS, "code" => error.metric_code()).increment(1);
    metrics::counter!(BOT_FAILURES, "bot" => bot_id.to_string(), "reason" => error.reason())
        .increment(1);
}

pub(crate) fn bot_up(bot_id: i64, up: bool) {
    metrics::gauge!(BOT_UP, "bot" => bot_id.to_string()).set(if up { 1.0 } else { 0.0 });
}

pub(crate) fn webhook_info(bot_id: i64, pending: u64, last_error_date: Option<i64>) {
    let bot = bot_id.to_string();
    // f64 is exact for every count and date that can occur.
    metrics::gauge!(WEBHOOK_PENDING, "bot" => bot.clone()).set(pending as f64);
    metrics::gauge!(WEBHOOK_LAST_ERROR, "bot" => bot).set(last_error_date.unwrap_or(0) as f64);
}

pub(crate) fn webhook_delivery_age(bot_id: i64, seconds: f64) {
    metrics::gauge!(WEBHOOK_DELIVERY_AGE, "bot" => bot_id.to_string()).set(seconds);
}

pub(crate) fn topic_durability(topic: &str, replication: Option<usize>, min_insync: Option<u32>) {
    if let Some(replication) = replication {
        metrics::gauge!(TOPIC_REPLICATION, "topic" => topic.to_owned()).set(replication as f64);
    }
    if let Some(min_insync) = min_insync {
        metrics::gauge!(TOPIC_MIN_INSYNC, "topic" => topic.to_owned()).set(f64::from(min_insync));
    }
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
