//! The `allowed_updates` setting of one bot, with Telegram's semantics.
//!
//! Telegram (telegram-bot-api `Client::get_allowed_update_types`) filters when an update is
//! *created*, not when it is served: updates queued before a change are still delivered. The
//! setting is remembered across calls; a call without the parameter, or with a value that is not a
//! JSON array of strings, leaves it unchanged. Names Telegram does not know are ignored, and a list
//! with no known name (including the empty list) restores the default: every kind except
//! `chat_member`, `message_reaction` and `message_reaction_count`. An update whose kind the
//! simulator does not know (a future kind) is allowed by the default setting and refused by an
//! explicit list, as Telegram does for kinds the bot did not ask for. Bytes with no kind at all
//! (not an object) are always queued, so malformed pushes reach the client.

use std::collections::BTreeSet;

/// Every update kind the Bot API server knows, in the server's own order.
pub const KNOWN_KINDS: &[&str] = &[
    "message",
    "edited_message",
    "channel_post",
    "edited_channel_post",
    "inline_query",
    "chosen_inline_result",
    "callback_query",
    "shipping_query",
    "pre_checkout_query",
    "poll",
    "poll_answer",
    "my_chat_member",
    "chat_member",
    "chat_join_request",
    "chat_boost",
    "removed_chat_boost",
    "message_reaction",
    "message_reaction_count",
    "business_connection",
    "business_message",
    "edited_business_message",
    "deleted_business_messages",
    "purchased_paid_media",
    "managed_bot",
    "guest_message",
];

/// Kinds Telegram leaves out unless a bot lists them explicitly.
pub const OPT_IN_KINDS: &[&str] = &["chat_member", "message_reaction", "message_reaction_count"];

/// Which update kinds a bot receives.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum AllowedUpdates {
    /// Telegram's default: everything except [`OPT_IN_KINDS`].
    #[default]
    Default,
    /// Only these kinds (each one of [`KNOWN_KINDS`]).
    Only(BTreeSet<String>),
}

impl AllowedUpdates {
    /// Builds a setting from names, exactly as a bot's request would set it.
    pub fn from_names<S: AsRef<str>>(names: &[S]) -> Self {
        let known: BTreeSet<String> = names
            .iter()
            .map(|n| n.as_ref().to_lowercase())
            .filter(|n| KNOWN_KINDS.contains(&n.as_str()))
            .collect();
        if known.is_empty() {
            Self::Default
        } else {
            Self::Only(known)
        }
    }

    /// Parses the `allowed_updates` request parameter; `None` means "leave the setting unchanged".
    pub(crate) fn from_param(text: &str) -> Option<Self> {
        if text.is_empty() {
            return None;
        }
        let value: serde_json::Value = serde_json::from_str(text).ok()?;
        let items = value.as_array()?;
        let names: Option<Vec<&str>> = items.iter().map(serde_json::Value::as_str).collect();
        Some(Self::from_names(&names?))
    }

    /// Whether an update of this kind is queued for the bot.
    pub fn allows(&self, kind: Option<&str>) -> bool {
        match (self, kind) {
            (_, None) => true,
            (Self::Default, Some(kind)) => !OPT_IN_KINDS.contains(&kind),
            (Self::Only(set), Some(kind)) => set.contains(kind),
        }
    }

    /// The explicit list in the server's order, as `getWebhookInfo` reports it (`None` = default).
    pub fn names(&self) -> Option<Vec<&'static str>> {
        match self {
            Self::Default => None,
            Self::Only(set) => Some(
                KNOWN_KINDS
                    .iter()
                    .copied()
                    .filter(|k| set.contains(*k))
                    .collect(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_excludes_member_and_reaction_kinds_but_allows_future_kinds() {
        let default = AllowedUpdates::Default;
        assert!(default.allows(Some("message")));
        assert!(default.allows(Some("some_future_kind")));
        assert!(!default.allows(Some("chat_member")));
        assert!(!default.allows(Some("message_reaction")));
        assert!(!default.allows(Some("message_reaction_count")));
    }

    #[test]
    fn an_explicit_list_allows_only_its_kinds_and_always_kindless_bytes() {
        let only = AllowedUpdates::from_param(r#"["Message","chat_member"]"#).expect("a list");
        assert!(only.allows(Some("message")));
        assert!(only.allows(Some("chat_member")));
        assert!(!only.allows(Some("edited_message")));
        assert!(!only.allows(Some("some_future_kind")));
        assert!(only.allows(None));
        assert_eq!(only.names(), Some(vec!["message", "chat_member"]));
    }

    #[test]
    fn an_empty_or_unknown_only_list_means_the_default() {
        assert_eq!(
            AllowedUpdates::from_param("[]"),
            Some(AllowedUpdates::Default)
        );
        assert_eq!(
            AllowedUpdates::from_param(r#"["nope"]"#),
            Some(AllowedUpdates::Default)
        );
    }

    #[test]
    fn an_absent_or_invalid_parameter_changes_nothing() {
        assert_eq!(AllowedUpdates::from_param(""), None);
        assert_eq!(AllowedUpdates::from_param("message"), None);
        assert_eq!(AllowedUpdates::from_param(r#"{"a":1}"#), None);
        assert_eq!(AllowedUpdates::from_param(r#"["message",1]"#), None);
    }
}
