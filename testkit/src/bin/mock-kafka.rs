//! mock-kafka — librdkafka's mock cluster as a process, for tests whose clients live in several
//! processes and for manual runs.
//!
//! Usage: `mock-kafka [--brokers N]` (default 3). Prints one line `bootstrap=<servers>`, then reads
//! commands from stdin, one per line, answering each with `ok` or `err <reason>`:
//! `create-topic NAME PARTITIONS`, `down` (all brokers refuse connections), `up`,
//! `leader TOPIC PARTITION BROKER` (move a partition's leadership to broker BROKER, 1 to N).
//! Exits 0 when stdin closes; the cluster and its data go with it.

use std::io::{BufRead, Write};

use anyhow::{Context, bail};
use testkit::kafka::{DEFAULT_MOCK_BROKERS, MockClusterHost};

fn main() -> anyhow::Result<()> {
    let brokers = parse_brokers(std::env::args().skip(1))?;
    let cluster = MockClusterHost::start(brokers)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "bootstrap={}", cluster.bootstrap_servers())?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        let line = line.context("reading a command from stdin")?;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        match execute(&cluster, line) {
            Ok(()) => writeln!(out, "ok")?,
            // One line per answer: the client matches replies by line.
            Err(err) => writeln!(out, "err {}", format!("{err:#}").replace('\n', " "))?,
        }
        out.flush()?;
    }
    Ok(())
}

fn parse_brokers(mut args: impl Iterator<Item = String>) -> anyhow::Result<i32> {
    let mut brokers = DEFAULT_MOCK_BROKERS;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--brokers" => {
                brokers = args
                    .next()
                    .context("--brokers needs a number")?
                    .parse()
                    .context("--brokers needs a number")?;
                if brokers < 1 {
                    bail!("--brokers must be at least 1");
                }
            }
            other => bail!("unknown argument {other:?}; usage: mock-kafka [--brokers N]"),
        }
    }
    Ok(brokers)
}

fn execute(cluster: &MockClusterHost, line: &str) -> anyhow::Result<()> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["create-topic", name, partitions] => {
            let partitions: i32 = partitions.parse().context("PARTITIONS must be a number")?;
            cluster.create_topic(name, partitions)
        }
        ["down"] => cluster.set_available(false),
        ["up"] => cluster.set_available(true),
        ["leader", topic, partition, broker] => {
            let partition: i32 = partition.parse().context("PARTITION must be a number")?;
            let broker: i32 = broker.parse().context("BROKER must be a number")?;
            cluster.set_partition_leader(topic, partition, broker)
        }
        _ => bail!(
            "unknown command; expected `create-topic NAME PARTITIONS`, `down`, `up` or \
             `leader TOPIC PARTITION BROKER`"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> impl Iterator<Item = String> {
        list.iter()
            .map(|s| (*s).to_owned())
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn the_broker_count_defaults_and_can_be_set_but_not_to_zero() {
        assert_eq!(parse_brokers(args(&[])).ok(), Some(DEFAULT_MOCK_BROKERS));
        assert_eq!(parse_brokers(args(&["--brokers", "5"])).ok(), Some(5));
        assert!(parse_brokers(args(&["--brokers", "0"])).is_err());
        assert!(parse_brokers(args(&["--brokers"])).is_err());
        assert!(parse_brokers(args(&["--verbose"])).is_err());
    }

    #[test]
    fn commands_are_checked_before_they_reach_the_cluster() -> anyhow::Result<()> {
        let cluster = MockClusterHost::start(1)?;
        assert!(execute(&cluster, "create-topic t 2").is_ok());
        assert!(execute(&cluster, "create-topic t two").is_err());
        assert!(execute(&cluster, "create-topic t").is_err());
        assert!(execute(&cluster, "reboot").is_err());
        assert!(execute(&cluster, "down").is_ok());
        assert!(execute(&cluster, "up").is_ok());
        assert!(execute(&cluster, "leader t 1 1").is_ok());
        assert!(execute(&cluster, "leader t 2 1").is_err());
        assert!(execute(&cluster, "leader t 1 9").is_err());
        assert!(execute(&cluster, "leader t one 1").is_err());
        assert!(execute(&cluster, "leader t 1").is_err());
        Ok(())
    }
}
