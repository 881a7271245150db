//! `tgingest demo`'s arguments and environment → [`DemoConfig`]: the simulated traffic, real bot
//! tokens if any, and where Kafka is (the operator's brokers, or the embedded in-memory broker).
//!
//! Guarantees: every setting the demo reads is validated here, before the demo touches the
//! database or starts a broker.

use std::time::Duration;

use secrecy::SecretString;

use super::check::CheckConfig;
use super::database::DatabaseArgs;
use super::env::{Env, secret};
use super::error::ConfigError;
use super::kafka::{EmbeddedKafka, KafkaArgs, KafkaConfig};
use super::producer::bot_tokens;

/// The database the demo uses when DATABASE_URL is not set: a local PostgreSQL, trust auth.
pub const DEMO_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/tgingest_demo";

/// `tgingest demo` options.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub check: CheckConfig,
    /// How long to generate traffic; the demo then drains and prints a summary. ctrl-c ends it
    /// early the same way.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Simulated updates per second.
    #[arg(long, default_value_t = 200)]
    pub rate: u32,
    /// Simulated group chats (the first is a forum); a channel and private chats come on top.
    #[arg(long, default_value_t = 4)]
    pub chats: usize,
    /// Simulated users.
    #[arg(long, default_value_t = 60)]
    pub users: usize,
    /// Seed of the simulated traffic: the same seed sends the same updates.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Partitions of the embedded broker's topic.
    #[arg(long, default_value_t = 12)]
    pub partitions: i32,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// What the demo runs with.
#[derive(Debug)]
pub struct DemoConfig {
    pub duration: Duration,
    /// Simulated updates per second, at least 1.
    pub rate: u32,
    pub chats: usize,
    pub users: usize,
    pub seed: u64,
    /// Partitions of the embedded broker's topic.
    pub partitions: i32,
    /// Real bots' tokens (TELEGRAM_BOT_TOKENS); `None`: the simulated Bot API.
    pub tokens: Option<Vec<SecretString>>,
    pub kafka: DemoKafka,
}

/// Where the demo's Kafka is.
#[derive(Debug)]
pub enum DemoKafka {
    /// KAFKA_BROKERS: the operator's cluster (the topic must exist).
    External(KafkaConfig),
    /// The embedded in-memory broker, whose address is known once it runs.
    Embedded(EmbeddedKafka),
}

impl DemoArgs {
    /// The demo's settings besides the database.
    pub fn resolve(&self, env: &dyn Env) -> Result<DemoConfig, ConfigError> {
        let tokens_given = secret(env, "TELEGRAM_BOT_TOKENS")?.is_some();
        if self.rate == 0 {
            return Err(ConfigError::new("--rate", "must be at least 1"));
        }
        let kafka = match self.kafka.kafka_brokers {
            Some(_) => DemoKafka::External(self.kafka.resolve(env)?),
            None => DemoKafka::Embedded(self.kafka.resolve_for_embedded(env)?),
        };
        let tokens = if tokens_given {
            Some(bot_tokens(env)?)
        } else {
            None
        };
        Ok(DemoConfig {
            duration: self.duration,
            rate: self.rate,
            chats: self.chats,
            users: self.users,
            seed: self.seed,
            partitions: self.partitions,
            tokens,
            kafka,
        })
    }
}
