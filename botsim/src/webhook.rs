//! Webhook push mode: one delivery task per bot while a webhook is set.
//!
//! Like Telegram's `WebhookActor`: each pending update is POSTed on its own (body = the update's
//! bytes exactly, `Content-Type: application/json`, `X-Telegram-Bot-Api-Secret-Token` when a secret
//! is set), at most `max_connections` at a time. A 2xx answer drops the update; anything else keeps
//! it and retries it: immediately after the first failure, then after 2×, 4×, … the configured base
//! delay, capped, or after the endpoint's `Retry-After` (≤ 3600 s). A failure is reported by
//! `getWebhookInfo` (`last_error_date`, `last_error_message`). Unlike Telegram, updates of one chat
//! are not serialised; optionally the order is shuffled and successful deliveries are repeated once,
//! so idempotent receivers can be tested. Cancelling the task (webhook changed or deleted, server
//! stopped) abandons in-flight POSTs; their updates stay pending.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::header::RETRY_AFTER;
use rand::Rng;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::Shared;
use crate::record::{WebhookAttempt, WebhookOutcome};
use crate::state::{Bot, BotState, lock};

const MAX_RETRY_AFTER_SECS: u64 = 3600;

/// Where and how to deliver, fixed for one webhook generation.
pub(crate) struct Target {
    pub url: String,
    pub secret_token: String,
    pub max_connections: u32,
    pub generation: u64,
}

/// The answer to one POST.
struct Delivered {
    seq: u64,
    update_id: i64,
    attempt: u32,
    at: SystemTime,
    outcome: WebhookOutcome,
    retry_after: Option<Duration>,
}

/// Runs until `cancel` fires, delivering the bot's pending updates to the webhook.
pub(crate) async fn deliver(
    shared: Arc<Shared>,
    bot: Arc<Bot>,
    target: Target,
    cancel: CancellationToken,
) {
    let target = Arc::new(target);
    let capacity = usize::try_from(target.max_connections.max(1)).unwrap_or(1);
    let mut in_flight: JoinSet<Delivered> = JoinSet::new();
    tracing::debug!(
        bot_index = bot.index,
        generation = target.generation,
        "webhook delivery started"
    );
    loop {
        let notified = bot.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let mut wake_at = None;
        {
            let mut state = bot.lock();
            while in_flight.len() < capacity {
                let Some(index) = pick(&shared, &state, target.generation, &mut wake_at) else {
                    break;
                };
                let update = &mut state.queue[index];
                update.delivery.in_flight = Some(target.generation);
                update.delivery.attempts += 1;
                in_flight.spawn(post(
                    shared.http.clone(),
                    target.clone(),
                    shared.config.webhook.request_timeout,
                    update.raw.clone(),
                    update.seq,
                    update.id,
                    update.delivery.attempts,
                ));
            }
        }
        let sleep = async {
            match wake_at {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = cancel.cancelled() => break,
            () = &mut notified => {}
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                if let Ok(done) = done {
                    settle(&shared, &bot, &target, done);
                }
            }
            () = sleep => {}
        }
    }
    tracing::debug!(
        bot_index = bot.index,
        generation = target.generation,
        "webhook delivery stopped"
    );
}

/// Chooses the next update to send (queue order, or random when shuffling); when none is ready,
/// leaves in `wake_at` the earliest moment a backed-off one becomes ready.
fn pick(
    shared: &Shared,
    state: &BotState,
    generation: u64,
    wake_at: &mut Option<Instant>,
) -> Option<usize> {
    let now = Instant::now();
    let len = state.queue.len();
    if len == 0 {
        return None;
    }
    let idle = |i: usize| state.queue[i].delivery.in_flight != Some(generation);
    let ready = |i: usize| idle(i) && state.queue[i].delivery.not_before.is_none_or(|t| t <= now);
    // Shuffling starts the scan at a random position (wrapping), which keeps a pick O(1) on
    // average even with a long queue.
    let start = if shared.config.webhook.shuffle {
        lock(&shared.rng).random_range(0..len)
    } else {
        0
    };
    if let Some(found) = (start..len).chain(0..start).find(|&i| ready(i)) {
        return Some(found);
    }
    *wake_at = (0..len)
        .filter(|&i| idle(i))
        .filter_map(|i| state.queue[i].delivery.not_before)
        .min();
    None
}

async fn post(
    http: reqwest::Client,
    target: Arc<Target>,
    timeout: Duration,
    raw: Arc<[u8]>,
    seq: u64,
    update_id: i64,
    attempt: u32,
) -> Delivered {
    let at = SystemTime::now();
    let mut request = http
        .post(&target.url)
        .timeout(timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(raw.to_vec());
    if !target.secret_token.is_empty() {
        request = request.header(
            "X-Telegram-Bot-Api-Secret-Token",
            target.secret_token.as_str(),
        );
    }
    let (outcome, retry_after) = match request.send().await {
        Ok(response) => {
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|s| Duration::from_secs(s.min(MAX_RETRY_AFTER_SECS)));
            (
                WebhookOutcome::Status(response.status().as_u16()),
                retry_after,
            )
        }
        // `without_url`: the webhook URL may hold a secret path; it never goes into a record.
        Err(e) => (WebhookOutcome::Error(e.without_url().to_string()), None),
    };
    Delivered {
        seq,
        update_id,
        attempt,
        at,
        outcome,
        retry_after,
    }
}

/// The delay before retrying after `failures` consecutive failures (Telegram: 0, then doubling).
pub(crate) fn backoff(failures: u32, base: Duration, max: Duration) -> Duration {
    if failures <= 1 {
        return Duration::ZERO;
    }
    let factor = 1u32.checked_shl(failures - 1).unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(max)
}

fn settle(shared: &Shared, bot: &Bot, target: &Target, done: Delivered) {
    lock(&shared.attempts).push(WebhookAttempt {
        at: done.at,
        bot: bot.bot_ref(),
        update_id: done.update_id,
        attempt: done.attempt,
        outcome: done.outcome.clone(),
    });
    let mut state = bot.lock();
    // The queue is in push order, so sequence numbers are sorted.
    let Ok(index) = state.queue.binary_search_by_key(&done.seq, |u| u.seq) else {
        return;
    };
    let success =
        matches!(done.outcome, WebhookOutcome::Status(code) if (200..300).contains(&code));
    if success {
        let config = &shared.config.webhook;
        let update = &mut state.queue[index];
        let repeat = !update.delivery.duplicated
            && config.duplicate_probability > 0.0
            && lock(&shared.rng).random_bool(config.duplicate_probability.clamp(0.0, 1.0));
        if repeat {
            update.delivery.duplicated = true;
            update.delivery.in_flight = None;
            update.delivery.failures = 0;
            update.delivery.not_before = None;
        } else {
            state.queue.remove(index);
        }
        return;
    }
    if state.queue[index].delivery.in_flight != Some(target.generation) {
        return;
    }
    let message = match &done.outcome {
        WebhookOutcome::Status(code) => format!(
            "Wrong response from the webhook: {code} {}",
            axum::http::StatusCode::from_u16(*code)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("")
        )
        .trim_end()
        .to_owned(),
        WebhookOutcome::Error(text) => text.clone(),
    };
    let unix_now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    state.last_webhook_error = Some((unix_now, message));
    let config = &shared.config.webhook;
    let update = &mut state.queue[index];
    update.delivery.in_flight = None;
    update.delivery.failures += 1;
    let delay = done.retry_after.unwrap_or_else(|| {
        backoff(
            update.delivery.failures,
            config.retry_base,
            config.retry_max,
        )
    });
    update.delivery.not_before = Some(Instant::now() + delay);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_retry_is_immediate_and_later_ones_double_up_to_the_cap() {
        let base = Duration::from_secs(1);
        let max = Duration::from_secs(60);
        let delays: Vec<u64> = (1..=8).map(|n| backoff(n, base, max).as_secs()).collect();
        assert_eq!(delays, vec![0, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(backoff(200, base, max), max);
    }
}
