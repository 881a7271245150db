//! Systems under test as child processes: the `tgingest consumer` binary and the Python
//! baseline. Running them as processes gives each its own `/proc` CPU and memory accounting,
//! apart from the benchmark (which hosts the broker). A child is stopped with SIGTERM, then
//! SIGKILL after a grace period, on every exit path (also on drop).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A running child process.
#[derive(Debug)]
pub struct SystemUnderTest {
    child: Option<Child>,
    name: &'static str,
}

impl SystemUnderTest {
    /// Spawns `program args…` with `env` added to this process's environment; its output goes to
    /// `log` (appended).
    pub fn spawn(
        name: &'static str,
        program: &PathBuf,
        args: &[&str],
        env: &[(String, String)],
        log: &std::path::Path,
    ) -> anyhow::Result<Self> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out.try_clone()?;
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        Ok(Self {
            child: Some(child),
            name,
        })
    }

    /// The child's pid as `/proc` names it.
    pub fn pid(&self) -> String {
        self.child
            .as_ref()
            .map_or_else(|| "0".to_owned(), |c| c.id().to_string())
    }

    /// Fails if the child already exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(child) = self.child.as_mut()
            && let Some(status) = child.try_wait()?
        {
            anyhow::bail!("{} exited early with {status} (see its log)", self.name);
        }
        Ok(())
    }

    /// Sends SIGTERM without waiting, so several children can shut down side by side before
    /// [`SystemUnderTest::stop`] waits for each.
    pub fn terminate(&self) {
        if let Some(child) = &self.child
            && let Ok(pid) = i32::try_from(child.id())
        {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; waits for the exit.
    pub fn stop(&mut self, grace: Duration) {
        self.terminate();
        let Some(mut child) = self.child.take() else {
            return;
        };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for SystemUnderTest {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// The `tgingest` binary: `TGINGEST_BIN`, else next to this executable.
pub fn tgingest_binary() -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var("TGINGEST_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    let sibling = exe
        .parent()
        .context("the benchmark executable has no directory")?
        .join("tgingest");
    anyhow::ensure!(
        sibling.exists(),
        "{} not found: build it (cargo build --release -p tgingest) or set TGINGEST_BIN",
        sibling.display()
    );
    Ok(sibling)
}

/// Environment for `tgingest consumer` against `bootstrap`/`topic`/`database_url`, plus `extra`
/// settings (which override the defaults here).
pub fn consumer_env(
    bootstrap: &str,
    topic: &str,
    group: &str,
    database_url: &str,
    extra: &[(&str, String)],
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("KAFKA_BROKERS", bootstrap),
        ("KAFKA_TOPIC", topic),
        ("KAFKA_GROUP_ID", group),
        ("DATABASE_URL", database_url),
        ("ADMIN_LISTEN", "off"),
        ("RUST_LOG", "warn"),
        // A fresh group with one member: no need to wait out the 45 s default on a restart.
        ("KAFKA_SESSION_TIMEOUT", "10s"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    // BENCH_CONSUMER_ENV="K=V;K=V" adds settings to every consumer run (profiling experiments).
    let profiling = std::env::var("BENCH_CONSUMER_ENV").unwrap_or_default();
    let profiling: Vec<(&str, String)> = profiling
        .split(';')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k, v.to_owned()))
        .collect();
    for (key, value) in extra.iter().chain(&profiling) {
        env.retain(|(k, _)| k != key);
        env.push(((*key).to_owned(), value.clone()));
    }
    env
}
