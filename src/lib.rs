//! mailveil: an SMTP relay that makes it impossible for an application to show one recipient
//! another recipient's address.
//!
//! Layout, in the order a message flows through it:
//! - [`config`]: the TOML file -> a typed, validated [`config::Config`] (all problems at once).
//! - [`inbound`]: tokio ESMTP listener (smtp-proto parser, STARTTLS, AUTH, limits).
//! - [`privacy`]: pure policy over message bytes: visible recipients, decision, header rewrite.
//! - [`spool`]: the message stored once and fsync'd before `250`, with per-delivery records.
//! - [`schedule`]: delivery queue, retries with backoff, failover between upstreams.
//! - [`events`]: each app's delivery events: JSON-lines outbox and signed webhook.
//! - [`dkim`]: re-signs each copy after its rewrite with the key for its `From:` domain.
//! - [`upstream`]: our pipelining SMTP client with verified TLS, or a capture directory.
//! - [`observe`]: metrics, `/metrics` `/healthz` `/readyz`, the limits HTTP listeners are served
//!   under, address redaction for logs.
//! - [`control`]: the admin API (pause/resume/status/held/reload), its `ctl` client, and hot
//!   reload (SIGHUP, `POST /reload`) of a validated config into the running relay.
//! - [`sink`] and [`capture`]: the capture SMTP server and its on-disk format.
//! - [`private_files`]: spool and capture files 0600 in 0700 directories, whatever the umask.
//! - [`envelope`], [`reply`]: types every stage speaks.
#![forbid(unsafe_code)]

pub mod capture;
pub mod config;
pub mod control;
pub mod credentials;
pub mod dkim;
pub mod envelope;
pub mod events;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod inbound;
pub mod observe;
pub mod privacy;
pub mod private_files;
pub mod relay;
pub mod reply;
pub mod schedule;
pub mod sink;
pub mod spool;
pub mod tenant;
pub mod text;
pub mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use config::{AdminConfig, Config, MetricsConfig, ServerConfig, UpstreamKind};
use control::reload;
use observe::serve::HttpLimits;
use observe::{Metrics, Redactor};
use schedule::Scheduler;
use spool::Spool;
use upstream::Upstream;

/// The sockets the relay serves on, bound by the caller (tests bind port 0).
pub struct Listeners {
    pub smtp: TcpListener,
    pub metrics: Option<TcpListener>,
    /// The admin API; only served when an admin token is configured.
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses in the config sections. The admin address is bound only when a
    /// token is configured (without one the API is off and its port stays free). The error
    /// names the listener, its address and its key.
    pub async fn bind(
        server: &ServerConfig,
        metrics: &MetricsConfig,
        admin: Option<&AdminConfig>,
    ) -> Result<Listeners, ListenError> {
        let smtp = listen("SMTP", "server.listen", server.listen).await?;
        let metrics = match metrics.listen {
            Some(addr) => Some(listen("metrics", "metrics.listen", addr).await?),
            None => None,
        };
        let admin = match admin {
            Some(a) if a.token.is_some() => Some(listen("admin", "admin.listen", a.listen).await?),
            _ => None,
        };
        Ok(Listeners {
            smtp,
            metrics,
            admin,
        })
    }
}

/// A listener that could not be opened: which one, where, and why in plain words.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on the {listener} listener {addr} ({key}): {}", listen_words(.addr, .error))]
pub struct ListenError {
    /// `SMTP`, `metrics` or `admin`.
    pub listener: &'static str,
    /// The config key of the address.
    pub key: &'static str,
    pub addr: SocketAddr,
    /// Not a `source`: its text is part of this error's own.
    pub error: std::io::Error,
}

async fn listen(
    listener: &'static str,
    key: &'static str,
    addr: SocketAddr,
) -> Result<TcpListener, ListenError> {
    TcpListener::bind(addr).await.map_err(|error| ListenError {
        listener,
        key,
        addr,
        error,
    })
}

fn listen_words(addr: &SocketAddr, e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::AddrInUse => "address already in use (another process listens there)".into(),
        ErrorKind::PermissionDenied if addr.port() < 1024 => {
            "permission denied: ports below 1024 need root or CAP_NET_BIND_SERVICE".into()
        }
        ErrorKind::AddrNotAvailable => format!(
            "address not available: no network interface of this machine has {}",
            addr.ip()
        ),
        _ => config::io_words(e),
    }
}

/// An error and its causes on one line, each text once: many errors already show their
/// source's text in their own (thiserror's `{source}` and many libraries' own), so
/// printing the chain as is would say everything twice.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        next = cause.source();
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in text.split(": ") {
        if parts.last() != Some(&part) {
            parts.push(part);
        }
    }
    parts.join(": ")
}

/// How the running relay can be told to reload.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The file the config came from; reloads read it again. `None`: reloads are refused.
    pub config_path: Option<PathBuf>,
    /// Reload on SIGHUP (the `mailveil run` process; not tests running in-process).
    pub reload_on_sighup: bool,
}

/// Why the relay could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Spool(#[from] spool::SpoolError),
    #[error("upstream {name}: {error}")]
    Upstream {
        name: String,
        /// Not a `source`: its text is part of this error's own (shown once).
        error: upstream::UpstreamError,
    },
    #[error("inbound listener: {0}")]
    Inbound(std::io::Error),
    /// `SPOOL/suppression.json` or `.key` cannot be read: starting would send to suppressed
    /// recipients, so the relay does not start.
    #[error("suppression list: {0}")]
    Suppressions(std::io::Error),
}

/// Runs the relay until `shutdown` is cancelled: recovers the spool, starts the delivery queue,
/// the metrics endpoint and the SMTP listener; on shutdown stops accepting, drains the queue
/// (or hands it off) within `spool.drain_timeout`, logs what is left, and returns. Without a
/// config file to reload from.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    run_with(config, listeners, shutdown, RunOptions::default()).await
}

/// [`run`] with hot reload from `options.config_path` (SIGHUP and `POST /reload`).
pub async fn run_with(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
    options: RunOptions,
) -> Result<(), RunError> {
    config.log_warnings();
    let spool = Arc::new(Spool::open(&config.spool.dir)?);
    for u in &config.upstreams {
        // Capture directories hold whole messages: the relay's user only (created if missing).
        if let UpstreamKind::Dir { dir } = &u.kind
            && let Err(e) = private_files::tighten_dir(dir)
        {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot make the capture directory private");
        }
    }
    let redactor = Redactor::new(config.log.show_addresses, spool.redaction_key()?);
    let metrics = Metrics::new();
    let upstreams = Upstream::build_all(&config.upstreams, &config.server.hostname, &redactor)
        .map_err(|(name, error)| RunError::Upstream { name, error })?;
    let upstream_names: Vec<String> = upstreams.iter().map(|u| u.name.clone()).collect();
    let suppressions = schedule::suppress::Suppressions::open(spool.root(), metrics.clone())
        .map_err(RunError::Suppressions)?;
    let scheduler = Scheduler::new(
        spool.clone(),
        upstreams,
        reload::scheduler_config(&config),
        config.cluster.as_ref(),
        metrics.clone(),
        redactor.clone(),
        suppressions,
    );
    let recovered = spool.recover()?;
    metrics
        .spool_corrupt_batches
        .inc_by(spool.corrupt_batches());
    if !recovered.is_empty() {
        tracing::info!(
            messages = recovered.len(),
            "recovered spooled messages; delivering what is due"
        );
    }
    for r in recovered {
        scheduler.enqueue_recovered(r);
    }
    metrics.spool_bytes.set(spool.bytes() as i64);

    let readiness = observe::http::Readiness {
        listening: Arc::new(AtomicBool::new(false)),
        spool: spool.clone(),
    };
    // The HTTP listeners outlive the SMTP listener: the drain is watched through them.
    let http_stop = CancellationToken::new();
    let http = listeners.metrics.map(|listener| {
        let (metrics, readiness, shutdown) =
            (metrics.clone(), readiness.clone(), http_stop.clone());
        let limits = HttpLimits::with_max_connections(config.metrics.max_connections);
        tokio::spawn(async move {
            if let Err(e) =
                observe::http::serve(listener, metrics, readiness, limits, shutdown).await
            {
                tracing::error!(error = %e, "metrics endpoint failed");
            }
        })
    });

    let relay = Arc::new(relay::Relay::new(
        reload::relay_rules(&config),
        spool.clone(),
        scheduler.clone(),
        metrics.clone(),
        redactor.clone(),
    ));
    metrics.init_series(relay.scheduler.routing().catalog.names(), &upstream_names);
    metrics.init_rejection_reasons(&inbound::rejection_reasons());
    metrics.init_apps(&config.apps.names(), &[]);
    metrics.init_auth_logins(config.access.logins());
    let live = inbound::LiveInbound::new(inbound::InboundSettings {
        server: config.server.clone(),
        access: config.access.clone(),
        apps: config.apps.clone(),
    })
    .map_err(|e| RunError::Inbound(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
    let reloader = Arc::new(reload::Reloader::new(
        options.config_path.clone(),
        config.clone(),
        live.clone(),
        relay.clone(),
        scheduler.clone(),
        metrics.clone(),
    ));
    if options.reload_on_sighup {
        spawn_sighup_reload(reloader.clone(), shutdown.clone());
    }
    let admin = serve_admin(
        config.admin.as_ref(),
        listeners.admin,
        &scheduler,
        &relay,
        &reloader,
        &metrics,
        &http_stop,
    );
    if let Ok(addr) = listeners.smtp.local_addr() {
        tracing::info!(%addr, upstreams = config.upstreams.len(), privacy = ?config.privacy.mode, "mailveil listening");
    }
    readiness.listening.store(true, Ordering::Relaxed);
    let mut inbound = tokio::spawn(inbound::serve_live(
        listeners.smtp,
        live,
        relay,
        metrics.clone(),
        redactor,
        shutdown.clone(),
    ));
    let inbound_result = tokio::select! {
        r = &mut inbound => Some(r),
        _ = shutdown.cancelled() => None,
    };
    readiness.listening.store(false, Ordering::Relaxed);
    // The drain starts now (with the hand-off, if configured), while sessions finish.
    let (deadline, drain_timeout) = scheduler.begin_drain();
    let last_start = deadline
        .checked_sub(schedule::queue::in_flight_allowance(drain_timeout))
        .unwrap_or(deadline);
    let inbound_result = match inbound_result {
        Some(r) => Some(r),
        None => {
            tracing::info!("shutting down: no new connections; finishing transactions in flight");
            // The listener sees the same token, answers idle sessions 421 and returns when its
            // sessions have ended.
            match tokio::time::timeout_at(last_start, &mut inbound).await {
                Ok(r) => Some(r),
                Err(_) => {
                    tracing::warn!(
                        "SMTP sessions still open at the drain deadline; closing them (their clients heard no 250)"
                    );
                    inbound.abort();
                    None
                }
            }
        }
    };
    let report = scheduler.drain(deadline, drain_timeout).await;
    let flushing = spool.clone();
    let _ = tokio::task::spawn_blocking(move || flushing.flush()).await;
    http_stop.cancel();
    for h in [http, admin].into_iter().flatten() {
        h.abort();
    }
    log_what_is_left(&report);
    match inbound_result {
        Some(Ok(Err(e))) => Err(RunError::Inbound(e)),
        _ => Ok(()),
    }
}

/// The last log line: what the drain left in the spool, by provider.
fn log_what_is_left(report: &schedule::queue::DrainReport) {
    let left = report.total();
    let handoff = report.handoff.as_deref().unwrap_or("(none)");
    if left == 0 {
        tracing::info!(
            remaining = 0,
            handoff_upstream = handoff,
            handed_off = report.handed_off,
            "stopped: nothing left in the spool"
        );
    } else {
        let providers = report.summary();
        tracing::warn!(
            remaining = left,
            %providers,
            handoff_upstream = handoff,
            handed_off = report.handed_off,
            "stopped: {left} copies left in the spool ({providers}); they are sent at the next start"
        );
    }
}

/// Starts the admin API when a token is configured; otherwise says why it is off.
fn serve_admin(
    config: Option<&AdminConfig>,
    listener: Option<TcpListener>,
    scheduler: &Scheduler,
    relay: &Arc<relay::Relay>,
    reloader: &Arc<reload::Reloader>,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    let Some(admin) = config else {
        tracing::info!("admin API disabled: no [admin] section");
        return None;
    };
    let Some(token) = admin.token.clone() else {
        tracing::warn!(
            token_env = admin.token_env.as_deref().unwrap_or("(unset)"),
            "admin API disabled: admin.token_env names no non-empty environment variable"
        );
        return None;
    };
    let listener = listener?;
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "admin API listening");
    }
    let state = control::admin::AdminState {
        token,
        scheduler: scheduler.clone(),
        relay: relay.clone(),
        reloader: reloader.clone(),
    };
    let (metrics, shutdown) = (metrics.clone(), shutdown.clone());
    let limits = HttpLimits::with_max_connections(admin.max_connections);
    Some(tokio::spawn(async move {
        if let Err(e) = control::admin::serve(listener, state, limits, metrics, shutdown).await {
            tracing::error!(error = %e, "admin API failed");
        }
    }))
}

/// Reloads the config on every SIGHUP until shutdown. Installed before the relay reports ready,
/// so a SIGHUP never hits the default action (terminate).
fn spawn_sighup_reload(reloader: Arc<reload::Reloader>, shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install the SIGHUP handler; reload via the admin API only");
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                got = hup.recv() => if got.is_none() { return },
            }
            tracing::info!("SIGHUP received: reloading the configuration");
            let reloader = reloader.clone();
            // The outcome is logged by `reload` itself.
            let _ = tokio::task::spawn_blocking(move || reloader.reload()).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[test]
    fn an_error_chain_says_each_text_once() {
        let io = std::io::Error::from_raw_os_error(13);
        let spool = crate::spool::SpoolError::Io {
            path: "/spool/msg".into(),
            source: io,
        };
        let text = error_chain(&spool);
        assert_eq!(text.matches("Permission denied").count(), 1, "{text}");
        assert!(text.starts_with("spool I/O on /spool/msg: "), "{text}");

        #[derive(Debug, thiserror::Error)]
        #[error("Connection error: {0}")]
        struct Wrapped(String);
        let text = error_chain(&Wrapped("Connection error: refused".into()));
        assert_eq!(text, "Connection error: refused");
    }
}
