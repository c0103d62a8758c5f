//! The privacy policy: pure functions over raw message bytes (no I/O).
//!
//! INTERFACE (to be implemented by the privacy work):
//! - `recipients.rs`: the visible set V from all To/Cc headers (groups, quoted names, RFC 2047,
//!   comments, folding, case-insensitive de-duplication, minus trusted domains; unparseable
//!   address headers make the message count as exposing).
//! - `policy.rs`: [`plan`] — decision + one [`PlannedDelivery`] per copy.
//! - `rewrite.rs`: [`render_header`] — the header block of one copy, spliced from the original
//!   bytes; the body is never copied or changed.

use serde::{Deserialize, Serialize};

use crate::config::PrivacyConfig;
use crate::envelope::Envelope;

/// What the policy decided for one message; also the `action` label of
/// `mailveil_privacy_actions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Pass,
    Split,
    Bcc,
    Reject,
    Monitor,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Pass => "pass",
            Decision::Split => "split",
            Decision::Bcc => "bcc",
            Decision::Reject => "reject",
            Decision::Monitor => "monitor",
        }
    }
}

/// How one copy's header block differs from the original. Stored in the spool with each
/// delivery, so the header is produced when the copy is sent and a fan-out never holds all
/// copies in memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Rewrite {
    /// Original header block, minus `Bcc` fields.
    Unchanged,
    /// Split copy: `To:` shows only this recipient (with its display name when it had one in
    /// To/Cc); `Cc`, `Bcc` and `DKIM-Signature` removed.
    OnlyRecipient {
        address: String,
        display_name: Option<String>,
    },
    /// Bcc mode: `To: undisclosed-recipients:;`; `Cc`, `Bcc`, `DKIM-Signature` removed.
    Undisclosed,
}

/// One delivery the message turns into.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedDelivery {
    pub rcpt_to: Vec<String>,
    pub rewrite: Rewrite,
}

/// The policy's answer for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub decision: Decision,
    /// |V|: visible recipients counted (after de-duplication and trusted domains). For an
    /// unparseable address header this is at least `max_visible_recipients + 1`.
    pub visible: usize,
    /// Empty for `Reject`.
    pub deliveries: Vec<PlannedDelivery>,
}

/// Applies the policy to one message with its envelope.
pub fn plan(_config: &PrivacyConfig, _envelope: &Envelope, _message: &[u8]) -> Plan {
    unimplemented!("privacy::plan")
}

/// Header block (including the empty line that ends it) of the copy described by `rewrite`.
/// Everything after the original header block is the body and is sent unchanged.
pub fn render_header(_message: &[u8], _rewrite: &Rewrite) -> Vec<u8> {
    unimplemented!("privacy::render_header")
}

/// Byte offset where the body starts (just after the CRLF CRLF that ends the header block);
/// the message length if there is no body.
pub fn body_offset(_message: &[u8]) -> usize {
    unimplemented!("privacy::body_offset")
}

/// Text of the `550 5.7.1` reply in `reject` mode.
pub fn reject_text(visible: usize) -> String {
    format!(
        "message shows {visible} recipient addresses in To/Cc; send one message per recipient or use Bcc"
    )
}

/// STUB until merge.
pub fn header_from(_message: &[u8]) -> Option<String> {
    unimplemented!()
}
/// STUB until merge.
pub fn header_recipients(_message: &[u8]) -> Vec<String> {
    unimplemented!()
}
/// STUB until merge.
pub fn inspect_report(_c: &PrivacyConfig, _e: &Envelope, _m: &[u8]) -> String {
    unimplemented!()
}
