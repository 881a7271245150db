//! The rows one update becomes: one struct per table, fields named exactly as the columns of
//! `migrations/0001_init.sql`.
//!
//! Guarantees the consumer relies on:
//! - every derived row carries `src_update_id` (= the update's `update_id`) and `src_date`
//!   (unix seconds of the source event, `None` when the update carries no date; the consumer
//!   stores 0 then). The last-writer-wins ordering key is (update-id epoch, `src_update_id`,
//!   `processor_version`); the epoch is the consumer's (`migrations/0003_update_order.sql`), so
//!   `src_date` orders nothing and no receive time enters a row;
//! - within one update, each table's rows have distinct keys (observations of the same user or
//!   chat are merged), so a batch upsert never touches a row twice because of one update;
//! - every `String` is free of U+0000 and is valid UTF-8, so PostgreSQL `text` accepts it;
//!   fields documented as JSON text are `jsonb`-safe (no `\u0000` escapes, no lone surrogates);
//! - `processor_version` is not a field: it is [`crate::PROCESSOR_VERSION`] for every row.

use crate::kind::UpdateKind;

/// Everything one update becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized {
    pub kind: UpdateKind,
    /// The update's source date as used for every derived row.
    pub src_date: Option<i64>,
    pub raw: RawUpdateRow,
    pub chats: Vec<ChatRow>,
    pub users: Vec<UserRow>,
    pub messages: Vec<MessageRow>,
    pub message_edits: Vec<MessageEditRow>,
    pub message_reactions: Vec<MessageReactionRow>,
    pub message_reaction_counts: Vec<MessageReactionCountRow>,
    pub chat_member_events: Vec<ChatMemberEventRow>,
    pub callback_queries: Vec<CallbackQueryRow>,
    pub polls: Vec<PollRow>,
    pub poll_answers: Vec<PollAnswerRow>,
    pub deleted_business_messages: Vec<DeletedBusinessMessageRow>,
    pub business_connections: Vec<BusinessConnectionRow>,
    pub inline_queries: Vec<InlineQueryRow>,
    pub chosen_inline_results: Vec<ChosenInlineResultRow>,
    /// Why the kind's typed projection was skipped (its content does not match the Bot API
    /// shape this processor models), if it was. The raw row and the users/chats found in the
    /// content are still produced; the consumer counts this, it is not a rejection.
    pub projection_error: Option<String>,
}

impl Normalized {
    /// Number of derived rows (everything except the raw row).
    pub fn derived_row_count(&self) -> usize {
        self.chats.len()
            + self.users.len()
            + self.messages.len()
            + self.message_edits.len()
            + self.message_reactions.len()
            + self.message_reaction_counts.len()
            + self.chat_member_events.len()
            + self.callback_queries.len()
            + self.polls.len()
            + self.poll_answers.len()
            + self.deleted_business_messages.len()
            + self.business_connections.len()
            + self.inline_queries.len()
            + self.chosen_inline_results.len()
    }

    /// Releases the spare capacity of every row list. A list grown by `push` holds room for at
    /// least four rows, and a row struct is hundreds of bytes, so a typical update (one message,
    /// one user, one chat) carried several kilobytes of empty slots while it waited in a batch.
    pub fn shrink_to_fit(&mut self) {
        self.chats.shrink_to_fit();
        self.users.shrink_to_fit();
        self.messages.shrink_to_fit();
        self.message_edits.shrink_to_fit();
        self.message_reactions.shrink_to_fit();
        self.message_reaction_counts.shrink_to_fit();
        self.chat_member_events.shrink_to_fit();
        self.callback_queries.shrink_to_fit();
        self.polls.shrink_to_fit();
        self.poll_answers.shrink_to_fit();
        self.deleted_business_messages.shrink_to_fit();
        self.business_connections.shrink_to_fit();
        self.inline_queries.shrink_to_fit();
        self.chosen_inline_results.shrink_to_fit();
    }
}

/// `raw_updates`: the update exactly as received. Key (bot_id, update_id, payload_sha256).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawUpdateRow {
    pub bot_id: i64,
    pub update_id: i64,
    /// The kind's key ("message", …, or an unknown key verbatim; "" when there is none).
    pub update_type: String,
    /// The input bytes, unchanged: the record of truth.
    pub payload_bytes: Vec<u8>,
    pub payload_sha256: [u8; 32],
    /// Whether PostgreSQL accepts `payload_bytes` as `jsonb`. Not a column: the consumer stores
    /// `payload` = the bytes as `jsonb` when true and NULL when false.
    pub jsonb_ok: bool,
}

/// `chats`: the latest observation of a chat. Key (bot_id, chat_id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatRow {
    pub bot_id: i64,
    pub chat_id: i64,
    /// "private", "group", "supergroup" or "channel".
    pub chat_type: String,
    pub title: Option<String>,
    pub username: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub is_forum: Option<bool>,
    pub src_date: Option<i64>,
    pub src_update_id: i64,
}

/// `users`: the latest observation of a user. Key (bot_id, user_id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    pub bot_id: i64,
    pub user_id: i64,
    pub is_bot: bool,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub username: Option<String>,
    pub language_code: Option<String>,
    pub is_premium: Option<bool>,
    pub src_date: Option<i64>,
    pub src_update_id: i64,
}

/// `messages`: the latest version of a message. Key (bot_id, chat_id, business_connection_id,
/// message_id). `src_date` is `edit_date` when present, else `date`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRow {
    pub bot_id: i64,
    pub chat_id: i64,
    /// "" for messages outside a business connection.
    pub business_connection_id: String,
    pub message_id: i64,
    pub message_thread_id: Option<i64>,
    pub is_topic_message: bool,
    pub is_channel_post: bool,
    pub from_user_id: Option<i64>,
    pub sender_chat_id: Option<i64>,
    pub sender_business_bot_id: Option<i64>,
    pub via_bot_id: Option<i64>,
    pub date: i64,
    pub edit_date: Option<i64>,
    pub text: Option<String>,
    /// JSON text of the `entities` array.
    pub entities: Option<String>,
    pub caption: Option<String>,
    /// JSON text of the `caption_entities` array.
    pub caption_entities: Option<String>,
    /// The content member present: "photo", "video", "sticker", "poll", … (see `media_kind`).
    pub media_kind: Option<&'static str>,
    /// `file_id` of the media (the largest size of a photo).
    pub media_file_id: Option<String>,
    pub media_file_unique_id: Option<String>,
    /// The service member present: "new_chat_members", "pinned_message", …
    pub service_kind: Option<&'static str>,
    pub media_group_id: Option<String>,
    pub author_signature: Option<String>,
    pub reply_to_message_id: Option<i64>,
    /// "user", "hidden_user", "chat" or "channel".
    pub forward_origin_type: Option<String>,
    pub forward_origin_user_id: Option<i64>,
    pub forward_origin_chat_id: Option<i64>,
    pub forward_origin_message_id: Option<i64>,
    pub forward_origin_date: Option<i64>,
    /// JSON text of the whole `forward_origin` object.
    pub forward_origin: Option<String>,
    pub src_date: Option<i64>,
    pub src_update_id: i64,
}

/// `message_edits`: one version of an edited message. Key (bot_id, chat_id,
/// business_connection_id, message_id, src_update_id): `edit_date` has one-second resolution, so
/// the update is what tells two edits apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageEditRow {
    pub bot_id: i64,
    pub chat_id: i64,
    pub business_connection_id: String,
    pub message_id: i64,
    pub edit_date: Option<i64>,
    pub is_channel_post: bool,
    pub text: Option<String>,
    pub entities: Option<String>,
    pub caption: Option<String>,
    pub caption_entities: Option<String>,
    pub media_kind: Option<&'static str>,
    pub media_file_id: Option<String>,
    pub media_file_unique_id: Option<String>,
    pub src_date: Option<i64>,
    pub src_update_id: i64,
}

/// `message_reactions`: the current reaction set of one actor on one message. Key (bot_id,
/// chat_id, message_id, actor_type, actor_id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageReactionRow {
    pub bot_id: i64,
    pub chat_id: i64,
    pub message_id: i64,
    /// "user", or "chat" for an anonymous reaction on behalf of `actor_chat`.
    pub actor_type: &'static str,
    pub actor_id: i64,
    /// JSON text of `new_reaction` (the current set; `[]` when all were removed).
    pub new_reaction: String,
    /// JSON text of `old_reaction`.
    pub old_reaction: String,
    pub date: i64,
    pub src_date: Option<i64>,
    pub src_update_id: i64,
}

/// `message_reaction_counts`: anonymous reaction totals of a message. Key (bot_id, chat_id,
/// message_id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageReactionCountRow {
    pub bot_id: i64,
    pub chat_id: i64,
    pub message_id: i64,
    /// JSON text of the `reactions` array.
    pub reactions: String,
    pub date: i64,
    pub src_date: Option<i64>,
    pub src_update_id: i64,
}

/// `chat_member_events`: my_chat_member, chat_member and chat_join_request updates. Key (bot_id,
/// chat_id, user_id, src_update_id): each event is history, not state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMemberEventRow {
    pub bot_id: i64,
    pub chat_id: i64,
    /// The member whose status changed, or who asks to join.
    pub user_id: i64,
    /// "my_chat_member", "chat_member" or "chat_join_request".
    pub event_kind: &'static str,
    /// Who performed the change (`from`); for a join request, the requester.
    pub actor_user_id: i64,
    pub date: i64,
    pub old_status: Option<String>,
    pub new_status: Option<String>,
    /// JSON text of `old_chat_member` / `new_chat_member`.
    pub old_chat_member: Option<String>,
    pub new_chat_member: Option<String>,
    /// JSON text of `invite_link`.
    pub invite_link: Option<String>,
    pub via_join_request: Option<bool>,
    pub via_chat_folder_invite_link: Option<bool>,
    /// Join requests: the private chat with the requester, and their bio.
    pub user_chat_id: Option<i64>,
    pub bio: Option<String>,
    pub src_date: Option<i64>,
    pub src_update_id: i64,
}

/// `callback_queries`. Key (bot_id, callback_query_id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackQueryRow {
    pub bot_id: i64,
    pub callback_query_id: String,
    pub from_user_id: i64,
    pub chat_instance: Option<String>,
    pub data: Option<String>,
    pub game_short_name: Option<String>,
    pub inline_message_id: Option<String>,
    /// The message with the button, when it was sent by the bot in a chat.
    pub message_chat_id: Option<i64>,
    pub message_id: Option<i64>,
    pub src_date: Option<i64>,
    pub src_update_id: i64,
}

/// `polls`: the latest state of a poll. Key (bot_id, poll_id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollRow {
    pub bot_id: i64,
    pub poll_id: String,
    pub question: Option<String>,
    /// JSON text of `question_entities`.
    pub question_entities: Option<String>,
    /// JSON text of the `options` array (with vote counts).
    pub options: Option<String>,
    pub total_voter_count: Option<i64>,
    pub is_closed: Option<bool>,
    pub is_anonymous: Option<bool>,
    /// "regular" or "quiz".
    pub poll_type: Option<String>,
    pub allows_multiple_answers: Option<bool>,
    pub correct_option_id: Option<i64>,
    pub explanation: Option<String>,
    pub explanation_entities: Option<String>,
    pub open_period: Option<i64>,
    pub close_date: Option<i64>,
    pub src_date: Option<i64>,
    pub src_update_id: i64,
}

/// `poll_answers`: a voter's current answer. Key (bot_id, poll_id, voter_type, voter_id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollAnswerRow {
    pub bot_id: i64,
    pub poll_id: String,
    /// "user", or "chat" when the vote was cast on behalf of `voter_chat`.
    pub voter_type: &'static str,
    pub voter_id: i64,
    /// JSON text of `option_ids` (`[]` when the vote was retracted).
    pub option_ids: String,
    pub src_date: Option<i64>,
    pub src_update_id: i64,
}

/// `deleted_business_messages`: a mark that a business message was deleted. Key (bot_id,
/// business_connection_id, chat_id, message_id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletedBusinessMessageRow {
    pub bot_id: i64,
    pub business_connection_id: String,
    pub chat_id: i64,
    pub message_id: i64,
    pub src_date: Option<i64>,
    pub src_update_id: i64,
}

/// `business_connections`: the latest state of a connection. Key (bot_id,
/// business_connection_id). `date` (when the connection was established) does not order its
/// updates, so `src_date` is None; like every row, the update id orders them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusinessConnectionRow {
    pub bot_id: i64,
    pub business_connection_id: String,
    pub user_id: i64,
    pub user_chat_id: Option<i64>,
    pub date: i64,
    pub can_reply: Option<bool>,
    /// JSON text of `rights`.
    pub rights: Option<String>,
    pub is_enabled: Option<bool>,
    pub src_date: Option<i64>,
    pub src_update_id: i64,
}

/// `inline_queries`. Key (bot_id, inline_query_id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InlineQueryRow {
    pub bot_id: i64,
    pub inline_query_id: String,
    pub from_user_id: i64,
    pub query: String,
    /// The API's `offset` (renamed: OFFSET is an SQL keyword).
    pub query_offset: Option<String>,
    pub chat_type: Option<String>,
    pub src_date: Option<i64>,
    pub src_update_id: i64,
}

/// `chosen_inline_results`. Key (bot_id, src_update_id): a result id is not unique.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChosenInlineResultRow {
    pub bot_id: i64,
    pub result_id: String,
    pub from_user_id: i64,
    pub query: String,
    pub inline_message_id: Option<String>,
    pub src_date: Option<i64>,
    pub src_update_id: i64,
}
