//! The binary's configuration error: one line naming the setting as the operator sets it (an
//! environment variable or a flag). `--check-config` and every subcommand exit with status 2 on
//! it (see `cli::CommandError`).

/// A configuration problem, displayed as one line that names the offending setting.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {setting}: {reason}")]
pub struct ConfigError {
    pub setting: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(setting: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            setting: setting.into(),
            reason: reason.into(),
        }
    }
}
