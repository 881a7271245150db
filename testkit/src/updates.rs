//! Telegram updates as the producer publishes them, for tests of everything downstream of Kafka.
//!
//! Builds update JSON the way Telegram sends it, wraps it in a record with the producer's key
//! (`<bot id>:<chat id>`) and headers, and produces records to a test topic, returning the
//! manifest the invariant checker ([`crate::invariants`]) takes: every record with the partition
//! and offset the broker assigned, in produce order.

use processor::wire::{self, CONTENT_TYPE_JSON, Subject, header};
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::invariants::ProducedRecord;

/// The bot every test update comes from.
pub const BOT: i64 = 7_000_000_001;

/// A group text message, as Telegram sends it.
pub fn message(
    update_id: i64,
    chat_id: i64,
    user_id: i64,
    message_id: i64,
    date: i64,
    text: &str,
) -> Vec<u8> {
    serde_json::json!({
        "update_id": update_id,
        "message": {
            "message_id": message_id,
            "from": {"id": user_id, "is_bot": false, "first_name": format!("User{user_id}"), "language_code": "en"},
            "chat": {"id": chat_id, "title": format!("Chat {chat_id}"), "type": "supergroup"},
            "date": date,
            "text": text
        }
    })
    .to_string()
    .into_bytes()
}

/// An edit of a group text message.
pub fn edited(
    update_id: i64,
    chat_id: i64,
    user_id: i64,
    message_id: i64,
    date: i64,
    edit_date: i64,
    text: &str,
) -> Vec<u8> {
    serde_json::json!({
        "update_id": update_id,
        "edited_message": {
            "message_id": message_id,
            "from": {"id": user_id, "is_bot": false, "first_name": format!("User{user_id}")},
            "chat": {"id": chat_id, "title": format!("Chat {chat_id}"), "type": "supergroup"},
            "date": date,
            "edit_date": edit_date,
            "text": text
        }
    })
    .to_string()
    .into_bytes()
}

/// A user object as Telegram embeds it, named `name`.
fn user(user_id: i64, name: &str) -> serde_json::Value {
    serde_json::json!({"id": user_id, "is_bot": false, "first_name": name})
}

/// The bytes of update `update_id` of kind `kind` with `content`.
fn update(update_id: i64, kind: &str, content: serde_json::Value) -> Vec<u8> {
    let mut update = serde_json::Map::new();
    update.insert("update_id".into(), update_id.into());
    update.insert(kind.into(), content);
    serde_json::Value::Object(update).to_string().into_bytes()
}

/// A callback query (no date of its own) from a button under message `message_id` of `chat_id`.
pub fn callback_query(
    update_id: i64,
    query_id: &str,
    user_id: i64,
    name: &str,
    chat_id: i64,
    message_id: i64,
    data: &str,
) -> Vec<u8> {
    let chat = serde_json::json!({
        "id": chat_id, "title": format!("Chat {chat_id} ({name})"), "type": "supergroup"
    });
    update(
        update_id,
        "callback_query",
        serde_json::json!({
            "id": query_id,
            "from": user(user_id, name),
            "message": {"message_id": message_id, "chat": chat, "date": 1_700_000_000},
            "chat_instance": format!("ci{chat_id}"),
            "data": data
        }),
    )
}

/// An inline query (no date of its own).
pub fn inline_query(
    update_id: i64,
    query_id: &str,
    user_id: i64,
    name: &str,
    query: &str,
) -> Vec<u8> {
    let from = user(user_id, name);
    let content = serde_json::json!({"id": query_id, "from": from, "query": query, "offset": ""});
    update(update_id, "inline_query", content)
}

/// A chosen inline result (no date of its own).
pub fn chosen_inline_result(
    update_id: i64,
    result_id: &str,
    user_id: i64,
    name: &str,
    query: &str,
) -> Vec<u8> {
    let from = user(user_id, name);
    let content = serde_json::json!({"result_id": result_id, "from": from, "query": query});
    update(update_id, "chosen_inline_result", content)
}

/// A poll's new state (no date of its own).
pub fn poll(update_id: i64, poll_id: &str, question: &str, voters: i64) -> Vec<u8> {
    let options = serde_json::json!([
        {"text": "yes", "voter_count": voters},
        {"text": "no", "voter_count": 0}
    ]);
    update(
        update_id,
        "poll",
        serde_json::json!({
            "id": poll_id, "question": question, "options": options,
            "total_voter_count": voters, "is_closed": false, "is_anonymous": false,
            "type": "regular", "allows_multiple_answers": false
        }),
    )
}

/// A user's answer to a poll (no date of its own; `[]` retracts the vote).
pub fn poll_answer(
    update_id: i64,
    poll_id: &str,
    user_id: i64,
    name: &str,
    options: &[i64],
) -> Vec<u8> {
    let voter = user(user_id, name);
    let content = serde_json::json!({"poll_id": poll_id, "user": voter, "option_ids": options});
    update(update_id, "poll_answer", content)
}

/// The fixture updates of the workspace's `tests/fixtures/updates`, `(file stem, bytes)`, sorted
/// by name.
pub fn fixtures() -> Vec<(String, Vec<u8>)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/updates");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("the fixtures directory") {
        let path = entry.expect("a directory entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            let name = path
                .file_stem()
                .expect("a file name")
                .to_string_lossy()
                .into_owned();
            out.push((name, std::fs::read(&path).expect("a fixture")));
        }
    }
    out.sort();
    out
}

/// A record to produce.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub partition: i32,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// The record's timestamp; the producer's clock when `None`.
    pub timestamp_ms: Option<i64>,
}

impl Outgoing {
    /// An update of [`BOT`] with the producer's key and headers.
    pub fn update(partition: i32, chat_id: i64, update_id: i64, value: Vec<u8>) -> Self {
        Self {
            partition,
            key: wire::record_key(BOT, &Subject::Chat(chat_id.to_string())).into_bytes(),
            value,
            headers: vec![
                (header::BOT_ID.into(), BOT.to_string().into_bytes()),
                (header::UPDATE_ID.into(), update_id.to_string().into_bytes()),
                (header::RECEIVED_AT.into(), b"1760000000000".to_vec()),
                (
                    header::CONTENT_TYPE.into(),
                    CONTENT_TYPE_JSON.as_bytes().to_vec(),
                ),
            ],
            timestamp_ms: None,
        }
    }
}

/// `n` messages spread over `partitions` partitions and a few chats and users.
pub fn messages(first_update_id: i64, n: usize, partitions: i32) -> Vec<Outgoing> {
    (0..n as i64)
        .map(|i| {
            let update_id = first_update_id + i;
            let chat_id = -1_001_000_000_000 - (update_id % 7);
            let user_id = 100_000 + (update_id % 13);
            let partition = (chat_id.rem_euclid(i64::from(partitions))) as i32;
            Outgoing::update(
                partition,
                chat_id,
                update_id,
                message(
                    update_id,
                    chat_id,
                    user_id,
                    update_id,
                    1_760_000_000 + i,
                    &format!("hello {update_id}"),
                ),
            )
        })
        .collect()
}

/// An idempotent producer (acks=all) for [`produce_with`]; a delivery that cannot happen fails
/// within 30 s instead of hanging the test.
pub fn producer(client: &ClientConfig) -> FutureProducer {
    let mut config = client.clone();
    config
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000");
    config.create().expect("a producer")
}

/// Produces the records with a new [`producer`] and returns their manifest in produce order.
pub async fn produce(
    client: &ClientConfig,
    topic: &str,
    records: &[Outgoing],
) -> Vec<ProducedRecord> {
    produce_with(&producer(client), topic, records).await
}

/// [`produce`] with a producer the caller keeps (to produce more later on the same session).
pub async fn produce_with(
    producer: &FutureProducer,
    topic: &str,
    records: &[Outgoing],
) -> Vec<ProducedRecord> {
    // Everything is queued before anything is awaited: one round trip for the lot, in order.
    let mut pending = Vec::with_capacity(records.len());
    for r in records {
        let mut headers = OwnedHeaders::new();
        for (k, v) in &r.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        let mut record = FutureRecord::to(topic)
            .partition(r.partition)
            .key(&r.key)
            .payload(&r.value)
            .headers(headers);
        if let Some(ts) = r.timestamp_ms {
            record = record.timestamp(ts);
        }
        let delivery = producer
            .send_result(record)
            .map_err(|(e, _)| e)
            .expect("the record is queued");
        pending.push(delivery);
    }
    let mut manifest = Vec::with_capacity(records.len());
    for (r, delivery) in records.iter().zip(pending) {
        let delivered = delivery
            .await
            .expect("the delivery is reported")
            .map_err(|(e, _)| e)
            .expect("delivered");
        manifest.push(ProducedRecord {
            topic: topic.to_owned(),
            topic_incarnation: 0,
            partition: delivered.partition,
            offset: delivered.offset,
            key: Some(r.key.clone()),
            value: Some(r.value.clone()),
            headers: r
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), Some(v.clone())))
                .collect(),
        });
    }
    manifest
}
