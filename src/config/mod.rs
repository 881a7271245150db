//! Configuration shared by the subcommands: PostgreSQL, Kafka, the admin server and secrets.
//!
//! Every setting comes from a flag or an environment variable (clap `env`). Secrets — bot tokens,
//! the database URL, Kafka SASL and key passwords — come only from the environment or from a file
//! named by `<NAME>_FILE` (Docker and Kubernetes secrets), never from argv, and are held in
//! [`SecretString`] so they never print. Validation happens before any connection is opened, so
//! `--check-config` needs no network, and a bad value yields one [`ConfigError`] line naming the
//! setting.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use rdkafka::ClientConfig;
use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::{PgConnectOptions, PgSslMode};

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

/// Where the process reads its environment; a map in tests, the real environment otherwise.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for std::collections::HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// Reads secret `name` from `$name` or from the file named by `${name}_FILE` (trailing newline
/// trimmed). Setting both is an error, so an operator never wonders which one won.
pub fn secret(env: &dyn Env, name: &str) -> Result<Option<SecretString>, ConfigError> {
    let file_var = format!("{name}_FILE");
    match (env.var(name), env.var(&file_var)) {
        (Some(_), Some(_)) => Err(ConfigError::new(
            name,
            format!("set either {name} or {file_var}, not both"),
        )),
        (Some(value), None) if value.is_empty() => Ok(None),
        (Some(value), None) => Ok(Some(SecretString::from(value))),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                ConfigError::new(&file_var, format!("cannot read {path}: {}", e.kind()))
            })?;
            let trimmed = text.trim_end_matches(['\n', '\r']);
            if trimmed.is_empty() {
                return Err(ConfigError::new(&file_var, format!("{path} is empty")));
            }
            Ok(Some(SecretString::from(trimmed.to_owned())))
        }
        (None, None) => Ok(None),
    }
}

/// PostgreSQL settings. The URL is a secret (it may carry a password).
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseArgs {
    /// Maximum connections in the pool.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 16)]
    pub database_max_connections: u32,
    /// TLS mode for PostgreSQL (disable, allow, prefer, require, verify-ca, verify-full);
    /// overrides `sslmode` in DATABASE_URL.
    #[arg(long, env = "DATABASE_SSL_MODE")]
    pub database_ssl_mode: Option<String>,
    /// CA certificate file used to verify the PostgreSQL server (verify-ca / verify-full).
    #[arg(long, env = "DATABASE_SSL_ROOT_CERT")]
    pub database_ssl_root_cert: Option<PathBuf>,
    /// How long to wait for a pooled connection before the attempt counts as failed.
    #[arg(long, env = "DATABASE_ACQUIRE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
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
        Ok(DatabaseConfig {
            options: options.application_name(application_name),
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

/// Kafka client settings shared by the producer, the consumer and the operator commands.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaArgs {
    /// Bootstrap servers, comma-separated host:port.
    #[arg(long, env = "KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Topic that carries Telegram updates.
    #[arg(long, env = "KAFKA_TOPIC", default_value = "tg.updates")]
    pub kafka_topic: String,
    /// plaintext, ssl, sasl_plaintext or sasl_ssl.
    #[arg(long, env = "KAFKA_SECURITY_PROTOCOL", default_value = "plaintext")]
    pub kafka_security_protocol: String,
    /// PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (with a sasl_* protocol; password in
    /// KAFKA_SASL_PASSWORD or KAFKA_SASL_PASSWORD_FILE).
    #[arg(long, env = "KAFKA_SASL_MECHANISM")]
    pub kafka_sasl_mechanism: Option<String>,
    #[arg(long, env = "KAFKA_SASL_USERNAME")]
    pub kafka_sasl_username: Option<String>,
    /// CA certificate(s) used to verify the brokers.
    #[arg(long, env = "KAFKA_SSL_CA_LOCATION")]
    pub kafka_ssl_ca_location: Option<PathBuf>,
    /// Client certificate for mutual TLS (key password in KAFKA_SSL_KEY_PASSWORD[_FILE]).
    #[arg(long, env = "KAFKA_SSL_CERTIFICATE_LOCATION")]
    pub kafka_ssl_certificate_location: Option<PathBuf>,
    #[arg(long, env = "KAFKA_SSL_KEY_LOCATION")]
    pub kafka_ssl_key_location: Option<PathBuf>,
    /// Extra librdkafka properties, `key=value` pairs separated by commas (e.g.
    /// `client.rack=eu1,socket.keepalive.enable=true`). Applied last.
    #[arg(long, env = "KAFKA_CLIENT_OPTIONS", value_delimiter = ',')]
    pub kafka_client_options: Vec<String>,
}

/// Validated Kafka settings: a client configuration every Kafka client of the process starts from.
#[derive(Clone)]
pub struct KafkaConfig {
    pub topic: String,
    pub client: ClientConfig,
}

impl std::fmt::Debug for KafkaConfig {
    // ClientConfig's Debug prints every property, passwords included.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("topic", &self.topic)
            .field(
                "bootstrap.servers",
                &self.client.get("bootstrap.servers").unwrap_or(""),
            )
            .finish_non_exhaustive()
    }
}

impl KafkaArgs {
    pub fn resolve(&self, env: &dyn Env) -> Result<KafkaConfig, ConfigError> {
        let brokers = self
            .kafka_brokers
            .as_deref()
            .filter(|b| !b.trim().is_empty())
            .ok_or_else(|| ConfigError::new("KAFKA_BROKERS", "required (host:port,…)"))?;
        for broker in brokers.split(',') {
            let broker = broker.trim();
            let valid = broker
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !valid {
                return Err(ConfigError::new(
                    "KAFKA_BROKERS",
                    format!("{broker:?} is not host:port"),
                ));
            }
        }
        self.resolve_with_brokers(env, brokers)
    }

    /// Like [`KafkaArgs::resolve`], with the bootstrap servers given by the caller (the demo's
    /// embedded broker).
    pub fn resolve_with_brokers(
        &self,
        env: &dyn Env,
        brokers: &str,
    ) -> Result<KafkaConfig, ConfigError> {
        if self.kafka_topic.is_empty()
            || self.kafka_topic.len() > 249
            || !self
                .kafka_topic
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(ConfigError::new(
                "KAFKA_TOPIC",
                "must be 1–249 characters of a-z, A-Z, 0-9, '.', '_', '-'",
            ));
        }
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", brokers)
            .set("allow.auto.create.topics", "false");

        let protocol = self.kafka_security_protocol.to_ascii_lowercase();
        if !matches!(
            protocol.as_str(),
            "plaintext" | "ssl" | "sasl_plaintext" | "sasl_ssl"
        ) {
            return Err(ConfigError::new(
                "KAFKA_SECURITY_PROTOCOL",
                format!("unknown protocol {protocol:?} (plaintext, ssl, sasl_plaintext, sasl_ssl)"),
            ));
        }
        client.set("security.protocol", &protocol);

        let sasl_password = secret(env, "KAFKA_SASL_PASSWORD")?;
        if protocol.starts_with("sasl_") {
            let mechanism = self.kafka_sasl_mechanism.as_deref().ok_or_else(|| {
                ConfigError::new(
                    "KAFKA_SASL_MECHANISM",
                    format!("required with KAFKA_SECURITY_PROTOCOL={protocol}"),
                )
            })?;
            let mechanism = mechanism.to_ascii_uppercase();
            if !matches!(
                mechanism.as_str(),
                "PLAIN" | "SCRAM-SHA-256" | "SCRAM-SHA-512"
            ) {
                return Err(ConfigError::new(
                    "KAFKA_SASL_MECHANISM",
                    format!(
                        "unsupported mechanism {mechanism:?} (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512)"
                    ),
                ));
            }
            let username = self.kafka_sasl_username.as_deref().ok_or_else(|| {
                ConfigError::new("KAFKA_SASL_USERNAME", "required with SASL authentication")
            })?;
            let password = sasl_password.ok_or_else(|| {
                ConfigError::new(
                    "KAFKA_SASL_PASSWORD",
                    "required with SASL authentication (or KAFKA_SASL_PASSWORD_FILE)",
                )
            })?;
            client
                .set("sasl.mechanism", &mechanism)
                .set("sasl.username", username)
                .set("sasl.password", password.expose_secret());
        } else if self.kafka_sasl_mechanism.is_some() {
            return Err(ConfigError::new(
                "KAFKA_SASL_MECHANISM",
                "needs KAFKA_SECURITY_PROTOCOL=sasl_plaintext or sasl_ssl",
            ));
        }

        let files = [
            (
                "KAFKA_SSL_CA_LOCATION",
                "ssl.ca.location",
                &self.kafka_ssl_ca_location,
            ),
            (
                "KAFKA_SSL_CERTIFICATE_LOCATION",
                "ssl.certificate.location",
                &self.kafka_ssl_certificate_location,
            ),
            (
                "KAFKA_SSL_KEY_LOCATION",
                "ssl.key.location",
                &self.kafka_ssl_key_location,
            ),
        ];
        for (setting, property, path) in files {
            if let Some(path) = path {
                if !path.is_file() {
                    return Err(ConfigError::new(
                        setting,
                        format!("{} is not a readable file", path.display()),
                    ));
                }
                client.set(property, path.to_string_lossy());
            }
        }
        if let Some(password) = secret(env, "KAFKA_SSL_KEY_PASSWORD")? {
            client.set("ssl.key.password", password.expose_secret());
        }

        for option in self.kafka_client_options.iter().filter(|o| !o.is_empty()) {
            let Some((key, value)) = option.split_once('=') else {
                return Err(ConfigError::new(
                    "KAFKA_CLIENT_OPTIONS",
                    format!(
                        "{:?} is not key=value",
                        option.split('=').next().unwrap_or("")
                    ),
                ));
            };
            client.set(key.trim(), value.trim());
        }
        Ok(KafkaConfig {
            topic: self.kafka_topic.clone(),
            client,
        })
    }
}

/// Checks a client configuration against librdkafka's own validation without connecting, so
/// `--check-config` catches unknown or malformed properties.
pub fn validate_kafka_client(config: &KafkaConfig) -> Result<(), ConfigError> {
    use rdkafka::producer::BaseProducer;
    config
        .client
        .create::<BaseProducer>()
        .map(drop)
        .map_err(|e| {
            // librdkafka names the property and its problem; it never echoes the value.
            ConfigError::new("KAFKA_CLIENT_OPTIONS", e.to_string())
        })
}

/// Where the admin server (health, readiness, metrics) listens.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    /// Address of the admin HTTP server (/healthz, /readyz, /metrics); `off` disables it.
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
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn kafka_args() -> KafkaArgs {
        KafkaArgs {
            kafka_brokers: Some("127.0.0.1:9092".into()),
            kafka_topic: "tg.updates".into(),
            kafka_security_protocol: "plaintext".into(),
            kafka_sasl_mechanism: None,
            kafka_sasl_username: None,
            kafka_ssl_ca_location: None,
            kafka_ssl_certificate_location: None,
            kafka_ssl_key_location: None,
            kafka_client_options: vec![],
        }
    }

    #[test]
    fn a_secret_is_read_from_its_file_without_the_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "hunter2\n").unwrap();
        let e = env(&[("X_FILE", path.to_str().unwrap())]);
        let value = secret(&e, "X").unwrap().unwrap();
        assert_eq!(value.expose_secret(), "hunter2");
    }

    #[test]
    fn a_secret_set_both_directly_and_by_file_is_refused() {
        let e = env(&[("X", "a"), ("X_FILE", "/nonexistent")]);
        let err = secret(&e, "X").unwrap_err();
        assert_eq!(err.setting, "X");
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
        let args = DatabaseArgs {
            database_max_connections: 4,
            database_ssl_mode: None,
            database_ssl_root_cert: None,
            database_acquire_timeout: Duration::from_secs(1),
        };
        let err = args.resolve(&env(&[]), None, "t").unwrap_err();
        assert_eq!(err.setting, "DATABASE_URL");
        let ok = args
            .resolve(&env(&[("DATABASE_URL", "postgres://u@h/db")]), None, "t")
            .unwrap();
        assert_eq!(ok.options.get_database(), Some("db"));
    }

    #[test]
    fn sasl_without_a_password_names_the_password_setting() {
        let mut args = kafka_args();
        args.kafka_security_protocol = "sasl_ssl".into();
        args.kafka_sasl_mechanism = Some("SCRAM-SHA-512".into());
        args.kafka_sasl_username = Some("ingest".into());
        let err = args.resolve(&env(&[])).unwrap_err();
        assert_eq!(err.setting, "KAFKA_SASL_PASSWORD");
        let ok = args
            .resolve(&env(&[("KAFKA_SASL_PASSWORD", "pw")]))
            .unwrap();
        assert_eq!(ok.client.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert!(!format!("{ok:?}").contains("pw\""));
    }

    #[test]
    fn a_broker_list_entry_without_a_port_is_refused() {
        let mut args = kafka_args();
        args.kafka_brokers = Some("127.0.0.1:9092,kafka".into());
        assert_eq!(
            args.resolve(&env(&[])).unwrap_err().setting,
            "KAFKA_BROKERS"
        );
    }

    #[test]
    fn librdkafka_rejects_an_unknown_client_option() {
        let mut args = kafka_args();
        args.kafka_client_options = vec!["no.such.property=1".into()];
        let config = args.resolve(&env(&[])).unwrap();
        let err = validate_kafka_client(&config).unwrap_err();
        assert!(err.reason.contains("no.such.property"), "{err}");
    }

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
