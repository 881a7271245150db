//! Runs one long-lived component (producer or consumer) as a service: signal handling, metrics,
//! the admin server, and a bounded drain on shutdown.
//!
//! The component receives the process's cancellation token and a readiness handle. On SIGTERM or
//! ctrl-c the token is cancelled and the component drains; if it has not returned within the
//! grace period the process exits with an error rather than hang past Kubernetes'
//! `terminationGracePeriodSeconds`.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::admin_server::{AdminServer, Readiness};
use crate::shutdown::install_signal_handlers;
use crate::telemetry;

/// Runs `component` until it returns, serving the admin endpoints on `admin` meanwhile; the
/// component's per-partition series that are not set for `partition_series_idle` are dropped
/// ([`telemetry::init_metrics`]).
pub async fn run_service<F, Fut>(
    name: &'static str,
    admin: Option<SocketAddr>,
    grace: Duration,
    partition_series_idle: Duration,
    component: F,
) -> anyhow::Result<()>
where
    F: FnOnce(CancellationToken, Readiness) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let shutdown = install_signal_handlers();
    let readiness = Readiness::default();
    let metrics = telemetry::init_metrics(partition_series_idle);
    let admin_token = CancellationToken::new();
    let admin_server = match admin {
        Some(addr) => {
            Some(AdminServer::start(addr, readiness.clone(), metrics, admin_token.clone()).await?)
        }
        None => None,
    };
    tracing::info!(
        component = name,
        version = env!("CARGO_PKG_VERSION"),
        "starting"
    );

    let work = component(shutdown.clone(), readiness);
    tokio::pin!(work);
    let result = tokio::select! {
        result = &mut work => result,
        () = async {
            shutdown.cancelled().await;
            tokio::time::sleep(grace).await;
        } => Err(anyhow::anyhow!(
            "{name} did not finish draining within SHUTDOWN_GRACE={}",
            humantime::format_duration(grace)
        )),
    };
    admin_token.cancel();
    if let Some(server) = admin_server {
        server.stopped().await;
    }
    match &result {
        Ok(()) => tracing::info!(component = name, "stopped"),
        Err(e) => tracing::error!(component = name, error = %format!("{e:#}"), "failed"),
    }
    result
}
