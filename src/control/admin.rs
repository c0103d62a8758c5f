//! The admin API: the operator's kill switch, on its own listener (`[admin] listen`), separate
//! from `/metrics` so that scraping access never grants control.
//!
//! Every request needs `Authorization: Bearer <token>` with the token from the environment
//! variable named by `admin.token_env`, compared in constant time; anything else is `401`.
//! Without a token the API is not served at all (the relay logs that it is disabled).
//!
//! - `GET /status`: paused flags (all, and per provider), queue depth per provider, upstream
//!   health, and the spool: bytes, whether it refuses mail for lack of space (`452 4.3.1`,
//!   `/readyz` 503 meanwhile), damaged batches found at start.
//! - `POST /pause`, `POST /resume`, optional `?provider=NAME`: stop or restart starting upstream
//!   deliveries; inbound keeps accepting and spooling. Unknown provider: `404`. The change is
//!   recorded in the spool (synced) before the answer and, with `[cluster]`, written to Redis
//!   for every replica; a resume makes the resumed copies waiting for a retry due at once. When
//!   the record cannot be written the change still applies and the answer is `500` with the
//!   status and an `error` saying a restart would forget it. `/status` lists every pause in
//!   force under `pauses` (source `command` / `spool` / `cluster`, since, by which replica).
//! - `POST /shaping/clear`, optional `?provider=NAME` or `?upstream=NAME`: lift the slowdowns
//!   and suspensions that shaping rules put in force (every provider's and upstream's, or one's);
//!   with `[cluster]` on every replica. Answers the status with `shaping_cleared` (the providers
//!   lifted here) and `upstream_shaping_cleared` (the upstreams); unknown name `404`, both
//!   given `400`.
//! - `POST /reload`: same as SIGHUP; `422` with every problem when the new file is refused.
//! - `GET /held` (`?show_addresses=true` for the sender and canary recipients in full): messages
//!   under a bulk hold, with counts only. `POST /held/<id>/release`, `POST /held/<id>/drop`:
//!   the operator's decision (`404` when no such message is held). See `docs/bulk-hold.md`.
//! - `/queue...`: list, show, retry, delete and bounce queued messages (`queue_api.rs`).
//! - `/suppress...`: the suppression list: add, remove, check, list (`suppress_api.rs`).
//!
//! Answers are JSON: the status after the change, or `{"error": "..."}`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::reload::{ReloadError, Reloader};
use crate::config::Secret;
use crate::observe::Metrics;
use crate::observe::serve::{self, HttpCounters, HttpLimits};
use crate::relay::Relay;
use crate::schedule::Scheduler;
use crate::schedule::queue::{ClearTarget, HoldError, PauseError};

/// The `target` of this module's log lines: the path it had before the control plane got its own
/// folder, so log lines and `MAILVEIL_LOG` filters read as they did.
const LOG_TARGET: &str = "mailveil::observe::admin";

/// What the handlers act on.
#[derive(Clone)]
pub struct AdminState {
    pub token: Secret,
    pub scheduler: Scheduler,
    /// For the spool's state in `/status`.
    pub relay: Arc<Relay>,
    pub reloader: Arc<Reloader>,
}

impl axum::extract::FromRef<AdminState> for Scheduler {
    fn from_ref(state: &AdminState) -> Scheduler {
        state.scheduler.clone()
    }
}

#[derive(Deserialize)]
struct Target {
    provider: Option<String>,
}

#[derive(Deserialize)]
struct ShapingTarget {
    provider: Option<String>,
    upstream: Option<String>,
}

#[derive(Deserialize)]
struct HeldQuery {
    #[serde(default)]
    show_addresses: bool,
}

#[derive(Serialize)]
struct ReloadAnswer {
    reloaded: bool,
    restart_needed: Vec<String>,
}

/// Serves under `limits` (see `observe/serve.rs`) until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    limits: HttpLimits,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let counters = HttpCounters {
        metrics,
        listener: "admin",
    };
    let app = Router::new()
        .route("/status", get(status))
        .route("/pause", post(pause))
        .route("/resume", post(resume))
        .route("/reload", post(reload))
        .route("/shaping/clear", post(clear_shaping))
        .route("/held", get(held))
        .route("/held/{id}/release", post(release))
        .route("/held/{id}/drop", post(drop_held))
        .merge(super::queue_api::routes())
        .merge(super::suppress_api::routes())
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state);
    serve::serve(listener, app, limits, counters, shutdown).await
}

/// True when `headers` carry `Bearer <token>`. The comparison takes the same time wherever the
/// first difference is, so the token cannot be guessed byte by byte from response times (only
/// its length is not hidden).
pub fn bearer_matches(headers: &HeaderMap, token: &Secret) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
    else {
        return false;
    };
    bool::from(given.ct_eq(token.expose().as_bytes()))
}

async fn authorize(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    if bearer_matches(request.headers(), &state.token) {
        return next.run(request).await;
    }
    tracing::warn!(
        target: LOG_TARGET,
        path = %request.uri().path(),
        "admin request refused: missing or wrong token"
    );
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        axum::Json(json!({"error": "missing or wrong bearer token"})),
    )
        .into_response()
}

async fn status(State(state): State<AdminState>) -> Response {
    let mut body = serde_json::to_value(state.scheduler.status()).unwrap_or_default();
    let spool = state.relay.spool.clone();
    // While refusing, check whether room is back (as `/readyz` does), so the answer is current.
    let refusing = tokio::task::spawn_blocking(move || {
        spool.refusing_for_space().is_some() && spool.recheck_space()
    })
    .await
    .unwrap_or(true);
    let spool = &state.relay.spool;
    if let Some(fields) = body.as_object_mut() {
        fields.insert(
            "spool".into(),
            json!({
                "bytes": spool.bytes(),
                "refusing_for_space": refusing,
                "corrupt_batches_at_start": spool.corrupt_batches(),
            }),
        );
        fields.insert("apps".into(), apps_status(&state.relay, &state.scheduler));
    }
    axum::Json(body).into_response()
}

/// `apps` of `/status`: each configured `[[app]]` with its messages at end of DATA since start
/// (`mailveil_app_messages_total`), its limits and quota count (`[app.limits]`), and its
/// refusals for them.
fn apps_status(relay: &Relay, scheduler: &Scheduler) -> serde_json::Value {
    let limits = scheduler.app_limits().status();
    let events = scheduler.events();
    let count = |app: &str, outcome: &str| {
        relay
            .metrics
            .app_messages
            .with_label_values(&[app, outcome])
            .get()
    };
    relay
        .rules()
        .apps
        .iter()
        .map(|name| {
            let limited = |reason: &str| {
                relay
                    .metrics
                    .app_limited
                    .with_label_values(&[name, reason])
                    .get()
            };
            let mut app = json!({
                "name": name,
                "messages_accepted": count(name, "accepted"),
                "messages_rejected": count(name, "rejected"),
                "refused_for_rate": limited("rate"),
                "refused_for_quota": limited("quota"),
            });
            if let (Some(fields), Some(l)) =
                (app.as_object_mut(), limits.iter().find(|l| &l.app == name))
                && let Ok(serde_json::Value::Object(extra)) = serde_json::to_value(l)
            {
                fields.extend(extra.into_iter().filter(|(k, _)| k != "app"));
            }
            if let (Some(fields), Some(e)) = (app.as_object_mut(), events.app(name)) {
                fields.insert("events".into(), e.status());
            }
            app
        })
        .collect()
}

async fn pause(State(state): State<AdminState>, Query(target): Query<Target>) -> Response {
    switch(&state, target, true).await
}

async fn resume(State(state): State<AdminState>, Query(target): Query<Target>) -> Response {
    switch(&state, target, false).await
}

async fn switch(state: &AdminState, target: Target, pause: bool) -> Response {
    // `?provider=` with nothing after it is a script's empty variable, not "all providers".
    if target.provider.as_deref() == Some("") {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "provider must not be empty; omit it for all providers"})),
        )
            .into_response();
    }
    let provider = target.provider.as_deref();
    let result = if pause {
        state.scheduler.pause(provider).await
    } else {
        state.scheduler.resume(provider).await
    };
    match result {
        Ok(()) => {
            tracing::warn!(
                target: LOG_TARGET,
                provider = provider.unwrap_or("*"),
                "admin: deliveries {}",
                if pause { "paused" } else { "resumed" }
            );
            axum::Json(state.scheduler.status()).into_response()
        }
        Err(e @ PauseError::UnknownProvider(_)) => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": e.to_string()})),
        )
            .into_response(),
        Err(e @ PauseError::NotRecorded(_)) => {
            tracing::error!(target: LOG_TARGET, error = %e, "admin: pause state not recorded");
            let mut body = serde_json::to_value(state.scheduler.status()).unwrap_or_default();
            if let Some(fields) = body.as_object_mut() {
                fields.insert("error".into(), json!(e.to_string()));
            }
            (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(body)).into_response()
        }
    }
}

async fn clear_shaping(
    State(state): State<AdminState>,
    Query(target): Query<ShapingTarget>,
) -> Response {
    let bad = |error: &str| {
        (StatusCode::BAD_REQUEST, axum::Json(json!({"error": error}))).into_response()
    };
    let target = match (target.provider.as_deref(), target.upstream.as_deref()) {
        (Some(""), _) => return bad("provider must not be empty; omit it for all providers"),
        (_, Some("")) => return bad("upstream must not be empty; omit it for all upstreams"),
        (Some(_), Some(_)) => return bad("name a provider or an upstream, not both"),
        (Some(p), None) => ClearTarget::Provider(p),
        (None, Some(u)) => ClearTarget::Upstream(u),
        (None, None) => ClearTarget::All,
    };
    match state.scheduler.clear_shaping(target).await {
        Ok(cleared) => {
            tracing::warn!(
                target: LOG_TARGET,
                provider = target_name(target, true),
                upstream = target_name(target, false),
                lifted = %cleared.providers.join(","),
                lifted_upstreams = %cleared.upstreams.join(","),
                "admin: shaping cleared"
            );
            let mut body = serde_json::to_value(state.scheduler.status()).unwrap_or_default();
            if let Some(fields) = body.as_object_mut() {
                fields.insert("shaping_cleared".into(), json!(cleared.providers));
                fields.insert("upstream_shaping_cleared".into(), json!(cleared.upstreams));
            }
            axum::Json(body).into_response()
        }
        Err(e) => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": e.to_string()})),
        )
            .into_response(),
    }
}

/// The provider (`provider`) or upstream a clear names for the log: `*` for all, `-` for the
/// other kind.
fn target_name(target: ClearTarget<'_>, provider: bool) -> &str {
    match (target, provider) {
        (ClearTarget::All, _) => "*",
        (ClearTarget::Provider(p), true) | (ClearTarget::Upstream(p), false) => p,
        _ => "-",
    }
}

async fn held(State(state): State<AdminState>, Query(q): Query<HeldQuery>) -> Response {
    axum::Json(json!({"held": state.scheduler.held(q.show_addresses)})).into_response()
}

async fn release(State(state): State<AdminState>, Path(id): Path<String>) -> Response {
    let result = state.scheduler.release(&id).await;
    decided(result, "released")
}

async fn drop_held(State(state): State<AdminState>, Path(id): Path<String>) -> Response {
    let result = state.scheduler.drop_held(&id).await;
    decided(result, "dropped")
}

fn decided(
    result: Result<crate::schedule::queue::HeldMessage, HoldError>,
    action: &str,
) -> Response {
    match result {
        Ok(message) => axum::Json(json!({"action": action, "message": message})).into_response(),
        Err(e @ HoldError::NotHeld(_)) => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": e.to_string()})),
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"error": e.to_string()})),
        )
            .into_response(),
    }
}

async fn reload(State(state): State<AdminState>) -> Response {
    let reloader = state.reloader.clone();
    let result = tokio::task::spawn_blocking(move || reloader.reload()).await;
    match result {
        Ok(Ok(report)) => axum::Json(ReloadAnswer {
            reloaded: true,
            restart_needed: report.restart_needed,
        })
        .into_response(),
        Ok(Err(e)) => {
            let code = match e {
                ReloadError::NoFile => StatusCode::CONFLICT,
                ReloadError::Invalid(_)
                | ReloadError::Upstream { .. }
                | ReloadError::InboundTls(_) => StatusCode::UNPROCESSABLE_ENTITY,
            };
            (
                code,
                axum::Json(json!({
                    "error": "reload refused; the running configuration stays",
                    "problems": e.problems(),
                })),
            )
                .into_response()
        }
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"error": "reload task failed"})),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[test]
    fn bearer_token_must_match_exactly() {
        let token = Secret::new("s3cret-token");
        assert!(bearer_matches(&headers("Bearer s3cret-token"), &token));
        assert!(!bearer_matches(&headers("Bearer s3cret-toke"), &token));
        assert!(!bearer_matches(&headers("Bearer s3cret-token2"), &token));
        assert!(!bearer_matches(&headers("Basic s3cret-token"), &token));
        assert!(!bearer_matches(&headers("s3cret-token"), &token));
        assert!(!bearer_matches(&HeaderMap::new(), &token));
    }
}
