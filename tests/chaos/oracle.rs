//! The oracle: after a run has settled, proves from outside that nothing was lost or doubled.
//!
//! It reads the whole topic back (with, for a topic the scenario recreated, the first log it read
//! before the deletion, as topic incarnation 0) and checks, in the numbering of the issue that
//! asked for it:
//! (1) every generated update is in PostgreSQL exactly once, as rows or as dead letters;
//! (2) no duplicates (no payload stored twice, no record with rows and a dead letter, nothing
//! stored that was never produced); (3) stored offsets equal the log ends; (4) each raw row's
//! (partition, offset) holds a record with the same update id and bytes; (5) is checked during
//! broker outages by the fault driver ([`crate::broker_outage`]); (6) every generated update
//! reached Kafka; (7) no offset gaps were recorded, and the stored-update counts `status`
//! reports equal the raw rows. Per-record accounting is
//! `testkit::invariants::InvariantChecker`; this module adds the generated-update view.
//!
//! Then (8), [`judge_projections`]: every projection table holds exactly the state
//! `testkit::projection_oracle` predicts from the generated updates that must have rows
//! (computed without the processor, by the ordering rule, tombstoned updates left out); each
//! differing row is a projection mismatch, named by table and primary key.

use std::collections::{BTreeMap, HashMap};

use processor::wire::{self, header};
use sha2::{Digest, Sha256};
use testkit::invariants::{InvariantChecker, ProducedRecord, Violation};
use testkit::projection_oracle;

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
    /// Projection rows that differ from the oracle's prediction (missing, unexpected or with
    /// other values).
    pub projection_mismatches: usize,
    /// Projection rows the oracle predicted, over every table.
    pub projection_rows: usize,
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
    // A topic the scenario deleted and recreated: its first log, read before the deletion, is
    // incarnation 0; each partition's current log is the incarnation its offsets row moved to.
    let earlier = pipeline.earlier_log();
    let incarnations = pipeline.topic_incarnations().await?;
    let mut verdict = Verdict {
        generated: generated.len(),
        kafka_records: earlier.len() + records.len(),
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
    // Every record with the incarnation its position is stored under.
    let positioned: Vec<(i64, &testkit::kafka::ConsumedRecord)> = earlier
        .iter()
        .map(|r| (0, r))
        .chain(
            records
                .iter()
                .map(|r| (incarnations[r.partition as usize], r)),
        )
        .collect();
    let manifest: Vec<ProducedRecord> = positioned
        .iter()
        .map(|(incarnation, r)| ProducedRecord {
            topic_incarnation: *incarnation,
            ..r.as_produced(&pipeline.topic)
        })
        .collect();
    let checker = InvariantChecker::new(pipeline.pool().clone(), pipeline.group.clone())
        .with_log_ends(&pipeline.topic, &ends);
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
            Violation::OffsetGap { .. }
            | Violation::OffsetNotAtLogEnd { .. }
            | Violation::StoredCountMismatch { .. } => {}
        }
        verdict.fail(format!("{violation:?}"));
    }

    // (6) every generated update reached Kafka, and (1) has the effect its kind calls for.
    let mut by_identity: HashMap<Identity, Vec<(i64, &testkit::kafka::ConsumedRecord)>> =
        HashMap::new();
    for &(incarnation, record) in &positioned {
        match identity_of_record(record) {
            Some(identity) => by_identity
                .entry(identity)
                .or_default()
                .push((incarnation, record)),
            None => verdict.fail(format!(
                "record {}/{} is an envelope without its original or its ids",
                record.partition, record.offset
            )),
        }
    }
    let raw: Vec<(i64, i64, Vec<u8>, i64, i32, i64)> = sqlx::query_as(
        "SELECT bot_id, update_id, payload_sha256, kafka_topic_incarnation, kafka_partition, \
         kafka_offset FROM raw_updates WHERE kafka_topic = $1",
    )
    .bind(&pipeline.topic)
    .fetch_all(pipeline.pool())
    .await?;
    let mut raw_rows: HashMap<(i64, i64, Vec<u8>), usize> = HashMap::new();
    for (bot, id, digest, _, _, _) in &raw {
        *raw_rows.entry((*bot, *id, digest.clone())).or_default() += 1;
    }
    let dead: Vec<(i64, i32, i64)> = sqlx::query_as(
        "SELECT topic_incarnation, partition, kafka_offset FROM dead_letters \
         WHERE topic = $1 AND resolved_at IS NULL",
    )
    .bind(&pipeline.topic)
    .fetch_all(pipeline.pool())
    .await?;
    let dead: std::collections::HashSet<(i64, i32, i64)> = dead.into_iter().collect();
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
                    .filter(|(incarnation, r)| {
                        dead.contains(&(*incarnation, r.partition, r.offset))
                    })
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
    let by_position: HashMap<(i64, i32, i64), &testkit::kafka::ConsumedRecord> = positioned
        .iter()
        .map(|&(incarnation, r)| ((incarnation, r.partition, r.offset), r))
        .collect();
    for (bot, id, digest, incarnation, partition, offset) in &raw {
        let ok = by_position
            .get(&(*incarnation, *partition, *offset))
            .is_some_and(|r| {
                r.header(header::UPDATE_ID) == Some(id.to_string().as_str())
                    && r.header(header::BOT_ID) == Some(bot.to_string().as_str())
                    && sha(&r.value).as_slice() == digest.as_slice()
            });
        if !ok {
            verdict.fail(format!(
                "(4) raw row ({bot}, {id}) points at {partition}/{offset} (incarnation \
                 {incarnation}), which holds another record"
            ));
        }
    }
    Ok(verdict)
}

/// (8) Compares every projection table with the state the projection oracle predicts from the
/// generated updates that must have rows. The traffic never restarts update ids and runs for
/// minutes, so each bot's updates are in its first update-id epoch (0).
pub async fn judge_projections(pipeline: &Pipeline, verdict: &mut Verdict) -> anyhow::Result<()> {
    let generated = pipeline.generated();
    let bots: Vec<i64> = pipeline.bots.iter().map(|b| b.info.id).collect();
    let tombstoned = projection_oracle::tombstoned_updates(pipeline.pool(), &bots).await?;
    let updates = generated
        .iter()
        .filter(|g| g.expect == Expect::Rows)
        .map(|g| projection_oracle::Update {
            bot_id: g.bot_id,
            epoch: 0,
            bytes: &g.raw,
        });
    let report = projection_oracle::check(pipeline.pool(), &bots, updates, &tombstoned)
        .await
        .map_err(|e| anyhow::anyhow!("(8) the projection oracle: {e:#}"))?;
    anyhow::ensure!(
        report.expected_rows > 0,
        "(8) the projection oracle predicted no rows: it compared nothing"
    );
    verdict.projection_rows = report.expected_rows;
    verdict.projection_mismatches = report.mismatches.len();
    for mismatch in report.mismatches.iter().take(20) {
        verdict.fail(format!("(8) projection mismatch: {mismatch}"));
    }
    if report.mismatches.len() > 20 {
        verdict.fail(format!(
            "(8) … and {} more projection mismatches",
            report.mismatches.len() - 20
        ));
    }
    Ok(())
}
