//! The HTTP side: routing `/bot{TOKEN}/{method}`, the implemented methods and the reply envelope.
//!
//! Guarantees: every request is recorded exactly once (also when the client disconnects); a reply
//! is `{"ok":true,"result":…}` or Telegram's error envelope with the same HTTP status; update bytes
//! are copied into the `getUpdates` body verbatim, never re-serialised; tokens appear nowhere but
//! in the token map.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header::CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::Shared;
use crate::allowed::AllowedUpdates;
use crate::fault::Fault;
use crate::params;
use crate::record::{Params, RequestRecord};
use crate::state::{Bot, TERMINATED_BY_SET_WEBHOOK, WEBHOOK_IS_ACTIVE, WebhookState, lock};
use crate::webhook;

/// Bodies larger than this are refused (Telegram's own limit for uploads is 50 MB).
const MAX_BODY_BYTES: usize = 50 * 1024 * 1024;
/// Telegram clamps `timeout` to 50 seconds.
const LONG_POLL_MAX_TIMEOUT_SECS: i64 = 50;

/// What a method answers, before it becomes an HTTP response.
pub(crate) enum Reply {
    Ok {
        /// JSON text of `result`.
        result: Vec<u8>,
        description: Option<&'static str>,
    },
    Error {
        code: u16,
        description: String,
        retry_after: Option<u32>,
    },
    /// HTTP 200 with a body that is not JSON.
    Malformed,
}

impl Reply {
    fn ok(result: impl Into<Vec<u8>>) -> Self {
        Self::Ok {
            result: result.into(),
            description: None,
        }
    }

    fn ok_true(description: &'static str) -> Self {
        Self::Ok {
            result: b"true".to_vec(),
            description: Some(description),
        }
    }

    pub(crate) fn error(code: u16, description: impl Into<String>) -> Self {
        Self::Error {
            code,
            description: description.into(),
            retry_after: None,
        }
    }

    fn closing() -> Self {
        Self::error(500, "Internal Server Error: restart")
    }

    fn from_fault(fault: &Fault) -> Self {
        match fault {
            Fault::TooManyRequests { retry_after } => Self::Error {
                code: 429,
                description: format!("Too Many Requests: retry after {retry_after}"),
                retry_after: Some(*retry_after),
            },
            Fault::Conflict => Self::error(409, crate::state::TERMINATED_BY_OTHER_GET_UPDATES),
            Fault::ServerError(code) => Self::error(*code, server_error_text(*code)),
            Fault::MalformedBody => Self::Malformed,
            // Not answer-replacing faults; never reach here, but answer sanely if they do.
            Fault::Stall(_) | Fault::UpdateIdJump { .. } => {
                Self::error(500, "Internal Server Error")
            }
        }
    }

    fn status(&self) -> u16 {
        match self {
            Self::Ok { .. } | Self::Malformed => 200,
            Self::Error { code, .. } => *code,
        }
    }

    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = match self {
            Self::Ok {
                result,
                description,
            } => {
                let mut body = Vec::with_capacity(result.len() + 48);
                body.extend_from_slice(br#"{"ok":true,"result":"#);
                body.extend_from_slice(&result);
                if let Some(description) = description {
                    body.extend_from_slice(br#","description":"#);
                    body.extend_from_slice(json_string(description).as_bytes());
                }
                body.push(b'}');
                body
            }
            Self::Error {
                code,
                description,
                retry_after,
            } => {
                let mut body = format!(
                    r#"{{"ok":false,"error_code":{code},"description":{}"#,
                    json_string(&description)
                );
                if let Some(seconds) = retry_after {
                    body.push_str(&format!(r#","parameters":{{"retry_after":{seconds}}}"#));
                }
                body.push('}');
                body.into_bytes()
            }
            Self::Malformed => br#"{"ok":true,"result":[{"update_id":"#.to_vec(),
        };
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }
}

fn server_error_text(code: u16) -> &'static str {
    match code {
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Internal Server Error",
    }
}

fn json_string(text: &str) -> String {
    serde_json::Value::String(text.to_owned()).to_string()
}

/// Records one request when it is answered, or with status 499 if its future is dropped first.
struct Recorder {
    shared: Arc<Shared>,
    started: Instant,
    record: RequestRecord,
    stored: bool,
}

impl Recorder {
    fn new(shared: Arc<Shared>, http_method: &str) -> Self {
        Self {
            shared,
            started: Instant::now(),
            record: RequestRecord {
                at: SystemTime::now(),
                duration: Duration::ZERO,
                http_method: http_method.to_owned(),
                bot: None,
                method: String::new(),
                params: Params::default(),
                offset: None,
                status: 499,
                fault: None,
            },
            stored: false,
        }
    }

    fn finish(mut self, reply: Reply) -> Response {
        self.store(reply.status());
        reply.into_response()
    }

    fn store(&mut self, status: u16) {
        if !self.stored {
            self.stored = true;
            self.record.status = status;
            self.record.duration = self.started.elapsed();
            lock(&self.shared.log).push(self.record.clone());
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.store(499);
    }
}

/// Splits `/bot{TOKEN}/{method}`; `None` for any other path.
fn split_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/bot")?;
    let (token, method) = rest.split_once('/')?;
    if token.is_empty() || method.is_empty() || method.contains('/') {
        return None;
    }
    Some((token, method))
}

pub(crate) async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let mut recorder = Recorder::new(shared.clone(), parts.method.as_str());
    let Some((token, method)) = split_path(parts.uri.path()) else {
        return recorder.finish(Reply::error(404, "Not Found"));
    };
    let method = method.to_ascii_lowercase();
    recorder.record.method.clone_from(&method);
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
        return recorder.finish(Reply::error(
            400,
            "Bad Request: request body is unreadable or too large",
        ));
    };
    let params = match params::decode(&parts.uri, &parts.headers, body).await {
        Ok(params) => params,
        Err(description) => return recorder.finish(Reply::error(400, description)),
    };
    {
        let record = &mut recorder.record;
        record.offset = params.get("offset").map(|_| params.integer("offset", 0));
        record.params = params.clone();
    }
    let Some(bot) = shared.bot(token).filter(|bot| !bot.lock().revoked) else {
        return recorder.finish(Reply::error(401, "Unauthorized"));
    };
    recorder.record.bot = Some(bot.bot_ref());

    let fault = bot.lock().take_fault(&method);
    if let Some(fault) = fault {
        recorder.record.fault = Some(fault.clone());
        if let Fault::Stall(duration) = fault {
            tokio::select! {
                () = tokio::time::sleep(duration) => {}
                () = shared.shutdown.cancelled() => return recorder.finish(Reply::closing()),
            }
        } else {
            tracing::debug!(
                bot_index = bot.index,
                method,
                ?fault,
                "answering with an injected fault"
            );
            return recorder.finish(Reply::from_fault(&fault));
        }
    }

    let reply = match method.as_str() {
        "getme" => get_me(&bot, shared.minimal_get_me.load(Ordering::Relaxed)),
        "getupdates" => get_updates(&shared, &bot, &params).await,
        "setwebhook" => set_webhook(&shared, &bot, &params, false),
        "deletewebhook" => set_webhook(&shared, &bot, &params, true),
        "getwebhookinfo" => get_webhook_info(&bot),
        _ => Reply::error(404, "Not Found: method not found"),
    };
    recorder.finish(reply)
}

/// getMe's answer; the `Option` fields are the ones the Bot API marks optional.
#[derive(Serialize)]
struct Me<'a> {
    id: i64,
    is_bot: bool,
    first_name: &'a str,
    username: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    can_join_groups: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    can_read_all_group_messages: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    supports_inline_queries: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    can_connect_to_business: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    has_main_web_app: Option<bool>,
}

fn get_me(bot: &Bot, minimal: bool) -> Reply {
    let state = bot.lock();
    let optional = |value: bool| (!minimal).then_some(value);
    let me = Me {
        id: state.info.id,
        is_bot: true,
        first_name: &state.info.first_name,
        username: &state.info.username,
        can_join_groups: optional(true),
        // An ingestion bot runs with privacy mode off, so it sees every group message.
        can_read_all_group_messages: optional(true),
        supports_inline_queries: optional(false),
        can_connect_to_business: optional(false),
        has_main_web_app: optional(false),
    };
    match serde_json::to_vec(&me) {
        Ok(json) => Reply::ok(json),
        Err(e) => Reply::error(500, format!("Internal Server Error: {e}")),
    }
}

fn updates_result(updates: &[Arc<[u8]>]) -> Vec<u8> {
    let size = updates.iter().map(|u| u.len() + 1).sum::<usize>() + 2;
    let mut result = Vec::with_capacity(size);
    result.push(b'[');
    for (i, update) in updates.iter().enumerate() {
        if i > 0 {
            result.push(b',');
        }
        result.extend_from_slice(update);
    }
    result.push(b']');
    result
}

async fn get_updates(shared: &Shared, bot: &Bot, params: &Params) -> Reply {
    let offset = params.integer("offset", 0);
    let limit = usize::try_from(params.integer("limit", 100).clamp(1, 100)).unwrap_or(100);
    let timeout = params
        .integer("timeout", 0)
        .clamp(0, LONG_POLL_MAX_TIMEOUT_SECS);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout.unsigned_abs());

    let notified = bot.notify.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    let (poll_id, mut terminated) = {
        let mut state = bot.lock();
        if state.webhook.is_some() {
            return Reply::error(409, WEBHOOK_IS_ACTIVE);
        }
        if let Some(allowed) = params
            .get("allowed_updates")
            .and_then(AllowedUpdates::from_param)
        {
            state.allowed = allowed;
        }
        state.apply_offset(offset);
        let batch = state.head(limit);
        if !batch.is_empty() || timeout == 0 {
            // A newer request supersedes a waiting one even when it answers at once.
            state.terminate_poller(crate::state::TERMINATED_BY_OTHER_GET_UPDATES);
            return Reply::ok(updates_result(&batch));
        }
        state.register_poller()
    };

    loop {
        tokio::select! {
            () = &mut notified => {
                notified.set(bot.notify.notified());
                notified.as_mut().enable();
                let mut state = bot.lock();
                if !state.is_current_poller(poll_id) {
                    drop(state);
                    let reason = terminated.try_recv().unwrap_or(crate::state::TERMINATED_BY_OTHER_GET_UPDATES);
                    return Reply::error(409, reason);
                }
                let batch = state.head(limit);
                if !batch.is_empty() {
                    state.release_poller(poll_id);
                    return Reply::ok(updates_result(&batch));
                }
            }
            reason = &mut terminated => {
                return Reply::error(409, reason.unwrap_or(crate::state::TERMINATED_BY_OTHER_GET_UPDATES));
            }
            () = tokio::time::sleep_until(deadline) => {
                let mut state = bot.lock();
                state.release_poller(poll_id);
                return Reply::ok(updates_result(&state.head(limit)));
            }
            () = shared.shutdown.cancelled() => {
                bot.lock().release_poller(poll_id);
                return Reply::closing();
            }
        }
    }
}

fn is_valid_secret_token(secret: &str) -> bool {
    secret.len() <= 256
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `setWebhook` and `deleteWebhook` (which is `setWebhook` with an empty URL, as in Telegram).
fn set_webhook(shared: &Arc<Shared>, bot: &Arc<Bot>, params: &Params, delete: bool) -> Reply {
    let url = if delete {
        ""
    } else {
        params.get("url").unwrap_or("")
    };
    let drop_pending = params.flag("drop_pending_updates");
    let allowed = params
        .get("allowed_updates")
        .and_then(AllowedUpdates::from_param);
    let secret_token = if url.is_empty() {
        ""
    } else {
        params.get("secret_token").unwrap_or("")
    };
    let max_connections = if url.is_empty() {
        0
    } else {
        let default = i64::from(shared.config.webhook.default_max_connections);
        u32::try_from(params.integer("max_connections", default).clamp(1, 100)).unwrap_or(40)
    };
    if !url.is_empty() {
        let valid = url::Url::parse(url)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host());
        if !valid {
            return Reply::error(400, "Bad Request: invalid webhook URL specified");
        }
        if secret_token.len() > 256 {
            return Reply::error(400, "Bad Request: secret token is too long");
        }
        if !is_valid_secret_token(secret_token) {
            return Reply::error(
                400,
                "Bad Request: secret token contains unallowed characters",
            );
        }
    }

    let mut state = bot.lock();
    if let Some(allowed) = allowed {
        state.allowed = allowed;
    }
    let unchanged = match &state.webhook {
        None => url.is_empty(),
        Some(hook) => {
            hook.url == url
                && hook.secret_token == secret_token
                && hook.max_connections == max_connections
        }
    };
    if unchanged && !drop_pending {
        return Reply::ok_true(if url.is_empty() {
            "Webhook is already deleted"
        } else {
            "Webhook is already set"
        });
    }
    if !url.is_empty() {
        state.terminate_poller(TERMINATED_BY_SET_WEBHOOK);
    }
    let had_webhook = state.webhook.is_some();
    if let Some(old) = state.webhook.take() {
        old.cancel.cancel();
    }
    if drop_pending {
        state.drop_pending();
    }
    if url.is_empty() {
        return Reply::ok_true(if had_webhook {
            "Webhook was deleted"
        } else {
            "Webhook is already deleted"
        });
    }
    state.webhook_generation += 1;
    let hook = WebhookState {
        url: url.to_owned(),
        secret_token: secret_token.to_owned(),
        max_connections,
        generation: state.webhook_generation,
        cancel: shared.shutdown.child_token(),
    };
    let target = webhook::Target {
        url: hook.url.clone(),
        secret_token: hook.secret_token.clone(),
        max_connections: hook.max_connections,
        generation: hook.generation,
    };
    let cancel = hook.cancel.clone();
    state.webhook = Some(hook);
    drop(state);
    tokio::spawn(webhook::deliver(
        shared.clone(),
        bot.clone(),
        target,
        cancel,
    ));
    Reply::ok_true("Webhook was set")
}

#[derive(Serialize)]
struct WebhookInfo<'a> {
    url: &'a str,
    has_custom_certificate: bool,
    pending_update_count: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_error_date: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_error_message: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_connections: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ip_address: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    allowed_updates: Option<Vec<&'static str>>,
}

fn get_webhook_info(bot: &Bot) -> Reply {
    let state = bot.lock();
    let hook = state.webhook.as_ref();
    let info = WebhookInfo {
        url: hook.map_or("", |h| h.url.as_str()),
        has_custom_certificate: false,
        pending_update_count: state.queue.len(),
        last_error_date: state.last_webhook_error.as_ref().map(|(date, _)| *date),
        last_error_message: state
            .last_webhook_error
            .as_ref()
            .map(|(_, text)| text.as_str()),
        max_connections: hook.map(|h| h.max_connections),
        ip_address: hook.map(|_| "127.0.0.1"),
        allowed_updates: state.allowed.names(),
    };
    match serde_json::to_vec(&info) {
        Ok(json) => Reply::ok(json),
        Err(e) => Reply::error(500, format!("Internal Server Error: {e}")),
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        Reply::into_response(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bot_paths_with_a_token_and_a_method_are_routed() {
        assert_eq!(split_path("/bot1:AA/getMe"), Some(("1:AA", "getMe")));
        assert_eq!(split_path("/bot/getMe"), None);
        assert_eq!(split_path("/bot1:AA/"), None);
        assert_eq!(split_path("/file/bot1:AA/x"), None);
        assert_eq!(split_path("/bot1:AA/a/b"), None);
    }

    #[test]
    fn error_replies_carry_retry_after_in_parameters() {
        let reply = Reply::from_fault(&Fault::TooManyRequests { retry_after: 7 });
        assert_eq!(reply.status(), 429);
        let Reply::Error {
            description,
            retry_after,
            ..
        } = reply
        else {
            panic!("an error reply");
        };
        assert_eq!(description, "Too Many Requests: retry after 7");
        assert_eq!(retry_after, Some(7));
    }

    #[test]
    fn the_updates_result_is_the_raw_bytes_joined_verbatim() {
        let a: Arc<[u8]> = br#"{"update_id":1,"x":"\u0000"}"#.to_vec().into();
        let b: Arc<[u8]> = br#"{"update_id":2,"x":"\ud800"}"#.to_vec().into();
        let result = updates_result(&[a, b]);
        assert_eq!(
            result,
            br#"[{"update_id":1,"x":"\u0000"},{"update_id":2,"x":"\ud800"}]"#.to_vec()
        );
    }
}
