-- tgingest schema, version 6: storage that lives for years — retention and erasure that no
-- replay, redrive or reprocess can undo (DESIGN.md §5.11, §9; docs/OPERATIONS.md). Additive only
-- (see 0001's header): two tables, nullable columns, indexes.
--
-- RETENTION (`tgingest retention`, run with the owner's credentials). A per-table policy removes
-- rows older than it, in bounded transactions:
--   * raw_updates: rows whose received_at is before the RECORD HORIZON (now - the policy, stored
--     below). A record received before the horizon is "retained away": every writer — the
--     consumer's batches, `dlq redrive`, `replay --reprocess-from-db` — writes nothing for it
--     (no rows, no dead letter), so `replay --to-earliest` of a topic that still holds it brings
--     nothing back. The horizon only ever moves forward. A record without a receive time (no
--     tg-received-at header and no Kafka timestamp; received_at NULL) is never retained.
--   * a projection: rows whose last write (updated_at) is before now - the policy. The policy
--     must be at least the raw_updates policy: every row older than it was last written by a
--     record behind the horizon, which no writer writes again (a shorter one is refused).
--   * dead_letters (resolved ones, by resolved_at), log_anomalies (resolved ones), offset_gaps
--     (by detected_at): bookkeeping no replay recreates. Open dead letters are never retained.
-- The horizon is the watermark the consumer honours: it reads it in the same statement that
-- reads the tombstones of a batch (consumer::writer::tables), one indexed round trip per batch.
CREATE TABLE retention_horizons (
    -- 'raw_updates' (the record horizon) or the other table the policy applied to.
    table_name text        PRIMARY KEY,
    -- Rows (for raw_updates: records) older than this are removed; never moves back.
    horizon    timestamptz NOT NULL,
    -- The policy of the run that last moved it.
    policy     interval    NOT NULL,
    decided_by text        NOT NULL DEFAULT current_user,
    decided_at timestamptz NOT NULL DEFAULT now()
);

-- Batched deletes of raw_updates by time. raw_updates rows are written once, so this index costs
-- one entry per row. On a large table, build it first with
--   CREATE INDEX CONCURRENTLY IF NOT EXISTS raw_updates_received_at ON raw_updates (received_at);
-- and this migration finds it (without that, writes to raw_updates wait while it is built).
CREATE INDEX IF NOT EXISTS raw_updates_received_at ON raw_updates (received_at);

-- ERASURE (`tgingest forget --user ID | --chat ID [--bot ID]`, owner's credentials). The rules of
-- what belongs to a data subject and what is scrubbed from payload bytes are in
-- processor::erasure. A subject is recorded here first, as the SHA-256 of "user:<id>" or
-- "chat:<id>" (never the id: Telegram ids are small numbers, so the digest is pseudonymous, the
-- least that lets every writer recognise the subject). From then on every writer consults it: a
-- record that mentions an erased subject is scrubbed before it is written, or erased whole (an
-- `erased` tombstone, no rows) when it is the subject's own. Erasing a user also records their
-- private chat ("chat:<id>", the same id).
CREATE TABLE erased_subjects (
    id             bigserial   PRIMARY KEY,
    subject_sha256 bytea       NOT NULL CHECK (octet_length(subject_sha256) = 32),
    -- The bot whose data is erased; NULL: every bot's.
    bot_id         bigint,
    decided_by     text        NOT NULL DEFAULT current_user,
    decided_at     timestamptz NOT NULL DEFAULT now(),
    -- When `forget` finished erasing what was stored (NULL while it runs or after it failed:
    -- running it again completes it).
    completed_at   timestamptz,
    UNIQUE NULLS NOT DISTINCT (subject_sha256, bot_id)
);

-- A raw row whose payload_bytes (and payload) were scrubbed by an erasure: NULL while the bytes
-- are the original ones. payload_sha256 stays the digest of the ORIGINAL bytes: the row's
-- identity (its primary key), so a replayed copy of the record meets this row and is absorbed.
ALTER TABLE raw_updates ADD COLUMN scrubbed_at timestamptz;

-- An `erased` tombstone's record identity: the SHA-256 of the record's original bytes (the
-- erased raw row's payload_sha256), so another copy of the same bytes at another position is
-- known to be erased too. NULL for other kinds.
ALTER TABLE tombstones
    ADD COLUMN payload_sha256 bytea CHECK (payload_sha256 IS NULL OR octet_length(payload_sha256) = 32);
