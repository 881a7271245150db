//! A consumer process for the crash tests (`tests/processes.rs`): `consumer::run` configured from
//! `SINK_*` environment variables, stopped by SIGTERM. It stands in for `tgingest consumer` so
//! the protocol can be SIGKILLed in real processes independently of the binary's wiring.
//!
//! Variables: SINK_DATABASE_URL, SINK_BROKERS, SINK_TOPIC, SINK_GROUP, optional
//! SINK_SESSION_TIMEOUT_MS (default 6000), SINK_STRATEGY (`range` | `cooperative-sticky`),
//! SINK_APPLICATION_NAME, and FAILPOINTS (with `--features failpoints`).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use consumer::{AssignmentStrategy, ConsumerConfig, NoReadiness};
use tokio_util::sync::CancellationToken;

fn var(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| format!("{name} is required"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    #[cfg(feature = "failpoints")]
    let _scenario = fail::FailScenario::setup();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "consumer=info,warn".into()),
        )
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();

    let mut client = rdkafka::ClientConfig::new();
    client.set("bootstrap.servers", var("SINK_BROKERS")?);
    let mut config = ConsumerConfig::new(var("SINK_GROUP")?, var("SINK_TOPIC")?, client);
    config.session_timeout = Duration::from_millis(
        std::env::var("SINK_SESSION_TIMEOUT_MS").map_or(Ok(6000), |v| v.parse())?,
    );
    config.batch_max_records = 200;
    config.linger = Duration::from_millis(20);
    config.retry = consumer::RetryPolicy {
        initial: Duration::from_millis(50),
        max: Duration::from_secs(1),
    };
    config.assignment_strategy = match std::env::var("SINK_STRATEGY").as_deref() {
        Ok("range") => AssignmentStrategy::Range,
        _ => AssignmentStrategy::CooperativeSticky,
    };
    let options: sqlx::postgres::PgConnectOptions = var("SINK_DATABASE_URL")?.parse()?;
    let application =
        std::env::var("SINK_APPLICATION_NAME").unwrap_or_else(|_| "sink-process".into());
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options.application_name(&application))
        .await?;

    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        term.recv().await;
        on_signal.cancel();
    });
    eprintln!("sink-process started pid={}", std::process::id());
    consumer::run(config, pool, shutdown, Arc::new(NoReadiness)).await?;
    eprintln!("sink-process stopped cleanly");
    Ok(())
}
