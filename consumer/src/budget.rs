//! The process-wide budget of record bytes that partition workers hold outside librdkafka:
//! buffered for the next batch, normalised, or in a batch being written.
//!
//! Without it, memory grows with the number of assigned partitions: every worker holds a full
//! batch while PostgreSQL is slow, and a decoded, normalised record costs several times its
//! bytes. With it, a process holds at most `limit` record bytes plus one record per worker
//! (a worker may take one record past the limit, as it cannot return a polled record to its
//! queue); records beyond that stay in librdkafka's per-partition queue, whose fetching stops
//! at `queued.max.messages.kbytes`.
//!
//! Guarantees: a worker takes records from its queue only while the budget has room; a worker
//! that holds records when the budget runs out writes them at once instead of lingering, so the
//! budget always drains; every release wakes the workers waiting for room.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// The shared limit and what all workers of a process hold together.
#[derive(Debug)]
pub(crate) struct InflightBudget {
    limit: usize,
    used: AtomicUsize,
    released: Notify,
}

impl InflightBudget {
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicUsize::new(0),
            released: Notify::new(),
        })
    }

    /// Whether a worker may take another record from its queue.
    pub(crate) fn has_room(&self) -> bool {
        self.used.load(Ordering::Acquire) < self.limit
    }

    /// The record bytes all workers hold now.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// Resolves at the next release of bytes by any worker.
    pub(crate) async fn released(&self) {
        self.released.notified().await;
    }

    fn take(&self, bytes: usize) {
        self.used.fetch_add(bytes, Ordering::AcqRel);
    }

    fn give(&self, bytes: usize) {
        if bytes > 0 {
            self.used.fetch_sub(bytes, Ordering::AcqRel);
            metrics::gauge!("tgingest_consumer_inflight_bytes").set(self.used() as f64);
            self.released.notify_waiters();
        }
    }
}

/// One worker's share of the budget; what it still holds is given back when it is dropped.
#[derive(Debug)]
pub(crate) struct Held {
    budget: Arc<InflightBudget>,
    bytes: usize,
}

impl Held {
    pub(crate) fn new(budget: Arc<InflightBudget>) -> Self {
        Self { budget, bytes: 0 }
    }

    pub(crate) fn budget(&self) -> &InflightBudget {
        &self.budget
    }

    /// Counts a record of `bytes` taken from the queue.
    pub(crate) fn add(&mut self, bytes: usize) {
        self.bytes += bytes;
        self.budget.take(bytes);
    }

    /// The worker now holds only `bytes` (its buffer); gives back the rest (written or dropped
    /// records).
    pub(crate) fn settle(&mut self, bytes: usize) {
        if bytes < self.bytes {
            self.budget.give(self.bytes - bytes);
            self.bytes = bytes;
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.give(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_share_one_limit_and_give_back_on_settle_and_drop() {
        let budget = InflightBudget::new(100);
        let mut a = Held::new(budget.clone());
        let mut b = Held::new(budget.clone());
        a.add(60);
        assert!(budget.has_room());
        b.add(50); // one record past the limit is allowed
        assert!(!budget.has_room());
        assert_eq!(budget.used(), 110);
        a.settle(10);
        assert_eq!(budget.used(), 60);
        assert!(budget.has_room());
        a.settle(20); // settling upwards gives nothing back and takes nothing
        assert_eq!(budget.used(), 60);
        drop(b);
        assert_eq!(budget.used(), 10);
        drop(a);
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn a_release_wakes_a_waiting_worker() {
        let budget = InflightBudget::new(10);
        let mut held = Held::new(budget.clone());
        held.add(20);
        let waiter = tokio::spawn({
            let budget = budget.clone();
            async move { budget.released().await }
        });
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        held.settle(0);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("the waiter was woken")
            .expect("the waiter did not panic");
    }
}
