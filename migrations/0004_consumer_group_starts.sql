-- tgingest schema, version 4 (additive, see 0001's header): the partitions a consumer group
-- started with.
--
-- CONSUMER_START=latest skips a partition's history, which is right only for partitions that
-- existed when the group first started: a partition added later may hold records produced before
-- the group noticed it, and skipping them would lose them. The consumer records the topic's
-- partition count here the first time any partition of (group_id, topic) is taken with no
-- consumer_offsets row of that group and topic at all (INSERT … ON CONFLICT DO NOTHING, then a
-- read, so processes starting at once agree on the first count). Partitions 0 … partition_count-1
-- follow the start policy; a partition without an offsets row outside that range starts at its
-- log start. A group with offsets rows but no row here (it started before this migration, or a
-- replay created its rows) has no recorded set: every partition without a row starts at its log
-- start, never at the log end.
CREATE TABLE consumer_group_starts (
    group_id        text        NOT NULL,
    topic           text        NOT NULL,
    partition_count integer     NOT NULL CHECK (partition_count >= 0),
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic)
);
