//! `[metrics]` and `[admin]`: the two HTTP listeners (both served under `observe/serve.rs`).

use std::net::SocketAddr;

use super::raw::{RawAdmin, RawMetrics};
use super::values::{Problems, Secret};

/// `[metrics] max_connections` when unset: Prometheus servers, a load balancer's health checks
/// and a person with curl, a few each.
pub const DEFAULT_METRICS_CONNECTIONS: usize = 64;
/// `[admin] max_connections` when unset: `mailveil ctl` and automation, one request at a time.
pub const DEFAULT_ADMIN_CONNECTIONS: usize = 16;

#[derive(Debug, Clone)]
pub struct MetricsConfig {
    /// `None` disables the HTTP endpoint.
    pub listen: Option<SocketAddr>,
    /// Open connections at most; more are refused at once (see `observe/serve.rs`).
    pub max_connections: usize,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// The environment variable the token is read from (named in log lines, never its value).
    pub token_env: Option<String>,
    /// `None` when `token_env` is unset or empty: the admin API stays off.
    pub token: Option<Secret>,
    /// Open connections at most; more are refused at once (see `observe/serve.rs`).
    pub max_connections: usize,
}

pub(super) fn validate_metrics(raw: RawMetrics, p: &mut Problems) -> MetricsConfig {
    MetricsConfig {
        listen: raw.listen.and_then(|l| p.socket_addr("metrics.listen", &l)),
        max_connections: p.positive(
            "metrics.max_connections",
            raw.max_connections,
            DEFAULT_METRICS_CONNECTIONS,
        ),
    }
}

pub(super) fn validate_admin(raw: RawAdmin, p: &mut Problems) -> AdminConfig {
    let listen = p
        .socket_addr(
            "admin.listen",
            raw.listen.as_deref().unwrap_or("127.0.0.1:9726"),
        )
        .unwrap_or_else(|| ([127, 0, 0, 1], 9726).into());
    let token = raw
        .token_env
        .as_ref()
        .and_then(|var| match std::env::var(var) {
            Ok(v) if !v.is_empty() => Some(Secret::new(v)),
            _ => None,
        });
    AdminConfig {
        listen,
        token_env: raw.token_env,
        token,
        max_connections: p.positive(
            "admin.max_connections",
            raw.max_connections,
            DEFAULT_ADMIN_CONNECTIONS,
        ),
    }
}
