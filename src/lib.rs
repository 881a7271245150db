//! tgingest: Telegram → Kafka → PostgreSQL ingestion with exactly-once effect.
//!
//! This crate is the `tgingest` binary's library: command line, configuration, telemetry, the
//! admin server and the wiring of the `producer`, `consumer` and `processor` crates. `main.rs`
//! only calls [`cli::main`]; tests drive the same functions directly or run the binary.

pub mod admin_server;
pub mod cli;
pub mod config;
pub mod db;
pub mod demo;
pub mod dlq;
pub mod forget;
pub mod progress;
pub mod replay;
pub mod retention;
pub mod service;
pub mod shutdown;
pub mod status;
pub mod telemetry;
