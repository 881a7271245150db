//! `tgingest producer`'s arguments and environment → [`producer::ProducerConfig`]: the intake
//! mode, the Bot API, the bot tokens and the webhook secret.
//!
//! Guarantees: a malformed bot token is named by its position, never by its value; the webhook
//! secret follows Telegram's rule before anything listens; every setting the producer library can
//! refuse ([`producer::config::Setting`]) has an operator's name here.

use std::time::Duration;

use clap::Args;
use secrecy::{ExposeSecret, SecretString};

use super::admin::AdminArgs;
use super::check::CheckConfig;
use super::env::{Env, secret};
use super::error::ConfigError;
use super::kafka::{KafkaArgs, validate_kafka_client};
use ::producer::config::Setting;

#[derive(Debug, Args)]
pub struct ProducerArgs {
    #[command(flatten)]
    pub check: CheckConfig,
    /// Base URL of the Bot API (a local Bot API server, or a test double).
    #[arg(
        long,
        env = "TELEGRAM_API_URL",
        default_value = "https://api.telegram.org"
    )]
    pub telegram_api_url: String,
    /// How updates arrive: `polling` (getUpdates; one replica per bot token) or `webhook`
    /// (Telegram POSTs to WEBHOOK_LISTEN; scales horizontally).
    #[arg(long, env = "PRODUCER_MODE", value_enum, default_value = "polling")]
    pub producer_mode: ProducerMode,
    /// Long-poll timeout of getUpdates.
    #[arg(long, env = "TELEGRAM_POLL_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub telegram_poll_timeout: Duration,
    /// Update kinds to request, comma-separated; default: every kind, including chat_member,
    /// message_reaction and message_reaction_count, which Telegram omits unless asked.
    #[arg(long, env = "TELEGRAM_ALLOWED_UPDATES", value_delimiter = ',')]
    pub telegram_allowed_updates: Vec<String>,
    /// Webhook mode: address the webhook endpoint listens on (`/webhook/<bot id>`).
    #[arg(long, env = "WEBHOOK_LISTEN", default_value = "0.0.0.0:8080")]
    pub webhook_listen: String,
    /// Webhook mode: public base URL; when set, setWebhook registers `<url>/webhook/<bot id>`
    /// with the secret at startup.
    #[arg(long, env = "WEBHOOK_PUBLIC_URL")]
    pub webhook_public_url: Option<String>,
    /// How long one publish attempt may wait for Kafka's acknowledgement (librdkafka's
    /// `message.timeout.ms`): then polling retries it, and a webhook request is answered 503
    /// (Telegram retries) and readiness turns not ready.
    #[arg(long, env = "KAFKA_DELIVERY_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub kafka_delivery_timeout: Duration,
    /// How long SIGTERM may take to finish and confirm the batch in flight.
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// How the producer receives updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProducerMode {
    Polling,
    Webhook,
}

impl ProducerArgs {
    /// The producer library's configuration from the command line and environment.
    pub fn resolve(&self, env: &dyn Env) -> Result<::producer::ProducerConfig, ConfigError> {
        let kafka = self.kafka.resolve(env)?;
        validate_kafka_client(&kafka)?;
        let tokens = bot_tokens(env)?;
        let api_url = url::Url::parse(&self.telegram_api_url)
            .map_err(|e| ConfigError::new("TELEGRAM_API_URL", format!("not a URL ({e})")))?;
        let allowed_updates = if self.telegram_allowed_updates.is_empty() {
            ::producer::all_update_kinds()
        } else {
            self.telegram_allowed_updates.clone()
        };
        let mut config =
            ::producer::ProducerConfig::new(api_url, tokens, kafka.topic, kafka.client);
        config.delivery_timeout = self.kafka_delivery_timeout;
        config.mode = match self.producer_mode {
            ProducerMode::Polling => ::producer::IntakeMode::Polling(::producer::PollingConfig {
                timeout: self.telegram_poll_timeout,
                allowed_updates,
                ..::producer::PollingConfig::default()
            }),
            ProducerMode::Webhook => {
                let secret = self.webhook_secret(env)?;
                let listen = self
                    .webhook_listen
                    .parse()
                    .map_err(|_| ConfigError::new("WEBHOOK_LISTEN", "not an ip:port address"))?;
                let mut webhook = ::producer::WebhookConfig::new(listen, secret);
                webhook.public_url = self
                    .webhook_public_url
                    .as_deref()
                    .map(url::Url::parse)
                    .transpose()
                    .map_err(|e| {
                        ConfigError::new("WEBHOOK_PUBLIC_URL", format!("not a URL ({e})"))
                    })?;
                webhook.allowed_updates = allowed_updates;
                ::producer::IntakeMode::Webhook(webhook)
            }
        };
        config.validate()?;
        Ok(config)
    }

    /// Validates the webhook-mode settings and returns the secret token.
    fn webhook_secret(&self, env: &dyn Env) -> Result<SecretString, ConfigError> {
        self.webhook_listen
            .parse::<std::net::SocketAddr>()
            .map_err(|_| ConfigError::new("WEBHOOK_LISTEN", "not an ip:port address"))?;
        if let Some(public) = &self.webhook_public_url {
            let url = url::Url::parse(public)
                .map_err(|e| ConfigError::new("WEBHOOK_PUBLIC_URL", format!("not a URL ({e})")))?;
            if let Ok(api_url) = url::Url::parse(&self.telegram_api_url) {
                producer::config::check_public_url(&api_url, &url)
                    .map_err(|reason| ConfigError::new("WEBHOOK_PUBLIC_URL", reason))?;
            }
        }
        let secret = secret(env, "TELEGRAM_WEBHOOK_SECRET")?.ok_or_else(|| {
            ConfigError::new(
                "TELEGRAM_WEBHOOK_SECRET",
                "required in webhook mode (or TELEGRAM_WEBHOOK_SECRET_FILE)",
            )
        })?;
        let value = secret.expose_secret();
        let valid = (1..=256).contains(&value.len())
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid {
            return Err(ConfigError::new(
                "TELEGRAM_WEBHOOK_SECRET",
                "must be 1–256 characters of A-Z, a-z, 0-9, _ and - (Telegram's rule)",
            ));
        }
        Ok(secret)
    }
}

impl From<::producer::ConfigError> for ConfigError {
    fn from(e: ::producer::ConfigError) -> Self {
        ConfigError::new(operator_name(e.setting), e.reason)
    }
}

/// How an operator sets a producer library setting: its environment variable, or, for a setting
/// the command line does not expose, the library's own name.
fn operator_name(setting: Setting) -> &'static str {
    match setting {
        Setting::Tokens => "TELEGRAM_BOT_TOKENS",
        Setting::Topic => "KAFKA_TOPIC",
        Setting::PollingRequestTimeout => "TELEGRAM_POLL_TIMEOUT",
        Setting::WebhookPublicUrl => "WEBHOOK_PUBLIC_URL",
        Setting::AutoCreateTopics => "KAFKA_CLIENT_OPTIONS",
        Setting::DeliveryTimeout => "KAFKA_DELIVERY_TIMEOUT",
        Setting::MessageMaxBytes
        | Setting::Backoff
        | Setting::PollingLimit
        | Setting::WebhookBodyTimeout
        | Setting::WebhookMaxConcurrentRequests => setting.as_str(),
    }
}

/// The bot tokens, from TELEGRAM_BOT_TOKENS or TELEGRAM_BOT_TOKENS_FILE. A malformed token is
/// reported by its position, never by its value.
pub fn bot_tokens(env: &dyn Env) -> Result<Vec<SecretString>, ConfigError> {
    let raw = secret(env, "TELEGRAM_BOT_TOKENS")?.ok_or_else(|| {
        ConfigError::new(
            "TELEGRAM_BOT_TOKENS",
            "required (bot tokens separated by commas or newlines, or TELEGRAM_BOT_TOKENS_FILE)",
        )
    })?;
    let tokens: Vec<SecretString> = raw
        .expose_secret()
        .split([',', '\n'])
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| SecretString::from(t.to_owned()))
        .collect();
    for (index, token) in tokens.iter().enumerate() {
        let valid = token
            .expose_secret()
            .split_once(':')
            .is_some_and(|(id, key)| {
                !id.is_empty()
                    && id.bytes().all(|b| b.is_ascii_digit())
                    && !key.is_empty()
                    && key
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            });
        if !valid {
            return Err(ConfigError::new(
                "TELEGRAM_BOT_TOKENS",
                format!("token #{} is not of the form <bot id>:<key>", index + 1),
            ));
        }
    }
    if tokens.is_empty() {
        return Err(ConfigError::new("TELEGRAM_BOT_TOKENS", "no token given"));
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::env::test_env;

    #[test]
    fn a_malformed_token_is_named_by_position_not_by_value() {
        let env = test_env(&[("TELEGRAM_BOT_TOKENS", "123:abcDEF_-x, 456:bad token")]);
        let err = bot_tokens(&env).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid configuration: TELEGRAM_BOT_TOKENS: token #2 is not of the form <bot id>:<key>"
        );
        assert!(!err.to_string().contains("bad token"));
    }

    #[test]
    fn tokens_are_split_on_commas_and_newlines() {
        let env = test_env(&[("TELEGRAM_BOT_TOKENS", "1:a\n2:b,3:c\n")]);
        assert_eq!(bot_tokens(&env).unwrap().len(), 3);
    }

    #[test]
    fn a_setting_the_producer_library_refuses_is_named_as_the_operator_sets_it() {
        let mut config = ::producer::ProducerConfig::new(
            url::Url::parse(::producer::TELEGRAM_API_URL).unwrap(),
            vec![],
            "tg.updates".to_owned(),
            rdkafka::ClientConfig::new(),
        );
        let err = ConfigError::from(config.validate().unwrap_err());
        assert_eq!(err.setting, "TELEGRAM_BOT_TOKENS");
        config.tokens = vec![SecretString::from("1:a".to_owned())];
        config.delivery_timeout = Duration::ZERO;
        let err = ConfigError::from(config.validate().unwrap_err());
        assert_eq!(err.setting, "KAFKA_DELIVERY_TIMEOUT");
    }
}
