//! Injected faults, observed over HTTP.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use botsim::Fault;
use common::{TOKEN, message, start};
use serde_json::json;

#[tokio::test]
async fn too_many_requests_answers_429_with_retry_after_then_recovers() {
    let h = start().await;
    h.api
        .inject(TOKEN, Fault::TooManyRequests { retry_after: 3 })
        .unwrap();
    let answer = h.get("getUpdates", "").await;
    assert_eq!(answer.status, 429);
    assert_eq!(
        answer.json(),
        json!({
            "ok": false,
            "error_code": 429,
            "description": "Too Many Requests: retry after 3",
            "parameters": {"retry_after": 3}
        })
    );
    assert_eq!(
        h.get("getUpdates", "").await.status,
        200,
        "a fault is consumed once"
    );
}

#[tokio::test]
async fn conflict_answers_409() {
    let h = start().await;
    h.api.inject(TOKEN, Fault::Conflict).unwrap();
    let answer = h.get("getUpdates", "").await;
    assert_eq!(answer.status, 409);
    assert_eq!(answer.json()["error_code"], 409);
    assert!(
        answer.description().starts_with("Conflict:"),
        "{}",
        answer.description()
    );
}

#[tokio::test]
async fn server_error_answers_the_given_5xx_code() {
    let h = start().await;
    h.api.inject(TOKEN, Fault::ServerError(502)).unwrap();
    h.api.inject(TOKEN, Fault::ServerError(500)).unwrap();
    let first = h.get("getMe", "").await;
    assert_eq!(first.status, 502);
    assert_eq!(first.json()["error_code"], 502);
    assert_eq!(first.json()["ok"], false);
    assert_eq!(
        h.get("getMe", "").await.status,
        500,
        "faults are consumed in order"
    );
    assert_eq!(h.get("getMe", "").await.status, 200);
}

#[tokio::test]
async fn malformed_body_answers_200_with_a_body_that_is_not_json() {
    let h = start().await;
    h.push("message", message("m"));
    h.api.inject(TOKEN, Fault::MalformedBody).unwrap();
    let answer = h.get("getUpdates", "").await;
    assert_eq!(answer.status, 200);
    assert!(serde_json::from_slice::<serde_json::Value>(&answer.body).is_err());
    assert_eq!(h.get("getUpdates", "").await.update_ids().len(), 1);
}

#[tokio::test]
async fn stall_holds_the_request_then_answers_normally() {
    let h = start().await;
    let id = h.push("message", message("m"));
    h.api
        .inject(TOKEN, Fault::Stall(Duration::from_millis(700)))
        .unwrap();
    let started = Instant::now();
    let answer = h.get("getUpdates", "").await;
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(answer.update_ids(), vec![id]);
    assert_eq!(
        h.api.requests()[0].fault,
        Some(Fault::Stall(Duration::from_millis(700)))
    );
}

#[tokio::test]
async fn a_fault_for_one_method_waits_for_that_method() {
    let h = start().await;
    h.api
        .inject_on(TOKEN, "getUpdates", Fault::ServerError(503))
        .unwrap();
    assert_eq!(h.get("getMe", "").await.status, 200);
    assert_eq!(h.api.pending_faults(TOKEN).unwrap(), 1);
    assert_eq!(h.get("GETUPDATES", "").await.status, 503);
    assert_eq!(h.api.pending_faults(TOKEN).unwrap(), 0);
}

#[tokio::test]
async fn a_faulted_get_updates_confirms_nothing() {
    let h = start().await;
    let ids: Vec<i64> = (0..2)
        .map(|i| h.push("message", message(&format!("m{i}"))))
        .collect();
    h.api.inject(TOKEN, Fault::ServerError(500)).unwrap();
    let offset = ids[1] + 1;
    assert_eq!(
        h.get("getUpdates", &format!("offset={offset}"))
            .await
            .status,
        500
    );
    assert_eq!(h.api.pending_update_count(TOKEN).unwrap(), 2);
    assert_eq!(h.api.confirmed_offset(TOKEN), None);

    let record = &h.api.requests()[0];
    assert_eq!(
        record.offset,
        Some(offset),
        "the log still shows what the client sent"
    );
    assert_eq!(record.status, 500);
    assert_eq!(record.fault, Some(Fault::ServerError(500)));
}

#[tokio::test]
async fn faults_do_not_apply_to_other_bots_or_unknown_tokens() {
    let h = start().await;
    h.api
        .add_bot("555:other", botsim::BotInfo::new(555, "other_bot", "Other"));
    h.api.inject("555:other", Fault::ServerError(500)).unwrap();
    assert_eq!(h.get("getMe", "").await.status, 200);
    let unknown = h
        .http
        .get(h.url_for("1:unknown", "getMe"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 401);
    let other = h
        .http
        .get(h.url_for("555:other", "getMe"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 500);
}
