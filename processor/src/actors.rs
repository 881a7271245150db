//! Finds every user and chat an update mentions, wherever it appears.
//!
//! Rather than listing the places a `User` or `Chat` can appear (from, sender_chat, forward
//! origins, new chat members, via_bot, replies, reactions, voters, members, boosts, text_mention
//! entities, …, and whatever later Bot API versions add), the whole content is walked and every
//! object with the shape of one is taken:
//!
//! - a `User` is an object with an integer `id` and a boolean `is_bot` (no other Bot API object
//!   has `is_bot`);
//! - a `Chat` is an object with an integer `id` and a `type` of "private", "group", "supergroup"
//!   or "channel" (message origins share those `type` values but have no `id`).
//!
//! The walk is breadth-first, so the update's own actors are seen before the copies nested in
//! replies and pinned messages. When one id is seen several times, the first observation wins
//! field by field and later ones only fill fields it lacks (e.g. `language_code`, which only the
//! acting user carries). Output order is first-seen order, so the result is deterministic, and
//! each id appears once.

use std::collections::{HashMap, VecDeque};

use serde_json::{Map, Value};

use crate::rows::{ChatRow, UserRow};

const CHAT_TYPES: [&str; 4] = ["private", "group", "supergroup", "channel"];

/// Users and chats found in `content`, each with the given ordering key.
pub(crate) fn collect(
    bot_id: i64,
    src_update_id: i64,
    src_date: Option<i64>,
    content: &Value,
) -> (Vec<UserRow>, Vec<ChatRow>) {
    let mut users: Vec<UserRow> = Vec::new();
    let mut chats: Vec<ChatRow> = Vec::new();
    let mut user_index: HashMap<i64, usize> = HashMap::new();
    let mut chat_index: HashMap<i64, usize> = HashMap::new();

    let mut queue: VecDeque<&Value> = VecDeque::from([content]);
    while let Some(value) = queue.pop_front() {
        match value {
            Value::Object(object) => {
                if let Some(user) = user_of(object, bot_id, src_update_id, src_date) {
                    match user_index.get(&user.user_id) {
                        Some(&at) => merge_user(&mut users[at], user),
                        None => {
                            user_index.insert(user.user_id, users.len());
                            users.push(user);
                        }
                    }
                }
                if let Some(chat) = chat_of(object, bot_id, src_update_id, src_date) {
                    match chat_index.get(&chat.chat_id) {
                        Some(&at) => merge_chat(&mut chats[at], chat),
                        None => {
                            chat_index.insert(chat.chat_id, chats.len());
                            chats.push(chat);
                        }
                    }
                }
                queue.extend(object.values());
            }
            Value::Array(items) => queue.extend(items.iter()),
            _ => {}
        }
    }
    (users, chats)
}

fn text(object: &Map<String, Value>, key: &str) -> Option<String> {
    object.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn user_of(
    object: &Map<String, Value>,
    bot_id: i64,
    src_update_id: i64,
    src_date: Option<i64>,
) -> Option<UserRow> {
    let user_id = object.get("id")?.as_i64()?;
    let is_bot = object.get("is_bot")?.as_bool()?;
    Some(UserRow {
        bot_id,
        user_id,
        is_bot,
        first_name: text(object, "first_name"),
        last_name: text(object, "last_name"),
        username: text(object, "username"),
        language_code: text(object, "language_code"),
        is_premium: object.get("is_premium").and_then(Value::as_bool),
        src_date,
        src_update_id,
    })
}

fn chat_of(
    object: &Map<String, Value>,
    bot_id: i64,
    src_update_id: i64,
    src_date: Option<i64>,
) -> Option<ChatRow> {
    let chat_id = object.get("id")?.as_i64()?;
    let chat_type = object.get("type")?.as_str()?;
    if !CHAT_TYPES.contains(&chat_type) {
        return None;
    }
    Some(ChatRow {
        bot_id,
        chat_id,
        chat_type: chat_type.to_owned(),
        title: text(object, "title"),
        username: text(object, "username"),
        first_name: text(object, "first_name"),
        last_name: text(object, "last_name"),
        is_forum: object.get("is_forum").and_then(Value::as_bool),
        src_date,
        src_update_id,
    })
}

fn fill<T>(kept: &mut Option<T>, later: Option<T>) {
    if kept.is_none() {
        *kept = later;
    }
}

fn merge_user(kept: &mut UserRow, later: UserRow) {
    fill(&mut kept.first_name, later.first_name);
    fill(&mut kept.last_name, later.last_name);
    fill(&mut kept.username, later.username);
    fill(&mut kept.language_code, later.language_code);
    fill(&mut kept.is_premium, later.is_premium);
}

fn merge_chat(kept: &mut ChatRow, later: ChatRow) {
    fill(&mut kept.title, later.title);
    fill(&mut kept.username, later.username);
    fill(&mut kept.first_name, later.first_name);
    fill(&mut kept.last_name, later.last_name);
    fill(&mut kept.is_forum, later.is_forum);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_user_is_found_at_any_depth_including_text_mention_entities() {
        let content = json!({
            "entities": [{"type": "text_mention", "offset": 0, "length": 3,
                          "user": {"id": 7, "is_bot": false, "first_name": "Deep"}}]
        });
        let (users, chats) = collect(1, 10, Some(5), &content);
        assert_eq!(users.len(), 1);
        assert_eq!(users[0].user_id, 7);
        assert_eq!(users[0].first_name.as_deref(), Some("Deep"));
        assert_eq!((users[0].src_date, users[0].src_update_id), (Some(5), 10));
        assert!(chats.is_empty());
    }

    #[test]
    fn the_shallowest_observation_wins_and_deeper_ones_only_fill_gaps() {
        let content = json!({
            "reply_to_message": {"from": {"id": 7, "is_bot": false, "first_name": "Old",
                                          "username": "old_name"}},
            "from": {"id": 7, "is_bot": false, "first_name": "New", "language_code": "de"}
        });
        let (users, _) = collect(1, 10, None, &content);
        assert_eq!(users.len(), 1);
        assert_eq!(users[0].first_name.as_deref(), Some("New"));
        assert_eq!(users[0].language_code.as_deref(), Some("de"));
        assert_eq!(users[0].username.as_deref(), Some("old_name"));
    }

    #[test]
    fn a_message_origin_of_type_channel_is_not_a_chat_but_its_chat_is() {
        let content = json!({
            "forward_origin": {"type": "channel", "date": 1, "message_id": 3,
                               "chat": {"id": -100, "type": "channel", "title": "News"}}
        });
        let (users, chats) = collect(1, 10, None, &content);
        assert!(users.is_empty());
        assert_eq!(chats.len(), 1);
        assert_eq!(chats[0].chat_id, -100);
        assert_eq!(chats[0].title.as_deref(), Some("News"));
    }

    #[test]
    fn objects_with_a_non_integer_id_or_an_unknown_chat_type_are_ignored() {
        let content = json!([
            {"id": "7", "is_bot": false},
            {"id": 7.5, "is_bot": false},
            {"id": 18446744073709551615u64, "is_bot": true},
            {"id": 9, "type": "sender"},
            {"id": 9, "type": "emoji"}
        ]);
        let (users, chats) = collect(1, 10, None, &content);
        assert!(users.is_empty());
        assert!(chats.is_empty());
    }

    #[test]
    fn each_id_appears_once_in_first_seen_order() {
        let content = json!({
            "a": [{"id": 2, "is_bot": false}, {"id": 1, "is_bot": false}],
            "b": {"id": 2, "is_bot": false}
        });
        let (users, _) = collect(1, 10, None, &content);
        let ids: Vec<_> = users.iter().map(|u| u.user_id).collect();
        assert_eq!(ids, [2, 1]);
    }
}
