//! exactly-once — the exactly-once checker ([`testkit::invariants`]) as a process, for pipelines
//! that run outside a test (the compose stack of `deploy/tests/compose-e2e`).
//!
//! Usage: `exactly-once --brokers HOST:PORT --topic T --group G --sent FILE --expect N
//! [--timeout SECONDS]`, with the database in `DATABASE_URL` (never on the command line).
//! FILE lists the updates Telegram delivered, one per line, exactly as sent (`botsim --sent-log`);
//! `--expect` is how many it must hold once the simulator has finished.
//!
//! It checks, until every check passes or the timeout ends (exit 0, or 1 with what failed):
//! every sent update is in the topic (re-publishes are absorbed, so more than once is allowed
//! there); `raw_updates` holds every sent update's bytes exactly once and nothing else; and
//! the invariant checker passes over the whole topic — each record accounted for by rows or one
//! dead letter, no duplicate payloads, no offset gaps, every stored `next_offset` of the group at
//! the partition's log end. Nothing is written to Kafka or PostgreSQL.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::ClientConfig;
use sqlx::PgPool;
use testkit::invariants::{InvariantChecker, InvariantReport, ProducedRecord};

#[derive(Debug)]
struct Options {
    brokers: String,
    topic: String,
    group: String,
    sent: PathBuf,
    expect: usize,
    timeout: Duration,
}

const USAGE: &str = "usage: exactly-once --brokers HOST:PORT --topic T --group G --sent FILE --expect N [--timeout SECONDS]  (DATABASE_URL in the environment)";

fn parse_options(args: impl Iterator<Item = String>) -> anyhow::Result<Options> {
    let mut given: HashMap<String, String> = HashMap::new();
    let mut args = args;
    while let Some(flag) = args.next() {
        let Some(name) = flag.strip_prefix("--") else {
            bail!("unexpected argument {flag:?}; {USAGE}");
        };
        let value = args
            .next()
            .with_context(|| format!("--{name} needs a value"))?;
        given.insert(name.to_owned(), value);
    }
    let mut take = |name: &str| {
        given
            .remove(name)
            .with_context(|| format!("--{name} is required; {USAGE}"))
    };
    let options = Options {
        brokers: take("brokers")?,
        topic: take("topic")?,
        group: take("group")?,
        sent: PathBuf::from(take("sent")?),
        expect: take("expect")?.parse().context("--expect: not a number")?,
        timeout: Duration::from_secs(match given.remove("timeout") {
            None => 300,
            Some(v) => v.parse().context("--timeout: not a number of seconds")?,
        }),
    };
    if let Some(name) = given.keys().next() {
        bail!("unknown option --{name}; {USAGE}");
    }
    Ok(options)
}

/// One round of checks: whether everything held, and what was found.
struct Round {
    ok: bool,
    lines: Vec<String>,
}

async fn check_once(options: &Options, pool: &PgPool) -> anyhow::Result<Round> {
    let mut lines = Vec::new();
    let sent_text = match std::fs::read(&options.sent) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", options.sent.display())),
    };
    let sent: Vec<&[u8]> = sent_text
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let mut ok = sent.len() == options.expect;
    lines.push(format!(
        "simulated Telegram delivered {} updates (expected {})",
        sent.len(),
        options.expect
    ));

    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &options.brokers);
    let ends = testkit::kafka::watermarks(config.clone(), &options.topic).await?;
    let total: usize = ends.iter().map(|(low, high)| (high - low) as usize).sum();
    let records = testkit::kafka::read_topic(
        config,
        &options.topic,
        total,
        Duration::from_secs(60 + total as u64 / 2_000),
    )
    .await?;
    if records.len() != total {
        ok = false;
        lines.push(format!(
            "read {} of the {total} records in the topic",
            records.len()
        ));
    }
    let mut in_kafka: HashMap<&[u8], usize> = HashMap::new();
    for record in &records {
        *in_kafka.entry(record.value.as_slice()).or_default() += 1;
    }
    let missing_in_kafka = sent.iter().filter(|s| !in_kafka.contains_key(**s)).count();
    let republished: usize = sent
        .iter()
        .map(|s| in_kafka.get(*s).copied().unwrap_or(0).saturating_sub(1))
        .sum();
    lines.push(format!(
        "Kafka topic {}: {} records in {} partitions; {} sent updates missing, {} re-published copies (absorbed by the consumer)",
        options.topic,
        records.len(),
        ends.len(),
        missing_in_kafka,
        republished
    ));
    ok &= missing_in_kafka == 0;

    let stored: Vec<(Vec<u8>,)> =
        sqlx::query_as("SELECT payload_bytes FROM raw_updates WHERE kafka_topic = $1")
            .bind(&options.topic)
            .fetch_all(pool)
            .await
            .context("reading raw_updates")?;
    let mut in_db: HashMap<&[u8], usize> = HashMap::new();
    for (payload,) in &stored {
        *in_db.entry(payload.as_slice()).or_default() += 1;
    }
    let once = sent.iter().filter(|s| in_db.get(**s) == Some(&1)).count();
    let absent = sent.iter().filter(|s| !in_db.contains_key(**s)).count();
    let twice = sent
        .iter()
        .filter(|s| in_db.get(**s).is_some_and(|n| *n > 1))
        .count();
    let sent_set: std::collections::HashSet<&[u8]> = sent.iter().copied().collect();
    let unexplained = in_db.keys().filter(|p| !sent_set.contains(**p)).count();
    lines.push(format!(
        "PostgreSQL raw_updates: {} rows; sent updates stored exactly once: {once}, missing: {absent}, more than once: {twice}; rows no sent update explains: {unexplained}",
        stored.len()
    ));
    ok &= once == sent.len() && unexplained == 0;

    let manifest: Vec<ProducedRecord> = records
        .iter()
        .map(|r| r.as_produced(&options.topic))
        .collect();
    let checker = InvariantChecker::new(pool.clone(), options.group.clone())
        .with_log_ends(&options.topic, &ends);
    let report: InvariantReport = checker.check(&manifest).await?;
    lines.push(format!(
        "invariant checker (group {}): {} records, {} with rows, {} dead-lettered, {} tombstoned, {} violation(s)",
        options.group,
        report.records,
        report.with_rows,
        report.dead_lettered,
        report.tombstoned,
        report.violations.len()
    ));
    for violation in report.violations.iter().take(20) {
        lines.push(format!("  {violation:?}"));
    }
    ok &= report.is_ok();
    Ok(Round { ok, lines })
}

#[tokio::main]
async fn main() {
    // One line naming the setting (or the failure), never a backtrace.
    let result = match parse_options(std::env::args().skip(1)) {
        Ok(options) => run(options).await,
        Err(e) => {
            eprintln!("exactly-once: {e:#}");
            std::process::exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("exactly-once: {e:#}");
        std::process::exit(1);
    }
}

async fn run(options: Options) -> anyhow::Result<()> {
    let url = std::env::var("DATABASE_URL").context("DATABASE_URL is required")?;
    let pool = PgPool::connect(&url)
        .await
        .context("connecting to DATABASE_URL")?;
    let deadline = Instant::now() + options.timeout;
    let started = Instant::now();
    let mut last: Vec<String> = vec!["no check has run".to_owned()];
    loop {
        match check_once(&options, &pool).await {
            Ok(round) if round.ok => {
                for line in &round.lines {
                    println!("{line}");
                }
                println!(
                    "exactly-once: PASS — every delivered update is in PostgreSQL exactly once (settled after {:.0} s)",
                    started.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            Ok(round) => last = round.lines,
            Err(e) => last = vec![format!("check failed to run: {e:#}")],
        }
        if Instant::now() >= deadline {
            for line in &last {
                println!("{line}");
            }
            println!(
                "exactly-once: FAIL — not settled after {} s",
                options.timeout.as_secs()
            );
            std::process::exit(1);
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}
