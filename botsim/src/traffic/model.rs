//! The subset of Bot API objects the traffic generator emits, serialised as Telegram does.
//!
//! Structs (not `serde_json::Value`) fix the field order, so the bytes for a seed are identical in
//! every build whatever serde_json features other crates enable. Optional fields are omitted when
//! absent, never `null`, as in Telegram's output.

use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub(crate) struct User {
    pub id: i64,
    pub is_bot: bool,
    pub first_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub language_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_premium: Option<bool>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct Chat {
    pub id: i64,
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_forum: Option<bool>,
}

impl Chat {
    /// The private chat with a user.
    pub fn private_with(user: &User) -> Self {
        Self {
            id: user.id,
            kind: "private",
            title: None,
            username: user.username.clone(),
            first_name: Some(user.first_name.clone()),
            last_name: user.last_name.clone(),
            is_forum: None,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct MessageEntity {
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// In UTF-16 code units, as Telegram counts.
    pub offset: usize,
    /// In UTF-16 code units.
    pub length: usize,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct PhotoSize {
    pub file_id: String,
    pub file_unique_id: String,
    pub file_size: u32,
    pub width: u32,
    pub height: u32,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct Document {
    pub file_name: String,
    pub mime_type: &'static str,
    pub file_id: String,
    pub file_unique_id: String,
    pub file_size: u32,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct PollOption {
    pub text: String,
    pub voter_count: u32,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct Poll {
    pub id: String,
    pub question: String,
    pub options: Vec<PollOption>,
    pub total_voter_count: u32,
    pub is_closed: bool,
    pub is_anonymous: bool,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub allows_multiple_answers: bool,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct ForumTopicCreated {
    pub name: String,
    pub icon_color: u32,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct InlineKeyboardButton {
    pub text: String,
    pub callback_data: String,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct InlineKeyboardMarkup {
    pub inline_keyboard: Vec<Vec<InlineKeyboardButton>>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct Message {
    pub message_id: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_thread_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<User>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender_chat: Option<Chat>,
    pub chat: Chat,
    pub date: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_topic_message: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_to_message: Option<Box<Message>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edit_date: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub author_signature: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entities: Option<Vec<MessageEntity>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub photo: Option<Vec<PhotoSize>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document: Option<Document>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caption: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub poll: Option<Poll>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_chat_participant: Option<User>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_chat_member: Option<User>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_chat_members: Option<Vec<User>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub left_chat_participant: Option<User>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub left_chat_member: Option<User>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forum_topic_created: Option<ForumTopicCreated>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_markup: Option<InlineKeyboardMarkup>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub(crate) struct ReactionType {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub emoji: &'static str,
}

impl ReactionType {
    pub fn emoji(emoji: &'static str) -> Self {
        Self {
            kind: "emoji",
            emoji,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct MessageReactionUpdated {
    pub chat: Chat,
    pub message_id: i64,
    pub user: User,
    pub date: i64,
    pub old_reaction: Vec<ReactionType>,
    pub new_reaction: Vec<ReactionType>,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct ReactionCount {
    #[serde(rename = "type")]
    pub kind: ReactionType,
    pub total_count: u32,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct MessageReactionCountUpdated {
    pub chat: Chat,
    pub message_id: i64,
    pub date: i64,
    pub reactions: Vec<ReactionCount>,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct ChatMember {
    pub status: &'static str,
    pub user: User,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct ChatMemberUpdated {
    pub chat: Chat,
    pub from: User,
    pub date: i64,
    pub old_chat_member: ChatMember,
    pub new_chat_member: ChatMember,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct PollAnswer {
    pub poll_id: String,
    pub user: User,
    pub option_ids: Vec<u32>,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct CallbackQuery {
    pub id: String,
    pub from: User,
    pub message: Message,
    pub chat_instance: String,
    pub data: String,
}
