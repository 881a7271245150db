//! `tgingest status`: the command line of [`consumer::ops::status`] — the authoritative state of
//! one consumer group for people (a table) and scripts (`--json`, exit status 3 when a threshold
//! is passed) — and, with `--producer-admin`, the state of each producer's units (every bot:
//! ready, or why not) as its admin server's `GET /units` reports it.
//!
//! This module parses the options and renders the report; the queries are the consumer's, the
//! unit list is the admin server's ([`crate::admin_server::UnitsAnswer`]). A producer that cannot
//! be asked is shown as unreachable, never fails the command; it and a bot that is not ready are
//! threshold breaches only with `--require-bots-ready`. A topic's durability below what survives
//! a broker loss is a warning line, never a breach.

use std::time::Duration;

use anyhow::Context;
use consumer::ops::status::{self, StatusReport, Thresholds};
use serde::Serialize;
use url::Url;

use crate::admin_server::{UNITS_PATH, UnitView, UnitsAnswer};
use crate::config::{ConfigError, DatabaseConfig, Env, KafkaArgs, ProducerAdminArgs};

/// Exit status of `tgingest status` when lag or age passes the given thresholds.
pub const EXIT_THRESHOLD_BREACHED: u8 = 3;

/// How long asking one producer's admin server for its units may take.
const PRODUCER_ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Status options of the command line (flattened into `tgingest status`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct StatusOptions {
    /// Topic to report on (default: KAFKA_TOPIC).
    #[arg(long)]
    pub topic: Option<String>,
    /// Print one JSON document instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Exit with status 3 when any partition's lag exceeds this many records.
    #[arg(long, value_name = "RECORDS")]
    pub max_lag: Option<i64>,
    /// Exit with status 3 when any bot's newest stored update is older than this (e.g. `15m`).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub max_age: Option<Duration>,
    /// The producers whose units (bots) are shown.
    #[command(flatten)]
    pub producers: ProducerAdminArgs,
}

/// The report as tables, with the producers' units.
pub fn render_report(report: &StatusReport, producers: &[ProducerStatus]) -> String {
    let mut out = format!(
        "group {} on topic {} at {}\n\n{:>9}  {:>12}  {:>12}  {:>10}  {:>24}  {:>5}\n",
        report.group_id,
        report.topic,
        report.at,
        "PARTITION",
        "LOG END",
        "STORED",
        "LAG",
        "LAST WRITE",
        "GAPS"
    );
    for p in &report.partitions {
        let state = if p.halted {
            "  HALTED"
        } else if p.past_log_end {
            "  PAST LOG END"
        } else {
            ""
        };
        out.push_str(&format!(
            "{:>9}  {:>12}  {:>12}  {:>10}  {:>24}  {:>5}{state}\n",
            p.partition,
            p.log_end,
            p.stored_offset
                .map_or_else(|| "-".to_owned(), |o| o.to_string()),
            p.lag,
            p.last_write.as_deref().unwrap_or("-"),
            p.gaps
        ));
    }
    out.push_str(&format!(
        "{:>9}  {:>12}  {:>12}  {:>10}\n\n",
        "total", "", "", report.total_lag
    ));
    out.push_str(&format!(
        "{:>20}  {:>24}  {:>12}  {:>12}\n",
        "BOT", "NEWEST UPDATE", "AGE", "UPDATES"
    ));
    if report.bots.is_empty() {
        out.push_str("(no stored updates)\n");
    }
    for b in &report.bots {
        let age = b.age_seconds.map_or_else(
            || "-".to_owned(),
            |s| humantime::format_duration(Duration::from_secs(s.unsigned_abs())).to_string(),
        );
        out.push_str(&format!(
            "{:>20}  {:>24}  {:>12}  {:>12}\n",
            b.bot_id,
            b.newest_update.as_deref().unwrap_or("-"),
            age,
            b.raw_updates
        ));
    }
    out.push_str(&format!(
        "\ndead letters pending: {}",
        report.dead_letters.pending
    ));
    if !report.dead_letters.by_class.is_empty() {
        let classes: Vec<String> = report
            .dead_letters
            .by_class
            .iter()
            .map(|(c, n)| format!("{c}={n}"))
            .collect();
        out.push_str(&format!(
            " ({}; oldest {})",
            classes.join(", "),
            report.dead_letters.oldest_pending.as_deref().unwrap_or("-")
        ));
    }
    out.push('\n');
    for anomaly in &report.anomalies {
        out.push_str(&format!(
            "HALTED: {anomaly}\n  decide where it resumes: tgingest replay --partitions {} --to-earliest --execute (a recreated topic), or --to-offset N --allow-skip --execute (a truncated log: N is its end when it was truncated)\n",
            anomaly.partition
        ));
    }
    out.push_str(&render_durability(report));
    out.push_str(&render_producers(producers));
    for breach in &report.breaches {
        out.push_str(&format!("THRESHOLD: {breach}\n"));
    }
    out
}

/// `tgingest status`: prints the report; returns whether a threshold was passed (the caller
/// exits with [`EXIT_THRESHOLD_BREACHED`]).
pub async fn run_command(
    group_id: &str,
    options: &StatusOptions,
    kafka: &KafkaArgs,
    env: &dyn Env,
    database: &DatabaseConfig,
) -> anyhow::Result<bool> {
    options.check()?;
    let kafka = kafka.resolve(env)?;
    let topic = options.topic.clone().unwrap_or(kafka.topic.clone());
    let admin_urls = options.producers.resolve()?;
    let pool = crate::db::connect(database).await?;
    let (report, producers) = tokio::join!(
        status::collect(
            &pool,
            &kafka.client,
            group_id,
            &topic,
            Thresholds {
                max_lag: options.max_lag,
                max_age: options.max_age,
            },
        ),
        query_producers(&admin_urls)
    );
    let mut report = report?;
    if options.producers.require_bots_ready {
        report.breaches.extend(bot_breaches(&producers));
    }
    if options.json {
        let full = FullReport {
            report: &report,
            producers: &producers,
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&full).context("encoding the report")?
        );
    } else {
        print!("{}", render_report(&report, &producers));
    }
    Ok(!report.breaches.is_empty())
}

impl StatusOptions {
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.max_lag.is_some_and(|m| m < 0) {
            return Err(ConfigError::new("--max-lag", "must be 0 or more"));
        }
        self.producers.resolve()?;
        Ok(())
    }
}

/// What `tgingest status --json` prints: the consumer group's report, plus `producers`.
#[derive(Debug, Serialize)]
struct FullReport<'a> {
    #[serde(flatten)]
    report: &'a StatusReport,
    producers: &'a [ProducerStatus],
}

/// One producer's units as its admin server reported them (`GET /units`), or why it could not
/// be asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProducerStatus {
    /// The admin server's URL, as configured.
    pub admin_url: String,
    /// Whether the admin server answered with its units.
    pub reachable: bool,
    /// Every unit is ready (what its `/readyz` answers); `None` when unreachable.
    pub ready: Option<bool>,
    /// Every unit in name order (`bot #1`, `bot #2`, …, `kafka`); empty when unreachable.
    pub units: Vec<UnitView>,
    /// Why the admin server could not be asked.
    pub error: Option<String>,
}

impl ProducerStatus {
    fn unreachable(url: &Url, error: String) -> Self {
        Self {
            admin_url: url.to_string(),
            reachable: false,
            ready: None,
            units: Vec::new(),
            error: Some(error),
        }
    }
}

/// Asks every producer admin server in `urls` for its units, all at once, each within
/// [`PRODUCER_ADMIN_TIMEOUT`]; one that cannot be asked is reported unreachable with the reason.
pub async fn query_producers(urls: &[Url]) -> Vec<ProducerStatus> {
    let client = match reqwest::Client::builder()
        .timeout(PRODUCER_ADMIN_TIMEOUT)
        .build()
    {
        Ok(client) => client,
        Err(e) => {
            let reason = format!("cannot build an HTTP client: {e}");
            return urls
                .iter()
                .map(|url| ProducerStatus::unreachable(url, reason.clone()))
                .collect();
        }
    };
    let asks: Vec<_> = urls
        .iter()
        .map(|url| tokio::spawn(query_producer(client.clone(), url.clone())))
        .collect();
    let mut producers = Vec::with_capacity(urls.len());
    for (url, ask) in urls.iter().zip(asks) {
        producers.push(ask.await.unwrap_or_else(|e| {
            ProducerStatus::unreachable(url, format!("the request task failed: {e}"))
        }));
    }
    producers
}

async fn query_producer(client: reqwest::Client, base: Url) -> ProducerStatus {
    match fetch_units(&client, &base).await {
        Ok(answer) => ProducerStatus {
            admin_url: base.to_string(),
            reachable: true,
            ready: Some(answer.ready),
            units: answer.units,
            error: None,
        },
        Err(e) => ProducerStatus::unreachable(&base, format!("{e:#}")),
    }
}

async fn fetch_units(client: &reqwest::Client, base: &Url) -> anyhow::Result<UnitsAnswer> {
    // `base` is the admin server's root, possibly under a path prefix: the units are below it.
    let mut root = base.clone();
    if !root.path().ends_with('/') {
        root.set_path(&format!("{}/", root.path()));
    }
    let url = root.join(UNITS_PATH).context("building the units URL")?;
    let response = client
        .get(url.clone())
        .send()
        .await
        .map_err(reqwest::Error::without_url)
        .with_context(|| format!("GET {url}"))?;
    let code = response.status();
    if !code.is_success() {
        anyhow::bail!("GET {url} answered HTTP {code}: not a tgingest admin server's units");
    }
    response
        .json::<UnitsAnswer>()
        .await
        .map_err(reqwest::Error::without_url)
        .with_context(|| format!("GET {url}: the answer is not a unit list"))
}

/// The breaches `--require-bots-ready` adds: each bot unit a producer reports not ready, and each
/// producer that could not be asked (its bots' state is unknown).
pub fn bot_breaches(producers: &[ProducerStatus]) -> Vec<String> {
    let mut breaches = Vec::new();
    for producer in producers {
        if let Some(error) = &producer.error {
            breaches.push(format!(
                "producer {} could not be asked for its bots: {error}",
                producer.admin_url
            ));
        }
        for unit in producer
            .units
            .iter()
            .filter(|u| !u.ready && u.unit.starts_with("bot #"))
        {
            breaches.push(format!(
                "producer {}: {} is not ready: {}",
                producer.admin_url, unit.unit, unit.detail
            ));
        }
    }
    breaches
}

/// The topic's replication factor and `min.insync.replicas`, then a warning line for each below
/// what survives a broker loss.
fn render_durability(report: &StatusReport) -> String {
    let d = &report.durability;
    let rf = d
        .replication_factor
        .map_or_else(|| "unknown".to_owned(), |rf| rf.to_string());
    let min_insync = match (d.min_insync_replicas, &d.min_insync_replicas_unknown) {
        (Some(min), _) => min.to_string(),
        (None, Some(reason)) => format!("unknown ({reason})"),
        (None, None) => "unknown".to_owned(),
    };
    let mut out =
        format!("topic durability: replication factor {rf}, min.insync.replicas {min_insync}\n");
    for warning in d.warnings(&report.topic) {
        out.push_str(&format!("WARNING: {warning}\n"));
    }
    out
}

/// Each producer's units, one line each, or why the producer could not be asked; empty when no
/// producer was named.
fn render_producers(producers: &[ProducerStatus]) -> String {
    let mut out = String::new();
    for producer in producers {
        let state = match (&producer.error, producer.ready) {
            (Some(error), _) => format!("UNREACHABLE: {error}"),
            (None, Some(true)) => "ready".to_owned(),
            (None, _) => "NOT READY".to_owned(),
        };
        out.push_str(&format!("\nproducer {}: {state}\n", producer.admin_url));
        if producer.error.is_some() {
            continue;
        }
        out.push_str(&format!("{:>20}  {:<9}  {}\n", "UNIT", "STATE", "DETAIL"));
        if producer.units.is_empty() {
            out.push_str("(no units reported)\n");
        }
        for unit in &producer.units {
            out.push_str(&format!(
                "{:>20}  {:<9}  {}\n",
                unit.unit,
                if unit.ready { "ready" } else { "NOT READY" },
                if unit.detail.is_empty() {
                    "-"
                } else {
                    &unit.detail
                }
            ));
        }
    }
    out
}
