//! `tgingest-bench`: the benchmark harness of issue #9 (not part of the test suite).
//!
//! Each subcommand measures one thing and prints a markdown table of figures and ratios taken in
//! the same run on the same machine, with the load average at measurement time; `all` runs
//! everything. Nothing here asserts a time: the figures are for BENCHMARKS.md. Needs the
//! release `tgingest` binary next to this one (or `TGINGEST_BIN`), PostgreSQL at `BENCH_PG_URL`
//! (default 127.0.0.1:5432, user postgres) and, for the Python baseline, a Python with
//! confluent-kafka and psycopg 3 (`--python`).

mod child;
mod drain;
mod intake;
mod kafka;
mod latency;
mod memory;
mod pg;
mod procstat;
mod report;
mod sink;
mod workload;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "tgingest-bench", about = "tgingest benchmarks (issue #9)")]
struct Cli {
    /// Runs of each measurement.
    #[arg(long, default_value_t = 2, global = true)]
    repeat: usize,
    /// Where the children's logs go.
    #[arg(long, default_value = "target/bench-logs", global = true)]
    log_dir: PathBuf,
    /// Workload seed.
    #[arg(long, default_value_t = 42, global = true)]
    seed: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args, Clone)]
struct SinkArgs {
    /// Updates to generate (fewer are loaded if a partition reaches its budget first).
    #[arg(long, default_value_t = 200_000)]
    updates: usize,
    /// Topic partitions.
    #[arg(long, default_value_t = 64)]
    partitions: i32,
    /// Uncompressed bytes per partition at most (the mock broker keeps ~5 MB compressed).
    #[arg(long, default_value_t = 12_000_000)]
    partition_budget: usize,
    /// Records per batch transaction (tgingest, the ideal COPY and Python alike).
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Python interpreter with confluent-kafka and psycopg; the baseline is skipped without it.
    #[arg(long)]
    python: Option<PathBuf>,
    /// With BENCH_PG_SOCKET_DIR set, also drain with tgingest over TCP (checks the vendored
    /// TCP_NODELAY fix: sqlx 0.9.0 itself sets none).
    #[arg(long)]
    tcp_comparison: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// tgingest vs ideal COPY vs broker drain vs the Python baseline.
    Sink(SinkArgs),
    /// Producer intake from the simulated Bot API, 1 and 4 bots, with and without +50 ms.
    Intake {
        #[arg(long, default_value_t = 50_000)]
        per_bot: usize,
    },
    /// Telegram → row visible latency at fixed rates.
    Latency {
        #[arg(long, value_delimiter = ',', default_value = "100,1000,5000")]
        rates: Vec<u32>,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
    /// Peak RSS of a consumer with a large backlog while PostgreSQL is stalled.
    Memory {
        #[arg(long, default_value_t = 48)]
        partitions: i32,
        #[arg(long, default_value_t = 12_000_000)]
        partition_budget: usize,
        /// Consumer settings to measure, each `K:R:B` (CONSUMER_QUEUE_KBYTES_PER_PARTITION :
        /// CONSUMER_BATCH_MAX_RECORDS : CONSUMER_MAX_INFLIGHT_BYTES) or `defaults`.
        #[arg(long, value_delimiter = ',', default_value = MEMORY_CONFIGS)]
        configs: Vec<String>,
        #[arg(long, default_value_t = 20)]
        stall_seconds: u64,
    },
    /// The consumer library in-process (no binary) draining a preloaded topic, vs broker drain.
    Drain {
        /// Messages to preload (12 partitions).
        #[arg(long, default_value_t = 20_000)]
        records: usize,
        /// Records per batch transaction.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
    },
    /// 1, 2 and 4 partition workers.
    Scaling {
        #[arg(long, default_value_t = 12_000_000)]
        partition_budget: usize,
    },
    /// Everything, with the defaults above.
    All {
        #[arg(long)]
        python: Option<PathBuf>,
    },
}

/// Default memory configurations: the consumer's defaults, a larger in-flight budget, and the
/// budget lifted out of the way (the memory of the per-partition bounds alone).
const MEMORY_CONFIGS: &str = "defaults,1024:1000:33554432,1024:1000:1073741824";

fn parse_memory_configs(configs: &[String]) -> anyhow::Result<Vec<memory::Settings>> {
    configs
        .iter()
        .flat_map(|c| c.split(','))
        .map(memory::Settings::parse)
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    std::fs::create_dir_all(&cli.log_dir)?;
    println!(
        "_tgingest-bench {:?}; load average at start {}_\n",
        std::env::args().skip(1).collect::<Vec<_>>(),
        procstat::load_average()
    );
    let sink_settings = |args: SinkArgs| sink::SinkSettings {
        updates: args.updates,
        partitions: args.partitions,
        partition_budget_bytes: args.partition_budget,
        batch: args.batch,
        repeat: cli.repeat,
        python: args.python,
        log_dir: cli.log_dir.clone(),
        seed: cli.seed,
        tcp_comparison: args.tcp_comparison,
    };
    match cli.command {
        Command::Sink(ref args) => sink::run(&sink_settings(args.clone())).await?,
        Command::Intake { per_bot } => intake::run(per_bot, cli.repeat).await?,
        Command::Latency { ref rates, seconds } => {
            latency::run(rates, seconds, cli.repeat, &cli.log_dir).await?;
        }
        Command::Memory {
            partitions,
            partition_budget,
            ref configs,
            stall_seconds,
        } => {
            let configs = parse_memory_configs(configs)?;
            memory::run(
                cli.seed,
                partitions,
                partition_budget,
                &configs,
                Duration::from_secs(stall_seconds),
                cli.repeat,
                &cli.log_dir,
            )
            .await?;
        }
        Command::Drain { records, batch } => drain::run(records, batch, cli.repeat).await?,
        Command::Scaling { partition_budget } => {
            sink::scaling(cli.seed, partition_budget, cli.repeat, &cli.log_dir).await?;
        }
        Command::All { ref python } => {
            sink::run(&sink_settings(SinkArgs {
                updates: 200_000,
                partitions: 64,
                partition_budget: 12_000_000,
                batch: 1000,
                python: python.clone(),
                tcp_comparison: true,
            }))
            .await?;
            sink::scaling(cli.seed, 12_000_000, cli.repeat, &cli.log_dir).await?;
            drain::run(20_000, 1000, cli.repeat).await?;
            intake::run(50_000, cli.repeat).await?;
            latency::run(&[100, 1000, 5000], 10.0, cli.repeat, &cli.log_dir).await?;
            memory::run(
                cli.seed,
                48,
                12_000_000,
                &parse_memory_configs(&[MEMORY_CONFIGS.to_owned()])?,
                Duration::from_secs(20),
                cli.repeat,
                &cli.log_dir,
            )
            .await?;
        }
    }
    Ok(())
}
