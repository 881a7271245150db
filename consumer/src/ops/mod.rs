//! Operator protocols, beside the protocols they drive (DESIGN.md §4, §5, §9): replay planning and
//! rewind ([`replay`]), the dead-letter lifecycle ([`dead_letters`]), the status queries
//! ([`status`]), retention ([`retention`]) and erasure ([`erasure`]), with the read-only topic
//! view they share ([`topic`]).
//!
//! Guarantees: offsets are read and moved only through [`crate::offsets::OffsetStore`]; records'
//! rows and dead letters are written only through [`crate::writer::RecordWriter`] (projections of
//! scrubbed updates through the same [`crate::projection::ProjectionSchema`]), inside the
//! caller's transaction, so the worker and the operator commands follow the same conflict rules,
//! honour the same decisions (tombstones, the record horizon, erased subjects) and take the same
//! table order; retention and erasure, which delete and scrub, record their decision and wait for
//! earlier transactions before they touch a row (DESIGN.md §5.11). Long operations report
//! through [`Progress`] and never print: the binary owns argument parsing, rendering and progress
//! display.

pub mod dead_letters;
pub mod erasure;
mod progress;
pub mod replay;
pub mod retention;
pub mod status;
mod time;
pub mod topic;

pub use progress::{NoProgress, Progress};
pub use time::format_time;
