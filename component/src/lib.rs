//! component — the contract between a long-lived component (the producer, the consumer) and the
//! process that hosts it, so that neither component depends on the host's types or on the other.
//!
//! Three things cross that boundary besides the component's own configuration struct:
//! - [`readiness`]: the component reports named units (`postgres`, `bot #2`, `partition 7`) ready
//!   or not, with a detail; the host shows them (the admin server's `/readyz`).
//! - [`config`]: a configuration the component refuses is a [`ConfigError`] naming the setting
//!   by the component's own typed name; the host translates it into the name its operators use.
//! - [`trace`]: which spans are the pipeline's trace spans, for the host to export.
//!
//! Guarantees: no I/O, no runtime, no dependency besides `thiserror`.

pub mod config;
pub mod readiness;
pub mod trace;

pub use config::ConfigError;
pub use readiness::{NoReadiness, Readiness, Unit};
