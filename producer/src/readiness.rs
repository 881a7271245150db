//! The units the producer reports to its host's readiness registry (the root binary's
//! `/readyz`), through the workspace's one readiness contract ([`component::Readiness`]).
//!
//! The producer reports two units: [`TELEGRAM_CHECK`] (every bot answered getMe) and
//! [`KAFKA_CHECK`] (the topic exists and deliveries succeed). Both are reported not ready before
//! startup begins, so a probe never sees "ready" for a producer that has not proven anything yet.

pub use component::{NoReadiness, Readiness, Unit};

/// Every bot token was accepted by Telegram.
pub const TELEGRAM_CHECK: &Unit = &Unit::fixed("telegram");
/// The topic exists and the last publish attempt succeeded.
pub const KAFKA_CHECK: &Unit = &Unit::fixed("kafka");
