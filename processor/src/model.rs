//! The slice of the Telegram Bot API object model that the projections read.
//!
//! Only the fields a table needs are declared; serde ignores every other field, so new fields
//! Telegram adds never break parsing. A field the API marks optional is `Option` here; a field it
//! marks required is required only when the row cannot exist without it (a message needs
//! `message_id`, `date` and `chat`). Parts stored as JSON text are kept as [`Value`].
//!
//! These types deserialize from an already parsed `&Value` (after the lone-surrogate rewrite of
//! [`crate::json_text`]), so every `String` here is valid UTF-8 without U+0000.

use serde::Deserialize;
use serde_json::Value;

/// Any object identified by an integer `id` (User, Chat) where only the id is needed.
#[derive(Debug, Deserialize)]
pub(crate) struct Id {
    pub id: i64,
}

/// A message referenced by id (reply_to_message).
#[derive(Debug, Deserialize)]
pub(crate) struct MessageRef {
    pub message_id: i64,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Message {
    pub message_id: i64,
    pub message_thread_id: Option<i64>,
    pub from: Option<Id>,
    pub sender_chat: Option<Id>,
    pub sender_business_bot: Option<Id>,
    pub date: i64,
    pub business_connection_id: Option<String>,
    pub chat: Id,
    pub forward_origin: Option<Value>,
    pub is_topic_message: Option<bool>,
    pub reply_to_message: Option<MessageRef>,
    pub via_bot: Option<Id>,
    pub edit_date: Option<i64>,
    pub media_group_id: Option<String>,
    pub author_signature: Option<String>,
    pub text: Option<String>,
    pub entities: Option<Value>,
    pub caption: Option<String>,
    pub caption_entities: Option<Value>,
}

/// MessageOrigin (all four variants in one shape; absent fields are None).
#[derive(Debug, Deserialize)]
pub(crate) struct MessageOrigin {
    #[serde(rename = "type")]
    pub origin_type: String,
    pub date: Option<i64>,
    pub sender_user: Option<Id>,
    pub sender_chat: Option<Id>,
    pub chat: Option<Id>,
    pub message_id: Option<i64>,
}

/// One size of a photo, or any file-bearing media object.
#[derive(Debug, Deserialize)]
pub(crate) struct FileRef {
    pub file_id: Option<String>,
    pub file_unique_id: Option<String>,
    pub width: Option<i64>,
    pub height: Option<i64>,
    pub file_size: Option<i64>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct MessageReactionUpdated {
    pub chat: Id,
    pub message_id: i64,
    pub user: Option<Id>,
    pub actor_chat: Option<Id>,
    pub date: i64,
    pub old_reaction: Option<Value>,
    pub new_reaction: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct MessageReactionCountUpdated {
    pub chat: Id,
    pub message_id: i64,
    pub date: i64,
    pub reactions: Option<Value>,
}

/// ChatMember: only the status and the member's user; the whole object is kept as JSON text.
#[derive(Debug, Deserialize)]
pub(crate) struct ChatMember {
    pub status: Option<String>,
    pub user: Option<Id>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ChatMemberUpdated {
    pub chat: Id,
    pub from: Id,
    pub date: i64,
    pub old_chat_member: Option<Value>,
    pub new_chat_member: Value,
    pub invite_link: Option<Value>,
    pub via_join_request: Option<bool>,
    pub via_chat_folder_invite_link: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ChatJoinRequest {
    pub chat: Id,
    pub from: Id,
    pub user_chat_id: Option<i64>,
    pub date: i64,
    pub bio: Option<String>,
    pub invite_link: Option<Value>,
}

/// MaybeInaccessibleMessage inside a callback query: only where it is.
#[derive(Debug, Deserialize)]
pub(crate) struct CallbackMessage {
    pub message_id: i64,
    pub chat: Id,
}

#[derive(Debug, Deserialize)]
pub(crate) struct CallbackQuery {
    pub id: String,
    pub from: Id,
    pub message: Option<CallbackMessage>,
    pub inline_message_id: Option<String>,
    pub chat_instance: Option<String>,
    pub data: Option<String>,
    pub game_short_name: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Poll {
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

#[derive(Debug, Deserialize)]
pub(crate) struct PollAnswer {
    pub poll_id: String,
    pub voter_chat: Option<Id>,
    pub user: Option<Id>,
    pub option_ids: Value,
}

#[derive(Debug, Deserialize)]
pub(crate) struct BusinessConnection {
    pub id: String,
    pub user: Id,
    pub user_chat_id: Option<i64>,
    pub date: i64,
    pub can_reply: Option<bool>,
    pub rights: Option<Value>,
    pub is_enabled: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct BusinessMessagesDeleted {
    pub business_connection_id: String,
    pub chat: Id,
    pub message_ids: Vec<i64>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct InlineQuery {
    pub id: String,
    pub from: Id,
    pub query: String,
    pub offset: Option<String>,
    pub chat_type: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ChosenInlineResult {
    pub result_id: String,
    pub from: Id,
    pub query: String,
    pub inline_message_id: Option<String>,
}
