//! The producer's configuration, built by the caller (the CLI, a test, the demo).
//!
//! Library code never reads the environment: every setting arrives here. Secrets (bot tokens, the
//! webhook secret, passwords inside the Kafka client configuration) are never printed: `Debug`
//! shows counts and non-secret settings only. [`ProducerConfig::validate`] checks the cross-field
//! rules (a client timeout longer than the long poll, a limit Telegram accepts, tokens that carry
//! distinct bot ids, no topic auto-creation) before anything touches the network.

use std::net::SocketAddr;
use std::time::Duration;

use rdkafka::ClientConfig;
use secrecy::{ExposeSecret, SecretString};
use url::Url;

/// Every update kind the Bot API knows, including the three Telegram leaves out unless a bot asks
/// for them (`chat_member`, `message_reaction`, `message_reaction_count`).
pub const ALL_UPDATE_KINDS: &[&str] = &processor::UPDATE_KINDS;

/// The Bot API's default server.
pub const TELEGRAM_API_URL: &str = "https://api.telegram.org";

/// Everything [`crate::run`] needs.
pub struct ProducerConfig {
    /// Base URL of the Bot API (`https://api.telegram.org`, a local Bot API server, a test double).
    pub api_url: Url,
    /// One token per bot (`<bot id>:<key>`, as Telegram issues them); bots are named by position
    /// (`bot #1`, …) in every message. Each bot is its own unit: one failing never stops another.
    pub tokens: Vec<SecretString>,
    /// Long polling or webhook.
    pub mode: IntakeMode,
    /// The topic updates are published to; it must exist.
    pub topic: String,
    /// Kafka client settings from the caller (bootstrap servers, security). The producer adds
    /// idempotence, `acks=all`, compression, `message.max.bytes`, the delivery timeout and
    /// `allow.auto.create.topics=false` (a value other than `false` here is refused).
    pub client: ClientConfig,
    /// Largest record the producer sends; larger updates become `tg-error` envelopes.
    pub message_max_bytes: usize,
    /// `compression.type` (`zstd`, `lz4`, `gzip`, `snappy` or `none`).
    pub compression: String,
    /// How long one publish attempt may take (`message.timeout.ms`). A failed attempt is retried
    /// (polling) or answered 5xx (webhook).
    pub delivery_timeout: Duration,
    /// Backoff after transient Telegram or Kafka failures (with jitter).
    pub backoff: BackoffPolicy,
    /// Whether the topic is expected to be durable: at startup, a replication factor below 3 or a
    /// `min.insync.replicas` below 2 is warned about. `false` for a single-broker development
    /// setup (the demo's embedded broker), where the warning would only alarm a new user.
    pub expect_durable_topic: bool,
    /// How often Kafka is probed (a metadata request for the topic) while it is reported not
    /// ready, so readiness recovers without traffic.
    pub kafka_probe_interval: Duration,
}

impl ProducerConfig {
    /// A configuration with the documented defaults: long polling with a 25 s poll over every
    /// update kind, zstd, 1 MB records, 30 s delivery timeout.
    pub fn new(
        api_url: Url,
        tokens: Vec<SecretString>,
        topic: String,
        client: ClientConfig,
    ) -> Self {
        Self {
            api_url,
            tokens,
            mode: IntakeMode::Polling(PollingConfig::default()),
            topic,
            client,
            message_max_bytes: 1_000_000,
            compression: "zstd".to_owned(),
            delivery_timeout: Duration::from_secs(30),
            backoff: BackoffPolicy::default(),
            expect_durable_topic: true,
            kafka_probe_interval: Duration::from_secs(5),
        }
    }

    /// Checks the rules that span fields; the error names the setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.tokens.is_empty() {
            return Err(ConfigError::new(
                Setting::Tokens,
                "at least one bot token is required",
            ));
        }
        let mut ids: Vec<(i64, usize)> = Vec::with_capacity(self.tokens.len());
        for (index, token) in self.tokens.iter().enumerate() {
            let position = index + 1;
            let id = bot_id_of(token).ok_or_else(|| {
                ConfigError::new(
                    Setting::Tokens,
                    format!("token #{position} is not of the form <bot id>:<key>"),
                )
            })?;
            if let Some((_, first)) = ids.iter().find(|(known, _)| *known == id) {
                return Err(ConfigError::new(
                    Setting::Tokens,
                    format!(
                        "bot #{first} and bot #{position} are the same bot (id {id}): list each \
                         token once"
                    ),
                ));
            }
            ids.push((id, position));
        }
        if let Some(value) = self.client.get("allow.auto.create.topics")
            && !value.trim().eq_ignore_ascii_case("false")
        {
            return Err(ConfigError::new(
                Setting::AutoCreateTopics,
                format!(
                    "allow.auto.create.topics must be false, not {value:?}: a missing topic is a \
                     startup error naming it, never a topic the broker creates with its own \
                     defaults"
                ),
            ));
        }
        if self.topic.is_empty() {
            return Err(ConfigError::new(Setting::Topic, "must not be empty"));
        }
        if self.message_max_bytes < 4096 {
            return Err(ConfigError::new(
                Setting::MessageMaxBytes,
                "must be at least 4096",
            ));
        }
        if self.delivery_timeout < Duration::from_millis(100) {
            return Err(ConfigError::new(
                Setting::DeliveryTimeout,
                "must be at least 100 ms",
            ));
        }
        if self.backoff.initial.is_zero() || self.backoff.max < self.backoff.initial {
            return Err(ConfigError::new(
                Setting::Backoff,
                "initial must be positive and not above max",
            ));
        }
        match &self.mode {
            IntakeMode::Polling(polling) => {
                if !(1..=100).contains(&polling.limit) {
                    return Err(ConfigError::new(Setting::PollingLimit, "must be 1..=100"));
                }
                if polling.request_timeout() <= polling.timeout {
                    return Err(ConfigError::new(
                        Setting::PollingRequestTimeout,
                        "must be longer than the long-poll timeout",
                    ));
                }
            }
            IntakeMode::Webhook(webhook) => {
                if webhook.body_timeout.is_zero() {
                    return Err(ConfigError::new(
                        Setting::WebhookBodyTimeout,
                        "must be positive",
                    ));
                }
                if webhook.max_concurrent_requests == 0 {
                    return Err(ConfigError::new(
                        Setting::WebhookMaxConcurrentRequests,
                        "must be positive",
                    ));
                }
                if let Some(url) = &webhook.public_url {
                    if url.cannot_be_a_base() {
                        return Err(ConfigError::new(
                            Setting::WebhookPublicUrl,
                            "not a base URL",
                        ));
                    }
                    check_public_url(&self.api_url, url)
                        .map_err(|reason| ConfigError::new(Setting::WebhookPublicUrl, reason))?;
                }
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for ProducerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // ClientConfig's Debug prints every property, passwords included.
        f.debug_struct("ProducerConfig")
            .field("api_url", &self.api_url.as_str())
            .field("bots", &self.tokens.len())
            .field("mode", &self.mode)
            .field("topic", &self.topic)
            .field(
                "bootstrap.servers",
                &self.client.get("bootstrap.servers").unwrap_or(""),
            )
            .field("message_max_bytes", &self.message_max_bytes)
            .field("compression", &self.compression)
            .field("delivery_timeout", &self.delivery_timeout)
            .field("backoff", &self.backoff)
            .field("expect_durable_topic", &self.expect_durable_topic)
            .field("kafka_probe_interval", &self.kafka_probe_interval)
            .finish()
    }
}

/// How updates arrive.
#[derive(Debug)]
pub enum IntakeMode {
    /// `getUpdates` long polling: one poller per bot (Telegram allows one per token).
    Polling(PollingConfig),
    /// Telegram POSTs updates to `POST {listen}/webhook/{bot_id}`; scales horizontally.
    Webhook(WebhookConfig),
}

/// Long-polling settings.
#[derive(Debug, Clone)]
pub struct PollingConfig {
    /// The `timeout` parameter of getUpdates (how long Telegram holds an empty poll).
    pub timeout: Duration,
    /// The `limit` parameter (1..=100).
    pub limit: u8,
    /// The `allowed_updates` parameter, always sent explicitly.
    pub allowed_updates: Vec<String>,
    /// The HTTP client's timeout for one getUpdates; `None` = long-poll timeout + 10 s.
    pub request_timeout: Option<Duration>,
}

impl PollingConfig {
    /// The HTTP timeout actually used for one getUpdates request.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
            .unwrap_or(self.timeout + Duration::from_secs(10))
    }
}

impl Default for PollingConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(25),
            limit: 100,
            allowed_updates: all_update_kinds(),
            request_timeout: None,
        }
    }
}

/// Webhook settings.
pub struct WebhookConfig {
    /// Address the webhook endpoint listens on.
    pub listen: SocketAddr,
    /// When set, `setWebhook` is called at startup with `{public_url}/webhook/{bot_id}`, the secret
    /// and `allowed_updates`; when absent, the webhook is assumed registered by the operator.
    pub public_url: Option<Url>,
    /// Expected `X-Telegram-Bot-Api-Secret-Token` value.
    pub secret_token: SecretString,
    /// `allowed_updates` sent with `setWebhook`.
    pub allowed_updates: Vec<String>,
    /// How long an authenticated request may wait for its turn and then take to send its body
    /// (answered 503 and 408 beyond it; Telegram retries both).
    pub body_timeout: Duration,
    /// Authenticated requests handled at once; more wait (up to `body_timeout`) for a turn. Each
    /// may hold a body of up to 16 MiB.
    pub max_concurrent_requests: usize,
    /// How often each bot's getWebhookInfo is read (what Telegram holds for it: pending updates,
    /// the last delivery error).
    pub info_interval: Duration,
}

impl WebhookConfig {
    /// A webhook listening on `listen`, not registering itself, allowing every update kind; 10 s
    /// body timeout, 64 requests at once, getWebhookInfo every minute.
    pub fn new(listen: SocketAddr, secret_token: SecretString) -> Self {
        Self {
            listen,
            public_url: None,
            secret_token,
            allowed_updates: all_update_kinds(),
            body_timeout: Duration::from_secs(10),
            max_concurrent_requests: 64,
            info_interval: Duration::from_secs(60),
        }
    }
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("listen", &self.listen)
            .field("public_url", &self.public_url.as_ref().map(Url::as_str))
            .field("secret_token", &"<redacted>")
            .field("allowed_updates", &self.allowed_updates)
            .field("body_timeout", &self.body_timeout)
            .field("max_concurrent_requests", &self.max_concurrent_requests)
            .field("info_interval", &self.info_interval)
            .finish()
    }
}

/// Capped exponential backoff.
#[derive(Debug, Clone, Copy)]
pub struct BackoffPolicy {
    /// First delay.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

/// The bot id a Telegram token carries: the digits before its colon (`<bot id>:<key>`). `None`
/// for anything else; the token's value is never part of an error.
pub fn bot_id_of(token: &SecretString) -> Option<i64> {
    let (id, key) = token.expose_secret().split_once(':')?;
    if key.is_empty() || id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    id.parse().ok()
}

/// Whether Telegram at `api_url` can deliver webhooks to `public_url`: Telegram's cloud API
/// delivers only to `https://`; a self-hosted Bot API server (any other `api_url`) also to
/// `http://`. The error is the reason, for the caller to prefix with the setting's name.
pub fn check_public_url(api_url: &Url, public_url: &Url) -> Result<(), &'static str> {
    match public_url.scheme() {
        "https" => Ok(()),
        "http" if !is_telegram_cloud(api_url) => Ok(()),
        "http" => Err(
            "Telegram's cloud API delivers webhooks only to https:// URLs (http:// needs a \
             self-hosted Bot API server)",
        ),
        _ => Err("must be an https:// URL"),
    }
}

/// Whether `api_url` is Telegram's cloud Bot API rather than a self-hosted server.
pub fn is_telegram_cloud(api_url: &Url) -> bool {
    api_url
        .host_str()
        .is_some_and(|host| host.eq_ignore_ascii_case("api.telegram.org"))
}

/// A setting [`ProducerConfig::validate`] can refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    /// [`ProducerConfig::tokens`].
    Tokens,
    /// [`ProducerConfig::topic`].
    Topic,
    /// [`ProducerConfig::message_max_bytes`].
    MessageMaxBytes,
    /// [`ProducerConfig::delivery_timeout`].
    DeliveryTimeout,
    /// [`ProducerConfig::backoff`].
    Backoff,
    /// [`PollingConfig::limit`].
    PollingLimit,
    /// [`PollingConfig::request_timeout`].
    PollingRequestTimeout,
    /// [`WebhookConfig::public_url`].
    WebhookPublicUrl,
    /// [`WebhookConfig::body_timeout`].
    WebhookBodyTimeout,
    /// [`WebhookConfig::max_concurrent_requests`].
    WebhookMaxConcurrentRequests,
    /// `allow.auto.create.topics` in [`ProducerConfig::client`].
    AutoCreateTopics,
}

impl Setting {
    /// The setting's name in this library's configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Setting::Tokens => "tokens",
            Setting::Topic => "topic",
            Setting::MessageMaxBytes => "message_max_bytes",
            Setting::DeliveryTimeout => "delivery_timeout",
            Setting::Backoff => "backoff",
            Setting::PollingLimit => "polling.limit",
            Setting::PollingRequestTimeout => "polling.request_timeout",
            Setting::WebhookPublicUrl => "webhook.public_url",
            Setting::WebhookBodyTimeout => "webhook.body_timeout",
            Setting::WebhookMaxConcurrentRequests => "webhook.max_concurrent_requests",
            Setting::AutoCreateTopics => "kafka client settings",
        }
    }
}

impl std::fmt::Display for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A setting that cannot work, named by its [`Setting`].
pub type ConfigError = component::ConfigError<Setting>;

/// [`ALL_UPDATE_KINDS`] as owned strings.
pub fn all_update_kinds() -> Vec<String> {
    ALL_UPDATE_KINDS.iter().map(|k| (*k).to_owned()).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config() -> ProducerConfig {
        ProducerConfig::new(
            TELEGRAM_API_URL.parse().unwrap(),
            vec![SecretString::from("1:a".to_owned())],
            "tg.updates".to_owned(),
            ClientConfig::new(),
        )
    }

    #[test]
    fn the_defaults_are_valid_and_ask_for_every_kind() {
        let config = config();
        config.validate().unwrap();
        let IntakeMode::Polling(polling) = &config.mode else {
            panic!("polling is the default");
        };
        assert!(polling.allowed_updates.iter().any(|k| k == "chat_member"));
        assert!(polling.request_timeout() > polling.timeout);
    }

    #[test]
    fn a_client_timeout_not_longer_than_the_long_poll_is_refused() {
        let mut config = config();
        config.mode = IntakeMode::Polling(PollingConfig {
            timeout: Duration::from_secs(30),
            request_timeout: Some(Duration::from_secs(30)),
            ..PollingConfig::default()
        });
        let error = config.validate().unwrap_err().to_string();
        assert!(error.starts_with("polling.request_timeout"), "{error}");
    }

    #[test]
    fn a_limit_outside_telegrams_range_is_refused() {
        let mut config = config();
        config.mode = IntakeMode::Polling(PollingConfig {
            limit: 0,
            ..PollingConfig::default()
        });
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .starts_with("polling.limit")
        );
    }

    #[test]
    fn an_http_webhook_url_is_accepted_only_with_a_self_hosted_bot_api() {
        let http: Url = "http://ingest.internal:8443".parse().unwrap();
        let cloud: Url = TELEGRAM_API_URL.parse().unwrap();
        let self_hosted: Url = "http://bot-api.internal:8081".parse().unwrap();
        assert!(check_public_url(&cloud, &http).is_err());
        assert!(check_public_url(&self_hosted, &http).is_ok());
        let https: Url = "https://ingest.example.com".parse().unwrap();
        assert!(check_public_url(&cloud, &https).is_ok());
        let ftp: Url = "ftp://ingest.example.com".parse().unwrap();
        assert!(check_public_url(&self_hosted, &ftp).is_err());

        let mut config = config();
        let mut webhook = WebhookConfig::new(
            "127.0.0.1:8443".parse().unwrap(),
            SecretString::from("s".to_owned()),
        );
        webhook.public_url = Some(http);
        config.mode = IntakeMode::Webhook(webhook);
        let error = config.validate().unwrap_err().to_string();
        assert!(error.starts_with("webhook.public_url: "), "{error}");
        config.api_url = self_hosted;
        config.validate().unwrap();
    }

    #[test]
    fn no_token_is_refused_and_debug_output_shows_no_secret() {
        let mut config = config();
        config.client.set("sasl.password", "hunter2");
        config.mode = IntakeMode::Webhook(WebhookConfig::new(
            "127.0.0.1:8443".parse().unwrap(),
            SecretString::from("whsecret".to_owned()),
        ));
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("whsecret") && !shown.contains("1:a"),
            "{shown}"
        );
        config.tokens.clear();
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .starts_with("tokens")
        );
    }

    #[test]
    fn a_client_setting_that_allows_topic_auto_creation_is_refused_naming_it() {
        for value in ["true", "TRUE"] {
            let mut config = config();
            config.client.set("allow.auto.create.topics", value);
            let error = config.validate().unwrap_err().to_string();
            assert!(
                error.starts_with("kafka client settings: allow.auto.create.topics must be false"),
                "{error}"
            );
        }
        let mut config = config();
        config.client.set("allow.auto.create.topics", "false");
        config.validate().unwrap();
    }

    #[test]
    fn a_token_without_its_bot_id_is_refused_by_position_without_its_value() {
        let mut config = config();
        config
            .tokens
            .push(SecretString::from("no-bot-id".to_owned()));
        let error = config.validate().unwrap_err().to_string();
        assert_eq!(error, "tokens: token #2 is not of the form <bot id>:<key>");
    }

    #[test]
    fn the_same_bot_listed_twice_is_refused_naming_both_positions() {
        let mut config = config();
        config.tokens.push(SecretString::from("1:b".to_owned()));
        let error = config.validate().unwrap_err().to_string();
        assert_eq!(
            error,
            "tokens: bot #1 and bot #2 are the same bot (id 1): list each token once"
        );
    }
}
