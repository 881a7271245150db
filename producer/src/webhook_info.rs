//! What Telegram holds for each webhook bot: getWebhookInfo, read per bot every `info_interval`
//! (a minute by default), is the early warning of the 24-hour loss in webhook deployments.
//!
//! Guarantees: `tgingest_webhook_pending_updates{bot}` and
//! `tgingest_webhook_last_error_timestamp_seconds{bot}` follow every answer;
//! `tgingest_webhook_last_delivery_age_seconds{bot}` is refreshed at every read, from the
//! deliveries this process received ([`WebhookWatch::delivered`]); Telegram's last error message
//! is logged once each time it changes, never put in a label (free text). A failing read is
//! reported on the bot's unit and tried again at the next interval (a 429 after `retry_after`
//! when that is longer); it never affects intake.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::bot_unit::{BotUnit, sleep_or_stop};
use crate::metrics;
use crate::telegram::{BotClient, TelegramError};

/// The webhook's deliveries as this process saw them, shared by the endpoint and the readers.
#[derive(Debug)]
pub(crate) struct WebhookWatch {
    interval: Duration,
    /// When the endpoint started: the age of the last delivery before the first one.
    started: Instant,
    last_delivery: Mutex<HashMap<i64, Instant>>,
}

impl WebhookWatch {
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            interval,
            started: Instant::now(),
            last_delivery: Mutex::new(HashMap::new()),
        }
    }

    /// An authenticated delivery for `bot_id` arrived.
    pub(crate) fn delivered(&self, bot_id: i64) {
        self.lock().insert(bot_id, Instant::now());
    }

    fn delivery_age(&self, bot_id: i64) -> Duration {
        self.lock()
            .get(&bot_id)
            .copied()
            .unwrap_or(self.started)
            .elapsed()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Instant>> {
        self.last_delivery.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Reads the bot's getWebhookInfo every interval until `stop`.
pub(crate) async fn watch(
    bot: &BotClient,
    unit: &BotUnit,
    watch: &WebhookWatch,
    stop: &CancellationToken,
) {
    let mut last_error: Option<String> = None;
    loop {
        metrics::webhook_delivery_age(bot.id, watch.delivery_age(bot.id).as_secs_f64());
        let answer = tokio::select! {
            () = stop.cancelled() => return,
            answer = bot.get_webhook_info() => answer,
        };
        let mut delay = watch.interval;
        match answer {
            Ok(info) => {
                metrics::webhook_info(bot.id, info.pending_update_count, info.last_error_date);
                if info.last_error_message != last_error {
                    if let Some(message) = &info.last_error_message {
                        tracing::warn!(
                            error = %message,
                            date = ?info.last_error_date,
                            pending = info.pending_update_count,
                            "webhook delivery error reported by Telegram (getWebhookInfo)"
                        );
                    }
                    last_error = info.last_error_message;
                }
                unit.up("webhook served");
            }
            Err(error) => {
                unit.down("getWebhookInfo", &error);
                if let TelegramError::TooManyRequests { retry_after } = &error {
                    delay = delay.max(*retry_after);
                }
                tracing::warn!(%error, retry_in = ?delay, "getWebhookInfo failed");
            }
        }
        if sleep_or_stop(delay, stop).await {
            return;
        }
    }
}
