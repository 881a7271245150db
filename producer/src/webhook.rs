//! Webhook intake: Telegram POSTs each update to `/webhook/{bot_id}`.
//!
//! Guarantees:
//! - The `X-Telegram-Bot-Api-Secret-Token` header is compared with the configured secret in
//!   constant time (`subtle`); a missing or wrong secret is answered 401 before the body is looked
//!   at, and nothing is written to Kafka.
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
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics;
use crate::poller::unix_millis;
use crate::publisher::{Publisher, RecordOutcome};
use crate::update::record_for;

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
    message_max_bytes: usize,
}

/// Serves the webhook endpoints on `listener` until `shutdown`, then finishes the requests in
/// flight (each waits for its Kafka acknowledgement).
pub(crate) async fn serve(
    listener: TcpListener,
    bots: HashMap<i64, usize>,
    secret: SecretString,
    publisher: Arc<Publisher>,
    message_max_bytes: usize,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let state = Arc::new(WebhookState {
        bots,
        secret,
        publisher,
        message_max_bytes,
    });
    let app = Router::new()
        .route("/webhook/{bot_id}", post(receive))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state);
    let address: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(?address, "webhook endpoint listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .context("the webhook server failed")
}

async fn receive(
    State(state): State<Arc<WebhookState>>,
    Path(bot): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let presented = headers
        .get(SECRET_HEADER)
        .map(|value| value.as_bytes())
        .unwrap_or_default();
    let expected = state.secret.expose_secret().as_bytes();
    // ct_eq on slices of different lengths returns false at once: only the length can leak.
    if !bool::from(presented.ct_eq(expected)) {
        ::metrics::counter!(metrics::WEBHOOK_REJECTED, "reason" => "secret").increment(1);
        // Debug, not warn: anyone can send these, and the counter above is what operators alert on.
        tracing::debug!("webhook request with a missing or wrong secret token refused (401)");
        return StatusCode::UNAUTHORIZED;
    }
    let Some((bot_id, position)) = bot
        .parse::<i64>()
        .ok()
        .and_then(|id| state.bots.get(&id).map(|p| (id, *p)))
    else {
        ::metrics::counter!(metrics::WEBHOOK_REJECTED, "reason" => "unknown_bot").increment(1);
        tracing::debug!("webhook request for a bot this producer does not serve (404)");
        return StatusCode::NOT_FOUND;
    };
    let mut records = [record_for(
        bot_id,
        &body,
        unix_millis(),
        state.message_max_bytes,
    )];
    metrics::received(bot_id, &records[0].kind);
    if let Some(reason) = records[0].envelope {
        tracing::warn!(
            bot = position,
            reason = reason.as_str(),
            "webhook update published as a tg-error envelope"
        );
    }
    // A second attempt only when the first replaced the record by its envelope (too large for the
    // broker): the envelope is small and must not wait for Telegram's retry, which would fail
    // the same way.
    for _ in 0..2 {
        let before = records[0].envelope;
        let outcome = state.publisher.publish(&mut records, &[&body]).await.pop();
        match outcome {
            Some(RecordOutcome::Acked) => return StatusCode::OK,
            Some(RecordOutcome::Failed(error)) => {
                if records[0].envelope != before {
                    continue;
                }
                tracing::warn!(bot = position, update_id = ?records[0].update_id, %error, "Kafka did not acknowledge a webhook update (503; Telegram retries)");
                return StatusCode::SERVICE_UNAVAILABLE;
            }
            None => break,
        }
    }
    StatusCode::SERVICE_UNAVAILABLE
}
