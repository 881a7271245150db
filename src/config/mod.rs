//! Configuration: every subcommand's arguments and environment resolved into the validated
//! settings the libraries and commands take. One submodule per thing configured: PostgreSQL
//! (`database`), Kafka (`kafka`), the admin server (`admin`), the producer (`producer`),
//! the consumer (`consumer`), the demo (`demo`) and the producers `status` asks (`status`).
//!
//! Every setting comes from a flag or an environment variable (clap `env`). Secrets — bot tokens,
//! the database URL, Kafka SASL and key passwords — come only from the environment or from a file
//! named by `<NAME>_FILE` (Docker and Kubernetes secrets), never from argv, and are held in
//! `SecretString` so they never print. Validation happens before any connection is opened, so
//! `--check-config` needs no network, and a bad value yields one [`ConfigError`] line naming the
//! setting as the operator sets it (its environment variable or flag). The libraries' own
//! configuration errors name their settings by type; `producer` and `consumer` translate each
//! into the operator's name, totally, so a setting cannot reach an operator unnamed.
//!
//! This file only declares and re-exports: the submodules import one another (never this
//! module), and nothing here imports the command line or the commands.

mod admin;
mod check;
mod consumer;
mod database;
mod demo;
mod env;
mod error;
mod kafka;
mod producer;
mod status;

pub use admin::AdminArgs;
pub use check::CheckConfig;
pub use consumer::{Assignment, ConsumerArgs, StartFrom};
pub use database::{DatabaseArgs, DatabaseConfig, parse_database_url};
pub use demo::{DEMO_DATABASE_URL, DemoArgs, DemoConfig, DemoKafka};
pub use env::{Env, ProcessEnv, secret};
pub use error::ConfigError;
pub use kafka::{EmbeddedKafka, KafkaArgs, KafkaConfig, validate_kafka_client};
pub use producer::{ProducerArgs, ProducerMode, bot_tokens};
pub use status::ProducerAdminArgs;
