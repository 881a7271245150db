//! Fault-matrix scenarios of the infrastructure around the pipeline, as operators meet it: a
//! Kafka outage that leaves a webhook producer with no traffic to prove itself on, PostgreSQL
//! connections silently black-holed mid-transaction, partition leaders moving between brokers
//! under load, two operators' commands (a dead-letter redrive and a replay) overlapping, and the
//! topic deleted and recreated under the running pipeline (on Tansu: every partition halts, and
//! nothing is skipped once the operator accepts the new log), and a backlog over 48 partitions
//! piled up while the consumers were down, which they must drain fairly.
//!
//! Each scenario runs through [`crate::run`] (so the oracle judges every update and every
//! projection row afterwards) and asserts that its faults landed during traffic, where it
//! claims, with a minimum count; its driver returns a one-line description of what landed.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::Signal;
use testkit::BrokerKind;

use crate::pipeline::{Database, Intake, Pipeline, Spec};
use crate::special::Special;
use crate::{Scale, feeding, mock_broker, run, within_on_tansu};

/// The mock cluster (hosted in a helper process), for scenarios that take the broker down or move
/// its leaders: an external broker cannot be controlled by a test (`scripts/test` excludes these
/// scenarios there and says why; run there anyway, they fail here rather than pass untested).
fn controllable_mock(reason: &str) -> BrokerKind {
    let kind = mock_broker();
    testkit::require_broker(kind, &[BrokerKind::HostedMock], reason);
    kind
}

/// Waits until every partition has a stored offset: the group formed and took ownership.
async fn group_formed(p: &Pipeline) -> anyhow::Result<()> {
    while p.stored_offsets().await?.iter().any(Option::is_none) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

// ---- a Kafka outage in webhook mode ------------------------------------------------------------

/// The header Telegram sends the webhook secret in.
const SECRET_HEADER: &str = "X-Telegram-Bot-Api-Secret-Token";

/// `GET /readyz` of the admin server at `addr`: (status, body).
async fn readyz(http: &reqwest::Client, addr: &str) -> anyhow::Result<(u16, String)> {
    let answer = http
        .get(format!("http://{addr}/readyz"))
        .send()
        .await
        .map_err(reqwest::Error::without_url)?;
    let status = answer.status().as_u16();
    Ok((status, answer.text().await.unwrap_or_default()))
}

/// Telegram stops delivering (`deleteWebhook`, pending updates kept), as it does for a webhook
/// whose deliveries keep failing; [`Pipeline::register_webhooks`] resumes it.
async fn pause_deliveries(p: &Pipeline, http: &reqwest::Client) -> anyhow::Result<()> {
    for bot in &p.bots {
        let reply: serde_json::Value = http
            .post(format!(
                "{}/bot{}/deleteWebhook",
                p.api.base_url(),
                bot.token
            ))
            .send()
            .await
            .map_err(reqwest::Error::without_url)?
            .json()
            .await
            .map_err(reqwest::Error::without_url)?;
        anyhow::ensure!(reply["ok"] == true, "deleteWebhook was refused: {reply}");
    }
    Ok(())
}

/// How long a webhook producer may take to report ready again once Kafka is back, with no request
/// reaching it (a pod that is not ready gets none): its metadata probe runs every 5 s.
const READY_AGAIN_WITHIN: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_outage_in_webhook_mode_readiness_returns_without_traffic() {
    let mut scale = Scale::of(false);
    // 30 s of traffic: the outage, the 503 and the recovery all fit inside it.
    scale.rate = (scale.updates / 30) as u32;
    let mut spec = Spec::new(
        controllable_mock("a test cannot take an external broker down"),
        scale.partitions,
    );
    spec.intake = Intake::Webhook {
        duplicate_probability: 0.0,
        shuffle: false,
    };
    spec.producer_env
        .push(("ADMIN_LISTEN", "127.0.0.1:0".to_owned()));
    // A webhook request waits this long for Kafka's acknowledgement before its 503 (the default
    // 30 s is longer than Telegram's 10 s webhook timeout would wait).
    spec.producer_env
        .push(("KAFKA_DELIVERY_TIMEOUT", "3s".to_owned()));
    let finished = run(
        "Kafka outage in webhook mode, no request after it (readiness by the producer's own probe)",
        spec,
        scale,
        |_| None,
        async |p| {
            let producer = p.producers.lock().unwrap()[0].clone();
            let admin = Pipeline::admin_address(&producer)?;
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?;
            group_formed(p).await?;
            let (before, body) = readyz(&http, &admin).await?;
            anyhow::ensure!(
                before == 200,
                "the producer was not ready before the outage: {before} {body}"
            );
            // Telegram stops delivering, so that from the outage on the one request below is the
            // only one the producer gets; its queue keeps growing with the traffic.
            pause_deliveries(p, &http).await?;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let paused = SystemTime::now();
            anyhow::ensure!(feeding(p), "the traffic ended before the outage");
            p.broker.set_available(false).await?;
            let down = Instant::now();
            // One delivery during the outage: the latest update of the first bot (Telegram still
            // holds it and delivers it again once resumed).
            let bot = &p.bots[0];
            let update = p
                .generated()
                .iter()
                .rev()
                .find(|g| g.bot_id == bot.info.id)
                .map(|g| g.raw.clone())
                .expect("the first bot has traffic");
            let (url, secret) = p.webhook_target(bot.info.id);
            let status = http
                .post(url)
                .header(SECRET_HEADER, secret)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(update.to_vec())
                .send()
                .await
                .map_err(reqwest::Error::without_url)?
                .status()
                .as_u16();
            let answered_after = down.elapsed();
            let (during, body) = readyz(&http, &admin).await?;
            let in_traffic = feeding(p);
            p.broker.set_available(true).await?;
            let up = Instant::now();
            anyhow::ensure!(
                status == 503,
                "the webhook request during the outage was answered {status}, not 503"
            );
            anyhow::ensure!(
                during == 503 && body.contains("kafka"),
                "/readyz answered {during} after the failed publish, not 503 naming kafka: {body}"
            );
            anyhow::ensure!(in_traffic, "the traffic ended during the outage");
            // Nothing reaches the producer now: only its own probe can make it ready again.
            let mut recovered = None;
            while up.elapsed() < READY_AGAIN_WITHIN {
                if readyz(&http, &admin).await?.0 == 200 {
                    recovered = Some(up.elapsed());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let delivered = p
                .api
                .webhook_attempts()
                .iter()
                .filter(|a| a.at >= paused)
                .count();
            anyhow::ensure!(
                delivered == 0,
                "Telegram delivered {delivered} updates while paused: readiness may have \
                 recovered through traffic"
            );
            let recovered = recovered.ok_or_else(|| {
                anyhow::anyhow!(
                    "/readyz did not answer 200 within {READY_AGAIN_WITHIN:?} of Kafka's return \
                     without traffic"
                )
            })?;
            p.register_webhooks().await?;
            Ok(format!(
                "broker down during traffic with Telegram's deliveries paused: 1 POST answered 503 \
                 after {:.1} s, /readyz 503 (kafka); broker back, no POST: /readyz 200 after {:.1} s",
                answered_after.as_secs_f64(),
                recovered.as_secs_f64()
            ))
        },
    )
    .await;
    finished.assert_clean();
    finished.cleanup().await;
}

// ---- black-holed PostgreSQL connections --------------------------------------------------------

/// The consumers' sessions with a transaction open now (active, or idle in transaction, with a
/// transaction id): (pid, transaction start as text).
async fn open_consumer_transactions(p: &Pipeline) -> anyhow::Result<Vec<(i32, String)>> {
    Ok(sqlx::query_as(
        "SELECT pid, xact_start::text FROM pg_stat_activity \
         WHERE application_name LIKE 'tgingest-consumer-%' AND backend_xid IS NOT NULL \
           AND state IN ('active', 'idle in transaction')",
    )
    .fetch_all(p.pool())
    .await?)
}

/// Of the sessions `open` (see [`open_consumer_transactions`]), those still in the same
/// transaction and idle in it: their client stopped sending mid-transaction.
async fn stranded(p: &Pipeline, open: &[(i32, String)]) -> anyhow::Result<usize> {
    let now: Vec<(i32, String)> = sqlx::query_as(
        "SELECT pid, xact_start::text FROM pg_stat_activity \
         WHERE application_name LIKE 'tgingest-consumer-%' AND backend_xid IS NOT NULL \
           AND state = 'idle in transaction'",
    )
    .fetch_all(p.pool())
    .await?;
    Ok(open.iter().filter(|o| now.contains(o)).count())
}

/// The consumers' statement timeout in the black-hole scenario: a frozen batch transaction is
/// abandoned by its client after twice that, and ended by the server after as long idle.
const BLACK_HOLE_STATEMENT_TIMEOUT: &str = "2s";

/// Consumers reach a private PostgreSQL cluster through the proxy that black-holes connections
/// (frozen sessions stay open on the server until the proxy goes: a private cluster keeps them
/// away from the shared server's connection limit), with short statement and acquire timeouts.
fn behind_a_black_hole(spec: &mut Spec) {
    spec.database = Database::Private;
    spec.database_proxy = true;
    spec.consumer_env.push((
        "CONSUMER_STATEMENT_TIMEOUT",
        BLACK_HOLE_STATEMENT_TIMEOUT.to_owned(),
    ));
    spec.consumer_env
        .push(("DATABASE_ACQUIRE_TIMEOUT", "2s".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_connections_black_holed_mid_transaction() {
    let scale = Scale::of(false);
    let mut spec = Spec::new(mock_broker(), scale.partitions);
    behind_a_black_hole(&mut spec);
    let finished = run(
        "PostgreSQL connections black-holed mid-transaction (nothing forwarded, nothing closed)",
        spec,
        scale,
        |_| None,
        async |p| {
            let proxy = p.proxy.as_ref().expect("the spec asks for a proxy");
            group_formed(p).await?;
            let (mut holes, mut frozen, mut landed) = (0, 0, 0);
            // Transactions caught open by a black hole during traffic.
            let mut caught = 0;
            let mut turns = 0;
            while feeding(p) || holes < 2 {
                turns += 1;
                anyhow::ensure!(turns < 20, "{holes} black holes, {landed} landed");
                // During traffic, wait (2 s at most) until a consumer has a transaction open, so
                // the freeze lands inside it.
                let mut open = Vec::new();
                let until = Instant::now() + Duration::from_secs(2);
                while feeding(p) && Instant::now() < until {
                    open = open_consumer_transactions(p).await?;
                    if !open.is_empty() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let during = feeding(p);
                let now_frozen = proxy.black_hole();
                holes += 1;
                frozen += now_frozen;
                // A transaction that is still open and idle a second later never heard from its
                // client again: the freeze caught it (a live client sends its next statement
                // within a round trip).
                tokio::time::sleep(Duration::from_secs(1)).await;
                let stranded_now = stranded(p, &open).await?;
                if during && stranded_now > 0 {
                    landed += 1;
                    caught += stranded_now;
                }
                // Let the consumers notice and move to new connections before the next freeze.
                tokio::time::sleep(Duration::from_secs(4)).await;
            }
            anyhow::ensure!(
                landed >= 1,
                "none of {holes} black holes ({frozen} connections frozen) caught a consumer \
                 transaction open during traffic"
            );
            Ok(format!(
                "{holes} black holes froze {frozen} connections; {landed} during traffic caught \
                 {caught} consumer transactions open"
            ))
        },
    )
    .await;
    finished.assert_clean();
    finished.cleanup().await;
}

// ---- partition leader failover -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_partition_leaders_move_to_other_brokers_during_traffic() {
    let scale = Scale::of(false);
    let spec = Spec::new(
        controllable_mock("a test cannot move an external broker's partition leaders"),
        scale.partitions,
    );
    let partitions = scale.partitions;
    let settle_timeout = scale.settle_timeout();
    // At least half the partitions change leader during traffic, each followed by records
    // written to and read from its new leader.
    let min_moves = (partitions as usize).div_ceil(2);
    let finished = run(
        "Kafka partition leaders moved to other brokers",
        spec,
        scale,
        |_| None,
        async |p| {
            group_formed(p).await?;
            let brokers = testkit::kafka::DEFAULT_MOCK_BROKERS;
            // Each move during traffic: (partition, its log end at the move).
            let mut moves_in_traffic = Vec::new();
            let mut moves = 0;
            let mut partition = 0;
            while feeding(p) || moves < min_moves {
                anyhow::ensure!(moves < 1000, "the traffic never ended");
                // Often enough that a loaded machine's short traffic still sees several moves.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let leaders = p.broker.partition_leaders(&p.topic).await?;
                let from = leaders[partition as usize];
                // Broker ids run from 1 to `brokers`: the next one round.
                let to = from % brokers + 1;
                let during = feeding(p);
                p.broker
                    .set_partition_leader(&p.topic, partition, to)
                    .await?;
                let end = p.watermarks().await?[partition as usize].1;
                let seen = p.broker.partition_leaders(&p.topic).await?[partition as usize];
                anyhow::ensure!(
                    seen == to,
                    "partition {partition}: leader moved from {from} to {to}, metadata says {seen}"
                );
                moves += 1;
                if during {
                    moves_in_traffic.push((partition, end));
                }
                partition = (partition + 1) % partitions;
            }
            // The old leader refuses produce and fetch requests for a partition it no longer
            // leads: records past a move's log end went to, and were read from, a new leader.
            p.settle(settle_timeout).await?;
            let ends = p.watermarks().await?;
            let followed = moves_in_traffic
                .iter()
                .filter(|(partition, end)| ends[*partition as usize].1 > *end)
                .count();
            let moved: std::collections::BTreeSet<i32> = moves_in_traffic
                .iter()
                .map(|(partition, _)| *partition)
                .collect();
            anyhow::ensure!(
                followed >= min_moves,
                "only {followed} of {} leader changes during traffic were followed by records \
                 through the new leader (at least {min_moves} must)",
                moves_in_traffic.len()
            );
            Ok(format!(
                "{moves} leader changes, each seen in metadata; {} during traffic over {} of \
                 {partitions} partitions, {followed} of them followed by records produced to and \
                 consumed from the new leader",
                moves_in_traffic.len(),
                moved.len()
            ))
        },
    )
    .await;
    finished.assert_clean();
    finished.cleanup().await;
}

// ---- a replay while a dead-letter redrive runs -------------------------------------------------

/// One run of an operator's command: when it started and ended, and what it printed.
struct Ran {
    started: Instant,
    ended: Instant,
    output: String,
}

impl Ran {
    fn overlaps(&self, other: &Ran) -> bool {
        self.started < other.ended && other.started < self.ended
    }
}

/// Runs `tgingest <args>` as an operator would; it must exit 0.
async fn operate(p: &Pipeline, args: &[&str]) -> anyhow::Result<Ran> {
    let started = Instant::now();
    let out = p.operator_command(args).output().await?;
    let ended = Instant::now();
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    anyhow::ensure!(
        out.status.success(),
        "`tgingest {}` exited {}: {output}",
        args.join(" "),
        out.status
    );
    Ok(Ran {
        started,
        ended,
        output,
    })
}

/// The constraint that dead-letters [`Special::ConstraintViolation`] updates until it is dropped.
const REFUSES_POISON: &str = "chaos_refuses_poison";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_to_earliest_while_a_dead_letter_redrive_runs() {
    let mut scale = Scale::of(false);
    // 20 s of traffic: dead letters gather first, then both commands run inside it.
    scale.rate = (scale.updates / 20) as u32;
    let spec = Spec::new(mock_broker(), scale.partitions);
    let special = |i: usize| (i >= 100 && i % 40 == 20).then_some(Special::ConstraintViolation);
    let finished = run(
        "replay --to-earliest while dlq redrive runs (constraint violations, cause removed)",
        spec,
        scale,
        special,
        async |p| {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "ALTER TABLE messages ADD CONSTRAINT {REFUSES_POISON} \
                 CHECK (text IS DISTINCT FROM '{}')",
                crate::special::CONSTRAINT_POISON
            )))
            .execute(p.pool())
            .await?;
            group_formed(p).await?;
            let letters = async || -> anyhow::Result<i64> {
                Ok(sqlx::query_scalar(
                    "SELECT count(*) FROM dead_letters \
                     WHERE topic = $1 AND resolved_at IS NULL AND error_class = 'db_23514'",
                )
                .bind(&p.topic)
                .fetch_one(p.pool())
                .await?)
            };
            // Dead letters gather during traffic.
            while letters().await? < 10 {
                anyhow::ensure!(
                    feeding(p),
                    "the traffic ended before 10 dead letters gathered"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            // The operator removes the cause, then redrives the letters while someone else
            // replays the topic from its start: the consumers re-read the same records.
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "ALTER TABLE messages DROP CONSTRAINT {REFUSES_POISON}"
            )))
            .execute(p.pool())
            .await?;
            let before = letters().await?;
            let started_in_traffic = feeding(p);
            let (redrive, replay) = tokio::join!(
                operate(p, &["dlq", "redrive", "--all"]),
                operate(p, &["replay", "--to-earliest", "--execute"])
            );
            let (redrive, replay) = (redrive?, replay?);
            let ended_in_traffic = feeding(p);
            anyhow::ensure!(
                redrive.overlaps(&replay),
                "the redrive and the replay did not overlap"
            );
            anyhow::ensure!(
                started_in_traffic && ended_in_traffic,
                "the commands did not run during traffic (at their start: {started_in_traffic}, \
                 at their end: {ended_in_traffic})"
            );
            let rewound = format!("rewound {} partitions", p.spec.partitions);
            anyhow::ensure!(
                replay.output.contains(&rewound),
                "the replay did not rewind every partition: {}",
                replay.output
            );
            let summary = redrive
                .output
                .lines()
                .find(|l| l.contains("redriven:"))
                .unwrap_or("no summary")
                .trim()
                .to_owned();
            let overlap = redrive.ended.min(replay.ended) - redrive.started.max(replay.started);
            // Every constraint violation now ends as rows: those before the drop through the
            // redrive or the replay, the later ones written directly.
            while feeding(p) {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let now_rows = p.expect_rows_for(Special::ConstraintViolation);
            Ok(format!(
                "{before} dead letters (constraint violations, cause removed); dlq redrive --all \
                 and replay --to-earliest --execute ({rewound}) overlapped for {} ms during \
                 traffic ({summary}); all {now_rows} violating updates must end as rows",
                overlap.as_millis()
            ))
        },
    )
    .await;
    finished.assert_clean();
    let unresolved = finished
        .scalar("SELECT count(*) FROM dead_letters WHERE topic = $1 AND resolved_at IS NULL")
        .await;
    assert_eq!(unresolved, 0, "dead letters left unresolved");
    finished.cleanup().await;
}

// ---- a black hole inside an ownership statement ------------------------------------------------

/// The consumers' sessions running, or idle inside, an ownership statement (the epoch bump on
/// `consumer_offsets`) in state `state`: (pid, transaction start as text).
async fn ownership_sessions(p: &Pipeline, state: &str) -> anyhow::Result<Vec<(i32, String)>> {
    Ok(sqlx::query_as(
        "SELECT pid, xact_start::text FROM pg_stat_activity \
         WHERE application_name LIKE 'tgingest-consumer-%' AND state = $1 \
           AND query LIKE 'UPDATE consumer_offsets SET owner_epoch%'",
    )
    .bind(state)
    .fetch_all(p.pool())
    .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_connection_black_holed_inside_an_ownership_statement() {
    let mut scale = Scale::of(false);
    // 30 s of traffic: a join, the cooperative rebalance (two rounds of up to 5 s each), its
    // ownership statements and the freeze fit inside it.
    scale.rate = (scale.updates / 30) as u32;
    let mut spec = Spec::new(mock_broker(), scale.partitions);
    behind_a_black_hole(&mut spec);
    let finished = run(
        "PostgreSQL connection black-holed inside an ownership statement (row lock held)",
        spec,
        scale,
        |_| None,
        async |p| {
            let proxy = p.proxy.as_ref().expect("the spec asks for a proxy");
            group_formed(p).await?;
            // From now on every epoch bump takes 0.5 s on the server, so a freeze can land while
            // one runs: the server finishes it and then waits for a COMMIT that never comes,
            // holding the partition's row lock.
            sqlx::raw_sql(
                "CREATE OR REPLACE FUNCTION chaos_slow_epoch() RETURNS trigger LANGUAGE plpgsql \
                 AS $$ BEGIN PERFORM pg_sleep(0.5); RETURN NEW; END $$; \
                 CREATE OR REPLACE TRIGGER chaos_slow_epoch BEFORE UPDATE ON consumer_offsets \
                 FOR EACH ROW WHEN (NEW.owner_epoch IS DISTINCT FROM OLD.owner_epoch) \
                 EXECUTE FUNCTION chaos_slow_epoch()",
            )
            .execute(p.pool())
            .await?;
            let (mut joins, mut caught) = (0, Vec::new());
            while caught.is_empty() {
                anyhow::ensure!(
                    feeding(p),
                    "{joins} members joined; no freeze caught an ownership statement during traffic"
                );
                // A member joins: partitions move, and their new owner bumps their epochs.
                p.add_consumer().await?;
                joins += 1;
                let until = Instant::now() + Duration::from_secs(20);
                while feeding(p) && Instant::now() < until {
                    let running = ownership_sessions(p, "active").await?;
                    if running.is_empty() {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                    proxy.black_hole();
                    // The statement ends within 0.5 s; its session then waits for the COMMIT.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let idle = ownership_sessions(p, "idle in transaction").await?;
                    caught = running.into_iter().filter(|r| idle.contains(r)).collect();
                    break;
                }
            }
            // The frozen sessions must not keep the partitions' rows locked: the server ends a
            // transaction idle for twice the statement timeout (4 s).
            let frozen_at = Instant::now();
            let mut held = caught.clone();
            while !held.is_empty() && frozen_at.elapsed() < Duration::from_secs(20) {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let idle = ownership_sessions(p, "idle in transaction").await?;
                held.retain(|c| idle.contains(c));
            }
            anyhow::ensure!(
                held.is_empty(),
                "{} frozen ownership transactions (pids {:?}) still held their row locks on \
                 consumer_offsets {:.0} s after the freeze: their partitions cannot move on",
                held.len(),
                held.iter().map(|(pid, _)| pid).collect::<Vec<_>>(),
                frozen_at.elapsed().as_secs_f64()
            );
            let released = frozen_at.elapsed();
            sqlx::query("DROP TRIGGER chaos_slow_epoch ON consumer_offsets")
                .execute(p.pool())
                .await?;
            Ok(format!(
                "consumers joined during traffic: {joins}; ownership statements frozen \
                 mid-transaction by a black hole: {}, their row locks released by the server \
                 {:.1} s later",
                caught.len(),
                released.as_secs_f64()
            ))
        },
    )
    .await;
    finished.assert_clean();
    finished.cleanup().await;
}

// ---- a topic deleted and recreated mid-run -----------------------------------------------------

/// Polls `check` every 200 ms until it holds, failing with `what` after `bound`.
async fn within<F>(bound: Duration, what: &str, mut check: F) -> anyhow::Result<()>
where
    F: AsyncFnMut() -> anyhow::Result<bool>,
{
    let since = Instant::now();
    while !check().await? {
        anyhow::ensure!(since.elapsed() < bound, "{what} within {bound:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// The group's open log anomalies on the pipeline's topic: (partition, kind).
async fn open_anomalies(p: &Pipeline) -> anyhow::Result<Vec<(i32, String)>> {
    Ok(sqlx::query_as(
        "SELECT partition, kind FROM log_anomalies \
         WHERE group_id = $1 AND topic = $2 AND resolved_at IS NULL ORDER BY partition",
    )
    .bind(&p.group)
    .bind(&p.topic)
    .fetch_all(p.pool())
    .await?)
}

async fn raw_rows(p: &Pipeline) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM raw_updates WHERE kafka_topic = $1")
            .bind(&p.topic)
            .fetch_one(p.pool())
            .await?,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_topic_deleted_and_recreated_mid_run() {
    testkit::require_broker(
        BrokerKind::from_env().unwrap(),
        &[BrokerKind::Mock, BrokerKind::HostedMock, BrokerKind::Tansu],
        "the mock cluster cannot delete a topic and an external broker's topic is not the test's \
         to delete; this scenario runs on its own Tansu",
    );
    let mut scale = Scale::of(false);
    // 3,000 updates at both sizes: after a topic is recreated, Tansu 0.6's sqlite storage answers
    // the producer's first batches with OutOfOrderSequenceNumber and then spends its time in
    // table scans; at 10,000 updates its metadata answers time out for minutes
    // (docs/RELIABILITY.md).
    scale.updates = 3_000;
    // 20 s of traffic: the topic is recreated in its first half and traffic goes on into the new
    // log.
    scale.rate = (scale.updates / 20) as u32;
    let spec = Spec::new(BrokerKind::Tansu, scale.partitions);
    let partitions = scale.partitions as usize;
    let settle_timeout = scale.settle_timeout();
    let finished = run(
        "topic deleted and recreated mid-run, Tansu",
        spec,
        scale,
        |_| None,
        async |p| {
            // Tansu restarts after its storage panic (DESIGN.md §8), counted.
            let mut restarts = 0;
            // Every partition has part of the first log stored.
            within_on_tansu(
                p,
                &mut restarts,
                Duration::from_secs(60),
                "every partition stored records",
                async || Ok(p.stored_offsets().await?.iter().all(|o| o.unwrap_or(0) > 0)),
            )
            .await?;
            anyhow::ensure!(feeding(p), "the traffic ended before the topic was deleted");
            // The producer is held (SIGSTOP) while the first log is finished and the topic
            // recreated: the deletion destroys only records that are stored. Telegram keeps what
            // the producer has not confirmed meanwhile.
            let producer = p.producers.lock().unwrap()[0].clone();
            producer.signal(Signal::SIGSTOP)?;
            let mut ends = Vec::new();
            within_on_tansu(
                p,
                &mut restarts,
                Duration::from_secs(60),
                "the consumers stored the first log",
                async || {
                    ends = p.quiet_watermarks().await?;
                    let stored = p.stored_offsets().await?;
                    Ok(ends
                        .iter()
                        .zip(&stored)
                        .all(|((_, high), at)| *at == Some(*high)))
                },
            )
            .await?;
            let first_log: i64 = ends.iter().map(|(low, high)| high - low).sum();
            // The consumers stop first: a topic deleted under a running consumer crashes
            // librdkafka on Tansu (DESIGN.md §8), so the recreated topic is met on takeover.
            let consumers = p.live_consumers().len();
            for _ in 0..consumers {
                p.remove_consumer(0).await?;
            }
            restarts += crate::restart_if_wedged(p).await?;
            restarts += p.recreate_topic(first_log as usize).await?;
            producer.signal(Signal::SIGCONT)?;
            let recreated_in_traffic = feeding(p);
            for _ in 0..consumers {
                p.add_consumer().await?;
            }
            // Every partition halts on takeover with its anomaly persisted, and nothing of the new
            // log is written while it is halted.
            within_on_tansu(
                p,
                &mut restarts,
                Duration::from_secs(60),
                "every partition halted",
                async || Ok(open_anomalies(p).await?.len() == partitions),
            )
            .await?;
            let stored_first = raw_rows(p).await?;
            within_on_tansu(
                p,
                &mut restarts,
                Duration::from_secs(30),
                "the new log grew",
                async || Ok(p.watermarks().await?.iter().all(|(_, high)| *high > 0)),
            )
            .await?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let during_halt = raw_rows(p).await?;
            anyhow::ensure!(
                during_halt == stored_first,
                "{} rows of the new log were written while every partition was halted",
                during_halt - stored_first
            );
            let kinds: std::collections::BTreeSet<String> = open_anomalies(p)
                .await?
                .into_iter()
                .map(|(_, k)| k)
                .collect();
            // The operator accepts the new log from its start.
            let replay = operate(p, &["replay", "--to-earliest", "--execute"]).await?;
            let resolved = replay.output.matches("resolved log anomaly").count();
            anyhow::ensure!(
                resolved == partitions,
                "the replay resolved {resolved} of {partitions} anomalies: {}",
                replay.output
            );
            anyhow::ensure!(
                open_anomalies(p).await?.is_empty(),
                "anomalies remain open after the replay"
            );
            anyhow::ensure!(
                recreated_in_traffic,
                "the topic was recreated after the traffic ended"
            );
            // Until everything is stored, a wedged Tansu is restarted, as a liveness probe would.
            while feeding(p) {
                restarts += crate::restart_if_wedged(p).await?;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            within_on_tansu(
                p,
                &mut restarts,
                settle_timeout,
                "the pipeline settled",
                async || Ok(p.settled().await.is_ok()),
            )
            .await?;
            let wedged = if restarts > 0 {
                format!("; {restarts} Tansu restarts after its storage panic")
            } else {
                String::new()
            };
            Ok(format!(
                "topic deleted and recreated during traffic after {first_log} records were \
                 stored: all {partitions} partitions halted ({}), nothing of the new log written \
                 while halted; replay --to-earliest resolved every anomaly{wedged}",
                kinds.into_iter().collect::<Vec<_>>().join(", ")
            ))
        },
    )
    .await;
    finished.assert_clean();
    let incarnations = finished.pipeline.topic_incarnations().await.unwrap();
    assert!(
        incarnations.iter().all(|&i| i == 1),
        "every partition resumed in topic incarnation 1: {incarnations:?}"
    );
    finished.cleanup().await;
}

// ---- a backlog over 48 partitions after a consumer outage --------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backlog_over_48_partitions_after_a_consumer_outage_drains_fairly() {
    const PARTITIONS: i32 = 48;
    /// Records per batch and the in-flight budget: small, so every partition's backlog is several
    /// batches and the budget, not the batch size, decides who writes next.
    const BATCH: i64 = 10;
    const BUDGET: usize = 64 * 1024;
    /// The most of the whole backlog that may be stored between a partition's owner taking it and
    /// that owner's first batch of it.
    const MAX_START_SHARE: f64 = 0.5;
    let mut scale = Scale::of(false);
    scale.partitions = PARTITIONS;
    // Many chats, so the keys spread over every partition; 6 s of traffic (10 s large), most of
    // it while no consumer runs. A backlog that takes several seconds to drain, so the group's
    // forming (about a second, during which the first member owns every partition) is a small
    // part of it; a partition's wait is counted from when its owner took it (see below).
    scale.groups = 40;
    (scale.updates, scale.rate) = if scale.large {
        (40_000, 4_000)
    } else {
        (12_000, 2_000)
    };
    let mut spec = Spec::new(mock_broker(), PARTITIONS);
    spec.consumer_env
        .push(("CONSUMER_BATCH_MAX_RECORDS", BATCH.to_string()));
    spec.consumer_env
        .push(("CONSUMER_MAX_INFLIGHT_BYTES", BUDGET.to_string()));
    // The feed waits after its first updates until the consumers are stopped: forming a group of
    // 48 partitions takes seconds on a loaded machine, and the backlog must come after it.
    spec.feed_hold_after = Some(400);
    let settle_timeout = scale.settle_timeout();
    let finished = run(
        "backlog over 48 partitions after a consumer outage (batches of 10, 64 KiB budget)",
        spec,
        scale,
        |_| None,
        async |p| {
            // The consumers run until both bots are known and every partition is owned, then are
            // stopped (SIGTERM) during traffic: the rest of the traffic piles up in Kafka.
            group_formed(p).await?;
            within(
                Duration::from_secs(60),
                "both bots' updates were stored",
                async || {
                    let bots: i64 =
                        sqlx::query_scalar("SELECT count(DISTINCT bot_id) FROM raw_updates")
                            .fetch_one(p.pool())
                            .await?;
                    Ok(bots == p.bots.len() as i64)
                },
            )
            .await?;
            anyhow::ensure!(
                p.feed_held.load(Ordering::SeqCst),
                "the feed is not held at its first updates"
            );
            let consumers = p.live_consumers().len();
            for _ in 0..consumers {
                p.remove_consumer(0).await?;
            }
            let stopped: Vec<i64> = p
                .stored_offsets()
                .await?
                .into_iter()
                .map(|o| o.unwrap_or(0))
                .collect();
            // Every batch's offset update and every change of owner from now on, with when it
            // happened.
            for statement in [
                "CREATE TABLE chaos_commit_log (partition integer, next_offset bigint, \
                 owner_epoch bigint, at timestamptz)",
                "CREATE FUNCTION chaos_log_commit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
                 INSERT INTO chaos_commit_log VALUES (NEW.partition, NEW.next_offset, \
                 NEW.owner_epoch, clock_timestamp()); RETURN NEW; END $$",
                "CREATE TRIGGER chaos_log_commit AFTER UPDATE ON consumer_offsets FOR EACH ROW \
                 WHEN (NEW.next_offset <> OLD.next_offset OR NEW.owner_epoch <> OLD.owner_epoch) \
                 EXECUTE FUNCTION chaos_log_commit()",
            ] {
                sqlx::query(statement).execute(p.pool()).await?;
            }
            p.release_feed();
            within(
                Duration::from_secs(120),
                "the producer delivered the traffic",
                async || Ok(!feeding(p) && p.pending() == 0),
            )
            .await?;
            let ends = p.quiet_watermarks().await?;
            let backlog: Vec<i64> = ends
                .iter()
                .zip(&stopped)
                .map(|((_, high), at)| high - at)
                .collect();
            let total: i64 = backlog.iter().sum();
            let loaded = backlog.iter().filter(|&&n| n > 0).count();
            anyhow::ensure!(
                loaded >= PARTITIONS as usize * 9 / 10,
                "only {loaded} of {PARTITIONS} partitions hold a backlog"
            );
            anyhow::ensure!(
                total >= 4 * BATCH * i64::from(PARTITIONS),
                "a backlog of {total} records is less than 4 batches per partition"
            );
            for _ in 0..consumers {
                p.add_consumer().await?;
            }
            within(settle_timeout, "the backlog drained", async || {
                let stored = p.stored_offsets().await?;
                Ok(ends
                    .iter()
                    .zip(&stored)
                    .all(|((_, high), at)| at.unwrap_or(0) == *high))
            })
            .await?;
            // Fair progress: no partition with a backlog waits for its first write until most of
            // the others' are stored. Each partition's start share is the part of the whole
            // backlog stored between its owner taking it and that owner's first commit; draining
            // partitions one after another (or one process's after the other's) puts the last
            // start near 100%. Counted from the owner's takeover, not from the restart: when the
            // two consumers do not join within the broker's initial rebalance delay (a loaded
            // machine), the group forms in steps and a partition can wait, unowned or owned by a
            // member that hands it over before writing, for the broker's rebalance (the mock
            // cluster: up to the session timeout less 1 s); that is the group protocol's cost,
            // reported below, not the budget's.
            let log: Vec<(i32, i64, i64)> = sqlx::query_as(
                "SELECT partition, next_offset, owner_epoch FROM chaos_commit_log ORDER BY at",
            )
            .fetch_all(p.pool())
            .await?;
            let mut stored = stopped.clone();
            // Records of the backlog stored so far.
            let mut done = 0;
            let mut epoch: Vec<Option<i64>> = vec![None; PARTITIONS as usize];
            let mut taken_at = vec![0.0; PARTITIONS as usize];
            let mut handed_over = 0;
            // Per partition: (share stored when the owner of its first batch took it, share
            // stored from then until that batch).
            let mut start_share: Vec<Option<(f64, f64)>> = vec![None; PARTITIONS as usize];
            for (partition, next_offset, owner_epoch) in log {
                let i = partition as usize;
                let share = done as f64 / total as f64;
                if epoch[i] != Some(owner_epoch) {
                    if epoch[i].is_some() && start_share[i].is_none() {
                        handed_over += 1;
                    }
                    epoch[i] = Some(owner_epoch);
                    taken_at[i] = share;
                }
                if next_offset > stored[i] && start_share[i].is_none() {
                    start_share[i] = Some((taken_at[i], share - taken_at[i]));
                }
                done += (next_offset - stored[i]).max(0);
                stored[i] = stored[i].max(next_offset);
            }
            let starts = || {
                (0..PARTITIONS as usize)
                    .filter(|&i| backlog[i] > 0)
                    .map(|i| (i, start_share[i].unwrap_or((0.0, 1.0))))
            };
            let (latest, (taken, share)) =
                starts().fold((0, (0.0, 0.0)), |a, b| if b.1.1 > a.1.1 { b } else { a });
            let last_taken = starts().map(|(_, (taken, _))| taken).fold(0.0, f64::max);
            anyhow::ensure!(
                share <= MAX_START_SHARE,
                "partition {latest} (backlog {}) had its first batch stored only after {:.0}% of \
                 the whole backlog was, counted from its owner taking it after {:.0}% (at most \
                 {:.0}% allowed; {handed_over} partitions changed owner before their first batch)",
                backlog[latest],
                share * 100.0,
                taken * 100.0,
                MAX_START_SHARE * 100.0
            );
            Ok(format!(
                "consumers stopped during traffic; {total} records piled up over {loaded} of \
                 {PARTITIONS} partitions ({} to {} each) before 2 consumers restarted; every \
                 partition's first batch was stored before {:.0}% of the backlog was after its \
                 owner took it (the latest: partition {latest}); the last owner took its \
                 partition after {:.0}% was stored; {handed_over} partitions changed owner before \
                 their first batch",
                backlog.iter().filter(|&&n| n > 0).min().unwrap_or(&0),
                backlog.iter().max().unwrap_or(&0),
                share * 100.0,
                last_taken * 100.0
            ))
        },
    )
    .await;
    finished.assert_clean();
    finished.cleanup().await;
}
