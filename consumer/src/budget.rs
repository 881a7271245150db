//! The process-wide budget of record bytes that partition workers hold outside librdkafka:
//! buffered for the next batch, normalised, or in a batch being written.
//!
//! Without it, memory grows with the number of assigned partitions: every worker holds a full
//! batch while PostgreSQL is slow, and a decoded, normalised record costs several times its
//! bytes. With it, records beyond the budget stay in librdkafka's per-partition queues, whose
//! fetching stops at `queued.max.messages.kbytes`.
//!
//! The budget is handed out in batch-sized [`Reservation`]s, not record by record: shared
//! record by record among many partitions, it would split into many small batches, each paying
//! a transaction's fixed cost (measured: a third less throughput at 64 partitions). A worker
//! reserves room for one batch (its batch limits at its mean record size, at most the whole
//! budget) and fills up to that; a worker that cannot reserve waits for a release.
//!
//! Guarantees: reservations never exceed the limit together; a worker without a reservation
//! holds at most one record (taken to learn that it has work: a polled record cannot be
//! returned to its queue), so the bytes held stay under `limit` plus one record per worker; a
//! reservation is returned when its worker's buffer empties or the worker stops, and every
//! return wakes the workers waiting for room.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// The shared limit and what all workers of a process have reserved together.
#[derive(Debug)]
pub(crate) struct InflightBudget {
    limit: usize,
    reserved: AtomicUsize,
    released: Notify,
}

impl InflightBudget {
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            reserved: AtomicUsize::new(0),
            released: Notify::new(),
        })
    }

    /// The bytes reserved by all workers now.
    pub(crate) fn reserved(&self) -> usize {
        self.reserved.load(Ordering::Acquire)
    }

    /// Resolves at the next return of a reservation by any worker.
    pub(crate) async fn released(&self) {
        self.released.notified().await;
    }

    fn try_take(&self, bytes: usize) -> bool {
        let taken = self
            .reserved
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |reserved| {
                reserved
                    .checked_add(bytes)
                    .filter(|&total| total <= self.limit)
            })
            .is_ok();
        if taken {
            self.publish();
        }
        taken
    }

    fn give(&self, bytes: usize) {
        if bytes > 0 {
            self.reserved.fetch_sub(bytes, Ordering::AcqRel);
            self.publish();
            self.released.notify_waiters();
        }
    }

    fn publish(&self) {
        metrics::gauge!("tgingest_consumer_inflight_reserved_bytes").set(self.reserved() as f64);
    }
}

/// One worker's reservation; returned when dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    budget: Arc<InflightBudget>,
    bytes: usize,
}

impl Reservation {
    pub(crate) fn new(budget: Arc<InflightBudget>) -> Self {
        Self { budget, bytes: 0 }
    }

    pub(crate) fn budget(&self) -> &InflightBudget {
        &self.budget
    }

    /// The bytes this worker may hold (0: none reserved).
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Reserves room for a batch of `wanted` bytes (at most the whole budget, at least one
    /// byte), unless this worker holds a reservation already. Returns whether it holds one.
    pub(crate) fn try_reserve(&mut self, wanted: usize) -> bool {
        if self.bytes == 0 {
            let bytes = wanted.clamp(1, self.budget.limit);
            if self.budget.try_take(bytes) {
                self.bytes = bytes;
            }
        }
        self.bytes > 0
    }

    /// Returns the reservation (the worker's buffer is empty).
    pub(crate) fn release(&mut self) {
        self.budget.give(std::mem::take(&mut self.bytes));
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_never_exceed_the_limit_together() {
        let budget = InflightBudget::new(100);
        let mut a = Reservation::new(budget.clone());
        let mut b = Reservation::new(budget.clone());
        let mut c = Reservation::new(budget.clone());
        assert!(a.try_reserve(60));
        assert!(!b.try_reserve(60), "60 + 60 is past the limit");
        assert!(b.try_reserve(40));
        assert_eq!(budget.reserved(), 100);
        assert!(
            a.try_reserve(1_000),
            "a holder keeps its reservation unchanged"
        );
        assert_eq!(a.bytes(), 60);
        assert!(!c.try_reserve(1));
        a.release();
        assert_eq!(budget.reserved(), 40);
        assert!(
            !c.try_reserve(1_000),
            "the whole budget does not fit beside b"
        );
        b.release();
        assert!(
            c.try_reserve(1_000),
            "a wish beyond the budget gets the whole budget"
        );
        assert_eq!(c.bytes(), 100);
        assert_eq!(budget.reserved(), 100);
    }

    #[test]
    fn a_dropped_reservation_is_returned() {
        let budget = InflightBudget::new(10);
        let mut a = Reservation::new(budget.clone());
        assert!(a.try_reserve(0), "an empty wish still reserves one byte");
        assert_eq!(budget.reserved(), 1);
        drop(a);
        assert_eq!(budget.reserved(), 0);
    }

    #[tokio::test]
    async fn a_release_wakes_a_waiting_worker() {
        let budget = InflightBudget::new(10);
        let mut held = Reservation::new(budget.clone());
        assert!(held.try_reserve(10));
        let waiter = tokio::spawn({
            let budget = budget.clone();
            async move { budget.released().await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        held.release();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("the waiter was woken")
            .expect("the waiter did not panic");
    }
}
