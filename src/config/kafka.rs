//! Kafka client settings shared by the producer, the consumer and the operator commands:
//! bootstrap servers, topic, TLS, SASL and extra librdkafka properties.
//!
//! Guarantees: a resolved [`KafkaConfig`] never prints a password (its `Debug` shows the topic
//! and the bootstrap servers only); every client of the process starts from it, with
//! `allow.auto.create.topics=false`.

use std::path::PathBuf;

use rdkafka::ClientConfig;
use secrecy::ExposeSecret;

use super::env::{Env, secret};
use super::error::ConfigError;

/// Kafka client settings shared by the producer, the consumer and the operator commands.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaArgs {
    /// Bootstrap servers, comma-separated host:port.
    #[arg(long, global = true, env = "KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Topic that carries Telegram updates.
    #[arg(long, global = true, env = "KAFKA_TOPIC", default_value = "tg.updates")]
    pub kafka_topic: String,
    /// plaintext, ssl, sasl_plaintext or sasl_ssl.
    #[arg(
        long,
        global = true,
        env = "KAFKA_SECURITY_PROTOCOL",
        default_value = "plaintext"
    )]
    pub kafka_security_protocol: String,
    /// PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (with a sasl_* protocol; password in
    /// KAFKA_SASL_PASSWORD or KAFKA_SASL_PASSWORD_FILE).
    #[arg(long, global = true, env = "KAFKA_SASL_MECHANISM")]
    pub kafka_sasl_mechanism: Option<String>,
    #[arg(long, global = true, env = "KAFKA_SASL_USERNAME")]
    pub kafka_sasl_username: Option<String>,
    /// CA certificate(s) used to verify the brokers.
    #[arg(long, global = true, env = "KAFKA_SSL_CA_LOCATION")]
    pub kafka_ssl_ca_location: Option<PathBuf>,
    /// Client certificate for mutual TLS (key password in KAFKA_SSL_KEY_PASSWORD[_FILE]).
    #[arg(long, global = true, env = "KAFKA_SSL_CERTIFICATE_LOCATION")]
    pub kafka_ssl_certificate_location: Option<PathBuf>,
    #[arg(long, global = true, env = "KAFKA_SSL_KEY_LOCATION")]
    pub kafka_ssl_key_location: Option<PathBuf>,
    /// Extra librdkafka properties, `key=value` pairs separated by commas (e.g.
    /// `client.rack=eu1,socket.keepalive.enable=true`); a comma inside a value is written `\,`
    /// (`debug=cgrp\,fetch`), a backslash before a comma `\\`. Applied last.
    #[arg(long, global = true, env = "KAFKA_CLIENT_OPTIONS")]
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
        self.client_config(env, Some(brokers))
    }

    /// Like [`KafkaArgs::resolve`] for a broker whose address is known only once it runs (the
    /// demo's embedded broker).
    pub fn resolve_for_embedded(&self, env: &dyn Env) -> Result<EmbeddedKafka, ConfigError> {
        self.client_config(env, None).map(EmbeddedKafka)
    }

    fn client_config(
        &self,
        env: &dyn Env,
        brokers: Option<&str>,
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
        if let Some(brokers) = brokers {
            client.set("bootstrap.servers", brokers);
        }
        client.set("allow.auto.create.topics", "false");

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

        let options: Vec<String> = self
            .kafka_client_options
            .iter()
            .flat_map(|list| split_client_options(list))
            .collect();
        for option in options.iter().filter(|o| !o.is_empty()) {
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

/// Splits a KAFKA_CLIENT_OPTIONS list at its commas, except escaped ones: `\,` is a comma in a
/// value and `\\` a backslash; any other backslash is kept as written.
pub fn split_client_options(list: &str) -> Vec<String> {
    let mut options = Vec::new();
    let mut current = String::new();
    let mut chars = list.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('\\', Some(&next @ (',' | '\\'))) => {
                current.push(next);
                chars.next();
            }
            (',', _) => options.push(std::mem::take(&mut current)),
            (c, _) => current.push(c),
        }
    }
    options.push(current);
    options
}

/// Kafka settings resolved before the broker runs: [`EmbeddedKafka::with_brokers`] completes
/// them once its address is known.
#[derive(Debug, Clone)]
pub struct EmbeddedKafka(KafkaConfig);

impl EmbeddedKafka {
    /// The client configuration for the broker at `brokers`.
    pub fn with_brokers(self, brokers: &str) -> KafkaConfig {
        let mut config = self.0;
        // KAFKA_CLIENT_OPTIONS is applied last, so a bootstrap.servers given there wins.
        if config.client.get("bootstrap.servers").is_none() {
            config.client.set("bootstrap.servers", brokers);
        }
        config
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::env::test_env;

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
    fn sasl_without_a_password_names_the_password_setting() {
        let mut args = kafka_args();
        args.kafka_security_protocol = "sasl_ssl".into();
        args.kafka_sasl_mechanism = Some("SCRAM-SHA-512".into());
        args.kafka_sasl_username = Some("ingest".into());
        let err = args.resolve(&test_env(&[])).unwrap_err();
        assert_eq!(err.setting, "KAFKA_SASL_PASSWORD");
        let ok = args
            .resolve(&test_env(&[("KAFKA_SASL_PASSWORD", "pw")]))
            .unwrap();
        assert_eq!(ok.client.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert!(!format!("{ok:?}").contains("pw\""));
    }

    #[test]
    fn a_broker_list_entry_without_a_port_is_refused() {
        let mut args = kafka_args();
        args.kafka_brokers = Some("127.0.0.1:9092,kafka".into());
        assert_eq!(
            args.resolve(&test_env(&[])).unwrap_err().setting,
            "KAFKA_BROKERS"
        );
    }

    #[test]
    fn client_options_split_at_unescaped_commas() {
        assert_eq!(
            split_client_options(r"debug=cgrp\,fetch,client.rack=eu1"),
            ["debug=cgrp,fetch", "client.rack=eu1"]
        );
        assert_eq!(split_client_options(r"a=x\\,b=y"), [r"a=x\", "b=y"]);
        assert_eq!(
            split_client_options(r"ssl.ca.location=C:\certs\ca.pem"),
            [r"ssl.ca.location=C:\certs\ca.pem"]
        );
        assert_eq!(split_client_options(""), [""]);
    }

    #[test]
    fn a_client_option_value_with_an_escaped_comma_reaches_librdkafka_whole() {
        let mut args = kafka_args();
        args.kafka_client_options = vec![r"debug=cgrp\,fetch,client.rack=eu1".into()];
        let config = args.resolve(&test_env(&[])).unwrap();
        assert_eq!(config.client.get("debug"), Some("cgrp,fetch"));
        assert_eq!(config.client.get("client.rack"), Some("eu1"));
        validate_kafka_client(&config).unwrap();
    }

    #[test]
    fn librdkafka_rejects_an_unknown_client_option() {
        let mut args = kafka_args();
        args.kafka_client_options = vec!["no.such.property=1".into()];
        let config = args.resolve(&test_env(&[])).unwrap();
        let err = validate_kafka_client(&config).unwrap_err();
        assert!(err.reason.contains("no.such.property"), "{err}");
    }
}
