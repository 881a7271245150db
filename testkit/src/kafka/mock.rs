//! librdkafka's mock cluster, owned by a dedicated thread ([`MockClusterHost`], from the
//! `embedded-broker` crate the demo shares) or by a helper process ([`HostedMockBroker`], the
//! `mock-kafka` binary).

use std::io::Write;
use std::path::PathBuf;
use std::process::{ChildStdin, Command};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, bail};
pub use embedded_broker::{DEFAULT_MOCK_BROKERS, MockClusterHost};

use crate::process::ChildProcess;

/// The helper process is killed after this long even if its test hangs.
const HOSTED_HARD_TIMEOUT: Duration = Duration::from_secs(3600);
const HOSTED_REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// A mock cluster in a `mock-kafka` helper process, driven over its stdin.
///
/// The in-process [`MockClusterHost`] already serves child processes (its listeners are real TCP
/// ports); a hosted cluster adds isolation from the test process's own librdkafka clients and can
/// be SIGKILLed as a whole ([`HostedMockBroker::process`]). The binary is found by
/// [`mock_kafka_binary`]. The process is killed on drop.
#[derive(Debug)]
pub struct HostedMockBroker {
    child: ChildProcess,
    stdin: tokio::sync::Mutex<ChildStdin>,
    bootstrap: String,
}

impl HostedMockBroker {
    /// Starts a helper process with [`DEFAULT_MOCK_BROKERS`] brokers.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with_brokers(DEFAULT_MOCK_BROKERS).await
    }

    /// Starts a helper process with `brokers` brokers.
    pub async fn start_with_brokers(brokers: i32) -> anyhow::Result<Self> {
        let binary = mock_kafka_binary()?;
        let mut cmd = Command::new(&binary);
        cmd.arg("--brokers").arg(brokers.to_string());
        let child = ChildProcess::spawn_with_stdin(cmd, "mock-kafka", HOSTED_HARD_TIMEOUT)?;
        let stdin = child
            .take_stdin()
            .context("the mock-kafka process has no stdin pipe")?;
        let line = child
            .wait_for_line(|line| line.starts_with("bootstrap="), HOSTED_REPLY_TIMEOUT)
            .await
            .context("waiting for mock-kafka to announce its bootstrap servers")?;
        let bootstrap = line.trim_start_matches("bootstrap=").to_owned();
        Ok(Self {
            child,
            stdin: tokio::sync::Mutex::new(stdin),
            bootstrap,
        })
    }

    /// The cluster's `bootstrap.servers` value.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// The helper process (its output, or to signal it).
    pub fn process(&self) -> &ChildProcess {
        &self.child
    }

    /// Creates a topic (replication factor 1).
    pub async fn create_topic(&self, name: &str, partitions: i32) -> anyhow::Result<()> {
        if name.is_empty() || name.contains(char::is_whitespace) {
            bail!("topic name {name:?} cannot be sent to mock-kafka");
        }
        self.command(&format!("create-topic {name} {partitions}"))
            .await
    }

    /// Takes every broker down or brings them all back up.
    pub async fn set_available(&self, available: bool) -> anyhow::Result<()> {
        self.command(if available { "up" } else { "down" }).await
    }

    /// Moves the leadership of `topic`'s `partition` to broker `broker` (1 to the broker count).
    pub async fn set_partition_leader(
        &self,
        topic: &str,
        partition: i32,
        broker: i32,
    ) -> anyhow::Result<()> {
        if topic.is_empty() || topic.contains(char::is_whitespace) {
            bail!("topic name {topic:?} cannot be sent to mock-kafka");
        }
        self.command(&format!("leader {topic} {partition} {broker}"))
            .await
    }

    async fn command(&self, command: &str) -> anyhow::Result<()> {
        // One command at a time: the reply is the first `ok`/`err` line after the request.
        let mut stdin = self.stdin.lock().await;
        let start = self.child.line_count();
        writeln!(stdin, "{command}")
            .and_then(|()| stdin.flush())
            .with_context(|| format!("sending {command:?} to mock-kafka"))?;
        let (_, reply) = self
            .child
            .wait_for_line_from(
                start,
                |line| line == "ok" || line.starts_with("err"),
                HOSTED_REPLY_TIMEOUT,
            )
            .await?;
        if reply == "ok" {
            Ok(())
        } else {
            bail!("mock-kafka answered {command:?} with {reply:?}")
        }
    }
}

/// The `mock-kafka` helper binary.
///
/// Order: `TESTKIT_MOCK_KAFKA_BIN`; then, when running under cargo or nextest (`CARGO` is set),
/// `cargo build -p testkit --bin mock-kafka` in the same profile and target directory, using the
/// path cargo reports: a no-op taking a fraction of a second when it is fresh, and never a stale
/// binary left by an older build (cargo releases its build lock before running tests, so this
/// does not deadlock; checked under both runners). Otherwise, or if that build fails,
/// `mock-kafka` next to the test executable (`target/<profile>/`, where `cargo test --workspace`
/// puts it); last, a build with `cargo` from `PATH`. Resolved once per test process.
pub fn mock_kafka_binary() -> anyhow::Result<PathBuf> {
    static FOUND: OnceLock<PathBuf> = OnceLock::new();
    static RESOLVING: Mutex<()> = Mutex::new(());
    if let Some(path) = FOUND.get() {
        return Ok(path.clone());
    }
    let _resolving = RESOLVING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(path) = FOUND.get() {
        return Ok(path.clone());
    }
    let path = locate_or_build()?;
    Ok(FOUND.get_or_init(|| path).clone())
}

fn locate_or_build() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("TESTKIT_MOCK_KAFKA_BIN") {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("TESTKIT_MOCK_KAFKA_BIN={} is not a file", path.display());
        }
        return Ok(path);
    }
    let exe = std::env::current_exe().context("finding the test executable")?;
    let release = exe.components().any(|c| c.as_os_str() == "release");
    let neighbour = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("mock-kafka"))
        .find(|candidate| candidate.is_file());
    match (std::env::var_os("CARGO"), neighbour) {
        (Some(cargo), neighbour) => match build_with_cargo(&cargo, release) {
            Ok(path) => Ok(path),
            Err(err) => match neighbour {
                Some(path) => {
                    eprintln!("testkit: using {} (may be stale): {err:#}", path.display());
                    Ok(path)
                }
                None => Err(err),
            },
        },
        (None, Some(path)) => Ok(path),
        (None, None) => build_with_cargo("cargo".as_ref(), release),
    }
}

fn build_with_cargo(cargo: &std::ffi::OsStr, release: bool) -> anyhow::Result<PathBuf> {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "-p", "testkit", "--bin", "mock-kafka"])
        .args(["--message-format", "json-render-diagnostics"])
        .arg("--manifest-path")
        .arg(manifest);
    if release {
        cmd.arg("--release");
    }
    let output = cmd
        .output()
        .with_context(|| format!("running {cmd:?} (set TESTKIT_MOCK_KAFKA_BIN to skip)"))?;
    if !output.status.success() {
        bail!(
            "building mock-kafka failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|msg| msg["reason"] == "compiler-artifact" && msg["target"]["name"] == "mock-kafka")
        .find_map(|msg| msg["executable"].as_str().map(PathBuf::from))
        .context("cargo built mock-kafka but reported no executable path")
}
