//! Configuration errors: one shape for every component, generic over the component's own enum
//! of the settings it can refuse.
//!
//! Guarantees: the error names exactly one setting, by a type the host must translate with an
//! exhaustive `match` (so a setting added to a component cannot reach an operator unnamed), and
//! displays as one line, `{setting}: {reason}`.

use std::fmt;

/// A setting that cannot work, named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {reason}")]
pub struct ConfigError<S: fmt::Display + fmt::Debug> {
    /// The setting, by the component's name for it.
    pub setting: S,
    /// What is wrong with it.
    pub reason: String,
}

impl<S: fmt::Display + fmt::Debug> ConfigError<S> {
    pub fn new(setting: S, reason: impl Into<String>) -> Self {
        Self {
            setting,
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Limit;

    impl fmt::Display for Limit {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("polling.limit")
        }
    }

    #[test]
    fn an_error_reads_as_one_line_naming_the_setting() {
        let error = ConfigError::new(Limit, "must be 1..=100");
        assert_eq!(error.to_string(), "polling.limit: must be 1..=100");
    }
}
