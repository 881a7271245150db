//! `tgingest consumer`'s arguments and environment → [`consumer::ConsumerConfig`]: the group,
//! batch bounds, timeouts, assignment and memory bounds.
//!
//! Guarantees: every setting the consumer library can refuse ([`consumer::config::Setting`]) has
//! an operator's name here (a `match` without a fallback: a new setting cannot reach an operator
//! unnamed).

use std::time::Duration;

use clap::Args;

use super::admin::AdminArgs;
use super::check::CheckConfig;
use super::database::DatabaseArgs;
use super::env::Env;
use super::error::ConfigError;
use super::kafka::{KafkaArgs, validate_kafka_client};
use ::consumer::config::Setting;

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
    /// Whether raw payloads are also stored as `jsonb` (`raw_updates.payload`). `false` keeps the
    /// exact bytes only (PostgreSQL spends less CPU and storage per update); queries then read
    /// `raw_payload_jsonb(payload_bytes)`, which is NULL where `jsonb` refuses the payload.
    #[arg(long, env = "CONSUMER_STORE_JSONB", default_value_t = true, action = clap::ArgAction::Set)]
    pub store_jsonb: bool,
    /// Partition assignment strategy of the group.
    #[arg(
        long,
        env = "KAFKA_ASSIGNMENT_STRATEGY",
        value_enum,
        default_value = "cooperative-sticky"
    )]
    pub assignment_strategy: Assignment,
    /// Static group membership: an id stable across restarts of one member (a StatefulSet
    /// pod's name, not a Deployment's, which changes every rollout), so a restart within the
    /// session timeout keeps the partitions without a rebalance.
    #[arg(long, env = "KAFKA_GROUP_INSTANCE_ID")]
    pub group_instance_id: Option<String>,
    /// librdkafka `session.timeout.ms`: how long a silent member keeps its partitions.
    #[arg(long, env = "KAFKA_SESSION_TIMEOUT", default_value = "45s", value_parser = humantime::parse_duration)]
    pub session_timeout: Duration,
    /// Prefetch buffer per assigned partition, in KiB (librdkafka `queued.max.messages.kbytes`;
    /// with one queue per partition the bound is partitions × this).
    #[arg(long, env = "CONSUMER_QUEUE_KBYTES_PER_PARTITION", default_value_t = ::consumer::config::DEFAULT_QUEUE_KBYTES_PER_PARTITION)]
    pub queue_kbytes_per_partition: u32,
    /// Record bytes (payload + key) all partition workers of the process may hold at once,
    /// buffered or in batches being written; bounds memory whatever the partition count.
    #[arg(long, env = "CONSUMER_MAX_INFLIGHT_BYTES", default_value_t = ::consumer::config::DEFAULT_MAX_INFLIGHT_BYTES)]
    pub max_inflight_bytes: usize,
    /// How often the per-partition gauges (lag, record age, last commit, halted) are computed
    /// from the broker's statistics; a partition this process no longer owns loses its series
    /// after three intervals.
    #[arg(long, env = "CONSUMER_STATS_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub stats_interval: Duration,
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

impl ConsumerArgs {
    /// The consumer library's configuration from the command line and environment.
    pub fn resolve(&self, env: &dyn Env) -> Result<::consumer::ConsumerConfig, ConfigError> {
        let kafka = self.kafka.resolve(env)?;
        validate_kafka_client(&kafka)?;
        let mut config = ::consumer::ConsumerConfig::new(&self.group_id, kafka.topic, kafka.client);
        config.batch_max_records = self.batch_max_records;
        config.batch_max_bytes = self.batch_max_bytes;
        config.linger = self.linger;
        config.start_policy = match self.start {
            StartFrom::Earliest => ::consumer::StartPolicy::Earliest,
            StartFrom::Latest => ::consumer::StartPolicy::Latest,
        };
        config.statement_timeout = self.statement_timeout;
        config.store_jsonb = self.store_jsonb;
        config.assignment_strategy = match self.assignment_strategy {
            Assignment::Range => ::consumer::AssignmentStrategy::Range,
            Assignment::Roundrobin => ::consumer::AssignmentStrategy::RoundRobin,
            Assignment::CooperativeSticky => ::consumer::AssignmentStrategy::CooperativeSticky,
        };
        config.group_instance_id = self.group_instance_id.clone();
        config.session_timeout = self.session_timeout;
        config.queued_max_kbytes_per_partition = self.queue_kbytes_per_partition;
        config.max_inflight_bytes = self.max_inflight_bytes;
        if self.stats_interval < Duration::from_millis(100) {
            return Err(ConfigError::new(
                "CONSUMER_STATS_INTERVAL",
                "must be at least 100ms",
            ));
        }
        config.stats_interval = self.stats_interval;
        config.validate()?;
        Ok(config)
    }
}

impl From<::consumer::ConfigError> for ConfigError {
    fn from(e: ::consumer::ConfigError) -> Self {
        ConfigError::new(operator_name(e.setting), e.reason)
    }
}

/// How an operator sets a consumer library setting: its environment variable; a librdkafka
/// property (set through KAFKA_CLIENT_OPTIONS) by its own name; a setting the command line does
/// not expose by the library's name.
fn operator_name(setting: Setting) -> &'static str {
    match setting {
        Setting::GroupId => "KAFKA_GROUP_ID",
        Setting::Topic => "KAFKA_TOPIC",
        Setting::BatchMaxRecords => "CONSUMER_BATCH_MAX_RECORDS",
        Setting::BatchMaxBytes => "CONSUMER_BATCH_MAX_BYTES",
        Setting::MaxInflightBytes => "CONSUMER_MAX_INFLIGHT_BYTES",
        Setting::StatementTimeout => "CONSUMER_STATEMENT_TIMEOUT",
        Setting::ClientProperty(property) => property,
        Setting::Retry => setting.as_str(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_setting_the_consumer_library_refuses_is_named_as_the_operator_sets_it() {
        let mut client = rdkafka::ClientConfig::new();
        client.set("bootstrap.servers", "127.0.0.1:9092");
        let mut config = ::consumer::ConsumerConfig::new("g", "t", client);
        config.statement_timeout = Duration::from_millis(1);
        let err = ConfigError::from(config.validate().unwrap_err());
        assert_eq!(err.setting, "CONSUMER_STATEMENT_TIMEOUT");
        config.statement_timeout = Duration::from_secs(1);
        config.client.set("enable.auto.commit", "true");
        let err = ConfigError::from(config.validate().unwrap_err());
        assert_eq!(err.setting, "enable.auto.commit");
    }
}
