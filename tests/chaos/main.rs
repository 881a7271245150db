//! The fault matrix: the whole pipeline as real processes (simulated Telegram → `tgingest
//! producer` → broker → `tgingest consumer` processes → PostgreSQL) under one fault or bad input
//! per scenario, judged by the oracle in [`oracle`]: exactly-once accounting of every update, then
//! every projection table against `testkit::projection_oracle`'s prediction. docs/RELIABILITY.md
//! publishes a large run.
//!
//! Sizes: `CHAOS_SIZE=small` (the default, what CI runs) or `CHAOS_SIZE=large` (100k updates for
//! consumer kills, rebalance storms and poison input; 10k for the rest, broker restarts included,
//! which Tansu cannot carry at 100k: docs/RELIABILITY.md; the 48-partition backlog sets its own,
//! 12k small and 40k large; the recreated topic runs 3k at both sizes, for the same reason).
//! With
//! `CHAOS_REPORT=FILE` every scenario appends its result row (Markdown) to FILE.
//!
//! Brokers (DESIGN.md §8): consumer churn, zombies and rebalance storms run on the mock cluster
//! hosted in a helper process; broker restarts and the recreated topic on Tansu; everything else
//! on the hosted mock. With
//! `KAFKA_BROKERS` set every scenario runs on that broker instead, except those that take the
//! broker down or move its partition leaders, which a test cannot cause there (`scripts/test`
//! excludes them and prints why). Three scenarios need
//! the `failpoints` feature (a crash between COMMIT and the Kafka commit, a zombie stopped between
//! its rows and its offset update, and a producer crash between Kafka's ack and the confirm);
//! `scripts/test` and `scripts/chaos` build with it, and without it the matrix does not build at
//! all, so no scenario silently goes missing.
//!
//! Every scenario asserts that its faults landed: a minimum of them begun during traffic, each
//! where it claims (a kill inside a transaction, a zombie's write fenced after the takeover, a
//! backlog ten times the in-flight budget behind a locked table, confirms watched from the first
//! instant of each broker outage); one whose faults did not land fails.
#![allow(clippy::unwrap_used)]

#[cfg(not(feature = "failpoints"))]
compile_error!(
    "the fault matrix needs the failpoints feature (two scenarios open crash windows with it): \
     run it with `--features failpoints`, as scripts/test and scripts/chaos do"
);

mod operations;
mod oracle;
mod pipeline;
mod special;

use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use botsim::Fault;
use nix::sys::signal::Signal;
use testkit::projection_oracle::State;
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
    let (fed, faults) = tokio::join!(pipeline.feed(scale.updates, scale.rate, special), async {
        let faults = driver(&pipeline).await;
        // A driver that failed before releasing a held feed must not leave it waiting.
        pipeline.release_feed();
        faults
    });
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
    if let Err(e) = oracle::judge_projections(&pipeline, &mut verdict).await {
        verdict.fail(format!("{e:#}"));
    }
    eprintln!(
        "{name}: oracles done after {:.1} s ({} projection rows predicted, {} mismatches)",
        started.elapsed().as_secs_f64(),
        verdict.projection_rows,
        verdict.projection_mismatches
    );
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
        let result = if v.failures.is_empty()
            && v.lost == 0
            && v.duplicated == 0
            && v.projection_mismatches == 0
        {
            "pass"
        } else {
            "FAIL"
        };
        let row = format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} s |",
            self.name,
            self.faults,
            v.generated,
            v.kafka_records,
            v.kafka_duplicates,
            v.lost,
            v.duplicated,
            v.projection_mismatches,
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
            "{}: {} lost, {} duplicated, {} projection mismatches; failures:\n  {}",
            self.name,
            v.lost,
            v.duplicated,
            v.projection_mismatches,
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

/// How many times any consumer process of the pipeline's group logged a revocation (the idle
/// consumer of [`Pipeline::idle_consumer_peak_rss`] has a group of its own).
fn revocations(p: &Pipeline) -> usize {
    p.all_logs()
        .iter()
        .filter(|(name, _)| !name.starts_with("consumer-idle"))
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

/// How the broker goes down in [`broker_outage`].
#[derive(Debug, Clone, Copy)]
enum Down {
    /// SIGKILL (or the mock's equivalent).
    Killed,
    /// SIGTERM, waiting for a clean exit.
    Clean,
}

/// A broker outage of `hold`, watched by check (5): with the broker down, no update may be
/// confirmed to Telegram that Kafka did not hold before the outage. There is no blind window:
/// the producer is paused (SIGSTOP) while the topic's watermarks are read (until two reads 200 ms
/// apart agree, so no produce request is still being appended), the broker is taken down, the
/// producer resumed, and every bot's confirmed offset watched from that instant. A confirm during
/// the outage is allowed only up to (the highest update id of that bot in Kafka below those
/// watermarks) + 1 — the acknowledgements the producer received before the outage and may still
/// be confirming — which is read back once the broker is up again. Returns how many bots
/// confirmed such earlier acknowledgements during the outage, and how many updates Telegram
/// still held at its end (an outage with none pending proves nothing), and how many times the
/// broker had to be restarted after its own storage panic before the watermarks could be read.
async fn broker_outage(
    p: &Pipeline,
    down: Down,
    hold: Duration,
) -> anyhow::Result<(usize, usize, usize)> {
    let producer = p.producers.lock().unwrap()[0].clone();
    // A producer that already exited (the crash scenario restarts it) needs no pause.
    let paused = producer.exit_status().is_none() && producer.signal(Signal::SIGSTOP).is_ok();
    // Tansu, loaded and freshly restarted, can take longer than a metadata request's 10 s to
    // answer, or be wedged by its storage panic: the read is retried for up to 90 s (the producer
    // stays paused meanwhile), restarting a wedged broker.
    let mut recovered = 0;
    let mut ends = Vec::new();
    let read = within_on_tansu(
        p,
        &mut recovered,
        Duration::from_secs(90),
        "the watermarks were read before an outage",
        async || {
            ends = p.quiet_watermarks().await?;
            Ok(true)
        },
    )
    .await;
    let ends = read.map(|()| ends);
    let before = p.confirmed_offsets();
    let went_down = match down {
        Down::Killed => p.broker.set_available(false).await,
        Down::Clean => p.broker.stop_cleanly().await,
    };
    if paused {
        producer.signal(Signal::SIGCONT)?;
    }
    let ends: Vec<i64> = ends?.into_iter().map(|(_, high)| high).collect();
    went_down?;
    // The highest confirmed offset of each bot during the outage.
    let mut during = before.clone();
    let until = Instant::now() + hold;
    while Instant::now() < until {
        for (seen, now) in during.iter_mut().zip(p.confirmed_offsets()) {
            *seen = (*seen).max(now);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pending = p.pending();
    p.broker.set_available(true).await?;
    let held = pipeline::max_update_ids_below(
        p.broker.client_config(),
        &p.topic,
        &ends,
        Duration::from_secs(120),
    )
    .await?;
    let mut earlier_acks = 0;
    for ((bot, before), during) in p.bots.iter().zip(&before).zip(&during) {
        let allowed = held.get(&bot.info.id).map(|max| max + 1);
        anyhow::ensure!(
            *during <= (*before).max(allowed),
            "(5) bot {} confirmed offset {during:?} while the broker was down, but Kafka held \
             its updates only below {allowed:?} before the outage (confirmed before: {before:?})",
            bot.info.id
        );
        earlier_acks += usize::from(during > before);
    }
    Ok((earlier_acks, pending, recovered))
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
            // Kills during traffic of a process that had a transaction open just before.
            let mut landed = 0;
            let min_landed = if scale.large { 3 } else { 1 };
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
                // During traffic, wait (3 s at most) until the victim is inside a transaction, so
                // the kill lands mid-batch.
                let mut open = false;
                let until = Instant::now() + Duration::from_secs(3);
                while feeding(p) && Instant::now() < until {
                    if p.consumer_in_transaction(victim).await? {
                        open = true;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let before = ownership_moves(p).await;
                p.kill_and_replace_consumer(victim).await?;
                kills += 1;
                landed += usize::from(open);
                // The next kill waits for the group to move the partitions, or 20 s at most.
                testkit::eventually(Duration::from_secs(20), async || {
                    ownership_moves(p).await != before
                })
                .await;
            }
            anyhow::ensure!(
                landed >= min_landed,
                "only {landed} of {kills} SIGKILLs hit a consumer with a transaction open during traffic (at least {min_landed} must)"
            );
            Ok(format!(
                "{kills} SIGKILLs of owning consumers, {landed} with a transaction open during traffic"
            ))
        },
    )
    .await;
    finished.assert_clean();
    let moves = ownership_moves(&finished.pipeline).await;
    assert!(moves >= 3, "partitions changed owner only {moves} times");
    finished.cleanup().await;
}

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
            let (mut kills, mut in_traffic) = (0, 0);
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
                    in_traffic += usize::from(feeding(p));
                    p.kill_and_replace_consumer(index).await?;
                    kills += 1;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            anyhow::ensure!(kills >= 3, "only {kills} kills landed in the window");
            anyhow::ensure!(
                in_traffic >= 1,
                "none of the {kills} kills in the window landed during traffic"
            );
            Ok(format!(
                "{kills} SIGKILLs between COMMIT and the Kafka commit, {in_traffic} during traffic"
            ))
        },
    )
    .await;
    finished.assert_clean();
    finished.cleanup().await;
}

/// The consumer metric counting batches refused because a newer owner holds the partition.
const FENCED_WRITES: &str = "tgingest_fenced_writes_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zombie_consumer_stopped_past_its_session_timeout() {
    let scale = Scale::of(false);
    let mut spec = Spec::new(mock_broker(), scale.partitions);
    spec.consumers = 3;
    // Every batch waits 300 ms with its rows written but its offset not yet advanced; the driver
    // stops a consumer inside that window, so the zombie resumes mid-batch after the takeover
    // and its offset update must be fenced. Each consumer serves /metrics, where the driver
    // counts the zombie's fenced writes.
    spec.consumer_env.push((
        "FAILPOINTS",
        "consumer::before_offset_update=return(300)".to_owned(),
    ));
    spec.consumer_env
        .push(("ADMIN_LISTEN", "127.0.0.1:0".to_owned()));
    let finished = run(
        "zombie consumer (SIGSTOP mid-batch past the session timeout, SIGCONT)",
        spec,
        scale,
        |_| None,
        async |p| {
            let mut stops = 0;
            let mut moved = 0;
            // Zombies that, after SIGCONT, had at least one write fenced; and those writes.
            let (mut fenced_zombies, mut fenced) = (0, 0.0);
            let mut in_traffic = 0;
            let mut turns = 0;
            while feeding(p) || stops == 0 {
                turns += 1;
                anyhow::ensure!(turns < 40, "no consumer could be stopped mid-batch");
                tokio::time::sleep(Duration::from_secs(2)).await;
                let Some(index) = owning_consumer(p, stops) else {
                    continue;
                };
                let zombie = p.live_consumers()[index].clone();
                // Stop it inside a batch: rows written, offset not yet advanced.
                let from = zombie.line_count();
                let entered = zombie
                    .wait_for_line_from(
                        from,
                        |l| l.contains("failpoint: delaying"),
                        Duration::from_secs(3),
                    )
                    .await;
                if entered.is_err() {
                    continue;
                }
                let before = ownership_moves(p).await;
                let assigned_before = assignments_to_others(p, zombie.name());
                let fenced_before = Pipeline::metric(&zombie, FENCED_WRITES).await?;
                in_traffic += usize::from(feeding(p));
                zombie.signal(Signal::SIGSTOP)?;
                // The session timeout is 6 s: the group gives its partitions to the others
                // meanwhile (at least 10 s; longer if the loaded mock broker notices the silence
                // late), and they take ownership in the database.
                let stopped = Instant::now();
                while stopped.elapsed() < Duration::from_secs(10)
                    || ((assignments_to_others(p, zombie.name()) == assigned_before
                        || ownership_moves(p).await == before)
                        && stopped.elapsed() < Duration::from_secs(40))
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                let moved_now = ownership_moves(p).await - before;
                zombie.signal(Signal::SIGCONT)?;
                moved += moved_now;
                stops += 1;
                // The resumed batch's offset update finds a newer epoch: fenced.
                let mut fenced_now = 0.0;
                let resumed = Instant::now();
                while resumed.elapsed() < Duration::from_secs(20) {
                    fenced_now = Pipeline::metric(&zombie, FENCED_WRITES).await? - fenced_before;
                    if fenced_now > 0.0 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                if moved_now > 0 && fenced_now > 0.0 {
                    fenced_zombies += 1;
                    fenced += fenced_now;
                }
            }
            anyhow::ensure!(
                moved > 0,
                "no partition changed owner while a consumer was stopped"
            );
            anyhow::ensure!(in_traffic >= 1, "no consumer was stopped during traffic");
            anyhow::ensure!(
                fenced_zombies >= 1,
                "{stops} consumers were stopped mid-batch; none had a write fenced after a takeover"
            );
            Ok(format!(
                "{stops} SIGSTOPs mid-batch of at least 10 s (session timeout 6 s), {in_traffic} \
                 during traffic, {moved} partitions taken over, {fenced} writes fenced in {fenced_zombies} zombies"
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
            // Membership changes begun during traffic.
            let mut in_traffic = 0;
            let min_in_traffic = if scale.large { 5 } else { 2 };
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
                in_traffic += usize::from(feeding(p));
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
            anyhow::ensure!(
                in_traffic >= min_in_traffic,
                "only {in_traffic} membership changes during traffic (at least {min_in_traffic} must)"
            );
            Ok(format!(
                "{added} joins, {removed} SIGTERM leaves, {killed} SIGKILLs; {in_traffic} during traffic"
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
        // Outages during which the producer confirmed acknowledgements received before them.
        let mut earlier_acks = 0;
        // Outages with updates pending at Telegram (check (5) had something to hold back).
        let mut watched = 0;
        // Outages begun during traffic.
        let mut in_traffic = 0;
        let mut round = 0;
        while feeding(p) || round < min_rounds {
            tokio::time::sleep(Duration::from_secs(3)).await;
            recovered += restart_if_wedged(p).await?;
            in_traffic += usize::from(feeding(p));
            let down = if round % 2 == 0 {
                killed += 1;
                Down::Killed
            } else {
                clean += 1;
                Down::Clean
            };
            round += 1;
            let (acks, pending, restarted) =
                broker_outage(p, down, Duration::from_secs(5)).await?;
            recovered += restarted;
            earlier_acks += acks;
            watched += usize::from(pending > 0);
        }
        anyhow::ensure!(
            watched >= 1,
            "(5) proved nothing: Telegram had no pending updates during any outage"
        );
        // Until everything is stored, a broker wedged by its own panic is restarted, as a
        // liveness probe would.
        let deadline = Instant::now() + settle_timeout;
        while p.settled().await.is_err() && Instant::now() < deadline {
            recovered += restart_if_wedged(p).await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        anyhow::ensure!(
            in_traffic >= 1,
            "no broker outage began during traffic ({killed} SIGKILL, {clean} SIGTERM restarts)"
        );
        let wedged = if recovered > 0 {
            format!("; {recovered} more restarts after Tansu's storage panic")
        } else {
            String::new()
        };
        Ok(format!(
            "{killed} SIGKILL and {clean} SIGTERM restarts ({in_traffic} during traffic); no confirm beyond what Kafka held before each outage (earlier acknowledgements confirmed during them {earlier_acks} times){wedged}"
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

/// Waits until `check` holds, for at most `bound`, on a broker that may wedge: between attempts a broker wedged by its storage panic is restarted and
/// counted in `restarts` ([`restart_if_wedged`]), and a check that failed (the broker away)
/// is tried again until `bound`.
pub(crate) async fn within_on_tansu<F>(
    p: &Pipeline,
    restarts: &mut usize,
    bound: Duration,
    what: &str,
    mut check: F,
) -> anyhow::Result<()>
where
    F: AsyncFnMut() -> anyhow::Result<bool>,
{
    let since = Instant::now();
    loop {
        *restarts += restart_if_wedged(p).await?;
        let last = check().await;
        if matches!(last, Ok(true)) {
            return Ok(());
        }
        if since.elapsed() >= bound {
            let last = last.map_or_else(|e| format!("{e:#}"), |_| "not yet".to_owned());
            anyhow::bail!("{what} within {bound:?} (last: {last})");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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
        // Restarts begun, and backends terminated, during traffic.
        let (mut restarts_in_traffic, mut terminated_in_traffic) = (0, 0_i64);
        let mut round = 0;
        while feeding(p) || round < 2 {
            tokio::time::sleep(Duration::from_millis(1_500)).await;
            let during = feeding(p);
            if round % 2 == 0 {
                cluster.restart(StopMode::Immediate).await?;
                restarts += 1;
                restarts_in_traffic += i32::from(during);
            } else {
                // The consumers' connections only, by database and application_name.
                let admin = sqlx::PgPool::connect(&cluster.url("postgres")).await?;
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE datname = $1 AND application_name LIKE 'tgingest-consumer-%'",
                )
                .bind(&db)
                .fetch_one(&admin)
                .await?;
                admin.close().await;
                terminated += n;
                if during {
                    terminated_in_traffic += n;
                }
            }
            round += 1;
        }
        anyhow::ensure!(restarts >= 2 && terminated > 0, "{restarts} restarts, {terminated} kills");
        anyhow::ensure!(
            restarts_in_traffic >= 1 && terminated_in_traffic > 0,
            "during traffic only {restarts_in_traffic} restarts and {terminated_in_traffic} backends terminated"
        );
        Ok(format!(
            "{restarts} immediate restarts ({restarts_in_traffic} during traffic), \
             {terminated} backends terminated ({terminated_in_traffic} during traffic)"
        ))
    })
    .await;
    finished.assert_clean();
    finished.cleanup().await;
}

/// The in-flight budget of the slow-database scenario (`CONSUMER_MAX_INFLIGHT_BYTES`): small,
/// so a backlog of ten times it fits the mock cluster's ~5 MB per partition at the small size.
const SLOW_DB_INFLIGHT_BYTES: u64 = 512 * 1024;

/// README's memory formula (BENCHMARKS.md §5) for one consumer process, bytes: the idle
/// process (17 MiB for a release build; `idle` here) + P × (2 × K KiB + 0.6 MiB) + 4.5 ×
/// min(B, P × R × mean record bytes).
fn memory_formula(
    idle: u64,
    partitions: u64,
    queue_kbytes: u64,
    batch_records: u64,
    budget: u64,
    mean_record: u64,
) -> u64 {
    const MIB: f64 = 1024.0 * 1024.0;
    let prefetch = partitions as f64 * (2.0 * queue_kbytes as f64 * 1024.0 + 0.6 * MIB);
    let inflight = 4.5 * budget.min(partitions * batch_records * mean_record) as f64;
    idle + (prefetch + inflight) as u64
}

/// The most partitions a consumer's log says it was assigned at once.
fn most_partitions_assigned(log: &str) -> u64 {
    log.lines()
        .filter_map(|l| l.split("partitions assigned partitions=[").nth(1))
        .map(|rest| {
            let list = rest.split(']').next().unwrap_or_default();
            list.split(',').filter(|p| !p.trim().is_empty()).count() as u64
        })
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_database_locked_table_stays_within_memory_bound() {
    let mut scale = Scale::of(false);
    // At the small size, 20 s of traffic rather than 10, so that most of it arrives behind the
    // lock even when the group is slow to form.
    if !scale.large {
        scale.rate = 150;
    }
    let mut spec = Spec::new(mock_broker(), scale.partitions);
    spec.consumer_env
        .push(("CONSUMER_STATEMENT_TIMEOUT", "10s".to_owned()));
    spec.consumer_env.push((
        "CONSUMER_MAX_INFLIGHT_BYTES",
        SLOW_DB_INFLIGHT_BYTES.to_string(),
    ));
    let hold = if scale.large {
        Duration::from_secs(40)
    } else {
        Duration::from_secs(20)
    };
    // Every text gets 6 KiB more, so the traffic behind the lock is many times the budget.
    let special = |_: usize| Some(Special::Padded);
    let before = std::sync::Mutex::new((0, 0));
    // The largest backlog (bytes in Kafka beyond the stored offsets) seen while the table was
    // locked.
    let peak_backlog = std::sync::Mutex::new(0_u64);
    let finished = run(
        "slow database (messages locked, 512 KiB in-flight budget)",
        spec,
        scale,
        special,
        async |p| {
            // Let the group form first: every partition owned, then a quiet moment.
            while p.stored_offsets().await?.iter().any(Option::is_none) {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            *before.lock().unwrap() = (ownership_moves(p).await, revocations(p));
            anyhow::ensure!(feeding(p), "the traffic ended before the table was locked");
            eprintln!(
                "slow database: locking messages after {} of {} updates",
                p.generated().len(),
                scale.updates
            );
            let mut tx = p.pool().begin().await?;
            sqlx::query("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
                .execute(&mut *tx)
                .await?;
            let locked = Instant::now();
            while locked.elapsed() < hold {
                let ends = p.watermarks().await?;
                let stored = p.stored_offsets().await?;
                let behind: i64 = ends
                    .iter()
                    .zip(&stored)
                    .map(|((_, high), at)| high - at.unwrap_or(0))
                    .sum();
                let generated = p.generated();
                let mean = generated.iter().map(|g| g.raw.len() as u64).sum::<u64>()
                    / generated.len().max(1) as u64;
                {
                    let mut peak = peak_backlog.lock().unwrap();
                    *peak = (*peak).max(behind.max(0) as u64 * mean);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            tx.rollback().await?;
            // Anything the stall caused (an eviction, a revoke) shows within a session timeout.
            tokio::time::sleep(Duration::from_secs(7)).await;
            let (moves, revoked) = *before.lock().unwrap();
            *before.lock().unwrap() = (ownership_moves(p).await - moves, revocations(p) - revoked);
            let backlog = *peak_backlog.lock().unwrap();
            anyhow::ensure!(
                backlog >= 10 * SLOW_DB_INFLIGHT_BYTES,
                "the backlog behind the lock reached only {} KiB, less than 10 × the {} KiB budget",
                backlog >> 10,
                SLOW_DB_INFLIGHT_BYTES >> 10
            );
            Ok(format!(
                "messages locked for {} s during traffic; backlog up to {} KiB (budget {} KiB)",
                hold.as_secs(),
                backlog >> 10,
                SLOW_DB_INFLIGHT_BYTES >> 10
            ))
        },
    )
    .await;
    // README's formula with the scenario's settings (K = 1024 KiB prefetch per partition, R = 250
    // records per batch, B = the budget) and the partitions each consumer was assigned at most;
    // its idle term is this debug build's, measured after the run on an empty topic with the
    // consumer's partitions, as `tgingest-bench memory` measures it (the large run of 855b962
    // took it from one partition, 5 MiB too low at 6: docs/RELIABILITY.md). Within 25%: the
    // formula was fitted on release builds (within ~5%). A consumer ignoring the budget holds a
    // batch per partition, decoded: about 15 MiB more at 6 partitions.
    let generated = finished.pipeline.generated();
    let mean = generated.iter().map(|g| g.raw.len() as u64).sum::<u64>() / generated.len() as u64;
    let assigned: Vec<u64> = finished
        .pipeline
        .live_consumers()
        .iter()
        .map(|c| most_partitions_assigned(&c.output_text()))
        .collect();
    let peaks = finished.consumer_peaks.clone();
    finished.assert_clean();
    assert!(!peaks.is_empty() && peaks.len() == assigned.len());
    // The idle term of the formula for this (debug) build and each consumer's partitions,
    // measured by a consumer idle on an empty topic with as many partitions.
    let mut idle_of = std::collections::BTreeMap::new();
    for &partitions in &assigned {
        if let std::collections::btree_map::Entry::Vacant(entry) = idle_of.entry(partitions) {
            let idle = finished
                .pipeline
                .idle_consumer_peak_rss(partitions.max(1) as i32)
                .await
                .unwrap();
            entry.insert(idle);
        }
    }
    for (peak, &partitions) in peaks.iter().zip(&assigned) {
        let idle = idle_of[&partitions];
        let formula = memory_formula(idle, partitions, 1024, 250, SLOW_DB_INFLIGHT_BYTES, mean);
        eprintln!(
            "slow database: consumer with {partitions} partitions peaked at {} KiB; formula {} KiB \
             (idle {} KiB), mean record {mean} B, backlog {} KiB",
            peak >> 10,
            formula >> 10,
            idle >> 10,
            *peak_backlog.lock().unwrap() >> 10
        );
        // Asserted at the large size only: at the small size a consumer that ignored the budget
        // would hold about 3 MiB more than the bound allows, within the run-to-run spread of a
        // debug build's RSS (passing runs peaked at 44.8–47.0 MiB against a bound of about 48.5),
        // so CI prints the figure and the large run judges it.
        if scale.large {
            assert!(
                *peak <= formula + formula / 4,
                "a consumer with {partitions} partitions peaked at {} MiB, above README's formula \
                 ({} MiB, idle {} MiB) + 25%",
                peak >> 20,
                formula >> 20,
                idle >> 20
            );
        }
    }
    let (moves, revoked) = *before.lock().unwrap();
    assert_eq!(
        moves, 0,
        "a partition changed owner: a consumer was evicted from the group"
    );
    assert_eq!(revoked, 0, "partitions were revoked during the stall");
    finished.cleanup().await;
}

/// The sum of counter `metric` over the live consumers (each must run with `ADMIN_LISTEN` on).
async fn consumers_metric(p: &Pipeline, metric: &str) -> anyhow::Result<f64> {
    let mut sum = 0.0;
    for consumer in p.live_consumers() {
        sum += Pipeline::metric(&consumer, metric).await?;
    }
    Ok(sum)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn database_offsets_restored_from_an_earlier_dump_under_a_running_group() {
    let mut scale = Scale::of(false);
    // At the small size, 15 s of traffic rather than 10, so that the restore lands during traffic
    // even when the group is slow to form.
    if !scale.large {
        scale.rate = 200;
    }
    let mut spec = Spec::new(mock_broker(), scale.partitions);
    spec.consumer_env
        .push(("ADMIN_LISTEN", "127.0.0.1:0".to_owned()));
    let finished = run(
        "database restored from an earlier dump (consumer_offsets) under the running group",
        spec,
        scale,
        |_| None,
        async |p| {
            while p.stored_offsets().await?.iter().any(Option::is_none) {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            // The dump: the group's offset rows as they are now, taken before the current
            // owners' ownership statements (so one epoch older, as in consumer/tests/liveness.rs).
            let dump = format!("chaos_offsets_dump_{}", testkit::random_suffix(6));
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "CREATE TABLE {dump} AS SELECT * FROM consumer_offsets WHERE group_id = $1"
            )))
            .bind(&p.group)
            .execute(p.pool())
            .await?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            anyhow::ensure!(feeding(p), "the traffic ended before the restore");
            let reowned_before = consumers_metric(p, "tgingest_consumer_reowned_total").await?;
            // The restore, in one statement: offsets back to the dump's, epochs one older.
            let rewound: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "WITH restored AS ( \
                   UPDATE consumer_offsets c SET next_offset = d.next_offset, \
                     owner_epoch = d.owner_epoch - 1, rewind_seq = d.rewind_seq, \
                     last_record_sha256 = d.last_record_sha256, \
                     topic_incarnation = d.topic_incarnation, updated_at = d.updated_at \
                   FROM {dump} d, consumer_offsets old \
                   WHERE (c.group_id, c.topic, c.partition) = (d.group_id, d.topic, d.partition) \
                     AND (old.group_id, old.topic, old.partition) = (c.group_id, c.topic, c.partition) \
                   RETURNING old.next_offset > d.next_offset AS went_back) \
                 SELECT count(*) FILTER (WHERE went_back) FROM restored"
            )))
            .fetch_one(p.pool())
            .await?;
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {dump}")))
                .execute(p.pool())
                .await?;
            anyhow::ensure!(
                rewound >= 1,
                "the restore moved no partition's offset back: the dump was not earlier"
            );
            // Every partition's owner finds an older epoch and re-owns it (at the dump's offset).
            let partitions = f64::from(p.spec.partitions);
            let mut reowned = 0.0;
            let since = Instant::now();
            while since.elapsed() < Duration::from_secs(30) {
                reowned =
                    consumers_metric(p, "tgingest_consumer_reowned_total").await? - reowned_before;
                if reowned >= partitions {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            anyhow::ensure!(
                reowned >= partitions,
                "only {reowned} of {partitions} partitions were re-owned after the restore"
            );
            Ok(format!(
                "consumer_offsets restored during traffic from a dump 2 s older (epochs one \
                 older): {rewound} partitions moved back, {reowned} re-owned"
            ))
        },
    )
    .await;
    finished.assert_clean();
    finished.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repeated_statement_timeouts_halve_batches_and_dead_letter_nothing() {
    let scale = Scale::of(false);
    let mut spec = Spec::new(mock_broker(), scale.partitions);
    spec.consumer_env
        .push(("CONSUMER_STATEMENT_TIMEOUT", "1s".to_owned()));
    spec.consumer_env
        .push(("ADMIN_LISTEN", "127.0.0.1:0".to_owned()));
    let finished = run(
        "repeated statement timeouts (every messages row 20 ms, statement timeout 1 s)",
        spec,
        scale,
        |_| None,
        async |p| {
            while p.stored_offsets().await?.iter().any(Option::is_none) {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            // Every `messages` row takes 20 ms to insert (as in consumer/tests/liveness.rs): a
            // full batch's statement runs past the 1 s timeout, and so may its first halves.
            sqlx::raw_sql(
                "CREATE OR REPLACE FUNCTION chaos_slow_row() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN PERFORM pg_sleep(0.02); RETURN NEW; END $$; \
                 CREATE OR REPLACE TRIGGER chaos_slow_row BEFORE INSERT ON messages \
                 FOR EACH ROW EXECUTE FUNCTION chaos_slow_row()",
            )
            .execute(p.pool())
            .await?;
            let slowed = Instant::now();
            let mut halvings = 0.0;
            while feeding(p) || slowed.elapsed() < Duration::from_secs(8) {
                if feeding(p) {
                    halvings =
                        consumers_metric(p, "tgingest_consumer_timeout_halvings_total").await?;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            sqlx::query("DROP TRIGGER chaos_slow_row ON messages")
                .execute(p.pool())
                .await?;
            anyhow::ensure!(
                halvings >= 2.0,
                "only {halvings} batches were halved after a statement timeout during traffic"
            );
            Ok(format!(
                "messages rows slowed to 20 ms each for at least 8 s: {halvings} batches halved \
                 after a timeout during traffic"
            ))
        },
    )
    .await;
    finished.assert_clean();
    let letters = finished
        .scalar("SELECT count(*) FROM dead_letters WHERE topic = $1")
        .await;
    assert_eq!(letters, 0, "a statement timeout is not the record's fault");
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
            // Every fault is injected during traffic; at least one of each kind.
            anyhow::ensure!(
                injected >= faults.len(),
                "only {injected} faults injected during traffic (at least {} must)",
                faults.len()
            );
            Ok(format!(
                "{injected} faulty getUpdates answers, all during traffic"
            ))
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

/// Kinds without a date of their own: under a receive-time ordering, a late copy of one of these
/// would have overwritten newer rows.
const DATELESS_KINDS: [&str; 3] = ["callback_query", "poll", "poll_answer"];

/// The kind of an update's bytes (`None` for bytes that are not an update object).
fn kind_of(raw: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(raw).ok()?;
    value
        .as_object()?
        .keys()
        .find(|k| *k != "update_id")
        .cloned()
}

/// Updates whose webhook delivery failed (an error status or no answer) and later succeeded:
/// Telegram's retries, each received later than the first attempt.
fn retried_deliveries(p: &Pipeline) -> usize {
    let mut failed = std::collections::BTreeSet::new();
    let mut retried = std::collections::BTreeSet::new();
    let mut attempts = p.api.webhook_attempts();
    attempts.sort_by_key(|a| (a.bot.id, a.update_id, a.attempt));
    for a in attempts {
        let key = (a.bot.id, a.update_id);
        let ok =
            matches!(a.outcome, botsim::WebhookOutcome::Status(code) if (200..300).contains(&code));
        if !ok {
            failed.insert(key);
        } else if failed.contains(&key) {
            retried.insert(key);
        }
    }
    retried.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn order_duplication_and_time_converge_to_the_in_order_state() {
    let scale = Scale::of(false);
    let mut spec = Spec::new(mock_broker(), scale.partitions);
    spec.intake = Intake::Webhook {
        duplicate_probability: 0.2,
        shuffle: true,
    };
    let settle_timeout = scale.settle_timeout();
    let late = std::sync::Mutex::new(std::collections::BTreeMap::<String, usize>::new());
    let finished = run(
        "order, duplication and time (shuffled, late duplicates, retries)",
        spec,
        scale,
        |_| None,
        async |p| {
            // A broker outage longer than Telegram's 10 s webhook timeout, a third into the
            // traffic: deliveries fail (503 or no answer) and are retried later, with later
            // receive times, some after their first attempt was published after all.
            while p.generated().len() < scale.updates / 3 {
                anyhow::ensure!(feeding(p), "the traffic ended before the outage");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            p.broker.set_available(false).await?;
            tokio::time::sleep(Duration::from_secs(12)).await;
            p.broker.set_available(true).await?;
            // Once everything is stored, Telegram re-delivers old updates: every dateless one
            // and every 10th of the others, each now older than the rows it mentions.
            while feeding(p) {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            p.settle(settle_timeout).await?;
            let mut pushed = 0;
            for (i, g) in p.generated().iter().enumerate() {
                let kind = kind_of(&g.raw).unwrap_or_default();
                if !DATELESS_KINDS.contains(&kind.as_str()) && i % 10 != 0 {
                    continue;
                }
                let bot = p.bots.iter().find(|b| b.info.id == g.bot_id).unwrap();
                anyhow::ensure!(
                    p.api.push_update(&bot.token, g.raw.to_vec())?,
                    "a re-delivery of {kind} was refused"
                );
                *late.lock().unwrap().entry(kind).or_default() += 1;
                pushed += 1;
            }
            Ok(format!(
                "20% of deliveries repeated, order shuffled; a 12 s broker outage ({} deliveries \
                 retried); {pushed} late re-deliveries of stored updates",
                retried_deliveries(p)
            ))
        },
    )
    .await;
    finished.assert_clean();
    let p = &finished.pipeline;
    // The faults landed: retries, late copies of every dateless kind, and all of them in Kafka.
    let retried = retried_deliveries(p);
    assert!(
        retried > 0,
        "no webhook delivery was retried after a failure"
    );
    let late = late.into_inner().unwrap();
    for kind in DATELESS_KINDS {
        assert!(
            late.get(kind).copied().unwrap_or(0) > 0,
            "no late copy of a {kind}: {late:?}"
        );
    }
    let pushed: usize = late.values().sum();
    assert!(
        finished.verdict.kafka_duplicates >= pushed,
        "{} duplicates in Kafka, {pushed} late re-deliveries",
        finished.verdict.kafka_duplicates
    );
    // The in-order run: the same updates, in the order they were generated, one batch after
    // the other through the consumer's writer, received one second apart.
    let reference = testkit::TestDb::create().await.unwrap();
    let generated = p.generated();
    let deliveries: Vec<testkit::direct::Delivery<'_>> = generated
        .iter()
        .enumerate()
        .map(|(i, g)| testkit::direct::Delivery {
            bot_id: g.bot_id,
            bytes: &g.raw,
            received_at_ms: 1_760_000_000_000 + 1_000 * i as i64,
        })
        .collect();
    testkit::direct::write_in_order(reference.pool(), &deliveries, 250)
        .await
        .unwrap();
    let bots: Vec<i64> = p.bots.iter().map(|b| b.info.id).collect();
    let in_order = State::read(reference.pool(), &bots).await.unwrap();
    let chaotic = State::read(p.pool(), &bots).await.unwrap();
    let differences = in_order.compare(&chaotic);
    assert!(
        differences.is_empty(),
        "the shuffled, duplicated, retried run differs from the in-order run in {} rows:\n{}",
        differences.len(),
        differences
            .iter()
            .take(20)
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(in_order.total_rows() > 0 && in_order.rows("message_edits") > 0);
    eprintln!(
        "order, duplication and time: {retried} retried deliveries, late copies {late:?}, \
         {} projection rows equal to the in-order run's",
        in_order.total_rows()
    );
    finished.cleanup().await;
}

/// When the producer scenario's supervisor SIGKILLs a running producer (it never kills one that
/// already exited at the failpoint): the first time it is alive during traffic after 2 s, then
/// every 4 s of traffic, and once after the traffic when no kill happened. A fixed schedule alone
/// (round 20, 60, …) could meet a producer that had just crashed every time and kill none.
fn kill_due(round: usize, feeding: bool, kills: usize, kills_in_traffic: usize) -> bool {
    if feeding {
        round >= 20 && (kills_in_traffic == 0 || round % 40 == 20)
    } else {
        kills == 0
    }
}

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
            // Bots that confirmed, during the outage, acknowledgements received before it.
            let mut earlier_acks = 0;
            // Crashes after an ack and SIGKILLs seen during traffic.
            let (mut crashes_in_traffic, mut kills_in_traffic) = (0, 0);
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
                    crashes_in_traffic += usize::from(feeding(p));
                    p.restart_producer(0).await?;
                } else if kill_due(round, feeding(p), kills, kills_in_traffic) {
                    kills_in_traffic += usize::from(feeding(p));
                    producer.signal(Signal::SIGKILL)?;
                    producer.wait(Duration::from_secs(10)).await?;
                    kills += 1;
                    p.restart_producer(0).await?;
                } else if round >= 20 && outages == 0 && feeding(p) {
                    let (acks, pending, _) =
                        broker_outage(p, Down::Killed, Duration::from_secs(5)).await?;
                    anyhow::ensure!(
                        pending > 0,
                        "(5) proved nothing: Telegram had no pending updates during the outage"
                    );
                    earlier_acks += acks;
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
            anyhow::ensure!(
                crashes_in_traffic >= 1 && kills_in_traffic >= 1,
                "during traffic only {crashes_in_traffic} crashes after an ack and {kills_in_traffic} SIGKILLs"
            );
            Ok(format!(
                "{crashes} exits after the ack ({crashes_in_traffic} during traffic), {kills} \
                 SIGKILLs ({kills_in_traffic} during traffic), {outages} broker outage (during traffic, \
                 earlier acknowledgements confirmed during it by {earlier_acks} bots)"
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revoked_token_among_three_bots() {
    let scale = Scale::of(false);
    let mut spec = Spec::new(mock_broker(), scale.partitions);
    spec.bots = 3;
    let finished = run(
        "a revoked token among three bots (5 s, then restored)",
        spec,
        scale,
        |_| None,
        async |p| {
            while p.generated().len() < scale.updates / 4 {
                anyhow::ensure!(feeding(p), "the traffic ended before the revocation");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // Telegram answers every request with the revoked token 401 and keeps its queue;
            // the other two bots must keep being served meanwhile.
            let revoked = &p.bots[1];
            let from = std::time::SystemTime::now();
            p.api.set_token_revoked(&revoked.token, true)?;
            tokio::time::sleep(Duration::from_secs(5)).await;
            let during_traffic = feeding(p);
            p.api.set_token_revoked(&revoked.token, false)?;
            let to = std::time::SystemTime::now();
            let requests = p.api.requests();
            let polls = |bot: Option<i64>, status: u16| {
                requests
                    .iter()
                    .filter(|r| {
                        r.at >= from
                            && r.at <= to
                            && r.method == "getupdates"
                            && r.status == status
                            && (bot.is_none() || r.bot.map(|b| b.id) == bot)
                    })
                    .count()
            };
            // A revoked token names no bot in the request log: every 401 is the revoked one's.
            let refused = polls(None, 401);
            let served: Vec<usize> = p
                .bots
                .iter()
                .filter(|b| b.info.id != revoked.info.id)
                .map(|b| polls(Some(b.info.id), 200))
                .collect();
            anyhow::ensure!(during_traffic, "the traffic ended during the revocation");
            anyhow::ensure!(
                refused >= 1,
                "the producer sent no getUpdates with the revoked token during traffic"
            );
            anyhow::ensure!(
                served.iter().all(|&n| n >= 2),
                "the other bots were not kept served during the revocation: {served:?} polls"
            );
            Ok(format!(
                "one of three tokens revoked for 5 s during traffic: {refused} getUpdates \
                 answered 401, the other bots served {served:?} times meanwhile"
            ))
        },
    )
    .await;
    finished.assert_clean();
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
