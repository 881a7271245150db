//! Capped exponential backoff with jitter for transient failures (Telegram 5xx, network,
//! malformed bodies, rejected tokens, Kafka outages).
//!
//! Guarantees: the base delay doubles from `initial` up to `max` and resets after a success; each
//! delay handed out is the base plus a random jitter of up to a quarter of it, never less than the
//! base. The jitter keeps the bots of one process (and the replicas of a deployment) that failed
//! together from retrying in lockstep against the same Bot API server or broker; never waiting
//! less than the base keeps the documented floor (a retry is never sooner than the policy says).

use std::time::Duration;

use rand::Rng;

use crate::config::BackoffPolicy;

/// The largest jitter, as a fraction of the base delay.
const JITTER: f64 = 0.25;

/// The state of one retry sequence.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    policy: BackoffPolicy,
    next: Duration,
    attempts: u32,
    jitter: bool,
}

impl Backoff {
    pub(crate) fn new(policy: BackoffPolicy) -> Self {
        Self {
            policy,
            next: policy.initial,
            attempts: 0,
            jitter: true,
        }
    }

    /// The delay before the next retry: the base plus jitter. Each call doubles the following
    /// base, up to the cap.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.policy.max);
        self.attempts += 1;
        if self.jitter {
            base + base.mul_f64(rand::rng().random_range(0.0..=JITTER))
        } else {
            base
        }
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

    fn policy() -> BackoffPolicy {
        BackoffPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(350),
        }
    }

    #[test]
    fn delays_double_up_to_the_cap_and_reset_after_success() {
        let mut backoff = Backoff::new(policy());
        backoff.jitter = false;
        let delays: Vec<u128> = (0..5).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 350, 350, 350]);
        assert_eq!(backoff.attempts(), 5);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(100));
    }

    #[test]
    fn jitter_adds_up_to_a_quarter_and_never_shortens_a_delay() {
        let bases = [100, 200, 350, 350, 350];
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..50 {
            let mut backoff = Backoff::new(policy());
            for base in bases {
                let delay = backoff.next_delay();
                let base = Duration::from_millis(base);
                assert!(
                    delay >= base && delay <= base.mul_f64(1.0 + JITTER),
                    "{delay:?}"
                );
                seen.insert(delay);
            }
        }
        assert!(seen.len() > bases.len(), "no jitter: {seen:?}");
    }
}
