//! The fault matrix: the whole pipeline as real processes (simulated Telegram → `tgingest
//! producer` → broker → `tgingest consumer` processes → PostgreSQL) under one fault or bad input
//! per scenario, judged by the oracle in [`oracle`]. docs/RELIABILITY.md publishes a large run.
//!
//! Sizes: `CHAOS_SIZE=small` (the default, what CI runs) or `CHAOS_SIZE=large` (100k updates for
//! consumer kills, rebalance storms and poison input; 10k for the rest, broker restarts included,
//! which Tansu cannot carry at 100k: docs/RELIABILITY.md). With
//! `CHAOS_REPORT=FILE` every scenario appends its result row (Markdown) to FILE.
//!
//! Brokers (DESIGN.md §8): consumer churn, zombies and rebalance storms run on the mock cluster
//! hosted in a helper process; broker restarts on Tansu; everything else on the hosted mock. With
//! `KAFKA_BROKERS` set every scenario runs on that broker instead, except broker restarts, which
//! a test cannot cause there (skipped with the reason printed). Two scenarios need the
//! `failpoints` feature (a crash between COMMIT and the Kafka commit, and a producer crash
//! between Kafka's ack and the confirm); `scripts/test` builds with it.
#![allow(clippy::unwrap_used)]

mod oracle;
mod pipeline;
mod special;

use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use botsim::Fault;
use nix::sys::signal::Signal;
use testkit::{BrokerKind, StopMode};

use oracle::Verdict;
use pipeline::{Database, Intake, Pipeline, Spec};
use special::Special;

/// How much traffic a scenario runs.
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    pub updates: usize,
    /// Updates per second pushed into the simulated Bot API.
    pub rate: u32,
    /// Group chats per bot (more groups spread keys over more partitions).
    pub groups: usize,
    pub partitions: i32,
    pub large: bool,
}

impl Scale {
    /// The size for a scenario; `heavy` scenarios run 100k updates when large.
    fn of(heavy: bool) -> Self {
        let large = std::env::var("CHAOS_SIZE").is_ok_and(|v| v == "large");
        match (large, heavy) {
            (false, _) => Self {
                updates: 3_000,
                rate: 300,
                groups: 4,
                partitions: 6,
                large,
            },
            // The mock cluster keeps about 5 MB per partition: 64 partitions and 40 groups per
            // bot keep every partition well below it.
            (true, true) => Self {
                updates: 100_000,
                rate: 2_000,
                groups: 40,
                partitions: 64,
                large,
            },
            (true, false) => Self {
                updates: 10_000,
                rate: 700,
                groups: 12,
                partitions: 12,
                large,
            },
        }
    }

    /// How long the pipeline may take to deliver and store everything after the feed ended.
    fn settle_timeout(&self) -> Duration {
        Duration::from_secs(120 + self.updates as u64 / 400)
    }
}

/// The broker for churn scenarios: the hosted mock cluster, or the external one.
fn mock_broker() -> BrokerKind {
    match BrokerKind::from_env().unwrap() {
        BrokerKind::External => BrokerKind::External,
        _ => BrokerKind::HostedMock,
    }
}

/// A finished run: the pipeline (stopped) and the oracle's verdict.
struct Finished {
    name: &'static str,
    faults: String,
    pipeline: Pipeline,
    verdict: Verdict,
    elapsed: Duration,
    /// Peak RSS of each consumer alive at the end, read before they were stopped.
    consumer_peaks: Vec<u64>,
}

/// Runs one scenario: starts the pipeline, feeds traffic while `driver` injects faults, waits
/// until everything is delivered and stored, stops every process (each must exit 0 on SIGTERM)
/// and runs the oracle. `driver` returns a description of the faults it injected.
async fn run<D>(
    name: &'static str,
    spec: Spec,
    scale: Scale,
    special: impl Fn(usize) -> Option<Special>,
    driver: D,
) -> Finished
where
    D: AsyncFnOnce(&Pipeline) -> anyhow::Result<String>,
{
    let started = Instant::now();
    let pipeline = Pipeline::start(spec, &scale)
        .await
        .unwrap_or_else(|e| panic!("{name}: starting the pipeline: {e:#}"));
    eprintln!(
        "{name}: pipeline up after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let (fed, faults) = tokio::join!(
        pipeline.feed(scale.updates, scale.rate, special),
        driver(&pipeline)
    );
    fed.unwrap_or_else(|e| panic!("{name}: feeding: {e:#}"));
    eprintln!(
        "{name}: traffic and faults done after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let faults =
        faults.unwrap_or_else(|e| panic!("{name}: fault driver: {e:#}\n{}", logs_tail(&pipeline)));
    if let Err(e) = pipeline.settle(scale.settle_timeout()).await {
        panic!("{name}: did not settle: {e:#}\n{}", logs_tail(&pipeline));
    }
    eprintln!(
        "{name}: settled after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let consumer_peaks = pipeline.consumer_peak_rss();
    pipeline
        .stop()
        .await
        .unwrap_or_else(|e| panic!("{name}: stopping: {e:#}"));
    eprintln!(
        "{name}: stopped after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let mut verdict = oracle::judge(&pipeline)
        .await
        .unwrap_or_else(|e| panic!("{name}: oracle: {e:#}"));
    for secret in pipeline.secrets() {
        for (process, log) in pipeline.all_logs() {
            if log.contains(&secret) {
                verdict.fail(format!("a secret appears in the log of {process}"));
            }
        }
    }
    Finished {
        name,
        faults,
        pipeline,
        verdict,
        elapsed: started.elapsed(),
        consumer_peaks,
    }
}

fn logs_tail(pipeline: &Pipeline) -> String {
    pipeline
        .all_logs()
        .iter()
        .map(|(name, log)| {
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(15)..].join("\n");
            format!("--- {name} (last lines)\n{tail}")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

impl Finished {
    /// Asserts the oracle passed, after printing (and, with `CHAOS_REPORT`, recording) the row.
    fn assert_clean(&self) {
        let v = &self.verdict;
        let result = if v.failures.is_empty() && v.lost == 0 && v.duplicated == 0 {
            "pass"
        } else {
            "FAIL"
        };
        let row = format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.0} s |",
            self.name,
            self.faults,
            v.generated,
            v.kafka_records,
            v.kafka_duplicates,
            v.lost,
            v.duplicated,
            result,
            self.elapsed.as_secs_f64()
        );
        eprintln!("chaos result: {row}");
        if let Ok(path) = std::env::var("CHAOS_REPORT") {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap();
            writeln!(file, "{row}").unwrap();
        }
        assert!(
            result == "pass",
            "{}: {} lost, {} duplicated; failures:\n  {}",
            self.name,
            v.lost,
            v.duplicated,
            v.failures.join("\n  ")
        );
    }

    async fn scalar(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .bind(&self.pipeline.topic)
            .fetch_one(self.pipeline.pool())
            .await
            .unwrap()
    }

    fn count_generated(&self, predicate: impl Fn(&pipeline::Generated) -> bool) -> usize {
        self.pipeline
            .generated()
            .iter()
            .filter(|g| predicate(g))
            .count()
    }

    fn count_special(&self, special: Special) -> usize {
        self.count_generated(|g| g.special == Some(special))
    }

    async fn cleanup(self) {
        self.pipeline.cleanup().await;
    }
}

/// Ownership transfers so far: how often a partition changed owner.
async fn ownership_moves(p: &Pipeline) -> i64 {
    sqlx::query_scalar(
        "SELECT coalesce(sum(owner_epoch - 1), 0)::bigint FROM consumer_offsets WHERE group_id = $1",
    )
    .bind(&p.group)
    .fetch_one(p.pool())
    .await
    .unwrap()
}

/// Index of a live consumer that owns partitions (it logged an ownership), preferring `turn`.
fn owning_consumer(p: &Pipeline, turn: usize) -> Option<usize> {
    let live = p.live_consumers();
    (0..live.len())
        .map(|i| (i + turn) % live.len())
        .find(|&i| live[i].output_text().contains("took ownership"))
}

/// How many times any consumer process logged a revocation.
fn revocations(p: &Pipeline) -> usize {
    p.all_logs()
        .iter()
        .map(|(_, log)| log.matches("partitions revoked").count())
        .sum()
}

/// How many non-empty partition assignments the live consumers other than `name` logged.
fn assignments_to_others(p: &Pipeline, name: &str) -> usize {
    p.live_consumers()
        .iter()
        .filter(|c| c.name() != name)
        .map(|c| {
            let log = c.output_text();
            log.matches("partitions assigned").count()
                - log.matches("partitions assigned partitions=[]").count()
        })
        .sum()
}

fn feeding(p: &Pipeline) -> bool {
    !p.feeding_done.load(Ordering::SeqCst)
}

/// Check (5): with the broker down, no update may be confirmed to Telegram. Waits `settle` for
/// deliveries already acknowledged to be confirmed, then watches every bot's confirmed offset
/// for `hold`: it must not move, while Telegram still holds updates to deliver.
async fn outage_watch(p: &Pipeline, settle: Duration, hold: Duration) -> anyhow::Result<()> {
    tokio::time::sleep(settle).await;
    let frozen = p.confirmed_offsets();
    let until = Instant::now() + hold;
    while Instant::now() < until {
        let now = p.confirmed_offsets();
        anyhow::ensure!(
            now == frozen,
            "(5) confirmed offsets moved from {frozen:?} to {now:?} while the broker was down"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::ensure!(
        p.pending() > 0,
        "(5) proved nothing: Telegram had no pending updates during the outage"
    );
    Ok(())
}

// ---- consumer crashes --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consumer_sigkill_mid_batch_repeatedly() {
    let scale = Scale::of(true);
    let mut spec = Spec::new(mock_broker(), scale.partitions);
    spec.consumers = 3;
    let finished = run(
        "consumer SIGKILL mid-batch",
        spec,
        scale,
        |_| None,
        async |p| {
            let mut kills = 0;
            let mut turns = 0;
            // At least 3 takeovers, even if a loaded machine makes the traffic outpace the kills.
            // Each kill waits for the group to hand the victim's partitions to a survivor (the
            // session timeout is 6 s), so the next kill hits a consumer that is writing again.
            while feeding(p) || kills < 3 || ownership_moves(p).await < 3 {
                turns += 1;
                anyhow::ensure!(
                    turns < 100,
                    "{kills} consumer processes were killed, but partitions changed owner only {} times",
                    ownership_moves(p).await
                );
                tokio::time::sleep(Duration::from_millis(1_000 + (kills as u64 % 3) * 600)).await;
                let Some(victim) = owning_consumer(p, kills) else {
                    continue;
                };
                let before = ownership_moves(p).await;
                p.kill_and_replace_consumer(victim).await?;
                kills += 1;
                // The next kill waits for the group to move the partitions, or 20 s at most.
                testkit::eventually(Duration::from_secs(20), async || {
                    ownership_moves(p).await != before
                })
                .await;
            }
            Ok(format!("{kills} SIGKILLs of owning consumers"))
        },
    )
    .await;
    finished.assert_clean();
    let moves = ownership_moves(&finished.pipeline).await;
    assert!(moves >= 3, "partitions changed owner only {moves} times");
    finished.cleanup().await;
}

#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consumer_crash_between_postgres_commit_and_kafka_commit() {
    let scale = Scale::of(false);
    let mut spec = Spec::new(mock_broker(), scale.partitions);
    // Every batch waits 1.5 s after its COMMIT before the Kafka commit; the driver kills a
    // consumer right after it logged entering that window.
    spec.consumer_env.push((
        "FAILPOINTS",
        "consumer::after_commit=return(1500)".to_owned(),
    ));
    let finished = run(
        "crash between PostgreSQL COMMIT and Kafka commit",
        spec,
        scale,
        |_| None,
        async |p| {
            let mut kills = 0;
            let mut turn = 0;
            while feeding(p) || kills < 3 {
                anyhow::ensure!(turn < 40, "only {kills} kills landed in the window");
                turn += 1;
                let live = p.live_consumers();
                let index = turn % live.len();
                let victim = &live[index];
                let from = victim.line_count();
                let entered = victim
                    .wait_for_line_from(
                        from,
                        |l| l.contains("failpoint: delaying"),
                        Duration::from_secs(3),
                    )
                    .await;
                if entered.is_ok() {
                    p.kill_and_replace_consumer(index).await?;
                    kills += 1;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            anyhow::ensure!(kills >= 3, "only {kills} kills landed in the window");
            Ok(format!(
                "{kills} SIGKILLs between COMMIT and the Kafka commit"
            ))
        },
    )
    .await;
    finished.assert_clean();
    finished.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zombie_consumer_stopped_past_its_session_timeout() {
    let scale = Scale::of(false);
    let mut spec = Spec::new(mock_broker(), scale.partitions);
    spec.consumers = 3;
    let finished = run(
        "zombie consumer (SIGSTOP past the session timeout, SIGCONT)",
        spec,
        scale,
        |_| None,
        async |p| {
            let mut stops = 0;
            let mut moved = 0;
            while feeding(p) || stops == 0 {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let Some(index) = owning_consumer(p, stops) else {
                    continue;
                };
                let zombie = p.live_consumers()[index].clone();
                let before = ownership_moves(p).await;
                let assigned_before = assignments_to_others(p, zombie.name());
                zombie.signal(Signal::SIGSTOP)?;
                // The session timeout is 6 s: the group gives its partitions to the others meanwhile
                // (at least 10 s; longer if the loaded mock broker notices the silence late).
                let stopped = Instant::now();
                while stopped.elapsed() < Duration::from_secs(10)
                    || (assignments_to_others(p, zombie.name()) == assigned_before
                        && stopped.elapsed() < Duration::from_secs(40))
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                zombie.signal(Signal::SIGCONT)?;
                // A new owner's ownership statement waits for the zombie's open transaction (it holds
                // the offset row), so the takeover is counted after SIGCONT.
                let resumed = Instant::now();
                while ownership_moves(p).await == before
                    && resumed.elapsed() < Duration::from_secs(20)
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                moved += ownership_moves(p).await - before;
                stops += 1;
            }
            anyhow::ensure!(
                moved > 0,
                "no partition changed owner while a consumer was stopped"
            );
            Ok(format!(
                "{stops} SIGSTOPs of at least 10 s (session timeout 6 s), {moved} partitions taken over"
            ))
        },
    )
    .await;
    finished.assert_clean();
    finished.cleanup().await;
}

async fn rebalance_storm(strategy: &str, name: &'static str) {
    let scale = Scale::of(true);
    let mut spec = Spec::new(mock_broker(), scale.partitions);
    spec.consumers = 2;
    spec.consumer_env
        .push(("KAFKA_ASSIGNMENT_STRATEGY", strategy.to_owned()));
    let finished = run(
        name,
        spec,
        scale,
        |_| None,
        async |p| {
            let (mut added, mut removed, mut killed) = (0, 0, 0);
            let mut step = 0;
            while feeding(p) || added + removed < 4 {
                anyhow::ensure!(
                    step < 200,
                    "the storm changed membership only {} times",
                    added + removed
                );
                tokio::time::sleep(Duration::from_millis(1_500 + (step % 3) * 700)).await;
                step += 1;
                let live = p.live_consumers().len();
                if live < 2 || (live < 4 && step % 2 == 1) {
                    p.add_consumer().await?;
                    added += 1;
                } else if step % 4 == 0 {
                    p.kill_and_replace_consumer(step as usize % live).await?;
                    killed += 1;
                } else {
                    p.remove_consumer(step as usize % live).await?;
                    removed += 1;
                }
            }
            anyhow::ensure!(
                added + removed >= 4,
                "the storm changed membership only {} times",
                added + removed
            );
            Ok(format!(
                "{added} joins, {removed} SIGTERM leaves, {killed} SIGKILLs"
            ))
        },
    )
    .await;
    finished.assert_clean();
    finished.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebalance_storm_eager() {
    rebalance_storm("range", "rebalance storm, eager (range)").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebalance_storm_cooperative() {
    rebalance_storm("cooperative-sticky", "rebalance storm, cooperative-sticky").await;
}

// ---- broker and database faults ----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_restarts_killed_and_clean() {
    let from_env = BrokerKind::from_env().unwrap();
    testkit::require_broker(
        from_env,
        &[BrokerKind::Mock, BrokerKind::HostedMock, BrokerKind::Tansu],
        "a test cannot restart an external broker; this scenario runs on its own Tansu",
    );
    let kind = BrokerKind::Tansu;
    // Not a heavy scenario: Tansu's sqlite storage slows down as its file grows (at about 30 MB,
    // 100% of a core and produce requests timing out after 13 s), so 100k updates cannot pass
    // through it in reasonable time; the large run carries 10k.
    let scale = Scale::of(false);
    let spec = Spec::new(kind, scale.partitions);
    let settle_timeout = scale.settle_timeout();
    // At least 2 restarts (small) or 6 (large), every 3 s.
    let min_rounds = if scale.large { 6 } else { 2 };
    let finished = run("broker restart (SIGKILL and clean), Tansu", spec, scale, |_| None, async |p| {
        let (mut killed, mut clean, mut recovered) = (0, 0, 0);
        let mut round = 0;
        while feeding(p) || round < min_rounds {
            tokio::time::sleep(Duration::from_secs(3)).await;
            recovered += restart_if_wedged(p).await?;
            if round % 2 == 0 {
                p.broker.set_available(false).await?;
                killed += 1;
            } else {
                p.broker.stop_cleanly().await?;
                clean += 1;
            }
            round += 1;
            let watched = outage_watch(p, Duration::from_secs(2), Duration::from_secs(3)).await;
            p.broker.set_available(true).await?;
            watched?;
        }
        // Until everything is stored, a broker wedged by its own panic is restarted, as a
        // liveness probe would.
        let deadline = Instant::now() + settle_timeout;
        while p.settled().await.is_err() && Instant::now() < deadline {
            recovered += restart_if_wedged(p).await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let wedged = if recovered > 0 {
            format!("; {recovered} more restarts after Tansu's storage panic")
        } else {
            String::new()
        };
        Ok(format!(
            "{killed} SIGKILL and {clean} SIGTERM restarts; confirms frozen during each outage{wedged}"
        ))
    })
    .await;
    finished.assert_clean();
    finished.cleanup().await;
}

/// Tansu 0.6's storage actor panics ("more or less than one row") when an idempotent producer
/// retries a batch under an epoch it has since bumped; from then on it answers every request with
/// `UnableToSend`. That is the broker's bug, not tgingest's: restart it (with its data), as an
/// orchestrator's liveness probe would, and count the restart. Returns 1 if it restarted.
async fn restart_if_wedged(p: &Pipeline) -> anyhow::Result<usize> {
    let wedged = p
        .broker
        .process_output()
        .await
        .is_some_and(|log| log.contains("more or less than one row"));
    if wedged {
        eprintln!("Tansu's storage actor panicked; restarting it");
        p.broker.set_available(false).await?;
        p.broker.set_available(true).await?;
    }
    Ok(usize::from(wedged))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_immediate_restarts_and_connection_kills() {
    let scale = Scale::of(false);
    let mut spec = Spec::new(mock_broker(), scale.partitions);
    spec.database = Database::Private;
    let finished = run("PostgreSQL restart (-m immediate) and connection kills", spec, scale, |_| None, async |p| {
        let cluster = p.cluster().unwrap();
        let db = p.database_name().await?;
        let (mut restarts, mut terminated) = (0, 0_i64);
        let mut round = 0;
        while feeding(p) || round < 2 {
            tokio::time::sleep(Duration::from_millis(1_500)).await;
            if round % 2 == 0 {
                cluster.restart(StopMode::Immediate).await?;
                restarts += 1;
            } else {
                // The consumers' connections only, by database and application_name.
                let admin = sqlx::PgPool::connect(&cluster.url("postgres")).await?;
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE datname = $1 AND application_name = 'tgingest-consumer'",
                )
                .bind(&db)
                .fetch_one(&admin)
                .await?;
                admin.close().await;
                terminated += n;
            }
            round += 1;
        }
        anyhow::ensure!(restarts >= 2 && terminated > 0, "{restarts} restarts, {terminated} kills");
        Ok(format!("{restarts} immediate restarts, {terminated} backends terminated"))
    })
    .await;
    finished.assert_clean();
    finished.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_database_locked_table_stays_within_memory_bound() {
    let scale = Scale::of(false);
    let mut spec = Spec::new(mock_broker(), scale.partitions);
    spec.consumer_env
        .push(("CONSUMER_STATEMENT_TIMEOUT", "10s".to_owned()));
    let hold = if scale.large {
        Duration::from_secs(40)
    } else {
        Duration::from_secs(20)
    };
    let before = std::sync::Mutex::new((0, 0));
    let finished = run(
        "slow database (messages locked)",
        spec,
        scale,
        |_| None,
        async |p| {
            // Let the group form first: every partition owned, then a quiet moment.
            while p.stored_offsets().await?.iter().any(Option::is_none) {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            *before.lock().unwrap() = (ownership_moves(p).await, revocations(p));
            let mut tx = p.pool().begin().await?;
            sqlx::query("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
                .execute(&mut *tx)
                .await?;
            tokio::time::sleep(hold).await;
            tx.rollback().await?;
            // Anything the stall caused (an eviction, a revoke) shows within a session timeout.
            tokio::time::sleep(Duration::from_secs(7)).await;
            let (moves, revoked) = *before.lock().unwrap();
            *before.lock().unwrap() = (ownership_moves(p).await - moves, revocations(p) - revoked);
            Ok(format!(
                "messages locked for {} s while traffic continued",
                hold.as_secs()
            ))
        },
    )
    .await;
    // Bound, per process: 64 MiB + P × (2 × the 1 MiB prefetch queue + 250 records × 16 KiB),
    // P = partitions it owns (at most all of them).
    let partitions = finished.pipeline.spec.partitions as u64;
    let bound = 64 * 1024 * 1024 + partitions * (2 * 1024 * 1024 + 250 * 16 * 1024);
    let peaks = finished.consumer_peaks.clone();
    finished.assert_clean();
    assert!(!peaks.is_empty());
    for peak in &peaks {
        assert!(
            *peak <= bound,
            "a consumer peaked at {} MiB, above the bound {} MiB",
            peak >> 20,
            bound >> 20
        );
    }
    eprintln!(
        "slow database: consumer peaks {:?} MiB, bound {} MiB",
        peaks.iter().map(|p| p >> 20).collect::<Vec<_>>(),
        bound >> 20
    );
    let (moves, revoked) = *before.lock().unwrap();
    assert_eq!(
        moves, 0,
        "a partition changed owner: a consumer was evicted from the group"
    );
    assert_eq!(revoked, 0, "partitions were revoked during the stall");
    finished.cleanup().await;
}

// ---- bad input ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn statement_failures_nul_text_and_constraint_violation() {
    let scale = Scale::of(false);
    let spec = Spec::new(mock_broker(), scale.partitions);
    let special = |i: usize| match i % 50 {
        _ if i < 300 => None,
        10 => Some(Special::NulText),
        30 => Some(Special::ConstraintViolation),
        _ => None,
    };
    let finished = run("statement failures (\\u0000 text, constraint violation)", spec, scale, special, async |p| {
        let check = format!(
            "ALTER TABLE messages ADD CONSTRAINT chaos_refuses_poison CHECK (text IS DISTINCT FROM '{}')",
            special::CONSTRAINT_POISON
        );
        sqlx::query(sqlx::AssertSqlSafe(check)).execute(p.pool()).await?;
        Ok("every 50th update from the 300th: a \\u0000 text or a constraint violation".to_owned())
    })
    .await;
    finished.assert_clean();
    let violating = finished.count_generated(|g| g.expect == special::Expect::DeadLetter);
    let refused = finished
        .scalar("SELECT count(*) FROM dead_letters WHERE topic = $1 AND error_class = 'db_23514'")
        .await;
    assert!(
        violating > 0 && refused as usize >= violating,
        "{refused} of {violating} dead-lettered by 23514"
    );
    let nul = finished.count_special(Special::NulText);
    let kept = finished
        .scalar("SELECT count(*) FROM raw_updates WHERE kafka_topic = $1 AND payload IS NULL")
        .await;
    assert!(
        nul > 0 && kept as usize == nul,
        "{kept} of {nul} \\u0000 updates kept as bytes"
    );
    finished.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_input_over_webhook() {
    let scale = Scale::of(true);
    let mut spec = Spec::new(mock_broker(), scale.partitions);
    spec.intake = Intake::Webhook {
        duplicate_probability: 0.0,
        shuffle: false,
    };
    let special = |i: usize| match i % 100 {
        20 => Some(Special::TruncatedJson),
        40 => Some(Special::LoneSurrogate),
        60 => Some(Special::NotAnObject),
        80 => Some(Special::NoUpdateId),
        _ => None,
    };
    let finished = run(
        "poison input (truncated JSON, lone surrogate, non-object, no update_id)",
        spec,
        scale,
        special,
        async |_| Ok("4 in every 100 updates".to_owned()),
    )
    .await;
    finished.assert_clean();
    let poisoned = finished.count_generated(|g| g.expect == special::Expect::DeadLetter);
    assert!(poisoned > 0 && finished.verdict.dead_letters >= poisoned);
    let surrogates = finished.count_special(Special::LoneSurrogate);
    let kept = finished
        .scalar("SELECT count(*) FROM raw_updates WHERE kafka_topic = $1 AND payload IS NULL")
        .await;
    assert!(surrogates > 0 && kept as usize == surrogates);
    finished.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversized_updates_become_dead_letters() {
    let scale = Scale::of(false);
    let spec = Spec::new(mock_broker(), scale.partitions);
    let special = |i: usize| (i % 600 == 100).then_some(Special::Oversized);
    let finished = run(
        "oversized update (> message.max.bytes)",
        spec,
        scale,
        special,
        async |_| Ok("one 1.1 MB update in every 600".to_owned()),
    )
    .await;
    finished.assert_clean();
    let oversized = finished.count_generated(|g| g.expect == special::Expect::DeadLetter);
    let letters = finished
        .scalar(
            "SELECT count(*) FROM dead_letters WHERE topic = $1 AND error_text LIKE '%too_large%'",
        )
        .await;
    assert!(
        oversized > 0 && letters as usize >= oversized,
        "{letters} of {oversized}"
    );
    finished.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schema_drift_unknown_kind_and_fields_kept_raw() {
    let scale = Scale::of(false);
    let mut spec = Spec::new(mock_broker(), scale.partitions);
    // Only an operator-registered webhook with the default allowed_updates lets Telegram send a
    // kind newer than the producer's list.
    spec.intake = Intake::Webhook {
        duplicate_probability: 0.0,
        shuffle: false,
    };
    let special = |i: usize| match i % 20 {
        5 => Some(Special::UnknownKind),
        15 => Some(Special::UnknownFields),
        _ => None,
    };
    let finished = run(
        "schema drift (unknown kind, unknown fields)",
        spec,
        scale,
        special,
        async |_| Ok("1 in 10 updates of an unknown kind or with unknown fields".to_owned()),
    )
    .await;
    finished.assert_clean();
    let unknown = finished.count_special(Special::UnknownKind);
    let stored = finished
        .scalar(&format!(
            "SELECT count(*) FROM raw_updates WHERE kafka_topic = $1 AND update_type = '{}'",
            pipeline::FUTURE_KIND
        ))
        .await;
    assert!(
        unknown > 0 && stored as usize == unknown,
        "{stored} of {unknown} unknown-kind updates"
    );
    let with_fields = finished.count_special(Special::UnknownFields);
    let projected = finished
        .scalar(
            "SELECT count(*) FROM messages m JOIN raw_updates r ON r.bot_id = m.bot_id AND r.update_id = m.src_update_id \
             WHERE r.kafka_topic = $1 AND m.text = 'with fields from the future'",
        )
        .await;
    assert!(
        with_fields > 0 && projected as usize == with_fields,
        "{projected} of {with_fields} projected"
    );
    finished.cleanup().await;
}

// ---- Telegram and producer faults --------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn telegram_errors_stalls_and_malformed_bodies() {
    let scale = Scale::of(false);
    let spec = Spec::new(mock_broker(), scale.partitions);
    let finished = run(
        "Telegram 429 / 409 / 5xx / stall / malformed body",
        spec,
        scale,
        |_| None,
        async |p| {
            let faults = [
                Fault::TooManyRequests { retry_after: 1 },
                Fault::Conflict,
                Fault::ServerError(502),
                Fault::Stall(Duration::from_secs(3)),
                Fault::MalformedBody,
                Fault::ServerError(500),
            ];
            let mut injected = 0;
            while feeding(p) {
                tokio::time::sleep(Duration::from_millis(600)).await;
                let bot = &p.bots[injected % p.bots.len()];
                p.api.inject_on(
                    &bot.token,
                    "getUpdates",
                    faults[injected % faults.len()].clone(),
                )?;
                injected += 1;
            }
            Ok(format!("{injected} faulty getUpdates answers"))
        },
    )
    .await;
    finished.assert_clean();
    for bot in &finished.pipeline.bots {
        assert_eq!(finished.pipeline.api.pending_faults(&bot.token).unwrap(), 0);
    }
    finished.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhook_duplicated_and_shuffled_deliveries() {
    let scale = Scale::of(false);
    let mut spec = Spec::new(mock_broker(), scale.partitions);
    spec.intake = Intake::Webhook {
        duplicate_probability: 0.2,
        shuffle: true,
    };
    let finished = run(
        "webhook deliveries duplicated (20%) and shuffled",
        spec,
        scale,
        |_| None,
        async |_| Ok("20% of deliveries repeated, order shuffled".to_owned()),
    )
    .await;
    finished.assert_clean();
    assert!(
        finished.verdict.kafka_duplicates > 0,
        "no duplicate delivery reached Kafka: the scenario tested nothing"
    );
    finished.cleanup().await;
}

#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn producer_killed_between_kafka_ack_and_confirm() {
    let scale = Scale::of(false);
    let mut spec = Spec::new(mock_broker(), scale.partitions);
    let settle_timeout = scale.settle_timeout();
    // After every 10th acknowledged batch the producer exits (status 86) before confirming.
    spec.producer_env.push((
        "FAILPOINTS",
        "producer::after_publish_before_confirm=9*off->return".to_owned(),
    ));
    let finished = run(
        "producer crash between Kafka ack and confirm; broker outage",
        spec,
        scale,
        |_| None,
        async |p| {
            let (mut crashes, mut kills, mut outages) = (0, 0, 0);
            let mut round = 0;
            // The failpoint keeps crashing the producer after the traffic ends: supervise it (as
            // an orchestrator restarts a crashed pod) until everything is delivered and stored.
            let deadline = Instant::now() + settle_timeout;
            loop {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "not settled: {crashes} crashes, {kills} kills, {outages} outages"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
                round += 1;
                let producer = p.producers.lock().unwrap()[0].clone();
                if let Some(status) = producer.exit_status() {
                    anyhow::ensure!(
                        status.code() == Some(86),
                        "the producer exited {status}: {}",
                        producer.report()
                    );
                    crashes += 1;
                    p.restart_producer(0).await?;
                } else if round % 40 == 20 && (feeding(p) || kills == 0) {
                    producer.signal(Signal::SIGKILL)?;
                    producer.wait(Duration::from_secs(10)).await?;
                    kills += 1;
                    p.restart_producer(0).await?;
                } else if round >= 20 && outages == 0 && feeding(p) {
                    p.broker.set_available(false).await?;
                    let watched =
                        outage_watch(p, Duration::from_secs(2), Duration::from_secs(3)).await;
                    p.broker.set_available(true).await?;
                    watched?;
                    outages += 1;
                } else if !feeding(p) && round % 10 == 0 && p.settled().await.is_ok() {
                    break;
                }
            }
            anyhow::ensure!(
                outages == 1,
                "the broker outage never happened during the traffic"
            );
            anyhow::ensure!(crashes >= 2, "only {crashes} crashes after an ack");
            Ok(format!(
                "{crashes} exits after the ack, {kills} SIGKILLs, {outages} broker outage"
            ))
        },
    )
    .await;
    finished.assert_clean();
    assert!(
        finished.verdict.kafka_duplicates > 0,
        "no batch was published twice: no crash landed after an ack"
    );
    finished.cleanup().await;
}

// ---- security ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn security_injection_text_verbatim_least_privilege_no_secrets_logged() {
    let scale = Scale::of(false);
    let mut spec = Spec::new(mock_broker(), scale.partitions);
    spec.least_privilege = true;
    // Debug logs give secrets the most chances to leak.
    spec.producer_env.push(("RUST_LOG", "debug".to_owned()));
    spec.consumer_env.push(("RUST_LOG", "debug".to_owned()));
    let special = |i: usize| (i % 10 == 3).then_some(Special::SqlInjection);
    let finished = run(
        "security (SQL injection text, least-privilege role, secrets)",
        spec,
        scale,
        special,
        async |p| {
            anyhow::ensure!(p.role().is_some(), "the consumers run as the owner");
            Ok("1 in 10 messages an injection attempt; consumers log in as a role without DDL; debug logs".to_owned())
        },
    )
    .await;
    finished.assert_clean();
    let mut checked = 0;
    for g in finished.pipeline.generated() {
        if g.special != Some(Special::SqlInjection) {
            continue;
        }
        let id = g.update_id.unwrap();
        let stored: String = sqlx::query_scalar(
            "SELECT text FROM messages WHERE bot_id = $1 AND chat_id = $2 AND message_id = $3",
        )
        .bind(g.bot_id)
        .bind(special::CHAOS_CHAT)
        .bind(id)
        .fetch_one(finished.pipeline.pool())
        .await
        .unwrap();
        assert_eq!(stored, special::injection_for(id));
        checked += 1;
    }
    assert!(checked > 0);
    finished.cleanup().await;
}
