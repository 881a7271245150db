//! One Kafka record as the consumer keeps it: an owned copy of everything the batch writer and
//! dead letters need, detached from librdkafka's buffers.
//!
//! Guarantees: the payload, key and header bytes are copied exactly; nothing is parsed here
//! except the producer's well-known headers, whose absence or garbage is tolerated (a missing or
//! malformed `traceparent` is no trace context, never an error). Their names, the key's shape and
//! the headers' JSON form are the wire contract, [`processor::wire`].

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use processor::wire::{self, header};
use rdkafka::Message;
use rdkafka::message::Headers;

/// An owned Kafka record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    /// Headers in their order; a header without a value has `None`.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// The record's timestamp (create or log-append time), unix milliseconds.
    pub timestamp_ms: Option<i64>,
}

impl ConsumedRecord {
    /// Copies a message out of librdkafka.
    pub fn from_message<M: Message>(message: &M) -> Self {
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers,
            timestamp_ms: message.timestamp().to_millis(),
        }
    }

    /// The first header with this name, as bytes.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .and_then(|(_, value)| value.as_deref())
    }

    /// The first header with this name, as UTF-8 text.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name)
            .and_then(|value| std::str::from_utf8(value).ok())
    }

    /// The payload, empty when the record has none.
    pub fn payload_bytes(&self) -> &[u8] {
        self.payload.as_deref().unwrap_or_default()
    }

    /// The record's digest ([`wire::record_digest`]): what the offsets row stores for the last
    /// record it moved past.
    pub fn value_sha256(&self) -> [u8; 32] {
        wire::record_digest(self.payload.as_deref())
    }

    /// Bytes counted against a batch's byte bound.
    pub fn size(&self) -> usize {
        self.payload.as_ref().map_or(0, Vec::len) + self.key.as_ref().map_or(0, Vec::len)
    }

    /// The bot this record belongs to: the `tg-bot-id` header, else the key's `{bot_id}` prefix.
    pub fn bot_id(&self) -> Option<i64> {
        if let Some(id) = self
            .header_str(header::BOT_ID)
            .and_then(|v| v.trim().parse().ok())
        {
            return Some(id);
        }
        wire::bot_id_of_key(self.key.as_deref()?)
    }

    /// When the producer received the update (unix ms): the `tg-received-at` header, else the
    /// record's timestamp.
    pub fn received_at_ms(&self) -> Option<i64> {
        self.header_str(header::RECEIVED_AT)
            .and_then(|v| v.trim().parse().ok())
            .or(self.timestamp_ms)
    }

    /// The producer's reason, when this record is an envelope for undeliverable input.
    pub fn producer_error(&self) -> Option<String> {
        self.header(header::ERROR)
            .map(|value| String::from_utf8_lossy(value).into_owned())
    }

    /// The producer's trace context (W3C `traceparent`), when the record carries a valid one.
    pub fn trace_context(&self) -> Option<SpanContext> {
        self.header(header::TRACEPARENT)?;
        let context = TraceContextPropagator::new().extract(&TraceHeaders(self));
        let span = context.span().span_context().clone();
        span.is_valid().then_some(span)
    }

    /// The headers as a JSON object for `dead_letters.headers`; values that are not UTF-8 are
    /// written as `{"hex": …}` so nothing is lost, and NUL (refused by `jsonb`) is replaced.
    pub fn headers_json(&self) -> serde_json::Value {
        wire::headers_to_json(
            self.headers
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_deref())),
        )
    }
}

/// A record's headers as the propagator reads them: the first of each name, UTF-8 only.
struct TraceHeaders<'a>(&'a ConsumedRecord);

impl Extractor for TraceHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.header_str(key)
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .headers
            .iter()
            .map(|(name, _)| name.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: Option<&str>, headers: &[(&str, &[u8])]) -> ConsumedRecord {
        ConsumedRecord {
            topic: "t".into(),
            partition: 0,
            offset: 7,
            key: key.map(|k| k.as_bytes().to_vec()),
            payload: Some(b"{}".to_vec()),
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Some(v.to_vec())))
                .collect(),
            timestamp_ms: Some(1_700_000_000_123),
        }
    }

    #[test]
    fn the_bot_id_header_wins_over_the_key() {
        let r = record(Some("5:-100"), &[(header::BOT_ID, b"42")]);
        assert_eq!(r.bot_id(), Some(42));
    }

    #[test]
    fn the_bot_id_falls_back_to_the_key_prefix() {
        assert_eq!(record(Some("5:-100"), &[]).bot_id(), Some(5));
        assert_eq!(record(Some("5:u77"), &[]).bot_id(), Some(5));
        assert_eq!(record(Some("5"), &[]).bot_id(), Some(5));
        assert_eq!(record(Some("x:1"), &[]).bot_id(), None);
        assert_eq!(record(None, &[]).bot_id(), None);
    }

    #[test]
    fn received_at_falls_back_to_the_record_timestamp() {
        let r = record(None, &[(header::RECEIVED_AT, b"1700000000999")]);
        assert_eq!(r.received_at_ms(), Some(1_700_000_000_999));
        assert_eq!(record(None, &[]).received_at_ms(), Some(1_700_000_000_123));
    }

    #[test]
    fn binary_and_nul_header_values_survive_as_hex_in_json() {
        let r = record(
            None,
            &[("a", b"plain"), ("b", &[0xff, 0x00]), ("c", b"x\0y")],
        );
        let json = r.headers_json();
        assert_eq!(json["a"], "plain");
        assert_eq!(json["b"]["hex"], "ff00");
        assert_eq!(json["c"]["hex"], "780079");
    }

    #[test]
    fn a_valid_traceparent_is_the_producers_remote_span_context() {
        let r = record(
            None,
            &[(
                header::TRACEPARENT,
                b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )],
        );
        let context = r.trace_context().expect("a valid traceparent");
        assert_eq!(
            context.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(context.span_id().to_string(), "b7ad6b7169203331");
        assert!(context.is_remote());
        assert!(context.is_sampled());
    }

    #[test]
    fn a_missing_or_malformed_traceparent_is_no_context() {
        assert_eq!(record(None, &[]).trace_context(), None);
        for garbage in [
            &b""[..],
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            b"00-00000000000000000000000000000000-b7ad6b7169203331-01",
            b"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            b"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            b"00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            b"not a traceparent",
            &[0xff, 0xfe, 0x00],
        ] {
            let r = record(None, &[(header::TRACEPARENT, garbage)]);
            assert_eq!(
                r.trace_context(),
                None,
                "{:?}",
                String::from_utf8_lossy(garbage)
            );
        }
        let no_value = ConsumedRecord {
            headers: vec![(header::TRACEPARENT.to_owned(), None)],
            ..record(None, &[])
        };
        assert_eq!(no_value.trace_context(), None);
    }
}
