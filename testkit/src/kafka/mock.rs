//! librdkafka's mock cluster, owned by a dedicated thread ([`MockClusterHost`]) or by a helper
//! process ([`HostedMockBroker`], the `mock-kafka` binary).
//!
//! `rdkafka::mocking::MockCluster` is neither `Send` nor `Sync` (it wraps a raw pointer), so a
//! handle that tests can move between tasks keeps the cluster on one thread and talks to it over
//! a channel. The cluster lives exactly as long as the handle: dropping the handle closes the
//! channel and the thread destroys the cluster.

use std::io::Write;
use std::path::PathBuf;
use std::process::{ChildStdin, Command};
use std::sync::{Mutex, OnceLock, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::mocking::MockCluster;
use rdkafka::types::RDKafkaErrorCode;

use crate::process::ChildProcess;

/// Brokers in a mock cluster unless told otherwise: more than one, so partition leaders are
/// spread and clients fetch from several brokers as they would in production.
pub const DEFAULT_MOCK_BROKERS: i32 = 3;
/// librdkafka's mock API addresses every broker with id -1.
const ALL_BROKERS: i32 = -1;
/// The helper process is killed after this long even if its test hangs.
const HOSTED_HARD_TIMEOUT: Duration = Duration::from_secs(3600);
const HOSTED_REPLY_TIMEOUT: Duration = Duration::from_secs(30);

enum MockCommand {
    CreateTopic {
        name: String,
        partitions: i32,
        reply: mpsc::Sender<KafkaResult<()>>,
    },
    SetAvailable {
        available: bool,
        reply: mpsc::Sender<KafkaResult<()>>,
    },
}

/// A mock cluster living on its own thread; `Send + Sync`, destroyed on drop.
#[derive(Debug)]
pub struct MockClusterHost {
    bootstrap: String,
    commands: Option<mpsc::Sender<MockCommand>>,
    thread: Option<JoinHandle<()>>,
}

impl MockClusterHost {
    /// Starts a mock cluster with `brokers` brokers listening on 127.0.0.1.
    pub fn start(brokers: i32) -> anyhow::Result<Self> {
        let (commands, inbox) = mpsc::channel::<MockCommand>();
        let (ready, started) = mpsc::channel::<KafkaResult<String>>();
        let thread = std::thread::Builder::new()
            .name("mock-kafka".to_owned())
            .spawn(move || {
                let cluster = match MockCluster::new(brokers) {
                    Ok(cluster) => cluster,
                    Err(err) => {
                        let _ = ready.send(Err(err));
                        return;
                    }
                };
                let _ = ready.send(Ok(cluster.bootstrap_servers()));
                // Runs until every handle's sender is gone.
                for command in inbox {
                    match command {
                        MockCommand::CreateTopic {
                            name,
                            partitions,
                            reply,
                        } => {
                            let created = match cluster.create_topic(&name, partitions, 1) {
                                // Same contract as the admin path: the caller then checks the shape.
                                Err(KafkaError::MockCluster(
                                    RDKafkaErrorCode::TopicAlreadyExists,
                                )) => Ok(()),
                                other => other,
                            };
                            let _ = reply.send(created);
                        }
                        MockCommand::SetAvailable { available, reply } => {
                            let _ = reply.send(if available {
                                cluster.broker_up(ALL_BROKERS)
                            } else {
                                cluster.broker_down(ALL_BROKERS)
                            });
                        }
                    }
                }
            })
            .context("spawning the mock cluster thread")?;
        let bootstrap = started
            .recv()
            .map_err(|_| anyhow!("the mock cluster thread died while starting"))?
            .context("creating a librdkafka mock cluster")?;
        Ok(Self {
            bootstrap,
            commands: Some(commands),
            thread: Some(thread),
        })
    }

    /// The cluster's `bootstrap.servers` value.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// Creates a topic (replication factor 1); an existing topic is left as it is. The mock has no
    /// CreateTopics admin API.
    pub fn create_topic(&self, name: &str, partitions: i32) -> anyhow::Result<()> {
        if partitions < 1 {
            bail!("a topic needs at least one partition, not {partitions}");
        }
        self.call(|reply| MockCommand::CreateTopic {
            name: name.to_owned(),
            partitions,
            reply,
        })
        .with_context(|| format!("creating mock topic {name} with {partitions} partitions"))
    }

    /// Takes every broker down (connections closed and refused) or brings them all back up.
    pub fn set_available(&self, available: bool) -> anyhow::Result<()> {
        self.call(|reply| MockCommand::SetAvailable { available, reply })
            .with_context(|| format!("setting mock brokers available={available}"))
    }

    /// Sends a command and waits for its answer; mock operations complete in milliseconds, so
    /// blocking the caller briefly is harmless even on a runtime thread.
    fn call(
        &self,
        command: impl FnOnce(mpsc::Sender<KafkaResult<()>>) -> MockCommand,
    ) -> anyhow::Result<()> {
        let (reply, answer) = mpsc::channel();
        self.commands
            .as_ref()
            .context("mock cluster already stopped")?
            .send(command(reply))
            .map_err(|_| anyhow!("the mock cluster thread is gone"))?;
        answer
            .recv()
            .map_err(|_| anyhow!("the mock cluster thread is gone"))?
            .map_err(Into::into)
    }
}

impl Drop for MockClusterHost {
    fn drop(&mut self) {
        drop(self.commands.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

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
