//! getUpdates and getMe against the real server over HTTP.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use botsim::{AllowedUpdates, BotApi, BotApiConfig, BotInfo, Fault};
use common::{BOT_ID, TOKEN, message, start};
use serde_json::{Value, json};
use testkit::wait_until;

#[tokio::test]
async fn get_me_returns_the_bot_user() {
    let h = start().await;
    let answer = h.get("getMe", "").await;
    assert_eq!(answer.status, 200);
    let me = answer.json();
    assert_eq!(me["ok"], true);
    assert_eq!(me["result"]["id"], BOT_ID);
    assert_eq!(me["result"]["is_bot"], true);
    assert_eq!(me["result"]["username"], "ingest_test_bot");
    assert_eq!(me["result"]["first_name"], "Ingest Test");
}

#[tokio::test]
async fn an_unknown_token_is_unauthorized_for_every_method() {
    let h = start().await;
    for method in ["getMe", "getUpdates", "setWebhook", "noSuchMethod"] {
        let response = h
            .http
            .post(h.url_for("999:wrong", method))
            .send()
            .await
            .unwrap();
        let answer = common::answer(response).await;
        assert_eq!(answer.status, 401, "{method}");
        assert_eq!(
            answer.json(),
            json!({"ok": false, "error_code": 401, "description": "Unauthorized"})
        );
    }
}

#[tokio::test]
async fn an_unknown_method_is_not_found() {
    let h = start().await;
    let answer = h.get("sendTelepathy", "").await;
    assert_eq!(answer.status, 404);
    assert_eq!(answer.description(), "Not Found: method not found");
}

#[tokio::test]
async fn method_names_are_matched_case_insensitively() {
    let h = start().await;
    h.push("message", message("x"));
    for method in ["getupdates", "GETUPDATES", "GetUpdates", "getUpdates"] {
        let answer = h.get(method, "").await;
        assert_eq!(answer.status, 200, "{method}");
        assert_eq!(answer.update_ids().len(), 1, "{method}");
    }
    assert_eq!(h.get("GETME", "").await.status, 200);
    assert!(
        h.api
            .requests()
            .iter()
            .all(|r| r.method == r.method.to_lowercase())
    );
}

#[tokio::test]
async fn parameters_are_read_from_the_query_a_form_and_a_json_body() {
    let h = start().await;
    let ids: Vec<i64> = (0..5)
        .map(|i| h.push("message", message(&format!("m{i}"))))
        .collect();

    let by_query = h.get("getUpdates", "limit=1").await.update_ids();
    assert_eq!(by_query, ids[..1]);

    let form = h
        .http
        .post(h.url("getUpdates"))
        .form(&[("limit", "2"), ("offset", &ids[1].to_string())])
        .send()
        .await
        .unwrap();
    assert_eq!(common::answer(form).await.update_ids(), ids[1..3]);

    let by_json = h
        .call("getUpdates", json!({"offset": ids[3], "limit": 1}))
        .await;
    assert_eq!(by_json.update_ids(), ids[3..4]);
}

#[tokio::test]
async fn confirming_an_offset_forgets_the_earlier_updates() {
    let h = start().await;
    let ids: Vec<i64> = (0..4)
        .map(|i| h.push("message", message(&format!("m{i}"))))
        .collect();
    assert!(
        ids.windows(2).all(|w| w[1] == w[0] + 1),
        "assigned ids increase: {ids:?}"
    );

    assert_eq!(h.get("getUpdates", "").await.update_ids(), ids);
    // Without an offset nothing is confirmed: the same updates come again.
    assert_eq!(h.get("getUpdates", "").await.update_ids(), ids);

    let offset = ids[2];
    assert_eq!(
        h.get("getUpdates", &format!("offset={offset}"))
            .await
            .update_ids(),
        ids[2..]
    );
    assert_eq!(h.api.pending_update_count(TOKEN).unwrap(), 2);
    // Forgotten for good: offset 0 starts from the new head.
    assert_eq!(h.get("getUpdates", "offset=0").await.update_ids(), ids[2..]);

    let past_all = ids[3] + 1;
    assert!(
        h.get("getUpdates", &format!("offset={past_all}"))
            .await
            .update_ids()
            .is_empty()
    );
    assert_eq!(h.api.pending_update_count(TOKEN).unwrap(), 0);
    assert_eq!(h.api.confirmed_offset(TOKEN), Some(past_all));
}

#[tokio::test]
async fn a_negative_offset_keeps_only_the_last_updates() {
    let h = start().await;
    let ids: Vec<i64> = (0..5)
        .map(|i| h.push("message", message(&format!("m{i}"))))
        .collect();
    assert_eq!(
        h.get("getUpdates", "offset=-2").await.update_ids(),
        ids[3..]
    );
    assert_eq!(h.get("getUpdates", "").await.update_ids(), ids[3..]);
}

#[tokio::test]
async fn limit_caps_the_batch_and_is_clamped_to_one_through_a_hundred() {
    let h = start().await;
    let ids: Vec<i64> = (0..150)
        .map(|i| h.push("message", message(&format!("m{i}"))))
        .collect();
    assert_eq!(h.get("getUpdates", "limit=3").await.update_ids(), ids[..3]);
    assert_eq!(
        h.get("getUpdates", "").await.update_ids().len(),
        100,
        "default"
    );
    assert_eq!(
        h.get("getUpdates", "limit=1000").await.update_ids().len(),
        100
    );
    assert_eq!(h.get("getUpdates", "limit=0").await.update_ids(), ids[..1]);
}

#[tokio::test]
async fn a_long_poll_returns_as_soon_as_an_update_is_pushed() {
    let h = start().await;
    let url = format!("{}?timeout=20", h.url("getUpdates"));
    let started = Instant::now();
    let poll = tokio::spawn(h.http.get(url).send());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let id = h.push("message", message("wake up"));
    let answer = common::answer(poll.await.unwrap().unwrap()).await;
    let waited = started.elapsed();
    assert_eq!(answer.update_ids(), vec![id]);
    assert!(
        waited >= Duration::from_millis(300),
        "it waited for the push: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(5),
        "it returned early: {waited:?}"
    );
}

#[tokio::test]
async fn a_long_poll_returns_empty_after_its_timeout() {
    let h = start().await;
    let started = Instant::now();
    let answer = h.get("getUpdates", "timeout=1").await;
    let waited = started.elapsed();
    assert!(answer.update_ids().is_empty());
    assert!(
        waited >= Duration::from_millis(950),
        "it waited the timeout: {waited:?}"
    );
    assert!(waited < Duration::from_secs(5), "{waited:?}");
}

#[tokio::test]
async fn a_second_poller_terminates_the_first_with_409() {
    let h = start().await;
    let first = tokio::spawn(
        h.http
            .get(format!("{}?timeout=20", h.url("getUpdates")))
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = tokio::spawn(
        h.http
            .get(format!("{}?timeout=1", h.url("getUpdates")))
            .send(),
    );

    let first = common::answer(first.await.unwrap().unwrap()).await;
    assert_eq!(first.status, 409);
    assert_eq!(first.json()["error_code"], 409);
    assert!(
        first
            .description()
            .starts_with("Conflict: terminated by other getUpdates request"),
        "{}",
        first.description()
    );
    let second = common::answer(second.await.unwrap().unwrap()).await;
    assert_eq!(second.status, 200);
    assert!(second.update_ids().is_empty());
}

#[tokio::test]
async fn allowed_updates_filters_new_updates_and_is_remembered() {
    let h = start().await;
    // Queued before the setting changes: still delivered, as Telegram documents.
    let early = h.push("edited_message", message("early edit"));
    let answer = h
        .call(
            "getUpdates",
            json!({"allowed_updates": ["message", "message_reaction"]}),
        )
        .await;
    assert_eq!(answer.update_ids(), vec![early]);

    let kept_message = h.push("message", message("kept"));
    h.push("edited_message", message("dropped"));
    h.push("callback_query", json!({"id": "1", "from": {"id": 1, "is_bot": false, "first_name": "A"}, "chat_instance": "1"}));
    let kept_reaction = h.push("message_reaction", json!({"chat": {"id": 1, "type": "group", "title": "g"}, "message_id": 1, "date": 1, "old_reaction": [], "new_reaction": []}));

    // No allowed_updates this time: the previous list still applies.
    let answer = h.get("getUpdates", &format!("offset={}", early + 1)).await;
    assert_eq!(answer.update_ids(), vec![kept_message, kept_reaction]);
    assert_eq!(h.api.filtered_update_count(TOKEN).unwrap(), 2);
    assert_eq!(
        h.api.allowed_updates(TOKEN).unwrap(),
        AllowedUpdates::from_names(&["message", "message_reaction"])
    );
}

#[tokio::test]
async fn the_default_and_the_empty_list_exclude_member_and_reaction_kinds() {
    let h = start().await;
    let answer = h.call("getUpdates", json!({"allowed_updates": []})).await;
    assert!(answer.update_ids().is_empty());
    let message_id = h.push("message", message("m"));
    h.push("chat_member", json!({}));
    h.push("message_reaction", json!({}));
    h.push("message_reaction_count", json!({}));
    let future = h.push("some_future_kind", json!({"x": 1}));
    assert_eq!(
        h.get("getUpdates", "").await.update_ids(),
        vec![message_id, future]
    );
}

#[tokio::test]
async fn raw_update_bytes_with_nul_and_lone_surrogates_are_served_byte_identical() {
    let h = start().await;
    h.api.set_next_update_id(TOKEN, 1).unwrap();
    let first: &[u8] = br#"{"update_id":500,"message":{"message_id":1,"date":1,"chat":{"id":1,"type":"private"},"text":"nul \u0000 here"}}"#;
    let second: &[u8] = b"{\"update_id\":501,\"message\":{\"message_id\":2,\"date\":2,\"chat\":{\"id\":1,\"type\":\"private\"},\"text\":\"lone \\ud83d surrogate and \\udc00 \xf0\x9f\xa6\x80\"}}";
    assert!(h.api.push_update(TOKEN, first).unwrap());
    assert!(h.api.push_update(TOKEN, second).unwrap());
    let assigned = h
        .api
        .push_kind(TOKEN, "message", br#"{"text":"\u0000\udfff"}"#)
        .unwrap();
    assert_eq!(assigned, 502, "assigned ids continue after pushed ones");

    let answer = h.get("getUpdates", "").await;
    let mut expected = br#"{"ok":true,"result":["#.to_vec();
    expected.extend_from_slice(first);
    expected.push(b',');
    expected.extend_from_slice(second);
    expected.extend_from_slice(br#",{"update_id":502,"message":{"text":"\u0000\udfff"}}]}"#);
    assert_eq!(
        String::from_utf8_lossy(&answer.body),
        String::from_utf8_lossy(&expected)
    );
    assert_eq!(answer.body, expected);
}

#[tokio::test]
async fn an_update_id_jump_restarts_ids_lower_and_an_old_offset_still_receives_them() {
    let h = start().await;
    let before: Vec<i64> = (0..3)
        .map(|i| h.push("message", message(&format!("m{i}"))))
        .collect();
    let old_offset = before[2] + 1;
    assert!(
        h.get("getUpdates", &format!("offset={old_offset}"))
            .await
            .update_ids()
            .is_empty()
    );

    h.api
        .inject(
            TOKEN,
            Fault::UpdateIdJump {
                restart_at: Some(5_000),
            },
        )
        .unwrap();
    let after: Vec<i64> = (0..2)
        .map(|i| h.push("message", message(&format!("n{i}"))))
        .collect();
    assert_eq!(after, vec![5_000, 5_001]);

    // A client that kept its pre-jump offset is not locked out (Telegram ignores such offsets).
    assert_eq!(
        h.get("getUpdates", &format!("offset={old_offset}"))
            .await
            .update_ids(),
        after
    );
    assert!(
        h.get("getUpdates", "offset=5002")
            .await
            .update_ids()
            .is_empty()
    );
}

#[tokio::test]
async fn a_random_update_id_jump_is_lower_and_deterministic_for_a_seed() {
    let mut jumped = Vec::new();
    for _ in 0..2 {
        let config = BotApiConfig {
            seed: 99,
            ..BotApiConfig::default()
        };
        let api = BotApi::start(config).await.unwrap();
        api.add_bot(TOKEN, BotInfo::new(BOT_ID, "b", "B"));
        let before = api.push_json(TOKEN, json!({"message": {}})).unwrap();
        api.inject(TOKEN, Fault::UpdateIdJump { restart_at: None })
            .unwrap();
        let after = api.push_json(TOKEN, json!({"message": {}})).unwrap();
        assert!(after < before, "{after} < {before}");
        jumped.push((before, after));
    }
    assert_eq!(jumped[0], jumped[1]);
}

#[tokio::test]
async fn every_request_is_recorded_without_the_token() {
    let h = start().await;
    let id = h.push("message", message("m"));
    h.get("getUpdates", &format!("offset={id}&limit=5")).await;
    h.call("GetMe", json!({})).await;
    let response = h
        .http
        .get(h.url_for("1:nope", "getMe"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    let records = h.api.requests();
    assert_eq!(records.len(), 3);
    assert_eq!(records[0].method, "getupdates");
    assert_eq!(records[0].offset, Some(id));
    assert_eq!(records[0].params.get("limit"), Some("5"));
    assert_eq!(records[0].status, 200);
    assert_eq!(records[0].bot.map(|b| (b.index, b.id)), Some((0, BOT_ID)));
    assert_eq!(records[1].method, "getme");
    assert_eq!(records[1].http_method, "POST");
    assert_eq!(records[2].bot, None);
    assert_eq!(records[2].status, 401);

    let printed = format!("{:?} {:?}", records, h.api);
    assert!(
        !printed.contains("AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"),
        "{printed}"
    );
    assert!(!printed.contains("1:nope"), "{printed}");
}

#[tokio::test]
async fn a_long_poll_answers_restart_when_the_server_shuts_down() {
    let h = start().await;
    let poll = tokio::spawn(
        h.http
            .get(format!("{}?timeout=20", h.url("getUpdates")))
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    h.api.shutdown().await;
    let answer = common::answer(poll.await.unwrap().unwrap()).await;
    assert_eq!(answer.status, 500);
    assert_eq!(answer.description(), "Internal Server Error: restart");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn pushing_to_an_unknown_token_is_an_error_that_does_not_name_the_token() {
    let api = BotApi::start(BotApiConfig::default()).await.unwrap();
    let error = api
        .push_json("77:secret-token", json!({"message": {}}))
        .unwrap_err();
    assert!(!format!("{error:#}").contains("secret-token"));
    api.add_bot(TOKEN, BotInfo::new(BOT_ID, "b", "B"));
    let error = api.push_json(TOKEN, Value::Null).unwrap_err();
    assert!(format!("{error:#}").contains("JSON object"), "{error:#}");
    assert_eq!(api.pending_update_count(TOKEN).unwrap(), 0);
}

#[tokio::test]
async fn a_long_poll_abandoned_by_its_client_is_recorded_as_499() {
    let h = start().await;
    let gave_up = h
        .http
        .get(format!("{}?timeout=20", h.url("getUpdates")))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(gave_up.is_err(), "the client timed out");
    wait_until(
        Duration::from_secs(15),
        "the abandoned request to be recorded",
        async || {
            h.api
                .requests()
                .iter()
                .any(|r| r.status == 499 && r.method == "getupdates")
        },
    )
    .await;
}

#[tokio::test]
async fn a_minimal_get_me_leaves_out_every_optional_field() {
    let h = start().await;
    h.api.set_minimal_get_me(true);
    let me = h.get("getMe", "").await.json();
    assert_eq!(
        me["result"],
        json!({"id": BOT_ID, "is_bot": true, "first_name": "Ingest Test", "username": "ingest_test_bot"})
    );
    h.api.set_minimal_get_me(false);
    assert_eq!(
        h.get("getMe", "").await.json()["result"]["has_main_web_app"],
        false
    );
}

#[tokio::test]
async fn a_revoked_token_is_unauthorized_until_restored_and_keeps_its_queue() {
    let h = start().await;
    h.push("message", message("kept"));
    h.api.set_token_revoked(TOKEN, true).unwrap();
    for method in ["getMe", "getUpdates"] {
        let answer = h.get(method, "").await;
        assert_eq!(answer.status, 401, "{method}");
        assert_eq!(answer.description(), "Unauthorized");
    }
    h.api.set_token_revoked(TOKEN, false).unwrap();
    assert_eq!(h.get("getMe", "").await.status, 200);
    assert_eq!(h.get("getUpdates", "").await.update_ids().len(), 1);
}
