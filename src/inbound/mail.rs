//! MAIL FROM: opens a transaction.
//!
//! The null sender `<>` (bounces) is accepted. Any other sender is stored in RFC 5321 form
//! (`path.rs`: a quoted local part stays quoted) or refused `501 5.1.7`. Parameters we advertise (`SIZE`, `BODY=7BIT`,
//! `BODY=8BITMIME`, `SMTPUTF8`) are honoured; anything else the parser understands but we did
//! not advertise (BINARYMIME, DSN, FUTURERELEASE, ...) is refused with `555 5.5.4` rather
//! than silently ignored, so a client never believes we promised a service we do not give.

use std::collections::HashSet;
use std::ops::Range;

use smtp_proto::{MAIL_BODY_7BIT, MAIL_BODY_8BITMIME, MAIL_SMTPUTF8, MailFrom};

use super::Acceptor;
use super::path::envelope_address;
use super::replies;
use super::session::{Draft, Flow, Rejection, Session, Stream};
use crate::config::{AppConfig, NO_APP};
use crate::reply::Reply;

/// MAIL flags that correspond to extensions in our EHLO answer.
const ADVERTISED_FLAGS: u64 = MAIL_BODY_7BIT | MAIL_BODY_8BITMIME | MAIL_SMTPUTF8;

impl<S: Stream, A: Acceptor> Session<S, A> {
    /// `line` is where the command sits in the read buffer (the raw path is checked too).
    pub(super) async fn mail(&mut self, from: MailFrom<String>, line: Range<usize>) -> Flow {
        if self.st.helo.is_none() {
            return self.reject(Rejection::BadSequence, &replies::HELO_FIRST);
        }
        let tls_required = self
            .ctx
            .settings
            .server
            .tls
            .as_ref()
            .is_some_and(|t| t.required);
        if tls_required && !self.st.tls {
            tracing::info!(peer = %self.st.peer, "MAIL before required STARTTLS refused");
            return self.reject(Rejection::TlsRequired, &replies::MUST_STARTTLS);
        }
        if self.st.tx.is_some() {
            return self.reject(Rejection::BadSequence, &replies::NESTED_MAIL);
        }
        // `<>` (and `<postmaster>`, which the parser folds into it) is the null sender.
        let mail_from = if from.address.is_empty() {
            String::new()
        } else {
            match envelope_address(&from.address, self.line(line)) {
                Ok(address) => address,
                Err(e) => {
                    tracing::debug!(peer = %self.st.peer, reason = %e, "MAIL address refused");
                    return self.reject(Rejection::Syntax, &replies::BAD_SENDER);
                }
            }
        };
        if !only_advertised(&from) {
            return self.reject(Rejection::Syntax, &replies::UNSUPPORTED_PARAM);
        }
        let app = self
            .ctx
            .settings
            .apps
            .recognise(self.st.user.as_deref(), self.st.peer.ip());
        if let Some(refusal) = self.sender_refusal(app.as_deref(), &mail_from) {
            return refusal;
        }
        if from.size as u64 > self.ctx.settings.server.max_message_size {
            tracing::info!(peer = %self.st.peer, declared = from.size, "MAIL SIZE over the limit refused");
            return self.reject(Rejection::Size, &replies::MESSAGE_TOO_BIG);
        }
        if self.ctx.acceptor.storage_full(from.size as u64) {
            tracing::info!(peer = %self.st.peer, "MAIL refused: the spool is at spool.max_bytes");
            return self.reject(Rejection::SpoolMaxBytes, &replies::STORAGE_FULL);
        }
        if from.size as u64 > self.ctx.data_budget.room() {
            tracing::info!(peer = %self.st.peer, declared = from.size, "MAIL refused: server.max_data_memory has no room for the declared size");
            return self.reject(Rejection::DataMemory, &replies::DATA_MEMORY_FULL);
        }
        let limits = app
            .as_ref()
            .and_then(|a| self.ctx.acceptor.app_limits(&a.name));
        if let Some(limits) = &limits
            && let Err(reply) = limits.admit_message().await
        {
            return self.reject_dyn(Rejection::AppLimit, &reply);
        }
        tracing::debug!(peer = %self.st.peer, from = %self.ctx.redactor.addr(&mail_from), "MAIL accepted");
        self.st.tx = Some(Draft {
            mail_from,
            rcpt_to: Vec::new(),
            rcpt_keys: HashSet::new(),
            declared_size: from.size,
            app,
            limits,
            reserved: Vec::new(),
        });
        self.reply(&replies::SENDER_OK);
        Flow::Continue
    }
}

impl<S: Stream, A: Acceptor> Session<S, A> {
    /// The `550 5.7.1` for a MAIL FROM the session's app may not use (or for a session with no
    /// app while `apps.require_app`), counted and logged with the rule's name; `None` if allowed.
    fn sender_refusal(&mut self, app: Option<&AppConfig>, mail_from: &str) -> Option<Flow> {
        let (name, reason, text) = match app {
            None if self.ctx.settings.apps.require_app => (
                NO_APP,
                "no_app",
                "this client belongs to no app (apps.require_app)".to_string(),
            ),
            None => return None,
            Some(app) if app.envelope_allowed(mail_from) => return None,
            Some(app) if mail_from.is_empty() => (
                app.name.as_str(),
                "null_sender",
                format!(
                    "null sender not allowed for app {} (allow_null_sender)",
                    app.name
                ),
            ),
            Some(app) => (
                app.name.as_str(),
                "senders",
                format!("sender not allowed for app {} (senders)", app.name),
            ),
        };
        self.ctx
            .metrics
            .app_sender_refusals
            .with_label_values(&[name, reason])
            .inc();
        tracing::info!(peer = %self.st.peer, app = name, rule = reason,
            from = %self.ctx.redactor.addr(mail_from), "MAIL refused: sender not allowed for the app");
        self.reply_dyn(&Reply::new(550, "5.7.1", text));
        Some(self.reject_counted(Rejection::SenderDenied))
    }
}

fn only_advertised(from: &MailFrom<String>) -> bool {
    from.flags & !ADVERTISED_FLAGS == 0
        && from.trans_id.is_none()
        && from.by == 0
        && from.env_id.is_none()
        && from.solicit.is_none()
        && from.mtrk.is_none()
        && from.auth.is_none()
        && from.hold_for == 0
        && from.hold_until == 0
        && from.mt_priority == 0
}
