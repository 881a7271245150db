//! botsim: a stateful simulated Telegram Bot API server, for tests and for `tgingest demo`.
//!
//! [`BotApi::start`] serves real HTTP on a local port; clients call `{base_url}/bot{TOKEN}/{method}`
//! exactly as they call `https://api.telegram.org`. Implemented methods: `getMe`, `getUpdates`
//! (offset confirmation, `limit`, long polling, `allowed_updates`, 409 conflicts), `setWebhook`,
//! `deleteWebhook`, `getWebhookInfo`; webhook push mode delivers pending updates by POST with
//! retries. Method names are case-insensitive; parameters come from the query string, a form, JSON
//! or multipart body. Faults ([`Fault`]) are injected per bot and consumed by the next matching
//! requests. Every request is recorded ([`BotApi::requests`]). A token can be revoked at run time
//! ([`BotApi::set_token_revoked`]), and getMe can leave out its optional fields
//! ([`BotApi::set_minimal_get_me`]).
//!
//! Guarantees a test can rely on:
//! - An update's bytes are served exactly as pushed (`\u0000`, lone surrogates, unknown kinds and
//!   even invalid JSON included): response bodies are built by concatenation, never re-serialised.
//! - Queue semantics follow Telegram's server (telegram-bot-api, tdlib `TQueue`); where this
//!   simulator deliberately differs, the item's documentation says so.
//! - Tokens never appear in `Debug` output, records or logs; bots are named by index and id.
//!
//! The [`traffic`] module generates realistic, seeded, deterministic update streams.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use botsim::traffic::{TrafficConfig, TrafficGenerator};
//! use botsim::{BotApi, BotApiConfig, BotInfo, Fault};
//!
//! let api = BotApi::start(BotApiConfig::default()).await?;
//! api.add_bot("123:ABC", BotInfo::new(123, "ingest_bot", "Ingest"));
//! for update in TrafficGenerator::new(42, TrafficConfig::default()).take(100) {
//!     api.push_update("123:ABC", update)?;
//! }
//! api.inject_on("123:ABC", "getUpdates", Fault::TooManyRequests { retry_after: 1 })?;
//! // A client now polls `{base_url}/bot123:ABC/getUpdates`.
//! println!("{}", api.base_url());
//! # Ok(())
//! # }
//! ```

mod allowed;
mod fault;
mod params;
mod record;
mod server;
mod state;
pub mod traffic;
mod update;
mod webhook;

use std::collections::HashMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use allowed::{AllowedUpdates, KNOWN_KINDS, OPT_IN_KINDS};
pub use fault::Fault;
pub use record::{BotRef, Params, RequestRecord, WebhookAttempt, WebhookOutcome};

use fault::QueuedFault;
use state::{Bot, lock};

/// The bot's own identity, as `getMe` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BotInfo {
    /// The bot's user id (the number before the colon in a real token).
    pub id: i64,
    /// The bot's username, without `@`.
    pub username: String,
    /// The bot's display name.
    pub first_name: String,
}

impl BotInfo {
    /// A bot identity.
    pub fn new(id: i64, username: impl Into<String>, first_name: impl Into<String>) -> Self {
        Self {
            id,
            username: username.into(),
            first_name: first_name.into(),
        }
    }
}

/// How webhook push mode behaves.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// Parallel POSTs when `setWebhook` gives no `max_connections` (Telegram: 40).
    pub default_max_connections: u32,
    /// Retry delays after the second failure of an update are `retry_base × 2^(failures-1)`.
    pub retry_base: Duration,
    /// Cap on the retry delay (Telegram: about 60 s).
    pub retry_max: Duration,
    /// Per-POST timeout; a timeout counts as a failure.
    pub request_timeout: Duration,
    /// Chance (0.0–1.0) that a successfully delivered update is delivered once more.
    pub duplicate_probability: f64,
    /// Deliver pending updates in random (seeded) order instead of queue order.
    pub shuffle: bool,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            default_max_connections: 40,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
            duplicate_probability: 0.0,
            shuffle: false,
        }
    }
}

/// Server configuration.
#[derive(Clone, Debug)]
pub struct BotApiConfig {
    /// Where to listen; port 0 picks a free port.
    pub addr: SocketAddr,
    /// Seeds every random choice (first update ids, id jumps, webhook shuffling and duplicates).
    pub seed: u64,
    /// Webhook push mode.
    pub webhook: WebhookConfig,
}

impl Default for BotApiConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            seed: 0,
            webhook: WebhookConfig::default(),
        }
    }
}

#[derive(Default)]
struct Registry {
    by_token: HashMap<String, Arc<Bot>>,
    bots: Vec<Arc<Bot>>,
}

/// State shared by the HTTP handlers, webhook tasks and the [`BotApi`] handle.
pub(crate) struct Shared {
    config: BotApiConfig,
    registry: RwLock<Registry>,
    log: Mutex<Vec<RequestRecord>>,
    attempts: Mutex<Vec<WebhookAttempt>>,
    rng: Mutex<ChaCha8Rng>,
    http: reqwest::Client,
    shutdown: CancellationToken,
    /// getMe answers only the fields the Bot API always sends (see [`BotApi::set_minimal_get_me`]).
    minimal_get_me: AtomicBool,
}

impl Shared {
    fn bot(&self, token: &str) -> Option<Arc<Bot>> {
        let registry = self.registry.read().unwrap_or_else(PoisonError::into_inner);
        registry.by_token.get(token).cloned()
    }
}

/// A running simulated Bot API server. Dropping it stops the server and every webhook task.
pub struct BotApi {
    shared: Arc<Shared>,
    addr: SocketAddr,
    server: Option<JoinHandle<()>>,
}

impl fmt::Debug for BotApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let registry = self
            .shared
            .registry
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let bots: Vec<BotRef> = registry.bots.iter().map(|b| b.bot_ref()).collect();
        f.debug_struct("BotApi")
            .field("addr", &self.addr)
            .field("bots", &bots)
            .finish_non_exhaustive()
    }
}

impl BotApi {
    /// Binds `config.addr` and serves until [`BotApi::shutdown`] or drop.
    pub async fn start(config: BotApiConfig) -> anyhow::Result<BotApi> {
        let listener = tokio::net::TcpListener::bind(config.addr)
            .await
            .with_context(|| format!("botsim: binding {}", config.addr))?;
        let addr = listener
            .local_addr()
            .context("botsim: reading the bound address")?;
        let http = reqwest::Client::builder()
            .build()
            .context("botsim: building the webhook HTTP client")?;
        let shared = Arc::new(Shared {
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(config.seed)),
            config,
            registry: RwLock::new(Registry::default()),
            log: Mutex::new(Vec::new()),
            attempts: Mutex::new(Vec::new()),
            http,
            shutdown: CancellationToken::new(),
            minimal_get_me: AtomicBool::new(false),
        });
        let router = axum::Router::new()
            .fallback(server::handle)
            .with_state(shared.clone());
        let stop = shared.shutdown.clone();
        let server = tokio::spawn(async move {
            let serving =
                axum::serve(listener, router).with_graceful_shutdown(stop.cancelled_owned());
            if let Err(e) = serving.await {
                tracing::warn!(error = %e, "botsim server stopped with an error");
            }
        });
        tracing::debug!(%addr, "botsim listening");
        Ok(BotApi {
            shared,
            addr,
            server: Some(server),
        })
    }

    /// `http://127.0.0.1:PORT` (no trailing slash); clients call `{base_url}/bot{TOKEN}/{method}`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Registers a bot under `token`. Its first assigned update id is drawn from the seeded
    /// generator in Telegram's range. Registering a known token again only replaces its identity.
    pub fn add_bot(&self, token: &str, info: BotInfo) {
        let mut registry = self
            .shared
            .registry
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(bot) = registry.by_token.get(token) {
            bot.lock().info = info;
            return;
        }
        // Telegram starts a new queue at a random id in [2 000 001, 2^30).
        let first_id = lock(&self.shared.rng).random_range(2_000_001..(1_i64 << 30));
        let bot = Arc::new(Bot::new(registry.bots.len(), info, first_id));
        registry.bots.push(bot.clone());
        registry.by_token.insert(token.to_owned(), bot);
    }

    fn bot(&self, token: &str) -> anyhow::Result<Arc<Bot>> {
        // The token itself must never reach an error message.
        self.shared
            .bot(token)
            .context("botsim: no bot is registered with that token")
    }

    /// Queues one update's bytes exactly as given (any text; normally a JSON object with an
    /// `update_id`). Returns `false` when the bot's `allowed_updates` refused its kind (the update
    /// is then dropped, as Telegram drops it when it is created).
    pub fn push_update(&self, token: &str, raw: impl Into<Vec<u8>>) -> anyhow::Result<bool> {
        let raw: Vec<u8> = raw.into();
        Ok(self.bot(token)?.push(raw.into()))
    }

    /// Queues a JSON object. Without an integer `update_id` it gets the next assigned id, written
    /// first as Telegram does; returns the update's id.
    pub fn push_json(&self, token: &str, value: serde_json::Value) -> anyhow::Result<i64> {
        let serde_json::Value::Object(mut map) = value else {
            anyhow::bail!("botsim: push_json needs a JSON object; use push_update for other bytes");
        };
        let bot = self.bot(token)?;
        if let Some(id) = map.get("update_id").and_then(serde_json::Value::as_i64) {
            let raw = serde_json::to_vec(&map).context("botsim: serialising the update")?;
            bot.push(raw.into());
            return Ok(id);
        }
        map.remove("update_id");
        let rest = serde_json::to_vec(&map).context("botsim: serialising the update")?;
        Ok(bot.push_assigned(|id| splice_update_id(id, &rest)))
    }

    /// Queues `{"update_id":<next id>,"<kind>":<payload>}` with `payload` copied verbatim (so it may
    /// hold `\u0000` or lone surrogate escapes); returns the assigned id.
    pub fn push_kind(&self, token: &str, kind: &str, payload: &[u8]) -> anyhow::Result<i64> {
        let bot = self.bot(token)?;
        let key = serde_json::Value::String(kind.to_owned()).to_string();
        Ok(bot.push_assigned(|id| {
            let mut raw = format!(r#"{{"update_id":{id},{key}:"#).into_bytes();
            raw.extend_from_slice(payload);
            raw.push(b'}');
            raw
        }))
    }

    /// The id the next `push_json`/`push_kind` without an id will get.
    pub fn next_update_id(&self, token: &str) -> anyhow::Result<i64> {
        Ok(self.bot(token)?.lock().next_assign_id)
    }

    /// Sets the id the next assigned push gets (assigned ids then increase from there).
    pub fn set_next_update_id(&self, token: &str, id: i64) -> anyhow::Result<()> {
        self.bot(token)?.lock().jump_update_ids(id);
        Ok(())
    }

    /// Sets `allowed_updates` as if the bot had called `getUpdates`/`setWebhook` with it earlier,
    /// e.g. so that traffic pushed before the client's first poll is not filtered by the default.
    pub fn set_allowed_updates(&self, token: &str, allowed: AllowedUpdates) -> anyhow::Result<()> {
        self.bot(token)?.lock().allowed = allowed;
        Ok(())
    }

    /// The bot's current `allowed_updates` setting.
    pub fn allowed_updates(&self, token: &str) -> anyhow::Result<AllowedUpdates> {
        Ok(self.bot(token)?.lock().allowed.clone())
    }

    /// Queues a fault for the next request of this bot (any method).
    /// `Fault::UpdateIdJump` takes effect at once on the next assigned id instead.
    pub fn inject(&self, token: &str, fault: Fault) -> anyhow::Result<()> {
        self.inject_fault(token, None, fault)
    }

    /// Queues a fault for the next request of this bot calling `method` (case-insensitive).
    pub fn inject_on(&self, token: &str, method: &str, fault: Fault) -> anyhow::Result<()> {
        self.inject_fault(token, Some(method.to_ascii_lowercase()), fault)
    }

    fn inject_fault(
        &self,
        token: &str,
        method: Option<String>,
        fault: Fault,
    ) -> anyhow::Result<()> {
        let bot = self.bot(token)?;
        let mut state = bot.lock();
        if fault.is_request_fault() {
            state.faults.push_back(QueuedFault { method, fault });
            return Ok(());
        }
        if let Fault::UpdateIdJump { restart_at } = fault {
            let restart_at = restart_at.unwrap_or_else(|| {
                let below = state.next_assign_id.max(2);
                lock(&self.shared.rng).random_range(1..below)
            });
            state.jump_update_ids(restart_at);
        }
        Ok(())
    }

    /// With `true`, getMe answers only `id`, `is_bot`, `first_name` and `username`, leaving out the
    /// fields the Bot API marks optional (`can_join_groups`, `has_main_web_app`, …), as an older
    /// self-hosted Bot API server or a proxy does.
    pub fn set_minimal_get_me(&self, minimal: bool) {
        self.shared.minimal_get_me.store(minimal, Ordering::Relaxed);
    }

    /// Revokes the token (`true`) or restores it (`false`) at run time: while revoked, every
    /// request with it is answered 401 Unauthorized, as Telegram answers after `/revoke` in
    /// BotFather. The bot's queue is kept. Requests already waiting in a long poll finish normally.
    pub fn set_token_revoked(&self, token: &str, revoked: bool) -> anyhow::Result<()> {
        self.bot(token)?.lock().revoked = revoked;
        Ok(())
    }

    /// Faults queued and not yet consumed.
    pub fn pending_faults(&self, token: &str) -> anyhow::Result<usize> {
        Ok(self.bot(token)?.lock().faults.len())
    }

    /// Updates waiting to be confirmed (getUpdates) or delivered (webhook).
    pub fn pending_update_count(&self, token: &str) -> anyhow::Result<usize> {
        Ok(self.bot(token)?.lock().queue.len())
    }

    /// Pushes dropped because `allowed_updates` refused their kind.
    pub fn filtered_update_count(&self, token: &str) -> anyhow::Result<u64> {
        Ok(self.bot(token)?.lock().filtered)
    }

    /// The highest `offset` any processed `getUpdates` of this bot carried (requests answered with
    /// an injected fault were not processed and do not count).
    pub fn confirmed_offset(&self, token: &str) -> Option<i64> {
        self.shared.bot(token)?.lock().confirmed_offset
    }

    /// A snapshot of every request answered so far, in completion order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.shared.log).clone()
    }

    /// A snapshot of every webhook delivery attempt so far, in completion order.
    pub fn webhook_attempts(&self) -> Vec<WebhookAttempt> {
        lock(&self.shared.attempts).clone()
    }

    /// Stops accepting requests, answers waiting long polls with 500 "restart", stops webhook
    /// delivery and waits for the server task.
    pub async fn shutdown(mut self) {
        self.shared.shutdown.cancel();
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }
}

impl Drop for BotApi {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}

/// Writes `{"update_id":N,` in front of a serialised object's members.
fn splice_update_id(id: i64, object: &[u8]) -> Vec<u8> {
    let members = object
        .get(1..object.len().saturating_sub(1))
        .unwrap_or_default();
    let mut raw = format!(r#"{{"update_id":{id}"#).into_bytes();
    if !members.is_empty() {
        raw.push(b',');
        raw.extend_from_slice(members);
    }
    raw.push(b'}');
    raw
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_assigned_id_is_written_first() {
        assert_eq!(
            splice_update_id(5, br#"{"message":{"a":1}}"#),
            br#"{"update_id":5,"message":{"a":1}}"#.to_vec()
        );
        assert_eq!(splice_update_id(6, b"{}"), br#"{"update_id":6}"#.to_vec());
    }
}
