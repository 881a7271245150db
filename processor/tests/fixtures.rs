//! Every fixture in `tests/fixtures/updates/` through `processor::normalize`, compared with rows
//! written out by hand from the fixture (and its README), field by field.
//!
//! Users and chats are compared as sets (sorted by id): their order is not part of the contract.
//! JSON-text columns are written here as `json!` literals, so the comparison is of the JSON
//! value the column holds, not of whitespace or key order.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use processor::{
    BusinessConnectionRow, CallbackQueryRow, ChatMemberEventRow, ChatRow, ChosenInlineResultRow,
    DeletedBusinessMessageRow, InlineQueryRow, MessageEditRow, MessageReactionCountRow,
    MessageReactionRow, MessageRow, Normalized, PollAnswerRow, PollRow, RawUpdateRow, UpdateKind,
    UserRow, normalize,
};
use serde_json::json;
use sha2::{Digest, Sha256};

const BOT: i64 = 7612345890;

fn fixture_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/updates"
    ))
}

fn read(name: &str) -> Vec<u8> {
    let path = fixture_dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The expected output with only the raw row filled in; tests add the derived rows.
fn expect(name: &str, update_id: i64, kind: UpdateKind, src_date: Option<i64>) -> Normalized {
    let bytes = read(name);
    Normalized {
        raw: RawUpdateRow {
            bot_id: BOT,
            update_id,
            update_type: kind.as_str().to_owned(),
            payload_sha256: Sha256::digest(&bytes).into(),
            payload_bytes: bytes,
            jsonb_ok: true,
        },
        kind,
        src_date,
        chats: vec![],
        users: vec![],
        messages: vec![],
        message_edits: vec![],
        message_reactions: vec![],
        message_reaction_counts: vec![],
        chat_member_events: vec![],
        callback_queries: vec![],
        polls: vec![],
        poll_answers: vec![],
        deleted_business_messages: vec![],
        business_connections: vec![],
        inline_queries: vec![],
        chosen_inline_results: vec![],
        projection_error: None,
    }
}

/// Normalises the fixture and compares every table with `expected`.
fn check(name: &str, mut expected: Normalized) {
    let mut actual = normalize(BOT, &read(name)).unwrap_or_else(|r| panic!("{name}: {r}"));
    for n in [&mut actual, &mut expected] {
        n.users.sort_by_key(|u| u.user_id);
        n.chats.sort_by_key(|c| c.chat_id);
    }
    assert_eq!(actual.raw, expected.raw, "{name}: raw");
    assert_eq!(actual.kind, expected.kind, "{name}: kind");
    assert_eq!(actual.src_date, expected.src_date, "{name}: src_date");
    assert_eq!(actual.users, expected.users, "{name}: users");
    assert_eq!(actual.chats, expected.chats, "{name}: chats");
    assert_eq!(actual.messages, expected.messages, "{name}: messages");
    assert_eq!(
        actual.message_edits, expected.message_edits,
        "{name}: edits"
    );
    assert_eq!(
        actual.message_reactions, expected.message_reactions,
        "{name}: reactions"
    );
    assert_eq!(
        actual.message_reaction_counts, expected.message_reaction_counts,
        "{name}: reaction counts"
    );
    assert_eq!(
        actual.chat_member_events, expected.chat_member_events,
        "{name}: member events"
    );
    assert_eq!(
        actual.callback_queries, expected.callback_queries,
        "{name}: callbacks"
    );
    assert_eq!(actual.polls, expected.polls, "{name}: polls");
    assert_eq!(
        actual.poll_answers, expected.poll_answers,
        "{name}: poll answers"
    );
    assert_eq!(
        actual.deleted_business_messages, expected.deleted_business_messages,
        "{name}: deletions"
    );
    assert_eq!(
        actual.business_connections, expected.business_connections,
        "{name}: business connections"
    );
    assert_eq!(
        actual.inline_queries, expected.inline_queries,
        "{name}: inline"
    );
    assert_eq!(
        actual.chosen_inline_results, expected.chosen_inline_results,
        "{name}: chosen"
    );
    assert_eq!(
        actual.projection_error, expected.projection_error,
        "{name}: projection error"
    );
}

// ---- the people and chats of the fixtures -------------------------------------------------

struct Person {
    id: i64,
    is_bot: bool,
    first: &'static str,
    last: Option<&'static str>,
    username: Option<&'static str>,
    lang: Option<&'static str>,
    premium: Option<bool>,
}

const MARCO: Person = Person {
    id: 6620138457,
    is_bot: false,
    first: "Marco",
    last: Some("Bianchi"),
    username: Some("marcob"),
    lang: Some("it"),
    premium: None,
};
const ALINA: Person = Person {
    id: 5183920471,
    is_bot: false,
    first: "Alina",
    last: Some("Kovalenko"),
    username: Some("alina_kov"),
    lang: Some("uk"),
    premium: Some(true),
};
const PRIYA: Person = Person {
    id: 1290475563,
    is_bot: false,
    first: "Priya",
    last: None,
    username: None,
    lang: Some("en"),
    premium: None,
};
const KENJI: Person = Person {
    id: 7025518839,
    is_bot: false,
    first: "Kenji",
    last: Some("Watanabe"),
    username: Some("kenji_w"),
    lang: Some("ja"),
    premium: None,
};
const TOMAS: Person = Person {
    id: 6934102275,
    is_bot: false,
    first: "Tom\u{e1}s",
    last: Some("Ruiz"),
    username: Some("tomas_ruiz"),
    lang: Some("es"),
    premium: None,
};
const OLENA: Person = Person {
    id: 8011245670,
    is_bot: false,
    first: "Olena",
    last: Some("Shevchuk"),
    username: Some("olena_flowers"),
    lang: Some("uk"),
    premium: Some(true),
};
const OKSANA: Person = Person {
    id: 6712093458,
    is_bot: false,
    first: "Oksana",
    last: Some("Melnyk"),
    username: Some("oksana_m"),
    lang: Some("uk"),
    premium: None,
};
const LUKAS: Person = Person {
    id: 5530917264,
    is_bot: false,
    first: "Lukas",
    last: Some("Meyer"),
    username: Some("lukasm"),
    lang: Some("de"),
    premium: None,
};
const FIXTURE_BOT: Person = Person {
    id: 7612345890,
    is_bot: true,
    first: "tgingest fixtures",
    last: None,
    username: Some("tgingest_fixture_bot"),
    lang: None,
    premium: None,
};
const SHOP_BOT: Person = Person {
    id: 8123456701,
    is_bot: true,
    first: "Kenji's Shop Bot",
    last: None,
    username: Some("kenji_shop_helper_bot"),
    lang: None,
    premium: None,
};
const MAX_BITS: Person = Person {
    id: 4503599627370495,
    is_bot: false,
    first: "Max",
    last: Some("Bits"),
    username: Some("max_bits_52"),
    lang: Some("en"),
    premium: None,
};
const LAYLA: Person = Person {
    id: 6390127745,
    is_bot: false,
    first: "\u{644}\u{64a}\u{644}\u{649}",
    last: Some("\u{62d}\u{62f}\u{627}\u{62f}"),
    username: Some("layla_hd"),
    lang: Some("ar"),
    premium: None,
};

fn user(p: &Person, src_date: Option<i64>, src_update_id: i64) -> UserRow {
    UserRow {
        bot_id: BOT,
        user_id: p.id,
        is_bot: p.is_bot,
        first_name: Some(p.first.to_owned()),
        last_name: p.last.map(str::to_owned),
        username: p.username.map(str::to_owned),
        language_code: p.lang.map(str::to_owned),
        is_premium: p.premium,
        src_date,
        src_update_id,
    }
}

struct Chat {
    id: i64,
    chat_type: &'static str,
    title: Option<&'static str>,
    username: Option<&'static str>,
    first: Option<&'static str>,
    last: Option<&'static str>,
    is_forum: Option<bool>,
}

const fn group(
    id: i64,
    chat_type: &'static str,
    title: &'static str,
    username: Option<&'static str>,
) -> Chat {
    Chat {
        id,
        chat_type,
        title: Some(title),
        username,
        first: None,
        last: None,
        is_forum: None,
    }
}

const fn private(p: &Person) -> Chat {
    Chat {
        id: p.id,
        chat_type: "private",
        title: None,
        username: p.username,
        first: Some(p.first),
        last: p.last,
        is_forum: None,
    }
}

const RUST_KYIV: Chat = group(
    -1001847562093,
    "supergroup",
    "Rust Kyiv Meetup",
    Some("rustkyiv"),
);
const TECH_DIGEST: Chat = group(
    -1001675432198,
    "channel",
    "Tech Digest Daily",
    Some("techdigestdaily"),
);
const ORGANISERS: Chat = group(-1002031458776, "supergroup", "Rust Kyiv Organisers", None);
const FRONTEND_LVIV: Chat = group(
    -1001938475612,
    "supergroup",
    "Frontend Lviv",
    Some("frontendlviv"),
);
const EDGE_LAB: Chat = group(-1004503599627370, "supergroup", "Edge Case Lab", None);
const CAFE: Chat = group(
    -1001502938476,
    "supergroup",
    "Caf\u{e9} \u{2615} \u{56fd}\u{9645} \u{639}\u{631}\u{628}\u{64a}",
    None,
);
const OSS_SUPPORT: Chat = Chat {
    is_forum: Some(true),
    ..group(
        -1002214567389,
        "supergroup",
        "Open Source Support",
        Some("oss_support_hub"),
    )
};

fn chat(c: &Chat, src_date: Option<i64>, src_update_id: i64) -> ChatRow {
    ChatRow {
        bot_id: BOT,
        chat_id: c.id,
        chat_type: c.chat_type.to_owned(),
        title: c.title.map(str::to_owned),
        username: c.username.map(str::to_owned),
        first_name: c.first.map(str::to_owned),
        last_name: c.last.map(str::to_owned),
        is_forum: c.is_forum,
        src_date,
        src_update_id,
    }
}

/// A message row with every optional column empty; `src_date` = `date`.
fn message(chat_id: i64, message_id: i64, date: i64, src_update_id: i64) -> MessageRow {
    MessageRow {
        bot_id: BOT,
        chat_id,
        business_connection_id: String::new(),
        message_id,
        message_thread_id: None,
        is_topic_message: false,
        is_channel_post: false,
        from_user_id: None,
        sender_chat_id: None,
        sender_business_bot_id: None,
        via_bot_id: None,
        date,
        edit_date: None,
        text: None,
        entities: None,
        caption: None,
        caption_entities: None,
        media_kind: None,
        media_file_id: None,
        media_file_unique_id: None,
        service_kind: None,
        media_group_id: None,
        author_signature: None,
        reply_to_message_id: None,
        forward_origin_type: None,
        forward_origin_user_id: None,
        forward_origin_chat_id: None,
        forward_origin_message_id: None,
        forward_origin_date: None,
        forward_origin: None,
        src_date: Some(date),
        src_update_id,
    }
}

fn edit_of(m: &MessageRow) -> MessageEditRow {
    MessageEditRow {
        bot_id: m.bot_id,
        chat_id: m.chat_id,
        business_connection_id: m.business_connection_id.clone(),
        message_id: m.message_id,
        edit_date: m.edit_date,
        is_channel_post: m.is_channel_post,
        text: m.text.clone(),
        entities: m.entities.clone(),
        caption: m.caption.clone(),
        caption_entities: m.caption_entities.clone(),
        media_kind: m.media_kind,
        media_file_id: m.media_file_id.clone(),
        media_file_unique_id: m.media_file_unique_id.clone(),
        src_date: m.src_date,
        src_update_id: m.src_update_id,
    }
}

fn text(s: &str) -> Option<String> {
    Some(s.to_owned())
}

fn js(value: serde_json::Value) -> Option<String> {
    Some(value.to_string())
}

const BUSINESS_CONNECTION: &str = "wQ3kM8fZ1UoBAAAAyXc2nLr7aPE";

// ---- the fixtures ---------------------------------------------------------------------------

const ALL_FIXTURES: [&str; 45] = [
    "big_ids.json",
    "business_connection.json",
    "business_message.json",
    "callback_query.json",
    "channel_post.json",
    "chat_boost.json",
    "chat_join_request.json",
    "chat_member.json",
    "chosen_inline_result.json",
    "deleted_business_messages.json",
    "edited_business_message.json",
    "edited_channel_post.json",
    "edited_message.json",
    "forum_topic_message.json",
    "forwarded_hidden_user.json",
    "forwarded_message.json",
    "guest_message.json",
    "inline_query.json",
    "left_chat_member.json",
    "lone_surrogate.json",
    "long_text.json",
    "managed_bot.json",
    "media_group_photo_1.json",
    "media_group_photo_2.json",
    "message.json",
    "message_id_zero.json",
    "message_reaction.json",
    "message_reaction_count.json",
    "message_with_document.json",
    "message_with_location.json",
    "message_with_sticker.json",
    "message_with_video.json",
    "message_with_voice.json",
    "my_chat_member.json",
    "new_chat_members.json",
    "nul_in_text.json",
    "poll.json",
    "poll_answer.json",
    "pre_checkout_query.json",
    "purchased_paid_media.json",
    "removed_chat_boost.json",
    "shipping_query.json",
    "unicode_emoji.json",
    "unknown_fields.json",
    "unknown_kind.json",
];

#[test]
fn every_fixture_file_has_a_test_here() {
    let mut on_disk: Vec<String> = std::fs::read_dir(fixture_dir())
        .expect("fixture directory")
        .map(|entry| {
            entry
                .expect("directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name.ends_with(".json"))
        .collect();
    on_disk.sort();
    assert_eq!(on_disk, ALL_FIXTURES);
}

#[test]
fn every_fixture_is_accepted_with_a_full_projection() {
    for name in ALL_FIXTURES {
        let out = normalize(BOT, &read(name)).unwrap_or_else(|r| panic!("{name}: {r}"));
        assert_eq!(out.projection_error, None, "{name}");
        assert_eq!(out.raw.payload_bytes, read(name), "{name}");
    }
}

const MESSAGE_TEXT: &str = "@alina_kov agreed \u{1f44d} the fix is in https://github.com/tokio-rs/tokio/pull/7012 \u{2014} ping Priya before /release@tgingest_fixture_bot #rust";
const EDITED_MESSAGE_TEXT: &str = "@alina_kov agreed \u{1f44d} the fix landed in https://github.com/tokio-rs/tokio/pull/7012 (v1.48) \u{2014} ping Priya before /release@tgingest_fixture_bot #rust";

fn priya_mention(offset: i64) -> serde_json::Value {
    json!({"offset": offset, "length": 5, "type": "text_mention",
           "user": {"id": 1290475563i64, "is_bot": false, "first_name": "Priya", "language_code": "en"}})
}

#[test]
fn message_is_a_text_message_with_a_reply_and_a_text_mention() {
    let (d, u) = (Some(1760004123), 900000001);
    let mut e = expect("message.json", u, UpdateKind::Message, d);
    e.users = vec![user(&MARCO, d, u), user(&ALINA, d, u), user(&PRIYA, d, u)];
    e.chats = vec![chat(&RUST_KYIV, d, u)];
    e.messages = vec![MessageRow {
        from_user_id: Some(MARCO.id),
        text: text(MESSAGE_TEXT),
        entities: js(json!([
            {"offset": 0, "length": 10, "type": "mention"},
            {"offset": 11, "length": 6, "type": "bold"},
            {"offset": 35, "length": 43, "type": "url"},
            priya_mention(86),
            {"offset": 99, "length": 29, "type": "bot_command"},
            {"offset": 129, "length": 5, "type": "hashtag"}
        ])),
        reply_to_message_id: Some(48211),
        ..message(RUST_KYIV.id, 48217, 1760004123, u)
    }];
    check("message.json", e);
}

#[test]
fn edited_message_updates_the_message_and_adds_an_edit_dated_by_edit_date() {
    let (d, u) = (Some(1760004190), 900000002);
    let mut e = expect("edited_message.json", u, UpdateKind::EditedMessage, d);
    e.users = vec![user(&MARCO, d, u), user(&ALINA, d, u), user(&PRIYA, d, u)];
    e.chats = vec![chat(&RUST_KYIV, d, u)];
    let m = MessageRow {
        from_user_id: Some(MARCO.id),
        edit_date: Some(1760004190),
        text: text(EDITED_MESSAGE_TEXT),
        entities: js(json!([
            {"offset": 0, "length": 10, "type": "mention"},
            {"offset": 11, "length": 6, "type": "bold"},
            {"offset": 39, "length": 43, "type": "url"},
            {"offset": 84, "length": 5, "type": "code"},
            priya_mention(98),
            {"offset": 111, "length": 29, "type": "bot_command"},
            {"offset": 141, "length": 5, "type": "hashtag"}
        ])),
        reply_to_message_id: Some(48211),
        src_date: d,
        ..message(RUST_KYIV.id, 48217, 1760004123, u)
    };
    e.message_edits = vec![edit_of(&m)];
    assert_eq!(e.message_edits[0].edit_date, Some(1760004190));
    e.messages = vec![m];
    check("edited_message.json", e);
}

fn channel_post_entities(shift: i64) -> Option<String> {
    js(json!([
        {"offset": 0, "length": 16, "type": "bold"},
        {"offset": 80 + shift, "length": 9, "type": "text_link",
         "url": "https://blog.rust-lang.org/2026/11/20/Rust-1.95.0/"},
        {"offset": 90 + shift, "length": 5, "type": "hashtag"},
        {"offset": 96 + shift, "length": 8, "type": "hashtag"}
    ]))
}

#[test]
fn channel_post_has_a_sender_chat_no_user_and_is_marked_as_a_channel_post() {
    let (d, u) = (Some(1760005000), 900000003);
    let mut e = expect("channel_post.json", u, UpdateKind::ChannelPost, d);
    e.chats = vec![chat(&TECH_DIGEST, d, u)];
    e.messages = vec![MessageRow {
        is_channel_post: true,
        sender_chat_id: Some(TECH_DIGEST.id),
        author_signature: text("Dmytro H."),
        text: text(
            "Rust 1.95 is out: faster incremental builds and new lints.\nFull release notes \u{2192} read here\n#rust #release",
        ),
        entities: channel_post_entities(0),
        ..message(TECH_DIGEST.id, 3127, 1760005000, u)
    }];
    check("channel_post.json", e);
}

#[test]
fn edited_channel_post_is_an_edit_of_a_channel_post() {
    let (d, u) = (Some(1760005342), 900000004);
    let mut e = expect(
        "edited_channel_post.json",
        u,
        UpdateKind::EditedChannelPost,
        d,
    );
    e.chats = vec![chat(&TECH_DIGEST, d, u)];
    let m = MessageRow {
        is_channel_post: true,
        sender_chat_id: Some(TECH_DIGEST.id),
        author_signature: text("Dmytro H."),
        edit_date: Some(1760005342),
        text: text(
            "Rust 1.95 is out: faster incremental builds and two new lints.\nFull release notes \u{2192} read here\n#rust #release",
        ),
        entities: channel_post_entities(4),
        src_date: d,
        ..message(TECH_DIGEST.id, 3127, 1760005000, u)
    };
    e.message_edits = vec![edit_of(&m)];
    assert!(e.message_edits[0].is_channel_post);
    e.messages = vec![m];
    check("edited_channel_post.json", e);
}

#[test]
fn business_connection_keeps_rights_as_json_and_is_ordered_by_receive_time_not_its_date() {
    // `date` is when the connection was established, the same in every update about it.
    let (d, u) = (None, 900000005);
    let mut e = expect(
        "business_connection.json",
        u,
        UpdateKind::BusinessConnection,
        d,
    );
    e.users = vec![user(&OLENA, d, u)];
    e.business_connections = vec![BusinessConnectionRow {
        bot_id: BOT,
        business_connection_id: BUSINESS_CONNECTION.to_owned(),
        user_id: OLENA.id,
        user_chat_id: Some(8011245670),
        date: 1759740800,
        can_reply: Some(true),
        rights: js(json!({"can_reply": true, "can_read_messages": true,
                          "can_delete_sent_messages": true, "can_view_gifts_and_stars": true})),
        is_enabled: Some(true),
        src_date: d,
        src_update_id: u,
    }];
    check("business_connection.json", e);
}

#[test]
fn business_message_is_keyed_by_its_business_connection() {
    let (d, u) = (Some(1760006000), 900000006);
    let mut e = expect("business_message.json", u, UpdateKind::BusinessMessage, d);
    e.users = vec![user(&TOMAS, d, u)];
    e.chats = vec![chat(&private(&TOMAS), d, u)];
    e.messages = vec![MessageRow {
        business_connection_id: BUSINESS_CONNECTION.to_owned(),
        from_user_id: Some(TOMAS.id),
        text: text("Hola! Do you deliver peonies to Podil on Saturday morning? \u{1f490}"),
        ..message(TOMAS.id, 1542, 1760006000, u)
    }];
    check("business_message.json", e);
}

#[test]
fn edited_business_message_is_an_edit_under_the_same_connection() {
    let (d, u) = (Some(1760006071), 900000007);
    let mut e = expect(
        "edited_business_message.json",
        u,
        UpdateKind::EditedBusinessMessage,
        d,
    );
    e.users = vec![user(&TOMAS, d, u)];
    e.chats = vec![chat(&private(&TOMAS), d, u)];
    let m = MessageRow {
        business_connection_id: BUSINESS_CONNECTION.to_owned(),
        from_user_id: Some(TOMAS.id),
        edit_date: Some(1760006071),
        text: text(
            "Hola! Do you deliver peonies to Podil on Saturday morning (before 11:00)? \u{1f490}",
        ),
        src_date: d,
        ..message(TOMAS.id, 1542, 1760006000, u)
    };
    e.message_edits = vec![edit_of(&m)];
    e.messages = vec![m];
    check("edited_business_message.json", e);
}

#[test]
fn deleted_business_messages_marks_each_message_and_has_no_date() {
    let u = 900000008;
    let mut e = expect(
        "deleted_business_messages.json",
        u,
        UpdateKind::DeletedBusinessMessages,
        None,
    );
    e.chats = vec![chat(&private(&TOMAS), None, u)];
    e.deleted_business_messages = [1542, 1543]
        .into_iter()
        .map(|message_id| DeletedBusinessMessageRow {
            bot_id: BOT,
            business_connection_id: BUSINESS_CONNECTION.to_owned(),
            chat_id: TOMAS.id,
            message_id,
            src_date: None,
            src_update_id: u,
        })
        .collect();
    check("deleted_business_messages.json", e);
}

#[test]
fn message_reaction_stores_the_users_new_and_old_reaction_sets() {
    let (d, u) = (Some(1760004250), 900000009);
    let mut e = expect("message_reaction.json", u, UpdateKind::MessageReaction, d);
    e.users = vec![user(&ALINA, d, u)];
    e.chats = vec![chat(&RUST_KYIV, d, u)];
    e.message_reactions = vec![MessageReactionRow {
        bot_id: BOT,
        chat_id: RUST_KYIV.id,
        message_id: 48217,
        actor_type: "user",
        actor_id: ALINA.id,
        new_reaction: json!([{"type": "emoji", "emoji": "\u{1f525}"},
                             {"type": "custom_emoji", "custom_emoji_id": "5368324170671202286"}])
        .to_string(),
        old_reaction: json!([{"type": "emoji", "emoji": "\u{1f44d}"}]).to_string(),
        date: 1760004250,
        src_date: d,
        src_update_id: u,
    }];
    check("message_reaction.json", e);
}

#[test]
fn message_reaction_count_stores_the_totals_including_paid() {
    let (d, u) = (Some(1760005400), 900000010);
    let mut e = expect(
        "message_reaction_count.json",
        u,
        UpdateKind::MessageReactionCount,
        d,
    );
    e.chats = vec![chat(&TECH_DIGEST, d, u)];
    e.message_reaction_counts = vec![MessageReactionCountRow {
        bot_id: BOT,
        chat_id: TECH_DIGEST.id,
        message_id: 3127,
        reactions: json!([
            {"type": {"type": "emoji", "emoji": "\u{2764}"}, "total_count": 42},
            {"type": {"type": "emoji", "emoji": "\u{1f525}"}, "total_count": 17},
            {"type": {"type": "paid"}, "total_count": 7},
            {"type": {"type": "custom_emoji", "custom_emoji_id": "5449505950283078474"}, "total_count": 3}
        ])
        .to_string(),
        date: 1760005400,
        src_date: d,
        src_update_id: u,
    }];
    check("message_reaction_count.json", e);
}

#[test]
fn inline_query_keeps_an_empty_offset_and_has_no_date() {
    let u = 900000011;
    let mut e = expect("inline_query.json", u, UpdateKind::InlineQuery, None);
    e.users = vec![user(&KENJI, None, u)];
    e.inline_queries = vec![InlineQueryRow {
        bot_id: BOT,
        inline_query_id: "3312467890127745281".to_owned(),
        from_user_id: KENJI.id,
        query: "tokio select".to_owned(),
        query_offset: Some(String::new()),
        chat_type: text("supergroup"),
        src_date: None,
        src_update_id: u,
    }];
    check("inline_query.json", e);
}

#[test]
fn chosen_inline_result_is_read_whatever_the_member_order() {
    let u = 900000012;
    let mut e = expect(
        "chosen_inline_result.json",
        u,
        UpdateKind::ChosenInlineResult,
        None,
    );
    e.users = vec![user(&KENJI, None, u)];
    e.chosen_inline_results = vec![ChosenInlineResultRow {
        bot_id: BOT,
        result_id: "doc-tokio-select-macro".to_owned(),
        from_user_id: KENJI.id,
        query: "tokio select".to_owned(),
        inline_message_id: text("AgAAAB4wAQB7pYgWq9h0ZqN3xS8"),
        src_date: None,
        src_update_id: u,
    }];
    check("chosen_inline_result.json", e);
}

#[test]
fn callback_query_points_at_its_message_and_yields_no_message_row() {
    let u = 900000013;
    let mut e = expect("callback_query.json", u, UpdateKind::CallbackQuery, None);
    e.users = vec![user(&ALINA, None, u), user(&FIXTURE_BOT, None, u)];
    e.chats = vec![chat(&private(&ALINA), None, u)];
    e.callback_queries = vec![CallbackQueryRow {
        bot_id: BOT,
        callback_query_id: "3284910567523904512".to_owned(),
        from_user_id: ALINA.id,
        chat_instance: text("-6384517209947391843"),
        data: text("report:30d"),
        game_short_name: None,
        inline_message_id: None,
        message_chat_id: Some(ALINA.id),
        message_id: Some(1290),
        src_date: None,
        src_update_id: u,
    }];
    check("callback_query.json", e);
}

#[test]
fn shipping_and_pre_checkout_queries_and_paid_media_purchases_yield_only_their_user() {
    for (name, u, kind, person) in [
        (
            "shipping_query.json",
            900000014,
            UpdateKind::ShippingQuery,
            &MARCO,
        ),
        (
            "pre_checkout_query.json",
            900000015,
            UpdateKind::PreCheckoutQuery,
            &MARCO,
        ),
        (
            "purchased_paid_media.json",
            900000016,
            UpdateKind::PurchasedPaidMedia,
            &PRIYA,
        ),
    ] {
        let mut e = expect(name, u, kind, None);
        e.users = vec![user(person, None, u)];
        check(name, e);
    }
}

#[test]
fn poll_stores_the_poll_state_without_a_date() {
    let u = 900000017;
    let mut e = expect("poll.json", u, UpdateKind::Poll, None);
    e.polls = vec![PollRow {
        bot_id: BOT,
        poll_id: "5832104967123458049".to_owned(),
        question: text("Which async runtime do you run in production?"),
        question_entities: None,
        options: js(json!([
            {"persistent_id": "0", "text": "tokio", "voter_count": 31},
            {"persistent_id": "1", "text": "async-std", "voter_count": 2},
            {"persistent_id": "2", "text": "smol", "voter_count": 5},
            {"persistent_id": "3", "text": "glommio", "voter_count": 1}
        ])),
        total_voter_count: Some(39),
        is_closed: Some(true),
        is_anonymous: Some(false),
        poll_type: text("regular"),
        allows_multiple_answers: Some(false),
        correct_option_id: None,
        explanation: None,
        explanation_entities: None,
        open_period: None,
        close_date: None,
        src_date: None,
        src_update_id: u,
    }];
    check("poll.json", e);
}

#[test]
fn poll_answer_stores_the_users_current_choice() {
    let u = 900000018;
    let mut e = expect("poll_answer.json", u, UpdateKind::PollAnswer, None);
    e.users = vec![user(&PRIYA, None, u)];
    e.poll_answers = vec![PollAnswerRow {
        bot_id: BOT,
        poll_id: "5832104967123458049".to_owned(),
        voter_type: "user",
        voter_id: PRIYA.id,
        option_ids: "[2]".to_owned(),
        src_date: None,
        src_update_id: u,
    }];
    check("poll_answer.json", e);
}

#[test]
fn my_chat_member_records_the_bot_becoming_an_administrator() {
    let (d, u) = (Some(1760001000), 900000019);
    let mut e = expect("my_chat_member.json", u, UpdateKind::MyChatMember, d);
    e.users = vec![user(&ALINA, d, u), user(&FIXTURE_BOT, d, u)];
    e.chats = vec![chat(&RUST_KYIV, d, u)];
    let bot = json!({"id": 7612345890i64, "is_bot": true, "first_name": "tgingest fixtures",
                     "username": "tgingest_fixture_bot"});
    e.chat_member_events = vec![ChatMemberEventRow {
        bot_id: BOT,
        chat_id: RUST_KYIV.id,
        user_id: FIXTURE_BOT.id,
        event_kind: "my_chat_member",
        actor_user_id: ALINA.id,
        date: 1760001000,
        old_status: text("member"),
        new_status: text("administrator"),
        old_chat_member: js(json!({"user": bot, "status": "member"})),
        new_chat_member: js(json!({
            "user": bot, "status": "administrator", "can_be_edited": false,
            "can_manage_chat": true, "can_change_info": false, "can_delete_messages": true,
            "can_invite_users": true, "can_restrict_members": true, "can_pin_messages": true,
            "can_manage_topics": false, "can_promote_members": false,
            "can_manage_video_chats": false, "can_post_stories": false,
            "can_edit_stories": false, "can_delete_stories": false, "can_manage_tags": false,
            "is_anonymous": false, "can_manage_voice_chats": false
        })),
        invite_link: None,
        via_join_request: None,
        via_chat_folder_invite_link: None,
        user_chat_id: None,
        bio: None,
        src_date: d,
        src_update_id: u,
    }];
    check("my_chat_member.json", e);
}

fn alina_json() -> serde_json::Value {
    json!({"id": 5183920471i64, "is_bot": false, "first_name": "Alina", "last_name": "Kovalenko",
           "username": "alina_kov", "language_code": "uk", "is_premium": true})
}

#[test]
fn chat_member_records_a_join_through_an_invite_link_and_its_creator_as_a_user() {
    let (d, u) = (Some(1760008000), 900000020);
    let mut e = expect("chat_member.json", u, UpdateKind::ChatMember, d);
    e.users = vec![user(&KENJI, d, u), user(&ALINA, d, u)];
    e.chats = vec![chat(&RUST_KYIV, d, u)];
    let kenji = json!({"id": 7025518839i64, "is_bot": false, "first_name": "Kenji",
                       "last_name": "Watanabe", "username": "kenji_w", "language_code": "ja"});
    e.chat_member_events = vec![ChatMemberEventRow {
        bot_id: BOT,
        chat_id: RUST_KYIV.id,
        user_id: KENJI.id,
        event_kind: "chat_member",
        actor_user_id: KENJI.id,
        date: 1760008000,
        old_status: text("left"),
        new_status: text("member"),
        old_chat_member: js(json!({"user": kenji, "status": "left"})),
        new_chat_member: js(json!({"user": kenji, "status": "member"})),
        invite_link: js(json!({
            "invite_link": "https://t.me/+Rk2v9Xw\u{2026}", "name": "Meetup #14 flyer",
            "creator": alina_json(), "creates_join_request": false, "is_primary": false,
            "is_revoked": false
        })),
        via_join_request: None,
        via_chat_folder_invite_link: None,
        user_chat_id: None,
        bio: None,
        src_date: d,
        src_update_id: u,
    }];
    check("chat_member.json", e);
}

#[test]
fn chat_join_request_records_the_requester_their_bio_and_private_chat() {
    let (d, u) = (Some(1760008500), 900000021);
    let mut e = expect("chat_join_request.json", u, UpdateKind::ChatJoinRequest, d);
    e.users = vec![user(&TOMAS, d, u), user(&ALINA, d, u)];
    e.chats = vec![chat(&ORGANISERS, d, u)];
    e.chat_member_events = vec![ChatMemberEventRow {
        bot_id: BOT,
        chat_id: ORGANISERS.id,
        user_id: TOMAS.id,
        event_kind: "chat_join_request",
        actor_user_id: TOMAS.id,
        date: 1760008500,
        old_status: None,
        new_status: None,
        old_chat_member: None,
        new_chat_member: None,
        invite_link: js(json!({
            "invite_link": "https://t.me/+Vn3pQ8c\u{2026}", "name": "organisers-2025",
            "creator": alina_json(), "pending_join_request_count": 3,
            "creates_join_request": true, "is_primary": false, "is_revoked": false
        })),
        via_join_request: None,
        via_chat_folder_invite_link: None,
        user_chat_id: Some(6934102275),
        bio: text("Backend dev \u{b7} Valencia \u{b7} \u{1f980}"),
        src_date: d,
        src_update_id: u,
    }];
    check("chat_join_request.json", e);
}

#[test]
fn chat_boosts_yield_the_chat_and_the_boosting_user_dated_by_the_boost() {
    let (d, u) = (Some(1760009000), 900000022);
    let mut e = expect("chat_boost.json", u, UpdateKind::ChatBoost, d);
    e.users = vec![user(&ALINA, d, u)];
    e.chats = vec![chat(&TECH_DIGEST, d, u)];
    check("chat_boost.json", e);

    let (d, u) = (Some(1760009300), 900000023);
    let mut e = expect(
        "removed_chat_boost.json",
        u,
        UpdateKind::RemovedChatBoost,
        d,
    );
    e.users = vec![user(&KENJI, d, u)];
    e.chats = vec![chat(&TECH_DIGEST, d, u)];
    check("removed_chat_boost.json", e);
}

#[test]
fn guest_message_becomes_a_message_row() {
    let (d, u) = (Some(1760009500), 900000024);
    let mut e = expect("guest_message.json", u, UpdateKind::GuestMessage, d);
    e.users = vec![user(&PRIYA, d, u)];
    e.chats = vec![chat(&FRONTEND_LVIV, d, u)];
    e.messages = vec![MessageRow {
        from_user_id: Some(PRIYA.id),
        text: text("@tgingest_fixture_bot what does error E0502 mean here?"),
        entities: js(json!([{"offset": 0, "length": 21, "type": "mention"}])),
        ..message(FRONTEND_LVIV.id, 9021, 1760009500, u)
    }];
    check("guest_message.json", e);
}

#[test]
fn managed_bot_yields_the_owner_and_the_bot_as_users() {
    let u = 900000025;
    let mut e = expect("managed_bot.json", u, UpdateKind::ManagedBot, None);
    e.users = vec![user(&KENJI, None, u), user(&SHOP_BOT, None, u)];
    check("managed_bot.json", e);
}

#[test]
fn message_id_zero_is_a_valid_business_video_message() {
    let (d, u) = (Some(1760006200), 900000026);
    let mut e = expect("message_id_zero.json", u, UpdateKind::BusinessMessage, d);
    e.users = vec![user(&OLENA, d, u)];
    e.chats = vec![chat(&private(&TOMAS), d, u)];
    e.messages = vec![MessageRow {
        business_connection_id: BUSINESS_CONNECTION.to_owned(),
        from_user_id: Some(OLENA.id),
        caption: text("Here is how the Saturday bouquet looks \u{1f33f}"),
        media_kind: Some("video"),
        media_file_id: text("BAACAgIAAxkBAANMK-s4kOdoAALhSyiBbrDOcHQ593yQ0UG7NgQ"),
        media_file_unique_id: text("AgDiNI7mfK7HPf0"),
        ..message(TOMAS.id, 0, 1760006200, u)
    }];
    check("message_id_zero.json", e);
}

#[test]
fn big_ids_survive_exactly() {
    let (d, u) = (Some(1760009700), 900000027);
    let mut e = expect("big_ids.json", u, UpdateKind::Message, d);
    e.users = vec![user(&MAX_BITS, d, u)];
    e.chats = vec![chat(&EDGE_LAB, d, u)];
    e.messages = vec![MessageRow {
        from_user_id: Some(4503599627370495),
        text: text("2^52 - 1 says hi"),
        ..message(-1004503599627370, 2147483000, 1760009700, u)
    }];
    check("big_ids.json", e);
}

#[test]
fn an_unknown_kind_is_kept_with_its_name_and_its_users_and_chats() {
    let u = 900000028;
    let mut e = expect(
        "unknown_kind.json",
        u,
        UpdateKind::Other("story_reaction".to_owned()),
        None,
    );
    e.users = vec![user(&OKSANA, None, u)];
    e.chats = vec![chat(&TECH_DIGEST, None, u)];
    check("unknown_kind.json", e);
}

#[test]
fn unknown_fields_are_ignored_in_columns_but_kept_in_json_text() {
    let (d, u) = (Some(1760009900), 900000029);
    let mut e = expect("unknown_fields.json", u, UpdateKind::Message, d);
    e.users = vec![user(&OKSANA, d, u)];
    e.chats = vec![chat(&RUST_KYIV, d, u)];
    e.messages = vec![MessageRow {
        from_user_id: Some(OKSANA.id),
        text: text("@alina_kov the venue costs 1250 UAH this time"),
        entities: js(json!([
            {"offset": 0, "length": 10, "type": "mention", "resolved_user_id": 5183920471i64},
            {"offset": 27, "length": 8, "type": "currency_amount", "currency": "UAH", "amount": "1250.00"}
        ])),
        ..message(RUST_KYIV.id, 48225, 1760009900, u)
    }];
    check("unknown_fields.json", e);
}

#[test]
fn unicode_text_is_kept_code_point_for_code_point() {
    let (d, u) = (Some(1760010000), 900000030);
    let out = normalize(BOT, &read("unicode_emoji.json")).unwrap();
    let text_column = out.messages[0].text.clone().unwrap();
    // The README's counts for this text.
    assert_eq!(text_column.chars().count(), 141);
    assert_eq!(text_column.encode_utf16().count(), 154);
    assert_eq!(text_column.len(), 250);
    assert!(
        text_column
            .contains("Family: \u{1f469}\u{200d}\u{1f469}\u{200d}\u{1f467}\u{200d}\u{1f466} ")
    );
    assert!(
        text_column.contains("Cafe\u{301} na\u{308}ive"),
        "combining marks are not normalised"
    );

    let mut e = expect("unicode_emoji.json", u, UpdateKind::Message, d);
    e.users = vec![user(&LAYLA, d, u)];
    e.chats = vec![chat(&CAFE, d, u)];
    e.messages = vec![MessageRow {
        from_user_id: Some(LAYLA.id),
        text: Some(text_column),
        entities: js(json!([
            {"offset": 0, "length": 16, "type": "bold"},
            {"offset": 17, "length": 10, "type": "italic"},
            {"offset": 31, "length": 9, "type": "underline"},
            {"offset": 44, "length": 3, "type": "hashtag"},
            {"offset": 48, "length": 5, "type": "strikethrough"},
            {"offset": 61, "length": 6, "type": "spoiler"},
            {"offset": 83, "length": 11, "type": "text_link", "url": "https://example.org/family"},
            {"offset": 114, "length": 4, "type": "code"},
            {"offset": 142, "length": 1, "type": "custom_emoji", "custom_emoji_id": "5368324170671202286"},
            {"offset": 144, "length": 10, "type": "mention"}
        ])),
        ..message(CAFE.id, 7731, 1760010000, u)
    }];
    check("unicode_emoji.json", e);
}

fn marco_private_text(
    name: &str,
    u: i64,
    message_id: i64,
    date: i64,
    body: &str,
    entities: serde_json::Value,
) -> Normalized {
    let d = Some(date);
    let mut e = expect(name, u, UpdateKind::Message, d);
    e.raw.jsonb_ok = false;
    e.users = vec![user(&MARCO, d, u)];
    e.chats = vec![chat(&private(&MARCO), d, u)];
    e.messages = vec![MessageRow {
        from_user_id: Some(MARCO.id),
        text: text(body),
        entities: js(entities),
        ..message(MARCO.id, message_id, date, u)
    }];
    e
}

#[test]
fn a_nul_in_text_is_replaced_in_the_column_and_makes_the_payload_not_jsonb() {
    let e = marco_private_text(
        "nul_in_text.json",
        900000031,
        1311,
        1760010100,
        "NUL byte here ->\u{fffd}<- and a bold word after it",
        json!([{"offset": 26, "length": 4, "type": "bold"}]),
    );
    assert!(!e.raw.jsonb_ok);
    check("nul_in_text.json", e);
}

#[test]
fn a_lone_surrogate_is_replaced_in_the_column_and_makes_the_payload_not_jsonb() {
    let e = marco_private_text(
        "lone_surrogate.json",
        900000032,
        1312,
        1760010150,
        "Pasted from a truncated preview: \u{fffd} and the rest is intact",
        json!([{"offset": 51, "length": 6, "type": "italic"}]),
    );
    check("lone_surrogate.json", e);
}

#[test]
fn a_4096_character_text_is_kept_whole() {
    let (d, u) = (Some(1760010200), 900000033);
    let out = normalize(BOT, &read("long_text.json")).unwrap();
    let body = out.messages[0].text.clone().unwrap();
    assert_eq!(body.chars().count(), 4096);
    assert_eq!(body.encode_utf16().count(), 4096);
    assert_eq!(body.len(), 6676);
    assert!(body.starts_with("Ingest line 001: "));
    assert!(body.ends_with("THE END."));

    let mut e = expect("long_text.json", u, UpdateKind::Message, d);
    e.users = vec![user(&OKSANA, d, u)];
    e.chats = vec![chat(&RUST_KYIV, d, u)];
    e.messages = vec![MessageRow {
        from_user_id: Some(OKSANA.id),
        text: Some(body),
        entities: js(json!([
            {"offset": 0, "length": 6, "type": "bold"},
            {"offset": 4088, "length": 8, "type": "italic"}
        ])),
        ..message(RUST_KYIV.id, 48226, 1760010200, u)
    }];
    check("long_text.json", e);
}

#[test]
fn album_photos_keep_their_group_and_their_largest_size() {
    let (d, u) = (Some(1760010300), 900000034);
    let mut e = expect("media_group_photo_1.json", u, UpdateKind::Message, d);
    e.users = vec![user(&PRIYA, d, u)];
    e.chats = vec![chat(&private(&PRIYA), d, u)];
    e.messages = vec![MessageRow {
        from_user_id: Some(PRIYA.id),
        media_group_id: text("13920458127364091"),
        media_kind: Some("photo"),
        media_file_id: text(
            "AgACAgIAAxkBAAPNgT48oOdoSXvPawQHuaKI3Nmb9dCdOAACpMrlf8FpnUXuUHPyNuyBcwEAAwIAA3kAAzYE",
        ),
        media_file_unique_id: text("AQADpMrlf8FpnUV5"),
        caption: text("Hackathon day 2 \u{1f4f8} #hackathon"),
        caption_entities: js(json!([{"offset": 19, "length": 10, "type": "hashtag"}])),
        ..message(PRIYA.id, 2201, 1760010300, u)
    }];
    check("media_group_photo_1.json", e);

    let u = 900000035;
    let mut e = expect("media_group_photo_2.json", u, UpdateKind::Message, d);
    e.users = vec![user(&PRIYA, d, u)];
    e.chats = vec![chat(&private(&PRIYA), d, u)];
    e.messages = vec![MessageRow {
        from_user_id: Some(PRIYA.id),
        media_group_id: text("13920458127364091"),
        media_kind: Some("photo"),
        media_file_id: text(
            "AgACAgIAAxkBAAMsRsg8oOdoLs0icuJYdUb7XcRF3n8TaAACiNlKR8-7KnP3SzfXOTWg0QEAAwIAA3kAAzYE",
        ),
        media_file_unique_id: text("AQADiNlKR8-7KnN5"),
        ..message(PRIYA.id, 2202, 1760010300, u)
    }];
    check("media_group_photo_2.json", e);
}

#[test]
fn a_forum_topic_message_keeps_its_thread_and_its_reply_is_not_a_message_row() {
    let (d, u) = (Some(1760010400), 900000036);
    let mut e = expect("forum_topic_message.json", u, UpdateKind::Message, d);
    e.users = vec![user(&PRIYA, d, u), user(&ALINA, d, u)];
    e.chats = vec![chat(&OSS_SUPPORT, d, u)];
    e.messages = vec![MessageRow {
        from_user_id: Some(PRIYA.id),
        message_thread_id: Some(5),
        is_topic_message: true,
        reply_to_message_id: Some(5),
        text: text("Crash on startup with RUST_LOG=debug, backtrace attached below"),
        entities: js(json!([{"offset": 22, "length": 14, "type": "code"}])),
        ..message(OSS_SUPPORT.id, 1876, 1760010400, u)
    }];
    check("forum_topic_message.json", e);
}

#[test]
fn a_message_forwarded_from_a_user_records_the_origin() {
    let (d, u) = (Some(1760010500), 900000037);
    let mut e = expect("forwarded_message.json", u, UpdateKind::Message, d);
    e.users = vec![user(&MARCO, d, u), user(&ALINA, d, u)];
    e.chats = vec![chat(&private(&MARCO), d, u)];
    e.messages = vec![MessageRow {
        from_user_id: Some(MARCO.id),
        text: text("Meetup moved to 19:30, same venue."),
        forward_origin_type: text("user"),
        forward_origin_user_id: Some(ALINA.id),
        forward_origin_date: Some(1759982000),
        forward_origin: js(
            json!({"type": "user", "sender_user": alina_json(), "date": 1759982000}),
        ),
        ..message(MARCO.id, 1320, 1760010500, u)
    }];
    check("forwarded_message.json", e);
}

#[test]
fn a_message_forwarded_from_a_hidden_user_has_an_origin_without_ids() {
    let (d, u) = (Some(1760010520), 900000038);
    let mut e = expect("forwarded_hidden_user.json", u, UpdateKind::Message, d);
    e.users = vec![user(&MARCO, d, u)];
    e.chats = vec![chat(&private(&MARCO), d, u)];
    e.messages = vec![MessageRow {
        from_user_id: Some(MARCO.id),
        text: text("Anyone selling a ticket for Saturday?"),
        forward_origin_type: text("hidden_user"),
        forward_origin_date: Some(1759827200),
        forward_origin: js(
            json!({"type": "hidden_user", "sender_user_name": "Serhii P.",
                                  "date": 1759827200}),
        ),
        ..message(MARCO.id, 1321, 1760010520, u)
    }];
    check("forwarded_hidden_user.json", e);
}

#[test]
fn service_messages_name_their_service_kind_and_yield_the_members_as_users() {
    let (d, u) = (Some(1760010600), 900000039);
    let mut e = expect("new_chat_members.json", u, UpdateKind::Message, d);
    e.users = vec![user(&ALINA, d, u), user(&OKSANA, d, u), user(&LUKAS, d, u)];
    e.chats = vec![chat(&RUST_KYIV, d, u)];
    e.messages = vec![MessageRow {
        from_user_id: Some(ALINA.id),
        service_kind: Some("new_chat_members"),
        ..message(RUST_KYIV.id, 48230, 1760010600, u)
    }];
    check("new_chat_members.json", e);

    let (d, u) = (Some(1760010700), 900000040);
    let mut e = expect("left_chat_member.json", u, UpdateKind::Message, d);
    e.users = vec![user(&ALINA, d, u), user(&LUKAS, d, u)];
    e.chats = vec![chat(&RUST_KYIV, d, u)];
    e.messages = vec![MessageRow {
        from_user_id: Some(ALINA.id),
        service_kind: Some("left_chat_member"),
        ..message(RUST_KYIV.id, 48241, 1760010700, u)
    }];
    check("left_chat_member.json", e);
}

#[test]
fn file_media_record_the_kind_and_the_file_not_the_thumbnail() {
    let (d, u) = (Some(1760010800), 900000041);
    let mut e = expect("message_with_document.json", u, UpdateKind::Message, d);
    e.users = vec![user(&ALINA, d, u)];
    e.chats = vec![chat(&RUST_KYIV, d, u)];
    e.messages = vec![MessageRow {
        from_user_id: Some(ALINA.id),
        caption: text("Slides from last night \u{1f980}"),
        media_kind: Some("document"),
        media_file_id: text("BQACAgIAAxkBAAP4PsgwoudoAAJgWwjpXL_EQd2598LJpJjLNgQ"),
        media_file_unique_id: text("AgCA7wZVRjDEXr8"),
        ..message(RUST_KYIV.id, 48244, 1760010800, u)
    }];
    check("message_with_document.json", e);

    let (d, u) = (Some(1760010900), 900000042);
    let mut e = expect("message_with_video.json", u, UpdateKind::Message, d);
    e.users = vec![user(&KENJI, d, u)];
    e.chats = vec![chat(&RUST_KYIV, d, u)];
    e.messages = vec![MessageRow {
        from_user_id: Some(KENJI.id),
        caption: text("Live demo of the ingest dashboard"),
        caption_entities: js(json!([{"offset": 0, "length": 9, "type": "italic"}])),
        media_kind: Some("video"),
        media_file_id: text("BAACAgIAAxkBAANSHXCUoudoAAJhLyOcKUhHUt65lA--RyYoNgQ"),
        media_file_unique_id: text("AgD7S1J1PfGc-L8"),
        ..message(RUST_KYIV.id, 48246, 1760010900, u)
    }];
    check("message_with_video.json", e);

    let (d, u) = (Some(1760011000), 900000043);
    let mut e = expect("message_with_sticker.json", u, UpdateKind::Message, d);
    e.users = vec![user(&KENJI, d, u)];
    e.chats = vec![chat(&private(&KENJI), d, u)];
    e.messages = vec![MessageRow {
        from_user_id: Some(KENJI.id),
        media_kind: Some("sticker"),
        media_file_id: text("CAACAgIAAxkBAAOoCt34oudoAALJ0gV-sL6B4Owge-qSPtq3NgQ"),
        media_file_unique_id: text("AgAfPIKn-cYkZ_A"),
        ..message(KENJI.id, 1330, 1760011000, u)
    }];
    check("message_with_sticker.json", e);

    let (d, u) = (Some(1760011100), 900000044);
    let mut e = expect("message_with_voice.json", u, UpdateKind::Message, d);
    e.users = vec![user(&OKSANA, d, u)];
    e.chats = vec![chat(&private(&OKSANA), d, u)];
    e.messages = vec![MessageRow {
        from_user_id: Some(OKSANA.id),
        media_kind: Some("voice"),
        media_file_id: text("AwACAgIAAxkBAANj3yhco-doAAKp0dPyF0AZ8N54Pb_RekHENgQ"),
        media_file_unique_id: text("AgAcXH06n2n4IGo"),
        ..message(OKSANA.id, 1331, 1760011100, u)
    }];
    check("message_with_voice.json", e);
}

#[test]
fn a_location_is_media_without_a_file() {
    let (d, u) = (Some(1760011200), 900000045);
    let mut e = expect("message_with_location.json", u, UpdateKind::Message, d);
    e.users = vec![user(&OKSANA, d, u)];
    e.chats = vec![chat(&private(&OKSANA), d, u)];
    e.messages = vec![MessageRow {
        from_user_id: Some(OKSANA.id),
        media_kind: Some("location"),
        ..message(OKSANA.id, 1332, 1760011200, u)
    }];
    check("message_with_location.json", e);
}

// ---- order independence across fixtures ------------------------------------------------------

/// The consumer's last-writer-wins rule, in memory: a row replaces the stored one only when its
/// (src_date, src_update_id) is greater.
fn converge(order: &[&str]) -> MessageRow {
    let mut stored: Option<MessageRow> = None;
    for name in order {
        for row in normalize(BOT, &read(name)).unwrap().messages {
            let newer = stored
                .as_ref()
                .is_none_or(|s| (row.src_date, row.src_update_id) > (s.src_date, s.src_update_id));
            if newer {
                stored = Some(row);
            }
        }
    }
    stored.expect("a message row")
}

#[test]
fn an_edit_that_arrives_before_its_message_survives_the_message() {
    for pair in [
        ["message.json", "edited_message.json"],
        ["channel_post.json", "edited_channel_post.json"],
        ["business_message.json", "edited_business_message.json"],
    ] {
        let in_order = converge(&pair);
        let reversed = converge(&[pair[1], pair[0]]);
        let duplicated = converge(&[pair[1], pair[0], pair[1], pair[0]]);
        assert_eq!(in_order, reversed, "{pair:?}");
        assert_eq!(in_order, duplicated, "{pair:?}");
        assert!(in_order.edit_date.is_some(), "{pair:?}: the edit wins");
    }
}

#[test]
fn message_id_zero_does_not_collide_with_a_real_message_of_the_same_chat() {
    let zero = normalize(BOT, &read("message_id_zero.json")).unwrap();
    let real = normalize(BOT, &read("business_message.json")).unwrap();
    let key = |m: &MessageRow| (m.chat_id, m.business_connection_id.clone(), m.message_id);
    assert_ne!(key(&zero.messages[0]), key(&real.messages[0]));
}

#[test]
fn the_bot_id_is_carried_into_the_rows_and_changes_nothing_else() {
    for name in ALL_FIXTURES {
        let a = normalize(1, &read(name)).unwrap();
        let b = normalize(2, &read(name)).unwrap();
        assert_eq!(a.raw.bot_id, 1);
        assert_eq!(b.raw.bot_id, 2);
        assert!(a.users.iter().all(|r| r.bot_id == 1), "{name}");
        assert!(b.messages.iter().all(|r| r.bot_id == 2), "{name}");
        assert_eq!(a.derived_row_count(), b.derived_row_count(), "{name}");
    }
}
