//! Crash windows that signals cannot hit reliably, opened on demand for tests (DESIGN.md §8).
//!
//! With the `failpoints` feature, [`hit`] evaluates a `fail` crate failpoint on a blocking thread
//! (so `sleep`/`pause` actions never stall the async runtime) and returns the argument of a
//! `return(arg)` action; callers give that argument a meaning (a delay in milliseconds, or which
//! way to lose a connection). Without the feature it is a no-op the compiler removes.
//!
//! Failpoints:
//! - `consumer::before_offset_update` — inside the batch transaction, rows written, before the
//!   fenced offset update; `return(ms)` sleeps asynchronously (the zombie test).
//! - `consumer::before_commit` — after the offset update, before COMMIT; `return(ms)` sleeps.
//! - `consumer::commit_connection_lost` — `return(before)`: the backend is terminated from a side
//!   connection, then COMMIT is sent (the transaction is lost); `return(after)`: COMMIT succeeds,
//!   then the backend is terminated and the reply treated as lost. Both go through the
//!   `pg_xact_status` resolution.
//! - `consumer::after_commit` — after COMMIT, before the Kafka commit; `return(ms)` sleeps
//!   (`panic` is the classic crash-here action).

/// Evaluates the failpoint `name`; `Some(arg)` when its action is `return(arg)`.
#[cfg(feature = "failpoints")]
pub async fn hit(name: &'static str) -> Option<String> {
    fn eval(name: &'static str) -> Option<String> {
        fail::fail_point!(name, |arg| Some(arg.unwrap_or_default()));
        None
    }
    // Fast path: no failpoint configured at all.
    if fail::list().is_empty() {
        return None;
    }
    match tokio::task::spawn_blocking(move || eval(name)).await {
        Ok(arg) => arg,
        // A `panic` action: let it crash the caller, as configured.
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        Err(_) => None,
    }
}

/// Evaluates the failpoint `name` (compiled out without the `failpoints` feature).
#[cfg(not(feature = "failpoints"))]
pub async fn hit(_name: &'static str) -> Option<String> {
    None
}

/// Evaluates `name` and, for `return(ms)`, sleeps that long without blocking the runtime.
pub async fn delay(name: &'static str) {
    if let Some(arg) = hit(name).await
        && let Ok(ms) = arg.trim().parse::<u64>()
    {
        tracing::warn!(failpoint = name, ms, "failpoint: delaying");
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
}
