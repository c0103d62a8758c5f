//! A small scripted SMTP server for fault injection in tests, on 127.0.0.1:0.
//!
//! It answers the replies a test chooses (per stage or per recipient, optionally as Latin-1
//! bytes that are not UTF-8), can stall or drop the connection at a chosen stage, offers
//! STARTTLS or implicit TLS with a given certificate, checks AUTH PLAIN credentials, and
//! records what it saw (connections, simultaneous sessions, command lines, messages) so a test
//! can assert on it.
//!
//! Use from a test file with `use crate::support::scripted_smtp;`.
//! Certificates for it come from `support::pki` (a private CA made with rcgen).
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A point in the session where the script can stall or drop the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// Before sending the greeting.
    Greeting,
    Ehlo,
    StartTls,
    Auth,
    Mail,
    Rcpt,
    Data,
    /// After the message was received, before the final reply.
    DataEnd,
}

/// What the server does. Start from `Script::default()` and change what the test needs.
#[derive(Clone)]
pub struct Script {
    pub greeting: String,
    /// EHLO keywords; STARTTLS and AUTH are added automatically when configured.
    pub extensions: Vec<String>,
    /// Offer STARTTLS with this server config (until TLS is active).
    pub starttls: Option<Arc<rustls::ServerConfig>>,
    /// TLS from the first byte with this server config.
    pub implicit_tls: Option<Arc<rustls::ServerConfig>>,
    /// Offer AUTH PLAIN (only once TLS is active) and accept only these credentials.
    pub auth_plain: Option<(String, String)>,
    /// Reply overrides per step (full reply line without CRLF, e.g. `451 4.3.0 later`).
    pub replies: HashMap<Step, String>,
    /// Reply overrides for RCPT by exact recipient address.
    pub rcpt_replies: HashMap<String, String>,
    /// Never answer at this step (the connection stays open).
    pub stall_at: Option<Step>,
    /// Close the connection without answering at this step.
    pub drop_at: Option<Step>,
    /// Wait this long before the final reply to the message (makes sessions overlap).
    pub data_end_delay: Duration,
    /// Close the connection silently after this many accepted messages on it (a server that
    /// drops idle clients).
    pub close_after_messages: Option<usize>,
    /// Replies used once each, in order, before `replies` applies at that step (e.g. `421`
    /// then `451` then the normal reply). [`DROP`] closes the connection without answering;
    /// at [`Step::DataEnd`] that is after the message was read and before the final reply.
    pub first_replies: HashMap<Step, Vec<String>>,
    /// Never answer RCPT for recipients in these domains (the connection stays open): one
    /// provider's deliveries hang while others are served.
    pub stall_rcpt_domains: Vec<String>,
    /// Wait this long before answering at a step (a slow server).
    pub delays: HashMap<Step, Duration>,
    /// Send every reply in Latin-1: each character up to U+00FF as that one byte, so a reply
    /// can carry bytes that are not UTF-8 (`"550 \u{ff}\u{fe}"` puts FF FE on the wire).
    pub replies_latin1: bool,
    /// Replies to RCPT for recipients in a domain (lower-case), used once each in order across
    /// sessions (one per attempt), before the normal reply; set with
    /// [`Script::rcpt_domain_replies`]. Shared by the clones of the script.
    pub domain_replies: Arc<Mutex<HashMap<String, VecDeque<String>>>>,
}

/// In [`Script::first_replies`]: close the connection instead of answering.
pub const DROP: &str = "<drop>";

impl Default for Script {
    fn default() -> Script {
        Script {
            greeting: "220 scripted.test ESMTP".into(),
            extensions: vec!["PIPELINING".into(), "8BITMIME".into(), "SMTPUTF8".into()],
            starttls: None,
            implicit_tls: None,
            auth_plain: None,
            replies: HashMap::new(),
            rcpt_replies: HashMap::new(),
            stall_at: None,
            drop_at: None,
            data_end_delay: Duration::ZERO,
            close_after_messages: None,
            first_replies: HashMap::new(),
            stall_rcpt_domains: Vec::new(),
            delays: HashMap::new(),
            replies_latin1: false,
            domain_replies: Arc::default(),
        }
    }
}

impl Script {
    /// RCPT to a recipient in `domain` is answered `replies` in turn (one per attempt), then
    /// normally: a provider that throttles, then takes the copy.
    pub fn rcpt_domain_replies(self, domain: &str, replies: &[&str]) -> Script {
        self.domain_replies.lock().unwrap().insert(
            domain.to_ascii_lowercase(),
            replies.iter().map(|r| r.to_string()).collect(),
        );
        self
    }

    fn next_domain_reply(&self, domain: &str) -> Option<String> {
        self.domain_replies
            .lock()
            .unwrap()
            .get_mut(&domain.to_ascii_lowercase())
            .and_then(VecDeque::pop_front)
    }
}

/// One message the server accepted (or answered at end of data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The reverse path between the brackets (`""` for the null sender).
    pub mail_from: String,
    /// The whole MAIL command line, without CRLF.
    pub mail_line: String,
    pub rcpt_to: Vec<String>,
    /// The message, dot-unstuffed, without the final `.` line.
    pub data: Vec<u8>,
    /// The DATA bytes exactly as they came over the wire (still dot-stuffed), without the
    /// final `.` line: for checks of line ends and stuffing.
    pub raw: Vec<u8>,
    pub tls: bool,
    /// The user that authenticated on this session.
    pub user: Option<String>,
}

/// Everything the server observed.
#[derive(Debug, Clone, Default)]
pub struct Record {
    /// TCP connections accepted.
    pub connections: usize,
    /// Sessions open right now, and the most ever open at once.
    pub active: usize,
    pub max_active: usize,
    /// Every command line received, in order, without CRLF (AUTH lines included verbatim).
    pub commands: Vec<String>,
    /// Messages whose final reply was positive.
    pub messages: Vec<Received>,
    /// When each of `messages` was accepted.
    pub arrivals: Vec<std::time::Instant>,
    /// The most messages accepted on one connection.
    pub max_messages_per_connection: usize,
    /// How often MAIL, RCPT and end of DATA were reached, across sessions.
    pub step_counts: HashMap<Step, usize>,
}

impl Record {
    /// True when some command line starts with `verb` (case-insensitive).
    pub fn saw(&self, verb: &str) -> bool {
        self.commands.iter().any(|c| {
            c.to_ascii_uppercase()
                .starts_with(&verb.to_ascii_uppercase())
        })
    }
}

/// A running scripted server; stops (aborts every session) when dropped.
pub struct ScriptedSmtp {
    pub addr: SocketAddr,
    record: Arc<Mutex<Record>>,
    task: JoinHandle<()>,
}

impl ScriptedSmtp {
    pub async fn start(script: Script) -> ScriptedSmtp {
        ScriptedSmtp::start_at(0, script).await
    }

    /// Like [`start`](Self::start) on a chosen port of 127.0.0.1 (an upstream that comes back
    /// where the relay expects it).
    pub async fn start_at(port: u16, script: Script) -> ScriptedSmtp {
        ScriptedSmtp::start_on(SocketAddr::from(([127, 0, 0, 1], port)), script).await
    }

    /// Like [`start`](Self::start) on a chosen address (an MX host on 127.0.0.x).
    pub async fn start_on(addr: SocketAddr, script: Script) -> ScriptedSmtp {
        let listener = bind_reusable(addr).await;
        let addr = listener.local_addr().expect("local addr");
        let record = Arc::new(Mutex::new(Record::default()));
        let once: Once = Arc::new(Mutex::new(
            script
                .first_replies
                .iter()
                .map(|(k, v)| (*k, v.iter().cloned().collect()))
                .collect(),
        ));
        let script = Arc::new(script);
        let rec = record.clone();
        let task = tokio::spawn(async move {
            let mut sessions = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                {
                    let mut r = rec.lock().unwrap();
                    r.connections += 1;
                    r.active += 1;
                    r.max_active = r.max_active.max(r.active);
                }
                let (script, rec, once) = (script.clone(), rec.clone(), once.clone());
                sessions.spawn(async move {
                    let _ = tcp.set_nodelay(true);
                    // A session that got QUIT stopped counting as active before its reply.
                    if !matches!(serve(tcp, &script, &rec, &once).await, Ok(true)) {
                        rec.lock().unwrap().active -= 1;
                    }
                });
            }
        });
        ScriptedSmtp { addr, record, task }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// A snapshot of what the server has seen so far.
    pub fn record(&self) -> Record {
        self.record.lock().unwrap().clone()
    }
}

impl Drop for ScriptedSmtp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `addr` with SO_REUSEADDR, retrying for a few seconds: a server dropped a moment ago on
/// that port may still be closing (its task is aborted asynchronously).
async fn bind_reusable(addr: SocketAddr) -> TcpListener {
    let port = addr.port();
    let mut tries = 0;
    loop {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        match socket.bind(addr).and_then(|()| socket.listen(1024)) {
            Ok(listener) => return listener,
            Err(_) if port != 0 && tries < 100 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("bind {addr}: {e}"),
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type Stream = BufReader<Box<dyn Io>>;

/// What is left of [`Script::first_replies`], shared by all sessions.
type Once = Arc<Mutex<HashMap<Step, VecDeque<String>>>>;

/// How a session ended or must continue.
enum Next {
    Closed,
    /// QUIT: the session is already no longer counted as active.
    Quit,
    UpgradeTls,
}

async fn serve(
    tcp: tokio::net::TcpStream,
    script: &Script,
    rec: &Mutex<Record>,
    once: &Once,
) -> std::io::Result<bool> {
    let (mut stream, mut tls): (Stream, bool) = match &script.implicit_tls {
        Some(config) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
            let tls = acceptor.accept(tcp).await?;
            (BufReader::new(Box::new(tls)), true)
        }
        None => (BufReader::new(Box::new(tcp)), false),
    };
    if gate(script, Step::Greeting).await {
        return Ok(false);
    }
    send(&mut stream, script, &script.greeting).await?;
    let mut session = Session::default();
    loop {
        match session.run(&mut stream, script, rec, once, tls).await? {
            Next::Closed => return Ok(false),
            Next::Quit => return Ok(true),
            Next::UpgradeTls => {
                let Some(config) = &script.starttls else {
                    return Ok(false);
                };
                let inner = stream.into_inner();
                let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
                let upgraded = acceptor.accept(inner).await?;
                stream = BufReader::new(Box::new(upgraded));
                tls = true;
                session = Session::default();
            }
        }
    }
}

/// Applies `delays`, `stall_at` and `drop_at`; true when the session must end now.
async fn gate(script: &Script, step: Step) -> bool {
    if let Some(delay) = script.delays.get(&step) {
        tokio::time::sleep(*delay).await;
    }
    if script.stall_at == Some(step) {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        return true;
    }
    script.drop_at == Some(step)
}

async fn send(stream: &mut Stream, script: &Script, reply: &str) -> std::io::Result<()> {
    let mut wire: Vec<u8> = if script.replies_latin1 {
        reply
            .chars()
            .map(|c| u8::try_from(u32::from(c)).expect("a Latin-1 reply"))
            .collect()
    } else {
        reply.as_bytes().to_vec()
    };
    wire.extend_from_slice(b"\r\n");
    stream.get_mut().write_all(&wire).await?;
    stream.get_mut().flush().await
}

#[derive(Default)]
struct Session {
    user: Option<String>,
    mail: Option<(String, String)>,
    rcpt_to: Vec<String>,
    messages: usize,
}

impl Session {
    fn reply(script: &Script, step: Step, default: &str) -> String {
        script
            .replies
            .get(&step)
            .cloned()
            .unwrap_or_else(|| default.to_string())
    }

    /// The next unused [`Script::first_replies`] entry for `step`, if any; also counts the step.
    fn first(once: &Once, rec: &Mutex<Record>, step: Step) -> Option<String> {
        *rec.lock().unwrap().step_counts.entry(step).or_default() += 1;
        once.lock()
            .unwrap()
            .get_mut(&step)
            .and_then(VecDeque::pop_front)
    }

    async fn run(
        &mut self,
        stream: &mut Stream,
        script: &Script,
        rec: &Mutex<Record>,
        once: &Once,
        tls: bool,
    ) -> std::io::Result<Next> {
        loop {
            let mut line = String::new();
            if stream.read_line(&mut line).await? == 0 {
                return Ok(Next::Closed);
            }
            let line = line.trim_end_matches(['\r', '\n']).to_string();
            rec.lock().unwrap().commands.push(line.clone());
            let upper = line.to_ascii_uppercase();
            let verb = upper.split(' ').next().unwrap_or("");
            match verb {
                "EHLO" | "HELO" => {
                    if gate(script, Step::Ehlo).await {
                        return Ok(Next::Closed);
                    }
                    let mut keywords = script.extensions.clone();
                    if script.starttls.is_some() && !tls {
                        keywords.push("STARTTLS".into());
                    }
                    if script.auth_plain.is_some() && tls {
                        keywords.push("AUTH PLAIN".into());
                    }
                    let mut reply = String::from("250-scripted.test greets you");
                    for (i, k) in keywords.iter().enumerate() {
                        let sep = if i + 1 == keywords.len() { ' ' } else { '-' };
                        reply.push_str(&format!("\r\n250{sep}{k}"));
                    }
                    if keywords.is_empty() {
                        reply = "250 scripted.test greets you".into();
                    }
                    send(stream, script, &Self::reply(script, Step::Ehlo, &reply)).await?;
                }
                "STARTTLS" => {
                    if gate(script, Step::StartTls).await {
                        return Ok(Next::Closed);
                    }
                    if script.starttls.is_none() || tls {
                        send(stream, script, "502 5.5.1 no STARTTLS here").await?;
                        continue;
                    }
                    let reply = Self::reply(script, Step::StartTls, "220 2.0.0 go ahead");
                    send(stream, script, &reply).await?;
                    if reply.starts_with("220") {
                        return Ok(Next::UpgradeTls);
                    }
                }
                "AUTH" => {
                    if gate(script, Step::Auth).await {
                        return Ok(Next::Closed);
                    }
                    let reply = self.auth(stream, script, tls, &line).await?;
                    send(stream, script, &reply).await?;
                }
                "MAIL" => {
                    if gate(script, Step::Mail).await {
                        return Ok(Next::Closed);
                    }
                    let from = between_brackets(&line);
                    let reply = Self::first(once, rec, Step::Mail)
                        .unwrap_or_else(|| Self::reply(script, Step::Mail, "250 2.1.0 ok"));
                    if reply == DROP {
                        return Ok(Next::Closed);
                    }
                    if reply.starts_with('2') {
                        self.mail = Some((from, line.clone()));
                        self.rcpt_to.clear();
                    }
                    send(stream, script, &reply).await?;
                }
                "RCPT" => {
                    if gate(script, Step::Rcpt).await {
                        return Ok(Next::Closed);
                    }
                    let to = between_brackets(&line);
                    let domain = to.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
                    if script
                        .stall_rcpt_domains
                        .iter()
                        .any(|d| d.eq_ignore_ascii_case(domain))
                    {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        return Ok(Next::Closed);
                    }
                    let reply = match script.rcpt_replies.get(&to) {
                        Some(r) => r.clone(),
                        None => script
                            .next_domain_reply(domain)
                            .or_else(|| Self::first(once, rec, Step::Rcpt))
                            .unwrap_or_else(|| Self::reply(script, Step::Rcpt, "250 2.1.5 ok")),
                    };
                    if reply == DROP {
                        return Ok(Next::Closed);
                    }
                    if reply.starts_with('2') {
                        self.rcpt_to.push(to);
                    }
                    send(stream, script, &reply).await?;
                }
                "DATA" => {
                    if gate(script, Step::Data).await {
                        return Ok(Next::Closed);
                    }
                    if self.mail.is_none() || self.rcpt_to.is_empty() {
                        send(stream, script, "503 5.5.1 need MAIL and RCPT first").await?;
                        continue;
                    }
                    let reply = Self::reply(script, Step::Data, "354 go ahead");
                    send(stream, script, &reply).await?;
                    if !reply.starts_with('3') {
                        continue;
                    }
                    let (data, raw) = read_data(stream).await?;
                    if gate(script, Step::DataEnd).await {
                        return Ok(Next::Closed);
                    }
                    tokio::time::sleep(script.data_end_delay).await;
                    let reply = Self::first(once, rec, Step::DataEnd)
                        .unwrap_or_else(|| Self::reply(script, Step::DataEnd, "250 2.0.0 queued"));
                    if reply == DROP {
                        return Ok(Next::Closed);
                    }
                    let (mail_from, mail_line) = self.mail.take().unwrap_or_default();
                    if reply.starts_with('2') {
                        self.messages += 1;
                        let mut r = rec.lock().unwrap();
                        r.messages.push(Received {
                            mail_from,
                            mail_line,
                            rcpt_to: std::mem::take(&mut self.rcpt_to),
                            data,
                            raw,
                            tls,
                            user: self.user.clone(),
                        });
                        r.arrivals.push(std::time::Instant::now());
                        r.max_messages_per_connection =
                            r.max_messages_per_connection.max(self.messages);
                    }
                    self.rcpt_to.clear();
                    send(stream, script, &reply).await?;
                    if script
                        .close_after_messages
                        .is_some_and(|n| self.messages >= n)
                    {
                        return Ok(Next::Closed);
                    }
                }
                "RSET" => {
                    self.mail = None;
                    self.rcpt_to.clear();
                    send(stream, script, "250 2.0.0 reset").await?;
                }
                "NOOP" => send(stream, script, "250 2.0.0 ok").await?,
                "QUIT" => {
                    rec.lock().unwrap().active -= 1;
                    let _ = send(stream, script, "221 2.0.0 bye").await;
                    return Ok(Next::Quit);
                }
                _ => send(stream, script, "500 5.5.2 unknown command").await?,
            }
        }
    }

    /// AUTH PLAIN, with the initial response on the command line or after a `334`.
    async fn auth(
        &mut self,
        stream: &mut Stream,
        script: &Script,
        tls: bool,
        line: &str,
    ) -> std::io::Result<String> {
        let Some((user, pass)) = &script.auth_plain else {
            return Ok("502 5.5.1 no AUTH here".into());
        };
        if !tls {
            return Ok("538 5.7.11 encryption required".into());
        }
        let mut words = line.split_whitespace().skip(1);
        if !words
            .next()
            .is_some_and(|m| m.eq_ignore_ascii_case("PLAIN"))
        {
            return Ok("504 5.5.4 only PLAIN".into());
        }
        let encoded = match words.next() {
            Some(e) => e.to_string(),
            None => {
                send(stream, script, "334 ").await?;
                let mut answer = String::new();
                stream.read_line(&mut answer).await?;
                answer.trim_end().to_string()
            }
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.as_bytes())
            .unwrap_or_default();
        let parts: Vec<&[u8]> = decoded.split(|b| *b == 0).collect();
        let ok = parts.len() == 3 && parts[1] == user.as_bytes() && parts[2] == pass.as_bytes();
        if ok {
            self.user = Some(user.clone());
            Ok(Self::reply(script, Step::Auth, "235 2.7.0 authenticated"))
        } else {
            Ok("535 5.7.8 bad credentials".into())
        }
    }
}

fn between_brackets(line: &str) -> String {
    let start = line.find('<').map(|i| i + 1).unwrap_or(line.len());
    let end = line[start..]
        .find('>')
        .map(|i| start + i)
        .unwrap_or(line.len());
    line[start..end].to_string()
}

/// Reads the message up to the `.` line: (dot-unstuffed message, raw bytes as received).
async fn read_data(stream: &mut Stream) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    let mut data = Vec::new();
    let mut raw = Vec::new();
    loop {
        let mut line = Vec::new();
        if stream.read_until(b'\n', &mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line == b".\r\n" {
            return Ok((data, raw));
        }
        raw.extend_from_slice(&line);
        let line = line.strip_prefix(b".").unwrap_or(&line);
        data.extend_from_slice(line);
    }
}
