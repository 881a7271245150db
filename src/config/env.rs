//! Where settings are read: the process environment (a map in tests), and secrets from the
//! environment or from the file named by `<NAME>_FILE`.
//!
//! Guarantees: a secret is held in [`SecretString`] from the moment it is read, and setting
//! both `NAME` and `NAME_FILE` is refused rather than resolved silently.

use secrecy::SecretString;

use super::error::ConfigError;

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
