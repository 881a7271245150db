-- tgingest schema, version 7: a bounded summary for `tgingest status` (DESIGN.md §9), which
-- used to count and group the whole of raw_updates on every call. Additive only (see 0001's
-- header): one table.
--
-- raw_update_counts holds, per (bot_id, kafka_topic, kafka_partition), two rows:
--   * counted_by = 'consumer': the raw_updates rows the partition's worker inserted (a duplicate
--     or replayed update that the primary key absorbs is not counted) and the newest received_at
--     among them. Written in the batch's own transaction, by the statement that inserts the raw
--     rows (consumer::writer::tables), so it is exact at every commit. Only the worker that owns
--     the partition writes it: partitions never contend on a summary row.
--   * counted_by = 'operator': minus the raw_updates rows that `retention` and `forget` deleted,
--     written by the statement that deletes them. No worker writes this row, so an operator
--     command never waits for a worker's lock on the summary, nor a worker for an operator's.
-- A bot's stored updates are the sum of its rows; its newest update is the greatest
-- newest_received_at: the newest ever written (a removal does not move it back).
--
-- `status` reads this table: its cost is bounded by bots x partitions, not by stored updates.
-- Consumers of an earlier version do not maintain it: during a rolling upgrade, updates written
-- by them after this migration are stored but not counted (docs/OPERATIONS.md, "Upgrading").
CREATE TABLE raw_update_counts (
    bot_id             bigint      NOT NULL,
    kafka_topic        text        NOT NULL,
    kafka_partition    integer     NOT NULL,
    counted_by         text        NOT NULL CHECK (counted_by IN ('consumer', 'operator')),
    -- Rows inserted (consumer, >= 0) or removed (operator, <= 0).
    updates            bigint      NOT NULL,
    -- consumer rows only: the newest received_at inserted so far.
    newest_received_at timestamptz,
    PRIMARY KEY (bot_id, kafka_topic, kafka_partition, counted_by)
);

-- The rows stored before this version, counted once. Writers wait (SHARE blocks INSERT, UPDATE
-- and DELETE, not reads) so that no row is stored between the count and the commit uncounted.
LOCK TABLE raw_updates IN SHARE MODE;
INSERT INTO raw_update_counts
    (bot_id, kafka_topic, kafka_partition, counted_by, updates, newest_received_at)
SELECT bot_id, kafka_topic, kafka_partition, 'consumer', count(*), max(received_at)
  FROM raw_updates
 GROUP BY bot_id, kafka_topic, kafka_partition;
