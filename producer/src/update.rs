//! From one update's bytes to the Kafka record that carries them (DESIGN.md §3).
//!
//! The value of a record is always the update's bytes exactly as Telegram sent them. Only the key
//! and the headers are derived, by a light inspection that never decodes string contents, so
//! `\u0000` and lone surrogate escapes (real Telegram content that a `String` refuses) never make
//! an update unreadable. Bytes that are not a JSON object with an integer `update_id`, and updates
//! too large for the broker, become a small JSON envelope with a `tg-error` header instead, so they
//! reach the topic (and, downstream, the dead letters) rather than blocking the confirm.
//!
//! The key, the headers and the envelope's format are the wire contract, [`processor::wire`]; this
//! module decides which record an update's bytes become and keeps it under the size limit.
//!
//! Each update gets its own trace: a root span `update` at [`component::trace::TARGET`], opened
//! at intake ([`record_for`]) and closed when the last copy of its record is dropped (after Kafka
//! acknowledged it, or the attempt was given up). When that span is recorded (an OpenTelemetry
//! exporter is installed), its W3C context travels in the record's `traceparent` header, which
//! envelopes keep; otherwise the span is disabled and no header is written.

use std::fmt;

use opentelemetry::propagation::{Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use processor::wire::{self, EnvelopeReason, NO_KIND, Subject, header};
use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

/// librdkafka counts the record batch and record framing against `message.max.bytes` (about 61 +
/// 21 bytes plus varints); a round margin keeps the pre-check on the safe side of its own check.
const FRAMING_MARGIN: usize = 512;

/// What the inspection learned about one update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateInfo {
    /// The update's integer id.
    pub update_id: i64,
    /// The first key other than `update_id` (`"unknown"` when there is none).
    pub kind: String,
    /// Whom the update is about, for the partition key.
    pub subject: Subject,
}

/// Inspects raw bytes: `Ok` for a JSON object with an integer `update_id`, else why not.
pub fn inspect(raw: &[u8]) -> Result<UpdateInfo, (EnvelopeReason, String)> {
    let text = std::str::from_utf8(raw).map_err(|e| {
        (
            EnvelopeReason::NotJson,
            format!("not UTF-8 (first bad byte at {})", e.valid_up_to()),
        )
    })?;
    let header = serde_json::from_str::<ObjectHeader<'_>>(text).map_err(|e| {
        let reason = if e.is_data() {
            EnvelopeReason::NotAnUpdate
        } else {
            EnvelopeReason::NotJson
        };
        (reason, e.to_string())
    })?;
    let update_id = match header.update_id {
        Some(Some(id)) => id,
        Some(None) => {
            return Err((
                EnvelopeReason::NotAnUpdate,
                "update_id is not an integer".to_owned(),
            ));
        }
        None => {
            return Err((
                EnvelopeReason::NotAnUpdate,
                "the object has no update_id".to_owned(),
            ));
        }
    };
    let (kind, subject) = match header.kind {
        Some((kind, body)) => (kind, subject_of(body)),
        None => (NO_KIND.to_owned(), Subject::Bot),
    };
    Ok(UpdateInfo {
        update_id,
        kind,
        subject,
    })
}

/// One record ready for the topic.
#[derive(Debug, Clone)]
pub struct OutgoingRecord {
    /// The partition key.
    pub key: String,
    /// The value: the update's bytes, or an envelope.
    pub value: Vec<u8>,
    /// Header names and values, in order.
    pub headers: Vec<(&'static str, String)>,
    /// The update id, when the bytes carry one (envelopes of oversized updates keep it).
    pub update_id: Option<i64>,
    /// The update kind (`"unknown"` for an envelope that has none).
    pub kind: String,
    /// Why this record is an envelope, if it is one.
    pub envelope: Option<EnvelopeReason>,
    /// The update's trace span (see the module header); copies of the record share it.
    pub span: tracing::Span,
}

/// Builds the record for one update's bytes received for `bot_id` at `received_at_ms`, and opens
/// the update's trace span.
pub fn record_for(
    bot_id: i64,
    raw: &[u8],
    received_at_ms: i64,
    message_max_bytes: usize,
) -> OutgoingRecord {
    // A root: each update is its own trace, however long the poller or the webhook server runs.
    // Bot id, update id and kind only: never the token, the key (a chat or user id) or the bytes.
    let span = tracing::info_span!(
        target: component::trace::TARGET,
        parent: None,
        "update",
        otel.kind = "producer",
        bot_id,
        update_id = tracing::field::Empty,
        update_type = tracing::field::Empty,
        envelope = tracing::field::Empty,
    );
    let record = match inspect(raw) {
        Ok(info) => {
            let key = wire::record_key(bot_id, &info.subject);
            let mut headers =
                wire::update_headers(bot_id, info.update_id, &info.kind, received_at_ms);
            trace_header(&span, &mut headers);
            let record = OutgoingRecord {
                key,
                value: raw.to_vec(),
                headers,
                update_id: Some(info.update_id),
                kind: info.kind,
                envelope: None,
                span,
            };
            if fits(&record, message_max_bytes) {
                record
            } else {
                let detail = format!(
                    "{} bytes exceed message.max.bytes {message_max_bytes}",
                    raw.len()
                );
                envelope_for(
                    &record,
                    raw,
                    EnvelopeReason::TooLarge,
                    &detail,
                    message_max_bytes,
                )
            }
        }
        Err((reason, detail)) => {
            let mut headers = wire::unidentified_headers(bot_id, received_at_ms);
            trace_header(&span, &mut headers);
            let base = OutgoingRecord {
                key: wire::record_key(bot_id, &Subject::Bot),
                value: Vec::new(),
                headers,
                update_id: None,
                kind: NO_KIND.to_owned(),
                envelope: None,
                span,
            };
            envelope_for(&base, raw, reason, &detail, message_max_bytes)
        }
    };
    if let Some(update_id) = record.update_id {
        record.span.record("update_id", update_id);
    }
    record.span.record("update_type", record.kind.as_str());
    record
}

/// Appends the `traceparent` header of `span` when it is recorded (an exporter is installed).
fn trace_header(span: &tracing::Span, headers: &mut Vec<(&'static str, String)>) {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    if span.is_disabled() {
        return;
    }
    let context = span.context();
    if context.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&context, &mut TraceHeader(headers));
    }
}

/// Takes the `traceparent` the propagator writes; `tracestate` (empty for our root spans) is not
/// part of the wire contract.
struct TraceHeader<'a>(&'a mut Vec<(&'static str, String)>);

impl Injector for TraceHeader<'_> {
    fn set(&mut self, key: &str, value: String) {
        if key == header::TRACEPARENT {
            self.0.push((header::TRACEPARENT, value));
        }
    }
}

/// Turns `record` (whose original bytes are `raw`) into an envelope, keeping its key, its update
/// id and its headers. Used up front and when the broker or librdkafka refuses the size.
pub fn envelope_for(
    record: &OutgoingRecord,
    raw: &[u8],
    reason: EnvelopeReason,
    detail: &str,
    message_max_bytes: usize,
) -> OutgoingRecord {
    let mut out = identified_envelope(record, raw, reason, detail);
    let candidate = wire::envelope_value(reason, detail, raw, true);
    let identified = std::mem::replace(&mut out.value, candidate);
    if !fits(&out, message_max_bytes) {
        out.value = identified;
    }
    out
}

/// Turns `record` (whose original bytes are `raw`) into an envelope that leaves the original out
/// and identifies it by size and SHA-256, keeping its key, update id and headers: for a record the
/// broker refused for its size, whose bytes cannot travel however they are wrapped.
pub fn identified_envelope(
    record: &OutgoingRecord,
    raw: &[u8],
    reason: EnvelopeReason,
    detail: &str,
) -> OutgoingRecord {
    record.span.record("envelope", reason.as_str());
    OutgoingRecord {
        key: record.key.clone(),
        value: wire::envelope_value_identified(reason, detail, raw),
        headers: wire::envelope_headers(&record.headers, reason, detail, raw.len()),
        update_id: record.update_id,
        kind: record.kind.clone(),
        envelope: Some(reason),
        span: record.span.clone(),
    }
}

/// Whether librdkafka will accept the record under `message.max.bytes`.
pub(crate) fn fits(record: &OutgoingRecord, message_max_bytes: usize) -> bool {
    let headers: usize = record
        .headers
        .iter()
        .map(|(name, value)| name.len() + value.len() + 4)
        .sum();
    record.value.len() + record.key.len() + headers + FRAMING_MARGIN <= message_max_bytes
}

/// The chat or user an update's body names: `chat`, `message.chat` (callback queries),
/// `voter_chat` (anonymous poll answers), then `from`, then `user`. Anything unexpected in the
/// shape only costs the finer key, never the update.
fn subject_of(body: &RawValue) -> Subject {
    let Ok(body) = serde_json::from_str::<Body<'_>>(body.get()) else {
        return Subject::Bot;
    };
    let chat = body
        .chat
        .and_then(|c| c.id())
        .or_else(|| body.message.and_then(|m| m.chat).and_then(|c| c.id()))
        .or_else(|| body.voter_chat.and_then(|c| c.id()));
    if let Some(chat) = chat {
        return Subject::Chat(chat);
    }
    match body
        .from
        .and_then(|u| u.id())
        .or_else(|| body.user.and_then(|u| u.id()))
    {
        Some(user) => Subject::User(user),
        None => Subject::Bot,
    }
}

#[derive(Deserialize)]
struct Body<'a> {
    #[serde(borrow, default)]
    chat: Option<Entity<'a>>,
    #[serde(borrow, default)]
    message: Option<MessageRef<'a>>,
    #[serde(borrow, default)]
    voter_chat: Option<Entity<'a>>,
    #[serde(borrow, default)]
    from: Option<Entity<'a>>,
    #[serde(borrow, default)]
    user: Option<Entity<'a>>,
}

#[derive(Deserialize)]
struct MessageRef<'a> {
    #[serde(borrow, default)]
    chat: Option<Entity<'a>>,
}

#[derive(Deserialize)]
struct Entity<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
}

impl Entity<'_> {
    /// The id's integer text, if it is an integer literal.
    fn id(&self) -> Option<String> {
        let text = self.id?.get().trim();
        let digits = text.strip_prefix('-').unwrap_or(text);
        (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then(|| text.to_owned())
    }
}

/// The top level of an update: the id (`Some(None)` when present but not an integer) and the
/// first other key with its value, which is kept raw so its strings are never decoded.
struct ObjectHeader<'a> {
    update_id: Option<Option<i64>>,
    kind: Option<(String, &'a RawValue)>,
}

impl<'de> serde::Deserialize<'de> for ObjectHeader<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(HeaderVisitor)
    }
}

struct HeaderVisitor;

impl<'de> Visitor<'de> for HeaderVisitor {
    type Value = ObjectHeader<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ObjectHeader<'de>, A::Error> {
        let mut update_id = None;
        let mut kind = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == "update_id" {
                let value: &RawValue = map.next_value()?;
                if update_id.is_none() {
                    update_id = Some(serde_json::from_str::<i64>(value.get()).ok());
                }
            } else if kind.is_none() {
                let value: &RawValue = map.next_value()?;
                kind = Some((key, value));
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(ObjectHeader { update_id, kind })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn header<'a>(record: &'a OutgoingRecord, name: &str) -> Option<&'a str> {
        record
            .headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn a_message_is_keyed_by_its_chat() {
        let raw = br#"{"update_id":5,"message":{"message_id":1,"from":{"id":7},"chat":{"id":-100123,"type":"supergroup"},"text":"x"}}"#;
        let record = record_for(42, raw, 1_700_000_000_000, 1_000_000);
        assert_eq!(record.key, "42:-100123");
        assert_eq!(record.value, raw.to_vec());
        assert_eq!(header(&record, wire::header::UPDATE_ID), Some("5"));
        assert_eq!(header(&record, wire::header::UPDATE_TYPE), Some("message"));
        assert_eq!(header(&record, wire::header::BOT_ID), Some("42"));
        assert_eq!(
            header(&record, wire::header::RECEIVED_AT),
            Some("1700000000000")
        );
        assert_eq!(
            header(&record, wire::header::CONTENT_TYPE),
            Some(wire::CONTENT_TYPE_JSON)
        );
        assert_eq!(header(&record, wire::header::ERROR), None);
    }

    #[test]
    fn a_callback_query_is_keyed_by_the_chat_of_its_message_before_its_sender() {
        let raw = br#"{"update_id":6,"callback_query":{"id":"1","from":{"id":9},"message":{"message_id":3,"chat":{"id":55}}}}"#;
        assert_eq!(record_for(1, raw, 0, 1_000_000).key, "1:55");
    }

    #[test]
    fn an_inline_query_is_keyed_by_its_user() {
        let raw = br#"{"update_id":7,"inline_query":{"id":"q","from":{"id":4503599627370495},"query":"a"}}"#;
        assert_eq!(record_for(1, raw, 0, 1_000_000).key, "1:u4503599627370495");
    }

    #[test]
    fn a_poll_answer_by_a_user_is_keyed_by_the_user_and_by_a_channel_by_the_chat() {
        let user =
            br#"{"update_id":8,"poll_answer":{"poll_id":"p","user":{"id":12},"option_ids":[0]}}"#;
        let chat = br#"{"update_id":9,"poll_answer":{"poll_id":"p","voter_chat":{"id":-100},"option_ids":[0]}}"#;
        assert_eq!(record_for(3, user, 0, 1_000_000).key, "3:u12");
        assert_eq!(record_for(3, chat, 0, 1_000_000).key, "3:-100");
    }

    #[test]
    fn a_poll_has_only_the_bot_in_its_key() {
        let raw = br#"{"update_id":10,"poll":{"id":"p","question":"q","options":[]}}"#;
        let record = record_for(3, raw, 0, 1_000_000);
        assert_eq!(record.key, "3");
        assert_eq!(record.kind, "poll");
    }

    #[test]
    fn an_unknown_kind_passes_through_with_its_name() {
        let raw = br#"{"update_id":11,"future_kind":{"chat":{"id":77},"novel":[1,2]}}"#;
        let record = record_for(3, raw, 0, 1_000_000);
        assert_eq!(record.kind, "future_kind");
        assert_eq!(record.key, "3:77");
        assert_eq!(record.envelope, None);
    }

    #[test]
    fn a_lone_surrogate_and_a_nul_neither_hide_the_id_nor_change_the_bytes() {
        let raw = br#"{"update_id":12,"message":{"chat":{"id":1},"text":"a\u0000b\ud83dc"}}"#;
        let record = record_for(3, raw, 0, 1_000_000);
        assert_eq!(record.update_id, Some(12));
        assert_eq!(record.key, "3:1");
        assert_eq!(record.value, raw.to_vec());
        assert_eq!(record.envelope, None);
    }

    #[test]
    fn a_lone_surrogate_in_an_id_bearing_field_only_costs_the_finer_key() {
        // `chat` is a string with a lone surrogate, not an object: the key falls back to the bot.
        let raw = br#"{"update_id":13,"message":{"chat":"\ud800"}}"#;
        let record = record_for(3, raw, 0, 1_000_000);
        assert_eq!(record.key, "3");
        assert_eq!(record.envelope, None);
    }

    #[test]
    fn an_object_without_update_id_becomes_an_envelope_with_the_original() {
        let raw = br#"{"message":{"text":"x"}}"#;
        let record = record_for(3, raw, 0, 1_000_000);
        assert_eq!(record.envelope, Some(EnvelopeReason::NotAnUpdate));
        assert!(
            header(&record, wire::header::ERROR)
                .unwrap()
                .starts_with("not_an_update")
        );
        assert_eq!(header(&record, wire::header::ORIGINAL_SIZE), Some("24"));
        let value: serde_json::Value = serde_json::from_slice(&record.value).unwrap();
        assert_eq!(value["original"], std::str::from_utf8(raw).unwrap());
        assert_eq!(value["tg_error"]["reason"], "not_an_update");
        assert_eq!(record.key, "3");
    }

    #[test]
    fn a_string_update_id_is_not_an_update() {
        let record = record_for(3, br#"{"update_id":"12","poll":{}}"#, 0, 1_000_000);
        assert_eq!(record.envelope, Some(EnvelopeReason::NotAnUpdate));
    }

    #[test]
    fn an_array_and_truncated_text_are_envelopes() {
        assert_eq!(
            record_for(3, b"[1,2]", 0, 1_000_000).envelope,
            Some(EnvelopeReason::NotAnUpdate)
        );
        assert_eq!(
            record_for(3, br#"{"update_id":1,"mess"#, 0, 1_000_000).envelope,
            Some(EnvelopeReason::NotJson)
        );
    }

    #[test]
    fn bytes_that_are_not_utf8_keep_their_original_as_hex() {
        let record = record_for(3, &[0xff, 0x00, 0x41], 0, 1_000_000);
        assert_eq!(record.envelope, Some(EnvelopeReason::NotJson));
        let value: serde_json::Value = serde_json::from_slice(&record.value).unwrap();
        assert_eq!(value["original_hex"], "ff0041");
    }

    #[test]
    fn an_oversized_update_becomes_a_small_envelope_keeping_key_and_id() {
        let text = "x".repeat(20_000);
        let raw = format!(r#"{{"update_id":14,"message":{{"chat":{{"id":5}},"text":"{text}"}}}}"#);
        let record = record_for(3, raw.as_bytes(), 0, 10_000);
        assert_eq!(record.envelope, Some(EnvelopeReason::TooLarge));
        assert!(record.value.len() < 1_000);
        assert_eq!(record.key, "3:5");
        assert_eq!(header(&record, wire::header::UPDATE_ID), Some("14"));
        assert_eq!(
            header(&record, wire::header::ORIGINAL_SIZE),
            Some(raw.len().to_string().as_str())
        );
        let value: serde_json::Value = serde_json::from_slice(&record.value).unwrap();
        assert!(value.get("original").is_none());
        assert_eq!(
            value["tg_error"]["original_sha256"].as_str().map(str::len),
            Some(64)
        );
        assert!(fits(&record, 10_000));
    }

    #[test]
    fn every_fixture_is_an_update_with_a_kind() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/updates");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let raw = std::fs::read(&path).unwrap();
            let info = inspect(&raw).unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
            assert_ne!(info.kind, NO_KIND, "{}", path.display());
            seen += 1;
        }
        assert!(seen > 10, "only {seen} fixtures found in {dir}");
    }

    /// Runs `f` with a subscriber that records the trace spans into an in-memory exporter, and
    /// returns what `f` returned and the finished spans.
    fn traced<T>(f: impl FnOnce() -> T) -> (T, Vec<opentelemetry_sdk::trace::SpanData>) {
        use opentelemetry::trace::TracerProvider as _;
        use tracing_subscriber::layer::SubscriberExt as _;
        let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let out = tracing::subscriber::with_default(subscriber, f);
        (out, exporter.get_finished_spans().unwrap())
    }

    #[test]
    fn without_a_trace_exporter_no_traceparent_is_written() {
        let raw = br#"{"update_id":5,"message":{"chat":{"id":1},"text":"x"}}"#;
        let record = record_for(42, raw, 0, 1_000_000);
        assert!(record.span.is_disabled());
        assert_eq!(header(&record, wire::header::TRACEPARENT), None);
        assert_eq!(record.headers, wire::update_headers(42, 5, "message", 0));
    }

    #[test]
    fn an_update_carries_the_traceparent_of_its_own_root_span_until_dropped() {
        use opentelemetry::trace::TraceContextExt as _;
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        let raw = br#"{"update_id":5,"message":{"chat":{"id":-100123},"text":"secret text"}}"#;
        let ((record, context, second), spans_before) = traced(|| {
            let _poller = tracing::info_span!("poller").entered();
            let record = record_for(42, raw, 0, 1_000_000);
            let second = record_for(42, raw, 0, 1_000_000);
            let context = record.span.context().span().span_context().clone();
            (record, context, second)
        });
        assert!(
            spans_before.iter().all(|s| s.name != "update"),
            "open while the records live: {spans_before:?}"
        );
        assert!(context.is_valid() && context.is_sampled());
        let expected = format!("00-{}-{}-01", context.trace_id(), context.span_id());
        assert_eq!(
            header(&record, wire::header::TRACEPARENT),
            Some(expected.as_str())
        );
        // Its own trace, not the poller's: each update is a root.
        let other = header(&second, wire::header::TRACEPARENT).unwrap();
        assert!(!other.contains(&context.trace_id().to_string()), "{other}");
        // The header counts against the size limit like any other.
        assert!(fits(&record, 1_000_000));

        let envelope = identified_envelope(&record, raw, EnvelopeReason::TooLarge, "big");
        assert_eq!(
            header(&envelope, wire::header::TRACEPARENT),
            Some(expected.as_str()),
            "an envelope stays in the update's trace"
        );
    }

    #[test]
    fn the_update_span_names_the_bot_update_and_kind_and_nothing_of_the_content() {
        use opentelemetry::Value;
        let raw = br#"{"update_id":77,"message":{"chat":{"id":-100123},"text":"secret text"}}"#;
        let (_, spans) = traced(|| {
            let _poller = tracing::info_span!("poller").entered();
            let record = record_for(42, raw, 0, 1_000_000);
            drop(identified_envelope(
                &record,
                raw,
                EnvelopeReason::TooLarge,
                "big",
            ));
        });
        let names: Vec<_> = spans.iter().map(|s| s.name.as_ref()).collect();
        assert_eq!(names, ["update", "poller"]);
        let span = &spans[0];
        assert_eq!(span.span_kind, opentelemetry::trace::SpanKind::Producer);
        assert_eq!(
            span.parent_span_id,
            opentelemetry::trace::SpanId::INVALID,
            "a root"
        );
        let attribute = |name: &str| {
            span.attributes
                .iter()
                .find(|kv| kv.key.as_str() == name)
                .map(|kv| kv.value.clone())
        };
        assert_eq!(attribute("bot_id"), Some(Value::I64(42)));
        assert_eq!(attribute("update_id"), Some(Value::I64(77)));
        assert_eq!(attribute("update_type"), Some(Value::from("message")));
        assert_eq!(attribute("envelope"), Some(Value::from("too_large")));
        let all = format!("{:?}", span.attributes);
        assert!(!all.contains("secret") && !all.contains("100123"), "{all}");
    }
}
