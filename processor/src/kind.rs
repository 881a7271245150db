//! The kind of an update: which optional member of Telegram's `Update` object is present.
//!
//! Every kind of Bot API 10.3 is named; any other key is kept as [`UpdateKind::Other`] with its
//! name, so a kind Telegram adds later is stored (raw) rather than refused. The name round-trips:
//! `UpdateKind::from_key(k).as_str() == k` for every key.

/// Which member of the `Update` object carries the update's content.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum UpdateKind {
    Message,
    EditedMessage,
    ChannelPost,
    EditedChannelPost,
    BusinessConnection,
    BusinessMessage,
    EditedBusinessMessage,
    DeletedBusinessMessages,
    GuestMessage,
    MessageReaction,
    MessageReactionCount,
    InlineQuery,
    ChosenInlineResult,
    CallbackQuery,
    ShippingQuery,
    PreCheckoutQuery,
    PurchasedPaidMedia,
    Poll,
    PollAnswer,
    MyChatMember,
    ChatMember,
    ChatJoinRequest,
    ChatBoost,
    RemovedChatBoost,
    ManagedBot,
    Subscription,
    StoppedMessageGeneration,
    /// A key this processor does not know (a newer Bot API kind), verbatim.
    Other(String),
    /// The object has no member besides `update_id`; its `update_type` is the empty string.
    Absent,
}

/// Every named kind with its key, in Bot API order.
/// Every update kind this processor names, as Telegram spells it: what a producer asks Telegram
/// for (`allowed_updates`), so a kind the processor models is never left unrequested.
pub const UPDATE_KINDS: [&str; NAMED.len()] = {
    let mut names = [""; NAMED.len()];
    let mut i = 0;
    while i < NAMED.len() {
        names[i] = NAMED[i].0;
        i += 1;
    }
    names
};

const NAMED: [(&str, UpdateKind); 27] = [
    ("message", UpdateKind::Message),
    ("edited_message", UpdateKind::EditedMessage),
    ("channel_post", UpdateKind::ChannelPost),
    ("edited_channel_post", UpdateKind::EditedChannelPost),
    ("business_connection", UpdateKind::BusinessConnection),
    ("business_message", UpdateKind::BusinessMessage),
    ("edited_business_message", UpdateKind::EditedBusinessMessage),
    (
        "deleted_business_messages",
        UpdateKind::DeletedBusinessMessages,
    ),
    ("guest_message", UpdateKind::GuestMessage),
    ("message_reaction", UpdateKind::MessageReaction),
    ("message_reaction_count", UpdateKind::MessageReactionCount),
    ("inline_query", UpdateKind::InlineQuery),
    ("chosen_inline_result", UpdateKind::ChosenInlineResult),
    ("callback_query", UpdateKind::CallbackQuery),
    ("shipping_query", UpdateKind::ShippingQuery),
    ("pre_checkout_query", UpdateKind::PreCheckoutQuery),
    ("purchased_paid_media", UpdateKind::PurchasedPaidMedia),
    ("poll", UpdateKind::Poll),
    ("poll_answer", UpdateKind::PollAnswer),
    ("my_chat_member", UpdateKind::MyChatMember),
    ("chat_member", UpdateKind::ChatMember),
    ("chat_join_request", UpdateKind::ChatJoinRequest),
    ("chat_boost", UpdateKind::ChatBoost),
    ("removed_chat_boost", UpdateKind::RemovedChatBoost),
    ("managed_bot", UpdateKind::ManagedBot),
    ("subscription", UpdateKind::Subscription),
    (
        "stopped_message_generation",
        UpdateKind::StoppedMessageGeneration,
    ),
];

impl UpdateKind {
    /// The kind named by an `Update` member key.
    pub fn from_key(key: &str) -> UpdateKind {
        NAMED
            .iter()
            .find(|(name, _)| *name == key)
            .map(|(_, kind)| kind.clone())
            .unwrap_or_else(|| UpdateKind::Other(key.to_owned()))
    }

    /// The member key, as stored in `raw_updates.update_type`.
    pub fn as_str(&self) -> &str {
        match self {
            UpdateKind::Other(key) => key,
            UpdateKind::Absent => "",
            named => NAMED
                .iter()
                .find(|(_, kind)| kind == named)
                .map_or("", |(name, _)| name),
        }
    }

    /// Whether the content is a full `Message` that becomes a `messages` row.
    pub fn carries_message(&self) -> bool {
        matches!(
            self,
            UpdateKind::Message
                | UpdateKind::EditedMessage
                | UpdateKind::ChannelPost
                | UpdateKind::EditedChannelPost
                | UpdateKind::BusinessMessage
                | UpdateKind::EditedBusinessMessage
                | UpdateKind::GuestMessage
        )
    }

    /// Whether the content is a new version of an existing message (a `message_edits` row).
    pub fn is_edit(&self) -> bool {
        matches!(
            self,
            UpdateKind::EditedMessage
                | UpdateKind::EditedChannelPost
                | UpdateKind::EditedBusinessMessage
        )
    }

    /// Whether the message was posted in a channel.
    pub fn is_channel_post(&self) -> bool {
        matches!(
            self,
            UpdateKind::ChannelPost | UpdateKind::EditedChannelPost
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_key_round_trips_to_its_kind() {
        for (name, kind) in NAMED.iter() {
            assert_eq!(UpdateKind::from_key(name), *kind);
            assert_eq!(kind.as_str(), *name);
        }
    }

    #[test]
    fn an_unknown_key_is_kept_verbatim() {
        let kind = UpdateKind::from_key("quantum_message");
        assert_eq!(kind, UpdateKind::Other("quantum_message".to_owned()));
        assert_eq!(kind.as_str(), "quantum_message");
    }

    #[test]
    fn keys_are_case_sensitive() {
        assert_eq!(
            UpdateKind::from_key("Message"),
            UpdateKind::Other("Message".to_owned())
        );
    }

    #[test]
    fn only_message_kinds_carry_messages_and_only_edits_are_edits() {
        let carriers: Vec<_> = NAMED
            .iter()
            .filter(|(_, k)| k.carries_message())
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(
            carriers,
            [
                "message",
                "edited_message",
                "channel_post",
                "edited_channel_post",
                "business_message",
                "edited_business_message",
                "guest_message"
            ]
        );
        let edits: Vec<_> = NAMED
            .iter()
            .filter(|(_, k)| k.is_edit())
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(
            edits,
            [
                "edited_message",
                "edited_channel_post",
                "edited_business_message"
            ]
        );
    }
}
