//! EHLO / HELO: the greeting exchange and the extension list.
//!
//! What is advertised depends on the session: STARTTLS only while not yet under TLS, AUTH only
//! when users are configured *and* the session is under TLS, so a client never sees an offer
//! it would be refused (and never sends a password in clear text because we offered AUTH).

use std::io::Write;

use super::Acceptor;
use super::session::{Flow, Session, Stream};

impl<S: Stream, A: Acceptor> Session<S, A> {
    /// EHLO and HELO both reset any open transaction (RFC 5321 4.1.4).
    pub(super) fn ehlo(&mut self, host: String, extended: bool) -> Flow {
        self.st.tx = None;
        self.st.helo = Some(host);
        let offer_tls = self.ctx.tls.is_some() && !self.st.tls;
        let offer_auth = self.ctx.settings.access.auth_enabled() && self.st.tls;
        let server = &self.ctx.settings.server;
        let out = &mut self.st.wbuf;
        if !extended {
            let _ = write!(out, "250 {}\r\n", server.hostname);
            return Flow::Continue;
        }
        let _ = write!(out, "250-{}\r\n", server.hostname);
        let _ = write!(out, "250-PIPELINING\r\n");
        let _ = write!(out, "250-SIZE {}\r\n", server.max_message_size);
        let _ = write!(out, "250-8BITMIME\r\n");
        let _ = write!(out, "250-SMTPUTF8\r\n");
        if offer_tls {
            let _ = write!(out, "250-STARTTLS\r\n");
        }
        if offer_auth {
            let _ = write!(out, "250-AUTH PLAIN LOGIN\r\n");
        }
        let _ = write!(out, "250 ENHANCEDSTATUSCODES\r\n");
        Flow::Continue
    }
}
