//! Injected faults: the failure modes a Bot API client meets in production.
//!
//! Faults are queued per bot and consumed in order, each by the next request that matches it (any
//! method, or one method). A consumed fault replaces the request's effect entirely: a faulted
//! `getUpdates` confirms nothing, exactly like an answer from a proxy that never reached Telegram.
//! `Stall` is the exception: it delays the request, which then runs normally. `UpdateIdJump` is not
//! consumed by a request at all; it changes the ids the simulator assigns to the next pushes.

use std::time::Duration;

/// One failure to inject.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// HTTP 429 with `parameters.retry_after`, as Telegram's flood control answers.
    TooManyRequests {
        /// Seconds the client is told to wait.
        retry_after: u32,
    },
    /// HTTP 409 "Conflict: terminated by other getUpdates request…", as when a second poller runs.
    Conflict,
    /// An HTTP 5xx answer with Telegram's error envelope (the code should be 500..=599).
    ServerError(u16),
    /// HTTP 200 whose body is not JSON (a truncated envelope), as a broken proxy produces.
    MalformedBody,
    /// Holds the request this long, then answers it normally.
    Stall(Duration),
    /// The next assigned update ids restart at a lower value, as Telegram does after a week without
    /// updates. `None` draws the value from the server's seeded generator (below the current next
    /// id); `Some(v)` uses `v` exactly, for deterministic tests.
    UpdateIdJump {
        /// The next update id to assign.
        restart_at: Option<i64>,
    },
}

impl Fault {
    /// Whether the fault is consumed by a request (every fault but `UpdateIdJump`).
    pub(crate) fn is_request_fault(&self) -> bool {
        !matches!(self, Self::UpdateIdJump { .. })
    }
}

/// A queued fault and the method it is reserved for (lowercase; `None` = any method).
#[derive(Clone, Debug)]
pub(crate) struct QueuedFault {
    pub method: Option<String>,
    pub fault: Fault,
}
