//! The SMTP envelope and the per-transaction facts that travel with a message.
//!
//! Kept in its own module because every stage (inbound, privacy, spool, upstream) speaks it.

use serde::{Deserialize, Serialize};

/// Envelope of one SMTP transaction: who the message is from and who receives it.
///
/// `mail_from` is the reverse path without angle brackets; the empty string is the null
/// sender `<>` (bounces). Recipients are kept in the order the client gave them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
}

/// What the inbound listener knows about the client that sent a message, for trace headers and logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    pub peer: std::net::SocketAddr,
    /// Name given in EHLO/HELO.
    pub helo: String,
    pub tls: bool,
    /// Authenticated user name, if the client used AUTH.
    pub user: Option<String>,
}
