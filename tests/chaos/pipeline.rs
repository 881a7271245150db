//! The whole pipeline as real processes, for the fault matrix: the simulated Bot API (in this
//! process) → `tgingest producer` → a Kafka-protocol broker → N `tgingest consumer` processes →
//! PostgreSQL, plus the feeder that generates traffic and remembers what it generated.
//!
//! Guarantees: every child process is killed when the [`Pipeline`] is dropped (testkit's
//! `ChildProcess`), processes the fault driver kills are kept (retired) so their logs can still be
//! searched for secrets, and [`Pipeline::settle`] returns only when Telegram has nothing left to
//! deliver and every partition's stored offset has reached its log end (or fails with the state
//! it stopped at).

use std::collections::BTreeSet;
use std::process::Command;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use botsim::traffic::{TrafficConfig, TrafficGenerator};
use botsim::{AllowedUpdates, BotApi, BotApiConfig, BotInfo, KNOWN_KINDS, WebhookConfig};
use nix::sys::signal::Signal;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use testkit::{BrokerKind, ChildProcess, PrivateCluster, TestBroker, TestDb};

use crate::special::{Expect, Special};

/// How long any child may live: the largest run stays well below it.
const HARD_TIMEOUT: Duration = Duration::from_secs(1_800);
/// An unknown update kind a newer Telegram could send (schema drift).
pub const FUTURE_KIND: &str = "chaos_future_kind";

/// How the producer receives updates.
#[derive(Debug, Clone, Copy)]
pub enum Intake {
    /// getUpdates long polling.
    Polling,
    /// Webhook deliveries, registered by the operator (the test) with the default
    /// `allowed_updates`, so a kind newer than this codebase can arrive.
    Webhook {
        /// Chance that a delivered update is delivered again.
        duplicate_probability: f64,
        /// Deliver pending updates in random order.
        shuffle: bool,
    },
}

/// Which PostgreSQL the pipeline writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Database {
    /// A fresh database on the shared server.
    Shared,
    /// A private cluster the test may crash and restart.
    Private,
}

/// What a scenario runs.
#[derive(Debug, Clone)]
pub struct Spec {
    pub broker: BrokerKind,
    pub partitions: i32,
    pub consumers: usize,
    pub bots: usize,
    pub intake: Intake,
    pub database: Database,
    /// Extra environment for every consumer process.
    pub consumer_env: Vec<(&'static str, String)>,
    /// Extra environment for every producer process.
    pub producer_env: Vec<(&'static str, String)>,
    /// Run the consumers as a role that can write the tables but run no DDL.
    pub least_privilege: bool,
}

impl Spec {
    pub fn new(broker: BrokerKind, partitions: i32) -> Self {
        Self {
            broker,
            partitions,
            consumers: 2,
            bots: 2,
            intake: Intake::Polling,
            database: Database::Shared,
            consumer_env: Vec::new(),
            producer_env: Vec::new(),
            least_privilege: false,
        }
    }
}

/// One generated update and the effect it must have.
#[derive(Debug, Clone)]
pub struct Generated {
    pub bot_id: i64,
    /// `None` for bytes without an integer `update_id`.
    pub update_id: Option<i64>,
    pub raw: Arc<[u8]>,
    pub expect: Expect,
    /// The bad or unusual input this is, if any.
    pub special: Option<Special>,
}

/// A bot of the simulated Bot API and its traffic.
pub struct Bot {
    pub token: String,
    pub info: BotInfo,
    traffic: Mutex<TrafficGenerator>,
}

enum Db {
    Shared(TestDb),
    Private {
        cluster: PrivateCluster,
        url: String,
        pool: PgPool,
    },
}

/// A running pipeline.
pub struct Pipeline {
    pub spec: Spec,
    pub broker: TestBroker,
    pub topic: String,
    pub group: String,
    pub api: BotApi,
    pub bots: Vec<Bot>,
    db: Db,
    /// The URL the consumers use (the least-privilege role's, when asked for).
    consumer_url: String,
    /// The role's password, which no log may contain.
    role_password: Option<String>,
    role: Option<String>,
    webhook_secret: String,
    webhook_port: u16,
    pub consumers: Mutex<Vec<Arc<ChildProcess>>>,
    pub producers: Mutex<Vec<Arc<ChildProcess>>>,
    retired: Mutex<Vec<Arc<ChildProcess>>>,
    generated: Mutex<Vec<Generated>>,
    spawned: AtomicUsize,
    pub feeding_done: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Pipeline {
    /// Starts the database, broker, topic, simulated Bot API, one producer and the consumers, and
    /// returns once every consumer logged that it started.
    pub async fn start(spec: Spec, scale: &crate::Scale) -> anyhow::Result<Self> {
        let db = match spec.database {
            Database::Shared => Db::Shared(TestDb::create().await?),
            Database::Private => {
                let cluster = PrivateCluster::start().await?;
                let admin = PgPool::connect(&cluster.url("postgres")).await?;
                sqlx::query("CREATE DATABASE chaos").execute(&admin).await?;
                admin.close().await;
                let url = cluster.url("chaos");
                migrate(&url, None)?;
                let pool = PgPoolOptions::new()
                    .max_connections(4)
                    .connect(&url)
                    .await?;
                Db::Private { cluster, url, pool }
            }
        };
        let owner_url = match &db {
            Db::Shared(db) => db.url().to_owned(),
            Db::Private { url, .. } => url.clone(),
        };
        let (consumer_url, role, role_password) = if spec.least_privilege {
            let (url, role, password) = least_privilege_role(db_pool(&db), &owner_url).await?;
            (url, Some(role), Some(password))
        } else {
            (owner_url, None, None)
        };

        let broker = TestBroker::start_with(spec.broker).await?;
        let topic = broker.unique_topic("chaos");
        broker.create_topic(&topic, spec.partitions).await?;
        let group = broker.unique_group("chaos-sink");

        let webhook = match spec.intake {
            Intake::Polling => WebhookConfig::default(),
            Intake::Webhook {
                duplicate_probability,
                shuffle,
            } => WebhookConfig {
                duplicate_probability,
                shuffle,
                retry_base: Duration::from_millis(200),
                retry_max: Duration::from_secs(2),
                ..WebhookConfig::default()
            },
        };
        let api = BotApi::start(BotApiConfig {
            seed: 5,
            webhook,
            ..BotApiConfig::default()
        })
        .await?;
        let mut allowed: BTreeSet<String> = KNOWN_KINDS.iter().map(|k| k.to_string()).collect();
        allowed.insert(FUTURE_KIND.to_owned());
        let bots: Vec<Bot> = (0..spec.bots)
            .map(|i| {
                let id = 7_100_000_101 + i as i64;
                let info = BotInfo::new(id, format!("chaos_{i}_bot"), format!("chaos {i}"));
                let token = format!("{id}:AAH{}", testkit::random_suffix(32));
                api.add_bot(&token, info.clone());
                api.set_allowed_updates(&token, AllowedUpdates::Only(allowed.clone()))
                    .expect("bot registered");
                let traffic = TrafficGenerator::new(
                    11 + i as u64,
                    TrafficConfig {
                        groups: scale.groups,
                        users: scale.groups * 8,
                        private_chats: scale.groups,
                        bot: info.clone(),
                        first_update_id: 300_000_000 + 50_000_000 * i as i64,
                        ..TrafficConfig::default()
                    },
                );
                Bot {
                    token,
                    info,
                    traffic: Mutex::new(traffic),
                }
            })
            .collect();

        let pipeline = Self {
            spec,
            broker,
            topic,
            group,
            api,
            bots,
            db,
            consumer_url,
            role_password,
            role,
            webhook_secret: format!("hook-{}", testkit::random_suffix(24)),
            webhook_port: testkit::free_port()?,
            consumers: Mutex::new(Vec::new()),
            producers: Mutex::new(Vec::new()),
            retired: Mutex::new(Vec::new()),
            generated: Mutex::new(Vec::new()),
            spawned: AtomicUsize::new(0),
            feeding_done: AtomicBool::new(false),
        };
        let producer = pipeline.spawn_producer().await?;
        if let Intake::Webhook { .. } = pipeline.spec.intake {
            pipeline.register_webhooks().await?;
        }
        lock(&pipeline.producers).push(producer);
        for _ in 0..pipeline.spec.consumers {
            pipeline.add_consumer().await?;
        }
        Ok(pipeline)
    }

    /// A pool on the pipeline's database (as its owner).
    pub fn pool(&self) -> &PgPool {
        db_pool(&self.db)
    }

    /// The private cluster, for scenarios that crash PostgreSQL.
    pub fn cluster(&self) -> Option<&PrivateCluster> {
        match &self.db {
            Db::Private { cluster, .. } => Some(cluster),
            Db::Shared(_) => None,
        }
    }

    /// The name of the database the pipeline writes to.
    pub async fn database_name(&self) -> anyhow::Result<String> {
        Ok(sqlx::query_scalar("SELECT current_database()::text")
            .fetch_one(self.pool())
            .await?)
    }

    fn name(&self, role: &str) -> String {
        format!("{role}-{}", self.spawned.fetch_add(1, Ordering::Relaxed))
    }

    /// Spawns a producer process; in webhook mode, waits until its endpoint listens.
    async fn spawn_producer(&self) -> anyhow::Result<Arc<ChildProcess>> {
        let tokens: Vec<&str> = self.bots.iter().map(|b| b.token.as_str()).collect();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tgingest"));
        cmd.arg("producer")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("TELEGRAM_BOT_TOKENS", tokens.join(","))
            .env("TELEGRAM_API_URL", self.api.base_url())
            .env("TELEGRAM_POLL_TIMEOUT", "1s")
            .env("KAFKA_BROKERS", self.broker.bootstrap_servers())
            .env("KAFKA_TOPIC", &self.topic)
            .env("ADMIN_LISTEN", "off")
            .env("RUST_LOG", "info");
        pass_security_env(&mut cmd);
        if let Intake::Webhook { .. } = self.spec.intake {
            cmd.env("PRODUCER_MODE", "webhook")
                .env("WEBHOOK_LISTEN", format!("127.0.0.1:{}", self.webhook_port))
                .env("TELEGRAM_WEBHOOK_SECRET", &self.webhook_secret);
        }
        for (key, value) in &self.spec.producer_env {
            cmd.env(key, value);
        }
        let child = Arc::new(ChildProcess::spawn(
            cmd,
            &self.name("producer"),
            HARD_TIMEOUT,
        )?);
        if let Intake::Webhook { .. } = self.spec.intake {
            child
                .wait_for_line(
                    |l| l.contains("webhook endpoint listening"),
                    Duration::from_secs(30),
                )
                .await?;
        }
        Ok(child)
    }

    /// Registers each bot's webhook with the simulated Bot API as an operator would (the producer
    /// only accepts https public URLs; this one is plain http on loopback).
    async fn register_webhooks(&self) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        for bot in &self.bots {
            let url = format!(
                "http://127.0.0.1:{}/webhook/{}",
                self.webhook_port, bot.info.id
            );
            let reply: serde_json::Value = http
                .post(format!(
                    "{}/bot{}/setWebhook",
                    self.api.base_url(),
                    bot.token
                ))
                .json(&serde_json::json!({
                    "url": url,
                    "secret_token": self.webhook_secret,
                    "max_connections": 40,
                }))
                .send()
                .await
                .map_err(reqwest::Error::without_url)?
                .json()
                .await
                .map_err(reqwest::Error::without_url)?;
            if reply["ok"] != true {
                bail!("setWebhook was refused: {reply}");
            }
        }
        Ok(())
    }

    /// Replaces the producer: it must already be dead (killed or exited).
    pub async fn restart_producer(&self, index: usize) -> anyhow::Result<()> {
        let fresh = self.spawn_producer().await?;
        let old = std::mem::replace(&mut lock(&self.producers)[index], fresh);
        lock(&self.retired).push(old);
        Ok(())
    }

    fn consumer_command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tgingest"));
        cmd.arg("consumer")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", &self.consumer_url)
            .env("KAFKA_BROKERS", self.broker.bootstrap_servers())
            .env("KAFKA_TOPIC", &self.topic)
            .env("KAFKA_GROUP_ID", &self.group)
            .env("KAFKA_SESSION_TIMEOUT", "6s")
            .env("CONSUMER_BATCH_MAX_RECORDS", "250")
            .env("CONSUMER_QUEUE_KBYTES_PER_PARTITION", "1024")
            .env("ADMIN_LISTEN", "off")
            .env("RUST_LOG", "consumer=info,tgingest=info,warn");
        pass_security_env(&mut cmd);
        for (key, value) in &self.spec.consumer_env {
            cmd.env(key, value);
        }
        cmd
    }

    /// Spawns a consumer process and waits until it logged its start.
    async fn spawn_consumer(&self) -> anyhow::Result<Arc<ChildProcess>> {
        let child = Arc::new(ChildProcess::spawn(
            self.consumer_command(),
            &self.name("consumer"),
            HARD_TIMEOUT,
        )?);
        child
            .wait_for_line(
                |l| l.contains("starting") && l.contains("consumer"),
                Duration::from_secs(30),
            )
            .await?;
        Ok(child)
    }

    /// Starts one more consumer process and waits until it logged its start.
    pub async fn add_consumer(&self) -> anyhow::Result<Arc<ChildProcess>> {
        let child = self.spawn_consumer().await?;
        lock(&self.consumers).push(child.clone());
        Ok(child)
    }

    /// The live consumer processes.
    pub fn live_consumers(&self) -> Vec<Arc<ChildProcess>> {
        lock(&self.consumers).clone()
    }

    /// SIGKILLs consumer `index` and starts a replacement in its slot.
    pub async fn kill_and_replace_consumer(&self, index: usize) -> anyhow::Result<()> {
        let victim = lock(&self.consumers)[index].clone();
        victim.signal(Signal::SIGKILL)?;
        victim.wait(Duration::from_secs(10)).await?;
        let fresh = self.spawn_consumer().await?;
        let old = std::mem::replace(&mut lock(&self.consumers)[index], fresh);
        lock(&self.retired).push(old);
        Ok(())
    }

    /// Stops consumer `index` with SIGTERM (it must drain and exit 0) and removes it.
    pub async fn remove_consumer(&self, index: usize) -> anyhow::Result<()> {
        let victim = lock(&self.consumers).remove(index);
        victim.signal(Signal::SIGTERM)?;
        let status = victim.wait(Duration::from_secs(45)).await?;
        lock(&self.retired).push(victim.clone());
        if !status.success() {
            bail!(
                "a consumer stopped by SIGTERM exited {status}: {}",
                victim.report()
            );
        }
        Ok(())
    }

    /// Pushes `total` updates into the simulated Bot API at `rate` per second, round-robin over
    /// the bots; `special(i)` may replace update `i` by a bad or unusual one.
    pub async fn feed(
        &self,
        total: usize,
        rate: u32,
        special: impl Fn(usize) -> Option<Special>,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut sent = 0;
        while sent < total {
            let due = ((started.elapsed().as_secs_f64() * f64::from(rate)) as usize + 1).min(total);
            while sent < due {
                let bot = &self.bots[sent % self.bots.len()];
                let normal = lock(&bot.traffic).next_update();
                let generated = match special(sent) {
                    Some(kind) => kind.build(bot.info.id, &normal),
                    None => Generated {
                        bot_id: bot.info.id,
                        update_id: crate::special::update_id_of(&normal),
                        raw: normal.into(),
                        expect: Expect::Rows,
                        special: None,
                    },
                };
                if self.api.push_update(&bot.token, generated.raw.to_vec())? {
                    lock(&self.generated).push(generated);
                }
                sent += 1;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.feeding_done.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Everything fed so far.
    pub fn generated(&self) -> Vec<Generated> {
        lock(&self.generated).clone()
    }

    /// Updates the simulated Bot API still holds (unconfirmed or undelivered), over all bots.
    pub fn pending(&self) -> usize {
        self.bots
            .iter()
            .map(|b| self.api.pending_update_count(&b.token).unwrap_or(0))
            .sum()
    }

    /// Each bot's confirmed getUpdates offset.
    pub fn confirmed_offsets(&self) -> Vec<Option<i64>> {
        self.bots
            .iter()
            .map(|b| self.api.confirmed_offset(&b.token))
            .collect()
    }

    /// (low, high) watermarks of every partition.
    pub async fn watermarks(&self) -> anyhow::Result<Vec<(i64, i64)>> {
        watermarks(
            self.broker.client_config(),
            &self.topic,
            self.spec.partitions,
        )
        .await
    }

    /// Stored `next_offset` per partition (`None` without a row).
    pub async fn stored_offsets(&self) -> anyhow::Result<Vec<Option<i64>>> {
        let rows: Vec<(i32, i64)> = sqlx::query_as(
            "SELECT partition, next_offset FROM consumer_offsets WHERE group_id = $1 AND topic = $2",
        )
        .bind(&self.group)
        .bind(&self.topic)
        .fetch_all(self.pool())
        .await?;
        let mut out = vec![None; self.spec.partitions as usize];
        for (p, o) in rows {
            out[p as usize] = Some(o);
        }
        Ok(out)
    }

    /// Whether Telegram has nothing pending and every stored offset is at its log end; `Err`
    /// says where it stands.
    pub async fn settled(&self) -> Result<(), String> {
        let pending = self.pending();
        if pending > 0 {
            return Err(format!(
                "Telegram still holds {pending} undelivered updates"
            ));
        }
        let ends = self.watermarks().await.map_err(|e| format!("{e:#}"))?;
        let stored = self.stored_offsets().await.map_err(|e| format!("{e:#}"))?;
        let done = ends
            .iter()
            .zip(&stored)
            .all(|((_, high), at)| at.unwrap_or(0) == *high);
        if done {
            Ok(())
        } else {
            Err(format!(
                "stored offsets {stored:?} are not at the log ends {ends:?}"
            ))
        }
    }

    /// Waits until [`Pipeline::settled`].
    pub async fn settle(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.settled().await {
                Ok(()) => return Ok(()),
                Err(state) if Instant::now() > deadline => {
                    bail!("not settled within {timeout:?}: {state}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
            }
        }
    }

    /// SIGTERMs every live process; each must drain and exit 0.
    pub async fn stop(&self) -> anyhow::Result<()> {
        let live: Vec<Arc<ChildProcess>> = lock(&self.producers)
            .iter()
            .chain(lock(&self.consumers).iter())
            .cloned()
            .collect();
        for child in &live {
            child.signal(Signal::SIGTERM)?;
        }
        for child in &live {
            let status = child.wait(Duration::from_secs(60)).await?;
            if !status.success() {
                bail!(
                    "{} exited {status} on SIGTERM: {}",
                    child.name(),
                    child.report()
                );
            }
        }
        Ok(())
    }

    /// Peak resident memory (VmHWM, bytes) of every live consumer process.
    pub fn consumer_peak_rss(&self) -> Vec<u64> {
        self.live_consumers()
            .iter()
            .filter_map(|c| {
                let status = std::fs::read_to_string(format!("/proc/{}/status", c.pid())).ok()?;
                let kib: u64 = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))?
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .ok()?;
                Some(kib * 1024)
            })
            .collect()
    }

    /// Secrets that must appear in no log: bot tokens, the webhook secret, the role's password.
    pub fn secrets(&self) -> Vec<String> {
        let mut secrets: Vec<String> = self.bots.iter().map(|b| b.token.clone()).collect();
        // The part after the colon is the secret; the bot id before it is public.
        secrets.extend(
            self.bots
                .iter()
                .filter_map(|b| b.token.split_once(':').map(|(_, s)| s.to_owned())),
        );
        secrets.push(self.webhook_secret.clone());
        secrets.extend(self.role_password.clone());
        secrets
    }

    /// Every process this pipeline ran (live and retired): (name, output).
    pub fn all_logs(&self) -> Vec<(String, String)> {
        lock(&self.producers)
            .iter()
            .chain(lock(&self.consumers).iter())
            .chain(lock(&self.retired).iter())
            .map(|c| (c.name().to_owned(), c.output_text()))
            .collect()
    }

    /// The role the consumers log in as, when the scenario asked for least privilege.
    pub fn role(&self) -> Option<&str> {
        self.role.as_deref()
    }

    /// Drops the least-privilege role (roles outlive databases on the shared server).
    pub async fn cleanup(self) {
        let role = self.role.clone();
        let admin_url = testkit::pg::server_url();
        let shared = matches!(self.db, Db::Shared(_));
        drop(self);
        if let (Some(role), true) = (role, shared) {
            // The database was dropped with the pipeline; the role owns nothing else.
            if let Ok(admin) = PgPool::connect(&admin_url).await {
                let drop_role = format!("DROP ROLE IF EXISTS \"{role}\"");
                let _ = sqlx::query(sqlx::AssertSqlSafe(drop_role))
                    .execute(&admin)
                    .await;
                admin.close().await;
            }
        }
    }
}

/// An external broker's security settings reach the children as the same variables the test
/// read them from (the children's environment is otherwise cleared).
fn pass_security_env(cmd: &mut Command) {
    for (var, _) in testkit::kafka::SECURITY_ENV {
        if let Some(value) = std::env::var_os(var) {
            cmd.env(var, value);
        }
    }
}

fn db_pool(db: &Db) -> &PgPool {
    match db {
        Db::Shared(db) => db.pool(),
        Db::Private { pool, .. } => pool,
    }
}

/// Runs `tgingest migrate` on `url`, granting `consumer_role` when given.
fn migrate(url: &str, consumer_role: Option<&str>) -> anyhow::Result<()> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tgingest"));
    command
        .arg("migrate")
        .env("DATABASE_URL", url)
        .env_remove("DATABASE_URL_FILE")
        .env_remove("CONSUMER_ROLE");
    if let Some(role) = consumer_role {
        command.env("CONSUMER_ROLE", role);
    }
    let out = command.output().context("running tgingest migrate")?;
    if !out.status.success() {
        bail!(
            "tgingest migrate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Creates a login role and has `tgingest migrate` grant it what the consumer needs (the
/// recommended setup: docs/OPERATIONS.md, "Database roles"), then proves it cannot create, alter
/// or drop anything; returns (its URL with a password, its name, the password).
async fn least_privilege_role(
    pool: &PgPool,
    owner_url: &str,
) -> anyhow::Result<(String, String, String)> {
    let role = format!("tgingest_chaos_writer_{}", testkit::random_suffix(8));
    let password = format!("pw{}", testkit::random_suffix(20));
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'"
    )))
    .execute(pool)
    .await
    .context("creating the least-privilege role")?;
    migrate(owner_url, Some(&role))?;
    let mut url = url::Url::parse(owner_url)?;
    url.set_username(&role)
        .map_err(|()| anyhow::anyhow!("bad URL"))?;
    url.set_password(Some(&password))
        .map_err(|()| anyhow::anyhow!("bad URL"))?;
    // The role's URL must still connect: prove it, and prove it cannot run DDL.
    let options = PgConnectOptions::from_str(url.as_str())?;
    let as_role = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    let ddl = sqlx::query("CREATE TABLE chaos_ddl_probe (x int)")
        .execute(&as_role)
        .await;
    let temp = sqlx::query("CREATE TEMP TABLE chaos_temp_probe (x int)")
        .execute(&as_role)
        .await;
    as_role.close().await;
    match (ddl, temp) {
        (Err(sqlx::Error::Database(a)), Err(sqlx::Error::Database(b)))
            if a.code().as_deref() == Some("42501") && b.code().as_deref() == Some("42501") => {}
        other => bail!("the least-privilege role could run DDL: {other:?}"),
    }
    Ok((url.into(), role, password))
}

/// (low, high) watermarks of `partitions` partitions of `topic`.
pub async fn watermarks(
    mut config: ClientConfig,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<Vec<(i64, i64)>> {
    config.set(
        "group.id",
        format!("chaos-watermarks-{}", testkit::random_suffix(8)),
    );
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = config.create()?;
        (0..partitions)
            .map(|p| {
                client
                    .fetch_watermarks(&topic, p, Duration::from_secs(10))
                    .with_context(|| format!("watermarks of partition {p}"))
            })
            .collect()
    })
    .await?
}
