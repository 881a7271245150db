//! `tgingest-bench`: the benchmark harness (not part of the test suite).
//!
//! Each subcommand measures one thing and prints markdown tables of figures and ratios taken in
//! the same run on the same machine, with the load average at measurement time; `all` runs
//! everything. The sink is compared with honest ceilings: the ideal COPY of its rows over 1–8
//! parallel connections and a Python consumer group of 1–4 processes, with client and
//! PostgreSQL CPU per million updates and rows (`sink`, on the realistic mix and on a mix with
//! the same count of every update kind: `--mix even`). `write-path` compares statement shapes
//! of the consumer's batch writer on the same prepared batches, without a broker. `catchup`
//! drains the largest backlog the mock cluster holds, first into an empty database and again
//! after a replay into the one holding it; `growth` measures the sink on databases preloaded
//! with millions of stored updates; `scaling` measures throughput and latency against partitions
//! and consumer processes; `quick` is the small same-run check for CI (exit status 1
//! only on a gross regression). Nothing here asserts a time: the figures are for BENCHMARKS.md.
//! Needs the release `tgingest` binary next to this one (or `TGINGEST_BIN`), PostgreSQL at `BENCH_PG_URL`
//! (default 127.0.0.1:5432, user postgres) and, for the Python baseline, a Python with
//! confluent-kafka and psycopg 3 (`--python`).

mod catchup;
mod child;
mod drain;
mod growth;
mod intake;
mod kafka;
mod latency;
mod memory;
mod pg;
mod procstat;
mod quick;
mod report;
mod scaling;
mod sink;
mod status;
mod workload;
mod write_path;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use workload::Mix;

#[derive(Debug, Parser)]
#[command(name = "tgingest-bench", about = "tgingest benchmarks")]
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
    /// Parallel connections of the ideal load, each count measured (the ceiling is the best).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    ideal_connections: Vec<usize>,
    /// Processes of the Python consumer group, each count measured (its figure is the best).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    python_processes: Vec<usize>,
    /// How the topic's updates spread over the update kinds.
    #[arg(long, value_enum, default_value_t = Mix::Realistic)]
    mix: Mix,
}

#[derive(Debug, clap::Args, Clone)]
struct CatchupArgs {
    /// Topic partitions (the mock cluster keeps ~5 MB per partition: more partitions, a larger
    /// backlog).
    #[arg(long, default_value_t = 48, value_parser = clap::value_parser!(i32).range(1..=256))]
    partitions: i32,
    /// Uncompressed bytes per partition at most.
    #[arg(long, default_value_t = 12_000_000)]
    partition_budget: usize,
    /// Parallel connections of the ideal load of the first write's rows (the ceiling is the
    /// best); empty to skip it.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    ideal_connections: Vec<usize>,
}

#[derive(Debug, clap::Args, Clone)]
struct GrowthArgs {
    /// Stored updates preloaded before each measurement (rounded to whole copies of the
    /// workload's rows).
    #[arg(long, value_delimiter = ',', default_value = "0,3000000,10000000")]
    stored: Vec<usize>,
    /// Updates of the workload topic drained at every size.
    #[arg(long, default_value_t = 200_000)]
    updates: usize,
    #[arg(long, default_value_t = 64)]
    partitions: i32,
}

/// The ideal load's and the Python group's defaults, also for `all`.
const IDEAL_CONNECTIONS: [usize; 4] = [1, 2, 4, 8];
const PYTHON_PROCESSES: [usize; 3] = [1, 2, 4];

#[derive(Debug, Subcommand)]
enum Command {
    /// tgingest vs the ideal COPY over 1–8 connections vs broker drain vs the Python consumer
    /// group of 1–4 processes, with CPU per million updates and rows.
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
    /// Throughput and p99 Telegram → row latency against partitions and consumer processes,
    /// with the CPU split between the consumers and PostgreSQL.
    Scaling {
        #[arg(long, value_delimiter = ',', default_value = "1,12,48")]
        partitions: Vec<i32>,
        #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
        processes: Vec<usize>,
        /// Updates of each throughput topic at most (fewer when the partitions fill up).
        #[arg(long, default_value_t = 400_000)]
        updates: usize,
        #[arg(long, default_value_t = 12_000_000)]
        partition_budget: usize,
        /// Rate of the latency measurement, updates/s.
        #[arg(long, default_value_t = 1000)]
        rate: u32,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
    /// `tgingest status` on a database of many stored updates: before and after schema 7.
    Status {
        /// Raw updates to preload.
        #[arg(long, default_value_t = 10_000_000)]
        stored: usize,
        #[arg(long, default_value_t = 8)]
        bots: i64,
        #[arg(long, default_value_t = 12)]
        partitions: i32,
    },
    /// Statement shapes of the write path on the same prepared batches, no broker.
    WritePath {
        #[arg(long, default_value_t = 40_000)]
        updates: usize,
        /// Records per batch transaction.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        /// Concurrent partition workers.
        #[arg(long, default_value_t = 2)]
        workers: i32,
    },
    /// The largest backlog the mock cluster holds, drained into an empty database, again after
    /// `replay --to-earliest --execute` into the one holding it, and with an in-flight budget
    /// that never binds; against the ideal COPY of the same rows.
    Catchup(CatchupArgs),
    /// Sink throughput on databases already holding many stored updates (bulk preloaded), and
    /// the bytes a stored update costs.
    Growth(GrowthArgs),
    /// For CI: tgingest vs the single-connection ideal COPY of the same rows at a small size;
    /// exit status 1 only when tgingest is below --threshold × the ideal in every round.
    Quick {
        #[arg(long, default_value_t = 60_000)]
        updates: usize,
        #[arg(long, default_value_t = 16)]
        partitions: i32,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long, default_value_t = 0.4)]
        threshold: f64,
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
        ideal_connections: args.ideal_connections,
        python_processes: args.python_processes,
        mix: args.mix,
    };
    let catchup_settings = |args: CatchupArgs| catchup::CatchupSettings {
        partitions: args.partitions,
        partition_budget_bytes: args.partition_budget,
        repeat: cli.repeat,
        seed: cli.seed,
        log_dir: cli.log_dir.clone(),
        ideal_connections: args.ideal_connections,
    };
    let growth_settings = |args: GrowthArgs| growth::GrowthSettings {
        stored: args.stored,
        updates: args.updates,
        partitions: args.partitions,
        partition_budget_bytes: 12_000_000,
        repeat: cli.repeat,
        seed: cli.seed,
        log_dir: cli.log_dir.clone(),
    };
    match cli.command {
        Command::Sink(ref args) => sink::run(&sink_settings(args.clone())).await?,
        Command::Catchup(ref args) => catchup::run(&catchup_settings(args.clone())).await?,
        Command::Growth(ref args) => growth::run(&growth_settings(args.clone())).await?,
        Command::Quick {
            updates,
            partitions,
            rounds,
            threshold,
        } => {
            let passed = quick::run(&quick::QuickSettings {
                updates,
                partitions,
                rounds,
                threshold,
                seed: cli.seed,
                log_dir: cli.log_dir.clone(),
            })
            .await?;
            if !passed {
                std::process::exit(1);
            }
        }
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
        Command::WritePath {
            updates,
            batch,
            workers,
        } => write_path::run(updates, batch, workers, cli.repeat, cli.seed).await?,
        Command::Drain { records, batch } => drain::run(records, batch, cli.repeat).await?,
        Command::Scaling {
            ref partitions,
            ref processes,
            updates,
            partition_budget,
            rate,
            seconds,
        } => {
            scaling::run(&scaling::ScalingSettings {
                partitions: partitions.clone(),
                processes: processes.clone(),
                updates,
                partition_budget_bytes: partition_budget,
                rate,
                seconds,
                repeat: cli.repeat,
                seed: cli.seed,
                log_dir: cli.log_dir.clone(),
            })
            .await?;
        }
        Command::Status {
            stored,
            bots,
            partitions,
        } => status::run(stored, bots, partitions, cli.repeat.max(3)).await?,
        Command::All { ref python } => {
            for mix in [Mix::Realistic, Mix::Even] {
                sink::run(&sink_settings(SinkArgs {
                    updates: 200_000,
                    partitions: 64,
                    partition_budget: 12_000_000,
                    batch: 1000,
                    python: python.clone(),
                    tcp_comparison: mix == Mix::Realistic,
                    ideal_connections: IDEAL_CONNECTIONS.to_vec(),
                    python_processes: PYTHON_PROCESSES.to_vec(),
                    mix,
                }))
                .await?;
            }
            write_path::run(40_000, 1000, 2, cli.repeat, cli.seed).await?;
            scaling::run(&scaling::ScalingSettings {
                partitions: vec![1, 12, 48],
                processes: vec![1, 2, 4],
                updates: 400_000,
                partition_budget_bytes: 12_000_000,
                rate: 1000,
                seconds: 10.0,
                repeat: cli.repeat,
                seed: cli.seed,
                log_dir: cli.log_dir.clone(),
            })
            .await?;
            catchup::run(&catchup_settings(CatchupArgs {
                partitions: 48,
                partition_budget: 12_000_000,
                ideal_connections: IDEAL_CONNECTIONS.to_vec(),
            }))
            .await?;
            growth::run(&growth_settings(GrowthArgs {
                stored: vec![0, 3_000_000, 10_000_000],
                updates: 200_000,
                partitions: 64,
            }))
            .await?;
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
