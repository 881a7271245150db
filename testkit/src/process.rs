//! Child processes for tests: spawned in their own process group, their output captured line by
//! line, and killed on every exit path.
//!
//! Guarantees of [`ChildProcess`]:
//! - the child leads a new process group, so a SIGKILL to the group also reaches anything it
//!   started (shells, workers);
//! - stdout and stderr are read on background threads into one shared, ordered buffer of lines and
//!   into a log file under `$TMPDIR/tgingest-test-logs/`; the path is printed (to the test's
//!   captured stderr, so it shows up when the test fails) as soon as the child starts;
//! - the whole group is SIGKILLed and the child reaped when the handle is dropped (including
//!   during a panic) and when the hard timeout passes (a watchdog thread), so a stopped or hung
//!   child never hangs a test run.
//!
//! Limit: if the test process itself is SIGKILLed (e.g. by a runner's timeout), nothing is left to
//! kill the group; it is orphaned. Keep hard timeouts close to what a test needs.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tokio::sync::watch;

/// How long a killed child may take to be reaped before `Drop` gives up waiting for it.
const REAP_GRACE: Duration = Duration::from_secs(10);
/// Lines of output shown in error messages and panic reports.
const TAIL_LINES: usize = 40;
/// Log files older than this are removed when the first child of a test process is spawned.
const LOG_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// The environment variable a binary built with the `fail` crate reads in
/// `FailScenario::setup()`.
pub const FAILPOINTS_ENV: &str = "FAILPOINTS";

/// Sets the failpoint specification (`"name=action;name2=action2"`, the `fail` crate's syntax) that
/// the spawned binary picks up through `fail::FailScenario::setup()`.
pub fn with_failpoints<'a>(cmd: &'a mut Command, spec: &str) -> &'a mut Command {
    cmd.env(FAILPOINTS_ENV, spec)
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
///
/// The port is released before returning, so another process may take it first; callers that
/// bind it in a child retry with a new port when the child fails to listen.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Whether a process with this pid exists and is not a zombie.
///
/// Zombies count as gone: in containers PID 1 often does not reap orphans, and a zombie holds no
/// resources a test cares about.
pub fn pid_is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself contain ") ".
        Ok(stat) => match stat.rfind(')') {
            Some(end) => !matches!(stat[end + 1..].trim_start().chars().next(), Some('Z' | 'X')),
            None => true,
        },
        Err(_) => false,
    }
}

/// A spawned child process; see the module documentation for what it guarantees.
#[derive(Debug)]
pub struct ChildProcess {
    name: String,
    pid: u32,
    shared: Arc<Shared>,
    stdin: Mutex<Option<ChildStdin>>,
    watchdog_stop: Option<mpsc::Sender<()>>,
    watchdog: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    name: String,
    log_path: PathBuf,
    lines: Mutex<Vec<String>>,
    log: Mutex<Option<File>>,
    status: Mutex<Option<ExitStatus>>,
    open_streams: AtomicUsize,
    /// Bumped on every new line, stream end and exit, so async waiters wake up.
    events: watch::Sender<u64>,
}

impl Shared {
    fn push_line(&self, stream: &str, line: String) {
        if let Some(file) = lock(&self.log).as_mut() {
            // The log is a debugging aid; a full disk must not fail the test on its own.
            let _ = writeln!(file, "[{stream}] {line}");
        }
        lock(&self.lines).push(line);
        self.events.send_modify(|n| *n += 1);
    }

    fn status(&self) -> Option<ExitStatus> {
        *lock(&self.status)
    }

    /// The process has exited and both output streams reached end of file.
    fn finished(&self) -> bool {
        self.status().is_some() && self.open_streams.load(Ordering::SeqCst) == 0
    }

    fn tail(&self) -> String {
        let lines = lock(&self.lines);
        let start = lines.len().saturating_sub(TAIL_LINES);
        lines[start..].join("\n")
    }
}

/// Locks a mutex, ignoring poisoning: the data (lines, a status) stays valid after a panic.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ChildProcess {
    /// Spawns `cmd` with stdin closed (`/dev/null`); see [`ChildProcess::spawn_with_stdin`].
    ///
    /// `name` labels the log file and messages; `hard_timeout` is the most the child may live.
    pub fn spawn(cmd: Command, name: &str, hard_timeout: Duration) -> anyhow::Result<Self> {
        Self::spawn_inner(cmd, name, hard_timeout, false)
    }

    /// Like [`ChildProcess::spawn`], with stdin piped: take it with [`ChildProcess::take_stdin`].
    pub fn spawn_with_stdin(
        cmd: Command,
        name: &str,
        hard_timeout: Duration,
    ) -> anyhow::Result<Self> {
        Self::spawn_inner(cmd, name, hard_timeout, true)
    }

    fn spawn_inner(
        mut cmd: Command,
        name: &str,
        hard_timeout: Duration,
        piped_stdin: bool,
    ) -> anyhow::Result<Self> {
        let log_path = new_log_path(name)?;
        let log = File::create(&log_path)
            .with_context(|| format!("creating log file {}", log_path.display()))?;
        cmd.process_group(0)
            .stdin(if piped_stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {name}: {cmd:?}"))?;
        let pid = child.id();
        eprintln!(
            "testkit: started {name} (pid {pid}), output in {}",
            log_path.display()
        );

        let (events, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            log_path,
            lines: Mutex::new(Vec::new()),
            log: Mutex::new(Some(log)),
            status: Mutex::new(None),
            open_streams: AtomicUsize::new(2),
            events,
        });
        let stdin = child.stdin.take();
        let helpers = (|| {
            // `Stdio::piped()` guarantees both handles; a missing one only loses output.
            match child.stdout.take() {
                Some(out) => spawn_reader(out, "out", &shared)?,
                None => stream_closed(&shared),
            }
            match child.stderr.take() {
                Some(err) => spawn_reader(err, "err", &shared)?,
                None => stream_closed(&shared),
            }
            spawn_reaper(child, &shared)?;
            spawn_watchdog(pid, hard_timeout, &shared)
        })();
        let (watchdog_stop, watchdog) = match helpers {
            Ok(watchdog) => watchdog,
            Err(err) => {
                // Without its helper threads nothing would ever kill this child.
                kill_group(pid);
                return Err(err);
            }
        };
        Ok(Self {
            name: name.to_owned(),
            pid,
            shared,
            stdin: Mutex::new(stdin),
            watchdog_stop: Some(watchdog_stop),
            watchdog: Some(watchdog),
        })
    }

    /// The child's pid, which is also its process group id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The label given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file that receives every output line, prefixed with `[out]` or `[err]`.
    pub fn log_path(&self) -> &Path {
        &self.shared.log_path
    }

    /// The piped stdin of a child spawned with [`ChildProcess::spawn_with_stdin`], once.
    pub fn take_stdin(&self) -> Option<ChildStdin> {
        lock(&self.stdin).take()
    }

    /// Every line printed so far (stdout and stderr interleaved in arrival order), joined by `\n`.
    pub fn output_text(&self) -> String {
        lock(&self.shared.lines).join("\n")
    }

    /// How many lines have been captured so far; a starting point for
    /// [`ChildProcess::wait_for_line_from`].
    pub fn line_count(&self) -> usize {
        lock(&self.shared.lines).len()
    }

    /// The exit status, if the child has exited and been reaped.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.shared.status()
    }

    /// Waits until some captured line satisfies `pred` and returns that line.
    ///
    /// Fails on timeout, or early when the child has exited and its output is exhausted; the error
    /// carries the last lines of output and the log path.
    pub async fn wait_for_line(
        &self,
        pred: impl FnMut(&str) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        self.wait_for_line_from(0, pred, timeout)
            .await
            .map(|(_, line)| line)
    }

    /// Like [`ChildProcess::wait_for_line`], considering only lines at index `start` or later;
    /// returns the matching line's index too.
    pub async fn wait_for_line_from(
        &self,
        start: usize,
        mut pred: impl FnMut(&str) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<(usize, String)> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut events = self.shared.events.subscribe();
        let mut next = start;
        loop {
            events.borrow_and_update();
            // Read `finished` before scanning: a line that arrived just before the end is seen.
            let finished = self.shared.finished();
            {
                let lines = lock(&self.shared.lines);
                for (index, line) in lines.iter().enumerate().skip(next) {
                    if pred(line) {
                        return Ok((index, line.clone()));
                    }
                }
                next = next.max(lines.len());
            }
            if finished {
                bail!(
                    "{} exited ({}) without printing the awaited line\n{}",
                    self.name,
                    describe_status(self.shared.status()),
                    self.report()
                );
            }
            if tokio::time::timeout_at(deadline, events.changed())
                .await
                .is_err()
            {
                bail!(
                    "{} did not print the awaited line within {timeout:?}\n{}",
                    self.name,
                    self.report()
                );
            }
        }
    }

    /// Waits for the child to exit; fails (without killing it) when `timeout` passes first.
    pub async fn wait(&self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut events = self.shared.events.subscribe();
        loop {
            events.borrow_and_update();
            if let Some(status) = self.shared.status() {
                return Ok(status);
            }
            if tokio::time::timeout_at(deadline, events.changed())
                .await
                .is_err()
            {
                bail!(
                    "{} still running after {timeout:?}\n{}",
                    self.name,
                    self.report()
                );
            }
        }
    }

    /// Sends `sig` to the child itself (not its descendants), as an orchestrator would.
    pub fn signal(&self, sig: Signal) -> anyhow::Result<()> {
        if let Some(status) = self.shared.status() {
            bail!(
                "cannot send {sig} to {}: it already exited ({})",
                self.name,
                describe_status(Some(status))
            );
        }
        signal::kill(pid_of(self.pid), sig)
            .with_context(|| format!("sending {sig} to {} (pid {})", self.name, self.pid))
    }

    /// Sends `sig` to the child's whole process group.
    pub fn signal_group(&self, sig: Signal) -> anyhow::Result<()> {
        signal::killpg(pid_of(self.pid), sig)
            .with_context(|| format!("sending {sig} to the group of {}", self.name))
    }

    /// The last lines of output and where the full log is, for error messages.
    pub fn report(&self) -> String {
        report(&self.shared)
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "testkit: {} (pid {}) at the time of the panic:\n{}",
                self.name,
                self.pid,
                self.report()
            );
        }
        kill_group(self.pid);
        let deadline = Instant::now() + REAP_GRACE;
        while self.shared.status().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if self.shared.status().is_none() {
            eprintln!(
                "testkit: {} (pid {}) was not reaped {REAP_GRACE:?} after SIGKILL",
                self.name, self.pid
            );
        }
        drop(self.watchdog_stop.take());
        if let Some(watchdog) = self.watchdog.take() {
            let _ = watchdog.join();
        }
    }
}

fn pid_of(pid: u32) -> Pid {
    // Pids fit in i32 on every platform nix supports; the cast cannot truncate a real pid.
    Pid::from_raw(pid as i32)
}

fn kill_group(pid: u32) {
    // ESRCH (the group is already gone) is the expected outcome after a clean exit.
    let _ = signal::killpg(pid_of(pid), Signal::SIGKILL);
}

fn report(shared: &Shared) -> String {
    format!(
        "--- last output of {} ---\n{}\n--- full log: {} ---",
        shared.name,
        shared.tail(),
        shared.log_path.display()
    )
}

fn describe_status(status: Option<ExitStatus>) -> String {
    match status {
        None => "still running".to_owned(),
        Some(status) => match (status.code(), status.signal()) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(sig)) => match Signal::try_from(sig) {
                Ok(sig) => format!("killed by {sig}"),
                Err(_) => format!("killed by signal {sig}"),
            },
            (None, None) => status.to_string(),
        },
    }
}

fn stream_closed(shared: &Shared) {
    shared.open_streams.fetch_sub(1, Ordering::SeqCst);
    shared.events.send_modify(|n| *n += 1);
}

fn spawn_reader(
    stream: impl Read + Send + 'static,
    label: &'static str,
    shared: &Arc<Shared>,
) -> anyhow::Result<()> {
    let shared = Arc::clone(shared);
    std::thread::Builder::new()
        .name(format!("{}-{label}", shared.name))
        .spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        while matches!(buf.last(), Some(b'\n' | b'\r')) {
                            buf.pop();
                        }
                        shared.push_line(label, String::from_utf8_lossy(&buf).into_owned());
                    }
                }
            }
            stream_closed(&shared);
        })
        .context("spawning an output reader thread")?;
    Ok(())
}

fn spawn_reaper(mut child: Child, shared: &Arc<Shared>) -> anyhow::Result<()> {
    let shared = Arc::clone(shared);
    std::thread::Builder::new()
        .name(format!("{}-reaper", shared.name))
        .spawn(move || {
            let status = match child.wait() {
                Ok(status) => status,
                // Only possible if someone else reaped it; report it as killed so waiters wake.
                Err(_) => ExitStatus::from_raw(Signal::SIGKILL as i32),
            };
            *lock(&shared.status) = Some(status);
            if let Some(file) = lock(&shared.log).as_mut() {
                let _ = writeln!(file, "[testkit] {}", describe_status(Some(status)));
            }
            shared.events.send_modify(|n| *n += 1);
        })
        .context("spawning a reaper thread")?;
    Ok(())
}

fn spawn_watchdog(
    pid: u32,
    hard_timeout: Duration,
    shared: &Arc<Shared>,
) -> anyhow::Result<(mpsc::Sender<()>, JoinHandle<()>)> {
    let shared = Arc::clone(shared);
    let (stop, stopped) = mpsc::channel::<()>();
    let handle = std::thread::Builder::new()
        .name(format!("{}-watchdog", shared.name))
        .spawn(move || {
            // A message or a dropped sender both mean the handle was dropped: nothing to enforce.
            if let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(hard_timeout) {
                let note = format!(
                    "testkit: hard timeout of {hard_timeout:?} passed, SIGKILLing the group of {}",
                    shared.name
                );
                eprintln!("{note} (pid {pid})");
                shared.push_line("testkit", note);
                kill_group(pid);
            }
        })
        .context("spawning a watchdog thread")?;
    Ok((stop, handle))
}

fn new_log_path(name: &str) -> anyhow::Result<PathBuf> {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    let dir = std::env::temp_dir().join("tgingest-test-logs");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    SWEPT.call_once(|| sweep_old_logs(&dir));
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let stamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    Ok(dir.join(format!(
        "{safe}-{stamp}-{}-{}.log",
        std::process::id(),
        crate::random_suffix(6)
    )))
}

fn sweep_old_logs(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|modified| modified.elapsed().ok())
            .is_some_and(|age| age > LOG_RETENTION);
        if old {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
