-- tgingest schema, version 1. This schema is a public contract: later migrations only add
-- (tables, nullable columns, indexes), never rename, retype or drop.
--
-- Three groups of tables:
--   * raw_updates             every consumed update, byte-exact (the record of truth);
--   * projections             typed rows derived by processor::normalize, one table per row
--                             struct, column names = struct field names (+ processor_version,
--                             updated_at);
--   * consumer bookkeeping    consumer_offsets (the offset store of record), dead_letters,
--                             offset_gaps.
--
-- LAST-WRITER-WINS RULE (every projection table). Each row carries its ordering key
-- (src_date, src_update_id, processor_version): src_date is the source event's unix time in
-- seconds (for messages: edit_date when present, else date; for updates without a date the
-- consumer substitutes the Kafka record's receive time), src_update_id the update it came from.
-- The consumer must upsert with exactly this shape:
--
--   INSERT INTO t AS t (cols…, src_date, src_update_id, processor_version) VALUES/SELECT …
--   ON CONFLICT (primary key…) DO UPDATE SET col = EXCLUDED.col, …,
--       src_date = EXCLUDED.src_date, src_update_id = EXCLUDED.src_update_id,
--       processor_version = EXCLUDED.processor_version, updated_at = now()
--   WHERE (EXCLUDED.src_date, EXCLUDED.src_update_id, EXCLUDED.processor_version)
--       > (t.src_date, t.src_update_id, t.processor_version)
--
-- so equal input never rewrites a row (no churn, no dead tuples on replay), older input never
-- regresses one, and the final state does not depend on delivery order. processor_version only
-- breaks ties between rows derived from the same update: a newer processor rewrites rows of that
-- update, never rows of a newer update. Rows of one batch must be deduplicated by key first
-- (keeping the greatest ordering key), or PostgreSQL raises 21000.
--
-- There are no foreign keys between projections: a reaction may arrive before its message, an
-- edit before its original. Columns described as "JSON text" hold jsonb built from the
-- processor's sanitised JSON (no \u0000, no lone surrogates), so the cast never fails.
-- Telegram dates are kept as unix seconds (bigint), the unit of src_date.

------------------------------------------------------------------------------------------------
-- raw_updates
------------------------------------------------------------------------------------------------

-- One row per distinct payload of an update. A duplicate delivery (same bytes) hits the primary
-- key and is absorbed (ON CONFLICT DO NOTHING, or a processor_version bump). A *different*
-- payload under an existing (bot_id, update_id) is not a duplicate: Telegram reuses update ids
-- after a week without updates. It is kept as a second row and shows in raw_update_collisions.
CREATE TABLE raw_updates (
    bot_id            bigint      NOT NULL,
    update_id         bigint      NOT NULL,
    payload_sha256    bytea       NOT NULL CHECK (octet_length(payload_sha256) = 32),
    -- The update's kind ("message", …), an unknown kind's key verbatim, '' when there is none.
    update_type       text        NOT NULL,
    -- The exact bytes Telegram sent: the record of truth.
    payload_bytes     bytea       NOT NULL,
    -- The same payload as jsonb, for queries; NULL when PostgreSQL's jsonb refuses it
    -- (\u0000 escapes, lone surrogates, numbers beyond numeric): processor's jsonb_ok = false.
    payload           jsonb,
    -- When the producer received the update (tg-received-at header).
    received_at       timestamptz,
    kafka_topic       text        NOT NULL,
    kafka_partition   integer     NOT NULL,
    kafka_offset      bigint      NOT NULL,
    kafka_timestamp   timestamptz,
    processor_version integer     NOT NULL,
    inserted_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (bot_id, update_id, payload_sha256)
);

-- Accounting: which Kafka records have rows (exactly-once checks, replay audits).
CREATE INDEX raw_updates_kafka_position ON raw_updates (kafka_topic, kafka_partition, kafka_offset);

-- Updates whose id was seen with more than one payload (update id reuse, or tampering).
CREATE VIEW raw_update_collisions AS
SELECT bot_id,
       update_id,
       count(*)         AS payloads,
       min(received_at) AS first_received_at,
       max(received_at) AS last_received_at
  FROM raw_updates
 GROUP BY bot_id, update_id
HAVING count(*) > 1;

------------------------------------------------------------------------------------------------
-- projections (processor::*Row)
------------------------------------------------------------------------------------------------

-- processor::ChatRow — the latest observation of every chat seen anywhere in an update.
CREATE TABLE chats (
    bot_id            bigint  NOT NULL,
    chat_id           bigint  NOT NULL,
    chat_type         text    NOT NULL,
    title             text,
    username          text,
    first_name        text,
    last_name         text,
    is_forum          boolean,
    src_date          bigint  NOT NULL,
    src_update_id     bigint  NOT NULL,
    processor_version integer NOT NULL,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (bot_id, chat_id)
);

-- processor::UserRow — the latest observation of every user seen anywhere in an update.
CREATE TABLE users (
    bot_id            bigint  NOT NULL,
    user_id           bigint  NOT NULL,
    is_bot            boolean NOT NULL,
    first_name        text,
    last_name         text,
    username          text,
    language_code     text,
    is_premium        boolean,
    src_date          bigint  NOT NULL,
    src_update_id     bigint  NOT NULL,
    processor_version integer NOT NULL,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (bot_id, user_id)
);

CREATE INDEX users_by_username ON users (bot_id, lower(username)) WHERE username IS NOT NULL;

-- processor::MessageRow — the latest version of every message. message_id 0 is not unique
-- (scheduled business messages), so the business connection is part of the key; '' outside one.
CREATE TABLE messages (
    bot_id                    bigint  NOT NULL,
    chat_id                   bigint  NOT NULL,
    business_connection_id    text    NOT NULL DEFAULT '',
    message_id                bigint  NOT NULL,
    message_thread_id         bigint,
    is_topic_message          boolean NOT NULL,
    is_channel_post           boolean NOT NULL,
    from_user_id              bigint,
    sender_chat_id            bigint,
    sender_business_bot_id    bigint,
    via_bot_id                bigint,
    date                      bigint  NOT NULL,
    edit_date                 bigint,
    text                      text,
    entities                  jsonb,       -- JSON text of entities
    caption                   text,
    caption_entities          jsonb,       -- JSON text of caption_entities
    media_kind                text,        -- photo, video, sticker, poll, location, …
    media_file_id             text,        -- largest photo size for photos
    media_file_unique_id      text,
    service_kind              text,        -- new_chat_members, pinned_message, …
    media_group_id            text,
    author_signature          text,
    reply_to_message_id       bigint,
    forward_origin_type       text,        -- user, hidden_user, chat, channel
    forward_origin_user_id    bigint,
    forward_origin_chat_id    bigint,
    forward_origin_message_id bigint,
    forward_origin_date       bigint,
    forward_origin            jsonb,       -- JSON text of the whole forward_origin
    src_date                  bigint  NOT NULL,
    src_update_id             bigint  NOT NULL,
    processor_version         integer NOT NULL,
    updated_at                timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (bot_id, chat_id, business_connection_id, message_id)
);

-- A chat's messages by date; a user's messages by date; the messages of an album.
CREATE INDEX messages_of_chat_by_date ON messages (bot_id, chat_id, date);
CREATE INDEX messages_of_user_by_date ON messages (bot_id, from_user_id, date)
    WHERE from_user_id IS NOT NULL;
CREATE INDEX messages_of_media_group ON messages (bot_id, media_group_id)
    WHERE media_group_id IS NOT NULL;

-- processor::MessageEditRow — every edit, as history. edit_date has one-second resolution, so
-- the update id tells two edits apart; the primary key prefix serves "edits of a message".
CREATE TABLE message_edits (
    bot_id                 bigint  NOT NULL,
    chat_id                bigint  NOT NULL,
    business_connection_id text    NOT NULL DEFAULT '',
    message_id             bigint  NOT NULL,
    edit_date              bigint,
    is_channel_post        boolean NOT NULL,
    text                   text,
    entities               jsonb,
    caption                text,
    caption_entities       jsonb,
    media_kind             text,
    media_file_id          text,
    media_file_unique_id   text,
    src_date               bigint  NOT NULL,
    src_update_id          bigint  NOT NULL,
    processor_version      integer NOT NULL,
    updated_at             timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (bot_id, chat_id, business_connection_id, message_id, src_update_id)
);

-- processor::MessageReactionRow — the current reaction set of each actor on each message.
CREATE TABLE message_reactions (
    bot_id            bigint  NOT NULL,
    chat_id           bigint  NOT NULL,
    message_id        bigint  NOT NULL,
    actor_type        text    NOT NULL CHECK (actor_type IN ('user', 'chat')),
    actor_id          bigint  NOT NULL,
    new_reaction      jsonb   NOT NULL,    -- JSON text; [] once every reaction is removed
    old_reaction      jsonb   NOT NULL,
    date              bigint  NOT NULL,
    src_date          bigint  NOT NULL,
    src_update_id     bigint  NOT NULL,
    processor_version integer NOT NULL,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (bot_id, chat_id, message_id, actor_type, actor_id)
);

CREATE INDEX message_reactions_by_actor ON message_reactions (bot_id, actor_type, actor_id);

-- processor::MessageReactionCountRow — anonymous reaction totals per message.
CREATE TABLE message_reaction_counts (
    bot_id            bigint  NOT NULL,
    chat_id           bigint  NOT NULL,
    message_id        bigint  NOT NULL,
    reactions         jsonb   NOT NULL,
    date              bigint  NOT NULL,
    src_date          bigint  NOT NULL,
    src_update_id     bigint  NOT NULL,
    processor_version integer NOT NULL,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (bot_id, chat_id, message_id)
);

-- processor::ChatMemberEventRow — my_chat_member, chat_member and chat_join_request, as history.
CREATE TABLE chat_member_events (
    bot_id                      bigint  NOT NULL,
    chat_id                     bigint  NOT NULL,
    user_id                     bigint  NOT NULL,
    src_update_id               bigint  NOT NULL,
    event_kind                  text    NOT NULL
        CHECK (event_kind IN ('my_chat_member', 'chat_member', 'chat_join_request')),
    actor_user_id               bigint  NOT NULL,
    date                        bigint  NOT NULL,
    old_status                  text,
    new_status                  text,
    old_chat_member             jsonb,
    new_chat_member             jsonb,
    invite_link                 jsonb,
    via_join_request            boolean,
    via_chat_folder_invite_link boolean,
    user_chat_id                bigint,
    bio                         text,
    src_date                    bigint  NOT NULL,
    processor_version           integer NOT NULL,
    updated_at                  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (bot_id, chat_id, user_id, src_update_id)
);

CREATE INDEX chat_member_events_of_chat_by_date ON chat_member_events (bot_id, chat_id, date);

-- processor::CallbackQueryRow
CREATE TABLE callback_queries (
    bot_id            bigint  NOT NULL,
    callback_query_id text    NOT NULL,
    from_user_id      bigint  NOT NULL,
    chat_instance     text,
    data              text,
    game_short_name   text,
    inline_message_id text,
    message_chat_id   bigint,
    message_id        bigint,
    src_date          bigint  NOT NULL,
    src_update_id     bigint  NOT NULL,
    processor_version integer NOT NULL,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (bot_id, callback_query_id)
);

CREATE INDEX callback_queries_of_user ON callback_queries (bot_id, from_user_id, src_date);

-- processor::PollRow — the latest state of each poll (from poll updates and poll messages).
CREATE TABLE polls (
    bot_id                  bigint  NOT NULL,
    poll_id                 text    NOT NULL,
    question                text,
    question_entities       jsonb,
    options                 jsonb,
    total_voter_count       bigint,
    is_closed               boolean,
    is_anonymous            boolean,
    poll_type               text,
    allows_multiple_answers boolean,
    correct_option_id       bigint,
    explanation             text,
    explanation_entities    jsonb,
    open_period             bigint,
    close_date              bigint,
    src_date                bigint  NOT NULL,
    src_update_id           bigint  NOT NULL,
    processor_version       integer NOT NULL,
    updated_at              timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (bot_id, poll_id)
);

-- processor::PollAnswerRow — each voter's current answer ([] = vote retracted).
CREATE TABLE poll_answers (
    bot_id            bigint  NOT NULL,
    poll_id           text    NOT NULL,
    voter_type        text    NOT NULL CHECK (voter_type IN ('user', 'chat')),
    voter_id          bigint  NOT NULL,
    option_ids        jsonb   NOT NULL,
    src_date          bigint  NOT NULL,
    src_update_id     bigint  NOT NULL,
    processor_version integer NOT NULL,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (bot_id, poll_id, voter_type, voter_id)
);

-- processor::DeletedBusinessMessageRow — a mark per deleted business message; join to messages
-- on (bot_id, chat_id, business_connection_id, message_id).
CREATE TABLE deleted_business_messages (
    bot_id                 bigint  NOT NULL,
    business_connection_id text    NOT NULL,
    chat_id                bigint  NOT NULL,
    message_id             bigint  NOT NULL,
    src_date               bigint  NOT NULL,
    src_update_id          bigint  NOT NULL,
    processor_version      integer NOT NULL,
    updated_at             timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (bot_id, business_connection_id, chat_id, message_id)
);

-- processor::BusinessConnectionRow
CREATE TABLE business_connections (
    bot_id                 bigint  NOT NULL,
    business_connection_id text    NOT NULL,
    user_id                bigint  NOT NULL,
    user_chat_id           bigint,
    date                   bigint  NOT NULL,
    can_reply              boolean,
    rights                 jsonb,
    is_enabled             boolean,
    src_date               bigint  NOT NULL,
    src_update_id          bigint  NOT NULL,
    processor_version      integer NOT NULL,
    updated_at             timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (bot_id, business_connection_id)
);

-- processor::InlineQueryRow (query_offset = the API's offset).
CREATE TABLE inline_queries (
    bot_id            bigint  NOT NULL,
    inline_query_id   text    NOT NULL,
    from_user_id      bigint  NOT NULL,
    query             text    NOT NULL,
    query_offset      text,
    chat_type         text,
    src_date          bigint  NOT NULL,
    src_update_id     bigint  NOT NULL,
    processor_version integer NOT NULL,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (bot_id, inline_query_id)
);

-- processor::ChosenInlineResultRow — result ids are not unique, so the update is the key.
CREATE TABLE chosen_inline_results (
    bot_id            bigint  NOT NULL,
    src_update_id     bigint  NOT NULL,
    result_id         text    NOT NULL,
    from_user_id      bigint  NOT NULL,
    query             text    NOT NULL,
    inline_message_id text,
    src_date          bigint  NOT NULL,
    processor_version integer NOT NULL,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (bot_id, src_update_id)
);

------------------------------------------------------------------------------------------------
-- consumer bookkeeping
------------------------------------------------------------------------------------------------

-- The offset store of record (DESIGN.md §5). Ownership: INSERT … ON CONFLICT DO UPDATE SET
-- owner_epoch = owner_epoch + 1. Each batch: UPDATE … SET next_offset = $end WHERE next_offset =
-- $start AND owner_epoch = $epoch AND rewind_seq = $seq. Replay moves next_offset and bumps
-- rewind_seq, never owner_epoch.
CREATE TABLE consumer_offsets (
    group_id    text        NOT NULL,
    topic       text        NOT NULL,
    partition   integer     NOT NULL CHECK (partition >= 0),
    -- The next Kafka offset to write: every record before it has rows or a dead letter.
    next_offset bigint      NOT NULL CHECK (next_offset >= 0),
    owner_epoch bigint      NOT NULL DEFAULT 0,
    rewind_seq  bigint      NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, partition)
);

-- Records that cannot become rows (rejected by the processor, producer error envelopes,
-- deterministic database errors). Written in the batch transaction that moves the offset past
-- them; resolved (resolved_at set) when a later replay writes rows for the record.
CREATE TABLE dead_letters (
    id           bigserial   PRIMARY KEY,
    topic        text        NOT NULL,
    partition    integer     NOT NULL,
    kafka_offset bigint      NOT NULL,
    bot_id       bigint,
    record_key   bytea,
    payload      bytea,
    headers      jsonb,
    error_class  text        NOT NULL,
    error_text   text        NOT NULL,
    first_seen   timestamptz NOT NULL DEFAULT now(),
    last_seen    timestamptz NOT NULL DEFAULT now(),
    attempts     integer     NOT NULL DEFAULT 1,
    resolved_at  timestamptz,
    UNIQUE (topic, partition, kafka_offset)
);

CREATE INDEX dead_letters_unresolved ON dead_letters (first_seen) WHERE resolved_at IS NULL;

-- Offsets the consumer expected but the broker no longer had (retention, a stray seek); recorded
-- with the offset move, never skipped silently (DESIGN.md §5.5).
CREATE TABLE offset_gaps (
    id                bigserial   PRIMARY KEY,
    group_id          text        NOT NULL,
    topic             text        NOT NULL,
    partition         integer     NOT NULL,
    expected_offset   bigint      NOT NULL,
    first_offset_seen bigint      NOT NULL,
    detected_at       timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX offset_gaps_of_partition ON offset_gaps (group_id, topic, partition, detected_at);
