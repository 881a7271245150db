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
use testkit::{BrokerKind, ChildProcess, PrivateCluster, TcpProxy, TestBroker, TestDb};

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
    /// The consumers reach PostgreSQL through a [`TcpProxy`] of the test ([`Pipeline::proxy`]),
    /// which can freeze their connections.
    pub database_proxy: bool,
    /// The feed stops after this many updates until the driver calls [`Pipeline::release_feed`],
    /// so a fault that must land during traffic never races the traffic's end.
    pub feed_hold_after: Option<usize>,
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
            database_proxy: false,
            feed_hold_after: None,
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
    /// The URL the consumers use (the least-privilege role's, when asked for; through the proxy,
    /// when asked for).
    consumer_url: String,
    /// Between the consumers and PostgreSQL, when the spec asks for it.
    pub proxy: Option<TcpProxy>,
    /// The role's password, which no log may contain.
    role_password: Option<String>,
    role: Option<String>,
    webhook_secret: String,
    webhook_port: u16,
    pub consumers: Mutex<Vec<Arc<ChildProcess>>>,
    pub producers: Mutex<Vec<Arc<ChildProcess>>>,
    retired: Mutex<Vec<Arc<ChildProcess>>>,
    /// The topic's first log, read back before a scenario deleted and recreated the topic.
    earlier_log: Mutex<Vec<testkit::kafka::ConsumedRecord>>,
    generated: Mutex<Vec<Generated>>,
    spawned: AtomicUsize,
    pub feeding_done: AtomicBool,
    /// Set once the feed reached [`Spec::feed_hold_after`] and waits.
    pub feed_held: AtomicBool,
    feed_release: tokio::sync::Notify,
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
        let (consumer_url, proxy) = if spec.database_proxy {
            let (url, proxy) = through_proxy(&consumer_url).await?;
            (url, Some(proxy))
        } else {
            (consumer_url, None)
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
            proxy,
            role_password,
            role,
            webhook_secret: format!("hook-{}", testkit::random_suffix(24)),
            webhook_port: testkit::free_port()?,
            consumers: Mutex::new(Vec::new()),
            producers: Mutex::new(Vec::new()),
            retired: Mutex::new(Vec::new()),
            earlier_log: Mutex::new(Vec::new()),
            generated: Mutex::new(Vec::new()),
            spawned: AtomicUsize::new(0),
            feeding_done: AtomicBool::new(false),
            feed_held: AtomicBool::new(false),
            feed_release: tokio::sync::Notify::new(),
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

    /// The producer's webhook URL for `bot_id`, and the secret Telegram sends with each POST.
    pub fn webhook_target(&self, bot_id: i64) -> (String, &str) {
        (
            format!("http://127.0.0.1:{}/webhook/{bot_id}", self.webhook_port),
            &self.webhook_secret,
        )
    }

    /// Registers each bot's webhook with the simulated Bot API as an operator would (the producer
    /// only accepts https public URLs; this one is plain http on loopback).
    pub async fn register_webhooks(&self) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        for bot in &self.bots {
            let (url, _) = self.webhook_target(bot.info.id);
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

    /// A consumer process's command; its PostgreSQL sessions carry `application_name` (libpq's
    /// PGAPPNAME, which the binary honours) `tgingest-<name>`, so a scenario can see whether that
    /// very process has a transaction open.
    fn consumer_command(&self, name: &str) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tgingest"));
        cmd.arg("consumer")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", &self.consumer_url)
            .env("PGAPPNAME", format!("tgingest-{name}"))
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
        let name = self.name("consumer");
        let child = Arc::new(ChildProcess::spawn(
            self.consumer_command(&name),
            &name,
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

    /// The idle term of the consumer memory formula for the binary under test, for a consumer
    /// holding `partitions` partitions: a consumer process of a group of its own, on an empty
    /// topic of its own with that many partitions (as `tgingest-bench memory` measures README's
    /// "idle (empty topic)" row), starts a worker for each and is left idle for 2 s; returns its
    /// peak resident memory (VmHWM, bytes), then stops it (it must exit 0).
    pub async fn idle_consumer_peak_rss(&self, partitions: i32) -> anyhow::Result<u64> {
        let topic = self.broker.unique_topic("chaos-idle");
        self.broker.create_topic(&topic, partitions).await?;
        let name = self.name("consumer-idle");
        let mut cmd = self.consumer_command(&name);
        cmd.env("KAFKA_TOPIC", &topic)
            .env("KAFKA_GROUP_ID", self.broker.unique_group("chaos-idle"));
        let child = Arc::new(ChildProcess::spawn(cmd, &name, HARD_TIMEOUT)?);
        lock(&self.retired).push(child.clone());
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.output_text().matches("worker started").count() < partitions as usize {
            if Instant::now() > deadline {
                bail!(
                    "the idle consumer did not start {partitions} workers: {}",
                    child.report()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let peak = memory_of(&child, "VmHWM:").context("reading the idle consumer's VmHWM")?;
        child.signal(Signal::SIGTERM)?;
        let status = child.wait(Duration::from_secs(30)).await?;
        if !status.success() {
            bail!("the idle consumer exited {status}: {}", child.report());
        }
        Ok(peak)
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

    /// Whether consumer `index` has a transaction with a transaction id open now (a batch, or an
    /// ownership statement): active or idle in transaction, in `pg_stat_activity`.
    pub async fn consumer_in_transaction(&self, index: usize) -> anyhow::Result<bool> {
        let name = format!("tgingest-{}", lock(&self.consumers)[index].name());
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity \
              WHERE application_name = $1 AND backend_xid IS NOT NULL \
                AND state IN ('active', 'idle in transaction'))",
        )
        .bind(name)
        .fetch_one(self.pool())
        .await?)
    }

    /// The value of counter `metric` on `child`'s `/metrics` (0 when not yet exported): the
    /// process must run with `ADMIN_LISTEN` on (for example `127.0.0.1:0`); its address is read
    /// from the "admin server listening" line it logged.
    pub async fn metric(child: &ChildProcess, metric: &str) -> anyhow::Result<f64> {
        let addr = Self::admin_address(child)?;
        let body = reqwest::get(format!("http://{addr}/metrics"))
            .await
            .map_err(reqwest::Error::without_url)?
            .text()
            .await
            .map_err(reqwest::Error::without_url)?;
        Ok(body
            .lines()
            .filter(|l| {
                l.strip_prefix(metric)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    /// The address of `child`'s admin server (`/readyz`, `/metrics`): the process must run with
    /// `ADMIN_LISTEN` on; read from the "admin server listening" line it logged.
    pub fn admin_address(child: &ChildProcess) -> anyhow::Result<String> {
        let log = child.output_text();
        Ok(log
            .lines()
            .find(|l| l.contains("admin server listening"))
            .and_then(|l| l.split("local_addr=").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .with_context(|| format!("{} logged no admin server address", child.name()))?
            .to_owned())
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
    /// the bots; `special(i)` may replace update `i` by a bad or unusual one. With
    /// [`Spec::feed_hold_after`] the feed waits there for [`Pipeline::release_feed`], then goes
    /// on at the same rate.
    pub async fn feed(
        &self,
        total: usize,
        rate: u32,
        special: impl Fn(usize) -> Option<Special>,
    ) -> anyhow::Result<()> {
        let mut started = Instant::now();
        let mut sent = 0;
        let mut hold = self.spec.feed_hold_after.filter(|&n| n < total);
        while sent < total {
            if hold == Some(sent) {
                let released = self.feed_release.notified();
                self.feed_held.store(true, Ordering::SeqCst);
                released.await;
                self.feed_held.store(false, Ordering::SeqCst);
                hold = None;
                started = Instant::now() - Duration::from_secs_f64(sent as f64 / f64::from(rate));
            }
            let due = ((started.elapsed().as_secs_f64() * f64::from(rate)) as usize + 1)
                .min(total)
                .min(hold.unwrap_or(total));
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

    /// Lets a feed held at [`Spec::feed_hold_after`] go on.
    pub fn release_feed(&self) {
        self.feed_release.notify_one();
    }

    /// Everything fed so far.
    pub fn generated(&self) -> Vec<Generated> {
        lock(&self.generated).clone()
    }

    /// From now on every update fed so far of kind `special` must have rows, not a dead letter
    /// (an operator removed the cause and redrove or replayed them); returns how many.
    pub fn expect_rows_for(&self, special: Special) -> usize {
        let mut generated = lock(&self.generated);
        let mut changed = 0;
        for g in generated.iter_mut().filter(|g| g.special == Some(special)) {
            g.expect = Expect::Rows;
            changed += 1;
        }
        changed
    }

    /// An operator's `tgingest` command (`args`, e.g. `replay --to-earliest --execute`) on the
    /// pipeline's database (as its owner), broker, topic and consumer group.
    pub fn operator_command(&self, args: &[&str]) -> tokio::process::Command {
        let owner_url = match &self.db {
            Db::Shared(db) => db.url().to_owned(),
            Db::Private { url, .. } => url.clone(),
        };
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tgingest"));
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", owner_url)
            .env("KAFKA_BROKERS", self.broker.bootstrap_servers())
            .env("KAFKA_TOPIC", &self.topic)
            .env("KAFKA_GROUP_ID", &self.group)
            .env("RUST_LOG", "info")
            .kill_on_drop(true);
        for (var, _) in testkit::kafka::SECURITY_ENV {
            if let Some(value) = std::env::var_os(var) {
                cmd.env(var, value);
            }
        }
        cmd
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

    /// Deletes the topic and creates it again with as many partitions, after reading its whole
    /// log back (`count` records, every one of them) for the oracle: the first log's records are
    /// stored under topic incarnation 0. Only once per pipeline, with no client of the topic
    /// running. On Tansu, a broker wedged by its storage panic during the deletion is restarted
    /// and the deletion retried; returns how many restarts that took.
    pub async fn recreate_topic(&self, count: usize) -> anyhow::Result<usize> {
        anyhow::ensure!(
            lock(&self.earlier_log).is_empty(),
            "the topic was already recreated once"
        );
        let first = testkit::kafka::read_topic(
            self.broker.client_config(),
            &self.topic,
            count,
            Duration::from_secs(60 + count as u64 / 2_000),
        )
        .await?;
        anyhow::ensure!(
            first.len() == count,
            "read {} records of the first log back, the watermarks say {count}",
            first.len()
        );
        *lock(&self.earlier_log) = first;
        // Fetches the closed clients left waiting in the broker must end first: Tansu 0.6 panics
        // when a fetch of a deleted partition completes ("more or less than one row").
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut restarts = 0;
        loop {
            match self.broker.delete_topic(&self.topic).await {
                Ok(()) => break,
                Err(e) => {
                    let restarted = crate::restart_if_wedged(self).await?;
                    if restarted == 0 || restarts >= 3 {
                        return Err(e.context(format!("after {restarts} Tansu restarts")));
                    }
                    restarts += restarted;
                    if !testkit::kafka::topic_listed(self.broker.client_config(), &self.topic)
                        .await?
                    {
                        break;
                    }
                }
            }
        }
        self.broker
            .create_topic(&self.topic, self.spec.partitions)
            .await?;
        Ok(restarts)
    }

    /// The first log of a topic [`Pipeline::recreate_topic`] recreated (empty otherwise).
    pub fn earlier_log(&self) -> Vec<testkit::kafka::ConsumedRecord> {
        lock(&self.earlier_log).clone()
    }

    /// Each partition's topic incarnation in its offsets row (0 without a row).
    pub async fn topic_incarnations(&self) -> anyhow::Result<Vec<i64>> {
        let rows: Vec<(i32, i64)> = sqlx::query_as(
            "SELECT partition, topic_incarnation FROM consumer_offsets \
             WHERE group_id = $1 AND topic = $2",
        )
        .bind(&self.group)
        .bind(&self.topic)
        .fetch_all(self.pool())
        .await?;
        let mut out = vec![0; self.spec.partitions as usize];
        for (p, incarnation) in rows {
            out[p as usize] = incarnation;
        }
        Ok(out)
    }

    /// The watermarks once two reads 200 ms apart agree: with the producer paused, no produce
    /// request is still being appended.
    pub async fn quiet_watermarks(&self) -> anyhow::Result<Vec<(i64, i64)>> {
        let mut ends = self.watermarks().await?;
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let again = self.watermarks().await?;
            if again == ends {
                return Ok(ends);
            }
            ends = again;
        }
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
        self.consumer_memory("VmHWM:")
    }

    fn consumer_memory(&self, field: &str) -> Vec<u64> {
        self.live_consumers()
            .iter()
            .filter_map(|c| memory_of(c, field))
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

/// A `/proc/PID/status` memory field (`VmHWM:`, `VmRSS:`) of `child`, bytes.
fn memory_of(child: &ChildProcess, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.pid())).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
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

/// Starts a [`TcpProxy`] to the PostgreSQL server of `url` and returns `url` rewritten to pass
/// through it.
async fn through_proxy(url: &str) -> anyhow::Result<(String, TcpProxy)> {
    let mut url = url::Url::parse(url)?;
    let host = url.host_str().context("the database URL names no host")?;
    let port = url.port().unwrap_or(5432);
    let upstream = tokio::net::lookup_host((host, port))
        .await?
        .next()
        .with_context(|| format!("{host}:{port} resolves to no address"))?;
    let proxy = TcpProxy::start(upstream).await?;
    url.set_host(Some("127.0.0.1"))?;
    url.set_port(Some(proxy.port()))
        .map_err(|()| anyhow::anyhow!("bad URL"))?;
    Ok((url.into(), proxy))
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

/// The highest update id per bot among the records of `topic` below `ends` (one end offset per
/// partition), read partition by partition until each reached its end or `timeout` passed.
pub async fn max_update_ids_below(
    mut config: ClientConfig,
    topic: &str,
    ends: &[i64],
    timeout: Duration,
) -> anyhow::Result<std::collections::BTreeMap<i64, i64>> {
    use rdkafka::message::{Headers, Message};
    use rdkafka::{Offset, TopicPartitionList};
    config
        .set(
            "group.id",
            format!("chaos-below-{}", testkit::random_suffix(8)),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    let topic = topic.to_owned();
    let ends = ends.to_vec();
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = config.create()?;
        let mut tpl = TopicPartitionList::new();
        for (partition, end) in ends.iter().enumerate() {
            if *end > 0 {
                tpl.add_partition_offset(&topic, partition as i32, Offset::Beginning)?;
            }
        }
        client.assign(&tpl)?;
        // The next offset still to read, per partition.
        let mut next = vec![0_i64; ends.len()];
        let mut max = std::collections::BTreeMap::new();
        let deadline = Instant::now() + timeout;
        while next.iter().zip(&ends).any(|(n, e)| n < e) {
            if Instant::now() > deadline {
                bail!("read only up to {next:?} of {ends:?} within {timeout:?}");
            }
            let Some(Ok(message)) = client.poll(Duration::from_millis(200)) else {
                continue;
            };
            let partition = message.partition() as usize;
            next[partition] = next[partition].max(message.offset() + 1);
            if message.offset() >= ends[partition] {
                continue;
            }
            let header = |name: &str| {
                message.headers().and_then(|h| {
                    h.iter()
                        .find(|x| x.key == name)
                        .and_then(|x| std::str::from_utf8(x.value?).ok()?.parse::<i64>().ok())
                })
            };
            let (Some(bot), Some(update)) = (
                header(processor::wire::header::BOT_ID),
                header(processor::wire::header::UPDATE_ID),
            ) else {
                continue;
            };
            let entry = max.entry(bot).or_insert(update);
            *entry = (*entry).max(update);
        }
        Ok(max)
    })
    .await?
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
