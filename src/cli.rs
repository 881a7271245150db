//! The command line: one binary, one subcommand per role.
//!
//! Each subcommand accepts `--check-config`, which validates its whole configuration (flags,
//! environment, secret files, Kafka properties) without touching the network and exits 0, or exits
//! 2 with one line naming the bad setting. Deployment manifests are tested by running exactly their
//! arguments and environment through it.

use std::process::ExitCode;
use std::time::Duration;

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
    Demo(crate::demo::DemoArgs),
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

#[derive(Debug, Args)]
pub struct ConsumerArgs {
    #[command(flatten)]
    pub check: CheckConfig,
    /// Consumer group; also the key of the offsets stored in PostgreSQL.
    #[arg(long, env = "KAFKA_GROUP_ID", default_value = "tgingest-sink")]
    pub group_id: String,
    /// A batch transaction holds at most this many records…
    #[arg(long, env = "CONSUMER_BATCH_MAX_RECORDS", default_value_t = 1000)]
    pub batch_max_records: usize,
    /// …and at most this many payload bytes.
    #[arg(long, env = "CONSUMER_BATCH_MAX_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub batch_max_bytes: usize,
    /// How long a partition worker waits for a batch to fill once it holds a record.
    #[arg(long, env = "CONSUMER_LINGER", default_value = "50ms", value_parser = humantime::parse_duration)]
    pub linger: Duration,
    /// Where a partition with no stored offset starts: `earliest` (nothing in the topic is
    /// skipped) or `latest`.
    #[arg(long, env = "CONSUMER_START", value_enum, default_value = "earliest")]
    pub start: StartFrom,
    /// `statement_timeout` of every batch transaction.
    #[arg(long, env = "CONSUMER_STATEMENT_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub statement_timeout: Duration,
    /// Partition assignment strategy of the group.
    #[arg(
        long,
        env = "KAFKA_ASSIGNMENT_STRATEGY",
        value_enum,
        default_value = "cooperative-sticky"
    )]
    pub assignment_strategy: Assignment,
    /// Static group membership (e.g. the pod name), so a restart within the session timeout
    /// keeps the partitions without a rebalance.
    #[arg(long, env = "KAFKA_GROUP_INSTANCE_ID")]
    pub group_instance_id: Option<String>,
    /// librdkafka `session.timeout.ms`: how long a silent member keeps its partitions.
    #[arg(long, env = "KAFKA_SESSION_TIMEOUT", default_value = "45s", value_parser = humantime::parse_duration)]
    pub session_timeout: Duration,
    /// Prefetch buffer per assigned partition, in KiB (librdkafka `queued.max.messages.kbytes`;
    /// with one queue per partition the bound is partitions × this).
    #[arg(long, env = "CONSUMER_QUEUE_KBYTES_PER_PARTITION", default_value_t = consumer::config::DEFAULT_QUEUE_KBYTES_PER_PARTITION)]
    pub queue_kbytes_per_partition: u32,
    /// Record bytes (payload + key) all partition workers of the process may hold at once,
    /// buffered or in batches being written; bounds memory whatever the partition count.
    #[arg(long, env = "CONSUMER_MAX_INFLIGHT_BYTES", default_value_t = consumer::config::DEFAULT_MAX_INFLIGHT_BYTES)]
    pub max_inflight_bytes: usize,
    /// How long SIGTERM may take to finish in-flight batches before the process gives up.
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// Where a partition with no stored offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StartFrom {
    Earliest,
    Latest,
}

/// Partition assignment strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Assignment {
    Range,
    Roundrobin,
    CooperativeSticky,
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
    /// Consumer group whose stored offsets are rewound.
    #[arg(
        long,
        visible_alias = "group",
        env = "KAFKA_GROUP_ID",
        default_value = "tgingest-sink"
    )]
    pub group_id: String,
    #[command(flatten)]
    pub replay: crate::replay::ReplayOptions,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

#[derive(Debug, Args)]
pub struct DlqArgs {
    #[command(flatten)]
    pub check: CheckConfig,
    #[command(subcommand)]
    pub action: Option<crate::dlq::DlqAction>,
    /// Kafka is used only to re-read records whose dead letter holds no payload.
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub check: CheckConfig,
    /// Consumer group whose stored offsets are reported.
    #[arg(
        long,
        visible_alias = "group",
        env = "KAFKA_GROUP_ID",
        default_value = "tgingest-sink"
    )]
    pub group_id: String,
    #[command(flatten)]
    pub status: crate::status::StatusOptions,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// The database the demo uses when DATABASE_URL is not set: a local PostgreSQL, trust auth.
pub const DEMO_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/tgingest_demo";

/// Parses the command line, runs the subcommand and maps the outcome to an exit status:
/// 0 success, 1 runtime failure, 2 configuration error.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo's live progress line is its output; its logs show only problems unless asked.
    let default_filter = match cli.command {
        Command::Demo(_) => "warn",
        _ => "info",
    };
    telemetry::init_logging(cli.log_format, default_filter);
    // With the `failpoints` feature, FAILPOINTS=name=action;… arms crash windows for tests.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
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
            let config = producer_config(&args, env)?;
            let admin = args.admin.resolve()?;
            if args.check.check_config {
                return config_ok("producer");
            }
            crate::service::run_service("producer", admin, args.shutdown_grace, |stop, ready| {
                producer::run(config, stop, std::sync::Arc::new(ready))
            })
            .await
        }
        Command::Consumer(args) => {
            let config = consumer_config(&args, env)?;
            let database = args.database.resolve(env, None, "tgingest-consumer")?;
            let admin = args.admin.resolve()?;
            if args.check.check_config {
                return config_ok("consumer");
            }
            crate::service::run_service(
                "consumer",
                admin,
                args.shutdown_grace,
                |stop, ready| async move {
                    let pool = crate::db::connect(&database).await?;
                    crate::db::ensure_schema_current(&pool).await?;
                    consumer::run(config, pool, stop, std::sync::Arc::new(ready)).await
                },
            )
            .await
        }
        Command::Replay(args) => {
            // Rebuilding from the database needs no broker.
            if !args.replay.reprocess_from_db {
                validate_kafka_client(&args.kafka.resolve(env)?)?;
            }
            let database = args.database.resolve(env, None, "tgingest-replay")?;
            args.replay.check()?;
            if args.check.check_config {
                return config_ok("replay");
            }
            crate::replay::run_command(&args.group_id, &args.replay, &args.kafka, env, &database)
                .await
        }
        Command::Status(args) => {
            validate_kafka_client(&args.kafka.resolve(env)?)?;
            let database = args.database.resolve(env, None, "tgingest-status")?;
            args.status.check()?;
            if args.check.check_config {
                return config_ok("status");
            }
            let breached = crate::status::run_command(
                &args.group_id,
                &args.status,
                &args.kafka,
                env,
                &database,
            )
            .await?;
            if breached {
                // The report is on stdout already; the status is the alert for scripts.
                use std::io::Write;
                let _ = std::io::stdout().flush();
                std::process::exit(i32::from(crate::status::EXIT_THRESHOLD_BREACHED));
            }
            Ok(())
        }
        Command::Dlq(args) => {
            let database = args.database.resolve(env, None, "tgingest-dlq")?;
            if args.kafka.kafka_brokers.is_some() {
                validate_kafka_client(&args.kafka.resolve(env)?)?;
            }
            if let Some(action) = &args.action {
                crate::dlq::check(action)?;
            }
            if args.check.check_config {
                return config_ok("dlq");
            }
            let Some(action) = &args.action else {
                return Err(ConfigError::new(
                    "dlq",
                    "name an action: list, show, redrive or purge (see `tgingest dlq --help`)",
                )
                .into());
            };
            crate::dlq::run_command(action, &args.kafka, env, &database).await
        }
        Command::Demo(args) => {
            let database = args
                .database
                .resolve(env, Some(DEMO_DATABASE_URL), "tgingest-demo")?;
            if args.kafka.kafka_brokers.is_some() {
                validate_kafka_client(&args.kafka.resolve(env)?)?;
            }
            if args.check.check_config {
                return config_ok("demo");
            }
            crate::demo::run(args, env, database).await
        }
    }
}

/// The producer library's configuration from the command line and environment.
pub fn producer_config(
    args: &ProducerArgs,
    env: &dyn Env,
) -> Result<producer::ProducerConfig, ConfigError> {
    let kafka = args.kafka.resolve(env)?;
    validate_kafka_client(&kafka)?;
    let tokens = bot_tokens(env)?;
    let api_url = url::Url::parse(&args.telegram_api_url)
        .map_err(|e| ConfigError::new("TELEGRAM_API_URL", format!("not a URL ({e})")))?;
    let allowed_updates = if args.telegram_allowed_updates.is_empty() {
        producer::all_update_kinds()
    } else {
        args.telegram_allowed_updates.clone()
    };
    let mut config = producer::ProducerConfig::new(api_url, tokens, kafka.topic, kafka.client);
    config.mode = match args.producer_mode {
        ProducerMode::Polling => producer::IntakeMode::Polling(producer::PollingConfig {
            timeout: args.telegram_poll_timeout,
            allowed_updates,
            ..producer::PollingConfig::default()
        }),
        ProducerMode::Webhook => {
            let secret = webhook_settings(args, env)?;
            let listen = args
                .webhook_listen
                .parse()
                .map_err(|_| ConfigError::new("WEBHOOK_LISTEN", "not an ip:port address"))?;
            let mut webhook = producer::WebhookConfig::new(listen, secret);
            webhook.public_url = args
                .webhook_public_url
                .as_deref()
                .map(url::Url::parse)
                .transpose()
                .map_err(|e| ConfigError::new("WEBHOOK_PUBLIC_URL", format!("not a URL ({e})")))?;
            webhook.allowed_updates = allowed_updates;
            producer::IntakeMode::Webhook(webhook)
        }
    };
    config
        .validate()
        .map_err(|e| ConfigError::new("producer", e.to_string()))?;
    Ok(config)
}

/// The consumer library's configuration from the command line and environment.
pub fn consumer_config(
    args: &ConsumerArgs,
    env: &dyn Env,
) -> Result<consumer::ConsumerConfig, ConfigError> {
    let kafka = args.kafka.resolve(env)?;
    validate_kafka_client(&kafka)?;
    let mut config = consumer::ConsumerConfig::new(&args.group_id, kafka.topic, kafka.client);
    config.batch_max_records = args.batch_max_records;
    config.batch_max_bytes = args.batch_max_bytes;
    config.linger = args.linger;
    config.start_policy = match args.start {
        StartFrom::Earliest => consumer::StartPolicy::Earliest,
        StartFrom::Latest => consumer::StartPolicy::Latest,
    };
    config.statement_timeout = args.statement_timeout;
    config.assignment_strategy = match args.assignment_strategy {
        Assignment::Range => consumer::AssignmentStrategy::Range,
        Assignment::Roundrobin => consumer::AssignmentStrategy::RoundRobin,
        Assignment::CooperativeSticky => consumer::AssignmentStrategy::CooperativeSticky,
    };
    config.group_instance_id = args.group_instance_id.clone();
    config.session_timeout = args.session_timeout;
    config.queued_max_kbytes_per_partition = args.queue_kbytes_per_partition;
    config.max_inflight_bytes = args.max_inflight_bytes;
    config
        .validate()
        .map_err(|e| ConfigError::new(consumer_setting(&e.setting), e.reason))?;
    Ok(config)
}

/// The environment variable behind a consumer library setting, for error messages.
fn consumer_setting(field: &str) -> String {
    match field {
        "group_id" => "KAFKA_GROUP_ID",
        "topic" => "KAFKA_TOPIC",
        "batch_max_records" => "CONSUMER_BATCH_MAX_RECORDS",
        "batch_max_bytes" => "CONSUMER_BATCH_MAX_BYTES",
        "linger" => "CONSUMER_LINGER",
        "statement_timeout" => "CONSUMER_STATEMENT_TIMEOUT",
        "group_instance_id" => "KAFKA_GROUP_INSTANCE_ID",
        "session_timeout" => "KAFKA_SESSION_TIMEOUT",
        "queued_max_kbytes_per_partition" => "CONSUMER_QUEUE_KBYTES_PER_PARTITION",
        "max_inflight_bytes" => "CONSUMER_MAX_INFLIGHT_BYTES",
        other => other,
    }
    .to_owned()
}

/// Validates the webhook-mode settings and returns the secret token.
fn webhook_settings(args: &ProducerArgs, env: &dyn Env) -> Result<SecretString, ConfigError> {
    args.webhook_listen
        .parse::<std::net::SocketAddr>()
        .map_err(|_| ConfigError::new("WEBHOOK_LISTEN", "not an ip:port address"))?;
    if let Some(public) = &args.webhook_public_url {
        let url = url::Url::parse(public)
            .map_err(|e| ConfigError::new("WEBHOOK_PUBLIC_URL", format!("not a URL ({e})")))?;
        if let Ok(api_url) = url::Url::parse(&args.telegram_api_url) {
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

fn config_ok(command: &str) -> anyhow::Result<()> {
    println!("configuration OK for `tgingest {command}`");
    Ok(())
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
