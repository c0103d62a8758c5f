//! One SMTP session to an upstream, driven through lettre's `AsyncSmtpConnection`.
//!
//! What we add around lettre, and why:
//! - We open the socket ourselves to set TCP_NODELAY; lettre does not, which costs ~44 ms per
//!   message on loopback (Nagle + delayed ACK on the small command writes).
//! - Every step runs under `tokio::time::timeout`: lettre has no read timeout, and a stalled
//!   upstream would otherwise hold a connection slot forever.
//! - STARTTLS is required when configured; a server that does not offer it gets no mail. We
//!   perform the upgrade ourselves (lettre would put TLS on top of our stream), so that every
//!   reply lettre reads comes through [`ReplyStream`], which decodes it lossily: a reply whose
//!   text is not UTF-8 is classified by its code like any other (see `stream.rs`).
//! - We write MAIL and RCPT ourselves so the null sender goes out as `MAIL FROM:<>`, a quoted
//!   local part goes out byte for byte as stored (`RCPT TO:<"b@y, x"@z>`), and we decide on
//!   `BODY=8BITMIME` / `SMTPUTF8`; lettre's `send` needs its own `Envelope` type.
//! - lettre always ends the data with CRLF.CRLF, so one trailing CRLF of the message is removed
//!   first; the upstream then receives the message byte for byte.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream};
use lettre::transport::smtp::commands::{Data, Quit, Rset, Starttls};
use lettre::transport::smtp::extension::{ClientId, Extension};
use lettre::transport::smtp::response::Response;
use tokio::net::TcpStream;

use super::stream::{Detachable, ReplyStream};
use super::tls::{TlsConnection, TlsSetup};
use super::{Outbound, Stage, Timeouts, UpstreamError};
use crate::config::{SmtpUpstreamConfig, UpstreamTls};

/// An open, greeted (and if configured, encrypted and authenticated) session.
pub(crate) struct Connection {
    smtp: AsyncSmtpConnection,
    /// Completed transactions, to cap how long one connection lives.
    pub transactions: u32,
}

/// How to reach one SMTP upstream; shared by all its connections.
pub(crate) struct SmtpClient {
    host: String,
    port: u16,
    tls: UpstreamTls,
    /// `None` for `tls = "none"`.
    tls_setup: Option<TlsSetup>,
    credentials: Option<Credentials>,
    client_id: ClientId,
    pub timeouts: Timeouts,
}

impl SmtpClient {
    pub fn new(
        config: &SmtpUpstreamConfig,
        helo: &str,
        timeouts: Timeouts,
    ) -> Result<SmtpClient, UpstreamError> {
        let tls_setup = match config.tls {
            UpstreamTls::None => None,
            UpstreamTls::StartTls | UpstreamTls::Implicit => {
                Some(TlsSetup::new(&config.host, config.ca_file.as_deref())?)
            }
        };
        let credentials = match (&config.credentials, config.tls) {
            (None, _) => None,
            (Some(_), UpstreamTls::None) => {
                return Err(UpstreamError::Config(
                    "credentials are never sent in plaintext: use starttls or implicit".into(),
                ));
            }
            (Some(c), UpstreamTls::StartTls | UpstreamTls::Implicit) => Some(Credentials::new(
                c.username.clone(),
                c.password.expose().to_string(),
            )),
        };
        Ok(SmtpClient {
            host: config.host.clone(),
            port: config.port,
            tls: config.tls,
            tls_setup,
            credentials,
            client_id: ClientId::Domain(helo.to_string()),
            timeouts,
        })
    }

    /// Opens a session ready for MAIL: TCP (no Nagle), TLS, greeting, EHLO, STARTTLS, AUTH.
    pub async fn connect(&self) -> Result<Connection, UpstreamError> {
        let t = &self.timeouts;
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        let tcp = match tokio::time::timeout(t.connect, TcpStream::connect((host, self.port))).await
        {
            Err(_) => return Err(timeout(Stage::Connect, t.connect)),
            Ok(Err(source)) => {
                return Err(UpstreamError::Connect {
                    addr: format!("{}:{}", self.host, self.port),
                    source,
                });
            }
            Ok(Ok(tcp)) => tcp,
        };
        tcp.set_nodelay(true).map_err(|e| UpstreamError::Io {
            stage: Stage::Connect,
            text: e.to_string(),
        })?;

        let mut smtp = match (self.tls, &self.tls_setup) {
            (UpstreamTls::Implicit, Some(setup)) => {
                let handshake = setup.connector.connect(setup.server_name.clone(), tcp);
                let tls = match tokio::time::timeout(t.tls, handshake).await {
                    Err(_) => return Err(timeout(Stage::Tls, t.tls)),
                    Ok(Err(e)) => return Err(UpstreamError::Tls(e.to_string())),
                    Ok(Ok(tls)) => tls,
                };
                let stream = Box::new(ReplyStream::new(TlsConnection(tls)));
                self.greet(stream).await?
            }
            (UpstreamTls::StartTls, Some(setup)) => self.starttls(tcp, setup).await?,
            (UpstreamTls::StartTls | UpstreamTls::Implicit, None) => {
                return Err(UpstreamError::Config("TLS without TLS setup".into()));
            }
            (UpstreamTls::None, _) => self.greet(Box::new(ReplyStream::new(tcp))).await?,
        };

        if let Some(credentials) = &self.credentials {
            step(
                Stage::Auth,
                t.auth,
                smtp.auth(&[Mechanism::Plain, Mechanism::Login], credentials),
            )
            .await?;
        }
        Ok(Connection {
            smtp,
            transactions: 0,
        })
    }

    /// Reads the greeting and says EHLO.
    async fn greet(
        &self,
        stream: Box<dyn AsyncTokioStream>,
    ) -> Result<AsyncSmtpConnection, UpstreamError> {
        step(
            Stage::Greeting,
            self.timeouts.greeting,
            AsyncSmtpConnection::connect_with_transport(stream, &self.client_id),
        )
        .await
    }

    /// Greeting, EHLO and STARTTLS in plaintext; then our TLS handshake and a new lettre
    /// session over it (lettre reads the greeting again, replayed, and says EHLO again). The
    /// plaintext session is dropped with anything the upstream sent after its `220`.
    async fn starttls(
        &self,
        tcp: TcpStream,
        setup: &TlsSetup,
    ) -> Result<AsyncSmtpConnection, UpstreamError> {
        let t = &self.timeouts;
        let plain = Detachable::new(tcp);
        let mut smtp = self
            .greet(Box::new(ReplyStream::new(plain.clone())))
            .await?;
        if !smtp.server_info().supports_feature(Extension::StartTls) {
            // Say goodbye in plaintext (harmless), never anything else.
            let _ = tokio::time::timeout(t.command, smtp.quit()).await;
            return Err(UpstreamError::NoStartTls);
        }
        let upgrade = async {
            smtp.command(Starttls)
                .await
                .map_err(|e| UpstreamError::from_lettre(Stage::StartTls, e))?;
            drop(smtp);
            let tcp = plain
                .take()
                .ok_or_else(|| UpstreamError::Tls("connection lost before the handshake".into()))?;
            let tls = setup
                .connector
                .connect(setup.server_name.clone(), tcp)
                .await
                .map_err(|e| UpstreamError::Tls(e.to_string()))?;
            let stream = ReplyStream::replaying(GREETING_AFTER_TLS, TlsConnection(tls));
            AsyncSmtpConnection::connect_with_transport(Box::new(stream), &self.client_id)
                .await
                .map_err(|e| UpstreamError::from_lettre(Stage::StartTls, e))
        };
        match tokio::time::timeout(t.tls, upgrade).await {
            Err(_) => Err(timeout(Stage::StartTls, t.tls)),
            Ok(result) => result,
        }
    }

    /// One transaction: MAIL, every RCPT, DATA, the message. Returns the final reply.
    /// All recipients or none: the first refused RCPT fails the whole copy, since `send` has no
    /// way to report a partial hand-over and a retry must not duplicate mail for the others.
    pub async fn transaction(
        &self,
        conn: &mut Connection,
        msg: &Outbound<'_>,
    ) -> Result<String, UpstreamError> {
        let t = &self.timeouts;
        let info = conn.smtp.server_info();
        let utf8_addresses = !msg.mail_from.is_ascii() || msg.rcpt_to.iter().any(|r| !r.is_ascii());
        if utf8_addresses && !info.supports_feature(Extension::SmtpUtfEight) {
            return Err(UpstreamError::Envelope(
                "UTF-8 address, but the upstream does not offer SMTPUTF8",
            ));
        }
        // 8-bit content to a server without 8BITMIME is sent anyway: practically every server
        // accepts it, and refusing would bounce mail that would have been delivered.
        let eight_bit = (!msg.header.is_ascii() || !msg.body.is_ascii())
            && info.supports_feature(Extension::EightBitMime);
        let mail = MailFrom {
            path: msg.mail_from,
            eight_bit,
            smtputf8: utf8_addresses,
        };
        step(Stage::MailFrom, t.command, conn.smtp.command(mail)).await?;
        for rcpt in msg.rcpt_to {
            step(Stage::RcptTo, t.command, conn.smtp.command(RcptTo(rcpt))).await?;
        }
        step(Stage::Data, t.command, conn.smtp.command(Data)).await?;
        let parts = data_parts(msg.header, msg.body);
        let len = parts[0].len() + parts[1].len();
        let after = t.message_timeout(len);
        // lettre dot-stuffs each part into a buffer of its own size before writing it: fed in
        // bounded chunks, a copy in flight costs DATA_CHUNK of memory, not the message's size.
        let chunks = parts.into_iter().flat_map(|p| p.chunks(DATA_CHUNK));
        let reply = step(Stage::Message, after, conn.smtp.message_iter(chunks)).await?;
        conn.transactions += 1;
        Ok(reply_text(&reply))
    }

    /// RSET: checks that a pooled connection is alive, or clears a failed transaction.
    pub async fn reset(&self, conn: &mut Connection) -> Result<(), UpstreamError> {
        step(Stage::Reset, self.timeouts.command, conn.smtp.command(Rset))
            .await
            .map(|_| ())
    }

    /// Closes and waits (briefly) for the answer to QUIT. Used where a new connection takes
    /// this one's place, so the upstream never sees more than the cap open at once.
    pub async fn close_now(&self, mut conn: Connection) {
        let after = self.timeouts.command.min(std::time::Duration::from_secs(5));
        let _ = tokio::time::timeout(after, conn.smtp.command(Quit)).await;
    }

    /// Closes politely in the background: QUIT costs a round trip nobody should wait for.
    pub fn close(&self, mut conn: Connection) {
        let after = self.timeouts.command;
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = tokio::time::timeout(after, conn.smtp.command(Quit)).await;
            });
        }
    }
}

/// What lettre reads as the greeting of the session we continue over TLS (the real one came
/// before STARTTLS; RFC 3207 has no second greeting).
const GREETING_AFTER_TLS: &[u8] = b"220 TLS established\r\n";

/// Bytes of a message handed to lettre at a time (see [`Client::transaction`]).
const DATA_CHUNK: usize = 64 << 10;

/// Runs one lettre step under a timeout and maps its error for `stage`.
async fn step<T>(
    stage: Stage,
    after: Duration,
    fut: impl Future<Output = Result<T, lettre::transport::smtp::Error>>,
) -> Result<T, UpstreamError> {
    match tokio::time::timeout(after, fut).await {
        Err(_) => Err(timeout(stage, after)),
        Ok(Err(e)) => Err(UpstreamError::from_lettre(stage, e)),
        Ok(Ok(v)) => Ok(v),
    }
}

fn timeout(stage: Stage, after: Duration) -> UpstreamError {
    UpstreamError::Timeout { stage, after }
}

/// The message as lettre should send it: lettre appends CRLF.CRLF itself, so the message's
/// own final CRLF (usually the body's, or the header block's when the body is empty) is removed.
/// A message that does not end in CRLF gets one from lettre: SMTP cannot carry it otherwise.
pub(crate) fn data_parts<'a>(header: &'a [u8], body: &'a [u8]) -> [&'a [u8]; 2] {
    if let Some(body) = body.strip_suffix(b"\r\n") {
        [header, body]
    } else if body.is_empty() {
        [header.strip_suffix(b"\r\n").unwrap_or(header), body]
    } else {
        [header, body]
    }
}

/// `250 2.0.0 Ok: queued as X` from a possibly multi-line reply.
fn reply_text(reply: &Response) -> String {
    let lines: Vec<&str> = reply.message().collect();
    format!("{} {}", reply.code(), lines.join(" "))
}

/// `MAIL FROM:<path>` with the parameters this copy needs; `path` empty = null sender.
struct MailFrom<'a> {
    path: &'a str,
    eight_bit: bool,
    smtputf8: bool,
}

impl fmt::Display for MailFrom<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MAIL FROM:<{}>", self.path)?;
        if self.eight_bit {
            f.write_str(" BODY=8BITMIME")?;
        }
        if self.smtputf8 {
            f.write_str(" SMTPUTF8")?;
        }
        f.write_str("\r\n")
    }
}

struct RcptTo<'a>(&'a str);

impl fmt::Display for RcptTo<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RCPT TO:<{}>\r\n", self.0)
    }
}

/// Refuses envelopes that would corrupt the command stream (CR/LF injection, brackets) before
/// anything is sent. A quoted local part (`"b@y, x"@z`) passes: the inbound side stores
/// addresses in RFC 5321 form and never lets control characters or brackets in, so this is
/// the second line of defence, not the first.
pub(crate) fn check_envelope(msg: &Outbound<'_>) -> Result<(), UpstreamError> {
    fn bad(path: &str) -> bool {
        path.chars().any(|c| c.is_control() || c == '<' || c == '>')
    }
    if msg.rcpt_to.is_empty() {
        return Err(UpstreamError::Envelope("no recipients"));
    }
    if bad(msg.mail_from) {
        return Err(UpstreamError::Envelope(
            "sender address holds control characters or brackets",
        ));
    }
    if msg.rcpt_to.iter().any(|r| r.is_empty() || bad(r)) {
        return Err(UpstreamError::Envelope(
            "recipient address is empty or holds control characters or brackets",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_crlf_is_removed_once() {
        let h = b"A: b\r\n\r\n".as_slice();
        assert_eq!(data_parts(h, b"x\r\n"), [h, b"x".as_slice()]);
        assert_eq!(data_parts(h, b"x\r\n\r\n"), [h, b"x\r\n".as_slice()]);
        assert_eq!(data_parts(h, b""), [b"A: b\r\n".as_slice(), b"".as_slice()]);
        assert_eq!(data_parts(h, b"no newline"), [h, b"no newline".as_slice()]);
    }

    #[test]
    fn commands_render() {
        let null = MailFrom {
            path: "",
            eight_bit: false,
            smtputf8: false,
        };
        assert_eq!(null.to_string(), "MAIL FROM:<>\r\n");
        let full = MailFrom {
            path: "a@b.c",
            eight_bit: true,
            smtputf8: true,
        };
        assert_eq!(
            full.to_string(),
            "MAIL FROM:<a@b.c> BODY=8BITMIME SMTPUTF8\r\n"
        );
        assert_eq!(RcptTo("x@y.z").to_string(), "RCPT TO:<x@y.z>\r\n");
    }

    #[test]
    fn quoted_local_parts_are_sent_byte_for_byte() {
        let rcpt = vec![
            "\"b@y, x\"@z.test".to_string(),
            "\"a\\\"b\"@x.test".to_string(),
        ];
        assert_eq!(
            RcptTo(&rcpt[0]).to_string(),
            "RCPT TO:<\"b@y, x\"@z.test>\r\n"
        );
        assert_eq!(
            RcptTo(&rcpt[1]).to_string(),
            "RCPT TO:<\"a\\\"b\"@x.test>\r\n"
        );
        let from = MailFrom {
            path: "\"no reply\"@src.test",
            eight_bit: false,
            smtputf8: false,
        };
        assert_eq!(from.to_string(), "MAIL FROM:<\"no reply\"@src.test>\r\n");
        let msg = Outbound {
            mail_from: from.path,
            rcpt_to: &rcpt,
            header: b"",
            body: b"",
        };
        assert!(check_envelope(&msg).is_ok(), "quoted local parts are fine");
    }

    #[test]
    fn injection_is_refused() {
        let rcpt = vec!["ok@example.com\r\nRCPT TO:<evil@example.com>".to_string()];
        let msg = Outbound {
            mail_from: "",
            rcpt_to: &rcpt,
            header: b"",
            body: b"",
        };
        assert!(matches!(
            check_envelope(&msg),
            Err(UpstreamError::Envelope(_))
        ));
        let none: Vec<String> = Vec::new();
        let msg = Outbound {
            rcpt_to: &none,
            ..msg
        };
        assert!(check_envelope(&msg).is_err());
        let good = vec!["a@example.com".to_string()];
        let msg = Outbound {
            rcpt_to: &good,
            ..msg
        };
        assert!(check_envelope(&msg).is_ok());
    }
}
