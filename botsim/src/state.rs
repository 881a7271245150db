//! One simulated bot: its pending-update queue and everything Telegram remembers about it.
//!
//! The queue mirrors Telegram's (tdlib `TQueue`): updates are kept in push order and served from
//! the head; a positive `offset` forgets every update whose id is below it, but only when the offset
//! is plausible for this queue (not more than 10 past the last pushed id, not 2 000 000 below it).
//! An implausible offset is ignored and the queue is served from its head, which is why a client
//! holding an old, high offset still receives updates after ids restart lower. A negative offset
//! keeps only the last `-offset` updates. Bytes without an id are confirmed with the update pushed
//! after them (they count as "previous id + 1").
//!
//! All state is behind one `std::sync::Mutex` per bot, held only for short, non-async sections.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

use crate::BotInfo;
use crate::allowed::AllowedUpdates;
use crate::fault::{Fault, QueuedFault};
use crate::record::BotRef;
use crate::update;

/// Locks a mutex, recovering the data if a panicking thread poisoned it (tests panic on purpose).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How far past the queue tail an offset may point and still be honoured (tdlib `TQueue::get`).
const OFFSET_FUTURE_SLACK: i64 = 10;
/// How far below the queue tail an offset may point and still be honoured (tdlib `TQueue::get`).
const OFFSET_PAST_WINDOW: i64 = 2_000_000;

pub(crate) struct Bot {
    pub index: usize,
    pub state: Mutex<BotState>,
    /// Woken on every push, so long polls and the webhook deliverer react at once.
    pub notify: Notify,
}

impl Bot {
    pub fn new(index: usize, info: BotInfo, first_update_id: i64) -> Self {
        Self {
            index,
            state: Mutex::new(BotState::new(info, first_update_id)),
            notify: Notify::new(),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, BotState> {
        lock(&self.state)
    }

    pub fn bot_ref(&self) -> BotRef {
        BotRef {
            index: self.index,
            id: self.lock().info.id,
        }
    }

    /// Queues raw bytes and wakes waiters; returns whether the update passed `allowed_updates`.
    pub fn push(&self, raw: Arc<[u8]>) -> bool {
        let queued = self.lock().push(raw);
        if queued {
            self.notify.notify_waiters();
        }
        queued
    }

    /// Assigns the next update id, builds the bytes with it and queues them.
    pub fn push_assigned(&self, build: impl FnOnce(i64) -> Vec<u8>) -> i64 {
        let (id, queued) = {
            let mut state = self.lock();
            let id = state.next_assign_id;
            let raw: Arc<[u8]> = build(id).into();
            (id, state.push(raw))
        };
        if queued {
            self.notify.notify_waiters();
        }
        id
    }
}

/// A long poll waiting in `getUpdates`; a newer poll or `setWebhook` terminates it with a message.
pub(crate) struct Poller {
    pub id: u64,
    pub terminate: oneshot::Sender<&'static str>,
}

/// The webhook as set by `setWebhook`.
pub(crate) struct WebhookState {
    pub url: String,
    pub secret_token: String,
    pub max_connections: u32,
    pub generation: u64,
    pub cancel: CancellationToken,
}

/// Webhook delivery bookkeeping of one queued update.
#[derive(Default)]
pub(crate) struct Delivery {
    /// The webhook generation currently sending it; a stale generation does not count.
    pub in_flight: Option<u64>,
    /// Consecutive failed attempts.
    pub failures: u32,
    /// Total attempts so far.
    pub attempts: u32,
    /// Not before this instant (backoff after a failure).
    pub not_before: Option<Instant>,
    /// Already kept once for a deliberate duplicate delivery.
    pub duplicated: bool,
}

pub(crate) struct Queued {
    pub seq: u64,
    /// The id that confirms this update (its own, or "previous + 1" when it has none).
    pub id: i64,
    pub raw: Arc<[u8]>,
    pub delivery: Delivery,
}

pub(crate) struct BotState {
    pub info: BotInfo,
    pub queue: VecDeque<Queued>,
    next_seq: u64,
    /// The id the next assigned push gets.
    pub next_assign_id: i64,
    /// Effective id of the latest push; `None` before the first.
    last_id: Option<i64>,
    pub allowed: AllowedUpdates,
    /// Pushes refused by `allowed_updates`.
    pub filtered: u64,
    pub faults: VecDeque<QueuedFault>,
    pub poller: Option<Poller>,
    next_poll_id: u64,
    /// Highest `offset` a processed `getUpdates` carried.
    pub confirmed_offset: Option<i64>,
    pub webhook: Option<WebhookState>,
    pub webhook_generation: u64,
    /// Unix time and text of the latest failed webhook delivery.
    pub last_webhook_error: Option<(i64, String)>,
    /// The token was revoked: every request is answered 401.
    pub revoked: bool,
}

impl BotState {
    fn new(info: BotInfo, first_update_id: i64) -> Self {
        Self {
            info,
            queue: VecDeque::new(),
            next_seq: 0,
            next_assign_id: first_update_id,
            last_id: None,
            allowed: AllowedUpdates::Default,
            filtered: 0,
            faults: VecDeque::new(),
            poller: None,
            next_poll_id: 0,
            confirmed_offset: None,
            webhook: None,
            webhook_generation: 0,
            last_webhook_error: None,
            revoked: false,
        }
    }

    /// Queues one update's bytes unless `allowed_updates` refuses its kind.
    pub fn push(&mut self, raw: Arc<[u8]>) -> bool {
        let header = update::inspect(&raw);
        let id = header
            .id
            .unwrap_or_else(|| self.last_id.map_or(self.next_assign_id, |last| last + 1));
        self.last_id = Some(id);
        // Assigned ids keep increasing past every id pushed so far (until an id jump).
        self.next_assign_id = self.next_assign_id.max(id.saturating_add(1));
        if !self.allowed.allows(header.kind.as_deref()) {
            self.filtered += 1;
            return false;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queue.push_back(Queued {
            seq,
            id,
            raw,
            delivery: Delivery::default(),
        });
        true
    }

    /// Restarts assigned ids at `restart_at`, as Telegram does after a week without updates.
    pub fn jump_update_ids(&mut self, restart_at: i64) {
        self.next_assign_id = restart_at;
        self.last_id = None;
    }

    /// Applies a `getUpdates` offset: confirms (forgets) or trims, like Telegram's queue.
    pub fn apply_offset(&mut self, offset: i64) {
        if offset != 0 {
            self.confirmed_offset = Some(self.confirmed_offset.map_or(offset, |c| c.max(offset)));
        }
        if offset < 0 {
            let keep = usize::try_from(offset.unsigned_abs()).unwrap_or(usize::MAX);
            while self.queue.len() > keep {
                self.queue.pop_front();
            }
        } else if offset > 0 && self.offset_is_plausible(offset) {
            self.queue.retain(|u| u.id >= offset);
        }
    }

    fn offset_is_plausible(&self, offset: i64) -> bool {
        match self.last_id {
            None => true,
            Some(last) => {
                let tail = last + 1;
                offset <= tail + OFFSET_FUTURE_SLACK && offset >= tail - OFFSET_PAST_WINDOW
            }
        }
    }

    /// The first `limit` pending updates, in push order.
    pub fn head(&self, limit: usize) -> Vec<Arc<[u8]>> {
        self.queue
            .iter()
            .take(limit)
            .map(|u| u.raw.clone())
            .collect()
    }

    /// Takes the first queued fault for this (lowercase) method.
    pub fn take_fault(&mut self, method: &str) -> Option<Fault> {
        let position = self
            .faults
            .iter()
            .position(|f| f.method.as_deref().is_none_or(|m| m == method))?;
        self.faults.remove(position).map(|f| f.fault)
    }

    /// Registers a waiting long poll, terminating the previous one as Telegram does.
    pub fn register_poller(&mut self) -> (u64, oneshot::Receiver<&'static str>) {
        self.terminate_poller(TERMINATED_BY_OTHER_GET_UPDATES);
        let (terminate, terminated) = oneshot::channel();
        let id = self.next_poll_id;
        self.next_poll_id += 1;
        self.poller = Some(Poller { id, terminate });
        (id, terminated)
    }

    pub fn terminate_poller(&mut self, reason: &'static str) {
        if let Some(old) = self.poller.take() {
            // The old request may already be gone (client disconnected): nothing to tell then.
            let _ = old.terminate.send(reason);
        }
    }

    /// Unregisters the poller `id` if it is still the current one.
    pub fn release_poller(&mut self, id: u64) {
        if self.poller.as_ref().is_some_and(|p| p.id == id) {
            self.poller = None;
        }
    }

    pub fn is_current_poller(&self, id: u64) -> bool {
        self.poller.as_ref().is_some_and(|p| p.id == id)
    }

    pub fn drop_pending(&mut self) {
        self.queue.clear();
    }
}

pub(crate) const TERMINATED_BY_OTHER_GET_UPDATES: &str = "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running";
pub(crate) const TERMINATED_BY_SET_WEBHOOK: &str = "Conflict: terminated by setWebhook request";
pub(crate) const WEBHOOK_IS_ACTIVE: &str = "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first";

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> BotState {
        BotState::new(
            BotInfo {
                id: 1,
                username: "b".into(),
                first_name: "B".into(),
            },
            100,
        )
    }

    fn push_id(s: &mut BotState, id: i64) {
        let raw = format!(r#"{{"update_id":{id},"message":{{}}}}"#);
        assert!(s.push(raw.into_bytes().into()));
    }

    fn ids(s: &BotState) -> Vec<i64> {
        s.queue.iter().map(|u| u.id).collect()
    }

    #[test]
    fn an_offset_forgets_every_update_below_it() {
        let mut s = state();
        (100..105).for_each(|id| push_id(&mut s, id));
        s.apply_offset(103);
        assert_eq!(ids(&s), vec![103, 104]);
        assert_eq!(s.confirmed_offset, Some(103));
    }

    #[test]
    fn a_negative_offset_keeps_only_the_last_updates() {
        let mut s = state();
        (100..105).for_each(|id| push_id(&mut s, id));
        s.apply_offset(-2);
        assert_eq!(ids(&s), vec![103, 104]);
    }

    #[test]
    fn an_offset_far_past_the_tail_is_ignored_so_lower_restarted_ids_survive() {
        let mut s = state();
        (100..103).for_each(|id| push_id(&mut s, id));
        s.apply_offset(103);
        s.jump_update_ids(7);
        push_id(&mut s, 7);
        push_id(&mut s, 8);
        // A client still holding the old offset must get the new, lower ids.
        s.apply_offset(103);
        assert_eq!(ids(&s), vec![7, 8]);
        s.apply_offset(9);
        assert!(s.queue.is_empty());
    }

    #[test]
    fn bytes_without_an_id_are_confirmed_with_the_next_update() {
        let mut s = state();
        push_id(&mut s, 100);
        assert!(s.push(br#"{"message":{}}"#.to_vec().into()));
        push_id(&mut s, 101);
        s.apply_offset(101);
        assert_eq!(
            s.queue.len(),
            2,
            "the id-less update is still pending after confirming 100"
        );
        s.apply_offset(102);
        assert!(s.queue.is_empty());
    }

    #[test]
    fn assigned_ids_continue_after_the_highest_pushed_id() {
        let mut s = state();
        push_id(&mut s, 500);
        assert_eq!(s.next_assign_id, 501);
    }

    #[test]
    fn faults_are_taken_in_order_and_respect_their_method() {
        let mut s = state();
        s.faults.push_back(QueuedFault {
            method: Some("getupdates".into()),
            fault: Fault::Conflict,
        });
        s.faults.push_back(QueuedFault {
            method: None,
            fault: Fault::MalformedBody,
        });
        assert_eq!(s.take_fault("getme"), Some(Fault::MalformedBody));
        assert_eq!(s.take_fault("getme"), None);
        assert_eq!(s.take_fault("getupdates"), Some(Fault::Conflict));
    }
}
