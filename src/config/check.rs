//! The `--check-config` flag every subcommand takes (global: also accepted after a nested
//! subcommand, as in `tgingest dlq list --check-config`).

/// Validate the configuration and exit without doing anything else.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct CheckConfig {
    /// Validate the configuration (flags, environment, secret files) and exit.
    #[arg(long, global = true)]
    pub check_config: bool,
}
