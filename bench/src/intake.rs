//! Producer intake: updates/s from the simulated Bot API into Kafka through `producer::run`
//! (long polling, 100 updates per getUpdates, idempotent producer with `acks=all`, zstd), for 1
//! and 4 bots, with and without an injected 50 ms round trip per getUpdates.
//!
//! Each bot's queue is filled before the producer starts; the window runs from the first
//! confirmed getUpdates offset to the moment every bot confirmed its last update (the producer
//! confirms only what Kafka acknowledged, so "confirmed" means "durably in Kafka"). The producer,
//! the Bot API simulator and the mock broker share this process: its CPU is reported as one
//! figure, an upper bound on the producer's own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use botsim::{AllowedUpdates, BotApi, BotApiConfig, BotInfo, Fault};
use producer::{IntakeMode, PollingConfig, ProducerConfig};
use rdkafka::config::ClientConfig;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use crate::procstat;
use crate::report::{Table, thousands};
use crate::workload::{Workload, WorkloadConfig};

/// One intake measurement.
#[derive(Debug, Clone, Copy)]
pub struct Intake {
    pub updates: usize,
    pub seconds: f64,
    pub cpu: f64,
}

/// Runs one producer over `bots` bots holding `per_bot` updates each.
pub async fn measure(
    bots: usize,
    per_bot: usize,
    round_trip: Option<Duration>,
) -> anyhow::Result<Intake> {
    let broker = embedded_broker::MockClusterHost::start(1)?;
    let topic = "bench.intake";
    broker.create_topic(topic, 12)?;
    let api = BotApi::start(BotApiConfig::default()).await?;
    let mut tokens = Vec::new();
    let mut last_offsets = Vec::new();
    for bot in 0..bots {
        let id = 7_100_000_000 + bot as i64;
        let token = format!("{id}:bench-intake-token-{bot}");
        api.add_bot(&token, BotInfo::new(id, format!("bench{bot}_bot"), "bench"));
        // As if the bot had polled before: Telegram keeps allowed_updates between calls, and
        // by default drops chat_member and reaction updates as they are created.
        api.set_allowed_updates(
            &token,
            AllowedUpdates::from_names(&producer::all_update_kinds()),
        )?;
        let config = WorkloadConfig {
            seed: 1000 + bot as u64,
            // getUpdates never repeats an update; duplicates arise later, in the producer.
            duplicate_per_mille: 0,
            ..WorkloadConfig::default()
        };
        let first = config.first_update_id;
        for update in Workload::new(&config)?.batch(per_bot) {
            anyhow::ensure!(api.push_update(&token, update)?, "botsim dropped an update");
        }
        if let Some(delay) = round_trip {
            // One stall per getUpdates call, with slack for the empty polls at the end.
            for _ in 0..per_bot / 100 + 50 {
                api.inject_on(&token, "getUpdates", Fault::Stall(delay))?;
            }
        }
        last_offsets.push(first + per_bot as i64);
        tokens.push(token);
    }
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", broker.bootstrap_servers());
    let mut config = ProducerConfig::new(
        url::Url::parse(&api.base_url())?,
        tokens
            .iter()
            .map(|t| SecretString::from(t.clone()))
            .collect(),
        topic.to_owned(),
        client,
    );
    config.mode = IntakeMode::Polling(PollingConfig {
        timeout: Duration::from_secs(1),
        limit: 100,
        ..PollingConfig::default()
    });
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(producer::run(
        config,
        shutdown.clone(),
        Arc::new(producer::NoReadiness),
    ));
    let started = Instant::now();
    let mut window: Option<(Instant, f64)> = None;
    let result = loop {
        let confirmed: Vec<i64> = tokens
            .iter()
            .map(|t| api.confirmed_offset(t).unwrap_or(0))
            .collect();
        if window.is_none() && confirmed.iter().any(|c| *c > 0) {
            window = Some((Instant::now(), procstat::cpu_seconds("self")?));
        }
        if confirmed
            .iter()
            .zip(&last_offsets)
            .all(|(c, last)| c >= last)
        {
            let (t0, cpu0) = window.unwrap_or((started, 0.0));
            break Ok(Intake {
                updates: bots * per_bot,
                seconds: t0.elapsed().as_secs_f64(),
                cpu: procstat::cpu_seconds("self")? - cpu0,
            });
        }
        if running.is_finished() {
            break Err(anyhow::anyhow!("the producer stopped early"));
        }
        if started.elapsed() > Duration::from_secs(300) {
            bail!(
                "intake did not finish in 300 s: confirmed {confirmed:?}, wanted {last_offsets:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    shutdown.cancel();
    match running.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("producer ended with: {e:#}"),
        Err(e) => eprintln!("producer task: {e}"),
    }
    api.shutdown().await;
    result
}

/// The `intake` benchmark table.
pub async fn run(per_bot: usize, repeat: usize) -> anyhow::Result<()> {
    println!(
        "### Producer intake (botsim → producer → Kafka, acks=all, 100 updates per getUpdates)\n"
    );
    let mut table = Table::new(&[
        "bots",
        "getUpdates round trip",
        "run",
        "load (1/5/15 min)",
        "updates",
        "updates/s",
        "process CPU-s/M (producer+botsim+broker)",
    ]);
    for (bots, delay) in [
        (1, None),
        (4, None),
        (1, Some(Duration::from_millis(50))),
        (4, Some(Duration::from_millis(50))),
    ] {
        // A 50 ms round trip caps one bot at 2 000 updates/s: fewer updates keep the run short.
        let per = if delay.is_some() {
            per_bot.min(10_000)
        } else {
            per_bot
        };
        for rep in 1..=repeat {
            let load = procstat::load_average();
            let intake = measure(bots, per, delay).await?;
            let rate = intake.updates as f64 / intake.seconds;
            table.row(vec![
                bots.to_string(),
                delay.map_or_else(
                    || "local (<1 ms)".to_owned(),
                    |d| format!("+{} ms", d.as_millis()),
                ),
                rep.to_string(),
                load,
                intake.updates.to_string(),
                thousands(rate),
                format!("{:.1}", intake.cpu / intake.updates as f64 * 1e6),
            ]);
            eprintln!("intake {bots} bots {delay:?} run {rep}: {rate:.0}/s");
        }
    }
    table.print();
    Ok(())
}
