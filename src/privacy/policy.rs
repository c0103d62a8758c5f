//! The decision: does a message expose recipients, and into which deliveries does it turn.
//!
//! Deliveries only ever divide the envelope recipients; nothing here adds or rewrites one,
//! because the envelope is what the client asked for and the header is what it got wrong.

use std::collections::HashMap;

use crate::config::{PrivacyConfig, PrivacyMode};
use crate::envelope::Envelope;

use super::recipients::{VisibleRecipients, visible_recipients};
use super::{Decision, Plan, PlannedDelivery, Rewrite};

/// Applies the policy to one message with its envelope.
pub fn plan(config: &PrivacyConfig, envelope: &Envelope, message: &[u8]) -> Plan {
    let seen = visible_recipients(message, &config.trusted_domains);
    let visible = seen.visible(config.max_visible_recipients);
    let decision = if visible > config.max_visible_recipients {
        match config.mode {
            PrivacyMode::Split => Decision::Split,
            PrivacyMode::Bcc => Decision::Bcc,
            PrivacyMode::Reject => Decision::Reject,
            PrivacyMode::Monitor => Decision::Monitor,
        }
    } else {
        Decision::Pass
    };
    let all = |rewrite: Rewrite| -> Vec<PlannedDelivery> {
        if envelope.rcpt_to.is_empty() {
            return Vec::new();
        }
        vec![PlannedDelivery {
            rcpt_to: envelope.rcpt_to.clone(),
            rewrite,
        }]
    };
    let deliveries = match decision {
        Decision::Pass | Decision::Monitor => all(Rewrite::Unchanged),
        Decision::Bcc => all(Rewrite::Undisclosed),
        Decision::Reject => Vec::new(),
        Decision::Split => split(envelope, &seen),
    };
    Plan {
        decision,
        visible,
        deliveries,
    }
}

/// One delivery per envelope recipient, each keeping the display name its recipient had in
/// To/Cc.
fn split(envelope: &Envelope, seen: &VisibleRecipients) -> Vec<PlannedDelivery> {
    // First occurrence wins, as a reader would see it first.
    let mut names: HashMap<String, &str> = HashMap::with_capacity(seen.addresses.len());
    for a in &seen.addresses {
        if let Some(name) = a.display_name.as_deref() {
            names.entry(a.address.to_lowercase()).or_insert(name);
        }
    }
    envelope
        .rcpt_to
        .iter()
        .map(|r| {
            let display_name = names
                .get(&r.to_lowercase())
                .copied()
                // A name such as `"bob@y" <alice@x>` would show Alice someone else's
                // address in her own copy: never keep a name that looks like an address.
                .filter(|n| !n.contains('@'))
                .map(str::to_string);
            PlannedDelivery {
                rcpt_to: vec![r.clone()],
                rewrite: Rewrite::OnlyRecipient {
                    address: r.clone(),
                    display_name,
                },
            }
        })
        .collect()
}
