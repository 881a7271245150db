//! testkit — isolated, real infrastructure for tgingest's tests (a dev-only crate).
//!
//! Every test gets its own: a fresh PostgreSQL database ([`pg::TestDb`]) or a private cluster it may
//! crash ([`pg::PrivateCluster`]), a Kafka-protocol broker with unique topic and group names
//! ([`kafka::TestBroker`]), child processes that cannot outlive it ([`process::ChildProcess`]), and
//! a TCP proxy that can silently drop connections ([`proxy::TcpProxy`]).
//! Everything is torn down on drop, also when a test panics.
//!
//! Beside the infrastructure, what tests of the pipeline share: updates as the producer publishes
//! them and a manifest of what was produced ([`updates`]), the exactly-once checker over that
//! manifest ([`invariants`]), the projection oracle that predicts every projection table from
//! the updates without the processor and compares it with PostgreSQL ([`projection_oracle`]),
//! updates written by the consumer's batch writer without a broker ([`direct`]), the consumer
//! running in-process and its stored offsets ([`sink`]), and the one way to wait for a condition
//! ([`wait`]). testkit may depend on the production crates; they never depend on it.
//!
//! Environment (all optional):
//!
//! | variable | effect |
//! |---|---|
//! | `TGINGEST_TEST_PG_URL` | shared PostgreSQL server for [`pg::TestDb`] (default `postgres://postgres@127.0.0.1:5432/postgres`); the role must be allowed to create databases |
//! | `TGINGEST_PG_BINDIR` | PostgreSQL binaries for [`pg::PrivateCluster`] (default: `pg_config --bindir`, then the newest `/usr/lib/postgresql/*/bin`) |
//! | `KAFKA_BROKERS` | use this external broker (plus the `KAFKA_*` security settings listed in [`kafka`]) |
//! | `TGINGEST_TEST_BROKER` | `mock` (default), `tansu` or `hosted-mock`, when `KAFKA_BROKERS` is unset |
//! | `TANSU_BIN` | the tansu binary (default: `tansu` on `PATH`, then `/opt/tansu/bin/tansu`) |
//! | `TESTKIT_MOCK_KAFKA_BIN` | the `mock-kafka` helper binary (default: `cargo build -p testkit --bin mock-kafka` under cargo/nextest, else next to the test executable; see [`kafka::mock_kafka_binary`]) |
//!
//! A typical test:
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use std::time::Duration;
//! use testkit::{ChildProcess, TestBroker, TestDb};
//!
//! let db = TestDb::create().await?;
//! let broker = TestBroker::start().await?;
//! let topic = broker.unique_topic("tg.updates");
//! broker.create_topic(&topic, 12).await?;
//!
//! # let tgingest = "tgingest"; // in the root package's tests: env!("CARGO_BIN_EXE_tgingest")
//! let mut cmd = std::process::Command::new(tgingest);
//! cmd.arg("consumer")
//!     .env("DATABASE_URL", db.url())
//!     .env("KAFKA_BROKERS", broker.bootstrap_servers());
//! let consumer = ChildProcess::spawn(cmd, "consumer", Duration::from_secs(120))?;
//! consumer.wait_for_line(|line| line.contains("assigned"), Duration::from_secs(30)).await?;
//! # Ok(()) }
//! ```
//!
//! Works under cargo-nextest (one process per test) and plain `cargo test` (threads): nothing here
//! relies on process-global state other than the leftover sweeps.

pub mod direct;
pub mod invariants;
pub mod kafka;
pub mod pg;
pub mod process;
pub mod projection_oracle;
pub mod proxy;
pub mod sink;
pub mod updates;
pub mod wait;

pub use kafka::{BrokerKind, HostedMockBroker, MockClusterHost, TestBroker, require_broker};
pub use pg::{PrivateCluster, StopMode, TestDb};
pub use process::{ChildProcess, free_port, with_failpoints};
pub use proxy::TcpProxy;
pub use wait::{eventually, wait_until};

/// Logs to the test's captured output (once per process), filtered by `RUST_LOG` or else by
/// `default_filter`.
pub fn init_tracing(default_filter: &str) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_test_writer()
        .try_init();
}

/// A random string of lowercase letters and digits, valid in database, topic and group names.
pub fn random_suffix(len: usize) -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(CHARS[rng.random_range(0..CHARS.len())]))
        .collect()
}
