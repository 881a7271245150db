//! The stored-update counts `status` reads (`raw_update_counts`,
//! `migrations/0007_raw_update_counts.sql`): the one home of the SQL that keeps them exact.
//!
//! Guarantees: every statement that inserts or deletes `raw_updates` rows through this module
//! counts them in the same statement, so the counts are exact at every commit. Inserted rows are
//! the ones the insert really created (`xmax = 0` in its RETURNING: a duplicate absorbed by the
//! primary key, or a `processor_version` bump of a stored row, is not counted) and go to the
//! `consumer` row of their (bot, topic, partition), which only the partition's owning worker
//! writes; deleted rows are subtracted in the `operator` row, which no worker writes, so a
//! worker and an operator command never wait for each other on a summary row. Summary rows are
//! written in key order (no deadlock between two statements of the same kind).

/// `insert` (an `INSERT INTO raw_updates AS r … ON CONFLICT …` without RETURNING, whose rows all
/// belong to the topic `topic` and the partition `partition`, SQL expressions) as one statement
/// that also counts the rows it inserted, and yields how many rows it inserted or updated.
/// `ctes` is empty or common table expressions `insert` reads, each followed by a comma (they
/// may modify data: they stay at the statement's top level).
pub(crate) fn count_inserted(ctes: &str, insert: &str, topic: &str, partition: &str) -> String {
    format!(
        "WITH {ctes} ins AS ({insert} RETURNING r.bot_id, r.received_at, r.xmax = 0 AS inserted), \
         counted AS (INSERT INTO raw_update_counts AS c \
             (bot_id, kafka_topic, kafka_partition, counted_by, updates, newest_received_at) \
         SELECT bot_id, {topic}, {partition}, 'consumer', count(*), max(received_at) \
         FROM ins WHERE inserted GROUP BY bot_id ORDER BY bot_id \
         ON CONFLICT (bot_id, kafka_topic, kafka_partition, counted_by) DO UPDATE \
             SET updates = c.updates + EXCLUDED.updates, \
                 newest_received_at = \
                     GREATEST(c.newest_received_at, EXCLUDED.newest_received_at)) \
         SELECT count(*) FROM ins"
    )
}

/// `delete` (a `DELETE FROM raw_updates …` without RETURNING, the table named or aliased
/// `alias`) as one statement that also subtracts the rows it removes, and yields how many it
/// removed.
pub(crate) fn uncount_deleted(delete: &str, alias: &str) -> String {
    format!(
        "WITH d AS ({delete} RETURNING {alias}.bot_id, {alias}.kafka_topic, \
                                       {alias}.kafka_partition), \
         uncounted AS (INSERT INTO raw_update_counts AS c \
             (bot_id, kafka_topic, kafka_partition, counted_by, updates) \
         SELECT bot_id, kafka_topic, kafka_partition, 'operator', -count(*) FROM d \
         GROUP BY bot_id, kafka_topic, kafka_partition \
         ORDER BY bot_id, kafka_topic, kafka_partition \
         ON CONFLICT (bot_id, kafka_topic, kafka_partition, counted_by) DO UPDATE \
             SET updates = c.updates + EXCLUDED.updates) \
         SELECT count(*) FROM d"
    )
}

/// Per bot: (bot_id, the newest `received_at` ever stored in unix ms, stored updates), in bot
/// order. Reads bots x partitions rows, whatever the number of stored updates.
pub const PER_BOT: &str = "SELECT bot_id, \
     (extract(epoch FROM max(newest_received_at)) * 1000)::bigint, sum(updates)::bigint \
     FROM raw_update_counts GROUP BY bot_id ORDER BY bot_id";
