//! Capped exponential backoff for transient failures (Telegram 5xx, network, malformed bodies,
//! Kafka outages).
//!
//! Deterministic on purpose: the delays double from `initial` up to `max` and reset after a
//! success, so tests can reason about them. One poller per bot token means there is no herd of
//! clients to de-synchronise, which is what jitter would be for.

use std::time::Duration;

use crate::config::BackoffPolicy;

/// The state of one retry sequence.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    policy: BackoffPolicy,
    next: Duration,
    attempts: u32,
}

impl Backoff {
    pub(crate) fn new(policy: BackoffPolicy) -> Self {
        Self {
            policy,
            next: policy.initial,
            attempts: 0,
        }
    }

    /// The delay before the next retry; each call doubles the following one, up to the cap.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.policy.max);
        self.attempts += 1;
        delay
    }

    /// How many delays were handed out since the last reset.
    pub(crate) fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Back to the initial delay after a success.
    pub(crate) fn reset(&mut self) {
        self.next = self.policy.initial;
        self.attempts = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_reset_after_success() {
        let mut backoff = Backoff::new(BackoffPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(350),
        });
        let delays: Vec<u128> = (0..5).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 350, 350, 350]);
        assert_eq!(backoff.attempts(), 5);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(100));
    }
}
