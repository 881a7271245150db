//! Realistic Telegram traffic: a seeded, deterministic generator of Bot API update bytes.
//!
//! [`TrafficGenerator`] simulates a small world — several groups (the first a forum supergroup with
//! topics, the second a basic group), a channel, private chats with the bot, and users whose names
//! use many scripts — and emits what a bot with privacy mode off receives from it: text with emoji
//! and entities (UTF-16 offsets), replies, edits of earlier messages, reactions and reaction
//! counts, joins and leaves (a `chat_member` update followed by its service message), photos and
//! documents with file ids, polls the bot sent with their answers and state, user polls, callback
//! queries on the bot's inline keyboards, and now and then an update of a kind this codebase does
//! not know (`guest_message`).
//!
//! Guarantees: the same seed and config give the same bytes, in every build (fixed field order, a
//! portable ChaCha generator, no hash maps); update ids increase by one per update from
//! `first_update_id` (until [`TrafficGenerator::jump_update_ids`]); dates never decrease and start
//! at `start_date`; every update is one JSON object `{"update_id":N,"<kind>":{…}}` that is valid
//! for the Bot API (message ids increase per chat, edits and reactions refer to earlier messages,
//! only members speak, poll answers come from members of the poll's chat). [`malformed`] is the
//! only way to get anything else.
//!
//! [`malformed`]: TrafficGenerator::malformed

mod corpus;
mod model;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::BotInfo;
use model::{
    CallbackQuery, Chat, ChatMember, ChatMemberUpdated, Document, ForumTopicCreated,
    InlineKeyboardButton, InlineKeyboardMarkup, Message, MessageEntity,
    MessageReactionCountUpdated, MessageReactionUpdated, PhotoSize, Poll, PollAnswer, PollOption,
    ReactionCount, ReactionType, User,
};

/// Shape of the simulated world.
#[derive(Clone, Debug)]
pub struct TrafficConfig {
    /// Group chats (at least 1): the first is a forum supergroup, the second a basic group, the
    /// rest supergroups. The channel and private chats come in addition.
    pub groups: usize,
    /// Users (at least 2).
    pub users: usize,
    /// How many users also talk to the bot in a private chat (at most `users`).
    pub private_chats: usize,
    /// Whether there is a channel (posts, edits, anonymous reaction counts).
    pub channel: bool,
    /// The bot receiving the traffic (author of polls and inline keyboards).
    pub bot: BotInfo,
    /// The first update's id.
    pub first_update_id: i64,
    /// Unix time of the first update.
    pub start_date: i64,
    /// Mean seconds between consecutive updates (gaps are uniform in `0..=2×mean`).
    pub mean_gap_secs: u32,
    /// Updates per thousand that are of an unknown future kind (`guest_message`).
    pub unknown_kind_per_mille: u32,
}

impl Default for TrafficConfig {
    fn default() -> Self {
        Self {
            groups: 3,
            users: 40,
            private_chats: 5,
            channel: true,
            bot: BotInfo::new(7_000_000_001, "tgingest_demo_bot", "tgingest demo"),
            first_update_id: 700_000_000,
            // 2025-01-01T00:00:00Z
            start_date: 1_735_689_600,
            mean_gap_secs: 6,
            unknown_kind_per_mille: 5,
        }
    }
}

/// Ways [`TrafficGenerator::malformed_of`] can break an update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// A JSON object with a kind but no `update_id`.
    MissingUpdateId,
    /// `update_id` is a string.
    NonIntegerUpdateId,
    /// Valid JSON that is not an object (an array holding the update).
    NotAnObject,
    /// The first part of an update's bytes: not JSON at all. Served by `getUpdates` it breaks the
    /// whole response, so use it for webhook deliveries or direct publishing.
    TruncatedJson,
}

/// An unknown future update kind the generator emits now and then.
pub const UNKNOWN_KIND: &str = "guest_message";

const RECENT_MESSAGES: usize = 40;

struct Topic {
    name: &'static str,
    color: u32,
    creation: Option<Message>,
}

struct Group {
    chat: Chat,
    members: BTreeSet<usize>,
    next_message_id: i64,
    recent: VecDeque<Message>,
    topics: Vec<Topic>,
    chat_instance: String,
    bot_message: Option<Message>,
}

struct Channel {
    chat: Chat,
    next_message_id: i64,
    recent: VecDeque<Message>,
    counts: BTreeMap<i64, BTreeMap<&'static str, u32>>,
}

struct Private {
    user: usize,
    next_message_id: i64,
    started: bool,
    chat_instance: String,
    bot_message: Option<Message>,
}

struct OpenPoll {
    group: usize,
    poll: Poll,
    votes: BTreeMap<usize, u32>,
}

#[derive(Clone, Copy, Debug)]
enum Action {
    GroupText,
    Reply,
    Edit,
    Photo,
    Document,
    UserPoll,
    Reaction,
    ChannelPost,
    ChannelEdit,
    ChannelReactionCount,
    Private,
    JoinLeave,
    PollVote,
    Callback,
}

/// Relative frequencies of the actions (unknown kinds are rolled separately).
const ACTIONS: &[(Action, u32)] = &[
    (Action::GroupText, 30),
    (Action::Reply, 9),
    (Action::Edit, 6),
    (Action::Photo, 5),
    (Action::Document, 3),
    (Action::UserPoll, 1),
    (Action::Reaction, 8),
    (Action::ChannelPost, 4),
    (Action::ChannelEdit, 1),
    (Action::ChannelReactionCount, 2),
    (Action::Private, 7),
    (Action::JoinLeave, 4),
    (Action::PollVote, 5),
    (Action::Callback, 4),
];

type Payload = (&'static str, Vec<u8>);

/// Where a new group message landed.
enum Placed {
    /// The message, ready to be filled in.
    Message(Message),
    /// Its forum topic had to be created first: this service message is the update instead.
    TopicCreated(Message),
}

/// A seeded generator of realistic update bytes; also an endless `Iterator<Item = Vec<u8>>`.
pub struct TrafficGenerator {
    rng: ChaCha8Rng,
    config: TrafficConfig,
    next_update_id: i64,
    date: i64,
    bot_user: User,
    users: Vec<User>,
    groups: Vec<Group>,
    channel: Option<Channel>,
    privates: Vec<Private>,
    open_poll: Option<OpenPoll>,
    reactions: BTreeMap<(usize, i64, usize), &'static str>,
    pending: VecDeque<Payload>,
}

impl std::fmt::Debug for TrafficGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrafficGenerator")
            .field("next_update_id", &self.next_update_id)
            .field("date", &self.date)
            .field("users", &self.users.len())
            .field("groups", &self.groups.len())
            .field("channel", &self.channel.is_some())
            .field("privates", &self.privates.len())
            .finish_non_exhaustive()
    }
}

impl TrafficGenerator {
    /// A generator for `seed`; the same seed and config always give the same updates.
    pub fn new(seed: u64, config: TrafficConfig) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let bot_user = User {
            id: config.bot.id,
            is_bot: true,
            first_name: config.bot.first_name.clone(),
            last_name: None,
            username: Some(config.bot.username.clone()),
            language_code: None,
            is_premium: None,
        };
        let users = make_users(&mut rng, config.users.max(2));
        let groups = (0..config.groups.max(1))
            .map(|i| make_group(&mut rng, i, users.len()))
            .collect();
        let channel = config.channel.then(|| make_channel(&mut rng));
        let privates = (0..config.private_chats.min(users.len()))
            .map(|user| Private {
                user,
                next_message_id: 1,
                started: false,
                chat_instance: chat_instance(&mut rng),
                bot_message: None,
            })
            .collect();
        Self {
            next_update_id: config.first_update_id,
            date: config.start_date,
            rng,
            config,
            bot_user,
            users,
            groups,
            channel,
            privates,
            open_poll: None,
            reactions: BTreeMap::new(),
            pending: VecDeque::new(),
        }
    }

    /// The id the next update will carry.
    pub fn next_update_id(&self) -> i64 {
        self.next_update_id
    }

    /// Restarts update ids at `restart_at`, as Telegram does after a week without updates.
    pub fn jump_update_ids(&mut self, restart_at: i64) {
        self.next_update_id = restart_at;
    }

    /// The next update's bytes.
    pub fn next_update(&mut self) -> Vec<u8> {
        let (kind, payload) = match self.pending.pop_front() {
            Some(follow_up) => follow_up,
            None => {
                self.advance_clock();
                self.generate()
            }
        };
        let id = self.take_id();
        stamp(id, kind, &payload)
    }

    /// `n` updates.
    pub fn batch(&mut self, n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|_| self.next_update()).collect()
    }

    /// One malformed update that is still valid JSON (missing or non-integer `update_id`, or not
    /// an object), so it can be served by `getUpdates` without breaking the other updates.
    pub fn malformed(&mut self) -> Vec<u8> {
        let kind = *[
            Malformed::MissingUpdateId,
            Malformed::NonIntegerUpdateId,
            Malformed::NotAnObject,
        ]
        .choose(&mut self.rng)
        .unwrap_or(&Malformed::MissingUpdateId);
        self.malformed_of(kind)
    }

    /// One update broken in the given way.
    pub fn malformed_of(&mut self, how: Malformed) -> Vec<u8> {
        self.advance_clock();
        let (kind, payload) = self.group_message(None);
        let key = json_text(kind);
        match how {
            Malformed::MissingUpdateId => {
                let mut raw = format!("{{{key}:").into_bytes();
                raw.extend_from_slice(&payload);
                raw.push(b'}');
                raw
            }
            Malformed::NonIntegerUpdateId => {
                let id = self.take_id();
                let mut raw = format!("{{\"update_id\":\"{id}\",{key}:").into_bytes();
                raw.extend_from_slice(&payload);
                raw.push(b'}');
                raw
            }
            Malformed::NotAnObject => {
                let id = self.take_id();
                let mut raw = b"[".to_vec();
                raw.extend_from_slice(&stamp(id, kind, &payload));
                raw.push(b']');
                raw
            }
            Malformed::TruncatedJson => {
                let id = self.take_id();
                let full = String::from_utf8_lossy(&stamp(id, kind, &payload)).into_owned();
                let mut cut = full.len() / 2;
                while !full.is_char_boundary(cut) {
                    cut -= 1;
                }
                full.as_bytes()[..cut].to_vec()
            }
        }
    }

    fn take_id(&mut self) -> i64 {
        let id = self.next_update_id;
        self.next_update_id += 1;
        id
    }

    fn advance_clock(&mut self) {
        let max_gap = i64::from(self.config.mean_gap_secs).saturating_mul(2);
        self.date += self.rng.random_range(0..=max_gap);
    }

    fn generate(&mut self) -> Payload {
        if self.rng.random_range(0..1000) < self.config.unknown_kind_per_mille {
            return self.unknown_kind();
        }
        let total: u32 = ACTIONS.iter().map(|(_, w)| w).sum();
        let mut roll = self.rng.random_range(0..total);
        let mut action = Action::GroupText;
        for (candidate, weight) in ACTIONS {
            if roll < *weight {
                action = *candidate;
                break;
            }
            roll -= weight;
        }
        let generated = match action {
            Action::GroupText => Some(self.group_message(None)),
            Action::Reply => self.reply(),
            Action::Edit => self.edit(),
            Action::Photo => Some(self.group_media(true)),
            Action::Document => Some(self.group_media(false)),
            Action::UserPoll => Some(self.user_poll()),
            Action::Reaction => self.reaction(),
            Action::ChannelPost => self.channel_post(),
            Action::ChannelEdit => self.channel_edit(),
            Action::ChannelReactionCount => self.channel_reaction_count(),
            Action::Private => self.private_message(),
            Action::JoinLeave => self.join_or_leave(),
            Action::PollVote => self.poll_vote(),
            Action::Callback => Some(self.callback()),
        };
        // An action with nothing to act on yet (no message to edit, …) becomes a plain message.
        generated.unwrap_or_else(|| self.group_message(None))
    }

    // ---- building blocks -------------------------------------------------------------------

    fn pick_group(&mut self) -> usize {
        self.rng.random_range(0..self.groups.len())
    }

    fn pick_member(&mut self, group: usize) -> usize {
        let members: Vec<usize> = self.groups[group].members.iter().copied().collect();
        members.choose(&mut self.rng).copied().unwrap_or(0)
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        items.choose(&mut self.rng).copied()
    }

    /// A new message from `user` in `group`, placed in a forum topic when the group is a forum.
    /// When the chosen topic did not exist yet, its creation service message comes back instead
    /// and is then the update.
    fn new_group_message(&mut self, group: usize, user: usize) -> Placed {
        let topic_count = self.groups[group].topics.len();
        // One slot past the topics stands for the General topic (no thread fields).
        let slot = (topic_count > 0).then(|| self.rng.random_range(0..=topic_count));
        let date = self.date;
        let from = self.users[user].clone();
        let g = &mut self.groups[group];
        let mut message = Message {
            message_id: g.next_message_id,
            from: Some(from),
            chat: g.chat.clone(),
            date,
            ..Message::default()
        };
        g.next_message_id += 1;
        let Some(topic) = slot.and_then(|s| g.topics.get_mut(s)) else {
            return Placed::Message(message);
        };
        match &topic.creation {
            Some(creation) => {
                message.message_thread_id = Some(creation.message_id);
                message.is_topic_message = Some(true);
                message.reply_to_message = Some(Box::new(creation.clone()));
                Placed::Message(message)
            }
            None => {
                message.message_thread_id = Some(message.message_id);
                message.is_topic_message = Some(true);
                message.forum_topic_created = Some(ForumTopicCreated {
                    name: topic.name.to_owned(),
                    icon_color: topic.color,
                });
                topic.creation = Some(message.clone());
                Placed::TopicCreated(message)
            }
        }
    }

    fn remember(&mut self, group: usize, message: &Message) {
        let recent = &mut self.groups[group].recent;
        recent.push_back(message.clone());
        if recent.len() > RECENT_MESSAGES {
            recent.pop_front();
        }
    }

    /// Text with, sometimes, a bot command, a mention or a URL entity (UTF-16 offsets).
    fn compose_text(&mut self) -> (String, Option<Vec<MessageEntity>>) {
        let body = self.pick(corpus::TEXTS).unwrap_or("hi").to_owned();
        let roll = self.rng.random_range(0..100);
        if roll < 6 {
            let command = if self.rng.random_bool(0.5) {
                format!("/help@{}", self.config.bot.username)
            } else {
                "/stats".to_owned()
            };
            let entity = MessageEntity {
                kind: "bot_command",
                offset: 0,
                length: utf16_len(&command),
            };
            return (command, Some(vec![entity]));
        }
        if roll < 16 {
            let named: Vec<String> = self
                .users
                .iter()
                .filter_map(|u| u.username.clone())
                .collect();
            if let Some(username) = named.choose(&mut self.rng) {
                let greeting = self
                    .pick(&["Hey", "Привет", "こんにちは", "مرحبا"])
                    .unwrap_or("Hey");
                let mention = format!("@{username}");
                let text = format!("{greeting} {mention} {body}");
                let entity = MessageEntity {
                    kind: "mention",
                    offset: utf16_len(greeting) + 1,
                    length: utf16_len(&mention),
                };
                return (text, Some(vec![entity]));
            }
        }
        if roll < 24 {
            let domain = self.pick(corpus::DOMAINS).unwrap_or("example.org");
            let url = format!("https://{domain}/p/{}", self.rng.random_range(1..10_000));
            let text = format!("{body} {url}");
            let entity = MessageEntity {
                kind: "url",
                offset: utf16_len(&body) + 1,
                length: utf16_len(&url),
            };
            return (text, Some(vec![entity]));
        }
        (body, None)
    }

    fn file_id(&mut self, prefix: &str, len: usize) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut id = prefix.to_owned();
        id.extend((0..len).map(|_| char::from(ALPHABET[self.rng.random_range(0..ALPHABET.len())])));
        id
    }

    fn photo_sizes(&mut self) -> Vec<PhotoSize> {
        const SIZES: [(u32, u32); 4] = [(90, 60), (320, 213), (800, 533), (1280, 853)];
        const SUFFIXES: [&str; 4] = ["s", "m", "x", "y"];
        let count = self.rng.random_range(2..=SIZES.len());
        let unique = self.file_id("AQAD", 12);
        (0..count)
            .map(|i| {
                let (width, height) = SIZES[i];
                PhotoSize {
                    file_id: self.file_id("AgACAgIAAxkBAAI", 62),
                    file_unique_id: format!("{unique}{}", SUFFIXES[i]),
                    file_size: width * height / 8 + self.rng.random_range(0..2000),
                    width,
                    height,
                }
            })
            .collect()
    }

    fn numeric_id(&mut self) -> String {
        self.rng
            .random_range(1_000_000_000_000_000_000u64..9_000_000_000_000_000_000)
            .to_string()
    }

    fn emit<T: Serialize>(kind: &'static str, value: &T) -> Payload {
        // The model types hold only strings, numbers, booleans, sequences and structs.
        let bytes = serde_json::to_vec(value).expect("Bot API model types always serialise");
        (kind, bytes)
    }

    // ---- actions ---------------------------------------------------------------------------

    fn group_message(&mut self, group: Option<usize>) -> Payload {
        let group = group.unwrap_or_else(|| self.pick_group());
        let user = self.pick_member(group);
        match self.new_group_message(group, user) {
            Placed::TopicCreated(topic_creation) => Self::emit("message", &topic_creation),
            Placed::Message(mut message) => {
                let (text, entities) = self.compose_text();
                message.text = Some(text);
                message.entities = entities;
                self.remember(group, &message);
                Self::emit("message", &message)
            }
        }
    }

    fn reply(&mut self) -> Option<Payload> {
        let group = self.pick_group();
        let recent = self.groups[group].recent.len();
        if recent == 0 {
            return None;
        }
        let mut quoted = self.groups[group].recent[self.rng.random_range(0..recent)].clone();
        // Telegram nests only one level of replies.
        quoted.reply_to_message = None;
        let user = self.pick_member(group);
        let (text, entities) = self.compose_text();
        let from = self.users[user].clone();
        let date = self.date;
        let g = &mut self.groups[group];
        let message = Message {
            message_id: g.next_message_id,
            message_thread_id: quoted.message_thread_id,
            from: Some(from),
            chat: g.chat.clone(),
            date,
            is_topic_message: quoted.is_topic_message,
            reply_to_message: Some(Box::new(quoted)),
            text: Some(text),
            entities,
            ..Message::default()
        };
        g.next_message_id += 1;
        self.remember(group, &message);
        Some(Self::emit("message", &message))
    }

    fn edit(&mut self) -> Option<Payload> {
        let group = self.pick_group();
        let editable: Vec<usize> = self.groups[group]
            .recent
            .iter()
            .enumerate()
            .filter(|(_, m)| m.text.is_some() || m.caption.is_some())
            .map(|(i, _)| i)
            .collect();
        let index = self.pick(&editable)?;
        let suffix = self.pick(corpus::EDIT_SUFFIXES).unwrap_or(" (edited)");
        let date = self.date;
        let message = &mut self.groups[group].recent[index];
        // Appending keeps every entity offset valid.
        if let Some(text) = &mut message.text {
            text.push_str(suffix);
        } else if let Some(caption) = &mut message.caption {
            caption.push_str(suffix);
        }
        message.edit_date = Some(date);
        let edited = message.clone();
        Some(Self::emit("edited_message", &edited))
    }

    fn group_media(&mut self, photo: bool) -> Payload {
        let group = self.pick_group();
        let user = self.pick_member(group);
        let mut message = match self.new_group_message(group, user) {
            Placed::TopicCreated(topic_creation) => return Self::emit("message", &topic_creation),
            Placed::Message(message) => message,
        };
        if photo {
            message.photo = Some(self.photo_sizes());
        } else {
            let (file_name, mime_type) = self
                .pick(corpus::DOCUMENTS)
                .unwrap_or(("file.bin", "application/octet-stream"));
            message.document = Some(Document {
                file_name: file_name.to_owned(),
                mime_type,
                file_id: self.file_id("BQACAgIAAxkBAAI", 62),
                file_unique_id: self.file_id("AgAD", 12),
                file_size: self.rng.random_range(1_000..20_000_000),
            });
        }
        if self.rng.random_bool(0.6) {
            message.caption = self.pick(corpus::CAPTIONS).map(str::to_owned);
        }
        self.remember(group, &message);
        Self::emit("message", &message)
    }

    fn user_poll(&mut self) -> Payload {
        let group = self.pick_group();
        let user = self.pick_member(group);
        let mut message = match self.new_group_message(group, user) {
            Placed::TopicCreated(topic_creation) => return Self::emit("message", &topic_creation),
            Placed::Message(message) => message,
        };
        let (question, options) = self.pick(corpus::POLLS).unwrap_or(("?", &["a", "b"]));
        message.poll = Some(Poll {
            id: self.numeric_id(),
            question: question.to_owned(),
            options: options
                .iter()
                .map(|text| PollOption {
                    text: (*text).to_owned(),
                    voter_count: 0,
                })
                .collect(),
            total_voter_count: 0,
            is_closed: false,
            is_anonymous: true,
            kind: "regular",
            allows_multiple_answers: false,
        });
        self.remember(group, &message);
        Self::emit("message", &message)
    }

    fn reaction(&mut self) -> Option<Payload> {
        let group = self.pick_group();
        let recent = self.groups[group].recent.len();
        if recent == 0 {
            return None;
        }
        let message_id = self.groups[group].recent[self.rng.random_range(0..recent)].message_id;
        let user = self.pick_member(group);
        let key = (group, message_id, user);
        let old = self.reactions.get(&key).copied();
        let new = if old.is_some() && self.rng.random_bool(0.3) {
            None
        } else {
            self.pick(corpus::REACTIONS)
        };
        match new {
            Some(emoji) => self.reactions.insert(key, emoji),
            None => self.reactions.remove(&key),
        };
        let update = MessageReactionUpdated {
            chat: self.groups[group].chat.clone(),
            message_id,
            user: self.users[user].clone(),
            date: self.date,
            old_reaction: old.map(ReactionType::emoji).into_iter().collect(),
            new_reaction: new.map(ReactionType::emoji).into_iter().collect(),
        };
        Some(Self::emit("message_reaction", &update))
    }

    fn channel_post(&mut self) -> Option<Payload> {
        let photo = self.rng.random_bool(0.25);
        let signature = self.rng.random_bool(0.3).then(|| {
            self.users[self.rng.random_range(0..self.users.len())]
                .first_name
                .clone()
        });
        let text = self
            .pick(corpus::CHANNEL_POSTS)
            .unwrap_or("news")
            .to_owned();
        let sizes = photo.then(|| self.photo_sizes());
        let date = self.date;
        let channel = self.channel.as_mut()?;
        let mut message = Message {
            message_id: channel.next_message_id,
            sender_chat: Some(channel.chat.clone()),
            chat: channel.chat.clone(),
            date,
            author_signature: signature,
            ..Message::default()
        };
        channel.next_message_id += 1;
        match sizes {
            Some(sizes) => {
                message.photo = Some(sizes);
                message.caption = Some(text);
            }
            None => message.text = Some(text),
        }
        channel.recent.push_back(message.clone());
        if channel.recent.len() > RECENT_MESSAGES {
            channel.recent.pop_front();
        }
        Some(Self::emit("channel_post", &message))
    }

    fn channel_edit(&mut self) -> Option<Payload> {
        let suffix = self.pick(corpus::EDIT_SUFFIXES).unwrap_or(" (edited)");
        let recent = self.channel.as_ref()?.recent.len();
        if recent == 0 {
            return None;
        }
        let index = self.rng.random_range(0..recent);
        let date = self.date;
        let channel = self.channel.as_mut()?;
        let message = &mut channel.recent[index];
        if let Some(text) = &mut message.text {
            text.push_str(suffix);
        } else if let Some(caption) = &mut message.caption {
            caption.push_str(suffix);
        }
        message.edit_date = Some(date);
        let edited = message.clone();
        Some(Self::emit("edited_channel_post", &edited))
    }

    fn channel_reaction_count(&mut self) -> Option<Payload> {
        let recent = self.channel.as_ref()?.recent.len();
        if recent == 0 {
            return None;
        }
        let index = self.rng.random_range(0..recent);
        let emoji = self.pick(corpus::REACTIONS)?;
        let bump = self.rng.random_range(1..5);
        let date = self.date;
        let channel = self.channel.as_mut()?;
        let message_id = channel.recent[index].message_id;
        let counts = channel.counts.entry(message_id).or_default();
        *counts.entry(emoji).or_default() += bump;
        let mut reactions: Vec<ReactionCount> = counts
            .iter()
            .map(|(emoji, count)| ReactionCount {
                kind: ReactionType::emoji(emoji),
                total_count: *count,
            })
            .collect();
        reactions.sort_by(|a, b| {
            b.total_count
                .cmp(&a.total_count)
                .then_with(|| a.kind.cmp(&b.kind))
        });
        let update = MessageReactionCountUpdated {
            chat: channel.chat.clone(),
            message_id,
            date,
            reactions,
        };
        Some(Self::emit("message_reaction_count", &update))
    }

    fn private_message(&mut self) -> Option<Payload> {
        if self.privates.is_empty() {
            return None;
        }
        let index = self.rng.random_range(0..self.privates.len());
        let (text, entities) = if self.privates[index].started {
            self.compose_text()
        } else {
            let entity = MessageEntity {
                kind: "bot_command",
                offset: 0,
                length: utf16_len("/start"),
            };
            ("/start".to_owned(), Some(vec![entity]))
        };
        let private = &mut self.privates[index];
        private.started = true;
        let user = self.users[private.user].clone();
        let message = Message {
            message_id: private.next_message_id,
            chat: Chat::private_with(&user),
            from: Some(user),
            date: self.date,
            text: Some(text),
            entities,
            ..Message::default()
        };
        private.next_message_id += 1;
        Some(Self::emit("message", &message))
    }

    fn join_or_leave(&mut self) -> Option<Payload> {
        let group = self.pick_group();
        let outsiders: Vec<usize> = (0..self.users.len())
            .filter(|u| !self.groups[group].members.contains(u))
            .collect();
        let can_leave = self.groups[group].members.len() > 2;
        let join = match (outsiders.is_empty(), can_leave) {
            (true, false) => return None,
            (true, true) => false,
            (false, false) => true,
            (false, true) => self.rng.random_bool(0.5),
        };
        let user = if join {
            self.pick(&outsiders)?
        } else {
            self.pick_member(group)
        };
        let person = self.users[user].clone();
        let (old_status, new_status) = if join {
            ("left", "member")
        } else {
            ("member", "left")
        };
        let date = self.date;
        let g = &mut self.groups[group];
        if join {
            g.members.insert(user);
        } else {
            g.members.remove(&user);
        }
        let update = ChatMemberUpdated {
            chat: g.chat.clone(),
            from: person.clone(),
            date,
            old_chat_member: ChatMember {
                status: old_status,
                user: person.clone(),
            },
            new_chat_member: ChatMember {
                status: new_status,
                user: person.clone(),
            },
        };
        // The service message Telegram posts in the chat follows as the next update.
        let mut service = Message {
            message_id: g.next_message_id,
            from: Some(person.clone()),
            chat: g.chat.clone(),
            date,
            ..Message::default()
        };
        g.next_message_id += 1;
        if join {
            service.new_chat_participant = Some(person.clone());
            service.new_chat_member = Some(person.clone());
            service.new_chat_members = Some(vec![person]);
        } else {
            service.left_chat_participant = Some(person.clone());
            service.left_chat_member = Some(person);
        }
        self.pending.push_back(Self::emit("message", &service));
        Some(Self::emit("chat_member", &update))
    }

    /// Answers (or retractions) in a non-anonymous poll the bot sent, each followed by the poll's
    /// new state, as Telegram reports polls sent by the bot itself; sometimes the poll is closed.
    fn poll_vote(&mut self) -> Option<Payload> {
        if let Some(open) = &self.open_poll {
            let everyone_voted = self.groups[open.group]
                .members
                .iter()
                .all(|m| open.votes.contains_key(m));
            if everyone_voted || self.rng.random_bool(0.05) {
                let mut closed = self.open_poll.take()?.poll;
                closed.is_closed = true;
                return Some(Self::emit("poll", &closed));
            }
        } else {
            self.open_poll = Some(self.send_bot_poll());
        }
        let group = self.open_poll.as_ref()?.group;
        let members: Vec<usize> = self.groups[group].members.iter().copied().collect();
        let voter = self.pick(&members)?;
        let option_count = u32::try_from(self.open_poll.as_ref()?.poll.options.len()).unwrap_or(1);
        let choice = self.rng.random_range(0..option_count);
        let retract =
            self.open_poll.as_ref()?.votes.contains_key(&voter) && self.rng.random_bool(0.5);
        let open = self.open_poll.as_mut()?;
        if let Some(previous) = open.votes.remove(&voter) {
            open.poll.options[previous as usize].voter_count -= 1;
            open.poll.total_voter_count -= 1;
        }
        let option_ids = if retract {
            Vec::new()
        } else {
            open.votes.insert(voter, choice);
            open.poll.options[choice as usize].voter_count += 1;
            open.poll.total_voter_count += 1;
            vec![choice]
        };
        let answer = PollAnswer {
            poll_id: open.poll.id.clone(),
            user: self.users[voter].clone(),
            option_ids,
        };
        let state = open.poll.clone();
        self.pending.push_back(Self::emit("poll", &state));
        Some(Self::emit("poll_answer", &answer))
    }

    /// The bot posts a poll: it takes a message id in the chat but produces no update (bots do not
    /// receive their own messages).
    fn send_bot_poll(&mut self) -> OpenPoll {
        let group = self.pick_group();
        let (question, options) = self.pick(corpus::POLLS).unwrap_or(("?", &["a", "b"]));
        let poll = Poll {
            id: self.numeric_id(),
            question: question.to_owned(),
            options: options
                .iter()
                .map(|text| PollOption {
                    text: (*text).to_owned(),
                    voter_count: 0,
                })
                .collect(),
            total_voter_count: 0,
            is_closed: false,
            is_anonymous: false,
            kind: "regular",
            allows_multiple_answers: false,
        };
        self.groups[group].next_message_id += 1;
        OpenPoll {
            group,
            poll,
            votes: BTreeMap::new(),
        }
    }

    /// The bot's message with an inline keyboard, created in the chat when first needed.
    fn bot_keyboard_message(&mut self, chat: Chat, message_id: i64) -> Message {
        let buttons = corpus::BUTTONS
            .iter()
            .map(|(text, data)| InlineKeyboardButton {
                text: (*text).to_owned(),
                callback_data: (*data).to_owned(),
            })
            .collect::<Vec<_>>();
        Message {
            message_id,
            from: Some(self.bot_user.clone()),
            chat,
            date: self.date,
            text: Some("Choose an option 👇".to_owned()),
            reply_markup: Some(InlineKeyboardMarkup {
                inline_keyboard: buttons.chunks(2).map(<[_]>::to_vec).collect(),
            }),
            ..Message::default()
        }
    }

    fn callback(&mut self) -> Payload {
        let in_private = !self.privates.is_empty() && self.rng.random_bool(0.3);
        let (user, message, chat_instance) = if in_private {
            let index = self.rng.random_range(0..self.privates.len());
            let user = self.privates[index].user;
            if self.privates[index].bot_message.is_none() {
                let chat = Chat::private_with(&self.users[user]);
                let id = self.privates[index].next_message_id;
                self.privates[index].next_message_id += 1;
                let message = self.bot_keyboard_message(chat, id);
                self.privates[index].bot_message = Some(message);
            }
            let private = &self.privates[index];
            (
                user,
                private.bot_message.clone(),
                private.chat_instance.clone(),
            )
        } else {
            let group = self.pick_group();
            let user = self.pick_member(group);
            if self.groups[group].bot_message.is_none() {
                let chat = self.groups[group].chat.clone();
                let id = self.groups[group].next_message_id;
                self.groups[group].next_message_id += 1;
                let message = self.bot_keyboard_message(chat, id);
                self.groups[group].bot_message = Some(message);
            }
            let g = &self.groups[group];
            (user, g.bot_message.clone(), g.chat_instance.clone())
        };
        let Some(message) = message else {
            return self.group_message(None);
        };
        let data = self
            .pick(corpus::BUTTONS)
            .map_or("vote:up", |(_, data)| data)
            .to_owned();
        let query = CallbackQuery {
            id: self.numeric_id(),
            from: self.users[user].clone(),
            message,
            chat_instance,
            data,
        };
        Self::emit("callback_query", &query)
    }

    fn unknown_kind(&mut self) -> Payload {
        let user = self.rng.random_range(0..self.users.len());
        let (text, _) = self.compose_text();
        let from = self.users[user].clone();
        let guest = Message {
            message_id: self.rng.random_range(1..1_000_000),
            chat: Chat::private_with(&from),
            from: Some(from),
            date: self.date,
            text: Some(text),
            ..Message::default()
        };
        Self::emit(UNKNOWN_KIND, &guest)
    }
}

impl Iterator for TrafficGenerator {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        Some(self.next_update())
    }
}

// ---- world construction ----------------------------------------------------------------------

const USERNAME_BASES: &[&str] = &[
    "sunny", "neo", "kitsune", "coder", "traveler", "mila", "alex", "yuki", "omar", "noa", "pixel",
    "dasha", "leo", "marta", "ivan", "sakura",
];

fn make_users(rng: &mut ChaCha8Rng, count: usize) -> Vec<User> {
    let mut ids = BTreeSet::new();
    let mut usernames = BTreeSet::new();
    (0..count)
        .map(|_| {
            let id = loop {
                let id = rng.random_range(10_000_000..7_999_999_999_i64);
                if ids.insert(id) {
                    break id;
                }
            };
            let (first, last, language) = corpus::PEOPLE[rng.random_range(0..corpus::PEOPLE.len())];
            let username = rng.random_bool(0.7).then(|| {
                loop {
                    let base = USERNAME_BASES[rng.random_range(0..USERNAME_BASES.len())];
                    let name = format!("{base}_{}", rng.random_range(1..10_000));
                    if usernames.insert(name.clone()) {
                        break name;
                    }
                }
            });
            User {
                id,
                is_bot: false,
                first_name: first.to_owned(),
                last_name: last.map(str::to_owned),
                username,
                language_code: rng.random_bool(0.85).then(|| language.to_owned()),
                is_premium: rng.random_bool(0.15).then_some(true),
            }
        })
        .collect()
}

fn supergroup_id(rng: &mut ChaCha8Rng) -> i64 {
    -(1_000_000_000_000 + rng.random_range(1_000_000_000..9_999_999_999_i64))
}

fn chat_instance(rng: &mut ChaCha8Rng) -> String {
    rng.random_range(-9_000_000_000_000_000_000_i64..9_000_000_000_000_000_000)
        .to_string()
}

fn make_group(rng: &mut ChaCha8Rng, index: usize, users: usize) -> Group {
    let title = format!(
        "{}{}",
        corpus::GROUP_TITLES[index % corpus::GROUP_TITLES.len()],
        if index >= corpus::GROUP_TITLES.len() {
            format!(" #{index}")
        } else {
            String::new()
        }
    );
    let forum = index == 0;
    let basic = index == 1;
    let chat = Chat {
        id: if basic {
            -rng.random_range(4_000_000_000..4_999_999_999_i64)
        } else {
            supergroup_id(rng)
        },
        kind: if basic { "group" } else { "supergroup" },
        title: Some(title),
        username: (!forum && !basic && rng.random_bool(0.5))
            .then(|| format!("public_chat_{}", rng.random_range(100..999))),
        is_forum: forum.then_some(true),
        ..Chat::default()
    };
    let mut members: BTreeSet<usize> = (0..users).filter(|_| rng.random_bool(0.7)).collect();
    // Every chat starts with at least two members, so there is always someone to talk.
    members.insert(0);
    members.insert(1);
    let topics = if forum {
        corpus::FORUM_TOPICS
            .iter()
            .enumerate()
            .map(|(i, name)| Topic {
                name,
                color: corpus::TOPIC_COLORS[i % corpus::TOPIC_COLORS.len()],
                creation: None,
            })
            .collect()
    } else {
        Vec::new()
    };
    Group {
        chat,
        members,
        next_message_id: rng.random_range(1..5_000),
        recent: VecDeque::new(),
        topics,
        chat_instance: chat_instance(rng),
        bot_message: None,
    }
}

fn make_channel(rng: &mut ChaCha8Rng) -> Channel {
    let title = corpus::CHANNEL_TITLES[rng.random_range(0..corpus::CHANNEL_TITLES.len())];
    Channel {
        chat: Chat {
            id: supergroup_id(rng),
            kind: "channel",
            title: Some(title.to_owned()),
            username: Some(format!("channel_{}", rng.random_range(100..999))),
            ..Chat::default()
        },
        next_message_id: rng.random_range(1..2_000),
        recent: VecDeque::new(),
        counts: BTreeMap::new(),
    }
}

fn stamp(id: i64, kind: &str, payload: &[u8]) -> Vec<u8> {
    let mut raw = format!("{{\"update_id\":{id},{}:", json_text(kind)).into_bytes();
    raw.extend_from_slice(payload);
    raw.push(b'}');
    raw
}

fn json_text(text: &str) -> String {
    serde_json::Value::String(text.to_owned()).to_string()
}

fn utf16_len(text: &str) -> usize {
    text.encode_utf16().count()
}
