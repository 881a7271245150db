//! The command line: one binary, one subcommand per role.
//!
//! Each subcommand accepts `--check-config`, which validates its whole configuration (flags,
//! environment, secret files, Kafka properties) without touching the network and exits 0, or exits
//! 2 with one line naming the bad setting. Deployment manifests are tested by running exactly their
//! arguments and environment through it.

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use secrecy::{ExposeSecret, SecretString};

use crate::config::{
    AdminArgs, ConfigError, DatabaseArgs, Env, KafkaArgs, ProcessEnv, secret, validate_kafka_client,
};
use crate::telemetry::{self, LogFormat};

const SECRETS_HELP: &str = "\
Secrets are read only from the environment or from a file named by <NAME>_FILE, never from flags:
  DATABASE_URL            postgres://user:password@host:port/database[?sslmode=…]
  TELEGRAM_BOT_TOKENS     bot tokens, separated by commas or newlines
  KAFKA_SASL_PASSWORD     password for SASL PLAIN / SCRAM
  KAFKA_SSL_KEY_PASSWORD  password of the client key for mutual TLS
  TELEGRAM_WEBHOOK_SECRET secret token Telegram sends with each webhook request";

/// Telegram → Kafka → PostgreSQL ingestion with exactly-once effect.
#[derive(Debug, Parser)]
#[command(name = "tgingest", version, propagate_version = true, after_help = SECRETS_HELP)]
pub struct Cli {
    /// Log format: human-readable text or one JSON object per line.
    #[arg(
        long,
        env = "LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Receive updates from Telegram (long polling or webhook) and publish them to Kafka.
    Producer(ProducerArgs),
    /// Consume updates from Kafka and write them to PostgreSQL, exactly once.
    Consumer(ConsumerArgs),
    /// Create or upgrade the database schema (idempotent).
    Migrate(MigrateArgs),
    /// Rewind a consumer group's stored offsets so running consumers reprocess history.
    Replay(ReplayArgs),
    /// Inspect, redrive or purge dead letters.
    Dlq(DlqArgs),
    /// Show lag, stored offsets, gaps and dead letters per partition.
    Status(StatusArgs),
    /// Run the whole pipeline on embedded defaults: simulated Telegram, in-memory broker.
    Demo(DemoArgs),
}

/// Validate the configuration and exit without doing anything else.
#[derive(Debug, Clone, Copy, Args)]
pub struct CheckConfig {
    /// Validate the configuration (flags, environment, secret files) and exit.
    #[arg(long)]
    pub check_config: bool,
}

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
    pub telegram_poll_timeout: std::time::Duration,
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

#[derive(Debug, Args)]
pub struct ConsumerArgs {
    #[command(flatten)]
    pub check: CheckConfig,
    /// Consumer group; also the key of the offsets stored in PostgreSQL.
    #[arg(long, env = "KAFKA_GROUP_ID", default_value = "tgingest-sink")]
    pub group_id: String,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub check: CheckConfig,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub check: CheckConfig,
    #[arg(long, env = "KAFKA_GROUP_ID", default_value = "tgingest-sink")]
    pub group_id: String,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

#[derive(Debug, Args)]
pub struct DlqArgs {
    #[command(flatten)]
    pub check: CheckConfig,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub check: CheckConfig,
    #[arg(long, env = "KAFKA_GROUP_ID", default_value = "tgingest-sink")]
    pub group_id: String,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub check: CheckConfig,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// The database the demo uses when DATABASE_URL is not set: a local PostgreSQL, trust auth.
pub const DEMO_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/tgingest_demo";

/// Parses the command line, runs the subcommand and maps the outcome to an exit status:
/// 0 success, 1 runtime failure, 2 configuration error.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, &ProcessEnv)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(config) = e.downcast_ref::<ConfigError>() {
                eprintln!("error: {config}");
                ExitCode::from(2)
            } else {
                // `{:#}` prints the context chain on one line.
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        }
    }
}

/// Runs one subcommand.
pub async fn run(command: Command, env: &dyn Env) -> anyhow::Result<()> {
    match command {
        Command::Migrate(args) => {
            let database = args.database.resolve(env, None, "tgingest-migrate")?;
            if args.check.check_config {
                return config_ok("migrate");
            }
            crate::db::run_migrate_command(&database).await
        }
        Command::Producer(args) => {
            let kafka = args.kafka.resolve(env)?;
            validate_kafka_client(&kafka)?;
            let tokens = bot_tokens(env)?;
            args.admin.resolve()?;
            url::Url::parse(&args.telegram_api_url)
                .map_err(|e| ConfigError::new("TELEGRAM_API_URL", format!("not a URL ({e})")))?;
            if args.producer_mode == ProducerMode::Webhook {
                webhook_settings(&args, env)?;
            }
            if args.check.check_config {
                return config_ok("producer");
            }
            drop(tokens);
            not_yet("producer")
        }
        Command::Consumer(args) => {
            let kafka = args.kafka.resolve(env)?;
            validate_kafka_client(&kafka)?;
            args.database.resolve(env, None, "tgingest-consumer")?;
            args.admin.resolve()?;
            if args.group_id.is_empty() {
                return Err(ConfigError::new("KAFKA_GROUP_ID", "must not be empty").into());
            }
            if args.check.check_config {
                return config_ok("consumer");
            }
            not_yet("consumer")
        }
        Command::Replay(args) => {
            validate_kafka_client(&args.kafka.resolve(env)?)?;
            args.database.resolve(env, None, "tgingest-replay")?;
            if args.check.check_config {
                return config_ok("replay");
            }
            not_yet("replay")
        }
        Command::Status(args) => {
            validate_kafka_client(&args.kafka.resolve(env)?)?;
            args.database.resolve(env, None, "tgingest-status")?;
            if args.check.check_config {
                return config_ok("status");
            }
            not_yet("status")
        }
        Command::Dlq(args) => {
            args.database.resolve(env, None, "tgingest-dlq")?;
            if args.check.check_config {
                return config_ok("dlq");
            }
            not_yet("dlq")
        }
        Command::Demo(args) => {
            args.database
                .resolve(env, Some(DEMO_DATABASE_URL), "tgingest-demo")?;
            if args.check.check_config {
                return config_ok("demo");
            }
            not_yet("demo")
        }
    }
}

/// Validates the webhook-mode settings and returns the secret token.
fn webhook_settings(args: &ProducerArgs, env: &dyn Env) -> Result<SecretString, ConfigError> {
    args.webhook_listen
        .parse::<std::net::SocketAddr>()
        .map_err(|_| ConfigError::new("WEBHOOK_LISTEN", "not an ip:port address"))?;
    if let Some(public) = &args.webhook_public_url {
        let url = url::Url::parse(public)
            .map_err(|e| ConfigError::new("WEBHOOK_PUBLIC_URL", format!("not a URL ({e})")))?;
        if url.scheme() != "https" {
            return Err(ConfigError::new(
                "WEBHOOK_PUBLIC_URL",
                "Telegram delivers webhooks only to https:// URLs",
            ));
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

fn config_ok(command: &str) -> anyhow::Result<()> {
    println!("configuration OK for `tgingest {command}`");
    Ok(())
}

fn not_yet(command: &str) -> anyhow::Result<()> {
    anyhow::bail!(
        "`tgingest {command}` is not available in tgingest {} yet (its configuration can be checked with --check-config)",
        env!("CARGO_PKG_VERSION")
    )
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
    use clap::CommandFactory;
    use std::collections::HashMap;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn a_malformed_token_is_named_by_position_not_by_value() {
        let env: HashMap<String, String> = [(
            "TELEGRAM_BOT_TOKENS".to_string(),
            "123:abcDEF_-x, 456:bad token".to_string(),
        )]
        .into();
        let err = bot_tokens(&env).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid configuration: TELEGRAM_BOT_TOKENS: token #2 is not of the form <bot id>:<key>"
        );
        assert!(!err.to_string().contains("bad token"));
    }

    #[test]
    fn tokens_are_split_on_commas_and_newlines() {
        let env: HashMap<String, String> = [(
            "TELEGRAM_BOT_TOKENS".to_string(),
            "1:a\n2:b,3:c\n".to_string(),
        )]
        .into();
        assert_eq!(bot_tokens(&env).unwrap().len(), 3);
    }
}
