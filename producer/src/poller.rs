//! Long polling for one bot: getUpdates → publish the whole batch → only then confirm.
//!
//! Guarantees:
//! - The offset sent to Telegram is `last update_id + 1` of a batch only after every record of that
//!   batch was acknowledged by Kafka; while Kafka is unavailable the same batch is retried and the
//!   offset never advances. A crash anywhere can duplicate updates in Kafka, never lose one.
//! - 429 waits exactly `retry_after` before the next call (never sooner); 409 backs off and is
//!   logged once per episode (every answer is counted); 5xx, network errors, timeouts, malformed
//!   bodies and a rejected token (401: the bot's unit is reported down until an answer comes)
//!   back off exponentially, with jitter, up to the cap. Only this bot waits; nothing here
//!   panics.
//! - A batch in which no element has an `update_id` cannot be confirmed: its elements are kept
//!   as `tg-error` envelopes once, every fetch of it is alerted, and polling backs off.
//! - On shutdown the loop stops polling, finishes publishing the batch in hand (the attempt in
//!   flight), and confirms it with one last `getUpdates(offset, timeout=0)`; an interrupted batch is
//!   left unconfirmed for the next start to fetch again.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::bot_unit::BotUnit;
use crate::config::{BackoffPolicy, PollingConfig};
use crate::metrics;
use crate::publisher::Publisher;
use crate::telegram::{BotClient, SHORT_CALL_TIMEOUT, TelegramError};
use crate::update::{OutgoingRecord, record_for};

/// Attempts of the final confirm at shutdown.
const FINAL_CONFIRM_ATTEMPTS: u32 = 3;
/// The longest `retry_after` the final confirm waits out; beyond it the next start confirms.
const FINAL_CONFIRM_MAX_WAIT: Duration = Duration::from_secs(5);

/// Everything one bot's poller shares with the others.
#[derive(Debug)]
pub(crate) struct PollContext {
    pub(crate) polling: PollingConfig,
    pub(crate) backoff: BackoffPolicy,
    pub(crate) publisher: Arc<Publisher>,
}

/// Polls one bot until `shutdown`, then confirms what was published.
pub(crate) async fn poll_bot(
    bot: Arc<BotClient>,
    unit: Arc<BotUnit>,
    context: Arc<PollContext>,
    shutdown: CancellationToken,
) {
    let span = tracing::info_span!("poller");
    Poller::new(bot, unit, context)
        .run(shutdown)
        .instrument(span)
        .await;
}

struct Poller {
    bot: Arc<BotClient>,
    unit: Arc<BotUnit>,
    context: Arc<PollContext>,
    /// The offset of the next getUpdates (`None` until a batch was published).
    offset: Option<i64>,
    /// A batch was published since the last successful getUpdates, so Telegram has not yet been
    /// told to forget it.
    confirm_pending: bool,
    /// When the oldest update not yet confirmed was received.
    oldest_unconfirmed: Option<Instant>,
    /// 409 answers in the current conflict episode.
    conflicts: u32,
    backoff: Backoff,
    /// The batch without any update id that was last published (its fingerprint), and the backoff
    /// between fetches of it; `None` once a batch with ids arrives.
    unconfirmable: Option<(u64, Backoff)>,
}

impl Poller {
    fn new(bot: Arc<BotClient>, unit: Arc<BotUnit>, context: Arc<PollContext>) -> Self {
        let backoff = Backoff::new(context.backoff);
        Self {
            bot,
            unit,
            context,
            offset: None,
            confirm_pending: false,
            oldest_unconfirmed: None,
            conflicts: 0,
            backoff,
            unconfirmable: None,
        }
    }

    async fn run(mut self, shutdown: CancellationToken) {
        tracing::info!("polling getUpdates");
        metrics::oldest_unconfirmed_age(self.bot.id, 0.0);
        while !shutdown.is_cancelled() {
            let polling = &self.context.polling;
            let answer = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                answer = self.bot.get_updates(
                    self.offset,
                    polling.timeout,
                    polling.limit,
                    &polling.allowed_updates,
                    None,
                ) => answer,
            };
            match answer {
                Ok(updates) => {
                    self.on_answer();
                    if updates.is_empty() {
                        continue;
                    }
                    if !self.publish_batch(&updates, &shutdown).await {
                        break;
                    }
                }
                Err(error) => {
                    if self.on_error(error, &shutdown).await {
                        break;
                    }
                }
            }
        }
        self.final_confirm().await;
    }

    /// A getUpdates call succeeded: the offset it carried is confirmed.
    fn on_answer(&mut self) {
        if self.conflicts > 0 {
            tracing::info!(
                answers = self.conflicts,
                "getUpdates conflict resolved; polling again"
            );
            self.conflicts = 0;
        }
        self.backoff.reset();
        self.unit.up("polling");
        if let Some(offset) = self.offset {
            metrics::last_confirmed(self.bot.id, offset - 1);
        }
        self.confirm_pending = false;
        self.oldest_unconfirmed = None;
        metrics::oldest_unconfirmed_age(self.bot.id, 0.0);
    }

    /// Publishes a batch until Kafka acknowledged all of it; `false` when shutdown interrupted it
    /// (the batch stays unconfirmed).
    async fn publish_batch(
        &mut self,
        updates: &[Box<serde_json::value::RawValue>],
        shutdown: &CancellationToken,
    ) -> bool {
        let received_at = Instant::now();
        self.oldest_unconfirmed.get_or_insert(received_at);
        let received_ms = unix_millis();
        let limit = self.context.publisher.record_limit();
        let originals: Vec<&[u8]> = updates.iter().map(|u| u.get().as_bytes()).collect();
        let mut records: Vec<OutgoingRecord> = originals
            .iter()
            .map(|raw| record_for(self.bot.id, raw, received_ms, limit))
            .collect();
        for record in &records {
            metrics::received(self.bot.id, &record.kind);
            if let Some(reason) = record.envelope {
                tracing::warn!(
                    reason = reason.as_str(),
                    update_id = ?record.update_id,
                    "update published as a tg-error envelope"
                );
            }
        }
        let Some(last_id) = records.iter().filter_map(|r| r.update_id).max() else {
            return self
                .keep_unconfirmable(&mut records, &originals, shutdown)
                .await;
        };
        self.unconfirmable = None;
        let first_id = records.iter().filter_map(|r| r.update_id).min();
        tracing::debug!(
            count = records.len(),
            ?first_id,
            last_id,
            "publishing batch"
        );

        let bot_id = self.bot.id;
        let oldest = self.oldest_unconfirmed;
        let published = self
            .context
            .publisher
            .publish_until_acked(&mut records, &originals, shutdown, || {
                if let Some(oldest) = oldest {
                    metrics::oldest_unconfirmed_age(bot_id, oldest.elapsed().as_secs_f64());
                }
            })
            .await;
        if let Err(interrupted) = published {
            tracing::warn!(
                unacked = interrupted.unacked,
                last_id,
                "shutdown before Kafka acknowledged the batch; it stays unconfirmed at Telegram"
            );
            return false;
        }
        after_publish_before_confirm();
        self.offset = Some(last_id + 1);
        self.confirm_pending = true;
        tracing::debug!(
            count = records.len(),
            last_id,
            "batch acknowledged by Kafka"
        );
        true
    }

    /// A batch in which no element has an `update_id`: nothing can confirm it, so Telegram serves
    /// it again on every poll. Its elements are published as envelopes the first time it is seen
    /// (the bytes are kept, a fetch of the same batch again is not published again), every fetch is
    /// alerted (error log, `tgingest_unconfirmable_batches_total`), and polling backs off, up to
    /// the cap, until the batch changes. `false` when shutdown interrupted.
    async fn keep_unconfirmable(
        &mut self,
        records: &mut [OutgoingRecord],
        originals: &[&[u8]],
        shutdown: &CancellationToken,
    ) -> bool {
        let fingerprint = batch_fingerprint(originals);
        metrics::unconfirmable_batch(self.bot.id);
        let seen = self
            .unconfirmable
            .as_ref()
            .is_some_and(|(known, _)| *known == fingerprint);
        tracing::error!(
            elements = records.len(),
            published = !seen,
            "getUpdates answered elements without any update_id: nothing can confirm them, so \
             Telegram serves them again until they expire; kept as tg-error envelopes"
        );
        if !seen {
            let published = self
                .context
                .publisher
                .publish_until_acked(records, originals, shutdown, || {})
                .await;
            if published.is_err() {
                return false;
            }
            self.unconfirmable = Some((fingerprint, Backoff::new(self.context.backoff)));
        }
        let delay = self
            .unconfirmable
            .as_mut()
            .map_or(self.context.backoff.max, |(_, backoff)| {
                backoff.next_delay()
            });
        !sleep_or_shutdown(delay, shutdown).await
    }

    /// Waits as the error requires; `true` when shutdown was requested meanwhile.
    async fn on_error(&mut self, error: TelegramError, shutdown: &CancellationToken) -> bool {
        if !matches!(error, TelegramError::Unauthorized) {
            self.unit.failed(&error);
        }
        if let Some(oldest) = self.oldest_unconfirmed {
            metrics::oldest_unconfirmed_age(self.bot.id, oldest.elapsed().as_secs_f64());
        }
        let delay = match &error {
            TelegramError::TooManyRequests { retry_after } => {
                tracing::warn!(retry_after = ?retry_after, "getUpdates rate limited (429); waiting");
                *retry_after
            }
            TelegramError::Conflict { description } => {
                self.conflicts += 1;
                let delay = self.backoff.next_delay();
                if self.conflicts == 1 {
                    tracing::warn!(
                        %description,
                        retry_in = ?delay,
                        "getUpdates conflict (409): another poller uses this token or a webhook is \
                         set; backing off (logged once per episode)"
                    );
                } else {
                    tracing::debug!(answers = self.conflicts, retry_in = ?delay, "getUpdates conflict persists");
                }
                delay
            }
            TelegramError::Unauthorized => {
                let delay = self.backoff.next_delay();
                tracing::error!(
                    retry_in = ?delay,
                    "bot token rejected by Telegram (401) while polling; this bot is retried, the \
                     others are not affected"
                );
                self.unit.down("getUpdates", &error);
                delay
            }
            other => {
                let delay = self.backoff.next_delay();
                tracing::warn!(error = %other, retry_in = ?delay, attempt = self.backoff.attempts(), "getUpdates failed; backing off");
                delay
            }
        };
        sleep_or_shutdown(delay, shutdown).await
    }

    /// Tells Telegram to forget the last published batch before exiting.
    async fn final_confirm(&mut self) {
        let Some(offset) = self.offset.filter(|_| self.confirm_pending) else {
            tracing::info!("poller stopped; nothing left to confirm");
            return;
        };
        let polling = &self.context.polling;
        for attempt in 1..=FINAL_CONFIRM_ATTEMPTS {
            let answer = self
                .bot
                .get_updates(
                    Some(offset),
                    Duration::ZERO,
                    1,
                    &polling.allowed_updates,
                    Some(SHORT_CALL_TIMEOUT),
                )
                .await;
            match answer {
                Ok(_) => {
                    metrics::last_confirmed(self.bot.id, offset - 1);
                    metrics::oldest_unconfirmed_age(self.bot.id, 0.0);
                    tracing::info!(offset, "poller stopped; last batch confirmed");
                    return;
                }
                Err(error) => {
                    self.unit.failed(&error);
                    let wait = match &error {
                        TelegramError::TooManyRequests { retry_after }
                            if *retry_after <= FINAL_CONFIRM_MAX_WAIT =>
                        {
                            *retry_after
                        }
                        TelegramError::TooManyRequests { .. } | TelegramError::Unauthorized => {
                            break;
                        }
                        _ => Duration::from_millis(200),
                    };
                    tracing::warn!(%error, attempt, "final confirm failed");
                    if attempt < FINAL_CONFIRM_ATTEMPTS {
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
        tracing::warn!(
            offset,
            "could not confirm the last batch; the next start fetches it again (duplicates in Kafka)"
        );
    }
}

/// The crash window the at-least-once test aims at: Kafka acknowledged, Telegram not yet told.
/// With the `failpoints` feature, `FAILPOINTS=producer::after_publish_before_confirm=return`
/// exits the process here at once, as a crash would.
fn after_publish_before_confirm() {
    fail::fail_point!("producer::after_publish_before_confirm", |_| {
        tracing::error!(
            "failpoint producer::after_publish_before_confirm: exiting without confirming"
        );
        std::process::exit(86);
    });
}

/// Identifies a batch by its elements' bytes (to see the same batch served again).
fn batch_fingerprint(elements: &[&[u8]]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    elements.hash(&mut hasher);
    hasher.finish()
}

async fn sleep_or_shutdown(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => true,
        () = tokio::time::sleep(delay) => false,
    }
}

pub(crate) fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
