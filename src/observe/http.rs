//! The metrics/health HTTP endpoint: `GET /metrics` (Prometheus text), `GET /healthz` (200 while
//! the process runs), `GET /readyz` (200 when the SMTP listener is up and the spool is writable).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Metrics;
use super::serve::{HttpCounters, HttpLimits};
use crate::spool::Spool;

/// What `/readyz` looks at.
#[derive(Clone)]
pub struct Readiness {
    /// Set once the SMTP listener accepts connections; cleared when shutdown starts.
    pub listening: Arc<AtomicBool>,
    pub spool: Arc<Spool>,
}

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    readiness: Readiness,
}

/// Serves under `limits` (see `observe/serve.rs`) until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    readiness: Readiness,
    limits: HttpLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let counters = HttpCounters {
        metrics: metrics.clone(),
        listener: "metrics",
    };
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(AppState { metrics, readiness });
    super::serve::serve(listener, app, limits, counters, shutdown).await
}

async fn metrics_text(State(state): State<AppState>) -> impl IntoResponse {
    state
        .metrics
        .spool_bytes
        .set(state.readiness.spool.bytes() as i64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

async fn ready(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if !state.readiness.listening.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "not listening\n");
    }
    let spool = state.readiness.spool.clone();
    let writable = tokio::task::spawn_blocking(move || spool.is_writable())
        .await
        .unwrap_or(false);
    if writable {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "spool not writable\n")
    }
}
