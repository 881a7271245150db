-- tgingest schema, version 3: projections are ordered by update id within an update-id epoch,
-- never by receive time. Additive only (a table, NOT NULL columns with a constant default).
--
-- LAST-WRITER-WINS RULE (every projection table; replaces the ordering key of 0001's header).
-- Each row carries its ordering key (src_epoch, src_update_id, processor_version):
--   * src_update_id  the update the row came from. Telegram numbers a bot's updates sequentially,
--                    in the order it produced them, so within one run of ids the update id alone
--                    orders every update, dated or not: a callback query (no date) and a message
--                    (a date) that both mention a user compare by their update ids.
--   * src_epoch      the bot's update-id epoch the update belongs to (bot_update_epochs below):
--                    Telegram restarts a bot's ids at a random value after at least a week
--                    without updates, so ids compare only within one epoch.
--   * processor_version breaks ties between rows of the same update, as before.
-- The upsert shape is 0001's, with the new key:
--
--   INSERT INTO t AS t (cols…, src_date, src_epoch, src_update_id, processor_version) …
--   ON CONFLICT (primary key…) DO UPDATE SET col = EXCLUDED.col, …, updated_at = now()
--   WHERE (EXCLUDED.src_epoch, EXCLUDED.src_update_id, EXCLUDED.processor_version)
--       > (t.src_epoch, t.src_update_id, t.processor_version)
--
-- src_date no longer orders anything: it is the source event's own date (unix seconds; for
-- messages edit_date when present, else date) and 0 when the update carries none (callback and
-- inline queries, chosen inline results, polls, poll answers, business connections, and the
-- users and chats derived from them). Rows written before this migration keep the receive time
-- there until a newer processor version rewrites them.
--
-- What this guarantees: within one bot and one epoch, the final state of every projection depends
-- only on the set of updates (their ids and contents), never on delivery order, duplication,
-- replay or the time a copy was received. A redelivered copy carries the epoch stored with its
-- first copy (raw_updates.update_epoch) and its own update id, so it never beats a newer update.
--
-- The one residual dependence on receive time: an epoch's boundary is decided from receive times
-- when its first update arrives (below). Across an update-id restart, which update falls on which
-- side of the boundary is as good as the receive times are.

-- The epoch each raw update was assigned when its first copy was written; every later copy
-- (a webhook retry, a Kafka redelivery, a replay, a redrive) reuses it. Rows from before this
-- migration are epoch 0.
ALTER TABLE raw_updates ADD COLUMN update_epoch bigint NOT NULL DEFAULT 0;

-- A bot's update-id epochs. An update whose receive time (tg-received-at, else the Kafka
-- timestamp) is at least 6 days after the latest receive time of the bot's newest epoch opens the
-- next epoch, starting at that receive time: Telegram restarts ids only after at least 7 days
-- without updates, and 6 leaves a day for the delay between an update and its receipt (Telegram
-- keeps an unconfirmed update at most 24 hours). A silence of 6 to 7 days may open an epoch whose
-- ids still continue the old ones; that is harmless, the later epoch holds the later updates.
-- An update received before the start of the newest epoch (a late redrive or replay of a record
-- with no stored copy) belongs to the latest epoch started at or before its receive time (the
-- first epoch when none did). last_received_at is written lazily (when it moves by more than an
-- hour), so the row is not a per-batch hot spot; the hour is far inside the 6-day margin.
-- Concurrent writers agree: an epoch number is always "the newest read + 1", and its start and
-- last receive times merge with LEAST / GREATEST.
CREATE TABLE bot_update_epochs (
    bot_id           bigint      NOT NULL,
    epoch            bigint      NOT NULL CHECK (epoch >= 0),
    started_at       timestamptz NOT NULL,
    last_received_at timestamptz NOT NULL,
    PRIMARY KEY (bot_id, epoch)
);

ALTER TABLE chats                     ADD COLUMN src_epoch bigint NOT NULL DEFAULT 0;
ALTER TABLE users                     ADD COLUMN src_epoch bigint NOT NULL DEFAULT 0;
ALTER TABLE messages                  ADD COLUMN src_epoch bigint NOT NULL DEFAULT 0;
ALTER TABLE message_edits             ADD COLUMN src_epoch bigint NOT NULL DEFAULT 0;
ALTER TABLE message_reactions         ADD COLUMN src_epoch bigint NOT NULL DEFAULT 0;
ALTER TABLE message_reaction_counts   ADD COLUMN src_epoch bigint NOT NULL DEFAULT 0;
ALTER TABLE chat_member_events        ADD COLUMN src_epoch bigint NOT NULL DEFAULT 0;
ALTER TABLE callback_queries          ADD COLUMN src_epoch bigint NOT NULL DEFAULT 0;
ALTER TABLE polls                     ADD COLUMN src_epoch bigint NOT NULL DEFAULT 0;
ALTER TABLE poll_answers              ADD COLUMN src_epoch bigint NOT NULL DEFAULT 0;
ALTER TABLE deleted_business_messages ADD COLUMN src_epoch bigint NOT NULL DEFAULT 0;
ALTER TABLE business_connections      ADD COLUMN src_epoch bigint NOT NULL DEFAULT 0;
ALTER TABLE inline_queries            ADD COLUMN src_epoch bigint NOT NULL DEFAULT 0;
ALTER TABLE chosen_inline_results     ADD COLUMN src_epoch bigint NOT NULL DEFAULT 0;
