-- tgingest schema, version 2: tombstones. Additive only (see 0001's header).
--
-- A tombstone is the effect of a record that an operator decided gets neither rows nor an open
-- dead letter. Every consumed record has exactly one effect: its raw_updates row (and
-- projections), or one unresolved dead letter, or one tombstone (DESIGN.md §5, §6).
--
-- kind:
--   * purged    `tgingest dlq purge` deleted the record's unresolved dead letter;
--   * erased    (reserved) the record's rows were erased on request;
--   * retained  (reserved) the record's rows were removed by a retention policy.
--
-- The consumer consults tombstones before it writes a batch: a tombstoned record gets no rows
-- and no dead letter when it is read again (a replay), so an operator's decision is never undone
-- by reprocessing. Writers that touch tombstones do so after dead_letters and before
-- consumer_offsets in the fixed table order (raw_updates, projections, dead_letters, tombstones,
-- consumer_offsets).
CREATE TABLE tombstones (
    id            bigserial   PRIMARY KEY,
    kind          text        NOT NULL CHECK (kind IN ('purged', 'erased', 'retained')),
    -- The record's identity: its Kafka position, and the update it carried where known.
    topic         text        NOT NULL,
    partition     integer     NOT NULL,
    kafka_offset  bigint      NOT NULL,
    bot_id        bigint,
    update_id     bigint,
    -- Who decided (the database role that ran the operator command), when and why.
    decided_by    text        NOT NULL DEFAULT current_user,
    decided_at    timestamptz NOT NULL DEFAULT now(),
    reason        text        NOT NULL,
    -- What the record's effect was before, e.g. the purged letter's class, error and attempts.
    detail        jsonb,
    UNIQUE (topic, partition, kafka_offset)
);
