//! Why the listener refused a command or a connection: the fixed set of `reason` labels of
//! `mailveil_inbound_rejections_total`, and which of them count as client mistakes.

/// The `reason` of a message refused because the spool is at `spool.max_bytes`.
pub const SPOOL_MAX_BYTES_REASON: &str = "spool_max_bytes";

/// Why a command or a connection was refused; the word is the `reason` label of
/// `mailveil_inbound_rejections_total`, a fixed set so the metric's cardinality is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Rejection {
    Syntax,
    UnknownCommand,
    BadSequence,
    NotImplemented,
    LineTooLong,
    RelayDenied,
    TlsRequired,
    EncryptionRequired,
    AuthFailed,
    Size,
    /// The message itself cannot be relayed as it is (a NUL byte).
    Malformed,
    TooManyRecipients,
    TooManyErrors,
    TooManyConnections,
    /// The slots outsiders may use are taken (the rest are reserved).
    TooManyOutsiderConnections,
    /// One source holds `max_connections_per_source` outsider connections.
    TooManySourceConnections,
    /// An outsider did not authenticate within `unauthenticated_timeout`.
    UnauthenticatedTimeout,
    /// The source used its AUTH failure budget: refused at connect or at AUTH.
    AuthBanned,
    /// The relay's AUTH failure budget is used up: AUTH refused for a while.
    AuthThrottled,
    Timeout,
    /// The spool holds `spool.max_bytes` already: `452 4.3.1` (counted by the relay at end of
    /// DATA too, when the message would cross the cap).
    SpoolMaxBytes,
    /// The sessions together hold `server.max_data_memory` of DATA: `452 4.3.1`.
    DataMemory,
    /// MAIL FROM not allowed for the session's app, or no app while `apps.require_app`:
    /// `550 5.7.1` (the header check at end of DATA is counted by the relay's app metrics).
    SenderDenied,
    /// Over the session's app's message rate (at MAIL) or daily recipient quota (at RCPT):
    /// `452 4.7.1` (see `mailveil_app_limited_total`).
    AppLimit,
}

impl Rejection {
    /// Every rejection, so metrics can create each `reason` series at zero.
    pub const ALL: [Rejection; 24] = [
        Rejection::Syntax,
        Rejection::UnknownCommand,
        Rejection::BadSequence,
        Rejection::NotImplemented,
        Rejection::LineTooLong,
        Rejection::RelayDenied,
        Rejection::TlsRequired,
        Rejection::EncryptionRequired,
        Rejection::AuthFailed,
        Rejection::Size,
        Rejection::Malformed,
        Rejection::TooManyRecipients,
        Rejection::TooManyErrors,
        Rejection::TooManyConnections,
        Rejection::TooManyOutsiderConnections,
        Rejection::TooManySourceConnections,
        Rejection::UnauthenticatedTimeout,
        Rejection::AuthBanned,
        Rejection::AuthThrottled,
        Rejection::Timeout,
        Rejection::SpoolMaxBytes,
        Rejection::DataMemory,
        Rejection::SenderDenied,
        Rejection::AppLimit,
    ];

    pub fn reason(self) -> &'static str {
        match self {
            Rejection::Syntax => "syntax",
            Rejection::UnknownCommand => "unknown_command",
            Rejection::BadSequence => "bad_sequence",
            Rejection::NotImplemented => "not_implemented",
            Rejection::LineTooLong => "line_too_long",
            Rejection::RelayDenied => "relay_denied",
            Rejection::TlsRequired => "tls_required",
            Rejection::EncryptionRequired => "encryption_required",
            Rejection::AuthFailed => "auth_failed",
            Rejection::Size => "size",
            Rejection::Malformed => "malformed",
            Rejection::TooManyRecipients => "too_many_recipients",
            Rejection::TooManyErrors => "too_many_errors",
            Rejection::TooManyConnections => "too_many_connections",
            Rejection::TooManyOutsiderConnections => "too_many_outsider_connections",
            Rejection::TooManySourceConnections => "too_many_source_connections",
            Rejection::UnauthenticatedTimeout => "unauthenticated_timeout",
            Rejection::AuthBanned => "auth_banned",
            Rejection::AuthThrottled => "auth_throttled",
            Rejection::Timeout => "timeout",
            Rejection::SpoolMaxBytes => SPOOL_MAX_BYTES_REASON,
            Rejection::DataMemory => "data_memory",
            Rejection::SenderDenied => "sender_denied",
            Rejection::AppLimit => "app_limit",
        }
    }

    /// Client mistakes count towards `max_errors`; limits a well-behaved client can hit in
    /// normal use (size, recipients) and AUTH failures (counted on their own) do not.
    pub fn is_client_error(self) -> bool {
        match self {
            Rejection::Syntax
            | Rejection::UnknownCommand
            | Rejection::BadSequence
            | Rejection::NotImplemented
            | Rejection::LineTooLong
            | Rejection::RelayDenied
            | Rejection::TlsRequired
            | Rejection::EncryptionRequired
            | Rejection::SenderDenied => true,
            Rejection::AuthFailed
            | Rejection::Size
            | Rejection::Malformed
            | Rejection::TooManyRecipients
            | Rejection::TooManyErrors
            | Rejection::TooManyConnections
            | Rejection::TooManyOutsiderConnections
            | Rejection::TooManySourceConnections
            | Rejection::UnauthenticatedTimeout
            | Rejection::AuthBanned
            | Rejection::AuthThrottled
            | Rejection::Timeout
            | Rejection::SpoolMaxBytes
            | Rejection::DataMemory
            | Rejection::AppLimit => false,
        }
    }
}
