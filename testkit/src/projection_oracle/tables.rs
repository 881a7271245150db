//! The projection tables as the oracle knows them: each table's columns and primary key, copied
//! from `migrations/0001_init.sql` and `0003_update_order.sql` (the schema is the contract the
//! oracle checks, so it is written out here rather than read from the consumer's registry).
//!
//! Every column except `processor_version` (the tie-break between rows of one update, which
//! says which processor wrote a row, not what the row holds) and `updated_at` (when, not what)
//! is compared. The unit test `the_oracle_knows_every_projection_table_and_column` keeps this
//! list equal to `consumer::projection::ProjectionTable::ALL` and its columns.

/// One projection table: its name, compared columns (in this order in every row) and key.
#[derive(Debug)]
pub struct TableSpec {
    pub name: &'static str,
    pub columns: &'static [&'static str],
    pub key: &'static [&'static str],
}

impl TableSpec {
    /// Position of `column` in [`TableSpec::columns`].
    pub fn position(&self, column: &str) -> Option<usize> {
        self.columns.iter().position(|c| *c == column)
    }
}

/// Columns every projection table ends with, in the oracle's order.
const ORDER: [&str; 3] = ["src_date", "src_epoch", "src_update_id"];

macro_rules! tables {
    ($($name:ident: [$($column:ident),* $(,)?] key [$($key:ident),* $(,)?];)*) => {
        /// Every projection table, in `ProjectionTable::ALL`'s order.
        pub const TABLES: &[TableSpec] = &[$(
            TableSpec {
                name: stringify!($name),
                columns: &[$(stringify!($column),)* ORDER[0], ORDER[1], ORDER[2]],
                key: &[$(stringify!($key),)*],
            },
        )*];
    };
}

tables! {
    chats: [bot_id, chat_id, chat_type, title, username, first_name, last_name, is_forum]
        key [bot_id, chat_id];
    users: [bot_id, user_id, is_bot, first_name, last_name, username, language_code, is_premium]
        key [bot_id, user_id];
    messages: [
        bot_id, chat_id, business_connection_id, message_id, message_thread_id, is_topic_message,
        is_channel_post, from_user_id, sender_chat_id, sender_business_bot_id, via_bot_id, date,
        edit_date, text, entities, caption, caption_entities, media_kind, media_file_id,
        media_file_unique_id, service_kind, media_group_id, author_signature, reply_to_message_id,
        forward_origin_type, forward_origin_user_id, forward_origin_chat_id,
        forward_origin_message_id, forward_origin_date, forward_origin,
    ] key [bot_id, chat_id, business_connection_id, message_id];
    message_edits: [
        bot_id, chat_id, business_connection_id, message_id, edit_date, is_channel_post, text,
        entities, caption, caption_entities, media_kind, media_file_id, media_file_unique_id,
    ] key [bot_id, chat_id, business_connection_id, message_id, src_update_id];
    message_reactions: [
        bot_id, chat_id, message_id, actor_type, actor_id, new_reaction, old_reaction, date,
    ] key [bot_id, chat_id, message_id, actor_type, actor_id];
    message_reaction_counts: [bot_id, chat_id, message_id, reactions, date]
        key [bot_id, chat_id, message_id];
    chat_member_events: [
        bot_id, chat_id, user_id, event_kind, actor_user_id, date, old_status, new_status,
        old_chat_member, new_chat_member, invite_link, via_join_request,
        via_chat_folder_invite_link, user_chat_id, bio,
    ] key [bot_id, chat_id, user_id, src_update_id];
    callback_queries: [
        bot_id, callback_query_id, from_user_id, chat_instance, data, game_short_name,
        inline_message_id, message_chat_id, message_id,
    ] key [bot_id, callback_query_id];
    polls: [
        bot_id, poll_id, question, question_entities, options, total_voter_count, is_closed,
        is_anonymous, poll_type, allows_multiple_answers, correct_option_id, explanation,
        explanation_entities, open_period, close_date,
    ] key [bot_id, poll_id];
    poll_answers: [bot_id, poll_id, voter_type, voter_id, option_ids]
        key [bot_id, poll_id, voter_type, voter_id];
    deleted_business_messages: [bot_id, business_connection_id, chat_id, message_id]
        key [bot_id, business_connection_id, chat_id, message_id];
    business_connections: [
        bot_id, business_connection_id, user_id, user_chat_id, date, can_reply, rights, is_enabled,
    ] key [bot_id, business_connection_id];
    inline_queries: [bot_id, inline_query_id, from_user_id, query, query_offset, chat_type]
        key [bot_id, inline_query_id];
    chosen_inline_results: [bot_id, result_id, from_user_id, query, inline_message_id]
        key [bot_id, src_update_id];
}

/// The table named `name`.
pub fn table(name: &str) -> Option<&'static TableSpec> {
    TABLES.iter().find(|t| t.name == name)
}
