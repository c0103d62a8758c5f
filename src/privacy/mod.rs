//! The privacy policy: pure functions over raw message bytes (no I/O).
//!
//! The promise (SPEC "Privacy policy", version 2) is about bytes: no delivered copy shows,
//! under any reading, the address of anyone who must not see it. Parsing decides how to
//! rewrite; an independent scan of each copy's bytes decides whether it may leave. Where to
//! look:
//! - [`address`]: what an address looks like in free text, and when two are the same.
//! - [`reading`]: the texts a lenient reader sees in header bytes (unfolded, RFC 2047 decoded
//!   repeatedly, NFKC, compact obsolete syntax).
//! - [`exposure`]: the private addresses of a message and who may see which ([`Exposure`]).
//! - [`egress`]: the check of one copy's header block; [`body`]: the check of the shared body.
//! - [`policy`]: [`plan`] / [`assess`] — the decision, one [`PlannedDelivery`] per copy, or a
//!   [`Refusal`].
//! - [`rewrite`]: [`render_header`] — the header block of one copy, spliced from the original
//!   bytes (this is where a split copy gets its `To:`); the body is never copied or changed.
//! - [`recipients`]: the address parser (mail-parser, cross-checked) that finds display names
//!   and refuses what it cannot account for.
//! - [`inspect`]: the text `mailveil inspect` prints; `bytes`: the one view of the bytes
//!   (line endings, NUL) that `inspect` shares with the DATA decoder.
//! - `fields`: the header scanner the parser and the rewrite share.

pub mod address;
pub mod body;
pub mod bytes;
pub mod egress;
pub mod exposure;
pub(crate) mod fields;
pub mod inspect;
pub mod policy;
pub mod reading;
pub mod recipients;
pub mod rewrite;

pub use exposure::{Audience, Exposure};
pub use inspect::inspect_report;
pub use policy::{assess, plan};
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

impl Rewrite {
    /// The copy `address` gets under `decision` when it is the mailbox's own: unchanged when the
    /// message exposes nobody, undisclosed in bcc mode, otherwise a copy that shows only it.
    /// Used for copies that are not in the plan, such as a bulk hold's operator canaries.
    pub fn own_copy(decision: Decision, address: &str) -> Rewrite {
        match decision {
            Decision::Pass => Rewrite::Unchanged,
            Decision::Bcc => Rewrite::Undisclosed,
            _ => Rewrite::OnlyRecipient {
                address: address.to_string(),
                display_name: None,
            },
        }
    }
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
    /// `Reject` whenever the message is refused, whatever the mode.
    pub decision: Decision,
    /// |V|: private addresses in To/Cc. For an unparseable address field this is at least
    /// `max_visible_recipients + 1`.
    pub visible: usize,
    /// Empty when refused.
    pub deliveries: Vec<PlannedDelivery>,
    /// Why the message is refused (`550 5.7.1` with this text); `None` when accepted.
    pub refusal: Option<Refusal>,
    /// The body shows a recipient's address and was relayed anyway (`body_check = "monitor"`,
    /// or `mode = "monitor"`): the part, for the log.
    pub body_warning: Option<String>,
}

/// The settings a message's copies were planned with. Stored with the message, so the check
/// before each copy is sent uses them too, after a reload or a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrivacySettings {
    pub max_visible_recipients: usize,
    pub trusted_domains: Vec<String>,
}

impl PrivacySettings {
    pub fn of(config: &crate::config::PrivacyConfig) -> PrivacySettings {
        PrivacySettings {
            max_visible_recipients: config.max_visible_recipients,
            trusted_domains: config.trusted_domains.clone(),
        }
    }

    /// `config` with these settings in place of its own.
    pub fn apply(&self, config: &crate::config::PrivacyConfig) -> crate::config::PrivacyConfig {
        crate::config::PrivacyConfig {
            max_visible_recipients: self.max_visible_recipients,
            trusted_domains: self.trusted_domains.clone(),
            ..config.clone()
        }
    }
}

/// A message the privacy policy does not accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: BlockReason,
    /// The text of the `550 5.7.1` reply: what was found where, and what to do.
    pub text: String,
}

/// Why a message was refused: the `reason` label of `mailveil_privacy_blocked_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockReason {
    /// A header field shows (or would still show after the rewrite) a recipient's address.
    Field,
    /// The shared body shows one, or cannot be checked.
    Body,
    /// Bytes no reader agrees on (NUL in DATA).
    Malformed,
}

impl BlockReason {
    pub fn as_str(self) -> &'static str {
        match self {
            BlockReason::Field => "field",
            BlockReason::Body => "body",
            BlockReason::Malformed => "malformed",
        }
    }
}

#[cfg(test)]
mod tests;
