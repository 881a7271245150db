//! The tracing contract between the components and the host: which `tracing` spans are the
//! pipeline's distributed-tracing spans (exported through OpenTelemetry by the host), and how
//! many records one batch span may link to.
//!
//! Guarantees: the components create their trace spans (the producer's `update`, the consumer's
//! `batch`) at [`TARGET`] and nothing else there; the host gives that target to its OpenTelemetry
//! layer only, and no other layer wants it, so without an exporter those spans are disabled at
//! their call sites (no allocation, no recording) and carry no trace context.

/// The `tracing` target of every span meant for trace export.
pub const TARGET: &str = "tgingest::trace";

/// The most records a consumer batch span links to: a batch has up to thousands of records, and
/// each is a separate trace (a span cannot have N parents, so it links to them instead); beyond
/// this many the batch span counts the links it left out (`links_dropped`).
pub const MAX_BATCH_LINKS: usize = 64;
