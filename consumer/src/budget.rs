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
//! budget), fills up to that, and returns the reservation after writing that one batch.
//!
//! Reservations are granted first come, first served: a worker that cannot reserve takes a
//! ticket and waits its turn, and a worker that returned its reservation and wants another goes
//! behind every ticket already waiting. So during a catch-up, while one worker waits for room,
//! every other worker commits at most one batch (the one it holds, or the one its earlier ticket
//! is granted) — no partition with a backlog starves while others hold the budget.
//!
//! Guarantees: reservations never exceed the limit together; grants follow ticket order; a
//! worker without a reservation holds at most one record (taken to learn that it has work, or
//! left over from its last batch: a polled record cannot be returned to its queue), so the bytes
//! held stay under `limit` plus one record per worker; a reservation is returned after its
//! batch, when its worker's buffer empties or when the worker stops, and a ticket is withdrawn
//! with it; every change (a grant, a return) wakes the waiting workers, without lost wake-ups
//! ([`Reservation::changed`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// The shared limit, what all workers of a process have reserved together, and who waits.
#[derive(Debug)]
pub(crate) struct InflightBudget {
    limit: usize,
    state: Mutex<Grants>,
    /// Bumped, under the lock, by every grant and return: a waiter that saw an older value has
    /// something to try again.
    generation: AtomicU64,
    changed: Notify,
}

#[derive(Debug, Default)]
struct Grants {
    reserved: usize,
    /// Tickets of the workers waiting for a reservation, in arrival order.
    waiting: VecDeque<u64>,
    next_ticket: u64,
}

impl InflightBudget {
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            state: Mutex::new(Grants::default()),
            generation: AtomicU64::new(0),
            changed: Notify::new(),
        })
    }

    fn grants(&self) -> MutexGuard<'_, Grants> {
        // The state stays consistent across a panic elsewhere: every update is a few plain
        // assignments, so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The bytes reserved by all workers now.
    #[cfg(test)]
    fn reserved(&self) -> usize {
        self.grants().reserved
    }

    /// Marks a change (under the lock) and wakes every waiter after it is released.
    fn publish(&self, grants: MutexGuard<'_, Grants>) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        let reserved = grants.reserved;
        drop(grants);
        self.changed.notify_waiters();
        metrics::gauge!("tgingest_consumer_inflight_reserved_bytes").set(reserved as f64);
    }
}

/// One worker's reservation (and its ticket while it waits for one); returned when dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    budget: Arc<InflightBudget>,
    bytes: usize,
    ticket: Option<u64>,
    /// The budget's generation at this worker's last attempt.
    seen: u64,
}

impl Reservation {
    pub(crate) fn new(budget: Arc<InflightBudget>) -> Self {
        Self {
            budget,
            bytes: 0,
            ticket: None,
            seen: 0,
        }
    }

    /// The bytes this worker may hold (0: none reserved).
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Reserves room for a batch of `wanted` bytes (at most the whole budget, at least one
    /// byte), unless this worker holds a reservation already. It is granted when this worker's
    /// ticket is first in line (taken now if it has none) and the room is free. Returns whether
    /// it holds one.
    pub(crate) fn try_reserve(&mut self, wanted: usize) -> bool {
        if self.bytes > 0 {
            return true;
        }
        let budget = self.budget.clone();
        let mut grants = budget.grants();
        self.seen = budget.generation.load(Ordering::Acquire);
        let ticket = *self.ticket.get_or_insert_with(|| {
            let ticket = grants.next_ticket;
            grants.next_ticket += 1;
            grants.waiting.push_back(ticket);
            ticket
        });
        let bytes = wanted.clamp(1, budget.limit);
        if grants.waiting.front() != Some(&ticket) || grants.reserved + bytes > budget.limit {
            return false;
        }
        grants.waiting.pop_front();
        grants.reserved += bytes;
        self.ticket = None;
        self.bytes = bytes;
        // The next ticket in line may fit beside this grant.
        budget.publish(grants);
        true
    }

    /// Returns the reservation and withdraws a waiting ticket (after a batch, or with an empty
    /// buffer); a later [`Reservation::try_reserve`] queues behind everyone waiting now.
    pub(crate) fn release(&mut self) {
        let bytes = std::mem::take(&mut self.bytes);
        let ticket = self.ticket.take();
        if bytes == 0 && ticket.is_none() {
            return;
        }
        let mut grants = self.budget.grants();
        grants.reserved -= bytes;
        if let Some(ticket) = ticket {
            grants.waiting.retain(|t| *t != ticket);
        }
        self.budget.publish(grants);
    }

    /// Resolves once the budget changed (a grant or a return by any worker) since this worker's
    /// last [`Reservation::try_reserve`]: a change between that attempt and this wait is never
    /// missed.
    pub(crate) async fn changed(&self) {
        loop {
            let notified = self.budget.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.budget.generation.load(Ordering::Acquire) != self.seen {
                return;
            }
            notified.await;
        }
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

    /// Simulated partition workers, each with an endless backlog, doing what the worker does with
    /// its reservation: hold one record and reserve for a batch (waiting while that fails); with a
    /// reservation, write one batch, return the reservation, and at once — without yielding —
    /// take the next record and reserve again. Workers are scheduled in a changing order.
    /// Returns the most batches one worker committed while another waited for a reservation.
    fn most_commits_by_another_while_one_waits(workers: usize, batches_in_budget: usize) -> u64 {
        const BATCH: usize = 100;
        let budget = InflightBudget::new(batches_in_budget * BATCH);
        let mut reservations: Vec<Reservation> = (0..workers)
            .map(|_| Reservation::new(budget.clone()))
            .collect();
        let mut commits = vec![0u64; workers];
        // Everyone's commit count when a worker started waiting (None: not waiting).
        let mut waiting_since: Vec<Option<Vec<u64>>> = vec![None; workers];
        let mut worst = 0;
        let mut note = |since: &[u64], commits: &[u64], me: usize| {
            for (q, (now, then)) in commits.iter().zip(since).enumerate() {
                if q != me {
                    worst = worst.max(now - then);
                }
            }
        };
        for round in 0..(20 * workers) {
            for i in 0..workers {
                // A permutation that changes every round (7 is coprime with the worker counts).
                let p = (i * 7 + round) % workers;
                if reservations[p].bytes() == 0 {
                    if !reservations[p].try_reserve(BATCH) {
                        waiting_since[p].get_or_insert_with(|| commits.clone());
                        continue;
                    }
                    if let Some(since) = waiting_since[p].take() {
                        note(&since, &commits, p);
                    }
                }
                commits[p] += 1;
                reservations[p].release();
                if !reservations[p].try_reserve(BATCH) {
                    waiting_since[p] = Some(commits.clone());
                }
            }
        }
        for (p, since) in waiting_since.iter().enumerate() {
            if let Some(since) = since {
                note(since, &commits, p);
            }
        }
        worst
    }

    #[test]
    fn no_worker_with_a_backlog_waits_while_another_commits_more_than_one_batch() {
        for (workers, batches_in_budget) in [(48, 4), (48, 1), (6, 2), (3, 2)] {
            let worst = most_commits_by_another_while_one_waits(workers, batches_in_budget);
            assert!(
                worst <= 1,
                "{workers} workers, room for {batches_in_budget} batches: one worker committed \
                 {worst} batches while another waited"
            );
        }
    }

    #[tokio::test]
    async fn a_release_wakes_a_waiting_worker_even_one_that_released_before_it_waited() {
        let budget = InflightBudget::new(10);
        let mut held = Reservation::new(budget.clone());
        assert!(held.try_reserve(10));
        let mut waiter = Reservation::new(budget.clone());
        assert!(!waiter.try_reserve(10));
        let waiting = tokio::spawn(async move {
            waiter.changed().await;
            assert!(
                waiter.try_reserve(10),
                "first in line, and the room is free"
            );
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        held.release();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("the waiter was woken")
            .expect("the waiter did not panic");

        // A change between a failed attempt and the wait is not lost.
        let mut a = Reservation::new(budget.clone());
        let mut b = Reservation::new(budget.clone());
        assert!(a.try_reserve(10));
        assert!(!b.try_reserve(10));
        a.release();
        tokio::time::timeout(std::time::Duration::from_secs(5), b.changed())
            .await
            .expect("the earlier change is seen");
    }

    #[test]
    fn a_returned_reservation_queues_behind_the_workers_already_waiting() {
        let budget = InflightBudget::new(10);
        let mut a = Reservation::new(budget.clone());
        let mut b = Reservation::new(budget.clone());
        assert!(a.try_reserve(10));
        assert!(!b.try_reserve(10));
        a.release();
        assert!(!a.try_reserve(10), "b waited first");
        assert!(b.try_reserve(10));
        b.release();
        assert!(a.try_reserve(10));
    }
}
