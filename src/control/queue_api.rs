//! The queue part of the admin API (behind the same bearer token as the rest, see
//! [`super::admin`]): what `mailveil ctl queue ...` calls.
//!
//! - `GET /queue`: messages with copies still to go, oldest first: `{"messages": [...]}`.
//!   Filters (all optional, combined): `provider=NAME`, `state=queued|deferred|held|active`
//!   (with `provider`: a copy of that provider in that state), `older_than=30m`,
//!   `rcpt=ADDRESS` (or the redacted form a log line shows, or its hash alone),
//!   `message_id=ID`. Addresses as in the log unless `show_addresses=true`. At most `limit`
//!   messages (default 1000, `0`: all), with `"total"` the number that passed the filters. A
//!   bad filter: `400`.
//! - `GET /queue/<id>` (`?show_addresses=true`): one message with each copy's state, attempts,
//!   first/last attempt, next attempt, last reply and upstream: `{"message": {...}}`; `404`.
//! - `POST /queue/retry?id=ID` | `?provider=NAME` | `?all=true` (exactly one): deferred copies
//!   due now: `{"retried": N}`; `404` for an unknown message or provider.
//! - `POST /queue/<id>/delete`, `POST /queue/<id>/bounce`: recorded and synced in the spool
//!   before the answer `{"id", "action", "removed", "in_flight", "bounces"}`; `404` when the
//!   message has no copies left; `500` when the spool could not record it (the copies are out
//!   of the queue, but a restart may send them).

use axum::Router;
use axum::extract::{FromRef, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use crate::schedule::Scheduler;
use crate::schedule::queue::view::{self, FilterArgs, QueueFilter};
use crate::schedule::queue::{ManageError, RetryTarget};

/// Same as `admin.rs`: the path its log lines always had.
const LOG_TARGET: &str = "mailveil::observe::admin";

/// The queue routes, merged into the admin router (under its token check); they need only
/// the scheduler from its state.
pub fn routes<S>() -> Router<S>
where
    Scheduler: FromRef<S>,
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/queue", get(list))
        .route("/queue/retry", post(retry))
        .route("/queue/{id}", get(show))
        .route("/queue/{id}/delete", post(delete))
        .route("/queue/{id}/bounce", post(bounce))
}

#[derive(Deserialize)]
struct ShowQuery {
    #[serde(default)]
    show_addresses: bool,
}

#[derive(Deserialize)]
struct RetryQuery {
    id: Option<String>,
    provider: Option<String>,
    #[serde(default)]
    all: bool,
}

fn error(code: StatusCode, text: impl std::fmt::Display) -> Response {
    (code, axum::Json(json!({"error": text.to_string()}))).into_response()
}

fn manage_error(e: ManageError) -> Response {
    let code = match e {
        ManageError::NotFound(_) | ManageError::UnknownProvider(_) => StatusCode::NOT_FOUND,
        ManageError::Spool(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(code, e)
}

async fn list(State(scheduler): State<Scheduler>, Query(args): Query<FilterArgs>) -> Response {
    let filter = match QueueFilter::parse(&args) {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let (show, limit) = (args.show_addresses, args.limit);
    // A Message-ID filter reads message files.
    let listed = tokio::task::spawn_blocking(move || scheduler.queue_list(&filter, show)).await;
    match listed {
        Ok(messages) => axum::Json(view::page(messages, limit)).into_response(),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "listing task failed"),
    }
}

async fn show(
    State(scheduler): State<Scheduler>,
    Path(id): Path<String>,
    Query(q): Query<ShowQuery>,
) -> Response {
    let key = id.clone();
    let found = tokio::task::spawn_blocking(move || scheduler.queue_show(&key, q.show_addresses));
    match found.await {
        Ok(Some(message)) => axum::Json(json!({"message": message})).into_response(),
        Ok(None) => manage_error(ManageError::NotFound(id)),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "lookup task failed"),
    }
}

async fn retry(State(scheduler): State<Scheduler>, Query(q): Query<RetryQuery>) -> Response {
    let target = match (q.id, q.provider, q.all) {
        (Some(id), None, false) if !id.is_empty() => RetryTarget::Message(id),
        (None, Some(p), false) if !p.is_empty() => RetryTarget::Provider(p),
        (None, None, true) => RetryTarget::All,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "name exactly one of id=ID, provider=NAME, all=true",
            );
        }
    };
    match scheduler.retry_now(&target) {
        Ok(n) => {
            tracing::warn!(target: LOG_TARGET, target = ?target, copies = n, "admin: queue retry");
            axum::Json(json!({"retried": n})).into_response()
        }
        Err(e) => manage_error(e),
    }
}

async fn delete(State(scheduler): State<Scheduler>, Path(id): Path<String>) -> Response {
    match scheduler.delete(&id).await {
        Ok(removal) => axum::Json(removal).into_response(),
        Err(e) => manage_error(e),
    }
}

async fn bounce(State(scheduler): State<Scheduler>, Path(id): Path<String>) -> Response {
    match scheduler.bounce(&id).await {
        Ok(removal) => axum::Json(removal).into_response(),
        Err(e) => manage_error(e),
    }
}
