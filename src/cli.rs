//! The command line: one binary, one subcommand per role.
//!
//! Each subcommand accepts `--check-config`, which validates its whole configuration (flags,
//! environment, secret files, Kafka properties) without touching the network and exits 0, or exits
//! 2 with one line naming the bad setting. Deployment manifests are tested by running exactly their
//! arguments and environment through it.
//!
//! This module parses and dispatches only: arguments are resolved into configuration by
//! [`crate::config`], and the exit status follows the type of the failure ([`CommandError`]):
//! 0 success, 1 a run-time failure, 2 a [`ConfigError`].

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{
    CheckConfig, ConfigError, ConsumerArgs, DEMO_DATABASE_URL, DatabaseArgs, DemoArgs, Env,
    KafkaArgs, ProcessEnv, ProducerArgs, validate_kafka_client,
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

#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub check: CheckConfig,
    /// An existing role the consumer logs in as: migrate grants it exactly what the consumer
    /// needs (SELECT, INSERT, UPDATE on the schema's tables; no DELETE, DDL or TEMP), now and
    /// for tables later migrations add.
    #[arg(long = "grant-to", env = "CONSUMER_ROLE")]
    pub grant_to: Option<String>,
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

/// How a subcommand failed; the variant decides the exit status.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// A setting is invalid: exit status 2, one line naming the setting.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The command failed while running: exit status 1.
    #[error("{0:#}")]
    Failed(#[from] anyhow::Error),
}

impl CommandError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CommandError::Config(_) => ExitCode::from(2),
            CommandError::Failed(_) => ExitCode::FAILURE,
        }
    }
}

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
            // A run-time failure prints its context chain on one line.
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

/// Runs one subcommand: its configuration is resolved first (a [`CommandError::Config`]), then
/// it runs (a [`CommandError::Failed`]).
pub async fn run(command: Command, env: &dyn Env) -> Result<(), CommandError> {
    match command {
        Command::Migrate(args) => {
            let database = args.database.resolve(env, None, "tgingest-migrate")?;
            let grant_to = match args.grant_to.as_deref().map(str::trim) {
                Some("") => {
                    return Err(ConfigError::new("CONSUMER_ROLE", "must name a role").into());
                }
                other => other,
            };
            if args.check.check_config {
                return config_ok("migrate");
            }
            crate::db::run_migrate_command(&database, grant_to).await?;
        }
        Command::Producer(args) => {
            let config = args.resolve(env)?;
            let admin = args.admin.resolve()?;
            if args.check.check_config {
                return config_ok("producer");
            }
            crate::service::run_service("producer", admin, args.shutdown_grace, |stop, ready| {
                producer::run(config, stop, std::sync::Arc::new(ready))
            })
            .await?;
        }
        Command::Consumer(args) => {
            let config = args.resolve(env)?;
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
            .await?;
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
            // `--check-config` works without a target; a rewind needs exactly one.
            if !args.replay.reprocess_from_db {
                args.replay.target(crate::replay::now_ms())?;
            }
            crate::replay::run_command(&args.group_id, &args.replay, &args.kafka, env, &database)
                .await?;
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
            crate::dlq::run_command(action, &args.kafka, env, &database).await?;
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
            let config = args.resolve(env)?;
            crate::demo::run(config, database).await?;
        }
    }
    Ok(())
}

fn config_ok(command: &str) -> Result<(), CommandError> {
    println!("configuration OK for `tgingest {command}`");
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
