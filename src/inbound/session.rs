//! One SMTP session: its state, its buffers and the command loop.
//!
//! Over ~500 lines on purpose: one state machine (state, buffers, read/reply loop), kept whole;
//! each verb is already in a file of its own.
//!
//! The session is split the way the verbs need it: [`Context`] is shared by every connection
//! (settings, acceptor, metrics, TLS acceptor), [`State`] is what this connection knows (HELO
//! name, TLS, user, the open transaction, counters, buffers), and [`Session`] adds the stream.
//! Keeping `State` free of the stream type is what lets STARTTLS turn `Session<S>` into
//! `Session<TlsStream<S>>` (see `tls.rs`).
//!
//! Pipelining: every complete command already in the read buffer is answered before the
//! socket is read again, and replies are written in one batch when the buffer runs dry (or
//! before a step that waits for the client: `354` and STARTTLS).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use smtp_proto::{Error as ParseError, Request};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::admission::{Admission, Ticket};
pub(super) use super::rejection::Rejection;
use super::replies::{self, Fixed};
use super::{Acceptor, InboundError, InboundSettings};
use crate::observe::log::escaped;
use crate::observe::{Metrics, Redactor};
use crate::reply::Reply;

/// The byte streams a session runs over: TCP, TLS over TCP, or a test duplex.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// How much the socket is asked for at once; also the minimum spare room kept in the buffer.
const READ_CHUNK: usize = 16 * 1024;

/// Abuse limits that are not in the config file (tests shorten the delay).
#[derive(Debug, Clone)]
pub(crate) struct Tuning {
    /// Client mistakes before `421 4.7.0` (RFC 5321 lets a server close on repeated errors).
    pub max_errors: u32,
    /// Failed AUTH attempts before the connection is closed.
    pub max_auth_failures: u32,
    /// Pause before answering a failed AUTH, times the number of failures so far on the
    /// connection (1x, 2x, ...), slowing password guessing.
    pub auth_failure_delay: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            max_errors: 20,
            max_auth_failures: 3,
            auth_failure_delay: Duration::from_secs(1),
        }
    }
}

/// Everything sessions share, built once by `serve`.
pub(crate) struct Context<A> {
    pub settings: Arc<InboundSettings>,
    pub acceptor: Arc<A>,
    pub metrics: Metrics,
    pub redactor: Redactor,
    pub shutdown: CancellationToken,
    /// Present when `server.tls` is configured: STARTTLS is offered.
    pub tls: Option<TlsAcceptor>,
    pub tuning: Tuning,
    /// Connection slots and the AUTH failure budget; one for the listener's lifetime.
    pub admission: Arc<Admission>,
    /// DATA held in memory by all sessions (`server.max_data_memory`); one per listener.
    pub data_budget: Arc<super::memory::DataBudget>,
}

impl<A> Context<A> {
    /// The same context with another settings snapshot (after a reload).
    pub fn with_snapshot(&self, snapshot: &super::Snapshot) -> Context<A> {
        Context {
            settings: snapshot.settings.clone(),
            acceptor: self.acceptor.clone(),
            metrics: self.metrics.clone(),
            redactor: self.redactor.clone(),
            shutdown: self.shutdown.clone(),
            tls: snapshot.tls.clone(),
            tuning: self.tuning.clone(),
            admission: self.admission.clone(),
            data_budget: self.data_budget.clone(),
        }
    }
}

/// The transaction being built between MAIL and end of DATA.
#[derive(Debug)]
pub(super) struct Draft {
    /// Addresses in RFC 5321 form (see `path.rs`).
    pub mail_from: String,
    /// Distinct recipients, in the order first given.
    pub rcpt_to: Vec<String>,
    /// [`crate::privacy::address::key`] of each of `rcpt_to`: a second RCPT for the same
    /// mailbox is answered `250` but not added again.
    pub rcpt_keys: HashSet<String>,
    /// `SIZE=` from MAIL, used to size the message buffer up front.
    pub declared_size: usize,
    /// The session's app at MAIL (`[[app]]`), if any.
    pub app: Option<Arc<crate::config::AppConfig>>,
    /// The app's limits (`[app.limits]`), when it has any.
    pub limits: Option<Arc<crate::schedule::app_limits::AppLimits>>,
    /// Recipients counted against the app's daily quota: given back when the transaction
    /// ends without `250` after DATA (dropped with the draft), kept when the message is accepted.
    pub reserved: Vec<crate::schedule::app_limits::Reserved>,
}

/// What the command loop does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flow {
    Continue,
    Close,
    /// `220` was queued and the read buffer dropped; the caller flushes and runs the handshake.
    StartTls,
}

/// Why no more input will come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum End {
    Eof,
    TimedOut,
    /// An outsider reached `unauthenticated_timeout` without authenticating.
    NotAuthenticated,
    Shutdown,
}

/// The next unit of client input in command mode.
pub(super) enum Input {
    Line(Range<usize>),
    TooLong,
    End(End),
}

/// What this connection knows; independent of the stream type.
pub(super) struct State {
    pub peer: SocketAddr,
    pub helo: Option<String>,
    pub tls: bool,
    pub user: Option<String>,
    pub tx: Option<Draft>,
    pub errors: u32,
    pub auth_failures: u32,
    pub messages: u32,
    /// This connection's slot (see `admission.rs`).
    pub ticket: Ticket,
    /// When an outsider must have authenticated; `None` once it has, and for clients in
    /// `access.networks`.
    pub auth_deadline: Option<Instant>,
    rbuf: Vec<u8>,
    rpos: usize,
    /// Inside an over-long line: drop bytes up to the next LF.
    discarding: bool,
    /// Replies not yet written; sent in one batch (pipelining).
    pub wbuf: Vec<u8>,
}

impl State {
    fn new(peer: SocketAddr, ticket: Ticket, auth_deadline: Option<Instant>) -> Self {
        State {
            peer,
            helo: None,
            tls: false,
            user: None,
            tx: None,
            errors: 0,
            auth_failures: 0,
            messages: 0,
            ticket,
            auth_deadline,
            rbuf: Vec::with_capacity(READ_CHUNK),
            rpos: 0,
            discarding: false,
            wbuf: Vec::with_capacity(1024),
        }
    }

    /// RFC 3207 4.2: after the handshake the client starts over; nothing learnt before it
    /// (HELO name, transaction, buffered bytes) is kept. Abuse counters are kept.
    pub fn after_starttls(mut self) -> Self {
        self.helo = None;
        self.tx = None;
        self.user = None;
        self.tls = true;
        self.rbuf.clear();
        self.rpos = 0;
        self.discarding = false;
        self
    }

    /// The client authenticated: no deadline, no longer an outsider.
    pub fn trust(&mut self) {
        self.ticket.trust();
        self.auth_deadline = None;
    }

    /// The EHLO/HELO name for a log line: client text, so control characters are escaped.
    pub fn helo_for_log(&self) -> impl std::fmt::Display + '_ {
        escaped(self.helo.as_deref().unwrap_or(""))
    }

    /// `deadline`, or the outsider's AUTH deadline when that comes first; and which it is.
    pub fn limit(&self, deadline: Instant) -> (Instant, End) {
        match self.auth_deadline {
            Some(auth) if auth <= deadline => (auth, End::NotAuthenticated),
            _ => (deadline, End::TimedOut),
        }
    }

    /// Drops every byte the client sent that was not processed yet; returns how many.
    pub fn discard_input(&mut self) -> usize {
        let n = self.rbuf.len() - self.rpos;
        self.rbuf.clear();
        self.rpos = 0;
        self.discarding = false;
        n
    }

    pub fn unread(&self) -> &[u8] {
        &self.rbuf[self.rpos..]
    }

    pub fn consume(&mut self, n: usize) {
        self.rpos += n;
    }

    /// Takes the next complete command line out of the buffer (sans-IO framing). A line
    /// longer than `max` (LF included) is reported once and skipped up to its LF.
    fn take_line(&mut self, max: usize) -> Option<Input> {
        let rest = &self.rbuf[self.rpos..];
        if self.discarding {
            match memchr::memchr(b'\n', rest) {
                Some(p) => {
                    self.rpos += p + 1;
                    self.discarding = false;
                }
                None => {
                    self.rpos = self.rbuf.len();
                    return None;
                }
            }
        }
        let rest = &self.rbuf[self.rpos..];
        match memchr::memchr(b'\n', rest) {
            Some(p) if p < max => {
                let start = self.rpos;
                self.rpos += p + 1;
                Some(Input::Line(start..self.rpos))
            }
            Some(p) => {
                self.rpos += p + 1;
                Some(Input::TooLong)
            }
            None if rest.len() >= max => {
                self.rpos = self.rbuf.len();
                self.discarding = true;
                Some(Input::TooLong)
            }
            None => None,
        }
    }

    /// Makes room for a read: drops consumed bytes and keeps `READ_CHUNK` spare.
    fn prepare_read(&mut self) {
        if self.rpos == self.rbuf.len() {
            self.rbuf.clear();
        } else if self.rpos > 0 {
            self.rbuf.drain(..self.rpos);
        }
        self.rpos = 0;
        self.rbuf.reserve(READ_CHUNK);
    }
}

pub(super) struct Session<S, A> {
    pub stream: S,
    pub ctx: Arc<Context<A>>,
    pub st: State,
}

impl<S: Stream, A: Acceptor> Session<S, A> {
    /// A session in the slot `ticket`; an outsider's AUTH deadline starts now (the greeting).
    pub fn new(stream: S, peer: SocketAddr, ctx: Arc<Context<A>>, ticket: Ticket) -> Self {
        let auth_deadline = ticket
            .is_outsider()
            .then(|| Instant::now() + ctx.settings.server.unauthenticated_timeout);
        Session {
            stream,
            ctx,
            st: State::new(peer, ticket, auth_deadline),
        }
    }

    pub fn from_parts(stream: S, ctx: Arc<Context<A>>, st: State) -> Self {
        Session { stream, ctx, st }
    }

    pub fn into_parts(self) -> (S, Arc<Context<A>>, State) {
        (self.stream, self.ctx, self.st)
    }

    pub fn reply(&mut self, reply: &Fixed) {
        reply.write_to(&mut self.st.wbuf);
    }

    pub fn reply_dyn(&mut self, reply: &Reply) {
        use std::io::Write;
        let _ = write!(self.st.wbuf, "{reply}");
    }

    pub fn write_raw(&mut self, bytes: &[u8]) {
        self.st.wbuf.extend_from_slice(bytes);
    }

    /// Answers a refused command, counts it, and closes after too many client errors.
    pub fn reject(&mut self, why: Rejection, reply: &Fixed) -> Flow {
        self.reply(reply);
        tracing::debug!(peer = %self.st.peer, reason = why.reason(), code = reply.code, "inbound command rejected");
        self.reject_counted(why)
    }

    /// [`Session::reject`] with a reply made for this case (an app's limit names the app).
    pub fn reject_dyn(&mut self, why: Rejection, reply: &Reply) -> Flow {
        self.reply_dyn(reply);
        tracing::debug!(peer = %self.st.peer, reason = why.reason(), code = reply.code, "inbound command rejected");
        self.reject_counted(why)
    }

    /// The bookkeeping of [`Session::reject`] once the reply is written: counted, and a client
    /// error towards `max_errors`.
    pub fn reject_counted(&mut self, why: Rejection) -> Flow {
        self.count(why);
        if why.is_client_error() {
            self.st.errors += 1;
            if self.st.errors >= self.ctx.tuning.max_errors {
                self.reply(&replies::TOO_MANY_ERRORS);
                self.count(Rejection::TooManyErrors);
                tracing::info!(peer = %self.st.peer, errors = self.st.errors, "inbound connection closed after too many errors");
                return Flow::Close;
            }
        }
        Flow::Continue
    }

    pub fn count(&self, why: Rejection) {
        self.ctx
            .metrics
            .inbound_rejections
            .with_label_values(&[why.reason()])
            .inc();
    }

    pub async fn flush(&mut self) -> Result<(), InboundError> {
        if self.st.wbuf.is_empty() {
            return Ok(());
        }
        let (deadline, _) = self
            .st
            .limit(Instant::now() + self.ctx.settings.server.command_timeout);
        let write = async {
            self.stream.write_all(&self.st.wbuf).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout_at(deadline, write).await {
            Ok(result) => result?,
            Err(_) => return Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()),
        }
        self.st.wbuf.clear();
        Ok(())
    }

    /// Flushes pending replies, then reads more input, giving up at `deadline` (or at an
    /// outsider's AUTH deadline, if that comes first). `idle` allows shutdown to interrupt the
    /// wait: it is false while a transaction is open, so that transaction can finish.
    pub async fn fill(
        &mut self,
        idle: bool,
        deadline: Instant,
    ) -> Result<Option<End>, InboundError> {
        self.flush().await?;
        self.st.prepare_read();
        let (deadline, expired) = self.st.limit(deadline);
        let read = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.st.rbuf));
        tokio::select! {
            biased;
            _ = self.ctx.shutdown.cancelled(), if idle => Ok(Some(End::Shutdown)),
            r = read => match r {
                Err(_) => Ok(Some(expired)),
                Ok(Ok(0)) => Ok(Some(End::Eof)),
                Ok(Ok(_)) => Ok(None),
                Ok(Err(e)) => Err(e.into()),
            },
        }
    }

    /// The next command line (or AUTH response line), reading as needed.
    ///
    /// `command_timeout` bounds the whole line, not each read: a client trickling one byte
    /// at a time (slowloris) would otherwise hold its connection slot forever.
    pub async fn next_line(&mut self) -> Result<Input, InboundError> {
        let max = self.ctx.settings.server.max_line_length;
        let deadline = Instant::now() + self.ctx.settings.server.command_timeout;
        loop {
            if let Some(input) = self.st.take_line(max) {
                return Ok(input);
            }
            if let Some(end) = self.fill(self.st.tx.is_none(), deadline).await? {
                return Ok(Input::End(end));
            }
        }
    }

    pub fn line(&self, range: Range<usize>) -> &[u8] {
        &self.st.rbuf[range]
    }

    /// Handles an input that ends the session (EOF, timeout, shutdown).
    pub fn end(&mut self, end: End) -> Flow {
        match end {
            End::Eof => {}
            End::TimedOut => {
                self.reply(&replies::TIMEOUT);
                self.count(Rejection::Timeout);
                tracing::info!(peer = %self.st.peer, "inbound command timeout");
            }
            End::NotAuthenticated => {
                self.reply(&replies::NOT_AUTHENTICATED_IN_TIME);
                self.count(Rejection::UnauthenticatedTimeout);
                tracing::info!(
                    peer = %self.st.peer,
                    helo = %self.st.helo_for_log(),
                    tls = self.st.tls,
                    "inbound connection closed: not authenticated in time"
                );
            }
            End::Shutdown => self.reply(&replies::SHUTTING_DOWN),
        }
        Flow::Close
    }

    pub fn greet(&mut self) {
        use std::io::Write;
        let host = &self.ctx.settings.server.hostname;
        let _ = write!(self.st.wbuf, "220 {host} ESMTP mailveil\r\n");
    }

    /// The command loop; returns when the session closes or asks for a TLS upgrade.
    pub async fn run(&mut self) -> Result<Flow, InboundError> {
        loop {
            // Between transactions a shutdown ends the session; during one it waits.
            if self.st.tx.is_none() && self.ctx.shutdown.is_cancelled() {
                self.end(End::Shutdown);
                self.flush().await?;
                return Ok(Flow::Close);
            }
            let flow = match self.next_line().await? {
                Input::Line(range) => self.command(range).await?,
                Input::TooLong => self.reject(Rejection::LineTooLong, &replies::LINE_TOO_LONG),
                Input::End(end) => self.end(end),
            };
            match flow {
                Flow::Continue => {}
                Flow::Close | Flow::StartTls => {
                    // Best effort: the client may already be gone.
                    let _ = self.flush().await;
                    return Ok(flow);
                }
            }
        }
    }

    async fn command(&mut self, range: Range<usize>) -> Result<Flow, InboundError> {
        let parsed = Request::parse(&mut self.line(range.clone()).iter()).map(Request::into_owned);
        let request = match parsed {
            Ok(request) => request,
            Err(e) => return Ok(self.parse_error(e)),
        };
        Ok(match request {
            Request::Ehlo { host } => self.ehlo(host, true),
            Request::Helo { host } => self.ehlo(host, false),
            Request::Mail { from } => self.mail(from, range).await,
            Request::Rcpt { to } => self.rcpt(to, range).await,
            Request::Data => self.data().await?,
            Request::Auth {
                mechanism,
                initial_response,
            } => self.auth(mechanism, initial_response).await?,
            Request::StartTls => self.starttls(),
            Request::Rset => {
                self.st.tx = None;
                self.reply(&replies::OK);
                Flow::Continue
            }
            Request::Noop { .. } => {
                self.reply(&replies::OK);
                Flow::Continue
            }
            Request::Vrfy { .. } => {
                self.reply(&replies::VRFY);
                Flow::Continue
            }
            Request::Help { .. } => {
                self.reply(&replies::HELP);
                Flow::Continue
            }
            Request::Quit => {
                self.reply(&replies::BYE);
                Flow::Close
            }
            Request::Lhlo { .. }
            | Request::Bdat { .. }
            | Request::Expn { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. } => {
                self.reject(Rejection::NotImplemented, &replies::NOT_IMPLEMENTED)
            }
        })
    }

    fn parse_error(&mut self, e: ParseError) -> Flow {
        let (why, reply) = match e {
            ParseError::UnknownCommand => (Rejection::UnknownCommand, &replies::UNKNOWN_COMMAND),
            ParseError::InvalidSenderAddress => (Rejection::Syntax, &replies::BAD_SENDER),
            ParseError::InvalidRecipientAddress => (Rejection::Syntax, &replies::BAD_RECIPIENT),
            ParseError::UnsupportedParameter { .. } => {
                (Rejection::Syntax, &replies::UNSUPPORTED_PARAM)
            }
            ParseError::SyntaxError { .. }
            | ParseError::InvalidParameter { .. }
            | ParseError::NeedsMoreData { .. }
            | ParseError::ResponseTooLong
            | ParseError::InvalidResponse { .. } => (Rejection::Syntax, &replies::SYNTAX),
        };
        self.reject(why, reply)
    }
}
