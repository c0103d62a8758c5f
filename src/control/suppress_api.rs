//! The suppression list part of the admin API (behind the same bearer token as the rest, see
//! [`super::admin`]): what `mailveil ctl suppress ...` calls. Addresses travel in JSON bodies,
//! never in URLs (which proxies and access logs keep).
//!
//! - `POST /suppress` `{"address", "note"?, "expires"?: "30d"}`: on the list (with `[cluster]`
//!   for the fleet); `{"added": true}` (false: it was on it already, the entry is replaced).
//! - `POST /suppress/remove` `{"address"}`: `{"removed": true|false}`.
//! - `POST /suppress/check` `{"address"}`: `{"suppressed": bool, "entry"?: {...}}`.
//! - `GET /suppress`: `{"count", "entries": [{"hash", "reason", "added_at", ...}]}` (hashes only:
//!   the list keeps no addresses).
//!
//! A bad body or address: `400`; the change not stored (file or Redis): `503`.

use axum::Router;
use axum::extract::{FromRef, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use crate::schedule::Scheduler;
use crate::schedule::suppress::{Entry, Reason};

const LOG_TARGET: &str = "mailveil::observe::admin";

pub fn routes<S>() -> Router<S>
where
    Scheduler: FromRef<S>,
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/suppress", get(list).post(add))
        .route("/suppress/remove", post(remove))
        .route("/suppress/check", post(check))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBody {
    address: String,
    note: Option<String>,
    expires: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddressBody {
    address: String,
}

fn bad(text: impl std::fmt::Display) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": text.to_string()})),
    )
        .into_response()
}

fn unstored(text: impl std::fmt::Display) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(json!({"error": text.to_string()})),
    )
        .into_response()
}

/// An address as a recipient would be given: one `@`, something on both sides.
fn valid(address: &str) -> bool {
    let address = address.trim();
    address.len() <= 320
        && !address.contains(['<', '>', ' ', '\r', '\n'])
        && address
            .rsplit_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty())
}

fn parse<T: serde::de::DeserializeOwned>(body: &str) -> Result<T, String> {
    serde_json::from_str(body).map_err(|e| format!("bad JSON body: {e}"))
}

async fn add(State(scheduler): State<Scheduler>, body: String) -> Response {
    let body: AddBody = match parse(&body) {
        Ok(b) => b,
        Err(e) => return bad(e),
    };
    if !valid(&body.address) {
        return bad("address must be a mailbox such as user@example.com");
    }
    let now = crate::spool::unix_now();
    let expires_at = match body.expires.as_deref().map(humantime::parse_duration) {
        None => None,
        Some(Ok(d)) if !d.is_zero() => Some(now + d.as_secs()),
        Some(_) => return bad("expires must be a duration such as \"30d\""),
    };
    let entry = Entry {
        reason: Reason::Operator,
        added_at: now,
        app: None,
        note: body.note.map(|n| n.chars().take(200).collect()),
        expires_at,
    };
    let list = scheduler.suppressions();
    match list.add(&body.address, entry).await {
        Ok(added) => {
            tracing::warn!(target: LOG_TARGET, hash = %list.hash(&body.address), "admin: recipient put on the suppression list");
            axum::Json(json!({"added": added})).into_response()
        }
        Err(e) => unstored(e),
    }
}

async fn remove(State(scheduler): State<Scheduler>, body: String) -> Response {
    let body: AddressBody = match parse(&body) {
        Ok(b) => b,
        Err(e) => return bad(e),
    };
    let list = scheduler.suppressions();
    match list.remove(&body.address).await {
        Ok(removed) => {
            tracing::warn!(target: LOG_TARGET, hash = %list.hash(&body.address), removed, "admin: recipient taken off the suppression list");
            axum::Json(json!({"removed": removed})).into_response()
        }
        Err(e) => unstored(e),
    }
}

async fn check(State(scheduler): State<Scheduler>, body: String) -> Response {
    let body: AddressBody = match parse(&body) {
        Ok(b) => b,
        Err(e) => return bad(e),
    };
    match scheduler.suppressions().check(&body.address) {
        Some(entry) => axum::Json(json!({"suppressed": true, "entry": entry})).into_response(),
        None => axum::Json(json!({"suppressed": false})).into_response(),
    }
}

async fn list(State(scheduler): State<Scheduler>) -> Response {
    let entries: Vec<serde_json::Value> = scheduler
        .suppressions()
        .list()
        .into_iter()
        .map(|(hash, entry)| {
            let mut v = serde_json::to_value(entry).unwrap_or_default();
            if let Some(fields) = v.as_object_mut() {
                fields.insert("hash".into(), json!(hash));
            }
            v
        })
        .collect();
    axum::Json(json!({"count": entries.len(), "entries": entries})).into_response()
}
