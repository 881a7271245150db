//! The oracle's own reading of update JSON: the Bot API objects that the traffic generator
//! (`botsim::traffic`), the fault matrix's special updates and `testkit::updates` emit, as serde
//! types written for the oracle. Nothing here comes from the processor: its model and its
//! mapping are what the oracle checks.
//!
//! Optional fields are `Option` (absent or `null` → `None`); fields stored as JSON text are kept
//! as [`Value`]. Unknown fields are ignored, as the schema-drift contract requires (fields a
//! newer Bot API adds have no effect on the projections).
//!
//! [`sanitise`] applies the one documented text rule (processor's contract, `0001_init.sql`):
//! typed columns and stored JSON never hold `\u0000` or a lone UTF-16 surrogate; each becomes
//! U+FFFD. It rewrites the escapes in the JSON text before serde sees it (serde refuses lone
//! surrogates), leaving every other byte as it was.

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct User {
    pub id: i64,
    pub is_bot: bool,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub username: Option<String>,
    pub language_code: Option<String>,
    pub is_premium: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Chat {
    pub id: i64,
    #[serde(rename = "type")]
    pub kind: String,
    pub title: Option<String>,
    pub username: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub is_forum: Option<bool>,
}

/// A file as a photo size or a document carries it.
#[derive(Debug, Clone, Deserialize)]
pub struct File {
    pub file_id: Option<String>,
    pub file_unique_id: Option<String>,
    pub width: Option<i64>,
    pub height: Option<i64>,
    pub file_size: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Poll {
    pub id: String,
    pub question: Option<String>,
    pub question_entities: Option<Value>,
    pub options: Option<Value>,
    pub total_voter_count: Option<i64>,
    pub is_closed: Option<bool>,
    pub is_anonymous: Option<bool>,
    #[serde(rename = "type")]
    pub poll_type: Option<String>,
    pub allows_multiple_answers: Option<bool>,
    pub correct_option_id: Option<i64>,
    pub explanation: Option<String>,
    pub explanation_entities: Option<Value>,
    pub open_period: Option<i64>,
    pub close_date: Option<i64>,
}

/// A message, top-level or nested (a reply's quoted message, a callback's message).
#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    pub message_id: i64,
    pub message_thread_id: Option<i64>,
    pub from: Option<User>,
    pub sender_chat: Option<Chat>,
    pub sender_business_bot: Option<User>,
    pub via_bot: Option<User>,
    pub chat: Chat,
    pub date: i64,
    pub business_connection_id: Option<String>,
    pub is_topic_message: Option<bool>,
    pub reply_to_message: Option<Box<Message>>,
    pub edit_date: Option<i64>,
    pub media_group_id: Option<String>,
    pub author_signature: Option<String>,
    pub text: Option<String>,
    pub entities: Option<Value>,
    pub caption: Option<String>,
    pub caption_entities: Option<Value>,
    pub forward_origin: Option<Value>,
    // Media the generator sends.
    pub photo: Option<Vec<File>>,
    pub document: Option<File>,
    pub poll: Option<Poll>,
    // Service members the generator sends (and the legacy copies Telegram adds to a join).
    pub new_chat_members: Option<Vec<User>>,
    pub new_chat_participant: Option<User>,
    pub new_chat_member: Option<User>,
    pub left_chat_member: Option<User>,
    pub left_chat_participant: Option<User>,
    pub forum_topic_created: Option<Value>,
}

/// MessageOrigin, every variant in one shape.
#[derive(Debug, Clone, Deserialize)]
pub struct Origin {
    #[serde(rename = "type")]
    pub kind: String,
    pub date: Option<i64>,
    pub sender_user: Option<User>,
    pub sender_chat: Option<Chat>,
    pub chat: Option<Chat>,
    pub message_id: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MessageReactionUpdated {
    pub chat: Chat,
    pub message_id: i64,
    pub user: Option<User>,
    pub actor_chat: Option<Chat>,
    pub date: i64,
    pub old_reaction: Option<Value>,
    pub new_reaction: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MessageReactionCountUpdated {
    pub chat: Chat,
    pub message_id: i64,
    pub date: i64,
    pub reactions: Option<Value>,
}

/// ChatMember, only what a member event stores beside its JSON.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatMember {
    pub status: Option<String>,
    pub user: Option<User>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatMemberUpdated {
    pub chat: Chat,
    pub from: User,
    pub date: i64,
    pub old_chat_member: Option<Value>,
    pub new_chat_member: Value,
    pub invite_link: Option<Value>,
    pub via_join_request: Option<bool>,
    pub via_chat_folder_invite_link: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PollAnswer {
    pub poll_id: String,
    pub voter_chat: Option<Chat>,
    pub user: Option<User>,
    pub option_ids: Value,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CallbackQuery {
    pub id: String,
    pub from: User,
    pub message: Option<Message>,
    pub inline_message_id: Option<String>,
    pub chat_instance: Option<String>,
    pub data: Option<String>,
    pub game_short_name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct InlineQuery {
    pub id: String,
    pub from: User,
    pub query: String,
    pub offset: Option<String>,
    pub chat_type: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChosenInlineResult {
    pub result_id: String,
    pub from: User,
    pub query: String,
    pub inline_message_id: Option<String>,
}

/// The JSON text with every `\u0000` escape and every lone surrogate escape replaced by
/// `\ufffd` (same length); string boundaries and `\\` are respected.
pub fn sanitise(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = bytes.to_vec();
    let hex = |at: usize| -> Option<u32> {
        let digits = std::str::from_utf8(bytes.get(at..at + 4)?).ok()?;
        u32::from_str_radix(digits, 16).ok()
    };
    let (mut i, mut in_string) = (0, false);
    while i < bytes.len() {
        match (in_string, bytes[i]) {
            (false, b'"') => {
                in_string = true;
                i += 1;
            }
            (false, _) => i += 1,
            (true, b'"') => {
                in_string = false;
                i += 1;
            }
            (true, b'\\') if bytes.get(i + 1) == Some(&b'u') => {
                let Some(unit) = hex(i + 2) else {
                    i += 2;
                    continue;
                };
                let paired = (0xD800..0xDC00).contains(&unit)
                    && bytes.get(i + 6..i + 8) == Some(b"\\u")
                    && hex(i + 8).is_some_and(|low| (0xDC00..0xE000).contains(&low));
                if paired {
                    i += 12;
                    continue;
                }
                if unit == 0 || (0xD800..0xE000).contains(&unit) {
                    out[i..i + 6].copy_from_slice(b"\\ufffd");
                }
                i += 6;
            }
            (true, b'\\') => i += 2,
            (true, _) => i += 1,
        }
    }
    // Only ASCII escapes were replaced by ASCII of the same length: still UTF-8.
    String::from_utf8(out).unwrap_or_else(|_| text.to_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn nul_and_lone_surrogates_become_replacement_characters_and_pairs_survive() {
        let text = r#"{"a":"x\u0000y\ud800z\udc00","b":"\ud83d\ude80","c":"\\u0000"}"#;
        let value: Value = serde_json::from_str(&sanitise(text)).unwrap();
        assert_eq!(value["a"], "x\u{FFFD}y\u{FFFD}z\u{FFFD}");
        assert_eq!(value["b"], "🚀");
        assert_eq!(
            value["c"], "\\u0000",
            "an escaped backslash is not an escape"
        );
    }
}
