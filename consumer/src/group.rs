//! Group membership: the consumer that joins the group, its rebalance handling, and the OS
//! thread that polls its main queue for as long as it lives.
//!
//! Guarantees (DESIGN.md §5.1, §5.7, §7):
//! - on Assign, each partition is taken over with the atomic ownership statement *before* it is
//!   assigned, and fetching starts at the stored `next_offset` (or, for a partition with no row,
//!   the start policy's watermark if the group started with it, else the log start) — never at
//!   the Kafka mirror; its queue is split off before the
//!   assign (the split survives assigns: librdkafka marks it application-forwarded), so its
//!   records reach only its worker;
//! - on Revoke (and on close), the partitions' workers are cancelled and awaited together (bounded
//!   by `revoke_timeout` in all; a late writer is fenced by the database anyway) before the
//!   unassign;
//! - the main queue is polled on a dedicated thread, never inside a tokio task, so callbacks may
//!   block on the runtime (`Handle::block_on`); stray messages on it are dropped and counted;
//! - the consumer is dropped on that thread after every worker has finished, so librdkafka's
//!   final close (which runs callbacks) never runs on a runtime thread;
//! - the per-partition gauges (`crate::stats`) are fed by each assigned partition's handle
//!   (records fetched, the published position, commits) and set on every statistics callback
//!   for the partitions this process owns only: a partition is released from them when its
//!   worker is stopped (revoke, rebalance error, close), so its series stop being set.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::client::ClientContext;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::budget::InflightBudget;
use crate::config::{ConsumerConfig, StartPolicy};
use crate::offsets::{OffsetStore, Ownership};
use crate::readiness::{CHECK_KAFKA, Readiness};
use crate::record::ConsumedRecord;
use crate::stats::{ConsumerStats, PartitionProgress};
use crate::worker::{
    PartitionLog, PartitionWorker, WorkerDeps, WorkerExit, WorkerRequest, WorkerSettings,
};
use crate::writer::BatchWriter;

struct WorkerHandle {
    cancel: CancellationToken,
    join: JoinHandle<WorkerExit>,
}

/// State shared by the rebalance callback, the polling thread and the workers.
pub(crate) struct Shared {
    pub handle: Handle,
    pub config: ConsumerConfig,
    pub topic: Arc<str>,
    pub store: OffsetStore,
    pub stats: Arc<ConsumerStats>,
    pub readiness: Arc<dyn Readiness>,
    pub shutdown: CancellationToken,
    pub commands: Sender<WorkerRequest>,
    pub positions: Arc<Mutex<HashMap<i32, i64>>>,
    /// What every worker of this process is built with.
    worker_deps: WorkerDeps,
    consumer: OnceLock<Weak<BaseConsumer<SinkContext>>>,
    workers: Mutex<HashMap<i32, WorkerHandle>>,
}

/// The consumer's librdkafka context: rebalances, statistics, errors.
pub struct SinkContext {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SinkContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkContext")
            .field("topic", &self.shared.topic)
            .finish_non_exhaustive()
    }
}

impl ClientContext for SinkContext {
    fn stats(&self, statistics: Statistics) {
        // Readiness follows the brokers: ready while at least one real broker connection is up.
        let brokers_up = statistics
            .brokers
            .values()
            .any(|b| b.nodeid >= 0 && b.state == "UP");
        if brokers_up {
            self.shared.readiness.ready(CHECK_KAFKA, "");
        } else {
            self.shared
                .readiness
                .not_ready(CHECK_KAFKA, "no broker connection is up");
        }
        // Every owned partition's gauges are set on each statistics interval, also when the
        // statistics lack the topic (its last known log end is kept): a partition's series
        // stops being set only when the partition is released (stats.rs, issue #17).
        let topic = statistics.topics.get(&*self.shared.topic);
        self.shared.stats.refresh_partitions(|partition| {
            topic
                .and_then(|t| t.partitions.get(&partition))
                .map(|p| p.hi_offset)
                .filter(|hi| *hi >= 0)
        });
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(
            error.rdkafka_error_code(),
            Some(rdkafka::types::RDKafkaErrorCode::AllBrokersDown)
        ) {
            self.shared
                .readiness
                .not_ready(CHECK_KAFKA, "all brokers are down");
        }
        tracing::warn!("librdkafka: {error}: {reason}");
    }
}

impl ConsumerContext for SinkContext {
    fn rebalance(
        &self,
        base_consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.assign(base_consumer, tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.revoke(base_consumer, tpl),
            other => {
                tracing::error!(?other, "rebalance error: releasing every partition");
                let all: Vec<i32> = self.worker_partitions();
                self.stop_workers(&all);
                if let Err(e) = base_consumer.unassign() {
                    tracing::warn!("unassign after a rebalance error failed: {e}");
                }
            }
        }
    }
}

impl SinkContext {
    fn partitions_of(&self, tpl: &TopicPartitionList) -> Vec<i32> {
        tpl.elements_for_topic(&self.shared.topic)
            .iter()
            .map(|e| e.partition())
            .collect()
    }

    fn worker_partitions(&self) -> Vec<i32> {
        self.shared
            .workers
            .lock()
            .map(|w| w.keys().copied().collect())
            .unwrap_or_default()
    }

    fn assign(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let shared = &self.shared;
        let partitions = self.partitions_of(tpl);
        shared.stats.rebalance("assign", partitions.len());
        tracing::info!(?partitions, "partitions assigned");
        let arc = shared.consumer.get().and_then(Weak::upgrade);
        let mut starting = Vec::new();
        for partition in partitions {
            let Some(owner) = self.take_ownership(consumer, partition) else {
                // Shutting down: assign without a worker; its records are dropped as strays.
                continue;
            };
            if let Err(e) = tpl.set_partition_offset(
                &shared.topic,
                partition,
                Offset::Offset(owner.next_offset),
            ) {
                tracing::error!(partition, "cannot set the start offset: {e}");
                continue;
            }
            let Some(queue) = arc
                .as_ref()
                .and_then(|c| c.split_partition_queue(&shared.topic, partition))
            else {
                tracing::error!(partition, "cannot split the partition queue");
                continue;
            };
            starting.push((owner, queue));
        }
        let assigned = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer.incremental_assign(tpl),
            _ => consumer.assign(tpl),
        };
        if let Err(e) = assigned {
            tracing::error!("assign failed: {e}");
        }
        let Some(arc) = arc else { return };
        for (owner, mut queue) in starting {
            let progress = shared.stats.partition_owned(owner.partition);
            let notify = Arc::new(Notify::new());
            let wake = notify.clone();
            queue.set_nonempty_callback(move || wake.notify_one());
            let cancel = shared.shutdown.child_token();
            let log = AssignedPartition {
                topic: shared.topic.clone(),
                partition: owner.partition,
                queue,
                consumer: arc.clone(),
                commands: shared.commands.clone(),
                positions: shared.positions.clone(),
                progress,
            };
            let worker =
                PartitionWorker::new(&shared.worker_deps, owner, log, notify, cancel.clone());
            let join = shared.handle.spawn(worker.run());
            if let Ok(mut workers) = shared.workers.lock()
                && let Some(old) = workers.insert(owner.partition, WorkerHandle { cancel, join })
            {
                // Cannot normally happen (revoke precedes re-assign); the old worker is fenced.
                old.cancel.cancel();
            }
        }
        shared.readiness.ready(CHECK_KAFKA, "");
    }

    /// The ownership statement, retried until it succeeds or the consumer shuts down.
    fn take_ownership(&self, consumer: &BaseConsumer<Self>, partition: i32) -> Option<Ownership> {
        let shared = &self.shared;
        let mut attempt = 0;
        loop {
            if shared.shutdown.is_cancelled() {
                return None;
            }
            let result = match shared
                .handle
                .block_on(shared.store.take_ownership(partition))
            {
                Ok(Some(owner)) => Ok(owner),
                Ok(None) => match self.initial_offset(consumer, partition) {
                    Ok(initial) => shared
                        .handle
                        .block_on(shared.store.take_ownership_from(partition, initial))
                        .map_err(anyhow::Error::from),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e.into()),
            };
            match result {
                Ok(owner) => {
                    tracing::info!(
                        partition,
                        next_offset = owner.next_offset,
                        epoch = owner.owner_epoch,
                        "took ownership"
                    );
                    return Some(owner);
                }
                Err(e) => {
                    tracing::warn!(
                        partition,
                        attempt,
                        "taking ownership failed, retrying: {e:#}"
                    );
                    std::thread::sleep(shared.config.retry.delay(attempt));
                    attempt += 1;
                }
            }
        }
    }

    /// Where a partition without a stored offset starts: the watermark the policy names for a
    /// partition the group started with, the log start for one added later (its records may
    /// predate the group noticing it; DESIGN.md §5.10).
    fn initial_offset(&self, consumer: &BaseConsumer<Self>, partition: i32) -> anyhow::Result<i64> {
        let shared = &self.shared;
        let timeout = Duration::from_secs(10);
        let (low, high) = consumer
            .fetch_watermarks(&shared.topic, partition, timeout)
            .with_context(|| format!("fetching the watermarks of partition {partition}"))?;
        let metadata = consumer
            .fetch_metadata(Some(&shared.topic), timeout)
            .with_context(|| format!("fetching the metadata of topic {}", shared.topic))?;
        let topic_partitions = metadata
            .topics()
            .iter()
            .find(|t| *t.name() == *shared.topic)
            .map_or(0, |t| t.partitions().len());
        let topic_partitions = i32::try_from(topic_partitions).unwrap_or(i32::MAX);
        let started_with = shared
            .handle
            .block_on(shared.store.start_partitions(topic_partitions))
            .context("reading the partitions the group started with")?;
        let predates_group = started_with.is_some_and(|count| partition < count);
        Ok(match shared.config.start_policy {
            StartPolicy::Latest if predates_group => high,
            StartPolicy::Latest | StartPolicy::Earliest => low,
        })
    }

    fn revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let partitions = self.partitions_of(tpl);
        self.shared.stats.rebalance("revoke", partitions.len());
        tracing::info!(
            ?partitions,
            lost = consumer.assignment_lost(),
            "partitions revoked"
        );
        self.stop_workers(&partitions);
        let result = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer.incremental_unassign(tpl),
            _ => consumer.unassign(),
        };
        if let Err(e) = result {
            tracing::warn!("unassign failed: {e}");
        }
    }

    /// Cancels the partitions' workers and waits (bounded) until each has finished its write.
    fn stop_workers(&self, partitions: &[i32]) {
        let shared = &self.shared;
        let handles: Vec<(i32, WorkerHandle)> = match shared.workers.lock() {
            Ok(mut workers) => partitions
                .iter()
                .filter_map(|p| workers.remove(p).map(|h| (*p, h)))
                .collect(),
            Err(_) => Vec::new(),
        };
        for (_, handle) in &handles {
            handle.cancel.cancel();
        }
        let timeout = shared.config.revoke_timeout;
        // All at once: one stuck worker must not hold up the others, the rebalance or shutdown
        // for more than `revoke_timeout` in all.
        let stopped = handles.into_iter().map(|(partition, handle)| async move {
            match tokio::time::timeout(timeout, handle.join).await {
                Ok(Ok(exit)) => tracing::debug!(partition, ?exit, "worker stopped"),
                Ok(Err(e)) => tracing::error!(partition, "worker task failed: {e}"),
                Err(_) => tracing::warn!(
                    partition,
                    "worker still writing after {timeout:?}; releasing the partition (the database fences it)"
                ),
            }
        });
        shared.handle.block_on(futures::future::join_all(stopped));
        if let Ok(mut positions) = shared.positions.lock() {
            for p in partitions {
                positions.remove(p);
            }
        }
        for p in partitions {
            shared.stats.partition_released(*p);
        }
    }
}

/// One assigned partition, as its worker sees it ([`PartitionLog`]): its split queue and the
/// group's consumer.
struct AssignedPartition {
    topic: Arc<str>,
    partition: i32,
    queue: PartitionQueue<SinkContext>,
    consumer: Arc<BaseConsumer<SinkContext>>,
    commands: Sender<WorkerRequest>,
    positions: Arc<Mutex<HashMap<i32, i64>>>,
    /// What the partition's gauges are computed from (records fetched, position, commits).
    progress: Arc<PartitionProgress>,
}

impl AssignedPartition {
    fn this_partition(&self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.topic, self.partition);
        tpl
    }
}

impl PartitionLog for AssignedPartition {
    fn poll(&self) -> Option<KafkaResult<ConsumedRecord>> {
        let polled = self
            .queue
            .poll(Duration::ZERO)
            .map(|polled| polled.map(|message| ConsumedRecord::from_message(&message)));
        if let Some(Ok(record)) = &polled {
            self.progress.fetched(record.offset, record.timestamp_ms);
        }
        polled
    }

    fn seek(&self, offset: i64) -> KafkaResult<()> {
        // Timeout zero makes the seek asynchronous: nothing blocks the runtime thread.
        self.consumer.seek(
            &self.topic,
            self.partition,
            Offset::Offset(offset),
            Duration::ZERO,
        )
    }

    fn pause(&self) -> KafkaResult<()> {
        self.consumer.pause(&self.this_partition())
    }

    fn resume(&self) -> KafkaResult<()> {
        self.consumer.resume(&self.this_partition())
    }

    fn commit(&self, next_offset: i64) -> KafkaResult<()> {
        let mut tpl = TopicPartitionList::new();
        // Called after each batch COMMIT only (the advisory mirror of it).
        self.progress.committed();
        tpl.add_partition_offset(&self.topic, self.partition, Offset::Offset(next_offset))?;
        self.consumer.commit(&tpl, CommitMode::Async)
    }

    fn set_position(&self, next_offset: i64) {
        self.progress.position(next_offset);
        if let Ok(mut positions) = self.positions.lock() {
            positions.insert(self.partition, next_offset);
        }
    }

    fn request(&self, request: WorkerRequest) {
        // The polling thread is gone only when the consumer is closing: nothing to restart.
        let _ = self.commands.send(request);
    }

    fn watermarks(&self, timeout: Duration) -> KafkaResult<(i64, i64)> {
        self.consumer
            .fetch_watermarks(&self.topic, self.partition, timeout)
    }
}

/// Creates the group consumer with its context.
pub(crate) fn create_consumer(
    shared: Arc<Shared>,
) -> anyhow::Result<Arc<BaseConsumer<SinkContext>>> {
    let client_config = shared.config.kafka_client_config();
    let consumer: BaseConsumer<SinkContext> = client_config
        .create_with_context(SinkContext {
            shared: shared.clone(),
        })
        .context("creating the Kafka consumer")?;
    let consumer = Arc::new(consumer);
    let _ = shared.consumer.set(Arc::downgrade(&consumer));
    Ok(consumer)
}

impl Shared {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        handle: Handle,
        config: ConsumerConfig,
        store: OffsetStore,
        writer: BatchWriter,
        stats: Arc<ConsumerStats>,
        readiness: Arc<dyn Readiness>,
        shutdown: CancellationToken,
        commands: Sender<WorkerRequest>,
    ) -> Self {
        let topic: Arc<str> = config.topic.as_str().into();
        let worker_deps = WorkerDeps {
            topic: topic.clone(),
            writer,
            store: store.clone(),
            settings: WorkerSettings {
                batch_max_records: config.batch_max_records,
                batch_max_bytes: config.batch_max_bytes,
                linger: config.linger,
                idle_reread_interval: config.idle_reread_interval,
                retry: config.retry,
                session_timeout: config.session_timeout,
            },
            stats: stats.clone(),
            readiness: readiness.clone(),
            budget: InflightBudget::new(config.max_inflight_bytes),
        };
        Self {
            handle,
            topic,
            config,
            store,
            stats,
            readiness,
            shutdown,
            commands,
            positions: Arc::new(Mutex::new(HashMap::new())),
            worker_deps,
            consumer: OnceLock::new(),
            workers: Mutex::new(HashMap::new()),
        }
    }
}

/// The polling thread's body: subscribe, poll until shutdown, then stop the workers, leave the
/// group and drop the consumer here.
pub(crate) fn poll_loop(
    consumer: Arc<BaseConsumer<SinkContext>>,
    commands: Receiver<WorkerRequest>,
) -> anyhow::Result<()> {
    let shared = consumer.context().shared.clone();
    consumer
        .subscribe(&[&shared.topic])
        .with_context(|| format!("subscribing to topic {}", shared.topic))?;
    let mut last_poll_error: Option<String> = None;
    while !shared.shutdown.is_cancelled() {
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(message)) => {
                shared.stats.stray_message();
                tracing::debug!(
                    partition = rdkafka::Message::partition(&message),
                    offset = rdkafka::Message::offset(&message),
                    "dropping a record that reached the main queue"
                );
            }
            Some(Err(e)) => {
                let text = e.to_string();
                if last_poll_error.as_deref() != Some(text.as_str()) {
                    tracing::warn!("consumer poll: {text}");
                    last_poll_error = Some(text);
                }
            }
        }
        while let Ok(command) = commands.try_recv() {
            restart_fetch(&consumer, &shared, command);
        }
    }

    tracing::info!("shutting down: finishing in-flight batches");
    let context = consumer.context();
    context.stop_workers(&context.worker_partitions());
    // Leaves the group; the final revoke runs in this thread's polls.
    if let Err(e) = consumer.close_queue() {
        tracing::warn!("closing the consumer queue: {e}");
    } else {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !consumer.closed() && std::time::Instant::now() < deadline {
            consumer.poll(Duration::from_millis(100));
        }
    }
    context.stop_workers(&context.worker_partitions());
    drop(consumer);
    tracing::info!("consumer closed");
    Ok(())
}

/// Restarts fetching a partition librdkafka stopped (offset out of range), at `offset`.
fn restart_fetch(consumer: &BaseConsumer<SinkContext>, shared: &Shared, request: WorkerRequest) {
    let WorkerRequest::RestartFetch { partition, offset } = request;
    let owned = shared
        .workers
        .lock()
        .map(|w| w.contains_key(&partition))
        .unwrap_or(false);
    if !owned {
        return;
    }
    let result = match consumer.rebalance_protocol() {
        RebalanceProtocol::Cooperative => {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&shared.topic, partition);
            consumer.incremental_unassign(&tpl).and_then(|()| {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition_offset(&shared.topic, partition, Offset::Offset(offset))?;
                consumer.incremental_assign(&tpl)
            })
        }
        _ => {
            // Eager: re-assign everything, each partition at its worker's position.
            let positions = shared
                .positions
                .lock()
                .map(|p| p.clone())
                .unwrap_or_default();
            consumer.assignment().and_then(|current| {
                let mut tpl = TopicPartitionList::new();
                for element in current.elements_for_topic(&shared.topic) {
                    let p = element.partition();
                    let at = if p == partition {
                        Offset::Offset(offset)
                    } else {
                        positions
                            .get(&p)
                            .map_or(Offset::Invalid, |o| Offset::Offset(*o))
                    };
                    tpl.add_partition_offset(&shared.topic, p, at)?;
                }
                consumer.assign(&tpl)
            })
        }
    };
    match result {
        Ok(()) => tracing::info!(partition, offset, "fetch restarted"),
        Err(e) => tracing::warn!(partition, offset, "fetch restart failed: {e}"),
    }
}
