//! Inbound ESMTP listener on tokio with a sans-IO parser (`smtp-proto`).
//!
//! [`serve`] accepts connections on a bound listener until `shutdown` is cancelled, runs one
//! session per connection, and hands every complete message to the [`Acceptor`], whose
//! [`Verdict`] becomes the reply to end of DATA.
//!
//! Layout (one file per concern, protocol code free of I/O where it can be):
//! - `listener.rs`: accept loop, shutdown and session tracking, and the per-connection driver
//!   (greeting, STARTTLS upgrade, open/close log lines).
//! - `admission.rs`: who gets a slot: `max_connections`, slots reserved for clients in
//!   `access.networks`, a cap per source address; the outsider's AUTH deadline starts there.
//! - `auth_budget.rs`: AUTH failures budgeted per source and for the relay (token buckets),
//!   with a temporary ban.
//! - `session.rs`: per-connection state, the read/write buffers, the command loop, limits.
//! - `ehlo.rs`, `mail.rs`, `rcpt.rs`, `data.rs`, `auth.rs`: one file per SMTP verb.
//! - `path.rs`: the MAIL/RCPT address as stored (RFC 5321 form, quoted local parts kept).
//! - `dot.rs`: the sans-IO DATA decoder (end-of-data, dot-unstuffing, bare CR and bare LF
//!   stored as CRLF, NUL refused, size cap).
//! - `tls.rs`: building the rustls acceptor and the STARTTLS upgrade of a session.
//! - `live.rs`: the settings snapshot a reload replaces; each session keeps the one it began with.
//! - `access.rs`: who may relay (networks or AUTH); never an open relay.
//! - `replies.rs`: every fixed reply the listener sends, in one place; `rejection.rs`: why,
//!   as the bounded `reason` label of `mailveil_inbound_rejections_total`.

mod access;
mod admission;
mod auth;
mod auth_budget;
mod data;
mod dot;
mod ehlo;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzz;
mod listener;
mod live;
mod mail;
pub(crate) mod memory;
mod path;
mod rcpt;
mod rejection;
mod replies;
mod session;
pub mod tls;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{AccessConfig, AppConfig, AppsConfig, ServerConfig};
use crate::envelope::{ClientInfo, Envelope};
use crate::observe::{Metrics, Redactor};
use crate::reply::Reply;

pub use dot::{DotDecoder, Feed};
pub use live::{LiveInbound, Snapshot};
pub use rejection::SPOOL_MAX_BYTES_REASON;

/// Every `reason` label of `mailveil_inbound_rejections_total` the listener can use.
pub fn rejection_reasons() -> Vec<&'static str> {
    rejection::Rejection::ALL
        .iter()
        .map(|r| r.reason())
        .collect()
}

/// One complete inbound transaction at end of DATA.
#[derive(Debug)]
pub struct Transaction {
    pub envelope: Envelope,
    /// Message bytes: dot-unstuffed, every line ending in CRLF, without the final `.` line;
    /// never a bare CR, a bare LF or a NUL.
    pub message: Vec<u8>,
    pub client: ClientInfo,
    /// The app the session belongs to (`[[app]]`), recognised at MAIL; its `header_senders`
    /// and privacy overrides apply at end of DATA.
    pub app: Option<Arc<AppConfig>>,
}

/// The answer to end of DATA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Stored durably (fsync'd); answered `250 2.0.0 queued as <queue_id>`.
    Accepted { queue_id: String },
    /// Answered with this reply (e.g. `550 5.7.1` privacy reject, `452 4.3.1` spool full).
    Rejected(Reply),
}

/// Receives messages from sessions. Implemented by the relay (privacy policy + spool).
pub trait Acceptor: Send + Sync + 'static {
    fn accept(&self, tx: Transaction) -> impl Future<Output = Verdict> + Send;

    /// Whether a new transaction would be refused for storage now (checked at MAIL, with the
    /// size the client declared, 0 if none): answered `452 4.3.1`. The relay says so while
    /// the spool is at `spool.max_bytes`. By default never.
    fn storage_full(&self, _declared_size: u64) -> bool {
        false
    }

    /// The limits (`[app.limits]`) of the app named `app`: its rate is asked at MAIL, its daily
    /// quota at each RCPT. By default none.
    fn app_limits(&self, _app: &str) -> Option<Arc<crate::schedule::app_limits::AppLimits>> {
        None
    }
}

/// Settings the listener needs; built from the config.
#[derive(Debug, Clone)]
pub struct InboundSettings {
    pub server: ServerConfig,
    pub access: AccessConfig,
    /// `[apps]`/`[[app]]`: a session's app is recognised at MAIL (`mail.rs`).
    pub apps: AppsConfig,
}

/// Why the listener could not start or a connection ended abnormally.
///
/// Expected session outcomes (client quit, timeout, shutdown) are not errors; these are the
/// failures an operator or the connection log needs to see.
#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    /// The `[server.tls]` files cannot be used (at start, they are a config problem already).
    #[error("{0}")]
    TlsFiles(#[from] crate::config::tls::TlsFileProblem),
    #[error("TLS handshake failed: {0}")]
    Handshake(std::io::Error),
    #[error("TLS handshake timed out")]
    HandshakeTimeout,
    #[error("connection I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl InboundError {
    /// True when the failure belongs to one client connection rather than to the listener's
    /// configuration; such errors are logged at debug level and never stop the listener.
    pub fn is_connection_error(&self) -> bool {
        match self {
            InboundError::Handshake(_) | InboundError::HandshakeTimeout | InboundError::Io(_) => {
                true
            }
            InboundError::TlsFiles(_) => false,
        }
    }
}

/// Runs the listener until `shutdown` is cancelled; then stops accepting, lets transactions in
/// flight finish, answers idle sessions `421` and returns when every session has ended.
///
/// The TLS certificate is loaded here when `server.tls` is set; a bad file is returned as an
/// `InvalidInput` error before any connection is accepted (call [`tls::acceptor`] at startup
/// to report it with its own message).
pub async fn serve<A: Acceptor>(
    listener: TcpListener,
    settings: Arc<InboundSettings>,
    acceptor: Arc<A>,
    metrics: Metrics,
    redactor: Redactor,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let live = LiveInbound::new((*settings).clone())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    serve_live(listener, live, acceptor, metrics, redactor, shutdown).await
}

/// Like [`serve`], with settings a reload can replace: each new session takes the current
/// [`LiveInbound::snapshot`]; sessions already open keep theirs.
pub async fn serve_live<A: Acceptor>(
    listener: TcpListener,
    live: LiveInbound,
    acceptor: Arc<A>,
    metrics: Metrics,
    redactor: Redactor,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let snapshot = live.snapshot();
    let admission = admission::Admission::new(&snapshot.settings);
    let data_budget = memory::DataBudget::new(
        snapshot.settings.server.max_data_memory,
        metrics.data_memory_bytes.clone(),
        &metrics.data_memory_max_bytes,
    );
    let ctx = session::Context {
        settings: snapshot.settings.clone(),
        acceptor,
        metrics,
        redactor,
        shutdown,
        tls: snapshot.tls.clone(),
        tuning: session::Tuning::default(),
        admission,
        data_budget,
    };
    listener::run(listener, Arc::new(ctx), Some(live)).await
}
