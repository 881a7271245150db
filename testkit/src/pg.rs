//! PostgreSQL for tests: a fresh database per test on the shared server ([`TestDb`]), and a
//! private, disposable cluster for tests that stop, crash or restart PostgreSQL
//! ([`PrivateCluster`]).
//!
//! Guarantees:
//! - a [`TestDb`] has a unique name `tgt_<unix seconds>_<random>`, is migrated with the workspace's
//!   `migrations/` (unless created with [`TestDb::create_empty`]) and is dropped `WITH (FORCE)`
//!   by [`TestDb::drop_database`] or, failing that, when the handle is dropped, from a separate
//!   thread, so dropping inside a tokio runtime is fine. Databases left behind by crashed runs
//!   (named `tgt_*`, older than [`LEFTOVER_AGE`]) are dropped whenever a new one is created; the
//!   creation time is in the name because PostgreSQL does not record it;
//! - a [`DbServer`] makes them on another server (the benchmarks' own), with the connections
//!   named so the server's sessions of the code under test can be told apart, and optionally over
//!   the server's Unix socket;
//! - a [`PrivateCluster`] lives in a temporary directory, listens only on 127.0.0.1 on a free port
//!   (its unix socket inside the directory), trusts every local connection, and runs its
//!   postmaster as a [`ChildProcess`]: killed with its backends and removed with its directory on
//!   drop. Durability against a *process* crash is real (`synchronous_commit` stays on); only
//!   `fsync` is off, which matters for an OS crash alone.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use nix::sys::signal::Signal;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, PgConnection};

use crate::process::{ChildProcess, free_port};

/// The shared server used when `TGINGEST_TEST_PG_URL` is unset.
pub const DEFAULT_SERVER_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// Test databases older than this are taken for leftovers of crashed runs and dropped.
pub const LEFTOVER_AGE: Duration = Duration::from_secs(6 * 3600);
const NAME_PREFIX: &str = "tgt_";
const POOL_SIZE: u32 = 5;
const ADMIN_CONNECT_ATTEMPTS: u32 = 5;
/// A private postmaster is killed after this long even if its test hangs.
const CLUSTER_HARD_TIMEOUT: Duration = Duration::from_secs(3600);
const CLUSTER_START_TIMEOUT: Duration = Duration::from_secs(60);
const CLUSTER_STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// The workspace's migrations, embedded at build time (testkit's build script rebuilds it when
/// `migrations/` changes).
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// The admin URL of the shared test server: `TGINGEST_TEST_PG_URL` or [`DEFAULT_SERVER_URL`].
pub fn server_url() -> String {
    std::env::var("TGINGEST_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_SERVER_URL.to_owned())
}

/// Whether a database with this name exists on the shared test server.
pub async fn database_exists(name: &str) -> anyhow::Result<bool> {
    let mut conn = DbServer::from_env().connect_admin().await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut conn)
            .await?;
    Ok(exists)
}

/// A PostgreSQL server on which [`TestDb`]s are made, and how their connections are opened.
#[derive(Debug, Clone)]
pub struct DbServer {
    admin_url: String,
    /// Where `admin_url` came from, for error messages.
    setting: String,
    application_name: Option<String>,
    unix_socket_dir: Option<String>,
}

impl DbServer {
    /// The shared test server: `TGINGEST_TEST_PG_URL` or [`DEFAULT_SERVER_URL`].
    pub fn from_env() -> Self {
        Self::new(
            server_url(),
            &format!("TGINGEST_TEST_PG_URL, default {DEFAULT_SERVER_URL}"),
        )
    }

    /// The server behind `admin_url` (its role must be allowed to create databases), configured
    /// by `setting` (named in errors).
    pub fn new(admin_url: impl Into<String>, setting: &str) -> Self {
        Self {
            admin_url: admin_url.into(),
            setting: setting.to_owned(),
            application_name: None,
            unix_socket_dir: None,
        }
    }

    /// Names every connection opened here (not those of the code under test) `name`.
    pub fn application_name(mut self, name: &str) -> Self {
        self.application_name = Some(name.to_owned());
        self
    }

    /// With `Some(dir)`, the databases' pools and URLs use the server's Unix socket in `dir`
    /// instead of TCP.
    pub fn unix_socket_dir(mut self, dir: Option<String>) -> Self {
        self.unix_socket_dir = dir;
        self
    }

    /// Creates a database and applies every migration in `migrations/`.
    pub async fn create_db(&self) -> anyhow::Result<TestDb> {
        let db = self.create_empty_db().await?;
        MIGRATOR
            .run(&db.pool)
            .await
            .with_context(|| format!("migrating test database {}", db.name))?;
        Ok(db)
    }

    /// Creates a database without running migrations.
    pub async fn create_empty_db(&self) -> anyhow::Result<TestDb> {
        let mut admin = self.connect_admin().await?;
        sweep_leftovers(&mut admin).await;
        let created = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let name = format!("{NAME_PREFIX}{created}_{}", crate::random_suffix(10));
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut admin)
            .await
            .with_context(|| format!("creating test database {name}"))?;
        // From here on a failure must still drop the database.
        let connected = async {
            let url = database_url(&self.admin_url, &name, self.unix_socket_dir.as_deref())
                .with_context(|| format!("the server URL ({})", self.setting))?;
            let pool = PgPoolOptions::new()
                .max_connections(POOL_SIZE)
                .connect_with(self.options(&url)?)
                .await
                .with_context(|| format!("connecting to {name}"))?;
            anyhow::Ok((url, pool))
        }
        .await;
        match connected {
            Ok((url, pool)) => Ok(TestDb {
                name,
                url,
                server: self.clone(),
                pool,
            }),
            Err(err) => {
                self.drop_database(&name).await.ok();
                Err(err)
            }
        }
    }

    fn options(&self, url: &str) -> anyhow::Result<PgConnectOptions> {
        let options = PgConnectOptions::from_str(url)?;
        Ok(match &self.application_name {
            Some(name) => options.application_name(name),
            None => options,
        })
    }

    async fn connect_admin(&self) -> anyhow::Result<PgConnection> {
        let options = self
            .options(&self.admin_url)
            .with_context(|| format!("the server URL ({}) is not a URL", self.setting))?;
        // A server busy with many tests at once may refuse a connection for a moment.
        let mut attempt = 1;
        loop {
            match PgConnection::connect_with(&options).await {
                Ok(conn) => return Ok(conn),
                Err(err) if attempt == ADMIN_CONNECT_ATTEMPTS => {
                    return Err(err).with_context(|| {
                        format!("connecting to the PostgreSQL server ({})", self.setting)
                    });
                }
                Err(_) => attempt += 1,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn drop_database(&self, name: &str) -> anyhow::Result<()> {
        let mut admin = self.connect_admin().await?;
        sqlx::query(AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await?;
        admin.close().await.ok();
        Ok(())
    }
}

/// A fresh database, dropped by [`TestDb::drop_database`] or when this handle is dropped.
#[derive(Debug)]
pub struct TestDb {
    /// Empty once dropped by [`TestDb::drop_database`].
    name: String,
    url: String,
    server: DbServer,
    pool: PgPool,
}

impl TestDb {
    /// Creates a database on the shared server and applies every migration in `migrations/`.
    pub async fn create() -> anyhow::Result<Self> {
        DbServer::from_env().create_db().await
    }

    /// Creates a database on the shared server without running migrations (for tests of the
    /// migrations themselves).
    pub async fn create_empty() -> anyhow::Result<Self> {
        DbServer::from_env().create_empty_db().await
    }

    /// The database's URL, for configuring the code under test (a child process, say).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A small pool (5 connections) on the database.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A dedicated connection (outside the pool), e.g. to hold a lock.
    pub async fn connect(&self) -> anyhow::Result<PgConnection> {
        let options = self.server.options(&self.url)?;
        PgConnection::connect_with(&options)
            .await
            .with_context(|| format!("connecting to {}", self.name))
    }

    /// Closes the pool and drops the database now, ending any session still in it; unlike the
    /// drop on [`Drop`], reports a failure.
    pub async fn drop_database(mut self) -> anyhow::Result<()> {
        self.pool.close().await;
        let name = std::mem::take(&mut self.name);
        self.server
            .drop_database(&name)
            .await
            .with_context(|| format!("dropping {name}"))
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.name.is_empty() {
            return;
        }
        let server = self.server.clone();
        let name = self.name.clone();
        // Drop is synchronous and may run on a runtime thread, where blocking on the runtime
        // panics: use a thread with its own runtime and wait for it.
        let outcome = std::thread::spawn(move || -> anyhow::Result<()> {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(server.drop_database(&name))
        })
        .join();
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(err)) => eprintln!(
                "testkit: could not drop test database {}: {err:#}",
                self.name
            ),
            Err(_) => eprintln!("testkit: dropping test database {} panicked", self.name),
        }
    }
}

/// Drops `tgt_*` databases older than [`LEFTOVER_AGE`]; best effort, as concurrent tests sweep too.
async fn sweep_leftovers(admin: &mut PgConnection) {
    let names: Vec<String> = match sqlx::query_scalar(
        "SELECT datname::text FROM pg_database WHERE datname LIKE 'tgt\\_%'",
    )
    .fetch_all(&mut *admin)
    .await
    {
        Ok(names) => names,
        Err(_) => return,
    };
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    for name in names {
        let created = name
            .strip_prefix(NAME_PREFIX)
            .and_then(|rest| rest.split('_').next())
            .and_then(|secs| secs.parse::<u64>().ok());
        let Some(created) = created else { continue };
        if now.saturating_sub(created) > LEFTOVER_AGE.as_secs() {
            let dropped = sqlx::query(AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
            )))
            .execute(&mut *admin)
            .await;
            if dropped.is_ok() {
                eprintln!("testkit: dropped leftover test database {name}");
            }
        }
    }
}

/// `admin_url` with its database replaced by `name`, over the Unix socket in `socket_dir` if
/// given.
fn database_url(admin_url: &str, name: &str, socket_dir: Option<&str>) -> anyhow::Result<String> {
    let mut url =
        url::Url::parse(admin_url).context("not a URL (expected postgres://user@host:port/db)")?;
    url.set_path(&format!("/{name}"));
    if let Some(dir) = socket_dir {
        url.query_pairs_mut().append_pair("host", dir);
    }
    Ok(url.into())
}

/// How a [`PrivateCluster`] is stopped (PostgreSQL's shutdown modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// SIGINT: roll back open transactions, disconnect clients, checkpoint, exit.
    Fast,
    /// SIGQUIT: exit at once without a checkpoint, like a crash; recovery runs on the next start.
    Immediate,
}

/// A PostgreSQL cluster of its own, for tests that stop, crash or restart the server.
#[derive(Debug)]
pub struct PrivateCluster {
    // Declared before `dir` so the postmaster is killed before its directory is removed.
    postmaster: tokio::sync::Mutex<Option<ChildProcess>>,
    dir: tempfile::TempDir,
    port: u16,
    bindir: PathBuf,
    run_as: Option<(u32, u32)>,
}

impl PrivateCluster {
    /// Runs `initdb` into a temporary directory and starts the cluster on a free port.
    pub async fn start() -> anyhow::Result<Self> {
        let bindir = pg_bindir()?;
        let dir = tempfile::Builder::new()
            .prefix("tgt-pg-")
            .tempdir()
            .context("creating a temporary directory for a private cluster")?;
        // initdb refuses to run as root, so root runs the cluster as the `postgres` OS user.
        let run_as = if nix::unistd::geteuid().is_root() {
            let user = nix::unistd::User::from_name("postgres")
                .context("looking up the postgres OS user")?
                .context(
                    "running as root, but there is no `postgres` OS user to run PostgreSQL as",
                )?;
            std::os::unix::fs::chown(dir.path(), Some(user.uid.as_raw()), Some(user.gid.as_raw()))
                .with_context(|| format!("chowning {} to postgres", dir.path().display()))?;
            Some((user.uid.as_raw(), user.gid.as_raw()))
        } else {
            None
        };
        let data = dir.path().join("data");
        let mut initdb = Command::new(bindir.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-locale"])
            .args(["--no-sync", "--no-instructions"]);
        let output = as_owner(initdb, dir.path(), run_as)
            .output()
            .context("running initdb")?;
        if !output.status.success() {
            bail!(
                "initdb failed ({}):\n{}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let socket_dir = dir.path().display().to_string();
        append_conf(
            &data,
            &format!(
                "listen_addresses = '127.0.0.1'\n\
                 unix_socket_directories = '{socket_dir}'\n\
                 fsync = off\n\
                 shared_buffers = 16MB\n\
                 max_connections = 100\n\
                 logging_collector = off\n"
            ),
        )?;

        let mut cluster = Self {
            postmaster: tokio::sync::Mutex::new(None),
            dir,
            port: 0,
            bindir,
            run_as,
        };
        // Another process may take the free port before the postmaster binds it: try a few.
        let mut last_error = None;
        for _ in 0..3 {
            cluster.port = free_port()?;
            append_conf(&data, &format!("port = {}\n", cluster.port))?;
            match cluster.start_again().await {
                Ok(()) => return Ok(cluster),
                Err(err) => last_error = Some(err),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("private cluster did not start")))
    }

    /// A URL for database `db` (the cluster starts with `postgres`; create others yourself).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// The TCP port the cluster listens on; stable across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts the stopped cluster again on its port and waits until it accepts connections.
    /// (Named apart from the constructor [`PrivateCluster::start`], which Rust cannot overload.)
    pub async fn start_again(&self) -> anyhow::Result<()> {
        let mut postmaster = self.postmaster.lock().await;
        if postmaster.is_some() {
            bail!("private cluster on port {} is already running", self.port);
        }
        let mut cmd = Command::new(self.bindir.join("postgres"));
        cmd.arg("-D").arg(self.data_dir());
        let child = ChildProcess::spawn(
            as_owner(cmd, self.dir.path(), self.run_as),
            &format!("postgres-{}", self.port),
            CLUSTER_HARD_TIMEOUT,
        )?;
        child
            .wait_for_line(
                |line| line.contains("database system is ready to accept connections"),
                CLUSTER_START_TIMEOUT,
            )
            .await
            .with_context(|| format!("starting the private cluster on port {}", self.port))?;
        *postmaster = Some(child);
        Ok(())
    }

    /// Stops the cluster and waits until the postmaster has exited.
    pub async fn stop(&self, mode: StopMode) -> anyhow::Result<()> {
        let mut postmaster = self.postmaster.lock().await;
        let Some(child) = postmaster.take() else {
            bail!("private cluster on port {} is not running", self.port);
        };
        // Only the postmaster is signalled, as pg_ctl does: a SIGINT to the backends would cancel
        // their queries instead of terminating their sessions.
        child.signal(match mode {
            StopMode::Fast => Signal::SIGINT,
            StopMode::Immediate => Signal::SIGQUIT,
        })?;
        child
            .wait(CLUSTER_STOP_TIMEOUT)
            .await
            .with_context(|| format!("stopping the private cluster ({mode:?})"))?;
        Ok(())
    }

    /// Stops the cluster with `mode` and starts it again on the same port.
    pub async fn restart(&self, mode: StopMode) -> anyhow::Result<()> {
        self.stop(mode).await?;
        self.start_again().await
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        if let Some(child) = self.postmaster.get_mut().take() {
            // An immediate shutdown releases shared memory; SIGKILL (the ChildProcess drop) would
            // leak a System V segment per test.
            if child.signal(Signal::SIGQUIT).is_ok() {
                let deadline = std::time::Instant::now() + Duration::from_secs(5);
                while child.exit_status().is_none() && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            drop(child);
        }
    }
}

fn as_owner(mut cmd: Command, dir: &Path, run_as: Option<(u32, u32)>) -> Command {
    use std::os::unix::process::CommandExt;
    // The caller's working directory may not be readable by the postgres user.
    cmd.current_dir(dir);
    if let Some((uid, gid)) = run_as {
        // std also clears root's supplementary groups when changing uid as root.
        cmd.uid(uid).gid(gid);
    }
    cmd
}

fn append_conf(data: &Path, settings: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let path = data.join("postgresql.conf");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .and_then(|mut file| file.write_all(settings.as_bytes()))
        .with_context(|| format!("appending to {}", path.display()))
}

/// The directory holding `initdb` and `postgres`.
fn pg_bindir() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("TGINGEST_PG_BINDIR") {
        return Ok(PathBuf::from(dir));
    }
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output()
        && output.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    candidates.sort();
    match candidates.pop() {
        Some((_, dir)) => Ok(dir),
        None => bail!(
            "no PostgreSQL server binaries (initdb) found: set TGINGEST_PG_BINDIR, put pg_config on PATH, or install postgresql"
        ),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_database_url_swaps_only_the_database_and_keeps_credentials_and_options() {
        let url = database_url(
            "postgres://app:s3cret@db.internal:6543/postgres?sslmode=require",
            "tgt_1_abc",
            None,
        )
        .unwrap();
        assert_eq!(
            url,
            "postgres://app:s3cret@db.internal:6543/tgt_1_abc?sslmode=require"
        );
    }

    #[test]
    fn a_server_url_without_a_database_still_gets_one() {
        let url = database_url("postgres://postgres@127.0.0.1:5432", "tgt_1_abc", None).unwrap();
        assert_eq!(url, "postgres://postgres@127.0.0.1:5432/tgt_1_abc");
    }
}
