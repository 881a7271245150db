//! Long polling against the simulated Bot API and a real Kafka-protocol broker: what Telegram
//! serves arrives in Kafka byte-identical with its key and headers, and the getUpdates offset only
//! moves past updates Kafka acknowledged.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use processor::wire::{self, CONTENT_TYPE_JSON, Subject, header};
use testkit::eventually;
use testkit::updates::fixtures;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_kind_arrives_byte_identical_with_its_key_and_headers_broker() {
    let api = start_botsim(1).await;
    let (broker, topic) = start_broker().await;
    let mut fixtures = fixtures();
    // Telegram assigns increasing ids: serve the fixtures in id order.
    fixtures.sort_by_key(|(_, raw)| {
        let value: serde_json::Value = serde_json::from_slice(&sanitised(raw)).unwrap();
        value["update_id"].as_i64().unwrap()
    });
    // Telegram filters kinds when an update is created: its default setting leaves out
    // chat_member and reactions, an explicit list leaves out kinds it does not name (the unknown
    // future kind). Each refused fixture is pushed again under the other setting.
    let all_kinds = botsim::AllowedUpdates::from_names(producer::ALL_UPDATE_KINDS);
    let mut refused = Vec::new();
    for (name, raw) in &fixtures {
        if !api.push_update(TOKENS[0], raw.clone()).unwrap() {
            refused.push(name.clone());
            let other = if api.allowed_updates(TOKENS[0]).unwrap() == all_kinds {
                botsim::AllowedUpdates::default()
            } else {
                all_kinds.clone()
            };
            api.set_allowed_updates(TOKENS[0], other).unwrap();
            assert!(
                api.push_update(TOKENS[0], raw.clone()).unwrap(),
                "{name} refused twice"
            );
        }
    }
    assert!(
        refused.iter().any(|n| n == "message_reaction"),
        "{refused:?}"
    );
    let producer = RunningProducer::spawn(polling_config(&api, &broker, &topic, 1));

    let records = read_topic(&broker, &topic, fixtures.len(), Duration::from_secs(30)).await;
    assert_eq!(records.len(), fixtures.len(), "records in Kafka");
    let bot = BOT_IDS[0].to_string();
    for (name, raw) in &fixtures {
        // Whitespace around a JSON value is not part of it (the fixture files end with a
        // newline); everything inside, indentation included, must be kept.
        let record = records
            .iter()
            .find(|r| r.value == raw.trim_ascii())
            .unwrap_or_else(|| {
                let types: Vec<_> = records.iter().map(|r| (r.header(header::UPDATE_TYPE).unwrap_or("?").to_owned(), r.header(header::ERROR).map(str::to_owned))).collect();
                panic!("fixture {name} is not in Kafka byte-identical; refused first: {refused:?}; in Kafka: {types:?}")
            });
        let value: serde_json::Value = serde_json::from_slice(&sanitised(raw)).unwrap();
        let update_id = value["update_id"].as_i64().unwrap();
        let (kind, body) = value
            .as_object()
            .unwrap()
            .iter()
            .find(|(k, _)| *k != "update_id")
            .unwrap();
        let chat = body["chat"]["id"]
            .as_i64()
            .or_else(|| body["message"]["chat"]["id"].as_i64())
            .or_else(|| body["voter_chat"]["id"].as_i64());
        let user = body["from"]["id"]
            .as_i64()
            .or_else(|| body["user"]["id"].as_i64());
        let subject = match (chat, user) {
            (Some(chat), _) => Subject::Chat(chat.to_string()),
            (None, Some(user)) => Subject::User(user.to_string()),
            (None, None) => Subject::Bot,
        };
        let expected_key = wire::record_key(bot.parse().unwrap(), &subject);
        assert_eq!(record.key, expected_key, "key of {name}");
        assert_eq!(record.header(header::BOT_ID), Some(bot.as_str()), "{name}");
        assert_eq!(
            record.header(header::UPDATE_ID),
            Some(update_id.to_string().as_str()),
            "{name}"
        );
        assert_eq!(
            record.header(header::UPDATE_TYPE),
            Some(kind.as_str()),
            "{name}"
        );
        assert_eq!(
            record.header(header::CONTENT_TYPE),
            Some(CONTENT_TYPE_JSON),
            "{name}"
        );
        assert_eq!(record.header(header::ERROR), None, "{name}");
        let received: i64 = record.header(header::RECEIVED_AT).unwrap().parse().unwrap();
        assert!(
            received > 1_700_000_000_000,
            "{name}: received-at {received} is not ms"
        );
    }

    // Every update of one chat went to one partition.
    let mut partition_of = std::collections::HashMap::new();
    for record in &records {
        let seen = *partition_of
            .entry(record.key.clone())
            .or_insert(record.partition);
        assert_eq!(
            seen, record.partition,
            "key {} split across partitions",
            record.key
        );
    }

    let max_id = records
        .iter()
        .map(|r| r.header(header::UPDATE_ID).unwrap().parse::<i64>().unwrap())
        .max()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), async || api
            .confirmed_offset(TOKENS[0])
            == Some(max_id + 1))
        .await,
        "confirmed offset {:?}, expected {}",
        api.confirmed_offset(TOKENS[0]),
        max_id + 1
    );
    producer.stop().await.unwrap();
    assert_eq!(api.pending_update_count(TOKENS[0]).unwrap(), 0);
}

/// The fixtures' lone surrogates are not JSON serde_json accepts as a `Value`; the test replaces
/// every surrogate escape only to read the expected key and kind.
fn sanitised(raw: &[u8]) -> Vec<u8> {
    let mut out = raw.to_vec();
    let mut i = 0;
    while i + 6 <= out.len() {
        if out[i] == b'\\' && out[i + 1] == b'\\' {
            i += 2;
            continue;
        }
        if out[i] == b'\\' && out[i + 1] == b'u' {
            let hex = std::str::from_utf8(&out[i + 2..i + 6]).unwrap_or("0000");
            if let Ok(unit) = u16::from_str_radix(hex, 16)
                && (0xD800..=0xDFFF).contains(&unit)
            {
                out[i + 2..i + 6].copy_from_slice(b"fffd");
            }
            i += 6;
            continue;
        }
        i += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn getupdates_asks_explicitly_for_every_kind_including_the_opt_in_ones_broker() {
    let api = start_botsim(1).await;
    let (broker, topic) = start_broker().await;
    let producer = RunningProducer::spawn(polling_config(&api, &broker, &topic, 1));
    assert!(
        eventually(Duration::from_secs(15), async || !get_updates_requests(
            &api
        )
        .is_empty())
        .await
    );
    producer.stop().await.unwrap();
    let request = &get_updates_requests(&api)[0];
    let allowed: Vec<String> =
        serde_json::from_str(request.params.get("allowed_updates").unwrap()).unwrap();
    for kind in [
        "message",
        "chat_member",
        "message_reaction",
        "message_reaction_count",
        "managed_bot",
        "guest_message",
    ] {
        assert!(
            allowed.iter().any(|a| a == kind),
            "{kind} not in {allowed:?}"
        );
    }
    assert_eq!(request.params.get("timeout"), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_surrogate_and_a_nul_arrive_byte_identical_and_their_batch_mates_are_unaffected_broker()
 {
    let api = start_botsim(1).await;
    let (broker, topic) = start_broker().await;
    let mut pushed = Vec::new();
    for i in 0..3 {
        let id = api
            .push_kind(
                TOKENS[0],
                "message",
                format!(r#"{{"message_id":{i},"chat":{{"id":5}},"text":"before {i}"}}"#).as_bytes(),
            )
            .unwrap();
        pushed.push(id);
    }
    pushed.push(
        api.push_kind(
            TOKENS[0],
            "message",
            br#"{"message_id":10,"chat":{"id":5},"text":"lone \ud800 surrogate and \udfff another"}"#,
        )
        .unwrap(),
    );
    pushed.push(
        api.push_kind(
            TOKENS[0],
            "message",
            br#"{"message_id":11,"chat":{"id":6},"text":"nul \u0000 inside"}"#,
        )
        .unwrap(),
    );
    for i in 0..3 {
        pushed.push(
            api.push_kind(
                TOKENS[0],
                "edited_message",
                format!(r#"{{"message_id":{i},"chat":{{"id":5}},"text":"after {i}"}}"#).as_bytes(),
            )
            .unwrap(),
        );
    }
    let producer = RunningProducer::spawn(polling_config(&api, &broker, &topic, 1));
    let records = read_topic(&broker, &topic, pushed.len(), Duration::from_secs(30)).await;
    producer.stop().await.unwrap();

    assert_eq!(records.len(), pushed.len());
    let lone = records
        .iter()
        .find(|r| r.header(header::UPDATE_ID) == Some(pushed[3].to_string().as_str()))
        .unwrap();
    let expected = format!(
        r#"{{"update_id":{},"message":{{"message_id":10,"chat":{{"id":5}},"text":"lone \ud800 surrogate and \udfff another"}}}}"#,
        pushed[3]
    );
    assert_eq!(lone.value, expected.as_bytes());
    assert_eq!(lone.key, format!("{}:5", BOT_IDS[0]));
    let nul = records
        .iter()
        .find(|r| r.header(header::UPDATE_ID) == Some(pushed[4].to_string().as_str()))
        .unwrap();
    assert!(
        nul.value.windows(6).any(|w| w == br"\u0000"),
        "the \\u0000 escape was not kept: {}",
        String::from_utf8_lossy(&nul.value)
    );
    assert_eq!(nul.key, format!("{}:6", BOT_IDS[0]));
    for record in &records {
        assert_eq!(
            record.header(header::ERROR),
            None,
            "no record of the batch is an envelope"
        );
    }
    // Kafka keeps one chat's updates in order (same key, one partition).
    let chat5: Vec<i64> = records
        .iter()
        .filter(|r| r.key.ends_with(":5"))
        .map(|r| r.header(header::UPDATE_ID).unwrap().parse().unwrap())
        .collect();
    let mut sorted = chat5.clone();
    sorted.sort_unstable();
    assert_eq!(chat5, sorted, "updates of one chat out of order");
    assert_eq!(
        api.confirmed_offset(TOKENS[0]),
        Some(pushed[pushed.len() - 1] + 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_update_becomes_a_tg_error_envelope_and_is_confirmed_broker() {
    let api = start_botsim(1).await;
    let (broker, topic) = start_broker().await;
    let small = push_message(&api, 1, 9, "small");
    let text = "y".repeat(40_000);
    let big = push_message(&api, 2, 9, &text);
    let mut config = polling_config(&api, &broker, &topic, 1);
    config.message_max_bytes = 16_384;
    let producer = RunningProducer::spawn(config);
    let records = read_topic(&broker, &topic, 2, Duration::from_secs(30)).await;
    assert!(
        eventually(Duration::from_secs(10), async || api
            .confirmed_offset(TOKENS[0])
            == Some(big + 1))
        .await,
        "the oversized update blocked the confirm: {:?}",
        api.confirmed_offset(TOKENS[0])
    );
    producer.stop().await.unwrap();

    assert_eq!(records.len(), 2);
    let envelope = record_of(&records, big);
    let error = envelope.header(header::ERROR).unwrap();
    assert!(error.starts_with("too_large"), "{error}");
    assert!(envelope.value.len() < 2_000, "the envelope is small");
    assert_eq!(envelope.key, format!("{}:9", BOT_IDS[0]));
    let original_size: usize = envelope
        .header(header::ORIGINAL_SIZE)
        .unwrap()
        .parse()
        .unwrap();
    assert!(original_size > 40_000);
    let value: serde_json::Value = serde_json::from_slice(&envelope.value).unwrap();
    assert_eq!(value["tg_error"]["reason"], "too_large");
    assert_eq!(value["tg_error"]["original_size"], original_size);
    let normal = records
        .iter()
        .find(|r| r.header(header::UPDATE_ID) == Some(small.to_string().as_str()))
        .unwrap();
    assert_eq!(normal.header(header::ERROR), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elements_that_are_not_updates_become_envelopes_and_never_block_the_confirm_broker() {
    let api = start_botsim(1).await;
    let (broker, topic) = start_broker().await;
    let first = api
        .push_kind(
            TOKENS[0],
            "message",
            br#"{"message_id":1,"chat":{"id":9},"text":"ok"}"#,
        )
        .unwrap();
    // A JSON object without update_id, and one whose update_id is a string.
    api.push_update(
        TOKENS[0],
        br#"{"message":{"message_id":2,"chat":{"id":9}}}"#.to_vec(),
    )
    .unwrap();
    api.push_update(
        TOKENS[0],
        format!(r#"{{"update_id":"{}","poll":{{}}}}"#, first + 2).into_bytes(),
    )
    .unwrap();
    let last = api
        .push_kind(
            TOKENS[0],
            "message",
            br#"{"message_id":3,"chat":{"id":9},"text":"ok"}"#,
        )
        .unwrap();
    let producer = RunningProducer::spawn(polling_config(&api, &broker, &topic, 1));
    let records = read_topic(&broker, &topic, 4, Duration::from_secs(30)).await;
    assert!(
        eventually(Duration::from_secs(10), async || api
            .confirmed_offset(TOKENS[0])
            == Some(last + 1))
        .await,
        "confirmed {:?}, expected {}",
        api.confirmed_offset(TOKENS[0]),
        last + 1
    );
    producer.stop().await.unwrap();
    assert_eq!(records.len(), 4);
    let envelopes: Vec<_> = records
        .iter()
        .filter(|r| r.header(header::ERROR).is_some())
        .collect();
    assert_eq!(envelopes.len(), 2, "{records:#?}");
    for envelope in envelopes {
        assert!(
            envelope
                .header(header::ERROR)
                .unwrap()
                .starts_with("not_an_update")
        );
        let value: serde_json::Value = serde_json::from_slice(&envelope.value).unwrap();
        let original = value["original"].as_str().unwrap();
        assert!(original.contains("\"message_id\":2") || original.contains("\"poll\""));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_broker_is_down_the_offset_never_advances_and_everything_lands_when_it_returns_broker()
 {
    let api = start_botsim(1).await;
    let (broker, topic) =
        start_controlled_broker("an external broker cannot be taken down by a test").await;
    let readiness = std::sync::Arc::new(RecordingReadiness::default());
    let producer =
        RunningProducer::spawn_with(polling_config(&api, &broker, &topic, 1), readiness.clone());
    // A first update lands while the broker is up, so the producer is past startup.
    let first = api
        .push_kind(
            TOKENS[0],
            "message",
            br#"{"message_id":1,"chat":{"id":1},"text":"up"}"#,
        )
        .unwrap();
    assert_eq!(
        read_topic(&broker, &topic, 1, Duration::from_secs(30))
            .await
            .len(),
        1
    );
    assert!(
        eventually(Duration::from_secs(10), async || api
            .confirmed_offset(TOKENS[0])
            == Some(first + 1))
        .await
    );

    broker.set_available(false).await.unwrap();
    let mut during = Vec::new();
    for i in 0..5 {
        during.push(
            api.push_kind(
                TOKENS[0],
                "message",
                format!(
                    r#"{{"message_id":{},"chat":{{"id":{i}}},"text":"down"}}"#,
                    i + 2
                )
                .as_bytes(),
            )
            .unwrap(),
        );
    }
    // At least 8 s, longer than the delivery timeout (3 s), so several publish attempts fail
    // meanwhile; and until readiness has reported the outage (a loaded machine can delay the
    // first failed delivery report), at most 30 s.
    let started = std::time::Instant::now();
    loop {
        assert_eq!(
            api.confirmed_offset(TOKENS[0]),
            Some(first + 1),
            "the offset advanced while Kafka was down"
        );
        let reported = readiness.history(producer::KAFKA_CHECK).last() == Some(&false);
        let elapsed = started.elapsed();
        if (elapsed >= Duration::from_secs(8) && reported) || elapsed >= Duration::from_secs(30) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let kafka = readiness.history(producer::KAFKA_CHECK);
    assert_eq!(
        kafka.last(),
        Some(&false),
        "Kafka reported ready during the outage: {kafka:?}"
    );
    let polls_during_outage = get_updates_requests(&api)
        .iter()
        .filter(|r| r.offset == Some(first + 1))
        .count();
    assert!(polls_during_outage >= 1);

    broker.set_available(true).await.unwrap();
    let last = *during.last().unwrap();
    assert!(
        eventually(Duration::from_secs(40), async || api
            .confirmed_offset(TOKENS[0])
            == Some(last + 1))
        .await,
        "never confirmed after the broker returned: {:?}",
        api.confirmed_offset(TOKENS[0])
    );
    let records = read_topic(&broker, &topic, usize::MAX, Duration::from_secs(5)).await;
    for id in std::iter::once(first).chain(during) {
        assert!(
            records
                .iter()
                .any(|r| r.header(header::UPDATE_ID) == Some(id.to_string().as_str())),
            "update {id} missing from Kafka"
        );
    }
    assert_eq!(readiness.history(producer::KAFKA_CHECK).last(), Some(&true));
    assert_eq!(
        readiness.history(&producer::readiness::Unit::bot(1)).last(),
        Some(&true)
    );
    producer.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_confirms_the_last_published_batch_before_returning_broker() {
    let api = start_botsim(1).await;
    let (broker, topic) = start_broker().await;
    let mut config = polling_config(&api, &broker, &topic, 1);
    if let producer::IntakeMode::Polling(polling) = &mut config.mode {
        // Long polls, so a known request is waiting when the fault is injected below.
        polling.timeout = Duration::from_secs(20);
        polling.request_timeout = Some(Duration::from_secs(40));
    }
    let producer = RunningProducer::spawn(config);
    let warmup = api
        .push_kind(
            TOKENS[0],
            "message",
            br#"{"message_id":1,"chat":{"id":1},"text":"warm-up"}"#,
        )
        .unwrap();
    // Botsim records a confirm when the getUpdates carrying it arrives; that request then waits
    // in its 20 s long poll. So the next request is the one after the batch below.
    assert!(
        eventually(Duration::from_secs(15), async || api
            .confirmed_offset(TOKENS[0])
            == Some(warmup + 1))
        .await
    );
    // The getUpdates after the batch (the one that would confirm it) hangs: only the final
    // confirm at shutdown can tell Telegram.
    api.inject_on(
        TOKENS[0],
        "getUpdates",
        botsim::Fault::Stall(Duration::from_secs(30)),
    )
    .unwrap();
    let id = api
        .push_kind(
            TOKENS[0],
            "message",
            br#"{"message_id":2,"chat":{"id":1},"text":"x"}"#,
        )
        .unwrap();
    assert_eq!(
        read_topic(&broker, &topic, 2, Duration::from_secs(30))
            .await
            .len(),
        2
    );
    assert!(
        eventually(Duration::from_secs(10), async || api
            .pending_faults(TOKENS[0])
            .unwrap()
            == 0)
        .await
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        api.confirmed_offset(TOKENS[0]),
        Some(warmup + 1),
        "confirmed before shutdown"
    );

    producer.stop().await.unwrap();
    assert_eq!(api.confirmed_offset(TOKENS[0]), Some(id + 1));
    let final_call = get_updates_requests(&api)
        .into_iter()
        .rfind(|r| r.status == 200)
        .unwrap();
    assert_eq!(final_call.params.get("timeout"), Some("0"));
    assert_eq!(final_call.offset, Some(id + 1));
    assert_eq!(api.pending_update_count(TOKENS[0]).unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_bots_are_served_each_with_its_own_offset_and_key_broker() {
    let api = start_botsim(2).await;
    let (broker, topic) = start_broker().await;
    let a = api
        .push_kind(
            TOKENS[0],
            "message",
            br#"{"message_id":1,"chat":{"id":77},"text":"a"}"#,
        )
        .unwrap();
    let b = api
        .push_kind(
            TOKENS[1],
            "message",
            br#"{"message_id":1,"chat":{"id":77},"text":"b"}"#,
        )
        .unwrap();
    let producer = RunningProducer::spawn(polling_config(&api, &broker, &topic, 2));
    let records = read_topic(&broker, &topic, 2, Duration::from_secs(30)).await;
    assert!(
        eventually(Duration::from_secs(10), async || {
            api.confirmed_offset(TOKENS[0]) == Some(a + 1)
                && api.confirmed_offset(TOKENS[1]) == Some(b + 1)
        })
        .await
    );
    producer.stop().await.unwrap();
    let mut keys: Vec<&str> = records.iter().map(|r| r.key.as_str()).collect();
    keys.sort_unstable();
    let mut expected = vec![format!("{}:77", BOT_IDS[0]), format!("{}:77", BOT_IDS[1])];
    expected.sort();
    assert_eq!(keys, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_after_an_update_id_jump_to_lower_ids_still_land_and_are_confirmed_broker() {
    let api = start_botsim(1).await;
    let (broker, topic) = start_broker().await;
    let producer = RunningProducer::spawn(polling_config(&api, &broker, &topic, 1));
    let before = api
        .push_kind(
            TOKENS[0],
            "message",
            br#"{"message_id":1,"chat":{"id":1},"text":"old"}"#,
        )
        .unwrap();
    assert!(
        eventually(Duration::from_secs(20), async || api
            .confirmed_offset(TOKENS[0])
            == Some(before + 1))
        .await
    );
    // After a week without updates Telegram picks new, lower ids.
    let restart_at = before - 1_000_000;
    api.inject(
        TOKENS[0],
        botsim::Fault::UpdateIdJump {
            restart_at: Some(restart_at),
        },
    )
    .unwrap();
    let after = api
        .push_kind(
            TOKENS[0],
            "message",
            br#"{"message_id":2,"chat":{"id":1},"text":"new"}"#,
        )
        .unwrap();
    assert_eq!(after, restart_at);
    let records = read_topic(&broker, &topic, 2, Duration::from_secs(30)).await;
    assert!(
        eventually(Duration::from_secs(20), async || api
            .pending_update_count(TOKENS[0])
            .unwrap()
            == 0)
        .await,
        "the update after the jump was never confirmed"
    );
    producer.stop().await.unwrap();
    assert!(
        records
            .iter()
            .any(|r| r.header(header::UPDATE_ID) == Some(after.to_string().as_str()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_without_any_update_id_is_kept_once_as_envelopes_while_polling_backs_off_broker() {
    let api = start_botsim(1).await;
    let (broker, topic) = start_broker().await;
    let elements: [&[u8]; 2] = [
        br#"{"message":{"message_id":1,"chat":{"id":9},"text":"kept"}}"#,
        br#"{"update_id":"7","poll":{"id":"p"}}"#,
    ];
    for element in elements {
        api.push_update(TOKENS[0], element.to_vec()).unwrap();
    }
    let producer = RunningProducer::spawn(polling_config(&api, &broker, &topic, 1));
    let records = read_topic(&broker, &topic, 2, Duration::from_secs(20)).await;
    // The same batch is fetched again and again (nothing can confirm it), with backoff.
    let refetched = eventually(Duration::from_secs(20), async || {
        get_updates_requests(&api).len() >= 4
    })
    .await;
    let written = count_records(&broker, &topic).await;
    producer.stop().await.unwrap();

    assert_eq!(records.len(), 2, "the elements were not kept: {records:#?}");
    assert!(refetched, "polling stopped");
    assert_eq!(
        written, 2,
        "each fetch of the same batch was published again"
    );
    assert_eq!(api.confirmed_offset(TOKENS[0]), None);
    for record in &records {
        assert!(
            record
                .header(header::ERROR)
                .unwrap()
                .starts_with("not_an_update"),
            "{record:?}"
        );
        let value: serde_json::Value = serde_json::from_slice(&record.value).unwrap();
        let original = value["original"].as_str().unwrap().as_bytes();
        assert!(elements.contains(&original), "{value}");
    }
}
