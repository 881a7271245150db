//! The admin HTTP server: `/healthz` (the process is alive and serving), `/readyz` (every
//! dependency the component registered is reachable) and `/metrics` (Prometheus text format).
//!
//! Components own named readiness checks in a shared [`Readiness`] and flip them as their
//! connections come and go; `/readyz` answers 200 only when every registered check is ready, and
//! lists the failing ones otherwise, so a Kubernetes probe and a human read the same answer.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Named readiness flags shared between the components and the admin server.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    checks: Arc<Mutex<BTreeMap<&'static str, Result<(), String>>>>,
}

impl Readiness {
    /// Registers a check, initially not ready.
    pub fn register(&self, name: &'static str) {
        self.lock().insert(name, Err("starting".into()));
    }

    pub fn set_ready(&self, name: &'static str) {
        self.lock().insert(name, Ok(()));
    }

    pub fn set_not_ready(&self, name: &'static str, reason: impl Into<String>) {
        self.lock().insert(name, Err(reason.into()));
    }

    /// Ok when every registered check is ready; otherwise the failing checks and why.
    pub fn status(&self) -> Result<(), Vec<(String, String)>> {
        let failing: Vec<_> = self
            .lock()
            .iter()
            .filter_map(|(name, state)| state.as_ref().err().map(|r| (name.to_string(), r.clone())))
            .collect();
        if failing.is_empty() {
            Ok(())
        } else {
            Err(failing)
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, Result<(), String>>> {
        // A panic while holding this lock cannot leave the map inconsistent: keep serving.
        self.checks.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Clone)]
struct AdminState {
    readiness: Readiness,
    metrics: PrometheusHandle,
}

/// A running admin server.
#[derive(Debug)]
pub struct AdminServer {
    pub local_addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl AdminServer {
    /// Binds `addr` and serves until `shutdown` is cancelled.
    pub async fn start(
        addr: SocketAddr,
        readiness: Readiness,
        metrics: PrometheusHandle,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on ADMIN_LISTEN={addr}: {e}"))?;
        let local_addr = listener.local_addr()?;
        let app = router(AdminState { readiness, metrics });
        let task = tokio::spawn(async move {
            let result = axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await;
            if let Err(e) = result {
                tracing::error!(error = %e, "admin server stopped");
            }
        });
        tracing::info!(%local_addr, "admin server listening");
        Ok(Self { local_addr, task })
    }

    /// Waits for the server to finish after its shutdown token was cancelled.
    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}

fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    match state.readiness.status() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(failing) => {
            let lines: String = failing
                .iter()
                .map(|(name, reason)| format!("{name}: {reason}\n"))
                .collect();
            (StatusCode::SERVICE_UNAVAILABLE, lines)
        }
    }
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn readyz_lists_failing_checks_until_every_check_is_ready() {
        let readiness = Readiness::default();
        readiness.register("postgres");
        readiness.register("kafka");
        let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
            .build_recorder()
            .handle();
        let token = CancellationToken::new();
        let server = AdminServer::start(
            "127.0.0.1:0".parse().unwrap(),
            readiness.clone(),
            handle,
            token.clone(),
        )
        .await
        .unwrap();
        let url = format!("http://{}/readyz", server.local_addr);

        readiness.set_ready("postgres");
        readiness.set_not_ready("kafka", "broker unreachable");
        let response = reqwest::get(&url).await.unwrap();
        assert_eq!(response.status(), 503);
        assert_eq!(
            response.text().await.unwrap(),
            "kafka: broker unreachable\n"
        );

        readiness.set_ready("kafka");
        let response = reqwest::get(&url).await.unwrap();
        assert_eq!(response.status(), 200);
        let health = reqwest::get(format!("http://{}/healthz", server.local_addr))
            .await
            .unwrap();
        assert_eq!(health.status(), 200);

        token.cancel();
        server.stopped().await;
    }
}
