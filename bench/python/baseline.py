"""A typical hand-written Telegram → Kafka → PostgreSQL consumer, the benchmarks' baseline.

The shape users write: confluent-kafka + psycopg 3, batches of 1000 records, one transaction per
batch with pipelined ``executemany`` upserts (ON CONFLICT) into raw_updates, messages, users and
chats, and the partition offsets stored in the same transaction (so it is exactly-once too, as
far as it goes). It starts each assigned partition at its stored offset.

It scales the ordinary way: run N processes with the same KAFKA_GROUP_ID and the group spreads
the partitions over them. What keeps N processes from losing or duplicating records:
- the loop is synchronous: a batch's transaction commits before the next ``consume()``, and a
  rebalance (eager, the default assignors) runs its callbacks inside ``consume()``, so a partition
  changes hands only between batches, after its stored offset is committed;
- the new owner starts at the stored offset (``on_assign``);
- records a ``consume()`` returns for a partition revoked during that call are dropped;
- the stored offset only moves forward, so a late writer cannot move it back;
- rows are upserted in key order, so processes sharing users and chats take their row locks in
  the same order and do not deadlock (a deadlock would be retried with the whole batch).
The schema is created under an advisory lock, so processes starting together do not race.

Configuration (environment): KAFKA_BROKERS, KAFKA_TOPIC, KAFKA_GROUP_ID, DATABASE_URL.
Runs until SIGTERM/SIGINT. The benchmark watches progress through ``kafka_offsets``.
"""

import json
import os
import signal
import sys

import psycopg
from confluent_kafka import OFFSET_BEGINNING, Consumer

BATCH = 1000

SCHEMA = """
CREATE TABLE IF NOT EXISTS raw_updates (
    update_id bigint PRIMARY KEY,
    update_type text NOT NULL,
    payload jsonb NOT NULL,
    kafka_partition integer NOT NULL,
    kafka_offset bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS chats (
    chat_id bigint PRIMARY KEY,
    type text NOT NULL,
    title text,
    username text
);
CREATE TABLE IF NOT EXISTS users (
    user_id bigint PRIMARY KEY,
    is_bot boolean NOT NULL,
    first_name text NOT NULL,
    last_name text,
    username text,
    language_code text
);
CREATE TABLE IF NOT EXISTS messages (
    chat_id bigint NOT NULL,
    message_id bigint NOT NULL,
    from_user_id bigint,
    date bigint NOT NULL,
    edit_date bigint,
    text text,
    PRIMARY KEY (chat_id, message_id)
);
CREATE TABLE IF NOT EXISTS kafka_offsets (
    group_id text NOT NULL,
    topic text NOT NULL,
    partition integer NOT NULL,
    next_offset bigint NOT NULL,
    PRIMARY KEY (group_id, topic, partition)
);
"""

MESSAGE_KINDS = ("message", "edited_message", "channel_post", "edited_channel_post")

running = True


def stop(*_):
    global running
    running = False


def write_batch(conn, group, topic, raw, chats, users, messages, offsets):
    """One transaction: the batch's rows and its partitions' next offsets."""
    with conn.transaction():
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO raw_updates (update_id, update_type, payload, kafka_partition, kafka_offset) "
                "VALUES (%s, %s, %s::jsonb, %s, %s) ON CONFLICT (update_id) DO NOTHING",
                raw,
            )
            cur.executemany(
                "INSERT INTO chats (chat_id, type, title, username) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (chat_id) DO UPDATE SET type = EXCLUDED.type, title = EXCLUDED.title, "
                "username = EXCLUDED.username",
                chats,
            )
            cur.executemany(
                "INSERT INTO users (user_id, is_bot, first_name, last_name, username, language_code) "
                "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (user_id) DO UPDATE SET "
                "first_name = EXCLUDED.first_name, last_name = EXCLUDED.last_name, "
                "username = EXCLUDED.username, language_code = EXCLUDED.language_code",
                users,
            )
            cur.executemany(
                "INSERT INTO messages (chat_id, message_id, from_user_id, date, edit_date, text) "
                "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (chat_id, message_id) DO UPDATE SET "
                "edit_date = EXCLUDED.edit_date, text = EXCLUDED.text",
                messages,
            )
            cur.executemany(
                "INSERT INTO kafka_offsets (group_id, topic, partition, next_offset) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (group_id, topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset "
                "WHERE kafka_offsets.next_offset < EXCLUDED.next_offset",
                [(group, topic, p, o) for p, o in offsets],
            )


def main():
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    group = os.environ["KAFKA_GROUP_ID"]
    topic = os.environ["KAFKA_TOPIC"]
    conn = psycopg.connect(os.environ["DATABASE_URL"])
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(4242)")
        conn.execute(SCHEMA)
    assigned = set()

    def on_assign(consumer, partitions):
        stored = dict(
            conn.execute(
                "SELECT partition, next_offset FROM kafka_offsets WHERE group_id = %s AND topic = %s",
                (group, topic),
            ).fetchall()
        )
        conn.commit()
        for p in partitions:
            p.offset = stored.get(p.partition, OFFSET_BEGINNING)
        consumer.assign(partitions)
        assigned.update(p.partition for p in partitions)
        print(f"assigned partitions {sorted(assigned)}", file=sys.stderr, flush=True)

    def on_revoke(consumer, partitions):
        assigned.difference_update(p.partition for p in partitions)
        consumer.unassign()

    consumer = Consumer(
        {
            "bootstrap.servers": os.environ["KAFKA_BROKERS"],
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 10000,
        }
    )
    consumer.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_revoke)

    while running:
        records = consumer.consume(num_messages=BATCH, timeout=0.5)
        if not records:
            continue
        raw, chats, users, messages, offsets = [], [], [], [], {}
        for record in records:
            if record.error() or record.partition() not in assigned:
                continue
            value = record.value()
            update = json.loads(value)
            kind = next((k for k in update if k != "update_id"), "")
            raw.append((update["update_id"], kind, value.decode(), record.partition(), record.offset()))
            offsets[record.partition()] = record.offset() + 1
            body = update.get(kind)
            if not isinstance(body, dict):
                continue
            author = body.get("from") or body.get("user")
            if isinstance(author, dict):
                users.append(
                    (
                        author["id"],
                        author.get("is_bot", False),
                        author.get("first_name", ""),
                        author.get("last_name"),
                        author.get("username"),
                        author.get("language_code"),
                    )
                )
            chat = body.get("chat")
            if isinstance(chat, dict):
                chats.append((chat["id"], chat.get("type", ""), chat.get("title"), chat.get("username")))
            if kind in MESSAGE_KINDS:
                messages.append(
                    (
                        body["chat"]["id"],
                        body["message_id"],
                        author["id"] if isinstance(author, dict) else None,
                        body["date"],
                        body.get("edit_date"),
                        body.get("text") or body.get("caption"),
                    )
                )
        # Rows in key order: processes upserting the same users and chats then lock them in the
        # same order and cannot deadlock (a batch's repeats keep their order: the last one wins).
        raw.sort(key=lambda r: r[0])
        chats.sort(key=lambda r: r[0])
        users.sort(key=lambda r: r[0])
        messages.sort(key=lambda r: (r[0], r[1]))
        for attempt in range(1, 6):
            try:
                write_batch(conn, group, topic, raw, chats, users, messages, sorted(offsets.items()))
                break
            except psycopg.errors.DeadlockDetected:
                print(f"deadlock, retrying the batch (attempt {attempt})", file=sys.stderr, flush=True)
        else:
            raise RuntimeError("the batch deadlocked five times")
    consumer.close()
    conn.close()


if __name__ == "__main__":
    main()
