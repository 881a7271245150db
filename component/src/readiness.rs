//! Readiness: how a component tells its host which of its units can serve.
//!
//! A [`Unit`] is anything whose readiness the host shows: a dependency (`postgres`, `kafka`,
//! `telegram`) or a part built at run time (`bot #2`, `partition 7`). The library reports each
//! unit ready (with an optional detail: what it is doing) or not ready (with a reason), and
//! withdraws a unit that no longer exists; the host (the admin server's `/readyz`) is ready iff
//! every unit reported so far is ready.
//!
//! Guarantees: details and reasons are shown to operators, so reporters never put a secret in
//! them. Reports may come after every batch or
//! request: implementations must be cheap and must not block.

use std::borrow::Cow;
use std::fmt;

/// The name of a unit whose readiness is reported, e.g. `postgres` or `bot #2`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Unit(Cow<'static, str>);

impl Unit {
    /// A unit known at compile time (a dependency: `postgres`, `kafka`, `telegram`).
    pub const fn fixed(name: &'static str) -> Self {
        Self(Cow::Borrowed(name))
    }

    /// Bot number `position` (1-based) of the configured tokens: bots are named by position,
    /// never by token.
    pub fn bot(position: usize) -> Self {
        Self(Cow::Owned(format!("bot #{position}")))
    }

    /// Kafka partition `partition` of the topic.
    pub fn partition(partition: i32) -> Self {
        Self(Cow::Owned(format!("partition {partition}")))
    }

    /// The name as shown to operators.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&'static str> for Unit {
    fn from(name: &'static str) -> Self {
        Self::fixed(name)
    }
}

impl From<String> for Unit {
    fn from(name: String) -> Self {
        Self(Cow::Owned(name))
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Receives readiness reports; implemented by the host's readiness registry.
pub trait Readiness: Send + Sync + fmt::Debug {
    /// `unit` can serve; `detail` says what it is doing, or is empty.
    fn ready(&self, unit: &Unit, detail: &str);
    /// `unit` cannot serve, and why.
    fn not_ready(&self, unit: &Unit, reason: &str);
    /// `unit` no longer exists (a revoked partition, a removed bot): it stops counting.
    fn withdraw(&self, unit: &Unit);
}

/// Ignores every report (tests, tools, benchmarks).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoReadiness;

impl Readiness for NoReadiness {
    fn ready(&self, _unit: &Unit, _detail: &str) {}
    fn not_ready(&self, _unit: &Unit, _reason: &str) {}
    fn withdraw(&self, _unit: &Unit) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_time_units_are_named_as_operators_read_them() {
        assert_eq!(Unit::bot(2).to_string(), "bot #2");
        assert_eq!(Unit::partition(7).to_string(), "partition 7");
        assert_eq!(Unit::fixed("postgres").as_str(), "postgres");
    }

    #[test]
    fn a_unit_built_at_run_time_equals_the_same_fixed_name() {
        assert_eq!(Unit::bot(1), Unit::fixed("bot #1"));
    }
}
