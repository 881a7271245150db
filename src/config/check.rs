//! The `--check-config` flag every subcommand takes.

/// Validate the configuration and exit without doing anything else.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct CheckConfig {
    /// Validate the configuration (flags, environment, secret files) and exit.
    #[arg(long)]
    pub check_config: bool,
}
