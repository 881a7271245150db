//! The oracle: after a run has settled, proves from outside that nothing was lost or doubled.
//!
//! It reads the whole topic back and checks, in the numbering of the issue that asked for it:
//! (1) every generated update is in PostgreSQL exactly once, as rows or as dead letters;
//! (2) no duplicates (no payload stored twice, no record with rows and a dead letter, nothing
//! stored that was never produced); (3) stored offsets equal the log ends; (4) each raw row's
//! (partition, offset) holds a record with the same update id and bytes; (5) is checked during
//! broker outages by the fault driver ([`crate::outage_watch`]); (6) every generated update
//! reached Kafka; (7) no offset gaps were recorded. Per-record accounting is
//! `testkit::invariants::InvariantChecker`; this module adds the generated-update view.

use std::collections::{BTreeMap, HashMap};

use processor::wire::{self, header};
use sha2::{Digest, Sha256};
use testkit::invariants::{InvariantChecker, ProducedRecord, Violation};

use crate::pipeline::{Generated, Pipeline};
use crate::special::Expect;

/// What identifies an update in Kafka: its bytes, or (for an envelope too large to carry its
/// original) the bot, update id and original size.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Identity {
    Bytes([u8; 32]),
    Sized(i64, i64, usize),
}

fn sha(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The oracle's findings.
#[derive(Debug, Default)]
pub struct Verdict {
    pub generated: usize,
    pub kafka_records: usize,
    /// Generated updates Kafka holds more than once (producer re-publishes, webhook
    /// re-deliveries): absorbed, not duplicates in PostgreSQL.
    pub kafka_duplicates: usize,
    pub dead_letters: usize,
    /// Generated updates missing from Kafka or from PostgreSQL.
    pub lost: usize,
    /// Effects present twice, or present without a cause.
    pub duplicated: usize,
    /// Every broken check, described.
    pub failures: Vec<String>,
}

impl Verdict {
    pub fn fail(&mut self, what: String) {
        if self.failures.len() < 60 {
            self.failures.push(what);
        }
    }
}

fn identity_of_record(record: &testkit::kafka::ConsumedRecord) -> Option<Identity> {
    if record.header(header::ERROR).is_none() {
        return Some(Identity::Bytes(sha(&record.value)));
    }
    if let Some(original) = wire::envelope_original(&record.value) {
        return Some(Identity::Bytes(sha(&original)));
    }
    Some(Identity::Sized(
        record.header(header::BOT_ID)?.parse().ok()?,
        record.header(header::UPDATE_ID)?.parse().ok()?,
        record.header(header::ORIGINAL_SIZE)?.parse().ok()?,
    ))
}

fn identity_of_generated(g: &Generated) -> Identity {
    if g.raw.len() > crate::special::OVERSIZED_TEXT_BYTES {
        Identity::Sized(g.bot_id, g.update_id.unwrap_or_default(), g.raw.len())
    } else {
        Identity::Bytes(sha(&g.raw))
    }
}

/// Runs every check on a settled (and stopped) pipeline.
pub async fn judge(pipeline: &Pipeline) -> anyhow::Result<Verdict> {
    let generated = pipeline.generated();
    let ends = pipeline.watermarks().await?;
    let total: usize = ends.iter().map(|(low, high)| (high - low) as usize).sum();
    let records = testkit::kafka::read_topic(
        pipeline.broker.client_config(),
        &pipeline.topic,
        total,
        std::time::Duration::from_secs(120 + total as u64 / 2_000),
    )
    .await?;
    let mut verdict = Verdict {
        generated: generated.len(),
        kafka_records: records.len(),
        ..Verdict::default()
    };
    if records.len() != total {
        verdict.fail(format!(
            "read {} records back, the watermarks say {total}",
            records.len()
        ));
    }
    if ends.iter().any(|(low, _)| *low != 0) {
        verdict.fail(format!(
            "the broker deleted records (low watermarks {ends:?})"
        ));
    }

    // Per-record accounting, offsets and gaps (checks 1 per record, 2, 3, 7).
    let manifest: Vec<ProducedRecord> = records
        .iter()
        .map(|r| ProducedRecord {
            topic: pipeline.topic.clone(),
            partition: r.partition,
            offset: r.offset,
            key: Some(r.key.clone().into_bytes()),
            value: Some(r.value.clone()),
            headers: Vec::new(),
        })
        .collect();
    let mut checker = InvariantChecker::new(pipeline.pool().clone(), pipeline.group.clone());
    for (partition, (_, high)) in ends.iter().enumerate() {
        checker = checker.with_log_end(&pipeline.topic, partition as i32, *high);
    }
    let report = checker.check(&manifest).await?;
    verdict.dead_letters = report.dead_lettered;
    for violation in &report.violations {
        match violation {
            Violation::Missing { .. } => verdict.lost += 1,
            Violation::RowsAndDeadLetter { .. }
            | Violation::UnexpectedRawRow { .. }
            | Violation::DuplicateRawRow { .. }
            | Violation::UnexpectedDeadLetter { .. }
            | Violation::TombstoneAndEffect { .. }
            | Violation::UnexpectedTombstone { .. } => verdict.duplicated += 1,
            Violation::OffsetGap { .. } | Violation::OffsetNotAtLogEnd { .. } => {}
        }
        verdict.fail(format!("{violation:?}"));
    }

    // (6) every generated update reached Kafka, and (1) has the effect its kind calls for.
    let mut by_identity: HashMap<Identity, Vec<&testkit::kafka::ConsumedRecord>> = HashMap::new();
    for record in &records {
        match identity_of_record(record) {
            Some(identity) => by_identity.entry(identity).or_default().push(record),
            None => verdict.fail(format!(
                "record {}/{} is an envelope without its original or its ids",
                record.partition, record.offset
            )),
        }
    }
    let raw: Vec<(i64, i64, Vec<u8>, i32, i64)> = sqlx::query_as(
        "SELECT bot_id, update_id, payload_sha256, kafka_partition, kafka_offset FROM raw_updates \
         WHERE kafka_topic = $1",
    )
    .bind(&pipeline.topic)
    .fetch_all(pipeline.pool())
    .await?;
    let mut raw_rows: HashMap<(i64, i64, Vec<u8>), usize> = HashMap::new();
    for (bot, id, digest, _, _) in &raw {
        *raw_rows.entry((*bot, *id, digest.clone())).or_default() += 1;
    }
    let dead: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT partition, kafka_offset FROM dead_letters WHERE topic = $1 AND resolved_at IS NULL",
    )
    .bind(&pipeline.topic)
    .fetch_all(pipeline.pool())
    .await?;
    let dead: std::collections::HashSet<(i32, i64)> = dead.into_iter().collect();
    let mut seen: BTreeMap<Identity, usize> = BTreeMap::new();
    for g in &generated {
        let identity = identity_of_generated(g);
        *seen.entry(identity.clone()).or_default() += 1;
        let Some(in_kafka) = by_identity.get(&identity) else {
            verdict.lost += 1;
            verdict.fail(format!(
                "(6) update {:?} of bot {} ({} bytes) never reached Kafka",
                g.update_id,
                g.bot_id,
                g.raw.len()
            ));
            continue;
        };
        match g.expect {
            Expect::Rows => {
                let key = (
                    g.bot_id,
                    g.update_id.unwrap_or_default(),
                    sha(&g.raw).to_vec(),
                );
                match raw_rows.get(&key).copied().unwrap_or(0) {
                    1 => {}
                    0 => {
                        verdict.lost += 1;
                        verdict.fail(format!(
                            "(1) update {:?} of bot {} has no raw row",
                            g.update_id, g.bot_id
                        ));
                    }
                    n => {
                        verdict.duplicated += 1;
                        verdict.fail(format!(
                            "(2) update {:?} of bot {} has {n} raw rows",
                            g.update_id, g.bot_id
                        ));
                    }
                }
            }
            Expect::DeadLetter => {
                let letters = in_kafka
                    .iter()
                    .filter(|r| dead.contains(&(r.partition, r.offset)))
                    .count();
                if letters != in_kafka.len() {
                    verdict.lost += 1;
                    verdict.fail(format!(
                        "(1) update {:?} of bot {} is in {} records but has {letters} dead letters",
                        g.update_id,
                        g.bot_id,
                        in_kafka.len()
                    ));
                }
            }
        }
    }
    verdict.kafka_duplicates = seen
        .iter()
        .map(|(identity, n)| {
            by_identity
                .get(identity)
                .map_or(0, |records| records.len().saturating_sub(*n))
        })
        .sum();
    let unexplained = by_identity
        .keys()
        .filter(|i| !seen.contains_key(*i))
        .count();
    if unexplained > 0 {
        verdict.fail(format!(
            "{unexplained} distinct payloads in Kafka were never generated"
        ));
    }

    // (4) each raw row's position holds a record with its update id and bytes.
    let by_position: HashMap<(i32, i64), &testkit::kafka::ConsumedRecord> = records
        .iter()
        .map(|r| ((r.partition, r.offset), r))
        .collect();
    for (bot, id, digest, partition, offset) in &raw {
        let ok = by_position.get(&(*partition, *offset)).is_some_and(|r| {
            r.header(header::UPDATE_ID) == Some(id.to_string().as_str())
                && r.header(header::BOT_ID) == Some(bot.to_string().as_str())
                && sha(&r.value).as_slice() == digest.as_slice()
        });
        if !ok {
            verdict.fail(format!(
                "(4) raw row ({bot}, {id}) points at {partition}/{offset}, which holds another record"
            ));
        }
    }
    Ok(verdict)
}
