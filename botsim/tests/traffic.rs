//! The traffic generator: determinism, validity and coverage of what it emits.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};

use botsim::AllowedUpdates;
use botsim::traffic::{Malformed, TrafficConfig, TrafficGenerator, UNKNOWN_KIND};
use common::{TOKEN, start};
use serde_json::Value;
use teloxide_core::types::{Update, UpdateKind};

const SAMPLE: usize = 4_000;

fn sample(seed: u64) -> Vec<Vec<u8>> {
    TrafficGenerator::new(seed, TrafficConfig::default()).batch(SAMPLE)
}

fn kind_of(update: &Value) -> String {
    update
        .as_object()
        .unwrap()
        .keys()
        .find(|k| *k != "update_id")
        .cloned()
        .unwrap()
}

#[test]
fn the_same_seed_gives_the_same_bytes_and_another_seed_does_not() {
    assert_eq!(sample(42), sample(42));
    assert_ne!(sample(42), sample(43));
}

#[test]
fn every_update_is_a_json_object_with_consecutive_ids_and_non_decreasing_dates() {
    let config = TrafficConfig::default();
    let updates = TrafficGenerator::new(1, config.clone()).batch(SAMPLE);
    let mut last_date = config.start_date;
    for (i, raw) in updates.iter().enumerate() {
        let update: Value = serde_json::from_slice(raw).unwrap_or_else(|e| {
            panic!(
                "update {i} is not JSON ({e}): {}",
                String::from_utf8_lossy(raw)
            )
        });
        let expected_id = config.first_update_id + i64::try_from(i).unwrap();
        assert_eq!(update["update_id"].as_i64(), Some(expected_id));
        assert!(raw.starts_with(format!("{{\"update_id\":{expected_id},").as_bytes()));
        let body = &update[kind_of(&update)];
        let date = body["date"].as_i64();
        if let Some(date) = date {
            // Edits keep their original date; edit_date is the event time.
            let event_date = body["edit_date"].as_i64().unwrap_or(date);
            assert!(event_date >= last_date, "update {i} goes back in time");
            last_date = event_date;
        }
    }
}

#[test]
fn every_known_kind_parses_as_a_teloxide_update() {
    for (i, raw) in sample(5).iter().enumerate() {
        let update: Update = serde_json::from_slice(raw).unwrap();
        let json: Value = serde_json::from_slice(raw).unwrap();
        let kind = kind_of(&json);
        if kind == UNKNOWN_KIND {
            assert!(matches!(update.kind, UpdateKind::Error(_)));
        } else {
            assert!(
                !matches!(update.kind, UpdateKind::Error(_)),
                "update {i} ({kind}) is not a valid Bot API update for teloxide: {}",
                String::from_utf8_lossy(raw)
            );
        }
    }
}

#[derive(Default)]
struct Seen {
    kinds: BTreeSet<String>,
    features: BTreeSet<&'static str>,
    chat_types: BTreeSet<String>,
}

fn note_message(seen: &mut Seen, message: &Value) {
    let chat = &message["chat"];
    seen.chat_types
        .insert(chat["type"].as_str().unwrap().to_owned());
    if chat["is_forum"] == Value::Bool(true) {
        seen.features.insert("forum");
    }
    for (field, feature) in [
        ("photo", "photo"),
        ("document", "document"),
        ("reply_to_message", "reply"),
        ("new_chat_members", "join service message"),
        ("left_chat_member", "leave service message"),
        ("forum_topic_created", "topic created"),
        ("is_topic_message", "topic message"),
        ("entities", "entities"),
        ("poll", "user poll"),
        ("caption", "caption"),
        ("edit_date", "edit"),
    ] {
        if !message[field].is_null() {
            seen.features.insert(feature);
        }
    }
    if let Some(text) = message["text"].as_str()
        && !text.is_ascii()
    {
        seen.features.insert("non-ascii text");
    }
}

#[test]
fn the_traffic_covers_every_kind_the_brief_lists() {
    let mut seen = Seen::default();
    for raw in sample(11) {
        let update: Value = serde_json::from_slice(&raw).unwrap();
        let kind = kind_of(&update);
        let body = &update[&kind];
        match kind.as_str() {
            "message" | "edited_message" | "channel_post" | "edited_channel_post" => {
                note_message(&mut seen, body)
            }
            "callback_query" => note_message(&mut seen, &body["message"]),
            _ => {}
        }
        seen.kinds.insert(kind);
    }
    let kinds: BTreeSet<String> = [
        "message",
        "edited_message",
        "channel_post",
        "edited_channel_post",
        "message_reaction",
        "message_reaction_count",
        "chat_member",
        "poll",
        "poll_answer",
        "callback_query",
        UNKNOWN_KIND,
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(seen.kinds, kinds);
    let chat_types: BTreeSet<String> = ["private", "group", "supergroup", "channel"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(seen.chat_types, chat_types);
    for feature in [
        "forum",
        "photo",
        "document",
        "reply",
        "join service message",
        "leave service message",
        "topic created",
        "topic message",
        "entities",
        "user poll",
        "caption",
        "edit",
        "non-ascii text",
    ] {
        assert!(
            seen.features.contains(feature),
            "no {feature} in the sample"
        );
    }
}

#[test]
fn entity_offsets_and_lengths_are_utf16_positions_inside_the_text() {
    let mut checked = 0;
    for raw in sample(3) {
        let update: Value = serde_json::from_slice(&raw).unwrap();
        let body = &update[kind_of(&update)];
        let (Some(text), Some(entities)) = (body["text"].as_str(), body["entities"].as_array())
        else {
            continue;
        };
        let units: Vec<u16> = text.encode_utf16().collect();
        for entity in entities {
            let offset = usize::try_from(entity["offset"].as_u64().unwrap()).unwrap();
            let length = usize::try_from(entity["length"].as_u64().unwrap()).unwrap();
            assert!(offset + length <= units.len(), "entity outside {text:?}");
            let covered = String::from_utf16(&units[offset..offset + length]).unwrap();
            let prefix = match entity["type"].as_str().unwrap() {
                "mention" => "@",
                "bot_command" => "/",
                "url" => "https://",
                other => panic!("unexpected entity type {other}"),
            };
            assert!(covered.starts_with(prefix), "{covered:?} in {text:?}");
            assert!(!covered.contains(' '), "{covered:?} in {text:?}");
            checked += 1;
        }
    }
    assert!(checked > 50, "only {checked} entities checked");
}

#[test]
fn edits_and_reactions_refer_to_messages_sent_earlier_in_the_same_chat() {
    let mut sent: BTreeSet<(i64, i64)> = BTreeSet::new();
    let mut last_id: BTreeMap<i64, i64> = BTreeMap::new();
    let mut checked = 0;
    for raw in sample(8) {
        let update: Value = serde_json::from_slice(&raw).unwrap();
        let kind = kind_of(&update);
        let body = &update[&kind];
        let chat_id = body["chat"]["id"].as_i64().unwrap_or_default();
        let message_id = body["message_id"].as_i64().unwrap_or_default();
        match kind.as_str() {
            "message" | "channel_post" => {
                let previous = last_id.insert(chat_id, message_id);
                assert!(
                    previous.is_none_or(|p| p < message_id),
                    "message ids increase per chat"
                );
                sent.insert((chat_id, message_id));
            }
            "edited_message"
            | "edited_channel_post"
            | "message_reaction"
            | "message_reaction_count" => {
                assert!(
                    sent.contains(&(chat_id, message_id)),
                    "{kind} of an unseen message"
                );
                checked += 1;
            }
            _ => {}
        }
    }
    assert!(checked > 100, "only {checked} references checked");
}

#[test]
fn malformed_updates_are_broken_in_the_requested_way() {
    let mut generator = TrafficGenerator::new(2, TrafficConfig::default());
    let missing: Value =
        serde_json::from_slice(&generator.malformed_of(Malformed::MissingUpdateId)).unwrap();
    assert!(missing.is_object() && missing.get("update_id").is_none());
    let string_id: Value =
        serde_json::from_slice(&generator.malformed_of(Malformed::NonIntegerUpdateId)).unwrap();
    assert!(string_id["update_id"].is_string());
    let array: Value =
        serde_json::from_slice(&generator.malformed_of(Malformed::NotAnObject)).unwrap();
    assert!(array.is_array());
    let truncated = generator.malformed_of(Malformed::TruncatedJson);
    assert!(serde_json::from_slice::<Value>(&truncated).is_err());
    assert!(truncated.starts_with(b"{\"update_id\":"));

    for _ in 0..30 {
        let raw = generator.malformed();
        let value: Value = serde_json::from_slice(&raw).expect("malformed() stays valid JSON");
        assert!(
            value.get("update_id").and_then(Value::as_i64).is_none(),
            "{value}"
        );
    }
}

#[test]
fn a_jump_restarts_the_generators_ids() {
    let mut generator = TrafficGenerator::new(4, TrafficConfig::default());
    generator.batch(3);
    generator.jump_update_ids(10);
    let next: Value = serde_json::from_slice(&generator.next_update()).unwrap();
    assert_eq!(next["update_id"], 10);
    assert_eq!(generator.next_update_id(), 11);
}

#[tokio::test]
async fn generated_traffic_round_trips_through_get_updates_byte_for_byte() {
    let h = start().await;
    let all: Vec<&str> = botsim::KNOWN_KINDS.to_vec();
    h.api
        .set_allowed_updates(TOKEN, AllowedUpdates::from_names(&all))
        .unwrap();
    let updates = TrafficGenerator::new(9, TrafficConfig::default()).batch(250);
    for raw in &updates {
        h.api.push_update(TOKEN, raw.clone()).unwrap();
    }
    let mut served = Vec::new();
    let mut offset = 0;
    while served.len() < updates.len() {
        let answer = h
            .get("getUpdates", &format!("offset={offset}&limit=100"))
            .await;
        let body = answer.body;
        let result = serde_json::from_slice::<Value>(&body).unwrap()["result"]
            .as_array()
            .unwrap()
            .len();
        assert!(result > 0, "ran dry after {} updates", served.len());
        let parsed: ResultOnly = serde_json::from_slice(&body).unwrap();
        for update in parsed.result {
            served.push(update.get().as_bytes().to_vec());
        }
        let last: Value = serde_json::from_slice(served.last().unwrap()).unwrap();
        offset = last["update_id"].as_i64().unwrap() + 1;
    }
    assert_eq!(served, updates);
}

#[derive(serde::Deserialize)]
struct ResultOnly {
    result: Vec<Box<serde_json::value::RawValue>>,
}
