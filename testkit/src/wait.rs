//! Waiting for a condition that the system under test makes true in its own time.
//!
//! Every test that polls uses these: one polling loop, one interval ([`POLL_INTERVAL`]), and a
//! last look at the deadline, so a condition that became true while the test slept is not reported
//! as a timeout. Nothing here sleeps a fixed time and calls it done.

use std::time::{Duration, Instant};

/// How often a condition is evaluated.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Evaluates `condition` every [`POLL_INTERVAL`] until it holds or `timeout` has passed; returns
/// whether it held. For a condition that must *not* become true, or to fail with diagnostics
/// gathered after the wait; otherwise use [`wait_until`].
pub async fn eventually(timeout: Duration, mut condition: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// [`eventually`], panicking with `what` (the awaited condition, in words) on timeout.
pub async fn wait_until(timeout: Duration, what: &str, condition: impl AsyncFnMut() -> bool) {
    assert!(
        eventually(timeout, condition).await,
        "timed out after {timeout:?} waiting for: {what}"
    );
}
