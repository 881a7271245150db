//! The Bot API client of one bot: getMe, getUpdates, setWebhook and getWebhookInfo over HTTP.
//!
//! getMe is parsed for `id` and `username` only: teloxide's `Me` requires fields the Bot API marks
//! optional (`has_main_web_app`, …), so a server that omits one (an older self-hosted Bot API, a
//! proxy) made startup fail with an error that named neither the field nor the HTTP status.
//! getUpdates is fetched with reqwest and parsed as `{ok, result: [raw…], error_code,
//! description, parameters}` so each update's bytes stay exactly as Telegram sent them (DESIGN.md
//! §7: teloxide's untagged envelope cannot carry raw values, and a typed or `Value` parse fails a
//! whole batch on one lone surrogate). setWebhook also goes over HTTP because teloxide's
//! `AllowedUpdate` enum cannot name every kind (`managed_bot`, `guest_message`, future kinds), and
//! a webhook registered with a shorter list silently loses those updates. getWebhookInfo is read
//! for `pending_update_count` and the last error only.
//!
//! Guarantees: the token appears only in request URLs. Every error is built from
//! [`reqwest::Error::without_url`] and scrubbed of the token text, so no error, log line or
//! metric label can carry it. Failures are classified ([`TelegramError`]) so the caller decides
//! how to wait: exactly `retry_after` for 429, backoff for the rest. Nothing here panics.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use url::Url;

/// Connect timeout for every Bot API call.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP timeout of calls that do not long-poll (getMe, setWebhook, the final confirm).
pub(crate) const SHORT_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a Bot API call failed.
#[derive(Debug, thiserror::Error)]
pub enum TelegramError {
    /// 429: flood control; retry after exactly this long.
    #[error("429 Too Many Requests: retry after {retry_after:?}")]
    TooManyRequests {
        /// `parameters.retry_after`.
        retry_after: Duration,
    },
    /// 409: another getUpdates poller, or a webhook is set.
    #[error("409 Conflict: {description}")]
    Conflict {
        /// Telegram's description.
        description: String,
    },
    /// 401 (or 404, which the Bot API answers for a malformed token): the token is not valid.
    #[error("token rejected by Telegram (401 Unauthorized)")]
    Unauthorized,
    /// 5xx.
    #[error("server error {code}: {description}")]
    Server {
        /// HTTP status or `error_code`.
        code: u16,
        /// Telegram's description (or a note that there was none).
        description: String,
    },
    /// Any other error answer (4xx).
    #[error("request refused ({code}): {description}")]
    Api {
        /// HTTP status or `error_code`.
        code: u16,
        /// Telegram's description.
        description: String,
    },
    /// The request did not finish within its timeout (a stalled server or network).
    #[error("request timed out: {0}")]
    Timeout(String),
    /// Connection refused, reset, DNS, TLS…
    #[error("network error: {0}")]
    Network(String),
    /// An answer that is not the Bot API's JSON envelope.
    #[error("malformed response (HTTP {status}): {detail}")]
    Malformed {
        /// HTTP status of the answer.
        status: u16,
        /// What did not parse (never the body itself).
        detail: String,
    },
}

impl TelegramError {
    /// The `code` label of `tgingest_telegram_errors_total`.
    pub fn metric_code(&self) -> String {
        match self {
            Self::TooManyRequests { .. } => "429".to_owned(),
            Self::Conflict { .. } => "409".to_owned(),
            Self::Unauthorized => "401".to_owned(),
            Self::Server { code, .. } | Self::Api { code, .. } => code.to_string(),
            Self::Timeout(_) => "timeout".to_owned(),
            Self::Network(_) => "network".to_owned(),
            Self::Malformed { .. } => "malformed".to_owned(),
        }
    }

    /// The `reason` label of `tgingest_bot_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooManyRequests { .. } => "rate_limited",
            Self::Conflict { .. } => "conflict",
            Self::Unauthorized => "unauthorized",
            Self::Server { .. } => "server_error",
            Self::Api { .. } => "refused",
            Self::Timeout(_) => "timeout",
            Self::Network(_) => "network",
            Self::Malformed { .. } => "malformed",
        }
    }
}

/// A bot the producer serves: its position, its id (from its token) and its HTTP client.
pub struct BotClient {
    /// 1-based position in the configured token list; how messages name the bot.
    pub position: usize,
    /// The bot's user id: the digits before the colon of its token, so it is known without
    /// asking Telegram (a webhook route exists even while getMe fails).
    pub id: i64,
    token: SecretString,
    api_url: Url,
    http: reqwest::Client,
}

impl std::fmt::Debug for BotClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BotClient")
            .field("position", &self.position)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// What getMe says about a bot.
#[derive(Debug, Clone)]
pub struct BotIdentity {
    /// The bot's user id.
    pub id: i64,
    /// The bot's username, for logs (not secret).
    pub username: Option<String>,
}

impl BotClient {
    /// The client of bot `position` with the id its token carries (see
    /// [`crate::config::bot_id_of`]). `http_timeout` bounds every call made with the client unless
    /// the call sets its own (it must exceed the long poll). Does not touch the network.
    pub fn new(
        position: usize,
        id: i64,
        token: SecretString,
        api_url: Url,
        http_timeout: Duration,
    ) -> Result<Self, TelegramError> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(http_timeout)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| TelegramError::Network(redact(&e.without_url().to_string(), &token)))?;
        Ok(Self {
            position,
            id,
            token,
            api_url,
            http,
        })
    }

    /// getMe: whether Telegram accepts the token, and the bot's username.
    pub async fn get_me(&self) -> Result<BotIdentity, TelegramError> {
        let me: Me = self
            .call("getMe", &serde_json::json!({}), Some(SHORT_CALL_TIMEOUT))
            .await?;
        Ok(BotIdentity {
            id: me.id,
            username: me.username,
        })
    }

    /// getWebhookInfo: what Telegram holds for the bot's webhook.
    pub async fn get_webhook_info(&self) -> Result<WebhookInfo, TelegramError> {
        self.call(
            "getWebhookInfo",
            &serde_json::json!({}),
            Some(SHORT_CALL_TIMEOUT),
        )
        .await
    }

    /// One getUpdates call. `offset` confirms every update below it. The answer's elements are
    /// the updates' exact bytes.
    pub async fn get_updates(
        &self,
        offset: Option<i64>,
        timeout: Duration,
        limit: u8,
        allowed_updates: &[String],
        request_timeout: Option<Duration>,
    ) -> Result<Vec<Box<RawValue>>, TelegramError> {
        let mut body = serde_json::json!({
            "timeout": timeout.as_secs(),
            "limit": limit,
            "allowed_updates": allowed_updates,
        });
        if let Some(offset) = offset {
            body["offset"] = offset.into();
        }
        self.call("getUpdates", &body, request_timeout).await
    }

    /// setWebhook with `url`, the secret and `allowed_updates`. Pending updates are kept.
    pub async fn set_webhook(
        &self,
        url: &Url,
        secret: &SecretString,
        allowed_updates: &[String],
    ) -> Result<(), TelegramError> {
        let body = serde_json::json!({
            "url": url.as_str(),
            "secret_token": secret.expose_secret(),
            "allowed_updates": allowed_updates,
            "drop_pending_updates": false,
        });
        let _: Box<RawValue> = self
            .call("setWebhook", &body, Some(SHORT_CALL_TIMEOUT))
            .await?;
        Ok(())
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        body: &serde_json::Value,
        timeout: Option<Duration>,
    ) -> Result<T, TelegramError> {
        let url = self.method_url(method)?;
        let mut request = self.http.post(url).json(body);
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        let response = request.send().await.map_err(|e| self.http_error(e))?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(|e| self.http_error(e))?;
        let answer = parse_answer::<T>(status, &bytes);
        answer.map_err(|e| self.scrub(e))
    }

    fn method_url(&self, method: &str) -> Result<Url, TelegramError> {
        let mut url = self.api_url.clone();
        url.path_segments_mut()
            .map_err(|()| TelegramError::Malformed {
                status: 0,
                detail: "the Bot API URL cannot be a base URL".to_owned(),
            })?
            .pop_if_empty()
            .push(&format!("bot{}", self.token.expose_secret()))
            .push(method);
        Ok(url)
    }

    fn http_error(&self, error: reqwest::Error) -> TelegramError {
        http_error(error, &self.token)
    }

    fn scrub(&self, error: TelegramError) -> TelegramError {
        scrub(error, &self.token)
    }
}

/// Turns a reqwest error into a classified error without the URL (which holds the token).
fn http_error(error: reqwest::Error, token: &SecretString) -> TelegramError {
    let timeout = error.is_timeout();
    let text = redact(&error_chain(&error.without_url()), token);
    if timeout {
        TelegramError::Timeout(text)
    } else {
        TelegramError::Network(text)
    }
}

/// The error and its sources, joined: reqwest's own message alone ("error sending request")
/// hides the cause an operator needs (connection refused, reset).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn redact(text: &str, token: &SecretString) -> String {
    let token = token.expose_secret();
    if token.is_empty() {
        text.to_owned()
    } else {
        text.replace(token, "<redacted>")
    }
}

fn scrub(error: TelegramError, token: &SecretString) -> TelegramError {
    match error {
        TelegramError::Conflict { description } => TelegramError::Conflict {
            description: redact(&description, token),
        },
        TelegramError::Server { code, description } => TelegramError::Server {
            code,
            description: redact(&description, token),
        },
        TelegramError::Api { code, description } => TelegramError::Api {
            code,
            description: redact(&description, token),
        },
        TelegramError::Malformed { status, detail } => TelegramError::Malformed {
            status,
            detail: redact(&detail, token),
        },
        other => other,
    }
}

/// What the producer needs of getMe's answer. Every other field is ignored, so a Bot API server
/// that omits fields the Bot API marks optional (`has_main_web_app`, …) is served all the same.
#[derive(Deserialize)]
struct Me {
    id: i64,
    #[serde(default)]
    username: Option<String>,
}

/// What the producer reads of getWebhookInfo (every other field is ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct WebhookInfo {
    /// Updates Telegram holds for the bot, not yet delivered (it keeps them 24 hours).
    #[serde(default)]
    pub pending_update_count: u64,
    /// Unix time of the most recent failed delivery.
    #[serde(default)]
    pub last_error_date: Option<i64>,
    /// Why the most recent delivery failed.
    #[serde(default)]
    pub last_error_message: Option<String>,
}

#[derive(Deserialize)]
struct Answer<T> {
    ok: bool,
    result: Option<T>,
    error_code: Option<u16>,
    description: Option<String>,
    parameters: Option<Parameters>,
}

#[derive(Deserialize)]
struct Parameters {
    retry_after: Option<u64>,
}

/// Classifies one HTTP answer of the Bot API.
fn parse_answer<T: DeserializeOwned>(status: u16, body: &[u8]) -> Result<T, TelegramError> {
    let answer = match serde_json::from_slice::<Answer<T>>(body) {
        Ok(answer) => answer,
        Err(e) => {
            let description = format!("body is not the Bot API envelope ({e})");
            return Err(match status {
                200..=299 => TelegramError::Malformed {
                    status,
                    detail: description,
                },
                401 => TelegramError::Unauthorized,
                409 => TelegramError::Conflict { description },
                500..=599 => TelegramError::Server {
                    code: status,
                    description,
                },
                // A 429 without parameters cannot be waited out exactly: back off like a 5xx.
                _ => TelegramError::Malformed {
                    status,
                    detail: description,
                },
            });
        }
    };
    if answer.ok {
        return answer.result.ok_or(TelegramError::Malformed {
            status,
            detail: "ok is true but result is missing".to_owned(),
        });
    }
    let code = answer
        .error_code
        .unwrap_or(if status >= 400 { status } else { 0 });
    let description = answer
        .description
        .unwrap_or_else(|| "(no description)".to_owned());
    let retry_after = answer.parameters.and_then(|p| p.retry_after);
    Err(match (code, retry_after) {
        (429, Some(seconds)) => TelegramError::TooManyRequests {
            retry_after: Duration::from_secs(seconds),
        },
        (409, _) => TelegramError::Conflict { description },
        (401, _) => TelegramError::Unauthorized,
        (404, _) if description == "Not Found" => TelegramError::Unauthorized,
        (500..=599, _) => TelegramError::Server { code, description },
        _ => TelegramError::Api { code, description },
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    type Updates = Vec<Box<RawValue>>;

    #[test]
    fn each_update_keeps_its_exact_bytes_including_nul_and_lone_surrogates() {
        let body = br#"{"ok":true,"result":[{"update_id":1,"message":{"text":"a\u0000b"}}, {"update_id":2,"message":{"text":"\ud83d x"}},{"update_id":3,"poll":{}}]}"#;
        let updates = parse_answer::<Updates>(200, body).unwrap();
        let texts: Vec<&str> = updates.iter().map(|u| u.get()).collect();
        assert_eq!(
            texts,
            [
                r#"{"update_id":1,"message":{"text":"a\u0000b"}}"#,
                r#"{"update_id":2,"message":{"text":"\ud83d x"}}"#,
                r#"{"update_id":3,"poll":{}}"#,
            ]
        );
    }

    #[test]
    fn a_429_carries_retry_after() {
        let body = br#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 7","parameters":{"retry_after":7}}"#;
        match parse_answer::<Updates>(429, body) {
            Err(TelegramError::TooManyRequests { retry_after }) => {
                assert_eq!(retry_after, Duration::from_secs(7));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_409_is_a_conflict_and_a_502_a_server_error() {
        let conflict = br#"{"ok":false,"error_code":409,"description":"Conflict: terminated by other getUpdates request"}"#;
        assert!(matches!(
            parse_answer::<Updates>(409, conflict),
            Err(TelegramError::Conflict { .. })
        ));
        assert!(matches!(
            parse_answer::<Updates>(502, b"<html>Bad Gateway</html>"),
            Err(TelegramError::Server { code: 502, .. })
        ));
    }

    #[test]
    fn a_truncated_200_body_is_malformed_and_names_no_content() {
        let body = br#"{"ok":true,"result":[{"update_id":1,"message":{"text":"secret"#;
        match parse_answer::<Updates>(200, body) {
            Err(TelegramError::Malformed {
                status: 200,
                detail,
            }) => {
                assert!(!detail.contains("secret"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_unauthorized_answer_is_recognised() {
        let body = br#"{"ok":false,"error_code":401,"description":"Unauthorized"}"#;
        assert!(matches!(
            parse_answer::<Updates>(401, body),
            Err(TelegramError::Unauthorized)
        ));
    }

    #[test]
    fn get_me_needs_only_the_id_and_reports_a_missing_one_with_the_status() {
        let minimal =
            br#"{"ok":true,"result":{"id":42,"is_bot":true,"first_name":"B","username":"b_bot"}}"#;
        let me = parse_answer::<Me>(200, minimal).unwrap();
        assert_eq!((me.id, me.username.as_deref()), (42, Some("b_bot")));
        match parse_answer::<Me>(200, br#"{"ok":true,"result":{"is_bot":true}}"#) {
            Err(TelegramError::Malformed {
                status: 200,
                detail,
            }) => {
                assert!(detail.contains("missing field `id`"), "{detail}");
            }
            other => panic!("{:?}", other.map(|me| me.id)),
        }
    }

    #[test]
    fn the_token_is_scrubbed_from_descriptions() {
        let token = SecretString::from("123:ABC");
        let error = scrub(
            TelegramError::Api {
                code: 400,
                description: "bad bot123:ABC here".to_owned(),
            },
            &token,
        );
        assert!(!error.to_string().contains("123:ABC"), "{error}");
    }
}
