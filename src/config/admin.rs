//! Where the admin server (`/healthz`, `/readyz`, `/units`, `/metrics`) listens, or that it is
//! off.

use std::net::SocketAddr;

use super::error::ConfigError;

/// Where the admin server (health, readiness, metrics) listens.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    /// Address of the admin HTTP server (/healthz, /readyz, /units, /metrics); `off` disables
    /// it.
    #[arg(long, env = "ADMIN_LISTEN", default_value = "0.0.0.0:9464")]
    pub admin_listen: String,
}

impl AdminArgs {
    pub fn resolve(&self) -> Result<Option<SocketAddr>, ConfigError> {
        if self.admin_listen.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        self.admin_listen.parse().map(Some).map_err(|_| {
            ConfigError::new(
                "ADMIN_LISTEN",
                format!("{:?} is not an ip:port address or `off`", self.admin_listen),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_admin_server_can_be_turned_off() {
        let args = AdminArgs {
            admin_listen: "off".into(),
        };
        assert_eq!(args.resolve().unwrap(), None);
        let args = AdminArgs {
            admin_listen: "localhost".into(),
        };
        assert_eq!(args.resolve().unwrap_err().setting, "ADMIN_LISTEN");
    }
}
