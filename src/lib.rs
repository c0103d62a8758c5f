//! mailveil: an SMTP relay that makes it impossible for an application to show one recipient
//! another recipient's address.
//!
//! Layout, in the order a message flows through it:
//! - [`config`]: the TOML file -> a typed, validated [`config::Config`] (all problems at once).
//! - [`inbound`]: tokio ESMTP listener (smtp-proto parser, STARTTLS, AUTH, limits).
//! - [`privacy`]: pure policy over message bytes: visible recipients, decision, header rewrite.
//! - [`spool`]: the message stored once and fsync'd before `250`, with per-delivery records.
//! - [`schedule`]: delivery queue, retries with backoff, failover between upstreams.
//! - [`upstream`]: lettre SMTP client with verified TLS, or a capture directory.
//! - [`observe`]: metrics, `/metrics` `/healthz` `/readyz`, address redaction for logs.
//! - [`sink`] and [`capture`]: the capture SMTP server and its on-disk format.
//! - [`envelope`], [`reply`]: types every stage speaks.
#![forbid(unsafe_code)]

pub mod capture;
pub mod config;
pub mod envelope;
#[doc(hidden)]
pub mod fuzzing;
pub mod inbound;
pub mod observe;
pub mod privacy;
pub mod relay;
pub mod reply;
pub mod schedule;
pub mod sink;
pub mod spool;
pub mod upstream;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use config::Config;
use observe::{Metrics, Redactor};
use schedule::Scheduler;
use spool::Spool;
use upstream::Upstream;

/// How long shutdown waits for SMTP transactions and deliveries in flight before exiting (the
/// rest stays spooled). Below Kubernetes' default 30 s termination grace period.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(25);

/// The sockets the relay serves on, bound by the caller (tests bind port 0).
pub struct Listeners {
    pub smtp: TcpListener,
    pub metrics: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses in the config.
    pub async fn bind(config: &Config) -> std::io::Result<Listeners> {
        let smtp = TcpListener::bind(config.server.listen).await?;
        let metrics = match config.metrics.listen {
            Some(addr) => Some(TcpListener::bind(addr).await?),
            None => None,
        };
        Ok(Listeners { smtp, metrics })
    }
}

/// Why the relay could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Spool(#[from] spool::SpoolError),
    #[error("upstream {name}: {source}")]
    Upstream {
        name: String,
        source: upstream::UpstreamError,
    },
    #[error("inbound listener: {0}")]
    Inbound(std::io::Error),
}

/// Runs the relay until `shutdown` is cancelled: recovers the spool, starts the delivery queue,
/// the metrics endpoint and the SMTP listener; on shutdown stops accepting, finishes what is in
/// flight within [`SHUTDOWN_GRACE`], and returns.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let spool = Arc::new(Spool::open(&config.spool.dir)?);
    let redactor = Redactor::new(config.log.show_addresses, spool.redaction_key()?);
    let metrics = Metrics::new();
    let mut upstreams = Vec::new();
    for u in &config.upstreams {
        let built = Upstream::from_config(u, &config.server.hostname).map_err(|source| {
            RunError::Upstream {
                name: u.name.clone(),
                source,
            }
        })?;
        upstreams.push(built);
    }
    let scheduler = Scheduler::new(
        spool.clone(),
        upstreams,
        &config,
        metrics.clone(),
        redactor.clone(),
    );
    let recovered = spool.recover()?;
    if !recovered.is_empty() {
        tracing::info!(
            messages = recovered.len(),
            "recovered spooled messages; delivering what is due"
        );
    }
    for r in recovered {
        scheduler.enqueue(r.meta, None, &r.log);
    }
    metrics.spool_bytes.set(spool.bytes() as i64);

    let readiness = observe::http::Readiness {
        listening: Arc::new(AtomicBool::new(false)),
        spool: spool.clone(),
    };
    let http = listeners.metrics.map(|listener| {
        let (metrics, readiness, shutdown) = (metrics.clone(), readiness.clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = observe::http::serve(listener, metrics, readiness, shutdown).await {
                tracing::error!(error = %e, "metrics endpoint failed");
            }
        })
    });

    let relay = Arc::new(relay::Relay::new(
        &config,
        spool.clone(),
        scheduler.clone(),
        metrics.clone(),
        redactor.clone(),
    ));
    let settings = Arc::new(inbound::InboundSettings {
        server: config.server.clone(),
        access: config.access.clone(),
    });
    if let Ok(addr) = listeners.smtp.local_addr() {
        tracing::info!(%addr, upstreams = config.upstreams.len(), privacy = ?config.privacy.mode, "mailveil listening");
    }
    readiness.listening.store(true, Ordering::Relaxed);
    let mut inbound = tokio::spawn(inbound::serve(
        listeners.smtp,
        settings,
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
    let inbound_result = match inbound_result {
        Some(r) => Some(r),
        None => {
            tracing::info!("shutting down: no new connections; finishing transactions in flight");
            // The listener sees the same token, answers idle sessions 421 and returns when its
            // sessions have ended.
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut inbound).await {
                Ok(r) => Some(r),
                Err(_) => {
                    tracing::warn!("SMTP sessions still open after the grace period; closing them");
                    inbound.abort();
                    None
                }
            }
        }
    };
    scheduler.shutdown(SHUTDOWN_GRACE).await;
    if let Some(h) = http {
        h.abort();
    }
    match inbound_result {
        Some(Ok(Err(e))) => Err(RunError::Inbound(e)),
        _ => Ok(()),
    }
}
