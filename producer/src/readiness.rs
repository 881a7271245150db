//! How the producer tells its host whether it is ready, without depending on the host's types.
//!
//! The producer reports two named checks: [`TELEGRAM_CHECK`] (every bot answered getMe) and
//! [`KAFKA_CHECK`] (the topic exists and deliveries succeed). Both are reported not ready before
//! startup begins, so a probe never sees "ready" for a producer that has not proven anything yet.

/// Check name: every bot token was accepted by Telegram.
pub const TELEGRAM_CHECK: &str = "telegram";
/// Check name: the topic exists and the last publish attempt succeeded.
pub const KAFKA_CHECK: &str = "kafka";

/// Receives readiness changes (the root binary forwards them to `/readyz`).
pub trait ReadinessReporter: Send + Sync + std::fmt::Debug {
    /// `check` is ready.
    fn ready(&self, check: &'static str);
    /// `check` is not ready, and why (never contains a secret).
    fn not_ready(&self, check: &'static str, reason: &str);
}

/// Discards every report (tests, tools).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoReadiness;

impl ReadinessReporter for NoReadiness {
    fn ready(&self, _check: &'static str) {}
    fn not_ready(&self, _check: &'static str, _reason: &str) {}
}
