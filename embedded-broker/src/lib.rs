//! An in-memory Kafka cluster for trials and tests: librdkafka's mock cluster, owned by a
//! dedicated thread.
//!
//! `rdkafka::mocking::MockCluster` is neither `Send` nor `Sync` (it wraps a raw pointer), so
//! [`MockClusterHost`] keeps the cluster on one thread and talks to it over a channel; the handle
//! can move between tasks. The cluster listens on real TCP ports on 127.0.0.1, so other processes
//! can use it too. It lives exactly as long as the handle: dropping the handle closes the channel
//! and the thread destroys the cluster, with every record in it. It keeps only about 5 MB per
//! partition (older records are deleted silently) and has no broker-side size limit: it is for
//! demos and tests, never for data that matters.

use std::sync::mpsc;
use std::thread::JoinHandle;

use anyhow::{Context, anyhow, bail};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::mocking::MockCluster;
use rdkafka::types::RDKafkaErrorCode;

/// Brokers in a mock cluster unless told otherwise: more than one, so partition leaders are
/// spread and clients fetch from several brokers as they would in production.
pub const DEFAULT_MOCK_BROKERS: i32 = 3;
/// librdkafka's mock API addresses every broker with id -1.
const ALL_BROKERS: i32 = -1;

enum MockCommand {
    CreateTopic {
        name: String,
        partitions: i32,
        reply: mpsc::Sender<KafkaResult<()>>,
    },
    SetAvailable {
        available: bool,
        reply: mpsc::Sender<KafkaResult<()>>,
    },
    SetLeader {
        topic: String,
        partition: i32,
        broker: i32,
        reply: mpsc::Sender<KafkaResult<()>>,
    },
}

/// A mock cluster living on its own thread; `Send + Sync`, destroyed on drop.
#[derive(Debug)]
pub struct MockClusterHost {
    bootstrap: String,
    commands: Option<mpsc::Sender<MockCommand>>,
    thread: Option<JoinHandle<()>>,
}

impl MockClusterHost {
    /// Starts a mock cluster with `brokers` brokers listening on 127.0.0.1.
    pub fn start(brokers: i32) -> anyhow::Result<Self> {
        let (commands, inbox) = mpsc::channel::<MockCommand>();
        let (ready, started) = mpsc::channel::<KafkaResult<String>>();
        let thread = std::thread::Builder::new()
            .name("mock-kafka".to_owned())
            .spawn(move || {
                let cluster = match MockCluster::new(brokers) {
                    Ok(cluster) => cluster,
                    Err(err) => {
                        let _ = ready.send(Err(err));
                        return;
                    }
                };
                let _ = ready.send(Ok(cluster.bootstrap_servers()));
                // Runs until every handle's sender is gone.
                for command in inbox {
                    match command {
                        MockCommand::CreateTopic {
                            name,
                            partitions,
                            reply,
                        } => {
                            let created = match cluster.create_topic(&name, partitions, 1) {
                                // Same contract as the admin path: the caller then checks the shape.
                                Err(KafkaError::MockCluster(
                                    RDKafkaErrorCode::TopicAlreadyExists,
                                )) => Ok(()),
                                other => other,
                            };
                            let _ = reply.send(created);
                        }
                        MockCommand::SetAvailable { available, reply } => {
                            let _ = reply.send(if available {
                                cluster.broker_up(ALL_BROKERS)
                            } else {
                                cluster.broker_down(ALL_BROKERS)
                            });
                        }
                        MockCommand::SetLeader {
                            topic,
                            partition,
                            broker,
                            reply,
                        } => {
                            let _ = reply.send(cluster.partition_leader(
                                &topic,
                                partition,
                                Some(broker),
                            ));
                        }
                    }
                }
            })
            .context("spawning the mock cluster thread")?;
        let bootstrap = started
            .recv()
            .map_err(|_| anyhow!("the mock cluster thread died while starting"))?
            .context("creating a librdkafka mock cluster")?;
        Ok(Self {
            bootstrap,
            commands: Some(commands),
            thread: Some(thread),
        })
    }

    /// The cluster's `bootstrap.servers` value.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// Creates a topic (replication factor 1); an existing topic is left as it is. The mock has no
    /// CreateTopics admin API.
    pub fn create_topic(&self, name: &str, partitions: i32) -> anyhow::Result<()> {
        if partitions < 1 {
            bail!("a topic needs at least one partition, not {partitions}");
        }
        self.call(|reply| MockCommand::CreateTopic {
            name: name.to_owned(),
            partitions,
            reply,
        })
        .with_context(|| format!("creating mock topic {name} with {partitions} partitions"))
    }

    /// Takes every broker down (connections closed and refused) or brings them all back up.
    pub fn set_available(&self, available: bool) -> anyhow::Result<()> {
        self.call(|reply| MockCommand::SetAvailable { available, reply })
            .with_context(|| format!("setting mock brokers available={available}"))
    }

    /// Moves the leadership of `topic`'s `partition` to broker `broker` (ids run from 1 to the
    /// broker count), as a controller does when a leader fails: the partition's leader epoch is
    /// bumped and its log stays as it is, so clients still talking to the old leader are told
    /// it is not the leader any more and must refresh their metadata.
    /// An unknown partition or broker is an error; an unknown topic is created by librdkafka's mock
    /// (with `partition + 1` partitions), so name an existing one.
    pub fn set_partition_leader(
        &self,
        topic: &str,
        partition: i32,
        broker: i32,
    ) -> anyhow::Result<()> {
        self.call(|reply| MockCommand::SetLeader {
            topic: topic.to_owned(),
            partition,
            broker,
            reply,
        })
        .with_context(|| format!("moving the leader of {topic} [{partition}] to broker {broker}"))
    }

    /// Sends a command and waits for its answer; mock operations complete in milliseconds, so
    /// blocking the caller briefly is harmless even on a runtime thread.
    fn call(
        &self,
        command: impl FnOnce(mpsc::Sender<KafkaResult<()>>) -> MockCommand,
    ) -> anyhow::Result<()> {
        let (reply, answer) = mpsc::channel();
        self.commands
            .as_ref()
            .context("mock cluster already stopped")?
            .send(command(reply))
            .map_err(|_| anyhow!("the mock cluster thread is gone"))?;
        answer
            .recv()
            .map_err(|_| anyhow!("the mock cluster thread is gone"))?
            .map_err(Into::into)
    }
}

impl Drop for MockClusterHost {
    fn drop(&mut self) {
        drop(self.commands.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
