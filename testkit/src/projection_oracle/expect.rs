//! One update's bytes → the projection rows it stands for, from the schema's own description of
//! each table (`migrations/0001_init.sql`, `0003_update_order.sql`), read through the oracle's
//! model ([`super::model`]), never through the processor.
//!
//! What each kind becomes:
//! - `message`, `edited_message`, `channel_post`, `edited_channel_post`, `guest_message`: a
//!   `messages` row (the message as this update shows it); edits also a `message_edits` row
//!   (history, keyed by the update); a message carrying a poll also that `polls` row;
//! - `message_reaction`: the actor's `message_reactions` row (a chat actor wins over the
//!   placeholder user); `message_reaction_count`: the message's `message_reaction_counts` row;
//! - `chat_member`, `my_chat_member`: a `chat_member_events` row (history);
//! - `callback_query`, `poll`, `poll_answer`, `inline_query`, `chosen_inline_result`: their
//!   table's row;
//! - every kind: a `users` row for every user and a `chats` row for every chat it mentions
//!   (actors, members, nested messages, origins, `text_mention` entities); a kind the Bot API
//!   does not know (schema drift) gets only these, found by shape (a user has an integer `id`
//!   and a boolean `is_bot`; a chat an integer `id` and a chat `type`).
//!
//! Every row carries its update's ordering key: `src_epoch` (given by the caller),
//! `src_update_id`, and `src_date` = the update's own date (a message's `edit_date`, else its
//! `date`; the `date` of reactions, counts and member events; 0 for every other kind, unknown
//! kinds included), which orders nothing.
//!
//! The oracle refuses (an `Err` saying why) what it cannot predict rather than guess: bytes that
//! are not an update object, a Bot API kind it does not model (business messages and
//! connections, join requests, boosts, payments, …), a message with two media or two service
//! members (which one the row names is the processor's choice, not the schema's), a reaction or
//! vote without an actor, and one update showing two different versions of the same user or chat.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use super::model::{
    CallbackQuery, Chat, ChatMember, ChatMemberUpdated, ChosenInlineResult, File, InlineQuery,
    Message, MessageReactionCountUpdated, MessageReactionUpdated, Origin, Poll, PollAnswer, User,
    sanitise,
};
use super::tables::{TableSpec, table};

/// A row: its values in its table's column order.
pub type Row = Vec<Value>;

/// Kinds whose content is a message that becomes a `messages` row.
const MESSAGE_KINDS: [&str; 5] = [
    "message",
    "edited_message",
    "channel_post",
    "edited_channel_post",
    "guest_message",
];

/// Bot API kinds the oracle does not model: their rows cannot be predicted, so they are refused.
const UNMODELLED_KINDS: [&str; 13] = [
    "business_connection",
    "business_message",
    "edited_business_message",
    "deleted_business_messages",
    "shipping_query",
    "pre_checkout_query",
    "purchased_paid_media",
    "chat_join_request",
    "chat_boost",
    "removed_chat_boost",
    "managed_bot",
    "subscription",
    "stopped_message_generation",
];

const CHAT_TYPES: [&str; 4] = ["private", "group", "supergroup", "channel"];

/// An update, identified, with the rows it stands for.
#[derive(Debug)]
pub struct Derived {
    pub update_id: i64,
    pub rows: Vec<(&'static TableSpec, Row)>,
}

/// The rows of update `bytes` received by bot `bot_id` in update-id epoch `epoch`.
pub fn derive(bot_id: i64, epoch: i64, bytes: &[u8]) -> Result<Derived, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
    let update: Map<String, Value> =
        serde_json::from_str(&sanitise(text)).map_err(|e| format!("not an update object: {e}"))?;
    let update_id = update
        .get("update_id")
        .and_then(Value::as_i64)
        .ok_or("no integer update_id")?;
    let mut members = update.iter().filter(|(k, _)| *k != "update_id");
    let (kind, content) = match (members.next(), members.next()) {
        (None, _) => {
            return Ok(Derived {
                update_id,
                rows: Vec::new(),
            });
        }
        (Some(member), None) => member,
        (Some((a, _)), Some((b, _))) => return Err(format!("two kinds, {a} and {b}")),
    };
    if UNMODELLED_KINDS.contains(&kind.as_str()) {
        return Err(format!("the oracle does not model kind {kind}"));
    }
    let date = |key: &str| content.get(key).and_then(Value::as_i64);
    let src_date = if MESSAGE_KINDS.contains(&kind.as_str()) {
        date("edit_date").or_else(|| date("date"))
    } else if matches!(
        kind.as_str(),
        "message_reaction" | "message_reaction_count" | "chat_member" | "my_chat_member"
    ) {
        date("date")
    } else {
        None
    };
    let mut b = Builder {
        bot_id,
        epoch,
        update_id,
        src_date: src_date.unwrap_or(0),
        rows: Vec::new(),
        users: Vec::new(),
        chats: Vec::new(),
    };
    b.kind(kind, content)?;
    b.finish()
}

fn parse<T: DeserializeOwned>(what: &str, value: &Value) -> Result<T, String> {
    T::deserialize(value).map_err(|e| format!("{what} does not have the Bot API shape: {e}"))
}

/// A present, non-null JSON value, or null.
fn json_or_null(value: Option<&Value>) -> Value {
    value.cloned().unwrap_or(Value::Null)
}

/// A present, non-null JSON value, or `[]`.
fn json_or_empty(value: Option<&Value>) -> Value {
    value.cloned().unwrap_or_else(|| json!([]))
}

struct Builder {
    bot_id: i64,
    epoch: i64,
    update_id: i64,
    src_date: i64,
    rows: Vec<(&'static TableSpec, Row)>,
    users: Vec<User>,
    chats: Vec<Chat>,
}

impl Builder {
    /// Adds a row of `table` from (column, value) pairs, which must name every column but the
    /// ordering key exactly once.
    fn row(&mut self, table_name: &str, values: &[(&str, Value)]) -> Result<(), String> {
        let spec = table(table_name).ok_or_else(|| format!("oracle defect: table {table_name}"))?;
        let mut row = vec![None; spec.columns.len()];
        let ordering = [
            ("src_date", json!(self.src_date)),
            ("src_epoch", json!(self.epoch)),
            ("src_update_id", json!(self.update_id)),
        ];
        for (column, value) in values.iter().chain(ordering.iter()) {
            let at = spec
                .position(column)
                .ok_or_else(|| format!("oracle defect: {table_name} has no column {column}"))?;
            if row[at].replace(value.clone()).is_some() {
                return Err(format!("oracle defect: {table_name}.{column} given twice"));
            }
        }
        let row = row
            .into_iter()
            .zip(spec.columns)
            .map(|(v, c)| v.ok_or_else(|| format!("oracle defect: {table_name}.{c} not given")))
            .collect::<Result<Row, String>>()?;
        self.rows.push((spec, row));
        Ok(())
    }

    fn user(&mut self, user: &User) -> Result<(), String> {
        match self.users.iter().find(|u| u.id == user.id) {
            Some(seen) if seen != user => Err(format!(
                "user {} appears in two versions in one update: {seen:?} and {user:?}",
                user.id
            )),
            Some(_) => Ok(()),
            None => {
                self.users.push(user.clone());
                Ok(())
            }
        }
    }

    fn chat(&mut self, chat: &Chat) -> Result<(), String> {
        match self.chats.iter().find(|c| c.id == chat.id) {
            Some(seen) if seen != chat => Err(format!(
                "chat {} appears in two versions in one update: {seen:?} and {chat:?}",
                chat.id
            )),
            Some(_) => Ok(()),
            None => {
                self.chats.push(chat.clone());
                Ok(())
            }
        }
    }

    fn finish(mut self) -> Result<Derived, String> {
        for user in std::mem::take(&mut self.users) {
            self.row(
                "users",
                &[
                    ("bot_id", json!(self.bot_id)),
                    ("user_id", json!(user.id)),
                    ("is_bot", json!(user.is_bot)),
                    ("first_name", json!(user.first_name)),
                    ("last_name", json!(user.last_name)),
                    ("username", json!(user.username)),
                    ("language_code", json!(user.language_code)),
                    ("is_premium", json!(user.is_premium)),
                ],
            )?;
        }
        for chat in std::mem::take(&mut self.chats) {
            self.row(
                "chats",
                &[
                    ("bot_id", json!(self.bot_id)),
                    ("chat_id", json!(chat.id)),
                    ("chat_type", json!(chat.kind)),
                    ("title", json!(chat.title)),
                    ("username", json!(chat.username)),
                    ("first_name", json!(chat.first_name)),
                    ("last_name", json!(chat.last_name)),
                    ("is_forum", json!(chat.is_forum)),
                ],
            )?;
        }
        Ok(Derived {
            update_id: self.update_id,
            rows: self.rows,
        })
    }

    fn kind(&mut self, kind: &str, content: &Value) -> Result<(), String> {
        let bot_id = json!(self.bot_id);
        match kind {
            k if MESSAGE_KINDS.contains(&k) => {
                let message: Message = parse(kind, content)?;
                self.message(kind, &message)?;
            }
            "message_reaction" => {
                let r: MessageReactionUpdated = parse(kind, content)?;
                self.chat(&r.chat)?;
                if let Some(user) = &r.user {
                    self.user(user)?;
                }
                if let Some(chat) = &r.actor_chat {
                    self.chat(chat)?;
                }
                let (actor_type, actor_id) = match (&r.actor_chat, &r.user) {
                    (Some(chat), _) => ("chat", chat.id),
                    (None, Some(user)) => ("user", user.id),
                    (None, None) => return Err("a reaction without an actor".into()),
                };
                self.row(
                    "message_reactions",
                    &[
                        ("bot_id", bot_id),
                        ("chat_id", json!(r.chat.id)),
                        ("message_id", json!(r.message_id)),
                        ("actor_type", json!(actor_type)),
                        ("actor_id", json!(actor_id)),
                        ("new_reaction", json_or_empty(r.new_reaction.as_ref())),
                        ("old_reaction", json_or_empty(r.old_reaction.as_ref())),
                        ("date", json!(r.date)),
                    ],
                )?;
            }
            "message_reaction_count" => {
                let c: MessageReactionCountUpdated = parse(kind, content)?;
                self.chat(&c.chat)?;
                self.row(
                    "message_reaction_counts",
                    &[
                        ("bot_id", bot_id),
                        ("chat_id", json!(c.chat.id)),
                        ("message_id", json!(c.message_id)),
                        ("reactions", json_or_empty(c.reactions.as_ref())),
                        ("date", json!(c.date)),
                    ],
                )?;
            }
            "chat_member" | "my_chat_member" => {
                let u: ChatMemberUpdated = parse(kind, content)?;
                let new: ChatMember = parse("new_chat_member", &u.new_chat_member)?;
                let old: Option<ChatMember> = u
                    .old_chat_member
                    .as_ref()
                    .map(|m| parse("old_chat_member", m))
                    .transpose()?;
                self.chat(&u.chat)?;
                self.user(&u.from)?;
                for member in [Some(&new), old.as_ref()].into_iter().flatten() {
                    if let Some(user) = &member.user {
                        self.user(user)?;
                    }
                }
                if let Some(creator) = u.invite_link.as_ref().and_then(|l| l.get("creator")) {
                    self.user(&parse("invite_link.creator", creator)?)?;
                }
                let member = new
                    .user
                    .as_ref()
                    .or(old.as_ref().and_then(|m| m.user.as_ref()))
                    .ok_or("a member event without a member")?;
                self.row(
                    "chat_member_events",
                    &[
                        ("bot_id", bot_id),
                        ("chat_id", json!(u.chat.id)),
                        ("user_id", json!(member.id)),
                        ("event_kind", json!(kind)),
                        ("actor_user_id", json!(u.from.id)),
                        ("date", json!(u.date)),
                        (
                            "old_status",
                            json!(old.as_ref().and_then(|m| m.status.clone())),
                        ),
                        ("new_status", json!(new.status)),
                        ("old_chat_member", json_or_null(u.old_chat_member.as_ref())),
                        ("new_chat_member", u.new_chat_member.clone()),
                        ("invite_link", json_or_null(u.invite_link.as_ref())),
                        ("via_join_request", json!(u.via_join_request)),
                        (
                            "via_chat_folder_invite_link",
                            json!(u.via_chat_folder_invite_link),
                        ),
                        ("user_chat_id", Value::Null),
                        ("bio", Value::Null),
                    ],
                )?;
            }
            "callback_query" => {
                let q: CallbackQuery = parse(kind, content)?;
                self.user(&q.from)?;
                if let Some(message) = &q.message {
                    self.message_actors(message)?;
                }
                self.row(
                    "callback_queries",
                    &[
                        ("bot_id", bot_id),
                        ("callback_query_id", json!(q.id)),
                        ("from_user_id", json!(q.from.id)),
                        ("chat_instance", json!(q.chat_instance)),
                        ("data", json!(q.data)),
                        ("game_short_name", json!(q.game_short_name)),
                        ("inline_message_id", json!(q.inline_message_id)),
                        (
                            "message_chat_id",
                            json!(q.message.as_ref().map(|m| m.chat.id)),
                        ),
                        (
                            "message_id",
                            json!(q.message.as_ref().map(|m| m.message_id)),
                        ),
                    ],
                )?;
            }
            "poll" => {
                let poll: Poll = parse(kind, content)?;
                self.poll(&poll)?;
            }
            "poll_answer" => {
                let a: PollAnswer = parse(kind, content)?;
                if let Some(user) = &a.user {
                    self.user(user)?;
                }
                if let Some(chat) = &a.voter_chat {
                    self.chat(chat)?;
                }
                let (voter_type, voter_id) = match (&a.voter_chat, &a.user) {
                    (Some(chat), _) => ("chat", chat.id),
                    (None, Some(user)) => ("user", user.id),
                    (None, None) => return Err("a poll answer without a voter".into()),
                };
                self.row(
                    "poll_answers",
                    &[
                        ("bot_id", bot_id),
                        ("poll_id", json!(a.poll_id)),
                        ("voter_type", json!(voter_type)),
                        ("voter_id", json!(voter_id)),
                        ("option_ids", a.option_ids.clone()),
                    ],
                )?;
            }
            "inline_query" => {
                let q: InlineQuery = parse(kind, content)?;
                self.user(&q.from)?;
                self.row(
                    "inline_queries",
                    &[
                        ("bot_id", bot_id),
                        ("inline_query_id", json!(q.id)),
                        ("from_user_id", json!(q.from.id)),
                        ("query", json!(q.query)),
                        ("query_offset", json!(q.offset)),
                        ("chat_type", json!(q.chat_type)),
                    ],
                )?;
            }
            "chosen_inline_result" => {
                let c: ChosenInlineResult = parse(kind, content)?;
                self.user(&c.from)?;
                self.row(
                    "chosen_inline_results",
                    &[
                        ("bot_id", bot_id),
                        ("result_id", json!(c.result_id)),
                        ("from_user_id", json!(c.from.id)),
                        ("query", json!(c.query)),
                        ("inline_message_id", json!(c.inline_message_id)),
                    ],
                )?;
            }
            // A kind newer than the Bot API this codebase knows: its users and chats only.
            _ => self.by_shape(content)?,
        }
        Ok(())
    }

    /// Every user and chat in `value`, found by their shape.
    fn by_shape(&mut self, value: &Value) -> Result<(), String> {
        match value {
            Value::Object(object) => {
                let id = object.get("id").and_then(Value::as_i64);
                if id.is_some() && object.get("is_bot").is_some_and(Value::is_boolean) {
                    self.user(&parse("a user", value)?)?;
                }
                let chat_type = object.get("type").and_then(Value::as_str);
                if id.is_some() && chat_type.is_some_and(|t| CHAT_TYPES.contains(&t)) {
                    self.chat(&parse("a chat", value)?)?;
                }
                object.values().try_for_each(|v| self.by_shape(v))
            }
            Value::Array(items) => items.iter().try_for_each(|v| self.by_shape(v)),
            _ => Ok(()),
        }
    }

    /// The users and chats a message mentions, nested messages included.
    fn message_actors(&mut self, m: &Message) -> Result<(), String> {
        self.chat(&m.chat)?;
        if let Some(chat) = &m.sender_chat {
            self.chat(chat)?;
        }
        let single = [
            &m.from,
            &m.sender_business_bot,
            &m.via_bot,
            &m.new_chat_participant,
            &m.new_chat_member,
            &m.left_chat_member,
            &m.left_chat_participant,
        ];
        for user in single.into_iter().flatten() {
            self.user(user)?;
        }
        for user in m.new_chat_members.iter().flatten() {
            self.user(user)?;
        }
        if let Some(origin) = &m.forward_origin {
            let origin: Origin = parse("forward_origin", origin)?;
            if let Some(user) = &origin.sender_user {
                self.user(user)?;
            }
            for chat in [&origin.sender_chat, &origin.chat].into_iter().flatten() {
                self.chat(chat)?;
            }
        }
        for entities in [&m.entities, &m.caption_entities].into_iter().flatten() {
            for entity in entities.as_array().into_iter().flatten() {
                if let Some(user) = entity.get("user") {
                    self.user(&parse("a text_mention's user", user)?)?;
                }
            }
        }
        if let Some(quoted) = &m.reply_to_message {
            self.message_actors(quoted)?;
        }
        Ok(())
    }

    fn message(&mut self, kind: &str, m: &Message) -> Result<(), String> {
        self.message_actors(m)?;
        let largest = |sizes: &Vec<File>| {
            sizes
                .iter()
                .max_by_key(|s| {
                    let area = s.width.unwrap_or(0).saturating_mul(s.height.unwrap_or(0));
                    (area, s.file_size.unwrap_or(0))
                })
                .cloned()
        };
        let media: Vec<(&str, Option<File>)> = [
            m.photo.as_ref().map(|sizes| ("photo", largest(sizes))),
            m.document.as_ref().map(|d| ("document", Some(d.clone()))),
            m.poll.as_ref().map(|_| ("poll", None)),
        ]
        .into_iter()
        .flatten()
        .collect();
        if media.len() > 1 {
            return Err("a message with two media members".into());
        }
        let (media_kind, file) = media.into_iter().next().unzip();
        let file = file.flatten();
        let service: Vec<&str> = [
            m.new_chat_members.as_ref().map(|_| "new_chat_members"),
            m.left_chat_member.as_ref().map(|_| "left_chat_member"),
            m.forum_topic_created
                .as_ref()
                .map(|_| "forum_topic_created"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if service.len() > 1 {
            return Err("a message with two service members".into());
        }
        let origin: Option<Origin> = m
            .forward_origin
            .as_ref()
            .map(|o| parse("forward_origin", o))
            .transpose()?;
        let is_channel_post = kind == "channel_post" || kind == "edited_channel_post";
        let business_connection_id = m.business_connection_id.clone().unwrap_or_default();
        let content = [
            ("bot_id", json!(self.bot_id)),
            ("chat_id", json!(m.chat.id)),
            ("business_connection_id", json!(business_connection_id)),
            ("message_id", json!(m.message_id)),
            ("edit_date", json!(m.edit_date)),
            ("is_channel_post", json!(is_channel_post)),
            ("text", json!(m.text)),
            ("entities", json_or_null(m.entities.as_ref())),
            ("caption", json!(m.caption)),
            (
                "caption_entities",
                json_or_null(m.caption_entities.as_ref()),
            ),
            ("media_kind", json!(media_kind)),
            (
                "media_file_id",
                json!(file.as_ref().and_then(|f| f.file_id.clone())),
            ),
            (
                "media_file_unique_id",
                json!(file.as_ref().and_then(|f| f.file_unique_id.clone())),
            ),
        ];
        if kind.starts_with("edited_") {
            self.row("message_edits", &content)?;
        }
        let mut message = content.to_vec();
        message.extend([
            ("message_thread_id", json!(m.message_thread_id)),
            (
                "is_topic_message",
                json!(m.is_topic_message.unwrap_or(false)),
            ),
            ("from_user_id", json!(m.from.as_ref().map(|u| u.id))),
            (
                "sender_chat_id",
                json!(m.sender_chat.as_ref().map(|c| c.id)),
            ),
            (
                "sender_business_bot_id",
                json!(m.sender_business_bot.as_ref().map(|u| u.id)),
            ),
            ("via_bot_id", json!(m.via_bot.as_ref().map(|u| u.id))),
            ("date", json!(m.date)),
            ("service_kind", json!(service.first())),
            ("media_group_id", json!(m.media_group_id)),
            ("author_signature", json!(m.author_signature)),
            (
                "reply_to_message_id",
                json!(m.reply_to_message.as_ref().map(|r| r.message_id)),
            ),
            (
                "forward_origin_type",
                json!(origin.as_ref().map(|o| &o.kind)),
            ),
            (
                "forward_origin_user_id",
                json!(
                    origin
                        .as_ref()
                        .and_then(|o| o.sender_user.as_ref())
                        .map(|u| u.id)
                ),
            ),
            (
                "forward_origin_chat_id",
                json!(
                    origin
                        .as_ref()
                        .and_then(|o| o.chat.as_ref().or(o.sender_chat.as_ref()))
                        .map(|c| c.id)
                ),
            ),
            (
                "forward_origin_message_id",
                json!(origin.as_ref().and_then(|o| o.message_id)),
            ),
            (
                "forward_origin_date",
                json!(origin.as_ref().and_then(|o| o.date)),
            ),
            ("forward_origin", json_or_null(m.forward_origin.as_ref())),
        ]);
        self.row("messages", &message)?;
        if let Some(poll) = &m.poll {
            self.poll(poll)?;
        }
        Ok(())
    }

    fn poll(&mut self, p: &Poll) -> Result<(), String> {
        self.row(
            "polls",
            &[
                ("bot_id", json!(self.bot_id)),
                ("poll_id", json!(p.id)),
                ("question", json!(p.question)),
                (
                    "question_entities",
                    json_or_null(p.question_entities.as_ref()),
                ),
                ("options", json_or_null(p.options.as_ref())),
                ("total_voter_count", json!(p.total_voter_count)),
                ("is_closed", json!(p.is_closed)),
                ("is_anonymous", json!(p.is_anonymous)),
                ("poll_type", json!(p.poll_type)),
                ("allows_multiple_answers", json!(p.allows_multiple_answers)),
                ("correct_option_id", json!(p.correct_option_id)),
                ("explanation", json!(p.explanation)),
                (
                    "explanation_entities",
                    json_or_null(p.explanation_entities.as_ref()),
                ),
                ("open_period", json!(p.open_period)),
                ("close_date", json!(p.close_date)),
            ],
        )
    }
}
