//! PostgreSQL settings: the connection URL (a secret), TLS, pool size and acquire timeout.
//!
//! Guarantees: the URL is never echoed, not even in an error (it may carry a password); a
//! resolved [`DatabaseConfig`] tags its connections with the command's `application_name`
//! unless the URL's `application_name` parameter (or libpq's `PGAPPNAME`) names one, so an
//! operator can tell processes apart in `pg_stat_activity`.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::{PgConnectOptions, PgSslMode};

use super::env::{Env, secret};
use super::error::ConfigError;

/// PostgreSQL settings. The URL is a secret (it may carry a password).
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseArgs {
    /// Maximum connections in the pool.
    #[arg(
        long,
        global = true,
        env = "DATABASE_MAX_CONNECTIONS",
        default_value_t = 16
    )]
    pub database_max_connections: u32,
    /// TLS mode for PostgreSQL (disable, allow, prefer, require, verify-ca, verify-full);
    /// overrides `sslmode` in DATABASE_URL.
    #[arg(long, global = true, env = "DATABASE_SSL_MODE")]
    pub database_ssl_mode: Option<String>,
    /// CA certificate file used to verify the PostgreSQL server (verify-ca / verify-full).
    #[arg(long, global = true, env = "DATABASE_SSL_ROOT_CERT")]
    pub database_ssl_root_cert: Option<PathBuf>,
    /// How long to wait for a pooled connection before the attempt counts as failed.
    #[arg(long, global = true, env = "DATABASE_ACQUIRE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub database_acquire_timeout: Duration,
}

/// Validated PostgreSQL connection settings.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    pub options: PgConnectOptions,
    pub max_connections: u32,
    pub acquire_timeout: Duration,
}

impl DatabaseArgs {
    /// Validates the settings; `application_name` tags every connection so operators (and tests)
    /// can find this process's sessions in `pg_stat_activity`.
    pub fn resolve(
        &self,
        env: &dyn Env,
        default_url: Option<&str>,
        application_name: &str,
    ) -> Result<DatabaseConfig, ConfigError> {
        let url = match secret(env, "DATABASE_URL")? {
            Some(url) => url,
            None => match default_url {
                Some(url) => SecretString::from(url.to_owned()),
                None => {
                    return Err(ConfigError::new(
                        "DATABASE_URL",
                        "required (a postgres:// URL, or DATABASE_URL_FILE naming a file holding one)",
                    ));
                }
            },
        };
        let mut options = parse_database_url(url.expose_secret())?;
        if let Some(mode) = &self.database_ssl_mode {
            let mode = PgSslMode::from_str(mode).map_err(|_| {
                ConfigError::new(
                    "DATABASE_SSL_MODE",
                    format!(
                        "unknown mode {mode:?} (disable, allow, prefer, require, verify-ca, verify-full)"
                    ),
                )
            })?;
            options = options.ssl_mode(mode);
        }
        if let Some(cert) = &self.database_ssl_root_cert {
            if !cert.is_file() {
                return Err(ConfigError::new(
                    "DATABASE_SSL_ROOT_CERT",
                    format!("{} is not a readable file", cert.display()),
                ));
            }
            options = options.ssl_root_cert(cert);
        }
        if self.database_max_connections == 0 {
            return Err(ConfigError::new(
                "DATABASE_MAX_CONNECTIONS",
                "must be at least 1",
            ));
        }
        if options.get_application_name().is_none() {
            options = options.application_name(application_name);
        }
        Ok(DatabaseConfig {
            options,
            max_connections: self.database_max_connections,
            acquire_timeout: self.database_acquire_timeout,
        })
    }
}

/// Parses a PostgreSQL URL without ever echoing it: the error text names what is wrong, not the
/// value, which may hold a password.
pub fn parse_database_url(url: &str) -> Result<PgConnectOptions, ConfigError> {
    let parsed = url::Url::parse(url)
        .map_err(|e| ConfigError::new("DATABASE_URL", format!("not a URL ({e})")))?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err(ConfigError::new(
            "DATABASE_URL",
            format!(
                "scheme must be postgres:// or postgresql://, not {}://",
                parsed.scheme()
            ),
        ));
    }
    PgConnectOptions::from_str(url).map_err(|_| {
        ConfigError::new(
            "DATABASE_URL",
            "not a valid PostgreSQL connection URL (check host, port and query parameters)",
        )
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::env::test_env;

    fn args() -> DatabaseArgs {
        DatabaseArgs {
            database_max_connections: 4,
            database_ssl_mode: None,
            database_ssl_root_cert: None,
            database_acquire_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn a_bad_database_url_is_named_without_echoing_the_password() {
        let err = parse_database_url("mysql://u:s3cret@h/db").unwrap_err();
        assert_eq!(err.setting, "DATABASE_URL");
        assert!(!err.to_string().contains("s3cret"), "{err}");
        let err = parse_database_url("postgres://u:s3cret@h:notaport/db").unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }

    #[test]
    fn a_missing_database_url_names_the_setting() {
        let args = args();
        let err = args.resolve(&test_env(&[]), None, "t").unwrap_err();
        assert_eq!(err.setting, "DATABASE_URL");
        let ok = args
            .resolve(
                &test_env(&[("DATABASE_URL", "postgres://u@h/db")]),
                None,
                "t",
            )
            .unwrap();
        assert_eq!(ok.options.get_database(), Some("db"));
    }

    #[test]
    fn the_urls_application_name_wins_over_the_commands() {
        let args = args();
        let url = "postgres://u@h/db?application_name=consumer-eu-1";
        let named = args
            .resolve(
                &test_env(&[("DATABASE_URL", url)]),
                None,
                "tgingest-consumer",
            )
            .unwrap();
        assert_eq!(named.options.get_application_name(), Some("consumer-eu-1"));
        let plain = args
            .resolve(
                &test_env(&[("DATABASE_URL", "postgres://u@h/db")]),
                None,
                "tgingest-consumer",
            )
            .unwrap();
        assert_eq!(
            plain.options.get_application_name(),
            Some("tgingest-consumer")
        );
    }
}
