"""A typical hand-written Telegram → Kafka → PostgreSQL consumer, the baseline of issue #9.

The shape users write: confluent-kafka + psycopg 3, batches of 1000 records, one transaction per
batch with pipelined ``executemany`` upserts (ON CONFLICT) into raw_updates, messages, users and
chats, and the partition offsets stored in the same transaction (so it is exactly-once too, as
far as it goes). It starts each assigned partition at its stored offset.

Configuration (environment): KAFKA_BROKERS, KAFKA_TOPIC, KAFKA_GROUP_ID, DATABASE_URL.
Runs until SIGTERM/SIGINT. The benchmark watches progress through ``kafka_offsets``.
"""

import json
import os
import signal

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


def main():
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    group = os.environ["KAFKA_GROUP_ID"]
    topic = os.environ["KAFKA_TOPIC"]
    conn = psycopg.connect(os.environ["DATABASE_URL"])
    conn.execute(SCHEMA)
    conn.commit()

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

    consumer = Consumer(
        {
            "bootstrap.servers": os.environ["KAFKA_BROKERS"],
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 10000,
        }
    )
    consumer.subscribe([topic], on_assign=on_assign)

    while running:
        records = consumer.consume(num_messages=BATCH, timeout=0.5)
        if not records:
            continue
        raw, chats, users, messages, offsets = [], [], [], [], {}
        for record in records:
            if record.error():
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
                    "ON CONFLICT (group_id, topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset",
                    [(group, topic, p, o) for p, o in offsets.items()],
                )
    consumer.close()
    conn.close()


if __name__ == "__main__":
    main()
