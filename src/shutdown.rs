//! One cancellation token for the whole process, cancelled by SIGTERM or ctrl-c.
//!
//! Every long-running loop races this token. A second signal while shutting down exits at once
//! with status 130, for an operator who really wants the process gone.

use tokio_util::sync::CancellationToken;

/// Spawns the signal listener and returns the token it cancels.
pub fn install_signal_handlers() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested; draining (send the signal again to exit at once)");
        cancel.cancel();
        wait_for_signal().await;
        tracing::warn!("second signal: exiting without draining");
        std::process::exit(130);
    });
    token
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; only ctrl-c will stop the process");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
