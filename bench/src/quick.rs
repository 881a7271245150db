//! The quick benchmark for CI: `tgingest consumer` against the single-connection ideal COPY of
//! the same rows, in the same run, at a small size; it fails only on a gross regression.
//!
//! A small realistic topic is preloaded; each round drains it with `tgingest consumer` into a
//! fresh database and loads tgingest's own rows (exported after the first drain, cut into the
//! same batches) with `COPY` over one connection into another ([`sink::ideal_load`]), alternating
//! which goes first. The verdict takes the best round's ratio: a regression is slow in every
//! round, while a shared CI machine may slow any one of them. It fails (exit status 1) when that
//! ratio is below the threshold (default 0.4×); the figures are printed either way. Nothing here
//! asserts a time: the ratio compares two systems measured side by side on the same machine.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::kafka;
use crate::pg;
use crate::procstat;
use crate::report::{Table, thousands};
use crate::sink::{self, IdealRows};

/// Settings of one `quick` run.
#[derive(Debug, Clone)]
pub struct QuickSettings {
    pub updates: usize,
    pub partitions: i32,
    pub rounds: usize,
    /// The verdict fails below this ratio (tgingest / ideal over one connection).
    pub threshold: f64,
    pub seed: u64,
    pub log_dir: PathBuf,
}

/// The batch size of both systems (the consumer's default).
const BATCH: usize = 1000;

/// Runs the quick benchmark; returns whether it passed.
pub async fn run(settings: &QuickSettings) -> anyhow::Result<bool> {
    let started = Instant::now();
    let pre = sink::preload_topic(
        settings.seed,
        settings.updates,
        settings.partitions,
        12_000_000,
        kafka::WhenFull::Stop,
    )
    .await?;
    let bootstrap = pre.broker.bootstrap_servers().to_owned();
    let binary = crate::child::tgingest_binary()?;
    println!(
        "### Quick sink check ({} records, {} partitions; tgingest {}; this harness built {})\n",
        pre.total,
        pre.partitions,
        binary.display(),
        if cfg!(debug_assertions) {
            "with debug assertions (debug profile)"
        } else {
            "without debug assertions (release profile)"
        }
    );
    let env = [("CONSUMER_BATCH_MAX_RECORDS", BATCH.to_string())];
    let log = settings.log_dir.join("quick-tgingest.log");
    let mut rows: Option<Arc<IdealRows>> = None;
    let mut table = Table::new(&[
        "round",
        "order",
        "load (1/5/15 min)",
        "tgingest upd/s",
        "tgingest startup s",
        "ideal 1 conn upd/s",
        "tgingest / ideal 1 conn",
        "tgingest CPU-s/M upd (client+PG)",
    ]);
    let mut ratios = Vec::new();
    for round in 1..=settings.rounds.max(1) {
        // The ideal needs tgingest's rows, so the first round starts with tgingest.
        let tgingest_first = round % 2 == 1;
        let load = procstat::load_average();
        let mut drain = None;
        let mut ideal = None;
        for step in 0..2 {
            if (step == 0) == tgingest_first {
                let db = pg::create().await?;
                let measured = async {
                    let d = sink::drain_with_tgingest(
                        &bootstrap,
                        &pre.topic,
                        &format!("bench-quick-{round}"),
                        &db,
                        pre.total,
                        &env,
                        &log,
                    )
                    .await?;
                    if rows.is_none() {
                        rows = Some(Arc::new(sink::export_ideal_rows(&db, BATCH).await?));
                    }
                    anyhow::Ok(d)
                }
                .await;
                db.drop_database().await?;
                drain = Some(measured?);
            } else {
                let rows = rows.clone().expect("tgingest ran first");
                ideal = Some(sink::ideal_load(&rows, 1).await?);
            }
        }
        let (Some(drain), Some(ideal)) = (drain, ideal) else {
            anyhow::bail!("round {round} did not measure both systems");
        };
        let ideal_rate = pre.total as f64 / ideal.seconds.max(1e-9);
        let ratio = drain.rate() / ideal_rate;
        ratios.push(ratio);
        table.row(vec![
            round.to_string(),
            if tgingest_first {
                "tgingest, ideal"
            } else {
                "ideal, tgingest"
            }
            .to_owned(),
            load,
            thousands(drain.rate()),
            format!("{:.1}", drain.startup_seconds),
            thousands(ideal_rate),
            format!("{ratio:.2}×"),
            format!(
                "{:.1}",
                drain.cpu_per_million() + drain.pg_cpu_per_million()
            ),
        ]);
        eprintln!(
            "quick round {round}: tgingest {:.0}/s, ideal {ideal_rate:.0}/s, {ratio:.2}×",
            drain.rate()
        );
    }
    table.print();
    let best = ratios.iter().copied().fold(f64::NAN, f64::max);
    let passed = verdict(&ratios, settings.threshold);
    println!(
        "Best round: tgingest at {best:.2}× the single-connection ideal COPY of its rows \
         (threshold {:.2}×): {} ({:.0} s in all)\n",
        settings.threshold,
        if passed {
            "PASS"
        } else {
            "FAIL: a gross regression of the sink"
        },
        started.elapsed().as_secs_f64()
    );
    Ok(passed)
}

/// Passes when the best round reached the threshold.
pub fn verdict(ratios: &[f64], threshold: f64) -> bool {
    ratios.iter().any(|r| *r >= threshold)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verdict_fails_only_when_every_round_is_below_the_threshold() {
        assert!(verdict(&[0.3, 0.45, 0.2], 0.4));
        assert!(!verdict(&[0.39, 0.1], 0.4));
        assert!(!verdict(&[], 0.4));
        assert!(!verdict(&[f64::NAN], 0.4));
    }
}
