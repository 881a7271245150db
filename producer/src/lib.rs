//! producer — lossless Telegram intake into Kafka (DESIGN.md §1, §3, §6, §7).
//!
//! [`run`] serves one or more bots, by long polling ([`IntakeMode::Polling`]) or webhook
//! ([`IntakeMode::Webhook`]), and publishes every update's bytes, unchanged, to one Kafka topic
//! with the key `"{bot_id}:{chat_id}"` (else `"{bot_id}:u{user_id}"`, else `"{bot_id}"`) and the
//! headers `tg-bot-id`, `tg-update-id`, `tg-update-type`, `tg-received-at`, `content-type`.
//!
//! The one promise: an update is confirmed to Telegram (the getUpdates offset moves past it, or
//! the webhook answers 2xx) only after Kafka acknowledged it with `acks=all` from an idempotent
//! producer. A crash can duplicate an update in Kafka; nothing can lose one. Input that cannot be
//! published as an update (not a JSON object with an integer `update_id`, or larger than the
//! record limit: `message.max.bytes`, or the topic's `max.message.bytes` when lower) is published as a `tg-error` envelope ([`update`]) so it never blocks the
//! confirm.
//!
//! Startup: getMe for each token learns the bot ids (only `id` and `username` are read); a
//! rejected token ends [`run`] with `bot #N: token rejected by Telegram (401 Unauthorized)` — bots
//! are named by position, never by token. The topic must exist. Library code never reads the environment and
//! never logs a secret.

pub mod config;
pub mod metrics;
pub mod readiness;
pub mod telegram;
pub mod update;

mod backoff;
mod poller;
mod publisher;
mod webhook;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use secrecy::{ExposeSecret, SecretString};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use config::{
    ALL_UPDATE_KINDS, BackoffPolicy, ConfigError, IntakeMode, PollingConfig, ProducerConfig,
    TELEGRAM_API_URL, WebhookConfig, all_update_kinds,
};
pub use publisher::Publisher;
pub use readiness::{KAFKA_CHECK, NoReadiness, Readiness, TELEGRAM_CHECK};
pub use telegram::{BotClient, TelegramError};
pub use webhook::{SECRET_HEADER, webhook_path};

use crate::backoff::Backoff;
use crate::poller::PollContext;
use crate::telegram::SHORT_CALL_TIMEOUT;

/// getMe attempts per bot at startup before a transient failure (network, 5xx, 429) ends startup.
const STARTUP_ATTEMPTS: u32 = 5;
/// How long the final flush may take at shutdown.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the producer until `shutdown` is cancelled, then drains: polling stops, the batch in hand
/// is finished and confirmed, the webhook answers the requests in flight, Kafka is flushed. Returns
/// `Ok` after a clean drain; an `Err` is one line naming the failing setting or bot.
pub async fn run(
    config: ProducerConfig,
    shutdown: CancellationToken,
    readiness: Arc<dyn Readiness>,
) -> anyhow::Result<()> {
    config.validate()?;
    metrics::describe();
    readiness.not_ready(TELEGRAM_CHECK, "starting");
    readiness.not_ready(KAFKA_CHECK, "starting");

    let http_timeout = match &config.mode {
        IntakeMode::Polling(polling) => polling.request_timeout(),
        IntakeMode::Webhook(_) => SHORT_CALL_TIMEOUT,
    };
    let Some(bots) = connect_bots(&config, http_timeout, &shutdown).await? else {
        return Ok(());
    };
    readiness.ready(TELEGRAM_CHECK, "");

    let publisher = Arc::new(Publisher::new(&config, Arc::clone(&readiness))?);
    if let Err(error) = publisher.check_topic(&shutdown).await {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        return Err(error);
    }

    match config.mode {
        IntakeMode::Polling(polling) => {
            let context = Arc::new(PollContext {
                polling,
                backoff: config.backoff,
                publisher: Arc::clone(&publisher),
                readiness: Arc::clone(&readiness),
            });
            let mut pollers = JoinSet::new();
            for bot in bots {
                pollers.spawn(poller::poll_bot(
                    Arc::new(bot),
                    Arc::clone(&context),
                    shutdown.clone(),
                ));
            }
            let mut failure = None;
            while let Some(done) = pollers.join_next().await {
                if let Err(error) = done {
                    // A poller cannot fail by design; if one panicked anyway, stop the others so
                    // the process restarts instead of silently serving fewer bots.
                    shutdown.cancel();
                    failure.get_or_insert(error);
                }
            }
            publisher.flush(FLUSH_TIMEOUT).await;
            if let Some(error) = failure {
                bail!("a poller failed: {error}");
            }
        }
        IntakeMode::Webhook(webhook) => {
            let listener = tokio::net::TcpListener::bind(webhook.listen)
                .await
                .with_context(|| {
                    format!("cannot listen on the webhook address {}", webhook.listen)
                })?;
            if let Some(public_url) = &webhook.public_url {
                if public_url.scheme() == "http" {
                    tracing::warn!(
                        url = %public_url,
                        "the webhook URL is http://: updates and the secret cross the network \
                         unencrypted (accepted because the Bot API is a self-hosted server)"
                    );
                }
                for bot in &bots {
                    register_webhook(bot, public_url, &webhook).await?;
                }
            }
            let ids: HashMap<i64, usize> = bots.iter().map(|b| (b.id, b.position)).collect();
            webhook::serve(listener, ids, &webhook, Arc::clone(&publisher), shutdown).await?;
            publisher.flush(FLUSH_TIMEOUT).await;
        }
    }
    tracing::info!("producer stopped");
    Ok(())
}

/// getMe for every token; `None` when shutdown was requested meanwhile.
async fn connect_bots(
    config: &ProducerConfig,
    http_timeout: Duration,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Vec<BotClient>>> {
    let mut bots: Vec<BotClient> = Vec::with_capacity(config.tokens.len());
    for (index, token) in config.tokens.iter().enumerate() {
        let position = index + 1;
        let mut backoff = Backoff::new(config.backoff);
        let mut attempts = 0;
        let bot = loop {
            let token = SecretString::from(token.expose_secret().to_owned());
            let attempt = tokio::select! {
                () = shutdown.cancelled() => return Ok(None),
                attempt = BotClient::connect(position, token, config.api_url.clone(), http_timeout) => attempt,
            };
            let error = match attempt {
                Ok(bot) => break bot,
                Err(TelegramError::Unauthorized) => {
                    bail!("bot #{position}: token rejected by Telegram (401 Unauthorized)");
                }
                Err(error) => error,
            };
            crate::metrics::telegram_error(&error.metric_code());
            attempts += 1;
            if attempts >= STARTUP_ATTEMPTS {
                bail!("bot #{position}: getMe failed after {attempts} attempts: {error}");
            }
            let delay = match &error {
                TelegramError::TooManyRequests { retry_after } => *retry_after,
                _ => backoff.next_delay(),
            };
            tracing::warn!(bot = position, %error, retry_in = ?delay, "getMe failed; retrying");
            tokio::select! {
                () = shutdown.cancelled() => return Ok(None),
                () = tokio::time::sleep(delay) => {}
            }
        };
        if let Some(same) = bots.iter().find(|b| b.id == bot.id) {
            bail!(
                "bot #{position} and bot #{} are the same bot (id {}): list each token once",
                same.position,
                bot.id
            );
        }
        tracing::info!(bot = position, bot_id = bot.id, username = ?bot.username, "bot identified");
        bots.push(bot);
    }
    Ok(Some(bots))
}

async fn register_webhook(
    bot: &BotClient,
    public_url: &url::Url,
    webhook: &WebhookConfig,
) -> anyhow::Result<()> {
    let mut url = public_url.clone();
    url.path_segments_mut()
        .map_err(|()| anyhow::anyhow!("webhook public URL {public_url} cannot be a base URL"))?
        .pop_if_empty()
        .push("webhook")
        .push(&bot.id.to_string());
    bot.set_webhook(&url, &webhook.secret_token, &webhook.allowed_updates)
        .await
        .map_err(|e| anyhow::anyhow!("bot #{}: setWebhook failed: {e}", bot.position))?;
    tracing::info!(bot = bot.position, url = %url, "webhook registered");
    Ok(())
}
