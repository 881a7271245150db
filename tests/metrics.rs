//! A `tgingest consumer` process's `/metrics` as Prometheus scrapes it (issue #17): the
//! per-partition series exist for the partitions the process owns and disappear from it once a
//! rebalance gives them to another member, and a clean shutdown logs no error.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use testkit::process::{ChildProcess, free_port};
use testkit::wait_until;

mod common;
use common::*;

/// The partitions of the `tgingest_partition_lag` series in a rendering of `/metrics`.
fn lag_series(text: &str) -> BTreeSet<i32> {
    text.lines()
        .filter_map(|l| l.strip_prefix("tgingest_partition_lag{partition=\""))
        .filter_map(|l| l.split('"').next()?.parse().ok())
        .collect()
}

async fn scrape(url: &str) -> String {
    match reqwest::get(url).await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_a_consumer_process_drops_the_series_of_partitions_revoked_from_it() {
    let (db, broker, topic, group) = setup(4).await;
    let port = free_port().expect("a free port");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tgingest"));
    cmd.arg("consumer")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", db.url())
        .env("KAFKA_BROKERS", broker.bootstrap_servers())
        .env("KAFKA_TOPIC", &topic)
        .env("KAFKA_GROUP_ID", &group)
        .env("KAFKA_SESSION_TIMEOUT", "6s")
        .env("CONSUMER_STATS_INTERVAL", "300ms")
        .env("ADMIN_LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "info");
    for (var, _) in testkit::kafka::SECURITY_ENV {
        if let Some(value) = std::env::var_os(var) {
            cmd.env(var, value);
        }
    }
    let process = ChildProcess::spawn(cmd, "consumer", Duration::from_secs(180)).expect("spawn");
    let url = format!("http://127.0.0.1:{port}/metrics");
    let all: BTreeSet<i32> = (0..4).collect();
    wait_until(
        Duration::from_secs(60),
        "the process shows the lag of every partition",
        || async { lag_series(&scrape(&url).await) == all },
    )
    .await;

    // A second member joins: the process gives up some partitions, and their series go.
    let other = start_consumer(config(&broker, &group, &topic), &db).await;
    wait_until(
        Duration::from_secs(60),
        "the process shows exactly the partitions it still owns",
        || async {
            let taken: BTreeSet<i32> = other.stats.owned_partitions().into_iter().collect();
            let shown = lag_series(&scrape(&url).await);
            !taken.is_empty() && shown.is_disjoint(&taken) && shown.union(&taken).eq(all.iter())
        },
    )
    .await;
    let text = scrape(&url).await;
    for taken in other.stats.owned_partitions() {
        assert!(
            !text.contains(&format!("{{partition=\"{taken}\"}}")),
            "partition {taken} is owned by the other member, yet its series is still here:\n{text}"
        );
    }

    // The other member leaves: the process owns every partition again, and shows them.
    other.stop().await;
    wait_until(
        Duration::from_secs(60),
        "the process shows every partition again",
        || async { lag_series(&scrape(&url).await) == all },
    )
    .await;

    process
        .signal(nix::sys::signal::Signal::SIGTERM)
        .expect("SIGTERM");
    let status = process
        .wait(Duration::from_secs(60))
        .await
        .expect("the consumer exits");
    let output = process.output_text();
    assert!(status.success(), "{output}");
    let errors: Vec<&str> = output.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert!(
        errors.is_empty(),
        "a clean shutdown logged errors:\n{}",
        errors.join("\n")
    );
}
