//! Our SMTP client: sessions to an upstream, written on smtp-proto's reply parser.
//!
//! Why our own and not lettre's (measured, docs/architecture.md "The SMTP client"): lettre waits
//! for each reply before the next command, so a copy costs four round trips (MAIL, RCPT, DATA,
//! the message). Over real distances round trips, not CPU, set the pace; with RFC 2920
//! PIPELINING a copy costs two (MAIL+RCPT+DATA in one write, then the message).
//!
//! What every session keeps:
//! - TCP_NODELAY (small command writes would otherwise wait for delayed ACKs, ~44 ms each).
//! - A time limit around every step ([`Timeouts`]): a stalled upstream never holds a slot forever.
//! - STARTTLS required when configured, never a fall back to plaintext; the TLS handshake is
//!   ours, and bytes the upstream sent after its `220` are dropped (`wire.rs`).
//! - Replies decoded lossily and classified by code (`wire.rs`).
//!
//! Layout: this file opens sessions (connect, TLS, greeting, EHLO, STARTTLS, AUTH) and closes
//! them; `transaction.rs` sends copies; `wire.rs` holds the bytes.

mod transaction;
mod wire;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use base64::Engine;
use tokio::net::{TcpSocket, TcpStream};

use super::tls::TlsSetup;
use super::{Stage, Timeouts, UpstreamError};
use crate::config::{SmtpUpstreamConfig, UpstreamTls};
pub(crate) use transaction::check_envelope;
pub(crate) use wire::Reply;
use wire::{Transport, Wire, WireError};

/// What the upstream offered in its EHLO reply (only what we use).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Extensions {
    pub pipelining: bool,
    pub starttls: bool,
    pub smtputf8: bool,
    pub eight_bit_mime: bool,
    /// The SIZE limit; `Some(0)` is SIZE without a limit.
    pub size: Option<u64>,
    pub auth_plain: bool,
    pub auth_login: bool,
}

impl Extensions {
    /// Reads the keywords of an EHLO reply (RFC 5321 4.1.1.1: one per line after the first).
    fn from_ehlo(reply: &Reply) -> Extensions {
        let mut ext = Extensions::default();
        for line in reply.extra_lines() {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword.to_ascii_uppercase().as_str() {
                "PIPELINING" => ext.pipelining = true,
                "STARTTLS" => ext.starttls = true,
                "SMTPUTF8" => ext.smtputf8 = true,
                "8BITMIME" => ext.eight_bit_mime = true,
                "SIZE" => ext.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "AUTH" => {
                    for mechanism in words {
                        match mechanism.to_ascii_uppercase().as_str() {
                            "PLAIN" => ext.auth_plain = true,
                            "LOGIN" => ext.auth_login = true,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        ext
    }
}

/// An open, greeted (and if configured, encrypted and authenticated) session.
pub(crate) struct Connection {
    wire: Wire,
    ext: Extensions,
    /// Completed transactions, to cap how long one connection lives.
    pub transactions: u32,
    /// What protects this session.
    pub tls: TlsUsed,
    /// The session is in no defined state (an I/O error, a transaction cut off): never reused.
    broken: bool,
}

impl Connection {
    /// A session just greeted (or upgraded and greeted again); `tls` is set by the caller.
    fn new(wire: Wire, ext: Extensions) -> Connection {
        Connection {
            wire,
            ext,
            transactions: 0,
            broken: false,
            tls: TlsUsed::None,
        }
    }
}

/// Login for AUTH; the password never appears in a log or an error.
struct Login {
    username: String,
    password: String,
}

/// How a session is secured.
#[derive(Clone)]
pub(crate) enum Security {
    /// Plaintext (loopback test peers, trusted local networks).
    None,
    /// STARTTLS required and the certificate verified: never plaintext (a smarthost).
    StartTls(TlsSetup),
    /// TLS from the first byte, verified.
    Implicit(TlsSetup),
    /// STARTTLS whenever offered, whatever the certificate (RFC 7435; MX delivery without a
    /// policy): plaintext only when the server does not offer it.
    Opportunistic(TlsSetup),
}

/// Where one connection goes.
#[derive(Clone)]
pub(crate) struct Target {
    /// Host name or IP address and port; a name is resolved by the system at each connect.
    pub host: String,
    pub port: u16,
    /// An address found already (an MX host's), used instead of resolving `host`.
    pub addr: Option<SocketAddr>,
    pub security: Security,
}

impl Target {
    /// `host:port` (and the address when there is one) for error texts.
    fn label(&self) -> String {
        match self.addr {
            Some(addr) => format!("{} [{addr}]", self.host),
            None => format!("{}:{}", self.host, self.port),
        }
    }
}

/// What protects a session's copies in transit: the `tls` of delivery logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsUsed {
    /// Plaintext.
    None,
    /// Encrypted, the certificate not checked.
    Opportunistic,
    /// Encrypted, the certificate verified.
    Verified,
    /// Encrypted, the certificate verified, as the domain's MTA-STS policy requires.
    MtaSts,
    /// Encrypted, the certificate matching the MX host's authenticated TLSA records.
    Dane,
    /// Plaintext after opportunistic STARTTLS failed (offered, but the handshake did not
    /// complete).
    Fallback,
}

impl TlsUsed {
    pub fn label(self) -> &'static str {
        match self {
            TlsUsed::None => "none",
            TlsUsed::Opportunistic => "opportunistic",
            TlsUsed::Verified => "verified",
            TlsUsed::Fallback => "fallback",
            TlsUsed::MtaSts => "mta-sts",
            TlsUsed::Dane => "dane",
        }
    }
}

/// How to speak to SMTP servers: our names, login and time limits; shared by every connection
/// of an upstream, whatever [`Target`] each one goes to.
pub(crate) struct SmtpClient {
    login: Option<Login>,
    /// `EHLO <name>\r\n`, ready to send.
    ehlo: Vec<u8>,
    helo: Vec<u8>,
    /// The local address connections leave from (an MX upstream's `source_address`).
    source: Option<IpAddr>,
    pub timeouts: Timeouts,
}

impl SmtpClient {
    /// The client of a smarthost, and where its connections go.
    pub fn smarthost(
        config: &SmtpUpstreamConfig,
        helo: &str,
        timeouts: Timeouts,
    ) -> Result<(SmtpClient, Target), UpstreamError> {
        let security = match config.tls {
            UpstreamTls::None => Security::None,
            UpstreamTls::StartTls => {
                Security::StartTls(TlsSetup::new(&config.host, config.ca_file.as_deref())?)
            }
            UpstreamTls::Implicit => {
                Security::Implicit(TlsSetup::new(&config.host, config.ca_file.as_deref())?)
            }
        };
        let login = match (&config.credentials, config.tls) {
            (None, _) => None,
            (Some(_), UpstreamTls::None) => {
                return Err(UpstreamError::Config(
                    "credentials are never sent in plaintext: use starttls or implicit".into(),
                ));
            }
            (Some(c), UpstreamTls::StartTls | UpstreamTls::Implicit) => Some(Login {
                username: c.username.clone(),
                password: c.password.expose().to_string(),
            }),
        };
        let target = Target {
            host: config.host.clone(),
            port: config.port,
            addr: None,
            security,
        };
        let mut client = SmtpClient::new(helo, None, timeouts);
        client.login = login;
        Ok((client, target))
    }

    /// A client without login, announcing `helo`, leaving from `source` when set.
    pub fn new(helo: &str, source: Option<IpAddr>, timeouts: Timeouts) -> SmtpClient {
        SmtpClient {
            login: None,
            ehlo: format!("EHLO {helo}\r\n").into_bytes(),
            helo: format!("HELO {helo}\r\n").into_bytes(),
            source,
            timeouts,
        }
    }

    /// Opens a session ready for MAIL: TCP (no Nagle), TLS, greeting, EHLO, STARTTLS, AUTH.
    pub async fn connect(&self, target: &Target) -> Result<Connection, UpstreamError> {
        let t = &self.timeouts;
        let tcp = match tokio::time::timeout(t.connect, self.open_tcp(target)).await {
            Err(_) => return Err(timeout(Stage::Connect, t.connect)),
            Ok(Err(source)) => {
                return Err(UpstreamError::Connect {
                    addr: target.label(),
                    source,
                });
            }
            Ok(Ok(tcp)) => tcp,
        };
        tcp.set_nodelay(true).map_err(|e| UpstreamError::Io {
            stage: Stage::Connect,
            text: e.to_string(),
        })?;

        let mut conn = match &target.security {
            Security::Implicit(setup) => {
                let handshake = setup.connector.connect(setup.server_name.clone(), tcp);
                let tls = match tokio::time::timeout(t.tls, handshake).await {
                    Err(_) => return Err(timeout(Stage::Tls, t.tls)),
                    Ok(Err(e)) => return Err(UpstreamError::Tls(e.to_string())),
                    Ok(Ok(tls)) => tls,
                };
                let mut conn = self.greet(Wire::new(Transport::Tls(Box::new(tls)))).await?;
                conn.tls = TlsUsed::Verified;
                conn
            }
            Security::StartTls(setup) => {
                let plain = self.greet(Wire::new(Transport::Plain(tcp))).await?;
                if !plain.ext.starttls {
                    // Say goodbye in plaintext (harmless), never anything else.
                    self.close_now(plain).await;
                    return Err(UpstreamError::NoStartTls);
                }
                let mut conn = self.starttls(plain, setup, &target.host).await?;
                conn.tls = TlsUsed::Verified;
                conn
            }
            Security::Opportunistic(setup) => {
                let plain = self.greet(Wire::new(Transport::Plain(tcp))).await?;
                if plain.ext.starttls {
                    let mut conn = self.starttls(plain, setup, &target.host).await?;
                    conn.tls = TlsUsed::Opportunistic;
                    conn
                } else {
                    plain
                }
            }
            Security::None => self.greet(Wire::new(Transport::Plain(tcp))).await?,
        };

        if let Some(login) = &self.login {
            within(Stage::Auth, t.auth, authenticate(&mut conn, login)).await?;
        }
        Ok(conn)
    }

    /// The TCP connection, from the source address when one is set.
    async fn open_tcp(&self, target: &Target) -> std::io::Result<TcpStream> {
        let Some(addr) = target.addr else {
            let host = target.host.trim_start_matches('[').trim_end_matches(']');
            return TcpStream::connect((host, target.port)).await;
        };
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(source) = self.source {
            socket.bind(SocketAddr::new(source, 0))?;
        }
        socket.connect(addr).await
    }

    /// Reads the greeting and says EHLO (HELO when EHLO is refused as unknown).
    async fn greet(&self, mut wire: Wire) -> Result<Connection, UpstreamError> {
        let stage = Stage::Greeting;
        within(stage, self.timeouts.greeting, async {
            let greeting = read(&mut wire, stage).await?;
            if greeting.code != 220 {
                return Err(UpstreamError::from_reply(stage, &greeting));
            }
            let ext = self.hello(&mut wire, stage).await?;
            Ok(Connection::new(wire, ext))
        })
        .await
    }

    /// EHLO, or HELO after a 5xx to EHLO (an old server; it offers no extensions).
    async fn hello(&self, wire: &mut Wire, stage: Stage) -> Result<Extensions, UpstreamError> {
        wire.send(&self.ehlo).await.map_err(|e| io(stage, e))?;
        let reply = read(wire, stage).await?;
        if reply.code == 250 {
            return Ok(Extensions::from_ehlo(&reply));
        }
        if !(500..600).contains(&reply.code) {
            return Err(UpstreamError::from_reply(stage, &reply));
        }
        wire.send(&self.helo).await.map_err(|e| io(stage, e))?;
        let reply = read(wire, stage).await?;
        if reply.code != 250 {
            return Err(UpstreamError::from_reply(stage, &reply));
        }
        Ok(Extensions::default())
    }

    /// STARTTLS on a greeted plaintext session that offers it, our handshake, and EHLO again
    /// over TLS.
    async fn starttls(
        &self,
        mut plain: Connection,
        setup: &TlsSetup,
        host: &str,
    ) -> Result<Connection, UpstreamError> {
        let t = &self.timeouts;
        let stage = Stage::StartTls;
        let upgrade = async {
            plain
                .wire
                .send(b"STARTTLS\r\n")
                .await
                .map_err(|e| UpstreamError::Tls(e.to_string()))?;
            let reply = plain.wire.reply().await.map_err(|e| match e {
                WireError::Io(e) => UpstreamError::Tls(e.to_string()),
                other => other.at(stage),
            })?;
            if reply.code != 220 {
                return Err(UpstreamError::from_reply(stage, &reply));
            }
            if plain.wire.has_unread_input() {
                tracing::warn!(
                    upstream = %host,
                    "upstream sent more after its 220 to STARTTLS; dropped unread (a response injection)"
                );
            }
            let tcp = plain
                .wire
                .into_plain()
                .ok_or_else(|| UpstreamError::Tls("STARTTLS inside TLS".into()))?;
            let tls = setup
                .connector
                .connect(setup.server_name.clone(), tcp)
                .await
                .map_err(|e| UpstreamError::Tls(e.to_string()))?;
            let mut wire = Wire::new(Transport::Tls(Box::new(tls)));
            let ext = self.hello(&mut wire, stage).await?;
            Ok(Connection::new(wire, ext))
        };
        within(stage, t.tls, upgrade).await
    }

    /// RSET: checks that a pooled connection is alive, or clears a failed transaction.
    pub async fn reset(&self, conn: &mut Connection) -> Result<(), UpstreamError> {
        if conn.broken {
            return Err(UpstreamError::Protocol {
                stage: Stage::Reset,
                text: "the session was cut off".into(),
            });
        }
        let stage = Stage::Reset;
        let result = within(stage, self.timeouts.command, async {
            conn.wire
                .send(b"RSET\r\n")
                .await
                .map_err(|e| io(stage, e))?;
            let reply = read(&mut conn.wire, stage).await?;
            if reply.code != 250 {
                return Err(UpstreamError::from_reply(stage, &reply));
            }
            Ok(())
        })
        .await;
        conn.broken |= result.is_err();
        result
    }

    /// Closes and waits (briefly) for the answer to QUIT. Used where a new connection takes
    /// this one's place, so the upstream never sees more than the cap open at once.
    pub async fn close_now(&self, conn: Connection) {
        let after = self.timeouts.command.min(Duration::from_secs(5));
        let _ = tokio::time::timeout(after, quit(conn)).await;
    }

    /// Closes politely in the background: QUIT costs a round trip nobody should wait for.
    pub fn close(&self, conn: Connection) {
        let after = self.timeouts.command;
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = tokio::time::timeout(after, quit(conn)).await;
            });
        }
    }
}

/// QUIT and its reply; a broken session is just dropped.
async fn quit(mut conn: Connection) {
    if !conn.broken && conn.wire.send(b"QUIT\r\n").await.is_ok() {
        let _ = conn.wire.reply().await;
    }
}

/// AUTH PLAIN (one round trip) where offered, else AUTH LOGIN.
async fn authenticate(conn: &mut Connection, login: &Login) -> Result<(), UpstreamError> {
    let stage = Stage::Auth;
    let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
    let wire = &mut conn.wire;
    let reply = if conn.ext.auth_plain {
        let mut token = vec![0u8];
        token.extend_from_slice(login.username.as_bytes());
        token.push(0);
        token.extend_from_slice(login.password.as_bytes());
        let command = format!("AUTH PLAIN {}\r\n", b64(&token));
        wire.send(command.as_bytes())
            .await
            .map_err(|e| io(stage, e))?;
        read(wire, stage).await?
    } else if conn.ext.auth_login {
        let mut reply = Reply::continuation();
        for line in [
            "AUTH LOGIN\r\n".to_string(),
            format!("{}\r\n", b64(login.username.as_bytes())),
            format!("{}\r\n", b64(login.password.as_bytes())),
        ] {
            if reply.code != 334 {
                break;
            }
            wire.send(line.as_bytes()).await.map_err(|e| io(stage, e))?;
            reply = read(wire, stage).await?;
        }
        reply
    } else {
        return Err(UpstreamError::Auth {
            code: None,
            text: "the upstream offers neither AUTH PLAIN nor AUTH LOGIN".into(),
        });
    };
    if reply.code != 235 {
        return Err(UpstreamError::from_reply(stage, &reply));
    }
    Ok(())
}

/// The next reply, its read failures reported at `stage`.
async fn read(wire: &mut Wire, stage: Stage) -> Result<Reply, UpstreamError> {
    wire.reply().await.map_err(|e| e.at(stage))
}

fn io(stage: Stage, e: std::io::Error) -> UpstreamError {
    UpstreamError::Io {
        stage,
        text: e.to_string(),
    }
}

/// Runs one step under its time limit.
async fn within<T>(
    stage: Stage,
    after: Duration,
    fut: impl Future<Output = Result<T, UpstreamError>>,
) -> Result<T, UpstreamError> {
    match tokio::time::timeout(after, fut).await {
        Err(_) => Err(timeout(stage, after)),
        Ok(result) => result,
    }
}

fn timeout(stage: Stage, after: Duration) -> UpstreamError {
    UpstreamError::Timeout { stage, after }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ehlo_keywords() {
        let reply = Reply::for_test(
            250,
            "mx.test greets you\npipelining\nSIZE 35882577\nAUTH LOGIN CRAM-MD5\nSTARTTLS\n8BITMIME",
        );
        let ext = Extensions::from_ehlo(&reply);
        assert!(ext.pipelining && ext.starttls && ext.eight_bit_mime && ext.auth_login);
        assert!(!ext.auth_plain && !ext.smtputf8);
        assert_eq!(ext.size, Some(35882577));
        let bare = Extensions::from_ehlo(&Reply::for_test(250, "mx.test\nSIZE"));
        assert_eq!(bare.size, Some(0));
        assert!(!bare.pipelining);
    }
}
