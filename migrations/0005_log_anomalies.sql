-- tgingest schema, version 5: log anomalies and topic incarnations (DESIGN.md §5.10).
--
-- A partition's log can stop being the log the database remembers: the topic was deleted and
-- recreated, or an unclean leader election truncated it (and new records may since have refilled
-- it past the stored offset). Reading on would skip records or mix two logs' offsets, so the
-- consumer halts the partition instead and records the anomaly here; the partition stays halted,
-- across restarts and on every member, until an operator's `tgingest replay` of that partition
-- resolves it, which records the decision (where the partition resumes and how many records of
-- the new log it skips) and moves the partition to a new topic incarnation.
--
-- Additions:
--   * consumer_offsets.last_record_sha256: SHA-256 of the value of the last record the stored
--     offset moved past (the record at next_offset - 1), written by the fenced offset update;
--     NULL when unknown (rows from before this migration, after a replay or a recorded gap). On
--     takeover the consumer compares it with the record the log now holds at next_offset - 1.
--   * topic_incarnation: which incarnation of the topic a Kafka position belongs to. Offsets
--     restart at 0 in a recreated topic, so (topic, partition, offset) names two records once an
--     operator accepts a new log; (topic, topic_incarnation, partition, offset) names one.
--     consumer_offsets holds the partition's current incarnation (0 until the first accepted
--     anomaly); dead_letters, offset_gaps, tombstones and raw_updates (kafka_topic_incarnation)
--     record the incarnation of the record they describe.
--
-- The one change that is not an addition: the unique keys of dead_letters and tombstones widen
-- from (topic, partition, kafka_offset) to (topic, topic_incarnation, partition, kafka_offset).
-- Readers are unaffected (no column changes); only writers name the conflict target, and only
-- tgingest writes these tables. Upgrade order: stop consumers older than this schema before
-- running `tgingest migrate` (an older consumer's dead-letter insert would fail and retry until
-- it is replaced).

ALTER TABLE consumer_offsets
    ADD COLUMN last_record_sha256 bytea
        CHECK (last_record_sha256 IS NULL OR octet_length(last_record_sha256) = 32),
    ADD COLUMN topic_incarnation bigint NOT NULL DEFAULT 0;

ALTER TABLE raw_updates ADD COLUMN kafka_topic_incarnation bigint NOT NULL DEFAULT 0;
ALTER TABLE dead_letters ADD COLUMN topic_incarnation bigint NOT NULL DEFAULT 0;
ALTER TABLE offset_gaps ADD COLUMN topic_incarnation bigint NOT NULL DEFAULT 0;
ALTER TABLE tombstones ADD COLUMN topic_incarnation bigint NOT NULL DEFAULT 0;

CREATE UNIQUE INDEX dead_letters_position
    ON dead_letters (topic, topic_incarnation, partition, kafka_offset);
ALTER TABLE dead_letters DROP CONSTRAINT dead_letters_topic_partition_kafka_offset_key;

CREATE UNIQUE INDEX tombstones_position
    ON tombstones (topic, topic_incarnation, partition, kafka_offset);
ALTER TABLE tombstones DROP CONSTRAINT tombstones_topic_partition_kafka_offset_key;

-- One row per detected anomaly; at most one open (resolved_at IS NULL) per partition of a group.
-- kind:
--   * past_log_end  the stored next_offset is above the log end (recreated or truncated topic);
--   * refilled      the log holds a different record at next_offset - 1 than the one committed
--                   (truncated, then refilled past the stored offset; or recreated and refilled).
-- The consumer inserts a row only while the partition's offsets row is exactly as it read it
-- (the row is locked first, as `replay` locks it), so a decision already taken is never undone
-- by a late detection.
CREATE TABLE log_anomalies (
    id                bigserial   PRIMARY KEY,
    group_id          text        NOT NULL,
    topic             text        NOT NULL,
    partition         integer     NOT NULL,
    kind              text        NOT NULL CHECK (kind IN ('past_log_end', 'refilled')),
    -- The stored position when detected, and the log the broker reported then.
    topic_incarnation bigint      NOT NULL,
    stored_offset     bigint      NOT NULL,
    log_start         bigint      NOT NULL,
    log_end           bigint      NOT NULL,
    -- refilled: the digest committed for stored_offset - 1, and the one the log holds now.
    expected_sha256   bytea,
    found_sha256      bytea,
    detected_at       timestamptz NOT NULL DEFAULT now(),
    -- The operator's decision: who, when, and what (resume offset, records of the new log
    -- skipped, the new topic incarnation), as JSON.
    resolved_at       timestamptz,
    resolved_by       text,
    resolution        jsonb
);

CREATE UNIQUE INDEX log_anomalies_open
    ON log_anomalies (group_id, topic, partition) WHERE resolved_at IS NULL;
