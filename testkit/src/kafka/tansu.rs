//! A Tansu broker process for tests that need a real, restartable broker.
//!
//! The broker stores everything in `broker.db` (sqlite) in a temporary directory it runs in;
//! `memory://` storage is never used (it reports wrong high watermarks). Killing and restarting
//! keeps the port and the file, so clients reconnect to the same address and find their data.
//! Each run's output goes to a [`ChildProcess`] log whose path is printed when the broker starts
//! and included in every startup error.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::Signal;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::process::{ChildProcess, free_port};

const DEFAULT_TANSU_PATH: &str = "/opt/tansu/bin/tansu";
const INSTALL_HINT: &str = "cargo install tansu --version 0.6.0 --locked --no-default-features --features dynostore,libsql --root /opt/tansu";
const BROKER_HARD_TIMEOUT: Duration = Duration::from_secs(3600);
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// Settings tansu reads from the environment that the flags below do not override.
const TANSU_ENV: &[&str] = &[
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "DATA_LAKE",
    "ICEBERG_CATALOG",
    "ICEBERG_NAMESPACE",
    "ICEBERG_WAREHOUSE",
    "DELTA_DATABASE",
];

/// The tansu binary: `TANSU_BIN`, else `tansu` on `PATH`, else `/opt/tansu/bin/tansu`.
pub fn tansu_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("TANSU_BIN") {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("TANSU_BIN={} is not a file", path.display());
        }
        return Ok(path);
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("tansu"))
                .find(|candidate| candidate.is_file())
        })
        .unwrap_or_default();
    if let Some(path) = on_path {
        return Ok(path);
    }
    let default = PathBuf::from(DEFAULT_TANSU_PATH);
    if default.is_file() {
        return Ok(default);
    }
    bail!(
        "no tansu binary (TANSU_BIN, PATH, {DEFAULT_TANSU_PATH}); install it with: {INSTALL_HINT}"
    )
}

#[derive(Debug)]
pub(super) struct TansuBroker {
    // Declared before `dir` so the process is killed before its directory is removed.
    child: tokio::sync::Mutex<Option<ChildProcess>>,
    dir: tempfile::TempDir,
    binary: PathBuf,
    port: u16,
}

impl TansuBroker {
    pub(super) async fn start() -> anyhow::Result<Self> {
        let binary = tansu_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("tgt-tansu-")
            .tempdir()
            .context("creating a temporary directory for tansu")?;
        let mut broker = Self {
            child: tokio::sync::Mutex::new(None),
            dir,
            binary,
            port: 0,
        };
        // The free port may be taken before tansu binds it; a fresh port usually fixes that.
        let mut last_error = None;
        for _ in 0..3 {
            broker.port = free_port()?;
            match broker.restart().await {
                Ok(()) => return Ok(broker),
                Err(err) => last_error = Some(err),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("tansu did not start")))
    }

    pub(super) fn bootstrap_servers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the (stopped) broker on its port with its sqlite file, waiting until it answers
    /// metadata requests.
    pub(super) async fn restart(&self) -> anyhow::Result<()> {
        let mut slot = self.child.lock().await;
        if slot.is_some() {
            bail!("tansu on port {} is already running", self.port);
        }
        let listener = format!("tcp://127.0.0.1:{}", self.port);
        let mut cmd = Command::new(&self.binary);
        cmd.current_dir(self.dir.path())
            .arg("broker")
            .args(["--storage-engine", "sqlite://./broker.db"])
            .args(["--listener-url", &listener])
            .args(["--advertised-listener-url", &listener]);
        for var in TANSU_ENV {
            cmd.env_remove(var);
        }
        let child = ChildProcess::spawn(cmd, &format!("tansu-{}", self.port), BROKER_HARD_TIMEOUT)?;
        if let Err(err) = await_metadata(&child, &self.bootstrap_servers()).await {
            bail!(
                "tansu did not become ready on port {}: {err:#}\n{}",
                self.port,
                child.report()
            );
        }
        *slot = Some(child);
        Ok(())
    }

    pub(super) async fn is_running(&self) -> bool {
        self.child.lock().await.is_some()
    }

    /// The running process's output so far.
    pub(super) async fn output(&self) -> Option<String> {
        self.child
            .lock()
            .await
            .as_ref()
            .map(ChildProcess::output_text)
    }

    /// SIGKILLs the broker and waits for it to be gone.
    pub(super) async fn kill(&self) -> anyhow::Result<()> {
        self.stop_with(Signal::SIGKILL).await
    }

    /// Stops the broker with `signal` (SIGTERM: a clean shutdown) and waits for it to be gone;
    /// a broker still running after the wait is SIGKILLed.
    pub(super) async fn stop_with(&self, signal: Signal) -> anyhow::Result<()> {
        let mut slot = self.child.lock().await;
        let Some(child) = slot.take() else {
            bail!("tansu on port {} is not running", self.port);
        };
        child.signal_group(signal)?;
        if child.wait(KILL_TIMEOUT).await.is_err() {
            child.signal_group(Signal::SIGKILL)?;
            child.wait(KILL_TIMEOUT).await?;
        }
        Ok(())
    }
}

/// Polls metadata until the broker answers, failing early if the process exits.
async fn await_metadata(child: &ChildProcess, bootstrap: &str) -> anyhow::Result<()> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("allow.auto.create.topics", "false");
    let client: BaseConsumer = config.create().context("creating a metadata client")?;
    let client = std::sync::Arc::new(client);
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = child.exit_status() {
            bail!("tansu exited during startup ({status})");
        }
        let probe = std::sync::Arc::clone(&client);
        let answer = tokio::task::spawn_blocking(move || {
            probe.fetch_metadata(None, Duration::from_millis(500))
        })
        .await
        .context("the metadata probe panicked")?;
        match answer {
            Ok(metadata) if !metadata.brokers().is_empty() => return Ok(()),
            Ok(_) => {}
            Err(err) if Instant::now() >= deadline => {
                bail!("no metadata after {READY_TIMEOUT:?}: {err}")
            }
            Err(_) => {}
        }
        if Instant::now() >= deadline {
            bail!("metadata listed no brokers after {READY_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
