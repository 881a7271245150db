//! What a consumer process is told by its caller: group, topic, Kafka client settings, batch
//! bounds, timeouts and retry bounds.
//!
//! Guarantees: [`ConsumerConfig::validate`] rejects settings that would break the protocol
//! (auto commit, an offset reset other than `error`, zero-sized batches) with one line naming the
//! setting; [`ConsumerConfig::kafka_client_config`] always forces the settings the exactly-once
//! protocol depends on, whatever the caller passed.
//!
//! Memory (per process, `P` = partitions assigned to it, `K` = `queued_max_kbytes_per_partition`,
//! `B` = `max_inflight_bytes`). Measured by `tgingest-bench memory` (BENCHMARKS.md) with
//! PostgreSQL stalled under a 620k-record backlog on 48 partitions:
//! peak ≈ 17 MiB (idle) + `P × (2 × K KiB + 0.6 MiB)` + `4.5 × B`. The `P` term is librdkafka's
//! prefetch (records are decompressed into buffers about twice their size); the `B` term is what
//! the workers hold, decoded and normalised, at about 4.5 × the record bytes. The defaults
//! (1 MiB, 8 MiB) peaked at 172–177 MiB; the old defaults (16 MiB, no process budget) at 793 MiB.

use std::time::Duration;

use rdkafka::ClientConfig;

/// Default prefetch per assigned partition, KiB (librdkafka `queued.max.messages.kbytes`).
pub const DEFAULT_QUEUE_KBYTES_PER_PARTITION: u32 = 1024;

/// Default process-wide budget of record bytes held by the workers.
pub const DEFAULT_MAX_INFLIGHT_BYTES: usize = 8 * 1024 * 1024;

/// librdkafka `fetch.wait.max.ms` unless the caller sets it (see
/// [`ConsumerConfig::kafka_client_config`]).
pub const DEFAULT_FETCH_WAIT_MS: u32 = 100;

/// librdkafka `fetch.queue.backoff.ms` unless the caller sets it.
pub const DEFAULT_FETCH_QUEUE_BACKOFF_MS: u32 = 10;

/// The longest a pooled PostgreSQL connection lives (sqlx `max_lifetime`; sqlx's default is 30
/// min). After a failover, a connection still reaching the old node — one that does not fail
/// loudly enough to be closed (25006, 57P0x close it at once) — is replaced within this.
pub const POOL_MAX_LIFETIME: Duration = Duration::from_secs(300);

/// Where a partition with no stored offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPolicy {
    /// The log start (the low watermark): nothing already in the topic is skipped.
    Earliest,
    /// The log end (the high watermark): only records produced from now on.
    Latest,
}

/// The group protocol's partition assignment strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssignmentStrategy {
    /// Eager `range` (stop-the-world rebalances).
    Range,
    /// Eager `roundrobin`.
    RoundRobin,
    /// `cooperative-sticky`: only moved partitions are revoked.
    CooperativeSticky,
}

impl AssignmentStrategy {
    /// The librdkafka `partition.assignment.strategy` value.
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            AssignmentStrategy::Range => "range",
            AssignmentStrategy::RoundRobin => "roundrobin",
            AssignmentStrategy::CooperativeSticky => "cooperative-sticky",
        }
    }
}

/// Capped exponential backoff for transient failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first wait.
    pub initial: Duration,
    /// The longest wait.
    pub max: Duration,
}

impl RetryPolicy {
    /// The longest wait before retry number `attempt` (0-based): `initial × 2^attempt`, capped
    /// at `max`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The wait before retry number `attempt`: uniformly random between half the
    /// [`RetryPolicy::ceiling`] and the ceiling, so partitions that failed together (40001,
    /// 40P01, an outage) do not retry in lockstep.
    pub fn delay(&self, attempt: u32) -> Duration {
        use rand::Rng as _;
        let ceiling = self.ceiling(attempt);
        let half = ceiling / 2;
        let spread = u64::try_from((ceiling - half).as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(rand::rng().random_range(0..=spread))
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
        }
    }
}

/// Everything [`crate::run`] needs besides the database pool and the shutdown token.
#[derive(Clone)]
pub struct ConsumerConfig {
    /// Kafka consumer group, also the `group_id` of `consumer_offsets` rows.
    pub group_id: String,
    /// The topic to consume (`tg.updates` by default in the binary).
    pub topic: String,
    /// Bootstrap servers and security settings, from the caller. Protocol settings are overridden.
    pub client: ClientConfig,
    /// A batch holds at most this many records…
    pub batch_max_records: usize,
    /// …and at most this many payload bytes (a single larger record still forms a batch).
    pub batch_max_bytes: usize,
    /// How long a worker waits for a batch to fill once it holds a record.
    pub linger: Duration,
    /// Where a partition without a stored offset starts.
    pub start_policy: StartPolicy,
    /// `SET LOCAL statement_timeout` of every batch transaction.
    pub statement_timeout: Duration,
    /// The processor version written to rows (injectable so tests can model an upgrade).
    pub processor_version: i32,
    /// Whether raw payloads also get their `jsonb` copy (`raw_updates.payload`) where PostgreSQL
    /// accepts them. Without it `payload` stays NULL and queries read
    /// `raw_payload_jsonb(payload_bytes)` (`migrations/0008_raw_payload_jsonb.sql`) instead.
    pub store_jsonb: bool,
    /// Backoff for transient database and broker errors.
    pub retry: RetryPolicy,
    /// The group protocol's assignment strategy.
    pub assignment_strategy: AssignmentStrategy,
    /// Static membership (`group.instance.id`), e.g. the pod name of a StatefulSet.
    pub group_instance_id: Option<String>,
    /// librdkafka `session.timeout.ms`.
    pub session_timeout: Duration,
    /// librdkafka `queued.max.messages.kbytes` (applies per partition with split queues).
    pub queued_max_kbytes_per_partition: u32,
    /// Record bytes (payload + key) all partition workers of the process may hold outside
    /// librdkafka together: buffered, normalised or being written. Bounds memory whatever the
    /// number of partitions assigned.
    pub max_inflight_bytes: usize,
    /// How often an idle worker re-reads its offsets row to notice a replay.
    pub idle_reread_interval: Duration,
    /// How long a revoke waits for a worker to finish its in-flight batch before moving on (the
    /// database fences a late writer either way).
    pub revoke_timeout: Duration,
    /// How often partition lag is computed from broker statistics.
    pub stats_interval: Duration,
}

impl std::fmt::Debug for ConsumerConfig {
    // ClientConfig's Debug prints every property, SASL passwords included.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerConfig")
            .field("group_id", &self.group_id)
            .field("topic", &self.topic)
            .field(
                "bootstrap.servers",
                &self.client.get("bootstrap.servers").unwrap_or(""),
            )
            .field("batch_max_records", &self.batch_max_records)
            .field("batch_max_bytes", &self.batch_max_bytes)
            .field("linger", &self.linger)
            .field("start_policy", &self.start_policy)
            .field("statement_timeout", &self.statement_timeout)
            .field("processor_version", &self.processor_version)
            .field("store_jsonb", &self.store_jsonb)
            .field("retry", &self.retry)
            .field("assignment_strategy", &self.assignment_strategy)
            .field("group_instance_id", &self.group_instance_id)
            .field("session_timeout", &self.session_timeout)
            .field(
                "queued_max_kbytes_per_partition",
                &self.queued_max_kbytes_per_partition,
            )
            .field("max_inflight_bytes", &self.max_inflight_bytes)
            .finish_non_exhaustive()
    }
}

impl ConsumerConfig {
    /// A configuration with production defaults for `group_id`, `topic` and `client`.
    pub fn new(
        group_id: impl Into<String>,
        topic: impl Into<String>,
        client: ClientConfig,
    ) -> Self {
        Self {
            group_id: group_id.into(),
            topic: topic.into(),
            client,
            batch_max_records: 1000,
            batch_max_bytes: 4 * 1024 * 1024,
            linger: Duration::from_millis(50),
            start_policy: StartPolicy::Earliest,
            statement_timeout: Duration::from_secs(30),
            processor_version: processor::PROCESSOR_VERSION,
            store_jsonb: true,
            retry: RetryPolicy::default(),
            assignment_strategy: AssignmentStrategy::CooperativeSticky,
            group_instance_id: None,
            session_timeout: Duration::from_secs(45),
            queued_max_kbytes_per_partition: DEFAULT_QUEUE_KBYTES_PER_PARTITION,
            max_inflight_bytes: DEFAULT_MAX_INFLIGHT_BYTES,
            idle_reread_interval: Duration::from_secs(1),
            revoke_timeout: Duration::from_secs(60),
            stats_interval: Duration::from_secs(5),
        }
    }

    /// The client-side deadline of one batch transaction, BEGIN to COMMIT: twice the statement
    /// timeout. A transaction still running then is abandoned (its connection dropped, its
    /// backend terminated, its outcome resolved), so a silently dropped connection cannot hang
    /// a worker.
    pub fn transaction_deadline(&self) -> Duration {
        crate::transaction::deadline(self.statement_timeout)
    }

    /// Checks the settings the protocol depends on; the error names the offending setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.group_id.trim().is_empty() {
            return Err(ConfigError::new(Setting::GroupId, "must not be empty"));
        }
        if self.topic.trim().is_empty() {
            return Err(ConfigError::new(Setting::Topic, "must not be empty"));
        }
        if self
            .client
            .get("bootstrap.servers")
            .is_none_or(str::is_empty)
        {
            return Err(ConfigError::new(
                Setting::ClientProperty("bootstrap.servers"),
                "must be set",
            ));
        }
        if self.batch_max_records == 0 {
            return Err(ConfigError::new(
                Setting::BatchMaxRecords,
                "must be at least 1",
            ));
        }
        if self.batch_max_bytes == 0 {
            return Err(ConfigError::new(
                Setting::BatchMaxBytes,
                "must be at least 1",
            ));
        }
        if self.max_inflight_bytes == 0 {
            return Err(ConfigError::new(
                Setting::MaxInflightBytes,
                "must be at least 1",
            ));
        }
        if self.statement_timeout < Duration::from_millis(100) {
            return Err(ConfigError::new(
                Setting::StatementTimeout,
                "must be at least 100ms",
            ));
        }
        if self.retry.initial.is_zero() || self.retry.max < self.retry.initial {
            return Err(ConfigError::new(
                Setting::Retry,
                "initial must be positive and max at least initial",
            ));
        }
        for (key, required) in [
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "error"),
            ("allow.auto.create.topics", "false"),
        ] {
            if let Some(value) = self.client.get(key)
                && value != required
            {
                return Err(ConfigError::new(
                    Setting::ClientProperty(key),
                    format!(
                        "must be {required} (the database is the offset store of record), not {value}"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The librdkafka configuration of the group consumer: the caller's client settings plus the
    /// settings the protocol requires.
    pub fn kafka_client_config(&self) -> ClientConfig {
        let mut config = self.client.clone();
        config
            .set("group.id", &self.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "error")
            .set("allow.auto.create.topics", "false")
            .set("enable.partition.eof", "false")
            .set(
                "partition.assignment.strategy",
                self.assignment_strategy.as_librdkafka(),
            )
            .set(
                "session.timeout.ms",
                self.session_timeout.as_millis().to_string(),
            )
            .set(
                "queued.max.messages.kbytes",
                self.queued_max_kbytes_per_partition.to_string(),
            )
            .set(
                "statistics.interval.ms",
                self.stats_interval.as_millis().to_string(),
            );
        if let Some(instance) = &self.group_instance_id {
            config.set("group.instance.id", instance);
        }
        // Some brokers hold a fetch for its whole wait even when data arrives (librdkafka's mock
        // cluster; Tansu 0.6 sleeps after each pass over the log), which adds up to the wait to
        // every record's latency. 100 ms (librdkafka: 500) bounds that; against Apache Kafka it
        // only means more frequent empty fetches while idle. The caller's value wins.
        if config.get("fetch.wait.max.ms").is_none() {
            config.set("fetch.wait.max.ms", DEFAULT_FETCH_WAIT_MS.to_string());
        }
        // A partition whose prefetch queue is full is not fetched again for this long
        // (librdkafka: 1000 ms). With the small per-partition queues that bound memory, a
        // worker drains its queue well within that: one partition fell from 13k to 4k
        // records/s at 1 MiB queues until this was lowered.
        if config.get("fetch.queue.backoff.ms").is_none() {
            config.set(
                "fetch.queue.backoff.ms",
                DEFAULT_FETCH_QUEUE_BACKOFF_MS.to_string(),
            );
        }
        config
    }
}

/// A setting [`ConsumerConfig::validate`] can refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    /// [`ConsumerConfig::group_id`].
    GroupId,
    /// [`ConsumerConfig::topic`].
    Topic,
    /// [`ConsumerConfig::batch_max_records`].
    BatchMaxRecords,
    /// [`ConsumerConfig::batch_max_bytes`].
    BatchMaxBytes,
    /// [`ConsumerConfig::max_inflight_bytes`].
    MaxInflightBytes,
    /// [`ConsumerConfig::statement_timeout`].
    StatementTimeout,
    /// [`ConsumerConfig::retry`].
    Retry,
    /// A librdkafka property of [`ConsumerConfig::client`], by its librdkafka name.
    ClientProperty(&'static str),
}

impl Setting {
    /// The setting's name in this library's configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Setting::GroupId => "group_id",
            Setting::Topic => "topic",
            Setting::BatchMaxRecords => "batch_max_records",
            Setting::BatchMaxBytes => "batch_max_bytes",
            Setting::MaxInflightBytes => "max_inflight_bytes",
            Setting::StatementTimeout => "statement_timeout",
            Setting::Retry => "retry",
            Setting::ClientProperty(property) => property,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ConsumerConfig {
        let mut client = ClientConfig::new();
        client.set("bootstrap.servers", "127.0.0.1:9092");
        ConsumerConfig::new("g", "t", client)
    }

    #[test]
    fn the_defaults_are_valid() {
        assert_eq!(config().validate(), Ok(()));
    }

    #[test]
    fn auto_commit_from_the_caller_is_refused_by_name() {
        let mut config = config();
        config.client.set("enable.auto.commit", "true");
        let err = config.validate().expect_err("auto commit must be refused");
        assert_eq!(err.setting, Setting::ClientProperty("enable.auto.commit"));
    }

    #[test]
    fn the_client_config_forces_the_protocol_settings() {
        let mut config = config();
        config.client.set("auto.offset.reset", "earliest");
        let client = config.kafka_client_config();
        assert_eq!(client.get("auto.offset.reset"), Some("error"));
        assert_eq!(client.get("enable.auto.commit"), Some("false"));
        assert_eq!(client.get("group.id"), Some("g"));
        assert_eq!(
            client.get("partition.assignment.strategy"),
            Some("cooperative-sticky")
        );
    }

    #[test]
    fn the_fetch_waits_have_low_defaults_that_the_caller_can_override() {
        let mut config = config();
        assert_eq!(
            config.kafka_client_config().get("fetch.wait.max.ms"),
            Some("100")
        );
        assert_eq!(
            config.kafka_client_config().get("fetch.queue.backoff.ms"),
            Some("10")
        );
        config.client.set("fetch.wait.max.ms", "500");
        config.client.set("fetch.queue.backoff.ms", "1000");
        assert_eq!(
            config.kafka_client_config().get("fetch.wait.max.ms"),
            Some("500")
        );
        assert_eq!(
            config.kafka_client_config().get("fetch.queue.backoff.ms"),
            Some("1000")
        );
    }

    #[test]
    fn a_zero_inflight_budget_is_refused_by_name() {
        let mut config = config();
        config.max_inflight_bytes = 0;
        let err = config
            .validate()
            .expect_err("a zero budget must be refused");
        assert_eq!(err.setting, Setting::MaxInflightBytes);
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let retry = RetryPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        assert_eq!(retry.ceiling(0), Duration::from_millis(100));
        assert_eq!(retry.ceiling(1), Duration::from_millis(200));
        assert_eq!(retry.ceiling(3), Duration::from_millis(800));
        assert_eq!(retry.ceiling(4), Duration::from_secs(1));
        assert_eq!(retry.ceiling(60), Duration::from_secs(1));
    }

    #[test]
    fn backoff_is_jittered_between_half_the_ceiling_and_the_ceiling() {
        let retry = RetryPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let delays: Vec<Duration> = (0..64).map(|_| retry.delay(3)).collect();
        assert!(
            delays
                .iter()
                .all(|d| *d >= Duration::from_millis(400) && *d <= Duration::from_millis(800)),
            "{delays:?}"
        );
        let distinct: std::collections::BTreeSet<_> = delays.iter().collect();
        assert!(
            distinct.len() > 32,
            "partitions retrying together draw different waits: {delays:?}"
        );
        assert!(retry.delay(60) <= Duration::from_secs(1));
    }
}
