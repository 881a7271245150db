//! Which producers `tgingest status` asks for their units (the admin servers' `/units`), and
//! whether a bot that is not ready is a threshold breach.
//!
//! Guarantees: every URL is validated before anything is queried (`--check-config` needs no
//! network): `http` or `https`, a host, and no user name or password, because URLs come from argv
//! and are printed in the report.

use url::Url;

use super::error::ConfigError;

/// The setting that names the producers' admin servers, as operators set it.
const SETTING: &str = "STATUS_PRODUCER_ADMIN_URLS";

/// Producer admin servers whose units `tgingest status` shows.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ProducerAdminArgs {
    /// A producer's admin server (its ADMIN_LISTEN as a URL, e.g. `http://producer-0:9464`);
    /// status shows each of its units (every bot: ready, or why not). Repeat for several
    /// producers; in the environment, comma-separated.
    #[arg(
        long = "producer-admin",
        env = "STATUS_PRODUCER_ADMIN_URLS",
        value_delimiter = ',',
        value_name = "URL"
    )]
    pub producer_admin: Vec<String>,
    /// Exit with status 3 when a producer reports a bot not ready, or cannot be asked.
    #[arg(long)]
    pub require_bots_ready: bool,
}

impl ProducerAdminArgs {
    /// The admin servers' base URLs, in the order given (blank entries of the list skipped).
    pub fn resolve(&self) -> Result<Vec<Url>, ConfigError> {
        let urls = self
            .producer_admin
            .iter()
            .map(|value| value.trim())
            .filter(|value| !value.is_empty())
            .map(parse_admin_url)
            .collect::<Result<Vec<_>, _>>()?;
        if self.require_bots_ready && urls.is_empty() {
            return Err(ConfigError::new(
                "--require-bots-ready",
                format!("needs a producer to ask: set {SETTING} or --producer-admin"),
            ));
        }
        Ok(urls)
    }
}

fn parse_admin_url(value: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(value)
        .map_err(|e| ConfigError::new(SETTING, format!("{value:?} is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(ConfigError::new(
            SETTING,
            format!("{value:?} is not an http:// or https:// URL with a host"),
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        // Not echoed: the value holds a credential.
        return Err(ConfigError::new(
            SETTING,
            "a URL must not carry a user name or password (the admin server takes none)",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ConfigError::new(
            SETTING,
            format!("{value:?}: give the admin server's base URL, without a query or fragment"),
        ));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn args(urls: &[&str], require: bool) -> ProducerAdminArgs {
        ProducerAdminArgs {
            producer_admin: urls.iter().map(|u| u.to_string()).collect(),
            require_bots_ready: require,
        }
    }

    #[test]
    fn admin_urls_are_http_base_urls_without_credentials() {
        let urls = args(
            &["http://producer-0:9464", " https://p1.example/admin/ ", ""],
            false,
        )
        .resolve()
        .unwrap();
        let shown: Vec<&str> = urls.iter().map(Url::as_str).collect();
        assert_eq!(
            shown,
            ["http://producer-0:9464/", "https://p1.example/admin/"]
        );
        for bad in [
            "producer-0:9464",
            "ftp://p:21",
            "http://x/?a=1",
            "not a url",
        ] {
            let err = args(&[bad], false).resolve().unwrap_err();
            assert_eq!(err.setting, SETTING, "{bad}");
        }
        let err = args(&["http://admin:hunter2@p:9464"], false)
            .resolve()
            .unwrap_err();
        assert_eq!(err.setting, SETTING);
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn requiring_ready_bots_needs_a_producer_to_ask() {
        assert_eq!(
            args(&[], true).resolve().unwrap_err().setting,
            "--require-bots-ready"
        );
        assert!(args(&[], false).resolve().unwrap().is_empty());
    }
}
