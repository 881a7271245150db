//! Configuration: every subcommand's arguments and environment resolved into the validated
//! settings the libraries and commands take. One submodule per thing configured: PostgreSQL
//! ([`database`]), Kafka ([`kafka`]), the admin server ([`admin`]), the producer ([`producer`]),
//! the consumer ([`consumer`]) and the demo ([`demo`]).
//!
//! Every setting comes from a flag or an environment variable (clap `env`). Secrets — bot tokens,
//! the database URL, Kafka SASL and key passwords — come only from the environment or from a file
//! named by `<NAME>_FILE` (Docker and Kubernetes secrets), never from argv, and are held in
//! [`SecretString`] so they never print. Validation happens before any connection is opened, so
//! `--check-config` needs no network, and a bad value yields one [`ConfigError`] line naming the
//! setting as the operator sets it (its environment variable or flag). The libraries' own
//! configuration errors name their settings by type; [`producer`] and [`consumer`] translate each
//! into the operator's name, totally, so a setting cannot reach an operator unnamed.

mod admin;
mod consumer;
mod database;
mod demo;
mod kafka;
mod producer;

pub use admin::AdminArgs;
pub use consumer::{Assignment, ConsumerArgs, StartFrom};
pub use database::{DatabaseArgs, DatabaseConfig, parse_database_url};
pub use demo::{DEMO_DATABASE_URL, DemoArgs, DemoConfig, DemoKafka};
pub use kafka::{EmbeddedKafka, KafkaArgs, KafkaConfig, validate_kafka_client};
pub use producer::{ProducerArgs, ProducerMode, bot_tokens};

use secrecy::SecretString;

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

/// Validate the configuration and exit without doing anything else.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct CheckConfig {
    /// Validate the configuration (flags, environment, secret files) and exit.
    #[arg(long)]
    pub check_config: bool,
}

/// An environment holding exactly `pairs`.
#[cfg(test)]
pub(crate) fn test_env(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn a_secret_is_read_from_its_file_without_the_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "hunter2\n").unwrap();
        let e = test_env(&[("X_FILE", path.to_str().unwrap())]);
        let value = secret(&e, "X").unwrap().unwrap();
        assert_eq!(value.expose_secret(), "hunter2");
    }

    #[test]
    fn a_secret_set_both_directly_and_by_file_is_refused() {
        let e = test_env(&[("X", "a"), ("X_FILE", "/nonexistent")]);
        let err = secret(&e, "X").unwrap_err();
        assert_eq!(err.setting, "X");
    }
}
