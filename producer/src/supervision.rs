//! Each configured bot as its own supervised unit (DESIGN.md §6: one intake unit failing never
//! stops the others; the process exits only when none can run).
//!
//! Guarantees:
//! - A bot's Bot API failures — a token rejected at startup or later, getMe or setWebhook errors —
//!   are retried without end, with capped backoff and jitter (a 429 waits exactly its
//!   `retry_after`), and are reported on that bot's own unit ([`BotUnit`]: readiness unit
//!   `bot #n`, `tgingest_bot_up{bot}`, `tgingest_bot_failures_total{bot,reason}`). No bot's
//!   failure touches another bot's unit, task or intake.
//! - [`StartupVerdicts`] decides when no bot can run: every configured token was rejected (401)
//!   before any bot was identified. Transient failures (network, 5xx, 429, malformed answers)
//!   never decide it, and once one bot was identified nothing Telegram answers ends the process.
//! - Bots are named by position and id, never by token.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use url::Url;

use crate::backoff::Backoff;
use crate::bot_unit::{BotUnit, sleep_or_stop};
use crate::config::BackoffPolicy;
use crate::poller::{self, PollContext};
use crate::telegram::{BotClient, TelegramError};
use crate::webhook_info::{self, WebhookWatch};

/// Which bots Telegram rejected at startup, to tell when no bot can run.
#[derive(Debug)]
pub(crate) struct StartupVerdicts {
    bots: usize,
    state: Mutex<Verdicts>,
    none_can_run: CancellationToken,
    some_identified: CancellationToken,
}

#[derive(Debug, Default)]
struct Verdicts {
    /// Positions whose latest getMe answered 401, before any bot was identified.
    rejected: BTreeSet<usize>,
    /// Some bot was identified: the process serves at least one bot from now on.
    identified: bool,
}

impl StartupVerdicts {
    pub(crate) fn new(bots: usize) -> Self {
        Self {
            bots,
            state: Mutex::new(Verdicts::default()),
            none_can_run: CancellationToken::new(),
            some_identified: CancellationToken::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Verdicts> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn rejected(&self, position: usize) {
        let mut state = self.lock();
        if state.identified {
            return;
        }
        state.rejected.insert(position);
        if state.rejected.len() == self.bots {
            self.none_can_run.cancel();
        }
    }

    fn identified(&self, position: usize) {
        let mut state = self.lock();
        state.identified = true;
        state.rejected.remove(&position);
        self.some_identified.cancel();
    }

    /// Resolves once some bot was identified (from then on, nothing Telegram answers ends the
    /// process).
    pub(crate) async fn some_identified(&self) {
        self.some_identified.cancelled().await;
    }

    /// Resolves, with the one line to exit with, once every token was rejected at startup.
    pub(crate) async fn none_can_run(&self) -> String {
        self.none_can_run.cancelled().await;
        let bots: Vec<String> = (1..=self.bots).map(|n| format!("bot #{n}")).collect();
        format!(
            "no bot can run: every token was rejected by Telegram (401 Unauthorized): {}",
            bots.join(", ")
        )
    }
}

/// Waits for every bot task to end (after `stop`), or ends them all when no bot can run or a task
/// panicked; the error is the one line to exit with.
pub(crate) async fn supervise(
    units: &mut JoinSet<()>,
    verdicts: &StartupVerdicts,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let mut failure: Option<anyhow::Error> = None;
    loop {
        tokio::select! {
            done = units.join_next() => match done {
                None => break,
                Some(Ok(())) => {}
                Some(Err(error)) => {
                    // A bot task cannot fail by design; if one panicked anyway, stop the others
                    // so the process restarts instead of silently serving fewer bots.
                    stop.cancel();
                    failure.get_or_insert_with(|| anyhow::anyhow!("a bot's task failed: {error}"));
                }
            },
            line = verdicts.none_can_run(), if failure.is_none() => {
                stop.cancel();
                failure = Some(anyhow::anyhow!(line));
            }
        }
    }
    failure.map_or(Ok(()), Err)
}

/// How a bot takes its updates once Telegram accepted its token.
pub(crate) enum BotIntake {
    /// Poll getUpdates, once the topic is checked (`gate` turns `true`).
    Polling {
        context: Arc<PollContext>,
        gate: watch::Receiver<bool>,
    },
    /// The bot's route is already served: register the webhook (when the producer does), then
    /// read getWebhookInfo.
    Webhook(Arc<WebhookBot>),
}

/// What one webhook bot's task needs besides its client.
#[derive(Debug)]
pub(crate) struct WebhookBot {
    /// `{public_url}/webhook/{bot_id}` when the producer registers the webhook itself.
    pub(crate) register: Option<Url>,
    pub(crate) secret: secrecy::SecretString,
    pub(crate) allowed_updates: Vec<String>,
    pub(crate) watch: Arc<WebhookWatch>,
}

/// One bot's task: getMe until Telegram accepts the token, then its intake, until `stop`.
pub(crate) async fn run_bot(
    bot: BotClient,
    unit: Arc<BotUnit>,
    intake: BotIntake,
    verdicts: Arc<StartupVerdicts>,
    backoff: BackoffPolicy,
    stop: CancellationToken,
) {
    let span = tracing::info_span!("bot", bot = bot.position, bot_id = bot.id);
    async move {
        let identified = until_accepted(
            "getMe",
            &unit,
            backoff,
            &stop,
            || bot.get_me(),
            |error| {
                if matches!(error, TelegramError::Unauthorized) {
                    verdicts.rejected(bot.position);
                }
            },
        )
        .await;
        let Some(me) = identified else { return };
        verdicts.identified(bot.position);
        if me.id != bot.id {
            tracing::warn!(
                getme_id = me.id,
                "getMe names another id than the token carries; the token's id is used"
            );
        }
        tracing::info!(username = ?me.username, "bot identified");
        match intake {
            BotIntake::Polling { context, mut gate } => {
                tokio::select! {
                    () = stop.cancelled() => return,
                    open = gate.wait_for(|open| *open) => if open.is_err() { return },
                }
                poller::poll_bot(Arc::new(bot), unit, context, stop).await;
            }
            BotIntake::Webhook(context) => {
                if let Some(url) = &context.register {
                    let set = || bot.set_webhook(url, &context.secret, &context.allowed_updates);
                    if until_accepted("setWebhook", &unit, backoff, &stop, set, |_| {})
                        .await
                        .is_none()
                    {
                        return;
                    }
                    tracing::info!(url = %url, "webhook registered");
                }
                unit.up("webhook served");
                webhook_info::watch(&bot, &unit, &context.watch, &stop).await;
            }
        }
    }
    .instrument(span)
    .await;
}

/// Calls `call` until Telegram accepts it. Each failure is seen by `on_failure`, reported on the
/// bot's unit as `name` failing, logged, and waited out: a 429 exactly its `retry_after`, anything
/// else with backoff and jitter. Only this bot waits. `None` when `stop` came first.
async fn until_accepted<T, Call, Answer>(
    name: &str,
    unit: &BotUnit,
    policy: BackoffPolicy,
    stop: &CancellationToken,
    call: Call,
    mut on_failure: impl FnMut(&TelegramError),
) -> Option<T>
where
    Call: Fn() -> Answer,
    Answer: Future<Output = Result<T, TelegramError>>,
{
    let mut backoff = Backoff::new(policy);
    loop {
        let error = tokio::select! {
            () = stop.cancelled() => return None,
            answer = call() => match answer {
                Ok(accepted) => return Some(accepted),
                Err(error) => error,
            },
        };
        on_failure(&error);
        unit.down(name, &error);
        let delay = match &error {
            TelegramError::TooManyRequests { retry_after } => *retry_after,
            _ => backoff.next_delay(),
        };
        if matches!(error, TelegramError::Unauthorized) {
            tracing::error!(%error, retry_in = ?delay, "{name} failed: this bot is retried, the others are not affected");
        } else {
            tracing::warn!(%error, retry_in = ?delay, "{name} failed; retrying");
        }
        if sleep_or_stop(delay, stop).await {
            return None;
        }
    }
}

/// The URL Telegram delivers bot `bot_id`'s updates to: `{public_url}/webhook/{bot_id}`.
pub(crate) fn webhook_url(public_url: &Url, bot_id: i64) -> Url {
    let mut url = public_url.clone();
    // `validate` refused a public URL that cannot be a base.
    if let Ok(mut segments) = url.path_segments_mut() {
        segments
            .pop_if_empty()
            .push("webhook")
            .push(&bot_id.to_string());
    }
    url
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn no_bot_can_run_only_when_every_token_was_rejected_before_any_was_identified() {
        let verdicts = StartupVerdicts::new(2);
        verdicts.rejected(1);
        verdicts.rejected(1);
        assert!(!verdicts.none_can_run.is_cancelled());
        verdicts.rejected(2);
        assert_eq!(
            verdicts.none_can_run().await,
            "no bot can run: every token was rejected by Telegram (401 Unauthorized): bot #1, bot #2"
        );

        let verdicts = StartupVerdicts::new(2);
        verdicts.rejected(1);
        verdicts.identified(2);
        verdicts.rejected(2);
        assert!(!verdicts.none_can_run.is_cancelled());
    }

    #[test]
    fn the_webhook_url_appends_the_bots_route() {
        let base: Url = "https://ingest.example.com/tg/".parse().unwrap();
        assert_eq!(
            webhook_url(&base, 42).as_str(),
            "https://ingest.example.com/tg/webhook/42"
        );
    }
}
