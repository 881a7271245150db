//! `tgingest demo`: the whole pipeline in one process, on embedded defaults.
//!
//! Telegram is simulated by `botsim` (a real Bot API server on loopback, fed by a seeded traffic
//! generator) unless bot tokens are given; Kafka is librdkafka's in-memory mock cluster unless
//! `KAFKA_BROKERS` is set; PostgreSQL is `DATABASE_URL` (default: a local `tgingest_demo`
//! database, created and migrated on the spot). The real producer and consumer run against them.
//! On exit (duration reached or ctrl-c) the demo stops the traffic, drains until every partition's
//! stored offset equals the log end, and prints what landed.
//!
//! A real token with the in-memory broker is refused: updates confirmed to Telegram would vanish
//! with the broker when the demo exits.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use botsim::traffic::{Malformed, TrafficConfig, TrafficGenerator};
use botsim::{AllowedUpdates, BotApi, BotApiConfig, KNOWN_KINDS};
use consumer::OffsetStore;
use consumer::projection::ProjectionTable;
use rdkafka::consumer::{BaseConsumer, Consumer};
use secrecy::SecretString;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::config::{DatabaseConfig, DemoConfig, DemoKafka, KafkaConfig};
use crate::db;

/// The simulated bot's token: a well-formed value that no real bot has.
const DEMO_TOKEN: &str = "7000000001:DEMO-simulated-token-not-a-real-bot";

/// The simulated traffic the demo sends for a seed: first one malformed update (to show a dead
/// letter), then `TrafficGenerator::next_update` for the rest. Tests regenerate it to check that
/// the database holds exactly what was sent.
pub fn simulated_traffic(seed: u64, chats: usize, users: usize) -> TrafficGenerator {
    TrafficGenerator::new(
        seed,
        TrafficConfig {
            groups: chats,
            users,
            ..TrafficConfig::default()
        },
    )
}

/// The first updates the demo sends, before the producer starts: a malformed one (no
/// `update_id`, to show a dead letter) between two valid ones, so the first getUpdates answer
/// holds all three and confirming the valid one after it confirms the malformed one too.
pub fn opening_updates(traffic: &mut TrafficGenerator) -> [Vec<u8>; 3] {
    let first = traffic.next_update();
    let malformed = traffic.malformed_of(Malformed::MissingUpdateId);
    let after = traffic.next_update();
    [first, malformed, after]
}

enum Telegram {
    Simulated(Arc<BotApi>),
    Real(Vec<SecretString>),
}

/// Runs the demo.
pub async fn run(config: DemoConfig, database: DatabaseConfig) -> anyhow::Result<()> {
    if config.tokens.is_some() && matches!(config.kafka, DemoKafka::Embedded(_)) {
        bail!(
            "a real bot token needs a real broker: with the in-memory broker, updates confirmed to Telegram would be lost when the demo exits; set KAFKA_BROKERS or unset TELEGRAM_BOT_TOKENS"
        );
    }

    let pool = prepare_database(&database).await?;
    println!("PostgreSQL: {} (schema migrated)", db::describe(&database));

    // The embedded cluster lives until the end of the demo (dropping it destroys the data).
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let (embedded_cluster, kafka) = match config.kafka {
        DemoKafka::External(kafka) => {
            println!(
                "Kafka: {} (topic {} must exist)",
                kafka.client.get("bootstrap.servers").unwrap_or(""),
                kafka.topic
            );
            (None, kafka)
        }
        DemoKafka::Embedded(embedded) => {
            let cluster = embedded_broker::MockClusterHost::start(1)?;
            let kafka = embedded.with_brokers(cluster.bootstrap_servers());
            // Each embedded broker starts empty, with offsets from 0, while the database persists:
            // each run gets its own topic (and group), so records of different runs never share a
            // (topic, partition, offset) identity in raw_updates and dead_letters.
            let mut kafka = kafka;
            kafka.topic = format!("{}.demo-{run_id}", kafka.topic);
            cluster.create_topic(&kafka.topic, config.partitions)?;
            println!(
                "Kafka: embedded in-memory broker (librdkafka mock cluster), topic {} with {} partitions — for trials only: its data is gone when the demo exits",
                kafka.topic, config.partitions
            );
            (Some(cluster), kafka)
        }
    };

    let telegram = match config.tokens {
        Some(tokens) => Telegram::Real(tokens),
        None => {
            let api = BotApi::start(BotApiConfig::default()).await?;
            let traffic_config = TrafficConfig::default();
            api.add_bot(DEMO_TOKEN, traffic_config.bot.clone());
            let all: std::collections::BTreeSet<String> =
                KNOWN_KINDS.iter().map(|k| k.to_string()).collect();
            api.set_allowed_updates(DEMO_TOKEN, AllowedUpdates::Only(all))?;
            println!(
                "Telegram: simulated Bot API at {} ({} updates/s, {} groups, a channel, private chats, {} users, seed {})",
                api.base_url(),
                config.rate,
                config.chats,
                config.users,
                config.seed
            );
            Telegram::Simulated(Arc::new(api))
        }
    };

    let sent = Arc::new(AtomicU64::new(0));
    let mut traffic = simulated_traffic(config.seed, config.chats, config.users);
    if let Telegram::Simulated(api) = &telegram {
        for update in opening_updates(&mut traffic) {
            api.push_update(DEMO_TOKEN, update)?;
            sent.fetch_add(1, Ordering::Relaxed);
        }
    }

    let group = if embedded_cluster.is_some() {
        format!("tgingest-demo-{run_id}")
    } else {
        "tgingest-demo".to_owned()
    };

    let shutdown = CancellationToken::new();
    let readiness = crate::admin_server::Readiness::default();
    let producer_config = demo_producer_config(&telegram, &kafka, embedded_cluster.is_some())?;
    let mut consumer_config =
        consumer::ConsumerConfig::new(&group, &kafka.topic, kafka.client.clone());
    consumer_config.session_timeout = Duration::from_secs(10);
    let producer_task = tokio::spawn(producer::run(
        producer_config,
        shutdown.clone(),
        Arc::new(readiness.clone()),
    ));
    let consumer_task = tokio::spawn(consumer::run(
        consumer_config,
        pool.clone(),
        shutdown.clone(),
        Arc::new(readiness.clone()),
    ));

    let traffic_stop = CancellationToken::new();
    let traffic_task = match &telegram {
        Telegram::Simulated(api) => Some(tokio::spawn(send_traffic(
            api.clone(),
            traffic,
            config.rate,
            sent.clone(),
            traffic_stop.clone(),
        ))),
        Telegram::Real(_) => None,
    };

    let watermarks = watermark_client(&kafka)?;
    let progress = Progress::new(&pool, &kafka.topic, &group);
    let deadline = Instant::now() + config.duration;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut ctrl_c => { println!(); println!("ctrl-c: stopping the traffic and draining"); break; }
        }
        if producer_task.is_finished() || consumer_task.is_finished() {
            break;
        }
        progress
            .show(sent.load(Ordering::Relaxed), &watermarks, false)
            .await?;
        if Instant::now() >= deadline {
            break;
        }
    }
    traffic_stop.cancel();
    if let Some(task) = traffic_task {
        task.await.context("the traffic generator panicked")??;
    }

    // Drain: every update handed to the producer is confirmed, then every partition's stored
    // offset reaches the log end.
    let drained = drain(
        &telegram,
        &progress,
        &watermarks,
        &sent,
        &producer_task,
        &consumer_task,
    )
    .await;
    shutdown.cancel();
    let producer_result = producer_task.await.context("the producer panicked")?;
    let consumer_result = consumer_task.await.context("the consumer panicked")?;
    producer_result.context("producer")?;
    consumer_result.context("consumer")?;
    drained?;
    progress
        .show(sent.load(Ordering::Relaxed), &watermarks, true)
        .await?;
    if let Telegram::Simulated(_) = &telegram {
        println!(
            "simulated Telegram sent {} updates (seed {}, {} groups, {} users)",
            sent.load(Ordering::Relaxed),
            config.seed,
            config.chats,
            config.users
        );
    }
    print_summary(&pool, &database, &kafka.topic).await?;
    drop(watermarks);
    drop(embedded_cluster);
    pool.close().await;
    Ok(())
}

fn demo_producer_config(
    telegram: &Telegram,
    kafka: &KafkaConfig,
    embedded: bool,
) -> anyhow::Result<producer::ProducerConfig> {
    let (url, tokens) = match telegram {
        Telegram::Simulated(api) => (
            url::Url::parse(&api.base_url())?,
            vec![SecretString::from(DEMO_TOKEN.to_owned())],
        ),
        Telegram::Real(tokens) => (url::Url::parse(producer::TELEGRAM_API_URL)?, tokens.clone()),
    };
    let mut config =
        producer::ProducerConfig::new(url, tokens, kafka.topic.clone(), kafka.client.clone());
    config.mode = producer::IntakeMode::Polling(producer::PollingConfig {
        // Short polls keep the drain at the end quick.
        timeout: Duration::from_secs(1),
        ..producer::PollingConfig::default()
    });
    // The embedded broker is one broker by design: no durability warning for a new user. A real
    // broker given with KAFKA_BROKERS is checked as in production.
    config.expect_durable_topic = !embedded;
    Ok(config)
}

/// Pushes `rate` updates a second into the simulated Bot API until stopped.
async fn send_traffic(
    api: Arc<BotApi>,
    mut traffic: TrafficGenerator,
    rate: u32,
    sent: Arc<AtomicU64>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let opening = sent.load(Ordering::Relaxed);
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let due = opening + (started.elapsed().as_secs_f64() * f64::from(rate)) as u64;
        while sent.load(Ordering::Relaxed) < due {
            api.push_update(DEMO_TOKEN, traffic.next_update())?;
            sent.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn drain(
    telegram: &Telegram,
    progress: &Progress<'_>,
    watermarks: &BaseConsumer,
    sent: &AtomicU64,
    producer_task: &tokio::task::JoinHandle<anyhow::Result<()>>,
    consumer_task: &tokio::task::JoinHandle<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if producer_task.is_finished() || consumer_task.is_finished() {
            return Ok(());
        }
        let confirmed = match telegram {
            Telegram::Simulated(api) => api.pending_update_count(DEMO_TOKEN)? == 0,
            Telegram::Real(_) => true,
        };
        if confirmed && progress.lag(watermarks).await? == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the pipeline did not drain within 2 minutes");
        }
        progress
            .show(sent.load(Ordering::Relaxed), watermarks, false)
            .await?;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Creates the database if it does not exist, migrates it, and opens a pool. An unreachable
/// server gets one line saying how to start one.
async fn prepare_database(config: &DatabaseConfig) -> anyhow::Result<PgPool> {
    let name = config
        .options
        .get_database()
        .unwrap_or("tgingest_demo")
        .to_owned();
    let server: PgConnectOptions = config.options.clone().database("postgres");
    let mut admin = PgConnection::connect_with(&server).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot connect to PostgreSQL at {} ({}): start a local PostgreSQL (`sudo service postgresql start`, or `docker compose up -d postgres`) or set DATABASE_URL",
            db::describe(config),
            short_error(&e)
        )
    })?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        // The name is a quoted identifier: nothing in it can end the statement.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {quoted}")))
            .execute(&mut admin)
            .await
            .with_context(|| format!("creating database {name}"))?;
    }
    admin.close().await?;
    let pool = db::connect(config).await?;
    db::migrate(&pool).await?;
    Ok(pool)
}

fn short_error(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Io(io) => io.kind().to_string(),
        other => other.to_string(),
    }
}

fn watermark_client(kafka: &KafkaConfig) -> anyhow::Result<BaseConsumer> {
    let mut client = kafka.client.clone();
    client.set("group.id", "tgingest-demo-watermarks");
    client.create().context("creating the watermark client")
}

/// Live progress: a refreshed line on a terminal, a plain line every few seconds otherwise.
struct Progress<'a> {
    pool: &'a PgPool,
    topic: &'a str,
    group: &'a str,
    started: Instant,
    tty: bool,
    last_rows: std::sync::Mutex<(Instant, i64)>,
}

impl<'a> Progress<'a> {
    fn new(pool: &'a PgPool, topic: &'a str, group: &'a str) -> Self {
        Self {
            pool,
            topic,
            group,
            started: Instant::now(),
            tty: std::io::stdout().is_terminal(),
            last_rows: std::sync::Mutex::new((Instant::now(), 0)),
        }
    }

    /// Records in the log not yet written (log end − stored offset, over every partition).
    async fn lag(&self, watermarks: &BaseConsumer) -> anyhow::Result<i64> {
        Ok(self.positions(watermarks).await?.0)
    }

    /// (lag, records in the log) over every partition.
    async fn positions(&self, watermarks: &BaseConsumer) -> anyhow::Result<(i64, i64)> {
        let stored: HashMap<i32, i64> = OffsetStore::new(self.pool.clone(), self.group, self.topic)
            .list()
            .await?
            .into_iter()
            .map(|row| (row.partition, row.stored.next_offset))
            .collect();
        let metadata = tokio::task::block_in_place(|| {
            watermarks.fetch_metadata(Some(self.topic), Duration::from_secs(5))
        })?;
        let mut lag = 0;
        let mut records = 0;
        for topic in metadata.topics() {
            for partition in topic.partitions() {
                let (low, high) = tokio::task::block_in_place(|| {
                    watermarks.fetch_watermarks(self.topic, partition.id(), Duration::from_secs(5))
                })?;
                let next = stored.get(&partition.id()).copied().unwrap_or(low);
                lag += (high - next).max(0);
                records += high - low;
            }
        }
        Ok((lag, records))
    }

    async fn show(&self, sent: u64, watermarks: &BaseConsumer, last: bool) -> anyhow::Result<()> {
        let dead: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM dead_letters WHERE topic = $1 AND resolved_at IS NULL",
        )
        .bind(self.topic)
        .fetch_one(self.pool)
        .await?;
        let (lag, records) = self.positions(watermarks).await?;
        // Records whose effect (rows or a dead letter) is committed.
        let written = records - lag;
        let rate = {
            let mut last = self.last_rows.lock().unwrap_or_else(|p| p.into_inner());
            let elapsed = last.0.elapsed().as_secs_f64().max(0.001);
            let rate = (written - last.1) as f64 / elapsed;
            *last = (Instant::now(), written);
            rate
        };
        let line = format!(
            "{:>5.1}s  sent {sent:>7}  in Kafka {records:>7}  written {written:>7}  dead letters {dead}  lag {lag:>5}  {rate:>7.0} records/s",
            self.started.elapsed().as_secs_f64()
        );
        if self.tty && !last {
            print!("\r{line}");
            std::io::stdout().flush()?;
        } else if self.tty {
            println!("\r{line}");
        } else {
            println!("{line}");
        }
        Ok(())
    }
}

async fn print_summary(pool: &PgPool, config: &DatabaseConfig, topic: &str) -> anyhow::Result<()> {
    println!();
    println!(
        "Rows in {} now (earlier demo runs included; this run read topic {topic}):",
        db::describe(config)
    );
    let projections = ProjectionTable::ALL.iter().map(|t| t.name());
    let tables = std::iter::once("raw_updates")
        .chain(projections)
        .chain(std::iter::once("dead_letters"));
    for table in tables {
        // `table` is a fixed name: a protocol table or one of the projection registry.
        let count: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                .fetch_one(pool)
                .await?;
        println!("  {table:<26}{count:>8}");
    }
    let dead: Vec<(i32, i64, String, String)> = sqlx::query_as(
        "SELECT partition, kafka_offset, error_class, error_text FROM dead_letters
          WHERE topic = $1 AND resolved_at IS NULL ORDER BY partition, kafka_offset LIMIT 10",
    )
    .bind(topic)
    .fetch_all(pool)
    .await?;
    for (partition, offset, class, text) in dead {
        println!(
            "  this run's dead letter at partition {partition} offset {offset}: {class}: {text}"
        );
    }
    let busiest: Option<i64> = sqlx::query_scalar(
        "SELECT chat_id FROM messages GROUP BY chat_id ORDER BY count(*) DESC LIMIT 1",
    )
    .fetch_optional(pool)
    .await?;
    let chat = busiest.unwrap_or(0);
    println!();
    println!("Try next (psql \"$DATABASE_URL\"):");
    println!(
        "  -- a chat's history\n  SELECT to_timestamp(date) AS at, from_user_id, text FROM messages\n   WHERE chat_id = {chat} ORDER BY date, message_id LIMIT 20;"
    );
    println!(
        "  -- top posters\n  SELECT u.first_name, u.username, count(*) AS messages FROM messages m\n    JOIN users u ON u.bot_id = m.bot_id AND u.user_id = m.from_user_id\n   GROUP BY 1, 2 ORDER BY messages DESC LIMIT 10;"
    );
    println!(
        "  -- edit history\n  SELECT chat_id, message_id, to_timestamp(edit_date) AS edited_at, text FROM message_edits\n   ORDER BY chat_id, message_id, src_update_id LIMIT 20;"
    );
    Ok(())
}
