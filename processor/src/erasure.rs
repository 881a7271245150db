//! Erasure rules: what of an update belongs to a data subject (a user or a chat), and the update
//! with it removed. Pure. `tgingest forget` applies them to stored payloads and every writer
//! applies them to records that mention an erased subject (DESIGN.md §5.11), so both always
//! produce the same bytes from the same input.
//!
//! An object **belongs to** a subject when it is:
//! - the subject's `User` (an object with the integer `id` and a boolean `is_bot`) or `Chat` (the
//!   integer `id` and a `type` of private, group, supergroup or channel), wherever it appears;
//! - an object whose member in [`OWNER_KEYS`] (`from`, `user`, `sender_user`, `chat`,
//!   `sender_chat`, `voter_chat`, `actor_chat`, `message`, `old_chat_member`, `new_chat_member`,
//!   `new_chat_participant`, `left_chat_member`, `left_chat_participant`) belongs to it: a
//!   message the subject sent or that was sent in the subject's chat, a forward origin naming
//!   them, a reaction, vote or membership change of theirs, a text_mention of them, the
//!   callback under a message of their chat;
//! - an object naming a user subject by bare id (`user_id`: a shared contact, a shared user;
//!   `user_chat_id`, the user's private chat: a join request) or a chat subject (`chat_id`: a
//!   shared chat; `user_chat_id`).
//!
//! What [`scrub`] does with an update:
//! - **erased whole** ([`Scrubbed::Erased`]) when its content (the object under its kind, e.g.
//!   `message`, `callback_query`, `chat_member`) belongs to the subject: their own messages,
//!   edits, reactions, votes, queries, membership changes, everything in their chat;
//! - otherwise **scrubbed** ([`Scrubbed::Scrubbed`]): every nested object that belongs to the
//!   subject is removed (from its parent object, or from its array): `reply_to_message`,
//!   `pinned_message`, `external_reply`, `forward_origin`, `forward_from`, members of
//!   `new_chat_members`, `text_mention` entities (the text itself is the sender's and stays),
//!   `contact`, shared users and chats; a removed `reply_to_message` or `external_reply` takes
//!   the message's `quote` (their words) with it; a user id is dropped from `user_ids` arrays.
//!   The result is re-serialised as compact JSON (key order and number spelling may differ from
//!   the original);
//! - **untouched** ([`Scrubbed::Untouched`]) when nothing belongs to the subject.
//!
//! Bytes that contain a subject's id but cannot be decoded as JSON (a lone surrogate escape, a
//! number beyond f64) are erased whole: they cannot be scrubbed safely.
//!
//! Left as they are, by design: what other people wrote (a message that names the subject in its
//! text, a forwarded message's text once its origin is removed), and records that carry no user or
//! chat of the subject (a poll's anonymous state updates).

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::rows::Normalized;

/// A data subject whose data is erased: a user or a chat, by Telegram id. Erasing a user also
/// erases their private chat with the bot (the chat whose id is the user's id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DataSubject {
    User(i64),
    Chat(i64),
}

/// Members whose value, when it belongs to a subject, makes the object holding them belong to it.
pub const OWNER_KEYS: [&str; 13] = [
    "from",
    "user",
    "sender_user",
    "chat",
    "sender_chat",
    "voter_chat",
    "actor_chat",
    "message",
    "old_chat_member",
    "new_chat_member",
    "new_chat_participant",
    "left_chat_member",
    "left_chat_participant",
];

const CHAT_TYPES: [&str; 4] = ["private", "group", "supergroup", "channel"];

impl DataSubject {
    /// The Telegram id.
    pub fn id(self) -> i64 {
        match self {
            Self::User(id) | Self::Chat(id) => id,
        }
    }

    /// The SHA-256 of `user:<id>` or `chat:<id>`: how the subject is stored and looked up
    /// (`erased_subjects.subject_sha256`), never its id.
    pub fn digest(self) -> [u8; 32] {
        let text = match self {
            Self::User(id) => format!("user:{id}"),
            Self::Chat(id) => format!("chat:{id}"),
        };
        Sha256::digest(text.as_bytes()).into()
    }

    /// The subjects `forget` records for a user (the user and their private chat) or a chat.
    pub fn erasure_of(self) -> Vec<DataSubject> {
        match self {
            Self::User(id) => vec![Self::User(id), Self::Chat(id)],
            Self::Chat(id) => vec![Self::Chat(id)],
        }
    }
}

/// What [`scrub`] made of an update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scrubbed {
    /// Nothing in it belongs to the subjects: keep the bytes as they are.
    Untouched,
    /// The update without what belongs to the subjects.
    Scrubbed(Vec<u8>),
    /// The update is the subjects' own: nothing of it may be kept.
    Erased,
}

/// The update `bytes` with everything that belongs to `subjects` removed, by the rules of this
/// module.
pub fn scrub(bytes: &[u8], subjects: &[DataSubject]) -> Scrubbed {
    if !subjects
        .iter()
        .any(|s| contains(bytes, s.id().to_string().as_bytes()))
    {
        return Scrubbed::Untouched;
    }
    let Ok(Value::Object(mut update)) = serde_json::from_slice::<Value>(bytes) else {
        return Scrubbed::Erased;
    };
    let rules = Rules { subjects };
    let owned_content = update
        .iter()
        .filter(|(key, _)| key.as_str() != "update_id")
        .any(|(_, content)| content.as_object().is_some_and(|o| rules.owns(o)));
    if owned_content {
        return Scrubbed::Erased;
    }
    if !rules.remove_owned(&mut update) {
        return Scrubbed::Untouched;
    }
    match serde_json::to_vec(&Value::Object(update)) {
        Ok(scrubbed) => Scrubbed::Scrubbed(scrubbed),
        Err(_) => Scrubbed::Erased,
    }
}

/// The subjects an update mentions, as the rules above recognise them: its users and chats
/// (already found by [`crate::normalize`], wherever they appear) and, when its bytes hold a bare
/// `user_id`, `user_chat_id`, `user_ids` or `chat_id` member, those ids. Sorted, without
/// duplicates. A writer looks these up among the erased subjects before it writes the update.
pub fn mentioned(normalized: &Normalized) -> Vec<DataSubject> {
    let mut out: Vec<DataSubject> = normalized
        .users
        .iter()
        .map(|u| DataSubject::User(u.user_id))
        .chain(
            normalized
                .chats
                .iter()
                .map(|c| DataSubject::Chat(c.chat_id)),
        )
        .collect();
    let bytes = &normalized.raw.payload_bytes;
    if has_bare_id_key(bytes)
        && let Ok(value) = serde_json::from_slice::<Value>(bytes)
    {
        bare_ids(&value, &mut out);
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Whether `bytes` hold a `"user_id"`, `"user_chat_id"`, `"user_ids"` or `"chat_id"` key. Looks
/// only after each quote, so the common update without one costs one pass over its bytes.
fn has_bare_id_key(bytes: &[u8]) -> bool {
    const KEYS: [&[u8]; 4] = [b"user_id\"", b"user_chat_id\"", b"user_ids\"", b"chat_id\""];
    bytes.iter().enumerate().any(|(at, &b)| {
        b == b'"'
            && matches!(bytes.get(at + 1), Some(b'u' | b'c'))
            && KEYS.iter().any(|key| bytes[at + 1..].starts_with(key))
    })
}

/// Ids named by bare members anywhere in `value`.
fn bare_ids(value: &Value, out: &mut Vec<DataSubject>) {
    match value {
        Value::Object(object) => {
            for (key, member) in object {
                match (key.as_str(), member) {
                    ("user_id", Value::Number(n)) => {
                        out.extend(n.as_i64().map(DataSubject::User));
                    }
                    // The user's private chat with the bot: it names the user and the chat.
                    ("user_chat_id", Value::Number(n)) => {
                        if let Some(id) = n.as_i64() {
                            out.push(DataSubject::User(id));
                            out.push(DataSubject::Chat(id));
                        }
                    }
                    ("chat_id", Value::Number(n)) => {
                        if let Some(id) = n.as_i64() {
                            out.push(DataSubject::Chat(id));
                        }
                    }
                    ("user_ids", Value::Array(ids)) => {
                        out.extend(ids.iter().filter_map(Value::as_i64).map(DataSubject::User));
                    }
                    _ => bare_ids(member, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| bare_ids(item, out)),
        _ => {}
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

struct Rules<'a> {
    subjects: &'a [DataSubject],
}

impl Rules<'_> {
    fn is_user(&self, id: i64) -> bool {
        self.subjects.contains(&DataSubject::User(id))
    }

    fn is_chat(&self, id: i64) -> bool {
        self.subjects.contains(&DataSubject::Chat(id))
    }

    /// Whether `object` is a subject's `User` or `Chat`.
    fn is_subject(&self, object: &Map<String, Value>) -> bool {
        let Some(id) = object.get("id").and_then(Value::as_i64) else {
            return false;
        };
        let user = object.get("is_bot").is_some_and(Value::is_boolean) && self.is_user(id);
        let chat = object
            .get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| CHAT_TYPES.contains(&t))
            && self.is_chat(id);
        user || chat
    }

    /// Whether `object` belongs to a subject (the module's rules).
    fn owns(&self, object: &Map<String, Value>) -> bool {
        if self.is_subject(object) {
            return true;
        }
        let id = |key: &str| object.get(key).and_then(Value::as_i64);
        if id("user_id").is_some_and(|i| self.is_user(i))
            || id("user_chat_id").is_some_and(|i| self.is_user(i) || self.is_chat(i))
            || id("chat_id").is_some_and(|i| self.is_chat(i))
        {
            return true;
        }
        OWNER_KEYS.iter().any(|key| {
            object
                .get(*key)
                .and_then(Value::as_object)
                .is_some_and(|member| self.owns(member))
        })
    }

    /// Removes every nested object that belongs to a subject (and a user subject's id from
    /// `user_ids` arrays), at any depth. Returns whether anything was removed.
    fn remove_owned(&self, object: &mut Map<String, Value>) -> bool {
        let owned: Vec<String> = object
            .iter()
            .filter(|(_, v)| v.as_object().is_some_and(|o| self.owns(o)))
            .map(|(k, _)| k.clone())
            .collect();
        let mut changed = !owned.is_empty();
        for key in &owned {
            object.remove(key);
            // A quote is the replied-to message's words.
            if key == "reply_to_message" || key == "external_reply" {
                object.remove("quote");
            }
        }
        for (key, member) in object.iter_mut() {
            changed |= match member {
                Value::Object(inner) => self.remove_owned(inner),
                Value::Array(items) => self.remove_from_array(key == "user_ids", items),
                _ => false,
            };
        }
        changed
    }

    fn remove_from_array(&self, user_ids: bool, items: &mut Vec<Value>) -> bool {
        let before = items.len();
        items.retain(|item| match item {
            Value::Object(o) => !self.owns(o),
            Value::Number(n) if user_ids => !n.as_i64().is_some_and(|id| self.is_user(id)),
            _ => true,
        });
        let mut changed = items.len() != before;
        for item in items.iter_mut() {
            changed |= match item {
                Value::Object(inner) => self.remove_owned(inner),
                Value::Array(inner) => self.remove_from_array(false, inner),
                _ => false,
            };
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const S: i64 = 987_654_321;
    const Y: i64 = 111_222_333;
    const GROUP: i64 = -1_001_234_567_890;

    fn user(id: i64, name: &str) -> Value {
        json!({"id": id, "is_bot": false, "first_name": name, "username": format!("{name}_x")})
    }

    fn group() -> Value {
        json!({"id": GROUP, "type": "supergroup", "title": "Team"})
    }

    fn scrubbed(update: Value, subjects: &[DataSubject]) -> Scrubbed {
        scrub(update.to_string().as_bytes(), subjects)
    }

    fn text_of(s: &Scrubbed) -> String {
        match s {
            Scrubbed::Scrubbed(bytes) => String::from_utf8(bytes.clone()).expect("utf-8"),
            other => panic!("expected a scrubbed update, got {other:?}"),
        }
    }

    fn erasure(user: i64) -> Vec<DataSubject> {
        DataSubject::User(user).erasure_of()
    }

    #[test]
    fn the_subjects_own_message_edit_reaction_vote_and_query_are_erased_whole() {
        let s = erasure(S);
        let updates = [
            json!({"update_id": 1, "message": {"message_id": 5, "from": user(S, "Zelda"),
                   "chat": group(), "date": 1, "text": "mine"}}),
            json!({"update_id": 2, "edited_message": {"message_id": 5, "from": user(S, "Zelda"),
                   "chat": group(), "date": 1, "edit_date": 2, "text": "mine!"}}),
            json!({"update_id": 3, "message_reaction": {"chat": group(), "message_id": 9,
                   "user": user(S, "Zelda"), "date": 3, "old_reaction": [], "new_reaction": []}}),
            json!({"update_id": 4, "poll_answer": {"poll_id": "p", "user": user(S, "Zelda"),
                   "option_ids": [0]}}),
            json!({"update_id": 5, "callback_query": {"id": "q", "from": user(S, "Zelda"),
                   "chat_instance": "c", "data": "d"}}),
            json!({"update_id": 6, "chat_member": {"chat": group(), "from": user(Y, "Yann"),
                   "date": 4, "old_chat_member": {"status": "member", "user": user(S, "Zelda")},
                   "new_chat_member": {"status": "kicked", "user": user(S, "Zelda")}}}),
            json!({"update_id": 7, "message": {"message_id": 1, "from": user(Y, "Yann"),
                   "chat": {"id": S, "type": "private", "first_name": "Zelda"}, "date": 1,
                   "text": "the bot answering in the subject's private chat"}}),
            json!({"update_id": 8, "chat_join_request": {"chat": group(), "from": user(S, "Zelda"),
                   "user_chat_id": S, "date": 5}}),
        ];
        for update in updates {
            assert_eq!(scrubbed(update.clone(), &s), Scrubbed::Erased, "{update}");
        }
    }

    #[test]
    fn another_persons_reply_to_the_subject_loses_the_replied_message_and_its_quote() {
        let update = json!({"update_id": 10, "message": {
            "message_id": 6, "from": user(Y, "Yann"), "chat": group(), "date": 2,
            "text": "agreed",
            "reply_to_message": {"message_id": 5, "from": user(S, "Zelda"), "chat": group(),
                                 "date": 1, "text": "Zelda's secret words"},
            "quote": {"text": "Zelda's secret", "position": 0}
        }});
        let out = text_of(&scrubbed(update, &erasure(S)));
        assert!(
            !out.contains(&S.to_string()) && !out.contains("Zelda"),
            "{out}"
        );
        assert!(out.contains("agreed") && out.contains("Yann"), "{out}");
        assert!(
            !out.contains("quote") && !out.contains("reply_to_message"),
            "{out}"
        );
    }

    #[test]
    fn forwards_mentions_new_members_contacts_and_shared_users_of_the_subject_are_removed() {
        let update = json!({"update_id": 11, "message": {
            "message_id": 7, "from": user(Y, "Yann"), "chat": group(), "date": 3,
            "text": "hi all",
            "forward_origin": {"type": "user", "sender_user": user(S, "Zelda"), "date": 1},
            "forward_from": user(S, "Zelda"),
            "entities": [{"type": "text_mention", "offset": 0, "length": 2, "user": user(S, "Zelda")},
                         {"type": "bold", "offset": 3, "length": 3}],
            "new_chat_members": [user(S, "Zelda"), user(Y + 1, "Xena")],
            "contact": {"phone_number": "+100", "first_name": "Zelda", "user_id": S},
            "users_shared": {"request_id": 1, "user_ids": [S, Y], "users": [{"user_id": S, "first_name": "Zelda"}]}
        }});
        let out = text_of(&scrubbed(update, &erasure(S)));
        assert!(
            !out.contains(&S.to_string()) && !out.contains("Zelda"),
            "{out}"
        );
        for kept in ["hi all", "Xena", "bold", &Y.to_string()] {
            assert!(out.contains(kept), "{kept} must stay: {out}");
        }
        assert!(
            !out.contains("forward_origin") && !out.contains("+100"),
            "{out}"
        );
    }

    #[test]
    fn a_chat_erasure_takes_everything_in_the_chat_and_its_forwards_elsewhere() {
        let chat = DataSubject::Chat(GROUP).erasure_of();
        let inside = json!({"update_id": 12, "message": {"message_id": 1, "from": user(Y, "Yann"),
            "chat": group(), "date": 1, "text": "in the group"}});
        assert_eq!(scrubbed(inside, &chat), Scrubbed::Erased);
        let button = json!({"update_id": 13, "callback_query": {"id": "q", "from": user(Y, "Yann"),
            "message": {"message_id": 2, "chat": group(), "date": 1}, "chat_instance": "c"}});
        assert_eq!(scrubbed(button, &chat), Scrubbed::Erased);
        let elsewhere = json!({"update_id": 14, "message": {"message_id": 3, "from": user(Y, "Yann"),
            "chat": {"id": Y, "type": "private", "first_name": "Yann"}, "date": 1, "text": "look",
            "forward_origin": {"type": "chat", "sender_chat": group(), "date": 1}}});
        let out = text_of(&scrubbed(elsewhere, &chat));
        assert!(
            !out.contains(&GROUP.to_string()) && !out.contains("Team"),
            "{out}"
        );
        assert!(out.contains("look"), "{out}");
    }

    #[test]
    fn an_update_without_the_subject_is_untouched_even_when_its_id_appears_as_other_digits() {
        let update = json!({"update_id": 15, "message": {"message_id": S, "from": user(Y, "Yann"),
            "chat": group(), "date": 1, "text": format!("order {S}")}});
        assert_eq!(scrubbed(update, &erasure(S)), Scrubbed::Untouched);
        assert_eq!(scrub(b"{\"update_id\":1}", &[]), Scrubbed::Untouched);
    }

    #[test]
    fn bytes_with_the_id_that_cannot_be_decoded_are_erased_whole() {
        let bytes = format!(
            r#"{{"update_id":1,"message":{{"from":{{"id":{S},"is_bot":false}},"x":1e400}}}}"#
        );
        assert_eq!(scrub(bytes.as_bytes(), &erasure(S)), Scrubbed::Erased);
    }

    #[test]
    fn scrubbing_is_deterministic_and_idempotent() {
        let update = json!({"update_id": 16, "message": {"message_id": 6, "from": user(Y, "Yann"),
            "chat": group(), "date": 2, "text": "ok",
            "reply_to_message": {"message_id": 5, "from": user(S, "Zelda"), "chat": group(), "date": 1}}});
        let first = scrubbed(update.clone(), &erasure(S));
        assert_eq!(first, scrubbed(update, &erasure(S)));
        let Scrubbed::Scrubbed(bytes) = first else {
            panic!("scrubbed expected")
        };
        assert_eq!(scrub(&bytes, &erasure(S)), Scrubbed::Untouched);
    }

    #[test]
    fn mentioned_subjects_include_nested_actors_and_bare_ids() {
        let update = json!({"update_id": 17, "message": {"message_id": 6, "from": user(Y, "Yann"),
            "chat": group(), "date": 2,
            "contact": {"phone_number": "+1", "first_name": "Zelda", "user_id": S}}});
        let n = crate::normalize(1, update.to_string().as_bytes()).expect("accepted");
        let mentioned = mentioned(&n);
        for subject in [
            DataSubject::User(Y),
            DataSubject::Chat(GROUP),
            DataSubject::User(S),
        ] {
            assert!(mentioned.contains(&subject), "{subject:?} in {mentioned:?}");
        }
    }

    #[test]
    fn in_every_fixture_every_mentioned_subject_is_erased_or_scrubbed_out_entirely() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/updates");
        let mut checked = 0;
        for entry in std::fs::read_dir(dir).expect("the fixtures") {
            let path = entry.expect("an entry").path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let bytes = std::fs::read(&path).expect("a fixture");
            let Ok(n) = crate::normalize(1, &bytes) else {
                continue;
            };
            for subject in mentioned(&n) {
                let erased = subject.erasure_of();
                match scrub(&bytes, &erased) {
                    Scrubbed::Erased => {}
                    Scrubbed::Untouched => {
                        panic!("{path:?}: {subject:?} is mentioned but left untouched")
                    }
                    Scrubbed::Scrubbed(out) => {
                        let after = crate::normalize(1, &out).expect("scrubbed stays an update");
                        assert!(
                            !mentioned(&after).contains(&subject),
                            "{path:?}: {subject:?} still mentioned in {}",
                            String::from_utf8_lossy(&out)
                        );
                        assert_eq!(after.raw.update_id, n.raw.update_id);
                    }
                }
                checked += 1;
            }
        }
        assert!(checked > 50, "only {checked} subjects checked");
    }

    #[test]
    fn the_digest_is_of_the_kind_and_id_never_the_bare_id() {
        assert_ne!(DataSubject::User(S).digest(), DataSubject::Chat(S).digest());
        // sha256("user:42"), computed independently with `printf user:42 | sha256sum`.
        let expected = "ea3fd43be1e57d62e163dae19fc740bd6d660eec497235fd0ef859e2bd9fa328";
        let actual: String = DataSubject::User(42)
            .digest()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(actual, expected);
    }
}
