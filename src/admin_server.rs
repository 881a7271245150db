//! The admin HTTP server: `/healthz` (the process is alive and serving), `/readyz` (every unit
//! the component reported is ready), `/units` (every unit, ready or not, as JSON for
//! `tgingest status`) and `/metrics` (Prometheus text format).
//!
//! Components report named units (dependencies such as `postgres`, parts built at run time such
//! as `bot #2`) to a shared [`Readiness`] through the workspace's readiness contract
//! ([`component::Readiness`]) as their connections come and go. `/readyz` answers 200 only when
//! every unit is ready, listing each unit with its detail; otherwise 503, listing the units that
//! are not ready and why, so a Kubernetes probe and a human read the same answer. `/units` always
//! answers 200 with every unit, its ready flag and its detail or reason ([`UnitsAnswer`]), so a
//! program (`tgingest status --producer-admin`) sees the ready units beside the failing ones.
//! Units are named by position (`bot #2`), never by token, and reporters keep secrets out of
//! details, so nothing here is secret.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use component::Unit;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::telemetry::MetricsHandle;

/// What a unit last reported: `Ok(detail)` when ready, `Err(reason)` when not.
type UnitState = Result<String, String>;

/// Units by name, each with its detail (ready) or reason (not ready), in name order.
pub type UnitReports = Vec<(String, String)>;

/// The path of the machine-readable unit list, relative to the admin server's root.
pub const UNITS_PATH: &str = "units";

/// One unit as `GET /units` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitView {
    /// The unit's name (`kafka`, `bot #2`, `partition 7`).
    pub unit: String,
    pub ready: bool,
    /// What the unit is doing when ready (may be empty), why it is not ready otherwise.
    pub detail: String,
}

/// The body of `GET /units`: whether every unit is ready (what `/readyz` answers), and every unit
/// in name order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitsAnswer {
    pub ready: bool,
    pub units: Vec<UnitView>,
}

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

    /// Every unit, ready or not, in name order.
    pub fn units(&self) -> UnitsAnswer {
        let units: Vec<UnitView> = self
            .lock()
            .iter()
            .map(|(unit, state)| UnitView {
                unit: unit.to_string(),
                ready: state.is_ok(),
                detail: match state {
                    Ok(detail) | Err(detail) => detail.clone(),
                },
            })
            .collect();
        UnitsAnswer {
            ready: units.iter().all(|u| u.ready),
            units,
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
    metrics: MetricsHandle,
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
        metrics: MetricsHandle,
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
        .route(&format!("/{UNITS_PATH}"), get(units))
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

async fn units(State(state): State<AdminState>) -> Json<UnitsAnswer> {
    Json(state.readiness.units())
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
    use std::time::Duration;

    /// An admin server on a free port for `readiness`, and the token that stops it.
    async fn serve(readiness: &Readiness) -> (AdminServer, CancellationToken) {
        let handle = crate::telemetry::MetricsRecorder::new(Duration::from_secs(60)).handle();
        let token = CancellationToken::new();
        let server = AdminServer::start(
            "127.0.0.1:0".parse().unwrap(),
            readiness.clone(),
            handle,
            token.clone(),
        )
        .await
        .unwrap();
        (server, token)
    }

    #[tokio::test]
    async fn readyz_lists_failing_checks_until_every_check_is_ready() {
        let readiness = Readiness::default();
        readiness.register("postgres");
        readiness.register("kafka");
        let (server, token) = serve(&readiness).await;
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

    #[tokio::test]
    async fn units_lists_every_unit_ready_or_not_as_json() {
        use component::Readiness as _;
        let readiness = Readiness::default();
        let (server, token) = serve(&readiness).await;
        let url = format!("http://{}/units", server.local_addr);

        // No unit yet: ready, as /readyz answers.
        let answer: UnitsAnswer = reqwest::get(&url).await.unwrap().json().await.unwrap();
        assert_eq!(
            answer,
            UnitsAnswer {
                ready: true,
                units: vec![]
            }
        );

        readiness.ready(&Unit::bot(1), "polling");
        readiness.not_ready(&Unit::bot(2), "getMe failed: unauthorized (HTTP 401)");
        readiness.ready(&Unit::fixed("kafka"), "");
        let response = reqwest::get(&url).await.unwrap();
        // 200 whatever the readiness: the answer is in the body.
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()[reqwest::header::CONTENT_TYPE],
            "application/json"
        );
        let answer: UnitsAnswer = response.json().await.unwrap();
        let view = |unit: &str, ready: bool, detail: &str| UnitView {
            unit: unit.into(),
            ready,
            detail: detail.into(),
        };
        assert_eq!(
            answer,
            UnitsAnswer {
                ready: false,
                units: vec![
                    view("bot #1", true, "polling"),
                    view("bot #2", false, "getMe failed: unauthorized (HTTP 401)"),
                    view("kafka", true, ""),
                ],
            }
        );

        readiness.ready(&Unit::bot(2), "polling");
        let answer: UnitsAnswer = reqwest::get(&url).await.unwrap().json().await.unwrap();
        assert!(
            answer.ready && answer.units.iter().all(|u| u.ready),
            "{answer:?}"
        );

        token.cancel();
        server.stopped().await;
    }

    #[tokio::test]
    async fn metrics_serves_recorded_series_with_help_and_the_process_metrics() {
        let recorder = crate::telemetry::MetricsRecorder::new(Duration::from_secs(60));
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            metrics::describe_counter!("tgingest_example_total", "An example");
            metrics::counter!("tgingest_example_total").increment(2);
        });
        let token = CancellationToken::new();
        let server = AdminServer::start(
            "127.0.0.1:0".parse().unwrap(),
            Readiness::default(),
            handle,
            token.clone(),
        )
        .await
        .unwrap();
        let response = reqwest::get(format!("http://{}/metrics", server.local_addr))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let text = response.text().await.unwrap();
        assert!(
            text.contains("# HELP tgingest_example_total An example\n"),
            "{text}"
        );
        assert!(text.contains("tgingest_example_total 2\n"), "{text}");
        if cfg!(target_os = "linux") {
            assert!(
                text.contains("# TYPE process_resident_memory_bytes gauge\n"),
                "{text}"
            );
        }
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
