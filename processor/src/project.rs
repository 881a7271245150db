//! Typed projections: an update's content → rows of the kind-specific tables.
//!
//! Each kind with a table is read through the [`crate::model`] types. When the content does not
//! have the shape the model expects, the projection returns the error and produces nothing for
//! that kind (the caller still stores the raw row and the users and chats found by
//! [`crate::actors`]). Messages nested in other objects (replies, pinned messages, a callback's
//! message) are partial copies and never become message rows.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::kind::UpdateKind;
use crate::model;
use crate::rows::{
    BusinessConnectionRow, CallbackQueryRow, ChatMemberEventRow, ChosenInlineResultRow,
    DeletedBusinessMessageRow, InlineQueryRow, MessageEditRow, MessageReactionCountRow,
    MessageReactionRow, MessageRow, Normalized, PollAnswerRow, PollRow,
};

/// Members that make a message a piece of content, in the order they are tested: `animation`
/// before `document` (an animation also carries `document`), `venue` before `location` (a venue
/// also carries `location`), `live_photo` before `photo` for the same reason.
const MEDIA_KINDS: [&str; 21] = [
    "animation",
    "live_photo",
    "audio",
    "document",
    "paid_media",
    "photo",
    "sticker",
    "story",
    "video",
    "video_note",
    "voice",
    "checklist",
    "contact",
    "dice",
    "game",
    "giveaway",
    "giveaway_winners",
    "invoice",
    "venue",
    "location",
    "poll",
];

/// Members that make a message a service message.
const SERVICE_KINDS: [&str; 46] = [
    "new_chat_members",
    "left_chat_member",
    "new_chat_title",
    "new_chat_photo",
    "delete_chat_photo",
    "group_chat_created",
    "supergroup_chat_created",
    "channel_chat_created",
    "message_auto_delete_timer_changed",
    "migrate_to_chat_id",
    "migrate_from_chat_id",
    "pinned_message",
    "successful_payment",
    "refunded_payment",
    "users_shared",
    "chat_shared",
    "gift",
    "unique_gift",
    "connected_website",
    "write_access_allowed",
    "passport_data",
    "proximity_alert_triggered",
    "boost_added",
    "chat_background_set",
    "checklist_tasks_done",
    "checklist_tasks_added",
    "direct_message_price_changed",
    "forum_topic_created",
    "forum_topic_edited",
    "forum_topic_closed",
    "forum_topic_reopened",
    "general_forum_topic_hidden",
    "general_forum_topic_unhidden",
    "giveaway_created",
    "giveaway_completed",
    "paid_message_price_changed",
    "suggested_post_approved",
    "suggested_post_approval_failed",
    "suggested_post_declined",
    "suggested_post_paid",
    "suggested_post_refunded",
    "video_chat_scheduled",
    "video_chat_started",
    "video_chat_ended",
    "video_chat_participants_invited",
    "web_app_data",
];

/// The source date of an update's content: when the event happened, in unix seconds.
///
/// For messages it is `edit_date` when present, else `date`, so an edit sorts after the
/// original. Kinds whose content has no event date (callback and inline queries, polls, poll
/// answers, deletions, payments, unknown kinds) have none. Neither has `business_connection`:
/// its `date` is when the connection was established and stays the same in every later update
/// about it (rights changed, disabled). The date is stored, not used for ordering: the update id
/// orders every kind (`migrations/0003_update_order.sql`).
pub(crate) fn source_date(kind: &UpdateKind, content: &Value) -> Option<i64> {
    let int = |key: &str| content.get(key).and_then(Value::as_i64);
    match kind {
        k if k.carries_message() => int("edit_date").or_else(|| int("date")),
        UpdateKind::MessageReaction
        | UpdateKind::MessageReactionCount
        | UpdateKind::MyChatMember
        | UpdateKind::ChatMember
        | UpdateKind::ChatJoinRequest => int("date"),
        UpdateKind::ChatBoost => content
            .get("boost")
            .and_then(|boost| boost.get("add_date"))
            .and_then(Value::as_i64),
        UpdateKind::RemovedChatBoost => int("remove_date"),
        _ => None,
    }
}

/// Context shared by every row of one update.
pub(crate) struct Source<'a> {
    pub bot_id: i64,
    pub update_id: i64,
    pub src_date: Option<i64>,
    pub kind: &'a UpdateKind,
}

/// Adds the kind-specific rows of `content` to `out`.
pub(crate) fn project(
    source: &Source<'_>,
    content: &Value,
    out: &mut Normalized,
) -> Result<(), ProjectionError> {
    let Some(object) = content.as_object() else {
        return match source.kind {
            UpdateKind::Other(_) | UpdateKind::Absent => Ok(()),
            _ => Err(ProjectionError::NotAnObject),
        };
    };
    match source.kind {
        kind if kind.carries_message() => {
            let message = model::Message::deserialize(content)?;
            let row = message_row(source, &message, object);
            if kind.is_edit() {
                out.message_edits.push(edit_row(&row));
            }
            out.messages.push(row);
            if let Some(poll) = object.get("poll").filter(|p| !p.is_null()) {
                // A poll inside a message is a full Poll object as of the message's date.
                out.polls
                    .push(poll_row(source, &model::Poll::deserialize(poll)?));
            }
        }
        UpdateKind::MessageReaction => {
            let reaction = model::MessageReactionUpdated::deserialize(content)?;
            let (actor_type, actor_id) = match (&reaction.actor_chat, &reaction.user) {
                (Some(chat), _) => ("chat", chat.id),
                (None, Some(user)) => ("user", user.id),
                (None, None) => return Err(ProjectionError::NoActor),
            };
            out.message_reactions.push(MessageReactionRow {
                bot_id: source.bot_id,
                chat_id: reaction.chat.id,
                message_id: reaction.message_id,
                actor_type,
                actor_id,
                new_reaction: json_or_empty_array(reaction.new_reaction.as_ref()),
                old_reaction: json_or_empty_array(reaction.old_reaction.as_ref()),
                date: reaction.date,
                src_date: source.src_date,
                src_update_id: source.update_id,
            });
        }
        UpdateKind::MessageReactionCount => {
            let counts = model::MessageReactionCountUpdated::deserialize(content)?;
            out.message_reaction_counts.push(MessageReactionCountRow {
                bot_id: source.bot_id,
                chat_id: counts.chat.id,
                message_id: counts.message_id,
                reactions: json_or_empty_array(counts.reactions.as_ref()),
                date: counts.date,
                src_date: source.src_date,
                src_update_id: source.update_id,
            });
        }
        UpdateKind::MyChatMember | UpdateKind::ChatMember => {
            let event_kind = if *source.kind == UpdateKind::MyChatMember {
                "my_chat_member"
            } else {
                "chat_member"
            };
            let update = model::ChatMemberUpdated::deserialize(content)?;
            let new_member = model::ChatMember::deserialize(&update.new_chat_member)?;
            let old_member = update
                .old_chat_member
                .as_ref()
                .map(model::ChatMember::deserialize)
                .transpose()?;
            let user_id = new_member
                .user
                .as_ref()
                .or(old_member.as_ref().and_then(|m| m.user.as_ref()))
                .map(|user| user.id)
                .ok_or(ProjectionError::NoMember)?;
            out.chat_member_events.push(ChatMemberEventRow {
                bot_id: source.bot_id,
                chat_id: update.chat.id,
                user_id,
                event_kind,
                actor_user_id: update.from.id,
                date: update.date,
                old_status: old_member.and_then(|m| m.status),
                new_status: new_member.status,
                old_chat_member: json(update.old_chat_member.as_ref()),
                new_chat_member: json(Some(&update.new_chat_member)),
                invite_link: json(update.invite_link.as_ref()),
                via_join_request: update.via_join_request,
                via_chat_folder_invite_link: update.via_chat_folder_invite_link,
                user_chat_id: None,
                bio: None,
                src_date: source.src_date,
                src_update_id: source.update_id,
            });
        }
        UpdateKind::ChatJoinRequest => {
            let request = model::ChatJoinRequest::deserialize(content)?;
            out.chat_member_events.push(ChatMemberEventRow {
                bot_id: source.bot_id,
                chat_id: request.chat.id,
                user_id: request.from.id,
                event_kind: "chat_join_request",
                actor_user_id: request.from.id,
                date: request.date,
                old_status: None,
                new_status: None,
                old_chat_member: None,
                new_chat_member: None,
                invite_link: json(request.invite_link.as_ref()),
                via_join_request: None,
                via_chat_folder_invite_link: None,
                user_chat_id: request.user_chat_id,
                bio: request.bio,
                src_date: source.src_date,
                src_update_id: source.update_id,
            });
        }
        UpdateKind::CallbackQuery => {
            let query = model::CallbackQuery::deserialize(content)?;
            out.callback_queries.push(CallbackQueryRow {
                bot_id: source.bot_id,
                callback_query_id: query.id,
                from_user_id: query.from.id,
                chat_instance: query.chat_instance,
                data: query.data,
                game_short_name: query.game_short_name,
                inline_message_id: query.inline_message_id,
                message_chat_id: query.message.as_ref().map(|m| m.chat.id),
                message_id: query.message.as_ref().map(|m| m.message_id),
                src_date: source.src_date,
                src_update_id: source.update_id,
            });
        }
        UpdateKind::Poll => {
            let poll = model::Poll::deserialize(content)?;
            out.polls.push(poll_row(source, &poll));
        }
        UpdateKind::PollAnswer => {
            let answer = model::PollAnswer::deserialize(content)?;
            // A vote on behalf of a chat also carries a placeholder `user` (@Channel_Bot).
            let (voter_type, voter_id) = match (&answer.voter_chat, &answer.user) {
                (Some(chat), _) => ("chat", chat.id),
                (None, Some(user)) => ("user", user.id),
                (None, None) => return Err(ProjectionError::NoActor),
            };
            out.poll_answers.push(PollAnswerRow {
                bot_id: source.bot_id,
                poll_id: answer.poll_id,
                voter_type,
                voter_id,
                option_ids: answer.option_ids.to_string(),
                src_date: source.src_date,
                src_update_id: source.update_id,
            });
        }
        UpdateKind::DeletedBusinessMessages => {
            let deleted = model::BusinessMessagesDeleted::deserialize(content)?;
            let mut message_ids = deleted.message_ids;
            // One row per key even if Telegram lists an id twice.
            message_ids.sort_unstable();
            message_ids.dedup();
            out.deleted_business_messages
                .extend(
                    message_ids
                        .into_iter()
                        .map(|message_id| DeletedBusinessMessageRow {
                            bot_id: source.bot_id,
                            business_connection_id: deleted.business_connection_id.clone(),
                            chat_id: deleted.chat.id,
                            message_id,
                            src_date: source.src_date,
                            src_update_id: source.update_id,
                        }),
                );
        }
        UpdateKind::BusinessConnection => {
            let connection = model::BusinessConnection::deserialize(content)?;
            out.business_connections.push(BusinessConnectionRow {
                bot_id: source.bot_id,
                business_connection_id: connection.id,
                user_id: connection.user.id,
                user_chat_id: connection.user_chat_id,
                date: connection.date,
                can_reply: connection.can_reply,
                rights: json(connection.rights.as_ref()),
                is_enabled: connection.is_enabled,
                src_date: source.src_date,
                src_update_id: source.update_id,
            });
        }
        UpdateKind::InlineQuery => {
            let query = model::InlineQuery::deserialize(content)?;
            out.inline_queries.push(InlineQueryRow {
                bot_id: source.bot_id,
                inline_query_id: query.id,
                from_user_id: query.from.id,
                query: query.query,
                query_offset: query.offset,
                chat_type: query.chat_type,
                src_date: source.src_date,
                src_update_id: source.update_id,
            });
        }
        UpdateKind::ChosenInlineResult => {
            let chosen = model::ChosenInlineResult::deserialize(content)?;
            out.chosen_inline_results.push(ChosenInlineResultRow {
                bot_id: source.bot_id,
                result_id: chosen.result_id,
                from_user_id: chosen.from.id,
                query: chosen.query,
                inline_message_id: chosen.inline_message_id,
                src_date: source.src_date,
                src_update_id: source.update_id,
            });
        }
        // Kinds whose only projection is the users and chats they mention.
        _ => {}
    }
    Ok(())
}

/// Why a kind's typed projection was skipped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProjectionError {
    #[error("content of a known kind is not an object")]
    NotAnObject,
    #[error("content does not match the Bot API shape: {0}")]
    Shape(#[from] serde_json::Error),
    #[error("neither user nor actor/voter chat is present")]
    NoActor,
    #[error("chat member has no user")]
    NoMember,
}

fn message_row(
    source: &Source<'_>,
    message: &model::Message,
    object: &Map<String, Value>,
) -> MessageRow {
    let media_kind = MEDIA_KINDS
        .into_iter()
        .find(|key| object.get(*key).is_some_and(|v| !v.is_null()));
    let (media_file_id, media_file_unique_id) = media_kind
        .and_then(|key| object.get(key))
        .and_then(media_file)
        .map_or((None, None), |file| (file.file_id, file.file_unique_id));
    let service_kind = SERVICE_KINDS
        .into_iter()
        .find(|key| object.get(*key).is_some_and(|v| !v.is_null()));
    let origin = message
        .forward_origin
        .as_ref()
        .and_then(|origin| model::MessageOrigin::deserialize(origin).ok());

    MessageRow {
        bot_id: source.bot_id,
        chat_id: message.chat.id,
        business_connection_id: message.business_connection_id.clone().unwrap_or_default(),
        message_id: message.message_id,
        message_thread_id: message.message_thread_id,
        is_topic_message: message.is_topic_message.unwrap_or(false),
        is_channel_post: source.kind.is_channel_post(),
        from_user_id: message.from.as_ref().map(|u| u.id),
        sender_chat_id: message.sender_chat.as_ref().map(|c| c.id),
        sender_business_bot_id: message.sender_business_bot.as_ref().map(|u| u.id),
        via_bot_id: message.via_bot.as_ref().map(|u| u.id),
        date: message.date,
        edit_date: message.edit_date,
        text: message.text.clone(),
        entities: json(message.entities.as_ref()),
        caption: message.caption.clone(),
        caption_entities: json(message.caption_entities.as_ref()),
        media_kind,
        media_file_id,
        media_file_unique_id,
        service_kind,
        media_group_id: message.media_group_id.clone(),
        author_signature: message.author_signature.clone(),
        reply_to_message_id: message.reply_to_message.as_ref().map(|r| r.message_id),
        forward_origin_type: origin.as_ref().map(|o| o.origin_type.clone()),
        forward_origin_user_id: origin
            .as_ref()
            .and_then(|o| o.sender_user.as_ref())
            .map(|u| u.id),
        forward_origin_chat_id: origin
            .as_ref()
            .and_then(|o| o.chat.as_ref().or(o.sender_chat.as_ref()))
            .map(|c| c.id),
        forward_origin_message_id: origin.as_ref().and_then(|o| o.message_id),
        forward_origin_date: origin.as_ref().and_then(|o| o.date),
        forward_origin: json(message.forward_origin.as_ref()),
        src_date: source.src_date,
        src_update_id: source.update_id,
    }
}

fn edit_row(message: &MessageRow) -> MessageEditRow {
    MessageEditRow {
        bot_id: message.bot_id,
        chat_id: message.chat_id,
        business_connection_id: message.business_connection_id.clone(),
        message_id: message.message_id,
        edit_date: message.edit_date,
        is_channel_post: message.is_channel_post,
        text: message.text.clone(),
        entities: message.entities.clone(),
        caption: message.caption.clone(),
        caption_entities: message.caption_entities.clone(),
        media_kind: message.media_kind,
        media_file_id: message.media_file_id.clone(),
        media_file_unique_id: message.media_file_unique_id.clone(),
        src_date: message.src_date,
        src_update_id: message.src_update_id,
    }
}

fn poll_row(source: &Source<'_>, poll: &model::Poll) -> PollRow {
    PollRow {
        bot_id: source.bot_id,
        poll_id: poll.id.clone(),
        question: poll.question.clone(),
        question_entities: json(poll.question_entities.as_ref()),
        options: json(poll.options.as_ref()),
        total_voter_count: poll.total_voter_count,
        is_closed: poll.is_closed,
        is_anonymous: poll.is_anonymous,
        poll_type: poll.poll_type.clone(),
        allows_multiple_answers: poll.allows_multiple_answers,
        correct_option_id: poll.correct_option_id,
        explanation: poll.explanation.clone(),
        explanation_entities: json(poll.explanation_entities.as_ref()),
        open_period: poll.open_period,
        close_date: poll.close_date,
        src_date: source.src_date,
        src_update_id: source.update_id,
    }
}

/// The file of a media member: the object itself, or the largest size of a photo-like array
/// (by area, then byte size; the later entry wins a tie, as Telegram lists sizes ascending).
fn media_file(media: &Value) -> Option<model::FileRef> {
    match media {
        Value::Array(sizes) => sizes
            .iter()
            .filter_map(|size| model::FileRef::deserialize(size).ok())
            .max_by_key(|size| {
                let area = size
                    .width
                    .unwrap_or(0)
                    .saturating_mul(size.height.unwrap_or(0));
                (area, size.file_size.unwrap_or(0))
            }),
        Value::Object(_) => model::FileRef::deserialize(media)
            .ok()
            .filter(|file| file.file_id.is_some()),
        _ => None,
    }
}

/// JSON text of a present, non-null value.
fn json(value: Option<&Value>) -> Option<String> {
    value.filter(|v| !v.is_null()).map(Value::to_string)
}

fn json_or_empty_array(value: Option<&Value>) -> String {
    json(value).unwrap_or_else(|| "[]".to_owned())
}

#[cfg(test)]
mod tests {
    use crate::{Normalized, normalize};

    fn run(json: &str) -> Normalized {
        normalize(1, json.as_bytes()).expect("accepted")
    }

    #[test]
    fn an_animation_is_not_taken_for_its_compatibility_document() {
        let out = run(
            r#"{"update_id":1,"message":{"message_id":1,"date":5,"chat":{"id":2,"type":"private"},
                "document":{"file_id":"D","file_unique_id":"d"},
                "animation":{"file_id":"A","file_unique_id":"a","width":1,"height":1}}}"#,
        );
        let m = &out.messages[0];
        assert_eq!(m.media_kind, Some("animation"));
        assert_eq!(m.media_file_id.as_deref(), Some("A"));
        assert_eq!(m.media_file_unique_id.as_deref(), Some("a"));
    }

    #[test]
    fn a_venue_is_not_taken_for_its_location() {
        let out = run(
            r#"{"update_id":1,"message":{"message_id":1,"date":5,"chat":{"id":2,"type":"private"},
                "location":{"latitude":1.5,"longitude":2.5},
                "venue":{"location":{"latitude":1.5,"longitude":2.5},"title":"T","address":"A"}}}"#,
        );
        assert_eq!(out.messages[0].media_kind, Some("venue"));
        assert_eq!(out.messages[0].media_file_id, None);
    }

    #[test]
    fn a_photo_takes_its_largest_size_whatever_the_listed_order() {
        let out = run(
            r#"{"update_id":1,"message":{"message_id":1,"date":5,"chat":{"id":2,"type":"private"},
                "photo":[{"file_id":"big","file_unique_id":"B","width":800,"height":600},
                         {"file_id":"small","file_unique_id":"S","width":90,"height":60}]}}"#,
        );
        assert_eq!(out.messages[0].media_file_id.as_deref(), Some("big"));
    }

    #[test]
    fn a_poll_message_also_yields_the_poll_dated_by_the_message() {
        let out = run(
            r#"{"update_id":9,"message":{"message_id":1,"date":5,"chat":{"id":2,"type":"group","title":"g"},
                "poll":{"id":"p1","question":"Q?","options":[],"total_voter_count":0,
                        "is_closed":false,"is_anonymous":true,"type":"quiz",
                        "allows_multiple_answers":false,"correct_option_id":1}}}"#,
        );
        assert_eq!(out.messages[0].media_kind, Some("poll"));
        assert_eq!(out.polls.len(), 1);
        let poll = &out.polls[0];
        assert_eq!(poll.poll_id, "p1");
        assert_eq!(poll.poll_type.as_deref(), Some("quiz"));
        assert_eq!(poll.correct_option_id, Some(1));
        assert_eq!((poll.src_date, poll.src_update_id), (Some(5), 9));
    }

    #[test]
    fn a_vote_on_behalf_of_a_chat_is_keyed_by_the_chat_not_the_placeholder_user() {
        let out = run(
            r#"{"update_id":1,"poll_answer":{"poll_id":"p","voter_chat":{"id":-100,"type":"channel","title":"c"},
                "user":{"id":136817688,"is_bot":true,"first_name":"Channel"},"option_ids":[]}}"#,
        );
        let answer = &out.poll_answers[0];
        assert_eq!((answer.voter_type, answer.voter_id), ("chat", -100));
        assert_eq!(answer.option_ids, "[]");
    }

    #[test]
    fn an_anonymous_reaction_is_keyed_by_the_actor_chat() {
        let out = run(
            r#"{"update_id":1,"message_reaction":{"chat":{"id":-5,"type":"supergroup","title":"s"},
                "message_id":3,"actor_chat":{"id":-5,"type":"supergroup","title":"s"},"date":7,
                "old_reaction":[],"new_reaction":[{"type":"emoji","emoji":"x"}]}}"#,
        );
        let reaction = &out.message_reactions[0];
        assert_eq!((reaction.actor_type, reaction.actor_id), ("chat", -5));
        assert_eq!(reaction.old_reaction, "[]");
    }

    #[test]
    fn a_reaction_without_any_actor_is_a_projection_error_not_a_rejection() {
        let out = run(
            r#"{"update_id":1,"message_reaction":{"chat":{"id":-5,"type":"group","title":"g"},
                "message_id":3,"date":7,"old_reaction":[],"new_reaction":[]}}"#,
        );
        assert!(out.message_reactions.is_empty());
        assert_eq!(out.chats.len(), 1);
        assert!(out.projection_error.is_some());
    }

    #[test]
    fn a_wrong_typed_known_field_skips_the_projection_but_keeps_users_and_chats() {
        let out = run(r#"{"update_id":1,"message":{"message_id":"seven","date":5,
                "chat":{"id":2,"type":"private","first_name":"P"},
                "from":{"id":2,"is_bot":false,"first_name":"P"}}}"#);
        assert!(out.messages.is_empty());
        assert_eq!(out.users.len(), 1);
        assert_eq!(out.chats.len(), 1);
        let error = out.projection_error.expect("explained");
        assert!(
            error.contains("does not match the Bot API shape"),
            "{error}"
        );
    }

    #[test]
    fn a_known_kind_whose_content_is_not_an_object_is_explained() {
        let out = run(r#"{"update_id":1,"callback_query":[1,2]}"#);
        assert_eq!(out.raw.update_type, "callback_query");
        assert_eq!(out.derived_row_count(), 0);
        assert_eq!(
            out.projection_error.as_deref(),
            Some("content of a known kind is not an object")
        );
    }

    #[test]
    fn an_unknown_kind_with_scalar_content_is_kept_without_error() {
        let out = run(r#"{"update_id":1,"future_thing":42}"#);
        assert_eq!(out.raw.update_type, "future_thing");
        assert_eq!(out.projection_error, None);
    }

    #[test]
    fn a_message_id_listed_twice_in_a_deletion_yields_one_row() {
        let out = run(
            r#"{"update_id":1,"deleted_business_messages":{"business_connection_id":"b",
                "chat":{"id":2,"type":"private"},"message_ids":[5,4,5]}}"#,
        );
        let ids: Vec<_> = out
            .deleted_business_messages
            .iter()
            .map(|d| d.message_id)
            .collect();
        assert_eq!(ids, [4, 5]);
    }

    #[test]
    fn a_member_update_without_a_member_user_is_a_projection_error() {
        let out = run(
            r#"{"update_id":1,"chat_member":{"chat":{"id":-1,"type":"group","title":"g"},
                "from":{"id":3,"is_bot":false,"first_name":"F"},"date":4,
                "new_chat_member":{"status":"member"}}}"#,
        );
        assert!(out.chat_member_events.is_empty());
        assert_eq!(
            out.projection_error.as_deref(),
            Some("chat member has no user")
        );
    }

    #[test]
    fn a_message_forwarded_from_a_channel_records_the_channel_and_its_message() {
        let out = run(
            r#"{"update_id":1,"message":{"message_id":1,"date":5,"chat":{"id":2,"type":"private"},
                "forward_origin":{"type":"channel","chat":{"id":-100,"type":"channel","title":"C"},
                                  "message_id":77,"date":3}}}"#,
        );
        let m = &out.messages[0];
        assert_eq!(m.forward_origin_type.as_deref(), Some("channel"));
        assert_eq!(m.forward_origin_chat_id, Some(-100));
        assert_eq!(m.forward_origin_message_id, Some(77));
        assert_eq!(m.forward_origin_user_id, None);
        assert!(out.chats.iter().any(|c| c.chat_id == -100));
    }

    #[test]
    fn source_dates_come_from_each_kinds_event_time() {
        let date = |json: &str| run(json).src_date;
        assert_eq!(
            date(
                r#"{"update_id":1,"chat_boost":{"chat":{"id":1,"type":"channel"},"boost":{"add_date":11}}}"#
            ),
            Some(11)
        );
        assert_eq!(
            date(
                r#"{"update_id":1,"removed_chat_boost":{"chat":{"id":1,"type":"channel"},"remove_date":12}}"#
            ),
            Some(12)
        );
        assert_eq!(
            date(
                r#"{"update_id":1,"business_connection":{"id":"b","user":{"id":1,"is_bot":false},"date":13}}"#
            ),
            None
        );
        assert_eq!(date(r#"{"update_id":1,"mystery":{"date":14}}"#), None);
    }
}
