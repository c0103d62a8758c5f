//! The privacy policy: pure functions over raw message bytes (no I/O).
//!
//! The promise it keeps: a message whose `To`/`Cc` show more recipients than allowed never
//! reaches anyone in that form. Where to look:
//! - [`recipients`]: the visible set V from all To/Cc fields (groups, quoted names, RFC 2047,
//!   comments, folding, case-insensitive de-duplication, minus trusted domains). Fields that do
//!   not parse cleanly make the message count as exposing (fail closed).
//! - [`policy`]: [`plan`] — the decision and one [`PlannedDelivery`] per copy.
//! - [`rewrite`]: [`render_header`] — the header block of one copy, spliced from the original
//!   bytes (this is where a split copy gets its `To:`); the body is never copied or changed.
//! - [`inspect`]: the text `mailveil inspect` prints.
//! - `fields`: the header scanner the parser and the rewrite share, so they agree on which
//!   bytes are a `To` field.

pub mod address;
mod fields;
pub mod inspect;
pub mod policy;
pub mod recipients;
pub mod rewrite;

pub use inspect::inspect_report;
pub use policy::plan;
pub use recipients::{
    AddressFieldError, HeaderAddress, VisibleRecipients, header_from, header_recipients,
    visible_recipients,
};
pub use rewrite::{body_offset, render_header};

use serde::{Deserialize, Serialize};

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

/// Text of the `550 5.7.1` reply in `reject` mode.
pub fn reject_text(visible: usize) -> String {
    format!(
        "message shows {visible} recipient addresses in To/Cc; send one message per recipient or use Bcc"
    )
}

#[cfg(test)]
mod tests;
