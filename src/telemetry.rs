//! Logging and metrics setup for the process.
//!
//! Logs go to stderr as human text or one JSON object per line (`LOG_FORMAT`), filtered by
//! `RUST_LOG` (default `info`). Metrics are recorded through the `metrics` facade by every crate
//! and rendered in Prometheus text format by the admin server. Nothing here ever formats a secret:
//! configuration types that hold one implement `Debug` without it.

use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global tracing subscriber; `default_filter` applies when `RUST_LOG` is unset.
pub fn init_logging(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // Colour only on a terminal: collected logs (Kubernetes, files) stay plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    // A second initialisation (tests that run several commands in one process) is harmless.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
}

/// Buckets for batch and publish latencies, in seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Installs the Prometheus recorder and returns the handle that renders `/metrics`.
///
/// The recorder is process-global; when one is already installed (several commands run in one
/// test process) a private recorder is returned, which renders only what it records.
pub fn init_metrics() -> PrometheusHandle {
    let builder = || {
        PrometheusBuilder::new()
            .set_buckets(LATENCY_BUCKETS)
            .expect("latency buckets are non-empty")
    };
    let handle = match builder().install_recorder() {
        Ok(handle) => handle,
        Err(_) => builder().build_recorder().handle(),
    };
    let upkeep = handle.clone();
    // Histograms are drained into their summaries by upkeep; without it memory grows.
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(Duration::from_secs(5));
                upkeep.run_upkeep();
            }
        })
        .expect("spawning the metrics upkeep thread");
    describe_metrics();
    handle
}

fn describe_metrics() {
    metrics::describe_gauge!(
        "tgingest_build_info",
        "Always 1; labels carry the version and processor version"
    );
    metrics::gauge!(
        "tgingest_build_info",
        "version" => env!("CARGO_PKG_VERSION"),
        "processor_version" => processor::PROCESSOR_VERSION.to_string(),
    )
    .set(1.0);
}
