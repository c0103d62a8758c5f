//! Inbound settings that a reload can replace while the listener runs.
//!
//! The listener reads the current [`Snapshot`] when it accepts a connection; a session keeps the
//! snapshot it started with until it ends. So a reload (new limits, users, certificate files)
//! applies to new sessions at once and never changes the rules under a client mid-session, and
//! no connection is dropped to apply it.

use std::sync::{Arc, RwLock};

use tokio_rustls::TlsAcceptor;

use super::{InboundError, InboundSettings, tls};

/// The settings and the TLS acceptor built from them, swapped as one.
pub struct Snapshot {
    pub settings: Arc<InboundSettings>,
    /// Present when `server.tls` is configured: STARTTLS is offered.
    pub tls: Option<TlsAcceptor>,
}

/// A shared, replaceable [`Snapshot`]. Cheap to clone; every clone sees replacements.
#[derive(Clone)]
pub struct LiveInbound {
    cell: Arc<RwLock<Arc<Snapshot>>>,
}

impl LiveInbound {
    /// Builds the first snapshot; fails when the certificate or key cannot be loaded.
    pub fn new(settings: InboundSettings) -> Result<LiveInbound, InboundError> {
        Ok(LiveInbound {
            cell: Arc::new(RwLock::new(Arc::new(build(settings)?))),
        })
    }

    /// Replaces the settings for sessions that start from now on. The TLS acceptor is rebuilt
    /// from the (possibly rotated) certificate files first: if they do not load, nothing changes
    /// and the error says why.
    pub fn replace(&self, settings: InboundSettings) -> Result<(), InboundError> {
        let next = Arc::new(build(settings)?);
        *self.cell.write().expect("not poisoned") = next;
        Ok(())
    }

    /// What a session accepted now runs with.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.cell.read().expect("not poisoned").clone()
    }
}

fn build(settings: InboundSettings) -> Result<Snapshot, InboundError> {
    let tls = match &settings.server.tls {
        Some(cfg) => Some(tls::acceptor(cfg)?),
        None => None,
    };
    Ok(Snapshot {
        settings: Arc::new(settings),
        tls,
    })
}
