//! `tgingest status` run as a script runs it (`--json`, exit status 3 on thresholds) against a
//! state the test builds: consumed partitions, lag, a partition without a stored row, a recorded
//! gap, a pending dead letter and the newest update per bot.
#![allow(clippy::unwrap_used, dead_code)]

use std::time::Duration;

use processor::wire::{self, EnvelopeReason, Subject, header};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use testkit::sink::{log_ends, wait_for_offsets};
use testkit::updates::{BOT, Outgoing, message, produce, producer};

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_status_json_matches_the_state_the_test_built() {
    let (db, broker, topic, group) = setup(4).await;
    let chat = |p: i64| -1_009_000_000_000 - p;
    let consumed: Vec<Outgoing> = (0..12_i64)
        .map(|i| {
            Outgoing::update(
                (i % 3) as i32,
                chat(i % 3),
                90_000 + i,
                message(
                    90_000 + i,
                    chat(i % 3),
                    910_000,
                    90_000 + i,
                    1_760_000_000 + i,
                    "s",
                ),
            )
        })
        .collect();
    let mut manifest = produce(&broker.client_config(), &topic, &consumed).await;
    // A producer envelope: becomes the one pending dead letter.
    let envelope = wire::envelope_value(EnvelopeReason::NotAnUpdate, "d", b"[]", false);
    let producer = producer(&broker.client_config());
    let key = wire::record_key(BOT, &Subject::Chat(chat(0).to_string())).into_bytes();
    let delivered = producer
        .send(
            FutureRecord::to(&topic)
                .partition(0)
                .key(&key)
                .payload(&envelope)
                .headers(
                    OwnedHeaders::new()
                        .insert(Header {
                            key: header::BOT_ID,
                            value: Some(BOT.to_string().as_bytes()),
                        })
                        .insert(Header {
                            key: header::ERROR,
                            value: Some("not_an_update: d".as_bytes()),
                        }),
                ),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    let mut ends = log_ends(&manifest);
    ends.insert(0, delivered.offset + 1);
    ends.insert(3, 0);
    let running = start_consumer(config(&broker, &group, &topic), &db).await;
    wait_for_offsets(db.pool(), &group, &ends, LOG_END_TIMEOUT).await;
    running.stop().await;

    // Lag: 5 unconsumed records on partition 1; partition 3 gets 2 records and loses its row.
    let later: Vec<Outgoing> = (0..5_i64)
        .map(|i| {
            Outgoing::update(
                1,
                chat(1),
                91_000 + i,
                message(
                    91_000 + i,
                    chat(1),
                    910_000,
                    91_000 + i,
                    1_760_000_100 + i,
                    "l",
                ),
            )
        })
        .chain((0..2_i64).map(|i| {
            Outgoing::update(
                3,
                chat(3),
                92_000 + i,
                message(
                    92_000 + i,
                    chat(3),
                    910_000,
                    92_000 + i,
                    1_760_000_200 + i,
                    "n",
                ),
            )
        }))
        .collect();
    manifest.extend(produce(&broker.client_config(), &topic, &later).await);
    sqlx::query("DELETE FROM consumer_offsets WHERE group_id = $1 AND partition = 3")
        .bind(&group)
        .execute(db.pool())
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO offset_gaps (group_id, topic, partition, expected_offset, first_offset_seen) \
         VALUES ($1, $2, 2, 1, 3)",
    )
    .bind(&group)
    .bind(&topic)
    .execute(db.pool())
    .await
    .unwrap();

    let env = [
        ("DATABASE_URL", db.url()),
        ("KAFKA_BROKERS", broker.bootstrap_servers()),
    ];
    let base = [
        "status",
        "--group",
        group.as_str(),
        "--topic",
        topic.as_str(),
    ];
    let out = tgingest(&[&base[..], &["--json"]].concat(), &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = |i: usize| &report["partitions"][i];
    assert_eq!(report["partitions"].as_array().unwrap().len(), 4);
    // Partition 0: 4 messages + the envelope, all consumed.
    assert_eq!(
        (
            p(0)["log_end"].as_i64(),
            p(0)["stored_offset"].as_i64(),
            p(0)["lag"].as_i64()
        ),
        (Some(5), Some(5), Some(0))
    );
    assert_eq!(
        (
            p(1)["log_end"].as_i64(),
            p(1)["stored_offset"].as_i64(),
            p(1)["lag"].as_i64()
        ),
        (Some(9), Some(4), Some(5))
    );
    assert_eq!(
        (p(2)["gaps"].as_i64(), p(2)["lag"].as_i64()),
        (Some(1), Some(0))
    );
    assert!(p(2)["last_write"].is_string());
    assert_eq!(
        (p(3)["log_end"].as_i64(), p(3)["lag"].as_i64()),
        (Some(2), Some(2))
    );
    assert!(p(3)["stored_offset"].is_null() && p(3)["last_write"].is_null());
    assert_eq!(report["total_lag"], 7);
    assert_eq!(report["bots"].as_array().unwrap().len(), 1);
    assert_eq!(report["bots"][0]["bot_id"], BOT);
    assert_eq!(report["bots"][0]["raw_updates"], 12);
    assert_eq!(
        report["bots"][0]["newest_update"], "2025-10-09T08:53:20.000Z",
        "tg-received-at of the updates"
    );
    assert_eq!(report["dead_letters"]["pending"], 1);
    assert_eq!(report["dead_letters"]["by_class"]["producer_envelope"], 1);
    assert_eq!(report["breaches"].as_array().unwrap().len(), 0);

    let out = tgingest(&[&base[..], &["--max-lag", "4"]].concat(), &env);
    assert_eq!(out.status.code(), Some(3), "lag 5 > 4");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("PARTITION") && text.contains("partition 1 lags 5 records"),
        "{text}"
    );
    let out = tgingest(&[&base[..], &["--max-age", "1h"]].concat(), &env);
    assert_eq!(out.status.code(), Some(3), "the newest update is from 2025");
    let out = tgingest(
        &[&base[..], &["--max-lag", "5", "--max-age", "100000d"]].concat(),
        &env,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
