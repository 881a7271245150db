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
//!
//! Parsing guarantees ([`command`], [`parse`]): `--help` names the environment variable of each
//! option but never shows its value (a variable such as `KAFKA_CLIENT_OPTIONS` may hold a
//! secret); a value that clap cannot parse and that came from the environment is reported as a
//! configuration error naming the variable, on one line, with status 2; the options of a
//! subcommand (`--check-config`, the Kafka and database options) are accepted after its own
//! subcommands too (`tgingest dlq list --check-config`).

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

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
    /// Remove rows older than per-table policies; records behind the horizon are never written
    /// again (owner credentials).
    Retention(RetentionArgs),
    /// Erase a user's or a chat's data from every table, for good (owner credentials).
    Forget(ForgetArgs),
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

#[derive(Debug, Args)]
pub struct RetentionArgs {
    #[command(flatten)]
    pub check: CheckConfig,
    #[command(flatten)]
    pub retention: crate::retention::RetentionOptions,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

#[derive(Debug, Args)]
pub struct ForgetArgs {
    #[command(flatten)]
    pub check: CheckConfig,
    #[command(flatten)]
    pub forget: crate::forget::ForgetOptions,
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

/// The command line's definition as the binary parses it: [`Cli`] with every environment value
/// hidden from `--help`.
pub fn command() -> clap::Command {
    fn hide_env_values(command: clap::Command) -> clap::Command {
        command
            .mut_args(|arg| arg.hide_env_values(true))
            .mut_subcommands(hide_env_values)
    }
    hide_env_values(Cli::command())
}

/// Parses `args` (the program name first) with [`command`]. A value clap rejects that came from
/// the environment is returned as the [`ConfigError`] naming its variable; any other problem
/// (and `--help`, `--version`) as clap's error, which prints and exits itself.
pub fn parse(args: Vec<OsString>, env: &dyn Env) -> Result<Cli, Result<ConfigError, clap::Error>> {
    let matches = match command().try_get_matches_from(&args) {
        Ok(matches) => matches,
        Err(error) => return Err(env_value_error(&error, &args, env).ok_or(error)),
    };
    Cli::from_arg_matches(&matches).map_err(Err)
}

/// The variable named by an invalid value clap found in the environment, with why.
fn env_value_error(error: &clap::Error, args: &[OsString], env: &dyn Env) -> Option<ConfigError> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        error.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return None;
    }
    let Some(ContextValue::String(arg)) = error.get(ContextKind::InvalidArg) else {
        return None;
    };
    let Some(ContextValue::String(value)) = error.get(ContextKind::InvalidValue) else {
        return None;
    };
    let long = arg.split_whitespace().next()?.strip_prefix("--")?;
    // Given on the command line: clap's own message names the flag the operator typed.
    let flag = format!("--{long}");
    let typed = args.iter().skip(1).any(|a| {
        a.to_str()
            .is_some_and(|a| a == flag || a.starts_with(&format!("{flag}=")))
    });
    if typed {
        return None;
    }
    let variable = env_of(&command(), long)?;
    if env.var(&variable).as_deref() != Some(value.as_str()) {
        return None;
    }
    let reason = match (error.kind(), error.get(ContextKind::ValidValue)) {
        (ErrorKind::InvalidValue, Some(ContextValue::Strings(valid))) => {
            format!("possible values: {}", valid.join(", "))
        }
        _ => std::error::Error::source(error)
            .map_or_else(|| "invalid value".to_owned(), |e| e.to_string()),
    };
    Some(ConfigError::new(variable, format!("{value:?}: {reason}")))
}

/// The environment variable of the option `--long`, wherever in the command tree it is defined.
fn env_of(command: &clap::Command, long: &str) -> Option<String> {
    command
        .get_arguments()
        .find(|a| a.get_long() == Some(long))
        .and_then(|a| a.get_env())
        .and_then(|e| e.to_str())
        .map(str::to_owned)
        .or_else(|| command.get_subcommands().find_map(|sub| env_of(sub, long)))
}

/// Parses the command line, runs the subcommand and maps the outcome to an exit status:
/// 0 success, 1 runtime failure, 2 configuration error.
pub fn main() -> ExitCode {
    let cli = match parse(std::env::args_os().collect(), &ProcessEnv) {
        Ok(cli) => cli,
        Err(Ok(config)) => {
            eprintln!("error: {config}");
            return ExitCode::from(2);
        }
        Err(Err(clap)) => clap.exit(),
    };
    // The demo's live progress line is its output; its logs show only problems unless asked.
    let default_filter = match cli.command {
        Command::Demo(_) => "warn",
        _ => "info",
    };
    let traces = match telemetry::init_logging(cli.log_format, default_filter) {
        Ok(traces) => traces,
        Err(config) => {
            eprintln!("error: {config}");
            return ExitCode::from(2);
        }
    };
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
    let outcome = runtime.block_on(run(cli.command, &ProcessEnv));
    traces.shutdown();
    match outcome {
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
            crate::service::run_service(
                "producer",
                admin,
                args.shutdown_grace,
                telemetry::NO_PARTITION_SERIES_IDLE,
                |stop, ready| producer::run(config, stop, std::sync::Arc::new(ready)),
            )
            .await?;
        }
        Command::Consumer(args) => {
            let config = args.resolve(env)?;
            let database = args.database.resolve(env, None, "tgingest-consumer")?;
            let admin = args.admin.resolve()?;
            if args.check.check_config {
                return config_ok("consumer");
            }
            let partition_series_idle = telemetry::partition_series_idle(config.stats_interval);
            crate::service::run_service(
                "consumer",
                admin,
                args.shutdown_grace,
                partition_series_idle,
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
        Command::Retention(args) => {
            let database = args.database.resolve(env, None, "tgingest-retention")?;
            args.retention.check()?;
            if args.check.check_config {
                return config_ok("retention");
            }
            crate::retention::run_command(&args.retention, &database).await?;
        }
        Command::Forget(args) => {
            let database = args.database.resolve(env, None, "tgingest-forget")?;
            args.forget.check()?;
            if args.check.check_config {
                return config_ok("forget");
            }
            crate::forget::run_command(&args.forget, &database).await?;
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
        command().debug_assert();
    }

    fn args(line: &str) -> Vec<OsString> {
        line.split_whitespace().map(OsString::from).collect()
    }

    fn env(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn an_invalid_flag_keeps_clap_s_message() {
        let line = args("tgingest consumer --batch-max-records many");
        let error = command().try_get_matches_from(&line).unwrap_err();
        let e = env(&[("CONSUMER_BATCH_MAX_RECORDS", "many")]);
        assert!(env_value_error(&error, &line, &e).is_none());
    }

    #[test]
    fn help_hides_every_environment_value() {
        fn check(command: &clap::Command) {
            for arg in command.get_arguments() {
                assert!(
                    arg.get_env().is_none() || arg.is_hide_env_values_set(),
                    "{} --{:?} shows its environment value",
                    command.get_name(),
                    arg.get_long()
                );
            }
            command.get_subcommands().for_each(check);
        }
        check(&command());
    }

    #[test]
    fn subcommand_options_are_accepted_after_a_nested_subcommand() {
        let cli = parse(
            args("tgingest dlq list --check-config --kafka-brokers k:9092 --limit 5"),
            &env(&[]),
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        let Command::Dlq(dlq) = cli.command else {
            panic!("not dlq")
        };
        assert!(dlq.check.check_config);
        assert_eq!(dlq.kafka.kafka_brokers.as_deref(), Some("k:9092"));
    }
}
