//! Trace context across the pipeline, in-process with the test broker and PostgreSQL: the
//! producer's `update` span reaches the consumer's `batch` span (the transaction that COMMITs the
//! update) as a span link through the record's `traceparent` header, and a missing or malformed
//! header costs only the link.
//!
//! Spans go to the OpenTelemetry SDK's in-memory exporter through the host's own
//! [`tgingest::telemetry::trace_layer`], installed once per process.
#![allow(clippy::unwrap_used)]

use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::Value;
use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use processor::wire::header;
use producer::{BackoffPolicy, IntakeMode, PollingConfig, ProducerConfig};
use secrecy::SecretString;
use testkit::sink::{RunningConsumer, wait_for_log_end};
use testkit::updates::{BOT, messages, produce};
use testkit::{eventually, wait_until};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::layer::SubscriberExt as _;

const TOKEN: &str = "7000000001:AAHtestTOKENoneXXXXXXXXXXXXXXXXXXXX";
const WAIT: Duration = Duration::from_secs(45);

/// The process's span exporter (the subscriber is global: the pipeline runs on many threads).
fn exporter() -> &'static InMemorySpanExporter {
    static EXPORTER: OnceLock<InMemorySpanExporter> = OnceLock::new();
    EXPORTER.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tgingest::telemetry::trace_layer(provider.tracer("test")));
        tracing::subscriber::set_global_default(subscriber).unwrap();
        exporter
    })
}

fn spans() -> Vec<SpanData> {
    exporter().get_finished_spans().unwrap()
}

fn attribute(span: &SpanData, name: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == name)
        .map(|kv| kv.value.clone())
}

/// The finished batch spans whose transaction committed.
fn committed_batches(spans: &[SpanData]) -> Vec<&SpanData> {
    spans
        .iter()
        .filter(|s| s.name == "batch")
        .filter(|s| attribute(s, "outcome") == Some(Value::from("committed")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_update_is_one_trace_from_intake_to_the_commit_of_its_batch() {
    exporter();
    let (db, broker, topic, group) = testkit::sink::setup(1).await;
    let api = botsim::BotApi::start(botsim::BotApiConfig::default())
        .await
        .unwrap();
    api.add_bot(TOKEN, botsim::BotInfo::new(BOT, "trace_bot", "Trace"));
    let mut config = ProducerConfig::new(
        api.base_url().parse().unwrap(),
        vec![SecretString::from(TOKEN.to_owned())],
        topic.clone(),
        broker.client_config(),
    );
    config.mode = IntakeMode::Polling(PollingConfig {
        timeout: Duration::from_secs(1),
        request_timeout: Some(Duration::from_secs(3)),
        ..PollingConfig::default()
    });
    config.backoff = BackoffPolicy {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(400),
    };
    let stop = CancellationToken::new();
    let producer = tokio::spawn(producer::run(
        config,
        stop.clone(),
        std::sync::Arc::new(producer::NoReadiness),
    ));
    let consumer = RunningConsumer::start(
        testkit::sink::config(&broker, &group, &topic),
        db.pool().clone(),
    );

    let update_id = api
        .push_kind(
            TOKEN,
            "message",
            br#"{"message_id":1,"chat":{"id":-100555},"text":"traced"}"#,
        )
        .unwrap();
    // The update span ends when the producer drops the acknowledged record; the batch span
    // after its COMMIT.
    let connected = eventually(WAIT, async || {
        let spans = spans();
        let Some(update) = spans.iter().find(|s| {
            s.name == "update" && attribute(s, "update_id") == Some(Value::I64(update_id))
        }) else {
            return false;
        };
        committed_batches(&spans).iter().any(|batch| {
            batch.links.iter().any(|link| {
                link.span_context.trace_id() == update.span_context.trace_id()
                    && link.span_context.span_id() == update.span_context.span_id()
            })
        })
    })
    .await;
    let spans = spans();
    assert!(
        connected,
        "no committed batch span links to update {update_id}'s span: {spans:#?}"
    );
    let update = spans
        .iter()
        .find(|s| s.name == "update" && attribute(s, "update_id") == Some(Value::I64(update_id)))
        .unwrap();
    assert_eq!(update.parent_span_id, SpanId::INVALID, "intake is the root");
    assert_eq!(attribute(update, "bot_id"), Some(Value::I64(BOT)));
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM raw_updates WHERE bot_id = $1 AND update_id = $2")
            .bind(BOT)
            .bind(update_id)
            .fetch_one(db.pool())
            .await
            .unwrap();
    assert_eq!(stored, 1, "the linked batch committed the update");
    // No secret and no content in any span.
    let everything = format!("{spans:?}");
    assert!(
        !everything.contains("AAHtest"),
        "the token leaked into a span"
    );
    assert!(!everything.contains("traced"), "update content in a span");

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(20), producer)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    consumer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_malformed_traceparent_costs_only_the_link() {
    exporter();
    let (db, broker, topic, group) = testkit::sink::setup(1).await;
    let trace_id = TraceId::from_hex("5ca1ab1e00000000000000000000cafe").unwrap();
    let span_id = SpanId::from_hex("00000000000b0a75").unwrap();
    let mut outgoing = messages(900_000, 3, 1);
    outgoing[0].headers.push((
        header::TRACEPARENT.to_owned(),
        format!("00-{trace_id}-{span_id}-01").into_bytes(),
    ));
    outgoing[1].headers.push((
        header::TRACEPARENT.to_owned(),
        b"00-not-a-traceparent".to_vec(),
    ));
    let manifest = produce(&broker.client_config(), &topic, &outgoing).await;
    let consumer = RunningConsumer::start(
        testkit::sink::config(&broker, &group, &topic),
        db.pool().clone(),
    );
    wait_for_log_end(db.pool(), &group, &manifest, WAIT).await;
    let (rows, dead): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM raw_updates), (SELECT count(*) FROM dead_letters)",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(
        (rows, dead),
        (3, 0),
        "every record stored, none dead-lettered"
    );

    // The batch span ends just after the COMMIT that moved the offset.
    let linked_once = async || {
        let spans = spans();
        let links: Vec<_> = committed_batches(&spans)
            .iter()
            .flat_map(|b| b.links.iter())
            .filter(|l| l.span_context.trace_id() == trace_id)
            .map(|l| l.span_context.span_id())
            .collect();
        links == [span_id]
    };
    wait_until(
        Duration::from_secs(10),
        "one committed batch span links to the one valid context",
        linked_once,
    )
    .await;
    consumer.stop().await;
}
