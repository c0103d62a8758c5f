//! Why a copy was not handed over, and whether trying again later can help.
//!
//! The classifier drives retries: a temporary failure keeps the copy in the spool (backoff until
//! `max_queue_time`), a permanent one fails it at once. Only the upstream's verdict on *this
//! message* (a 5xx to MAIL, RCPT or DATA, or an envelope we cannot send at all) is permanent.
//! Everything about the connection — refused, timed out, TLS, a 5xx greeting, failed AUTH — is
//! the upstream's or the operator's problem and must not bounce mail that would go through once
//! it is fixed.
//!
//! Texts never contain credentials or message content: they carry our stage names, the
//! upstream's own reply text and I/O or TLS error descriptions only.

use std::fmt;
use std::time::Duration;

/// The step of an SMTP session; names where a failure or a timeout happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Connect,
    /// The TLS handshake (implicit TLS, or after STARTTLS).
    Tls,
    /// The server greeting and our first EHLO (one step, under one time limit).
    Greeting,
    StartTls,
    Auth,
    /// RSET/NOOP used to check or clean a pooled connection.
    Reset,
    MailFrom,
    RcptTo,
    /// The DATA command (before the message is sent).
    Data,
    /// The message transfer and the final reply to it.
    Message,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Connect => "connect",
            Stage::Tls => "TLS handshake",
            Stage::Greeting => "greeting/EHLO",
            Stage::StartTls => "STARTTLS",
            Stage::Auth => "AUTH",
            Stage::Reset => "RSET",
            Stage::MailFrom => "MAIL FROM",
            Stage::RcptTo => "RCPT TO",
            Stage::Data => "DATA",
            Stage::Message => "end of data",
        })
    }
}

/// Why a copy was not handed over. [`is_temporary`](UpstreamError::is_temporary) drives retries.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP connect failed (refused, unreachable, name not resolved).
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// The upstream did not answer within the configured timeout.
    #[error("timed out after {after:?} during {stage}")]
    Timeout { stage: Stage, after: Duration },
    /// Handshake or certificate verification failed, or the upstream refused STARTTLS.
    #[error("TLS failure: {0}")]
    Tls(String),
    /// `tls = "starttls"` but the upstream does not offer it; we never fall back to plaintext.
    #[error("upstream does not offer STARTTLS; refusing to send in plaintext")]
    NoStartTls,
    /// AUTH failed (bad credentials, no common mechanism). Temporary: mail waits while an
    /// operator fixes the credentials.
    #[error("authentication failed: {text}")]
    Auth { code: Option<u16>, text: String },
    /// The upstream refused the session itself (greeting or EHLO). Temporary whatever the
    /// code: it says nothing about this message.
    #[error("upstream refused the session at {stage}: {code} {text}")]
    Refused {
        stage: Stage,
        code: u16,
        text: String,
    },
    /// The upstream answered MAIL, RCPT or DATA with a negative reply.
    #[error("upstream replied {code} {text} to {stage}")]
    Rejected {
        stage: Stage,
        code: u16,
        text: String,
    },
    /// The upstream spoke something that is not SMTP, or closed the connection mid-reply.
    #[error("protocol error during {stage}: {text}")]
    Protocol { stage: Stage, text: String },
    /// Reading or writing the connection failed.
    #[error("I/O error during {stage}: {text}")]
    Io { stage: Stage, text: String },
    /// The envelope cannot be expressed to this upstream (an address with CR/LF or angle
    /// brackets, no recipients, UTF-8 addresses to a server without SMTPUTF8).
    #[error("envelope cannot be sent: {0}")]
    Envelope(&'static str),
    /// The upstream's configuration cannot be used (unreadable `ca_file`, bad host name).
    #[error("upstream configuration: {0}")]
    Config(String),
    /// Writing to a capture directory failed.
    #[error("capture directory: {0}")]
    Capture(#[source] std::io::Error),
    /// Direct delivery found nowhere to send the copy: permanent when the domain does not exist
    /// or says it takes no mail (null MX), temporary when DNS failed or no host answered.
    #[error("no route: {text}")]
    NoRoute { permanent: bool, text: String },
    /// Not sent: every upstream's daily quota is spent (or it is suspended) until `until`
    /// (Unix s). The copy waits for it: never bounced, never expired for it
    /// (`upstream/failover.rs`).
    #[error("{reason}")]
    Held { until: u64, reason: String },
}

impl UpstreamError {
    /// True when the same copy may succeed later (4xx, network, TLS, timeout, credentials,
    /// configuration); false when the upstream has given its final word on this message.
    pub fn is_temporary(&self) -> bool {
        match self {
            UpstreamError::Connect { .. } => true,
            UpstreamError::Timeout { .. } => true,
            UpstreamError::Tls(_) => true,
            UpstreamError::NoStartTls => true,
            UpstreamError::Auth { .. } => true,
            UpstreamError::Refused { .. } => true,
            UpstreamError::Rejected { code, .. } => !(500..=599).contains(code),
            UpstreamError::Protocol { .. } => true,
            UpstreamError::Io { .. } => true,
            UpstreamError::Envelope(_) => false,
            UpstreamError::Config(_) => true,
            UpstreamError::Capture(_) => true,
            UpstreamError::Held { .. } => true,
            UpstreamError::NoRoute { permanent, .. } => !permanent,
        }
    }

    /// Until when (Unix s) a held copy waits instead of the usual backoff, if it is held.
    pub fn held_until(&self) -> Option<u64> {
        match self {
            UpstreamError::Held { until, .. } => Some(*until),
            _ => None,
        }
    }

    /// The SMTP reply code when the upstream answered with one.
    pub fn code(&self) -> Option<u16> {
        match self {
            UpstreamError::Refused { code, .. } | UpstreamError::Rejected { code, .. } => {
                Some(*code)
            }
            UpstreamError::Auth { code, .. } => *code,
            UpstreamError::Connect { .. }
            | UpstreamError::Timeout { .. }
            | UpstreamError::Tls(_)
            | UpstreamError::NoStartTls
            | UpstreamError::Protocol { .. }
            | UpstreamError::Io { .. }
            | UpstreamError::Envelope(_)
            | UpstreamError::Config(_)
            | UpstreamError::Capture(_)
            | UpstreamError::Held { .. }
            | UpstreamError::NoRoute { .. } => None,
        }
    }

    /// The upstream's reply text (without the code) when it answered with one: what traffic
    /// shaping rules match "too fast" deferrals against.
    pub fn reply_text(&self) -> Option<&str> {
        match self {
            UpstreamError::Refused { text, .. } | UpstreamError::Rejected { text, .. } => {
                Some(text)
            }
            UpstreamError::Auth {
                code: Some(_),
                text,
            } => Some(text),
            UpstreamError::Auth { code: None, .. }
            | UpstreamError::Connect { .. }
            | UpstreamError::Timeout { .. }
            | UpstreamError::Tls(_)
            | UpstreamError::NoStartTls
            | UpstreamError::Protocol { .. }
            | UpstreamError::Io { .. }
            | UpstreamError::Envelope(_)
            | UpstreamError::Config(_)
            | UpstreamError::Capture(_)
            | UpstreamError::Held { .. }
            | UpstreamError::NoRoute { .. } => None,
        }
    }

    /// Maps a negative reply to the command of `stage`: `Refused` for the session itself
    /// (greeting, EHLO, RSET), `Rejected` for MAIL, RCPT, DATA and the message, `Auth` and `Tls`
    /// for those steps.
    pub(crate) fn from_reply(stage: Stage, reply: &super::smtp::Reply) -> Self {
        let code = reply.code;
        let text = reply.text();
        match stage {
            Stage::Auth => UpstreamError::Auth {
                code: Some(code),
                text,
            },
            Stage::StartTls | Stage::Tls => {
                UpstreamError::Tls(format!("upstream answered STARTTLS with {code} {text}"))
            }
            Stage::Connect | Stage::Greeting | Stage::Reset => {
                UpstreamError::Refused { stage, code, text }
            }
            Stage::MailFrom | Stage::RcptTo | Stage::Data | Stage::Message => {
                UpstreamError::Rejected { stage, code, text }
            }
        }
    }

    /// True when the connection is still in a defined state after this error, so an RSET can
    /// make it reusable. A 421 means the server is closing it.
    pub(crate) fn leaves_connection_usable(&self) -> bool {
        match self {
            UpstreamError::Rejected { code, .. } => *code != 421,
            UpstreamError::Envelope(_) => true,
            UpstreamError::Connect { .. }
            | UpstreamError::Timeout { .. }
            | UpstreamError::Tls(_)
            | UpstreamError::NoStartTls
            | UpstreamError::Auth { .. }
            | UpstreamError::Refused { .. }
            | UpstreamError::Protocol { .. }
            | UpstreamError::Io { .. }
            | UpstreamError::Config(_)
            | UpstreamError::Capture(_)
            | UpstreamError::Held { .. }
            | UpstreamError::NoRoute { .. } => false,
        }
    }

    /// True when a pooled connection failed on the first command of a transaction in a way
    /// that says the server closed it while idle. Nothing of the copy was accepted yet, so it
    /// can be tried once more on a fresh connection without risk of a duplicate.
    pub(crate) fn is_stale_connection(&self) -> bool {
        match self {
            UpstreamError::Io { stage, .. } | UpstreamError::Protocol { stage, .. } => {
                *stage == Stage::MailFrom
            }
            UpstreamError::Rejected { stage, code, .. } => {
                *stage == Stage::MailFrom && *code == 421
            }
            UpstreamError::Connect { .. }
            | UpstreamError::Timeout { .. }
            | UpstreamError::Tls(_)
            | UpstreamError::NoStartTls
            | UpstreamError::Auth { .. }
            | UpstreamError::Refused { .. }
            | UpstreamError::Envelope(_)
            | UpstreamError::Config(_)
            | UpstreamError::Capture(_)
            | UpstreamError::Held { .. }
            | UpstreamError::NoRoute { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(code: u16) -> UpstreamError {
        UpstreamError::Rejected {
            stage: Stage::RcptTo,
            code,
            text: "x".into(),
        }
    }

    #[test]
    fn classification() {
        assert!(rejected(451).is_temporary());
        assert!(rejected(421).is_temporary());
        assert!(!rejected(550).is_temporary());
        assert!(!rejected(554).is_temporary());
        assert_eq!(rejected(550).code(), Some(550));
        let refused = UpstreamError::Refused {
            stage: Stage::Greeting,
            code: 554,
            text: "go away".into(),
        };
        assert!(
            refused.is_temporary(),
            "a 5xx greeting is not about this message"
        );
        let auth = UpstreamError::Auth {
            code: Some(535),
            text: "bad".into(),
        };
        assert!(auth.is_temporary());
        assert_eq!(auth.code(), Some(535));
        assert!(UpstreamError::NoStartTls.is_temporary());
        assert!(UpstreamError::Tls("x".into()).is_temporary());
        assert!(
            UpstreamError::Timeout {
                stage: Stage::Data,
                after: Duration::from_secs(1)
            }
            .is_temporary()
        );
        assert!(!UpstreamError::Envelope("x").is_temporary());
        assert_eq!(UpstreamError::NoStartTls.code(), None);
    }

    #[test]
    fn connection_state_after_errors() {
        assert!(rejected(550).leaves_connection_usable());
        assert!(!rejected(421).leaves_connection_usable());
        assert!(
            !rejected(421).is_stale_connection(),
            "421 to RCPT: MAIL was accepted"
        );
        let stale = UpstreamError::Rejected {
            stage: Stage::MailFrom,
            code: 421,
            text: "idle too long".into(),
        };
        assert!(stale.is_stale_connection());
        let late = UpstreamError::Io {
            stage: Stage::Message,
            text: "reset".into(),
        };
        assert!(!late.is_stale_connection(), "data may have been delivered");
    }
}
