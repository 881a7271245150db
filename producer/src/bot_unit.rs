//! One bot's unit as every part of its intake reports it: the readiness unit `bot #n` and the
//! per-bot metrics (`tgingest_bot_up{bot}`, failures), shared by the supervisor, the poller and the
//! getWebhookInfo watch.
//!
//! Guarantees: a bot's reports touch only its own unit; in webhook mode a failing bot stays ready
//! (its failure is in the unit's detail), because readiness gates the whole pod's traffic; a
//! recovery is logged once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::metrics;
use crate::readiness::{Readiness, Unit};
use crate::telegram::TelegramError;

/// One bot's readiness unit and metrics.
#[derive(Debug)]
pub(crate) struct BotUnit {
    /// 1-based position in the token list.
    pub(crate) position: usize,
    /// The bot id its token carries.
    pub(crate) bot_id: i64,
    unit: Unit,
    /// Webhook mode: the bot's route is served whatever its Bot API calls answer, and readiness
    /// gates the whole pod, so failures go into the detail of a ready unit (see
    /// [`crate::readiness`]).
    webhook: bool,
    /// The last report was a failure (so recovery is logged once).
    failing: AtomicBool,
    readiness: Arc<dyn Readiness>,
}

impl BotUnit {
    /// Bot `position` (id `bot_id`), reported not ready ("starting") at once.
    pub(crate) fn new(
        position: usize,
        bot_id: i64,
        webhook: bool,
        readiness: Arc<dyn Readiness>,
    ) -> Self {
        let unit = Self {
            position,
            bot_id,
            unit: Unit::bot(position),
            webhook,
            failing: AtomicBool::new(false),
            readiness,
        };
        unit.readiness.not_ready(&unit.unit, "starting");
        metrics::bot_up(bot_id, false);
        unit
    }

    /// The bot is served; `detail` says how (`polling`, `webhook served`).
    pub(crate) fn up(&self, detail: &str) {
        if self.failing.swap(false, Ordering::Relaxed) {
            tracing::info!(
                bot = self.position,
                bot_id = self.bot_id,
                "bot served again"
            );
        }
        self.readiness.ready(&self.unit, detail);
        metrics::bot_up(self.bot_id, true);
    }

    /// A failed call of this bot that does not change whether it is served (counted only).
    pub(crate) fn failed(&self, error: &TelegramError) {
        metrics::telegram_error(self.bot_id, error);
    }

    /// `call` failed in a way that leaves the bot not served until it succeeds again.
    pub(crate) fn down(&self, call: &str, error: &TelegramError) {
        self.failed(error);
        self.failing.store(true, Ordering::Relaxed);
        metrics::bot_up(self.bot_id, false);
        let reason = format!("{call} failed: {error}");
        if self.webhook {
            self.readiness
                .ready(&self.unit, &format!("webhook served; {reason}"));
        } else {
            self.readiness.not_ready(&self.unit, &reason);
        }
    }
}

/// Sleeps `delay`; `true` when `stop` came first.
pub(crate) async fn sleep_or_stop(delay: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        () = stop.cancelled() => true,
        () = tokio::time::sleep(delay) => false,
    }
}
