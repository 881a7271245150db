//! Logging, tracing and metrics setup for the process.
//!
//! Logs go to stderr as human text or one JSON object per line (`LOG_FORMAT`), filtered by
//! `RUST_LOG` (default `info`). Records of the `log` crate (rdkafka, librdkafka) reach the same
//! subscriber through [`LogBridge`], which maps the one record rdkafka logs at ERROR on every
//! clean shutdown to DEBUG (see [`is_second_consumer_close`]). Nothing here ever formats a
//! secret: configuration types that hold one implement `Debug` without it.
//!
//! Traces (W3C trace context across Kafka, [`component::trace`]) are exported through OTLP
//! (HTTP/protobuf) when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, and not at all when it is not.
//! Guarantees:
//! - only the components' trace spans (target [`component::trace::TARGET`]: the producer's
//!   `update`, the consumer's `batch`) go to the exporter, whatever `RUST_LOG` says, and they
//!   never reach the log output; without an endpoint no layer wants them, so they are disabled
//!   at their call sites and records carry no `traceparent`;
//! - the standard `OTEL_*` variables configure the exporter and the SDK (`OTEL_SERVICE_NAME`,
//!   default `tgingest`; `OTEL_TRACES_SAMPLER`; `OTEL_EXPORTER_OTLP_HEADERS`, never logged);
//!   an endpoint or protocol the exporter cannot use is a configuration error naming the
//!   variable;
//! - spans are batched and exported off the async runtime; [`TraceExport::shutdown`] flushes
//!   them at exit. An unreachable collector costs dropped spans, never the pipeline's progress.
//!
//! Metrics are recorded through the `metrics` facade by every crate and rendered in Prometheus
//! text format by the admin server ([`MetricsHandle::render`]). Guarantees:
//! - the per-partition series (`tgingest_partition_*`, which the consumer sets for every owned
//!   partition each statistics interval) go to a recorder that drops a series not set for
//!   `partition_series_idle`, so a partition this process no longer owns loses its series
//!   instead of keeping its last value; every other series lives as long as the process;
//! - histograms have buckets that fit them: record counts for `tgingest_batch_records`, seconds
//!   for the latencies;
//! - the process metrics (`process_resident_memory_bytes`, `process_cpu_seconds_total`,
//!   `process_open_fds`, …) are read from `/proc` at each scrape (Linux; absent elsewhere);
//! - every series is rendered with HELP text: the process's own here, the producer's and the
//!   consumer's by their `describe` functions.

use std::fmt::Write as _;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use metrics_util::MetricKindMask;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::level_filters::LevelFilter;
use tracing_log::AsLog as _;
use tracing_subscriber::filter::{FilterExt as _, Targets};
use tracing_subscriber::layer::{Filter, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The environment variable that turns trace export on.
pub const OTLP_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// The OTLP protocol variable; only `http/protobuf` is built in.
const OTLP_PROTOCOL_ENV: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";

/// The trace exporter installed by [`init_logging`], if any; flush it with
/// [`TraceExport::shutdown`] before the process exits.
#[derive(Debug, Default)]
pub struct TraceExport(Option<SdkTracerProvider>);

impl TraceExport {
    /// Exports the spans still queued and stops the exporter (bounded by the exporter's timeout).
    pub fn shutdown(self) {
        if let Some(provider) = self.0
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "exporting the last trace spans failed");
        }
    }
}

/// Installs the global tracing subscriber, and [`LogBridge`] for the `log` crate's records;
/// `default_filter` applies when `RUST_LOG` is unset. With `OTEL_EXPORTER_OTLP_ENDPOINT` set,
/// the trace spans are exported through OTLP (see the module header); the error is one line
/// naming the variable that could not be used.
pub fn init_logging(format: LogFormat, default_filter: &str) -> Result<TraceExport, String> {
    let provider = otlp_provider(|name| std::env::var(name).ok())?;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let filter = log_filter(filter);
    // Colour only on a terminal: collected logs (Kubernetes, files) stay plain text.
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let fmt: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Text => fmt.with_filter(filter).boxed(),
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_filter(filter)
            .boxed(),
    };
    let traces = provider
        .as_ref()
        .map(|provider| trace_layer(provider.tracer("tgingest")));
    // A second initialisation (tests that run several commands in one process) is harmless.
    let installed = tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(fmt).with(traces),
    );
    if installed.is_ok() && log::set_boxed_logger(Box::new(LogBridge)).is_ok() {
        log::set_max_level(LevelFilter::current().as_log());
    }
    Ok(TraceExport(if installed.is_ok() { provider } else { None }))
}

/// The log output's filter: `filter` without the trace spans, which are for the exporter only.
fn log_filter<S>(filter: EnvFilter) -> impl Filter<S>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    filter.and(
        Targets::new()
            .with_default(LevelFilter::TRACE)
            .with_target(component::trace::TARGET, LevelFilter::OFF),
    )
}

/// The layer that gives the components' trace spans ([`component::trace::TARGET`]) to an
/// OpenTelemetry `tracer`, and nothing else: what [`init_logging`] installs for OTLP and what the
/// tests install with an in-memory exporter.
pub fn trace_layer<S>(tracer: opentelemetry_sdk::trace::Tracer) -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(Targets::new().with_target(component::trace::TARGET, LevelFilter::TRACE))
}

/// The OTLP tracer provider when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (non-empty); `env` reads
/// a variable.
fn otlp_provider(
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<SdkTracerProvider>, String> {
    let set = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let Some(endpoint) = set(OTLP_ENDPOINT_ENV) else {
        return Ok(None);
    };
    // The exporter would fall back to localhost silently. The value is not echoed: a URL may
    // hold credentials.
    if !url::Url::parse(endpoint.trim()).is_ok_and(|u| matches!(u.scheme(), "http" | "https")) {
        return Err(format!(
            "{OTLP_ENDPOINT_ENV}: not an http:// or https:// URL"
        ));
    }
    if let Some(protocol) = set(OTLP_PROTOCOL_ENV)
        && protocol.trim() != "http/protobuf"
    {
        return Err(format!(
            "{OTLP_PROTOCOL_ENV}: {protocol:?} is not supported (only http/protobuf)"
        ));
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| format!("{OTLP_ENDPOINT_ENV}: cannot export traces there: {e}"))?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if set("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("tgingest");
    }
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build(),
    ))
}

/// Forwards the `log` crate's records to the tracing subscriber (as `tracing_log::LogTracer`
/// does), at their level except for [`is_second_consumer_close`], which becomes DEBUG.
#[derive(Debug)]
struct LogBridge;

impl log::Log for LogBridge {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if is_second_consumer_close(record) {
            let demoted = log::Record::builder()
                .args(*record.args())
                .level(log::Level::Debug)
                .target(record.target())
                .module_path(record.module_path())
                .file(record.file())
                .line(record.line())
                .build();
            let _ = tracing_log::format_trace(&demoted);
        } else {
            let _ = tracing_log::format_trace(record);
        }
    }

    fn flush(&self) {}
}

/// The ERROR rdkafka logs when a group consumer that was already closed is dropped.
///
/// The consumer's polling thread closes the group consumer itself, bounded and on that thread
/// (consumer::group::poll_loop), so the final revoke runs where it may block. rdkafka's
/// `BaseConsumer::drop` then closes it again unconditionally; librdkafka answers "Consumer
/// already closed" (`RD_KAFKA_RESP_ERR__DESTROY`, which rdkafka names `BrokerDestroy`) and
/// rdkafka logs that at ERROR, on every clean shutdown. Nothing failed: the record is shown at
/// DEBUG. Any other error of the drop (another code, another message) keeps its level.
pub fn is_second_consumer_close(record: &log::Record<'_>) -> bool {
    record.level() == log::Level::Error
        && record.target() == "rdkafka::consumer::base_consumer"
        && {
            let message = record.args().to_string();
            message.starts_with("Failed to close consumer queue on drop: ")
                && message.contains("BrokerDestroy")
        }
}

/// Buckets for batch and publish latencies, in seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Buckets for `tgingest_batch_records`: records per batch (1–1000 by default,
/// CONSUMER_BATCH_MAX_RECORDS allows more).
const BATCH_RECORDS_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
];

/// How long a per-partition series lives without being set, for a consumer that sets the
/// series of its owned partitions every `refresh`: three refreshes, so one late statistics
/// callback (a slow rebalance) does not drop an owned partition's series.
pub fn partition_series_idle(refresh: Duration) -> Duration {
    refresh.saturating_mul(3)
}

/// The idle timeout of a process that sets no per-partition series (the producer).
pub const NO_PARTITION_SERIES_IDLE: Duration = Duration::from_secs(60);

/// How often histograms are drained into their summaries (without it memory grows).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The process's recorder: per-partition series go to a recorder that drops idle ones, every
/// other series to one that keeps them.
#[derive(Debug)]
pub struct MetricsRecorder {
    main: PrometheusRecorder,
    partitions: PrometheusRecorder,
}

impl MetricsRecorder {
    /// A recorder whose `tgingest_partition_*` series disappear once not set for
    /// `partition_series_idle`.
    pub fn new(partition_series_idle: Duration) -> Self {
        Self {
            main: builder().build_recorder(),
            partitions: builder()
                .idle_timeout(MetricKindMask::ALL, Some(partition_series_idle))
                .build_recorder(),
        }
    }

    /// What renders this recorder's series.
    pub fn handle(&self) -> MetricsHandle {
        MetricsHandle {
            main: self.main.handle(),
            partitions: self.partitions.handle(),
        }
    }

    fn route(&self, name: &str) -> &PrometheusRecorder {
        if name.starts_with(consumer::PARTITION_SERIES_PREFIX) {
            &self.partitions
        } else {
            &self.main
        }
    }
}

fn builder() -> PrometheusBuilder {
    PrometheusBuilder::new()
        .set_buckets(LATENCY_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full("tgingest_batch_records".into()),
                BATCH_RECORDS_BUCKETS,
            )
        })
        .expect("the bucket lists are non-empty")
}

impl Recorder for MetricsRecorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.route(key.as_str())
            .describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.route(key.as_str())
            .describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.route(key.as_str())
            .describe_histogram(key, unit, description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        self.route(key.name()).register_counter(key, metadata)
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.route(key.name()).register_gauge(key, metadata)
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        self.route(key.name()).register_histogram(key, metadata)
    }
}

/// Renders the process's metrics (`GET /metrics`).
#[derive(Clone)]
pub struct MetricsHandle {
    main: PrometheusHandle,
    partitions: PrometheusHandle,
}

impl std::fmt::Debug for MetricsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsHandle").finish_non_exhaustive()
    }
}

impl MetricsHandle {
    /// Every series in Prometheus text format: the recorded ones, then the process metrics.
    pub fn render(&self) -> String {
        let mut text = self.main.render();
        text.push_str(&self.partitions.render());
        process_metrics(&mut text);
        text
    }

    fn run_upkeep(&self) {
        self.main.run_upkeep();
        self.partitions.run_upkeep();
    }
}

/// Installs the process's recorder and returns the handle that renders `/metrics`.
///
/// The recorder is process-global; when one is already installed (several commands run in one
/// test process) a private recorder's handle is returned, which renders only what it records
/// (and the process metrics).
pub fn init_metrics(partition_series_idle: Duration) -> MetricsHandle {
    let recorder = MetricsRecorder::new(partition_series_idle);
    let handle = recorder.handle();
    let _ = metrics::set_global_recorder(recorder);
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_INTERVAL);
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

/// The process metrics every Prometheus client library exports (names, types and HELP as
/// client_golang's), rendered by [`process_metrics`].
pub const PROCESS_METRICS: &[(&str, &str, &str)] = &[
    (
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
    ),
    (
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
    ),
    (
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
    ),
    (
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
    ),
    (
        "process_max_fds",
        "gauge",
        "Maximum number of open file descriptors.",
    ),
    (
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
    ),
    (
        "process_threads",
        "gauge",
        "Number of OS threads in the process.",
    ),
];

/// Appends the process metrics to `text`, read from `/proc/self` now. A value that cannot be
/// read is left out (its series is absent), never guessed.
fn process_metrics(text: &mut String) {
    let values = read_process_metrics();
    for (name, kind, help) in PROCESS_METRICS {
        if let Some(value) = values.iter().find(|(n, _)| n == name).map(|(_, v)| *v) {
            let _ = write!(
                text,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n\n"
            );
        }
    }
}

/// `/proc` reports times in USER_HZ clock ticks, which Linux fixes at 100 for userspace.
const USER_HZ: f64 = 100.0;

#[cfg(target_os = "linux")]
fn read_process_metrics() -> Vec<(&'static str, f64)> {
    let mut values = Vec::new();
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is parenthesised and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime, stime and starttime are fields 14, 15 and 22 of the line; `fields` starts at 3.
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    if let (Some(utime), Some(stime)) = (field(14), field(15)) {
        values.push(("process_cpu_seconds_total", (utime + stime) / USER_HZ));
    }
    let boot_time = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<f64>().ok())
    });
    if let (Some(boot), Some(start)) = (boot_time, field(22)) {
        values.push(("process_start_time_seconds", boot + start / USER_HZ));
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let status_value = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    if let Some(kib) = status_value("VmRSS:") {
        values.push(("process_resident_memory_bytes", kib * 1024.0));
    }
    if let Some(kib) = status_value("VmSize:") {
        values.push(("process_virtual_memory_bytes", kib * 1024.0));
    }
    if let Some(threads) = status_value("Threads:") {
        values.push(("process_threads", threads));
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        // The directory handle being read is one of the entries.
        values.push(("process_open_fds", fds.count().saturating_sub(1) as f64));
    }
    let max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            limits
                .lines()
                .find_map(|l| l.strip_prefix("Max open files"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
        });
    if let Some(max) = max_fds {
        values.push(("process_max_fds", max));
    }
    values
}

#[cfg(not(target_os = "linux"))]
fn read_process_metrics() -> Vec<(&'static str, f64)> {
    Vec::new()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map(|v| v.parse().unwrap())
    }

    #[test]
    fn partition_series_disappear_when_no_longer_set_and_other_series_stay() {
        let recorder = MetricsRecorder::new(Duration::from_millis(200));
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            metrics::gauge!("tgingest_partition_lag", "partition" => "0").set(5.0);
            metrics::gauge!("tgingest_partition_lag", "partition" => "1").set(7.0);
            // Set once, at startup (as the producer's topic durability is): must stay.
            metrics::gauge!("tgingest_topic_replication_factor", "topic" => "t").set(3.0);
            metrics::counter!("tgingest_records_consumed_total").increment(1);
        });
        let text = handle.render();
        assert_eq!(
            sample(&text, r#"tgingest_partition_lag{partition="1"}"#),
            Some(7.0)
        );

        // Partition 0 is still owned (set again), partition 1 is not.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let text = loop {
            std::thread::sleep(Duration::from_millis(100));
            metrics::with_local_recorder(&recorder, || {
                metrics::gauge!("tgingest_partition_lag", "partition" => "0").set(4.0);
            });
            let text = handle.render();
            if !text.contains(r#"partition="1""#) || std::time::Instant::now() > deadline {
                break text;
            }
        };
        assert_eq!(
            sample(&text, r#"tgingest_partition_lag{partition="1"}"#),
            None,
            "{text}"
        );
        assert_eq!(
            sample(&text, r#"tgingest_partition_lag{partition="0"}"#),
            Some(4.0)
        );
        assert_eq!(
            sample(&text, r#"tgingest_topic_replication_factor{topic="t"}"#),
            Some(3.0),
            "{text}"
        );
        assert_eq!(sample(&text, "tgingest_records_consumed_total"), Some(1.0));
    }

    #[test]
    fn batch_records_has_count_buckets_and_latencies_have_seconds() {
        let recorder = MetricsRecorder::new(Duration::from_secs(60));
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            metrics::histogram!("tgingest_batch_records").record(700.0);
            metrics::histogram!("tgingest_batch_seconds").record(0.02);
        });
        let text = handle.render();
        let buckets = |name: &str| -> Vec<String> {
            text.lines()
                .filter_map(|l| l.strip_prefix(&format!("{name}_bucket{{le=\"")))
                .map(|l| l.split('"').next().unwrap().to_owned())
                .collect()
        };
        let records = buckets("tgingest_batch_records");
        assert!(records.contains(&"1".to_owned()), "{records:?}");
        assert!(records.contains(&"1000".to_owned()), "{records:?}");
        assert!(!records.contains(&"0.001".to_owned()), "{records:?}");
        assert_eq!(
            sample(&text, r#"tgingest_batch_records_bucket{le="500"}"#),
            Some(0.0)
        );
        assert_eq!(
            sample(&text, r#"tgingest_batch_records_bucket{le="1000"}"#),
            Some(1.0)
        );
        let seconds = buckets("tgingest_batch_seconds");
        assert!(seconds.contains(&"0.025".to_owned()), "{seconds:?}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn process_metrics_are_rendered_with_help_and_plausible_values() {
        let handle = MetricsRecorder::new(Duration::from_secs(60)).handle();
        let text = handle.render();
        for (name, kind, _) in PROCESS_METRICS {
            assert!(text.contains(&format!("# HELP {name} ")), "{name}:\n{text}");
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "{name}:\n{text}"
            );
        }
        let rss = sample(&text, "process_resident_memory_bytes").unwrap();
        assert!(rss > 1_000_000.0, "{rss}");
        let fds = sample(&text, "process_open_fds").unwrap();
        let _file = std::fs::File::open("/proc/self/stat").unwrap();
        let more = sample(&handle.render(), "process_open_fds").unwrap();
        assert_eq!(more, fds + 1.0, "an open file is counted");
        assert!(sample(&text, "process_max_fds").unwrap() >= more);
        let start = sample(&text, "process_start_time_seconds").unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            start <= now + 1.0 && start > now - 86_400.0,
            "{start} vs {now}"
        );
        assert!(sample(&text, "process_cpu_seconds_total").unwrap() >= 0.0);
    }

    #[test]
    fn trace_spans_reach_only_the_trace_layer_and_are_disabled_without_it() {
        use opentelemetry::trace::TracerProvider as _;
        let logs = || {
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::sink)
                .with_filter(log_filter(EnvFilter::new("trace")))
        };
        let trace_span = || tracing::info_span!(target: component::trace::TARGET, "batch");
        let without = tracing_subscriber::registry().with(logs());
        tracing::subscriber::with_default(without, || {
            assert!(trace_span().is_disabled(), "no layer wants a trace span");
            assert!(!tracing::info_span!("partition_worker").is_disabled());
        });

        let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let with = tracing_subscriber::registry()
            .with(logs())
            .with(trace_layer(provider.tracer("test")));
        tracing::subscriber::with_default(with, || {
            let _worker = tracing::info_span!("partition_worker").entered();
            assert!(!trace_span().is_disabled());
        });
        let names: Vec<_> = exporter
            .get_finished_spans()
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["batch"], "only trace spans are exported");
    }

    #[test]
    fn no_endpoint_no_exporter_and_an_unusable_protocol_names_its_variable() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert!(otlp_provider(env(&[])).unwrap().is_none());
        assert!(
            otlp_provider(env(&[(OTLP_ENDPOINT_ENV, " ")]))
                .unwrap()
                .is_none()
        );
        let error = otlp_provider(env(&[
            (OTLP_ENDPOINT_ENV, "http://collector:4317"),
            (OTLP_PROTOCOL_ENV, "grpc"),
        ]))
        .unwrap_err();
        assert!(
            error.starts_with("OTEL_EXPORTER_OTLP_PROTOCOL: ") && !error.contains('\n'),
            "{error}"
        );
        for endpoint in [
            "collector:4318",
            "not a url",
            "grpc://user:hunter2@collector",
        ] {
            let vars: &'static [(&'static str, &'static str)] =
                Box::leak(Box::new([(OTLP_ENDPOINT_ENV, endpoint)]));
            let error = otlp_provider(env(vars)).unwrap_err();
            assert_eq!(
                error,
                "OTEL_EXPORTER_OTLP_ENDPOINT: not an http:// or https:// URL"
            );
        }
    }

    fn record(
        level: log::Level,
        target: &str,
        message: std::fmt::Arguments<'_>,
        f: impl FnOnce(&log::Record<'_>),
    ) {
        f(&log::Record::builder()
            .level(level)
            .target(target)
            .args(message)
            .build());
    }

    #[test]
    fn only_rdkafkas_second_close_of_a_closed_consumer_is_demoted() {
        let target = "rdkafka::consumer::base_consumer";
        let err = "Consumer queue close error: BrokerDestroy (Local: Broker handle destroyed for termination)";
        record(
            log::Level::Error,
            target,
            format_args!("Failed to close consumer queue on drop: {err}"),
            |r| assert!(is_second_consumer_close(r)),
        );
        // Another failure of the same close, or the same text elsewhere, keeps its level.
        record(
            log::Level::Error,
            target,
            format_args!(
                "Failed to close consumer queue on drop: Consumer queue close error: Fatal (Local: Fatal error)"
            ),
            |r| assert!(!is_second_consumer_close(r)),
        );
        record(
            log::Level::Error,
            "librdkafka",
            format_args!("Failed to close consumer queue on drop: {err}"),
            |r| assert!(!is_second_consumer_close(r)),
        );
    }
}
