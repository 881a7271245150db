//! Webhook intake: Telegram POSTs each update to `/webhook/{bot_id}`. Every configured bot has
//! its route from startup (the id comes from its token), whatever its Bot API calls answer.
//!
//! Guarantees:
//! - The `X-Telegram-Bot-Api-Secret-Token` header is compared with the configured secret in
//!   constant time (`subtle`); a missing or wrong secret is answered 401 before a byte of the body
//!   is read, and nothing is written to Kafka. An unauthenticated client therefore holds no memory
//!   and no turn, however large a body it announces or however slowly it sends it.
//! - Authenticated requests are bounded: at most `max_concurrent_requests` at once (more wait for
//!   a turn up to `body_timeout`, else 503), each body read within `body_timeout` (else 408) and at
//!   most 16 MiB (else 413).
//! - 200 is answered only after Kafka acknowledged the update (or its `tg-error` envelope); any
//!   other outcome is a 503, so Telegram delivers the update again. Duplicates are possible,
//!   losses are not.
//! - The secret, the bot tokens and request headers are never logged.
//! - Replicas share nothing: any number can run behind one load balancer. Nothing here ever calls
//!   deleteWebhook or drops pending updates.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use std::time::Duration;

use axum::Router;
use axum::body::to_bytes;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::http::header::CONTENT_LENGTH;
use axum::routing::post;
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::WebhookConfig;
use crate::metrics;
use crate::poller::unix_millis;
use crate::publisher::{Publisher, RecordOutcome};
use crate::update::record_for;
use crate::webhook_info::WebhookWatch;

/// The header Telegram sends the webhook secret in.
pub const SECRET_HEADER: &str = "x-telegram-bot-api-secret-token";

/// Bodies up to this size are accepted (and enveloped when larger than `message.max.bytes`), so an
/// oversized update becomes a dead letter instead of being refused forever with 413.
const BODY_LIMIT: usize = 16 * 1024 * 1024;

/// The path of a bot's webhook endpoint.
pub fn webhook_path(bot_id: i64) -> String {
    format!("/webhook/{bot_id}")
}

struct WebhookState {
    /// Bot id → position in the token list.
    bots: HashMap<i64, usize>,
    secret: SecretString,
    publisher: Arc<Publisher>,
    body_timeout: Duration,
    /// One permit per authenticated request being read or published.
    turns: Arc<Semaphore>,
    watch: Arc<WebhookWatch>,
}

/// Serves the webhook endpoints on `listener` until `shutdown`, then finishes the requests in
/// flight (each waits for its Kafka acknowledgement).
pub(crate) async fn serve(
    listener: TcpListener,
    bots: HashMap<i64, usize>,
    config: &WebhookConfig,
    publisher: Arc<Publisher>,
    watch: Arc<WebhookWatch>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let state = Arc::new(WebhookState {
        bots,
        secret: config.secret_token.clone(),
        publisher,
        body_timeout: config.body_timeout,
        turns: Arc::new(Semaphore::new(config.max_concurrent_requests)),
        watch,
    });
    let app = Router::new()
        .route("/webhook/{bot_id}", post(receive))
        .with_state(state);
    let address: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(?address, "webhook endpoint listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .context("the webhook server failed")
}

/// Takes the request with its body unread: the secret and the bot are checked first, the body is
/// read only for an authenticated request that got its turn.
async fn receive(
    State(state): State<Arc<WebhookState>>,
    Path(bot): Path<String>,
    request: Request,
) -> StatusCode {
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    let presented = headers
        .get(SECRET_HEADER)
        .map(|value| value.as_bytes())
        .unwrap_or_default();
    let expected = state.secret.expose_secret().as_bytes();
    // ct_eq on slices of different lengths returns false at once: only the length can leak.
    if !bool::from(presented.ct_eq(expected)) {
        reject(
            "secret",
            "webhook request with a missing or wrong secret token refused (401)",
        );
        return StatusCode::UNAUTHORIZED;
    }
    let Some((bot_id, position)) = bot
        .parse::<i64>()
        .ok()
        .and_then(|id| state.bots.get(&id).map(|p| (id, *p)))
    else {
        reject(
            "unknown_bot",
            "webhook request for a bot this producer does not serve (404)",
        );
        return StatusCode::NOT_FOUND;
    };
    state.watch.delivered(bot_id);
    let announced = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if announced.is_some_and(|length| length > BODY_LIMIT) {
        reject("too_large", "webhook body over 16 MiB refused (413)");
        return StatusCode::PAYLOAD_TOO_LARGE;
    }
    let Ok(Ok(_turn)) =
        tokio::time::timeout(state.body_timeout, Arc::clone(&state.turns).acquire_owned()).await
    else {
        reject(
            "busy",
            "webhook request waited too long for a turn (503; Telegram retries)",
        );
        return StatusCode::SERVICE_UNAVAILABLE;
    };
    let body = match tokio::time::timeout(state.body_timeout, to_bytes(body, BODY_LIMIT)).await {
        Ok(Ok(body)) => body,
        Ok(Err(_)) => {
            reject("body", "webhook body unreadable or over 16 MiB (400)");
            return StatusCode::BAD_REQUEST;
        }
        Err(_) => {
            reject("body_timeout", "webhook body not received in time (408)");
            return StatusCode::REQUEST_TIMEOUT;
        }
    };
    let mut records = [record_for(
        bot_id,
        &body,
        unix_millis(),
        state.publisher.record_limit(),
    )];
    metrics::received(bot_id, &records[0].kind);
    if let Some(reason) = records[0].envelope {
        tracing::warn!(
            bot = position,
            reason = reason.as_str(),
            "webhook update published as a tg-error envelope"
        );
    }
    // A record refused for its size was replaced by its envelope and that was sent, within
    // the one call: Telegram's retry would fail the same way.
    match state.publisher.publish(&mut records, &[&body]).await.pop() {
        Some(RecordOutcome::Acked) => StatusCode::OK,
        Some(RecordOutcome::Failed(error)) => {
            tracing::warn!(bot = position, update_id = ?records[0].update_id, %error, "Kafka did not acknowledge a webhook update (503; Telegram retries)");
            StatusCode::SERVICE_UNAVAILABLE
        }
        None => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// Counts a request refused before Kafka; logged at debug only, since anyone can cause these and
/// the counter is what operators alert on.
fn reject(reason: &'static str, message: &'static str) {
    ::metrics::counter!(metrics::WEBHOOK_REJECTED, "reason" => reason).increment(1);
    tracing::debug!(reason, "{message}");
}
