//! The admin HTTP server: `/healthz` (the process is alive and serving), `/readyz` (every unit
//! the component reported is ready) and `/metrics` (Prometheus text format).
//!
//! Components report named units (dependencies such as `postgres`, parts built at run time such
//! as `bot #2`) to a shared [`Readiness`] through the workspace's readiness contract
//! ([`component::Readiness`]) as their connections come and go. `/readyz` answers 200 only when
//! every unit is ready, listing each unit with its detail; otherwise 503, listing the units that
//! are not ready and why, so a Kubernetes probe and a human read the same answer.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use component::Unit;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What a unit last reported: `Ok(detail)` when ready, `Err(reason)` when not.
type UnitState = Result<String, String>;

/// Units by name, each with its detail (ready) or reason (not ready), in name order.
pub type UnitReports = Vec<(String, String)>;

/// The readiness of every reported unit, shared between the components and the admin server.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    units: Arc<Mutex<BTreeMap<Unit, UnitState>>>,
}

impl Readiness {
    /// Registers a unit, initially not ready.
    pub fn register(&self, unit: impl Into<Unit>) {
        self.lock().insert(unit.into(), Err("starting".into()));
    }

    pub fn set_ready(&self, unit: impl Into<Unit>) {
        self.lock().insert(unit.into(), Ok(String::new()));
    }

    pub fn set_not_ready(&self, unit: impl Into<Unit>, reason: impl Into<String>) {
        self.lock().insert(unit.into(), Err(reason.into()));
    }

    /// Ok with every unit and its detail when every unit is ready; otherwise the units that are
    /// not ready and why.
    pub fn status(&self) -> Result<UnitReports, UnitReports> {
        let units = self.lock();
        let failing: Vec<_> = units
            .iter()
            .filter_map(|(unit, state)| state.as_ref().err().map(|r| (unit.to_string(), r.clone())))
            .collect();
        if failing.is_empty() {
            Ok(units
                .iter()
                .map(|(unit, state)| (unit.to_string(), state.clone().unwrap_or_default()))
                .collect())
        } else {
            Err(failing)
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Unit, UnitState>> {
        // A panic while holding this lock cannot leave the map inconsistent: keep serving.
        self.units.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl component::Readiness for Readiness {
    fn ready(&self, unit: &Unit, detail: &str) {
        // Reported after every batch: update in place rather than allocate a key each time.
        let mut units = self.lock();
        match units.get_mut(unit) {
            Some(Ok(current)) if current == detail => {}
            Some(state) => *state = Ok(detail.to_owned()),
            None => {
                units.insert(unit.clone(), Ok(detail.to_owned()));
            }
        }
    }

    fn not_ready(&self, unit: &Unit, reason: &str) {
        self.lock().insert(unit.clone(), Err(reason.to_owned()));
    }

    fn withdraw(&self, unit: &Unit) {
        self.lock().remove(unit);
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
        Ok(units) => {
            let mut body = "ready\n".to_string();
            for (unit, detail) in units {
                let detail = if detail.is_empty() { "ready" } else { &detail };
                body.push_str(&format!("{unit}: {detail}\n"));
            }
            (StatusCode::OK, body)
        }
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
        assert_eq!(
            response.text().await.unwrap(),
            "ready\nkafka: ready\npostgres: ready\n"
        );
        let health = reqwest::get(format!("http://{}/healthz", server.local_addr))
            .await
            .unwrap();
        assert_eq!(health.status(), 200);

        token.cancel();
        server.stopped().await;
    }

    #[test]
    fn units_built_at_run_time_are_listed_with_their_details_and_can_be_withdrawn() {
        use component::Readiness as _;
        let registry = Readiness::default();
        registry.ready(&Unit::bot(2), "polling");
        registry.ready(&Unit::fixed("kafka"), "");
        registry.not_ready(&Unit::partition(7), "offsets unreadable");
        assert_eq!(
            registry.status(),
            Err(vec![("partition 7".into(), "offsets unreadable".into())])
        );

        registry.withdraw(&Unit::partition(7));
        assert_eq!(
            registry.status(),
            Ok(vec![
                ("bot #2".into(), "polling".into()),
                ("kafka".into(), String::new()),
            ])
        );
    }
}
