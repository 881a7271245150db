//! The readiness hook: how the consumer tells its caller (the admin server's `/readyz`) whether
//! PostgreSQL and the broker are reachable, without depending on the binary crate.
//!
//! Guarantees: the consumer reports under exactly two check names, [`CHECK_POSTGRES`] and
//! [`CHECK_KAFKA`]; it calls the hook often (after every batch), so implementations must be cheap.

/// Check name for PostgreSQL reachability.
pub const CHECK_POSTGRES: &str = "postgres";
/// Check name for broker reachability.
pub const CHECK_KAFKA: &str = "kafka";

/// Receives readiness changes. Implemented by the caller's readiness registry.
pub trait Readiness: Send + Sync + 'static {
    /// The check passes.
    fn ready(&self, check: &'static str);
    /// The check fails, with a reason fit for `/readyz` (no secrets).
    fn not_ready(&self, check: &'static str, reason: String);
}

/// A hook that ignores every report (tests, tools).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoReadiness;

impl Readiness for NoReadiness {
    fn ready(&self, _check: &'static str) {}
    fn not_ready(&self, _check: &'static str, _reason: String) {}
}
