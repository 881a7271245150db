//! What the simulator observed: every API request and every webhook delivery attempt.
//!
//! Records identify bots by index and id, never by token, so they can be printed in test failures.
//! Parameters are kept as Telegram's server sees them (every value a string; JSON bodies flattened,
//! non-string values as their JSON text); their `Debug` output hides `secret_token`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use crate::Fault;

/// A bot as records name it: registration order and Telegram user id, never the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BotRef {
    /// Position in registration order (0 for the first `add_bot`).
    pub index: usize,
    /// The bot's user id.
    pub id: i64,
}

/// Request parameters, merged from the query string and the body (the body wins on a clash).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Params(BTreeMap<String, String>);

impl Params {
    /// The value of one parameter, if given.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// All parameters by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub(crate) fn insert(&mut self, name: String, value: String) {
        self.0.insert(name, value);
    }

    /// An integer parameter read like Telegram's `to_integer`: optional sign, leading digits,
    /// anything else ignored; absent or empty gives `default`, garbage gives 0.
    pub(crate) fn integer(&self, name: &str, default: i64) -> i64 {
        match self.get(name).map(str::trim) {
            None | Some("") => default,
            Some(text) => lenient_integer(text),
        }
    }

    /// A boolean parameter read like Telegram's `to_bool`.
    pub(crate) fn flag(&self, name: &str) -> bool {
        matches!(
            self.get(name)
                .map(|v| v.trim().to_ascii_lowercase())
                .as_deref(),
            Some("true" | "yes" | "1")
        )
    }
}

fn lenient_integer(text: &str) -> i64 {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let value = digits
        .bytes()
        .take_while(u8::is_ascii_digit)
        .fold(0i64, |acc, d| {
            acc.saturating_mul(10).saturating_add(i64::from(d - b'0'))
        });
    if negative { -value } else { value }
}

impl fmt::Debug for Params {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| {
                let shown = if k == "secret_token" {
                    "<redacted>"
                } else {
                    v.as_str()
                };
                (k, shown)
            }))
            .finish()
    }
}

/// One request the server answered (or that the client abandoned: status 499).
#[derive(Clone, Debug)]
pub struct RequestRecord {
    /// When the request arrived.
    pub at: SystemTime,
    /// How long it took to answer (long polls and stalls included).
    pub duration: Duration,
    /// `GET` or `POST` (or whatever the client sent).
    pub http_method: String,
    /// The bot the token named; `None` for an unknown token or a path without one.
    pub bot: Option<BotRef>,
    /// The API method, lowercased (empty when the path named none).
    pub method: String,
    /// The parsed parameters.
    pub params: Params,
    /// The `offset` parameter, when given.
    pub offset: Option<i64>,
    /// The HTTP status returned; 499 when the client went away before the answer.
    pub status: u16,
    /// The injected fault this request consumed, if any.
    pub fault: Option<Fault>,
}

/// What one webhook POST led to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WebhookOutcome {
    /// The endpoint answered with this HTTP status.
    Status(u16),
    /// No HTTP answer (connection refused, timeout, …).
    Error(String),
}

/// One webhook delivery attempt.
#[derive(Clone, Debug)]
pub struct WebhookAttempt {
    /// When the POST was sent.
    pub at: SystemTime,
    /// The bot whose update it was.
    pub bot: BotRef,
    /// The update's id (as the simulator counts it for confirmation).
    pub update_id: i64,
    /// 1 for the first attempt of this update, 2 for the next, …
    pub attempt: u32,
    /// The answer.
    pub outcome: WebhookOutcome,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        let mut p = Params::default();
        for (k, v) in pairs {
            p.insert((*k).to_owned(), (*v).to_owned());
        }
        p
    }

    #[test]
    fn integers_are_read_leniently_like_telegram() {
        let p = params(&[("a", "-12"), ("b", "30s"), ("c", "x"), ("d", "")]);
        assert_eq!(p.integer("a", 5), -12);
        assert_eq!(p.integer("b", 5), 30);
        assert_eq!(p.integer("c", 5), 0);
        assert_eq!(p.integer("d", 5), 5);
        assert_eq!(p.integer("missing", 5), 5);
    }

    #[test]
    fn flags_accept_true_yes_and_one() {
        let p = params(&[("a", "True"), ("b", "1"), ("c", "no")]);
        assert!(p.flag("a") && p.flag("b"));
        assert!(!p.flag("c") && !p.flag("missing"));
    }

    #[test]
    fn debug_output_hides_the_webhook_secret() {
        let p = params(&[("secret_token", "s3cr3t"), ("url", "http://x")]);
        let shown = format!("{p:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("http://x"));
    }
}
