//! The open probes: `GET /healthz` (the process runs), `GET /readyz` (the control plane
//! answers in time) and `GET /metrics` (Prometheus/OpenMetrics text). No token guards them, so
//! orchestrators and scrapers need none.
//!
//! Handlers on the admin server's tasks: `/metrics` reads the metrics directly, `/readyz` asks
//! the control task through [`RelayHandle`](crate::RelayHandle), bounded by `READY_TIMEOUT`.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::AdminState;

/// How long `/readyz` waits for the control plane before calling the relay not ready. The
/// control task answers in microseconds; a second means it is stuck or overloaded.
const READY_TIMEOUT: Duration = Duration::from_secs(1);

/// Content type of `/metrics`: prometheus-client's text encoder writes OpenMetrics.
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub(super) async fn healthz() -> &'static str {
    "ok"
}

pub(super) async fn readyz(State(state): State<AdminState>) -> Response {
    match tokio::time::timeout(READY_TIMEOUT, state.handle.counts()).await {
        Ok(Ok(_)) => (StatusCode::OK, "ready").into_response(),
        Ok(Err(err)) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {err}")).into_response()
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: control plane did not answer",
        )
            .into_response(),
    }
}

pub(super) async fn metrics(State(state): State<AdminState>) -> Response {
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        state.handle.metrics().encode(),
    )
        .into_response()
}
