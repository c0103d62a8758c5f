//! STARTTLS (RFC 3207): the rustls acceptor, built once, and the upgrade that turns a
//! `Session<S>` into a `Session<TlsStream<S>>`.
//!
//! STARTTLS injection (CVE-2011-0411 class): bytes a client pipelined after `STARTTLS` arrive
//! in clear text, yet a careless server would execute them as if they came under TLS. Here the
//! read buffer is dropped the moment STARTTLS is accepted, and the TLS session starts from an
//! empty buffer and a fresh state (`State::after_starttls` clears it again: two independent
//! guards, so a later edit to one cannot reopen the hole). Bytes that arrive after our read
//! reach rustls as a malformed handshake and end the connection.

use std::sync::Arc;

use tokio_rustls::TlsAcceptor;

use super::replies;
use super::session::{End, Flow, Rejection, Session, State, Stream};
use super::{Acceptor, InboundError};
use crate::config::InboundTlsConfig;

/// Loads the certificate chain and key and builds the acceptor. Called once by `serve` and at
/// every reload; config validation (`check-config`, `run`) loads the files through the same
/// [`crate::config::tls::server_config`], so a key that does not match its certificate, a
/// swapped pair or an unusable key type is a config problem before anything listens.
///
/// Uses the aws-lc-rs provider explicitly, never the process default, so that no other crate's
/// choice of provider can make rustls panic on an ambiguous default.
pub fn acceptor(cfg: &InboundTlsConfig) -> Result<TlsAcceptor, InboundError> {
    let config = crate::config::tls::server_config(&cfg.cert, &cfg.key)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

impl<S: Stream, A: Acceptor> Session<S, A> {
    pub(super) fn starttls(&mut self) -> Flow {
        if self.ctx.tls.is_none() {
            return self.reject(Rejection::NotImplemented, &replies::TLS_NOT_AVAILABLE);
        }
        if self.st.tls {
            return self.reject(Rejection::BadSequence, &replies::ALREADY_TLS);
        }
        self.reply(&replies::READY_TLS);
        let dropped = self.st.discard_input();
        if dropped > 0 {
            tracing::info!(peer = %self.st.peer, bytes = dropped, "discarded input pipelined after STARTTLS");
        }
        Flow::StartTls
    }
}

/// Runs the handshake (bounded by `command_timeout`, and for an outsider by its AUTH deadline)
/// and the rest of the session under TLS. Returns the outcome and the connection's final state.
pub(super) async fn upgrade<S: Stream, A: Acceptor>(
    session: Session<S, A>,
) -> (Result<(), InboundError>, State) {
    let (stream, ctx, state) = session.into_parts();
    let Some(acceptor) = ctx.tls.clone() else {
        // `starttls` never asks for an upgrade without an acceptor.
        return (Ok(()), state);
    };
    let (deadline, expired) =
        state.limit(tokio::time::Instant::now() + ctx.settings.server.command_timeout);
    let tls = match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return (Err(InboundError::Handshake(e)), state),
        Err(_) => {
            // Mid-handshake nothing can be said in clear text: the connection just closes.
            if expired == End::NotAuthenticated {
                ctx.metrics
                    .inbound_rejections
                    .with_label_values(&[Rejection::UnauthenticatedTimeout.reason()])
                    .inc();
                tracing::info!(
                    peer = %state.peer,
                    helo = %state.helo_for_log(),
                    "inbound connection closed: not authenticated in time (TLS handshake)"
                );
            }
            return (Err(InboundError::HandshakeTimeout), state);
        }
    };
    let mut session = Session::from_parts(tls, ctx, state.after_starttls());
    // Under TLS `starttls` refuses, so `run` cannot ask for a second upgrade.
    let result = session.run().await.map(|_| ());
    (result, session.st)
}
