//! The units the consumer reports to its host's readiness registry (the admin server's
//! `/readyz`), through the workspace's one readiness contract ([`component::Readiness`]).
//!
//! Guarantees: the consumer reports exactly two units, [`CHECK_POSTGRES`] and [`CHECK_KAFKA`];
//! it reports often (after every batch), which the contract requires implementations to bear.

pub use component::{NoReadiness, Readiness, Unit};

/// PostgreSQL reachability.
pub const CHECK_POSTGRES: &Unit = &Unit::fixed("postgres");
/// Broker reachability.
pub const CHECK_KAFKA: &Unit = &Unit::fixed("kafka");
