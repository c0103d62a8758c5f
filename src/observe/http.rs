//! The metrics/health HTTP endpoint: `GET /metrics` (Prometheus text), `GET /healthz` (200 while
//! the process runs), `GET /readyz` (200 when the SMTP listener is up and the spool takes mail:
//! writable, and not refusing it for lack of space; 503 with the reason otherwise).

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
    let spool = &state.readiness.spool;
    state.metrics.spool_bytes.set(spool.bytes() as i64);
    state
        .metrics
        .spool_full
        .set(i64::from(spool.refusing_for_space().is_some()));
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
    let (refusing, writable) = tokio::task::spawn_blocking(move || {
        // A relay refusing mail for space is not ready (a Service then sends mail to the
        // other replicas); the re-check notices when room is back even if no mail arrives.
        let refusing = spool.refusing_for_space().is_some() && spool.recheck_space();
        (refusing, !refusing && spool.is_writable())
    })
    .await
    .unwrap_or((false, false));
    state.metrics.spool_full.set(i64::from(refusing));
    if refusing {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "spool full: refusing mail (452 4.3.1) for lack of space\n",
        )
    } else if writable {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "spool not writable\n")
    }
}
