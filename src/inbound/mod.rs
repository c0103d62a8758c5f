//! Inbound ESMTP listener on tokio with a sans-IO parser (`smtp-proto`).
//!
//! INTERFACE (to be implemented by the inbound work): [`serve`] accepts connections on a bound
//! listener until `shutdown` is cancelled, runs one session per connection, and hands every
//! complete message to the [`Acceptor`], whose [`Verdict`] becomes the reply to end of DATA.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{AccessConfig, ServerConfig};
use crate::envelope::{ClientInfo, Envelope};
use crate::observe::{Metrics, Redactor};
use crate::reply::Reply;

/// One complete inbound transaction at end of DATA.
#[derive(Debug)]
pub struct Transaction {
    pub envelope: Envelope,
    /// Message bytes: dot-unstuffed, every line ending in CRLF, without the final `.` line.
    pub message: Vec<u8>,
    pub client: ClientInfo,
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
}

/// Settings the listener needs; built from the config.
#[derive(Debug, Clone)]
pub struct InboundSettings {
    pub server: ServerConfig,
    pub access: AccessConfig,
}

/// Runs the listener until `shutdown` is cancelled; then stops accepting, lets transactions in
/// flight finish, answers idle sessions `421` and returns when every session has ended.
pub async fn serve<A: Acceptor>(
    _listener: TcpListener,
    _settings: Arc<InboundSettings>,
    _acceptor: Arc<A>,
    _metrics: Metrics,
    _redactor: Redactor,
    _shutdown: CancellationToken,
) -> std::io::Result<()> {
    unimplemented!("inbound::serve")
}
