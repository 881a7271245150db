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
//! Each bot is its own unit ([`supervision`]): a token Telegram rejects, at startup or later, or
//! any other failing Bot API call stops only that bot, which is retried with backoff and jitter
//! and reported on its readiness unit `bot #N` and in `tgingest_bot_up{bot}`; the others keep
//! serving. [`run`] ends with an error only when no bot can run — every token rejected (401) at
//! startup, before any bot was identified: `no bot can run: every token was rejected by Telegram
//! (401 Unauthorized): bot #1, bot #2` — or on startup misconfiguration (a missing topic, an
//! address that cannot be bound). Bots are named by position, never by token; a bot's id is the
//! digits before its token's colon, so a webhook route exists before getMe answers. The topic must
//! exist and is never auto-created; a topic less durable than expected (replication factor < 3,
//! `min.insync.replicas` < 2) is warned about at startup unless
//! [`ProducerConfig::expect_durable_topic`] is off. Library code never reads the environment and
//! never logs a secret.

pub mod config;
pub mod metrics;
pub mod readiness;
pub mod telegram;
pub mod update;

mod backoff;
mod bot_unit;
mod poller;
mod publisher;
mod supervision;
mod webhook;
mod webhook_info;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use config::{
    ALL_UPDATE_KINDS, BackoffPolicy, ConfigError, IntakeMode, PollingConfig, ProducerConfig,
    TELEGRAM_API_URL, WebhookConfig, all_update_kinds,
};
pub use publisher::Publisher;
pub use readiness::{KAFKA_CHECK, NoReadiness, Readiness};
pub use telegram::{BotClient, TelegramError};
pub use webhook::{SECRET_HEADER, webhook_path};

use crate::bot_unit::BotUnit;
use crate::poller::PollContext;
use crate::supervision::{BotIntake, StartupVerdicts, WebhookBot};
use crate::telegram::SHORT_CALL_TIMEOUT;
use crate::webhook_info::WebhookWatch;

/// How long the final flush may take at shutdown.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the producer until `shutdown` is cancelled, then drains: polling stops, the batch in hand
/// is finished and confirmed, the webhook answers the requests in flight, Kafka is flushed. Returns
/// `Ok` after a clean drain; an `Err` is one line naming the failing setting, or saying that no
/// bot can run.
pub async fn run(
    config: ProducerConfig,
    shutdown: CancellationToken,
    readiness: Arc<dyn Readiness>,
) -> anyhow::Result<()> {
    config.validate()?;
    metrics::describe();
    readiness.not_ready(KAFKA_CHECK, "starting");

    let (http_timeout, webhook_mode) = match &config.mode {
        IntakeMode::Polling(polling) => (polling.request_timeout(), false),
        IntakeMode::Webhook(_) => (SHORT_CALL_TIMEOUT, true),
    };
    let mut bots = Vec::with_capacity(config.tokens.len());
    for (index, token) in config.tokens.iter().enumerate() {
        let position = index + 1;
        let id = config::bot_id_of(token)
            .with_context(|| format!("bot #{position}: the token carries no bot id"))?;
        let unit = BotUnit::new(position, id, webhook_mode, Arc::clone(&readiness));
        let client = BotClient::new(
            position,
            id,
            token.clone(),
            config.api_url.clone(),
            http_timeout,
        )
        .map_err(|e| anyhow::anyhow!("bot #{position}: {e}"))?;
        bots.push((client, Arc::new(unit)));
    }
    let verdicts = Arc::new(StartupVerdicts::new(bots.len()));
    // Ends every bot task: on shutdown, and when no bot can run.
    let stop = shutdown.child_token();
    let publisher = Arc::new(Publisher::new(&config, Arc::clone(&readiness))?);

    match config.mode {
        IntakeMode::Polling(polling) => {
            let context = Arc::new(PollContext {
                polling,
                backoff: config.backoff,
                publisher: Arc::clone(&publisher),
            });
            // Bots are identified first; they poll once the topic is checked.
            let (open, gate) = tokio::sync::watch::channel(false);
            let mut units = JoinSet::new();
            for (bot, unit) in bots {
                let intake = BotIntake::Polling {
                    context: Arc::clone(&context),
                    gate: gate.clone(),
                };
                units.spawn(supervision::run_bot(
                    bot,
                    unit,
                    intake,
                    Arc::clone(&verdicts),
                    config.backoff,
                    stop.clone(),
                ));
            }
            // Kafka is checked once a bot can run: a process with every token rejected ends at
            // once, with its one line, whatever the state of Kafka.
            let checked = tokio::select! {
                () = verdicts.some_identified() => publisher.check_topic(&stop).await,
                line = verdicts.none_can_run() => Err(anyhow::anyhow!(line)),
                () = stop.cancelled() => Err(anyhow::anyhow!("shutdown requested")),
            };
            if let Err(error) = checked {
                stop.cancel();
                while units.join_next().await.is_some() {}
                return if shutdown.is_cancelled() {
                    Ok(())
                } else {
                    Err(error)
                };
            }
            publisher.check_durability(config.expect_durable_topic);
            open.send_replace(true);
            let supervised = supervision::supervise(&mut units, &verdicts, &stop).await;
            publisher.flush(FLUSH_TIMEOUT).await;
            supervised?;
        }
        IntakeMode::Webhook(webhook) => {
            if let Err(error) = publisher.check_topic(&stop).await {
                return if shutdown.is_cancelled() {
                    Ok(())
                } else {
                    Err(error)
                };
            }
            publisher.check_durability(config.expect_durable_topic);
            let listener = tokio::net::TcpListener::bind(webhook.listen)
                .await
                .with_context(|| {
                    format!("cannot listen on the webhook address {}", webhook.listen)
                })?;
            if let Some(public_url) = &webhook.public_url
                && public_url.scheme() == "http"
            {
                tracing::warn!(
                    url = %public_url,
                    "the webhook URL is http://: updates and the secret cross the network \
                     unencrypted (accepted because the Bot API is a self-hosted server)"
                );
            }
            let watch = Arc::new(WebhookWatch::new(webhook.info_interval));
            let routes: HashMap<i64, usize> =
                bots.iter().map(|(bot, _)| (bot.id, bot.position)).collect();
            let webhook = Arc::new(webhook);
            let server = tokio::spawn({
                let (webhook, publisher, watch, stop) = (
                    Arc::clone(&webhook),
                    Arc::clone(&publisher),
                    Arc::clone(&watch),
                    stop.clone(),
                );
                async move {
                    let served =
                        webhook::serve(listener, routes, &webhook, publisher, watch, stop.clone())
                            .await;
                    // Without its server the process serves nothing: end the bots too.
                    stop.cancel();
                    served
                }
            });
            let probe = tokio::spawn({
                let (publisher, stop) = (Arc::clone(&publisher), stop.clone());
                async move {
                    publisher
                        .probe_while_not_ready(config.kafka_probe_interval, &stop)
                        .await
                }
            });
            let mut units = JoinSet::new();
            for (bot, unit) in bots {
                unit.up("webhook served");
                let context = Arc::new(WebhookBot {
                    register: webhook
                        .public_url
                        .as_ref()
                        .map(|url| supervision::webhook_url(url, bot.id)),
                    secret: webhook.secret_token.clone(),
                    allowed_updates: webhook.allowed_updates.clone(),
                    watch: Arc::clone(&watch),
                });
                units.spawn(supervision::run_bot(
                    bot,
                    unit,
                    BotIntake::Webhook(context),
                    Arc::clone(&verdicts),
                    config.backoff,
                    stop.clone(),
                ));
            }
            let supervised = supervision::supervise(&mut units, &verdicts, &stop).await;
            let served = server.await.context("the webhook server task panicked")?;
            let _ = probe.await;
            publisher.flush(FLUSH_TIMEOUT).await;
            supervised?;
            served?;
        }
    }
    tracing::info!("producer stopped");
    Ok(())
}
