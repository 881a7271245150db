//! Operator protocols, beside the protocols they drive (DESIGN.md §4, §5, §9): replay planning and
//! rewind ([`replay`]), the dead-letter lifecycle ([`dead_letters`]) and the status queries
//! ([`status`]), with the read-only topic view they share ([`topic`]).
//!
//! Guarantees: offsets are read and moved only through [`crate::offsets::OffsetStore`]; records'
//! rows and dead letters are written only through [`crate::writer::RecordWriter`], inside the
//! caller's transaction, so the worker and the operator commands follow the same conflict rules
//! and the same table order. Long operations report through [`Progress`] and never print: the
//! binary owns argument parsing, rendering and progress display.

pub mod dead_letters;
mod progress;
pub mod replay;
pub mod status;
mod time;
pub mod topic;

pub use progress::{NoProgress, Progress};
pub use time::format_time;
