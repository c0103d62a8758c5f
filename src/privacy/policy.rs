//! The decision: which copies a message turns into, and whether it may be accepted at all.
//!
//! Parsing decides how to rewrite; the egress check ([`egress`]) decides whether each copy may
//! leave. Both run here at end of DATA on the exact bytes that will be delivered, so a refusal
//! is a `550` to the client, never a copy that goes out wrong:
//! 1. [`Exposure::assess`]: the private addresses and the visible set V.
//! 2. Would any recipient's unchanged copy show an address it must not see? If not, `pass`;
//!    otherwise the mode decides (split / bcc / reject / monitor).
//! 3. Every rewritten copy is checked; one that still shows another recipient's address
//!    (Reply-To, a custom field, an indented block, a group name...) refuses the message.
//! 4. The body, shared by all copies, is checked once (`body_check`).
//!
//! Deliveries only ever divide the envelope recipients (duplicates once); nothing here adds or
//! rewrites one, because the envelope is what the client asked for and the header is what it
//! got wrong.

use std::collections::HashSet;

use crate::config::{BodyCheck, PrivacyConfig, PrivacyMode};
use crate::envelope::Envelope;

use super::address;
use super::body;
use super::egress::{self, Leak};
use super::exposure::{Audience, Exposure};
use super::reading::each_reading;
use super::recipients::{VisibleRecipients, visible_recipients};
use super::rewrite::{only_recipient_to, render_header};
use super::{BlockReason, Decision, Plan, PlannedDelivery, Refusal, Rewrite};

/// Applies the policy to one message with its envelope.
pub fn plan(config: &PrivacyConfig, envelope: &Envelope, message: &[u8]) -> Plan {
    assess(config, envelope, message).1
}

/// The policy's answer and the private-address facts it was made with (which the queue
/// keeps, to check each copy again before it is sent).
pub fn assess(config: &PrivacyConfig, envelope: &Envelope, message: &[u8]) -> (Exposure, Plan) {
    let exposure = Exposure::assess(config, envelope, message);
    let plan = decide(config, envelope, message, &exposure);
    (exposure, plan)
}

fn decide(
    config: &PrivacyConfig,
    envelope: &Envelope,
    message: &[u8],
    exposure: &Exposure,
) -> Plan {
    let names = visible_recipients(message, &config.trusted_domains);
    let recipients = distinct(&envelope.rcpt_to);
    let everyone = exposure.audience(recipients.iter().map(String::as_str));
    let unchanged = render_header(message, &Rewrite::Unchanged, exposure);
    let shown = egress::check(exposure, &unchanged, &everyone).err();
    let unparseable = names.unparseable.is_some() && !everyone.is_empty();
    let exposing = shown.is_some() || unparseable;

    let mut visible = exposure.visible_count();
    if names.unparseable.is_some() {
        visible = visible.max(config.max_visible_recipients.saturating_add(1));
    }
    let decision = match (exposing, config.mode) {
        (false, _) => Decision::Pass,
        (true, PrivacyMode::Split) => Decision::Split,
        (true, PrivacyMode::Bcc) => Decision::Bcc,
        (true, PrivacyMode::Reject) => Decision::Reject,
        (true, PrivacyMode::Monitor) => Decision::Monitor,
    };
    let all = |rewrite: Rewrite| -> Vec<PlannedDelivery> {
        if recipients.is_empty() {
            return Vec::new();
        }
        vec![PlannedDelivery {
            rcpt_to: recipients.clone(),
            rewrite,
        }]
    };
    let deliveries = match decision {
        Decision::Pass | Decision::Monitor => all(Rewrite::Unchanged),
        Decision::Bcc => all(Rewrite::Undisclosed),
        Decision::Reject => Vec::new(),
        Decision::Split => split(&recipients, &names),
    };
    let mut plan = Plan {
        decision,
        visible,
        deliveries,
        refusal: None,
        body_warning: None,
    };

    let mut refusal = match decision {
        Decision::Reject => Some(exposing_refusal(shown.as_ref(), &names)),
        Decision::Pass | Decision::Monitor => None,
        Decision::Bcc => egress::check(
            exposure,
            &render_header(message, &Rewrite::Undisclosed, exposure),
            &everyone,
        )
        .err()
        .map(|leak| rewrite_refusal(&leak, "bcc")),
        Decision::Split => split_leak(exposure, message, &plan.deliveries, &everyone)
            .map(|leak| rewrite_refusal(&leak, "split")),
    };
    if refusal.is_none()
        && config.body_check != BodyCheck::Off
        && let Some(leak) = body::check(exposure, &everyone, message)
    {
        let refuse = config.body_check == BodyCheck::Reject && decision != Decision::Monitor;
        if refuse {
            refusal = Some(body_refusal(&leak));
        } else {
            plan.body_warning = Some(leak.part);
        }
    }
    if let Some(refusal) = refusal {
        plan.decision = Decision::Reject;
        plan.deliveries.clear();
        plan.refusal = Some(refusal);
    }
    plan
}

/// Envelope recipients without repeats ([`address::key`]), first spelling kept.
fn distinct(rcpt_to: &[String]) -> Vec<String> {
    let mut seen = HashSet::with_capacity(rcpt_to.len());
    rcpt_to
        .iter()
        .filter(|r| seen.insert(address::key(r)))
        .cloned()
        .collect()
}

/// One delivery per envelope recipient, each keeping the display name its recipient had in
/// To/Cc unless some reading of that name shows an `@` (`"bob@y" <alice@x>` would show Alice
/// an address in her own copy).
fn split(recipients: &[String], names: &VisibleRecipients) -> Vec<PlannedDelivery> {
    let names = names.display_names();
    recipients
        .iter()
        .map(|r| {
            let display_name = names
                .get(&address::key(r))
                .copied()
                .filter(|n| !each_reading(n.as_bytes(), |t| t.contains('@')))
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

/// The egress check of every split copy, in linear time: the fields all copies share are
/// checked once (the `undisclosed` form has exactly those plus a `To` that shows nothing),
/// then each copy's own `To` field against its one recipient.
fn split_leak(
    exposure: &Exposure,
    message: &[u8],
    deliveries: &[PlannedDelivery],
    everyone: &Audience,
) -> Option<Leak> {
    let shared = render_header(message, &Rewrite::Undisclosed, exposure);
    if let Err(leak) = egress::check(exposure, &shared, everyone) {
        return Some(leak);
    }
    deliveries.iter().find_map(|d| match &d.rewrite {
        Rewrite::OnlyRecipient {
            address,
            display_name,
        } => {
            let to = only_recipient_to(address, display_name.as_deref());
            let own = exposure.audience([address.as_str()]);
            egress::check(exposure, &to, &own).err()
        }
        Rewrite::Unchanged | Rewrite::Undisclosed => None,
    })
}

fn exposing_refusal(shown: Option<&Leak>, names: &VisibleRecipients) -> Refusal {
    let text = match (shown, &names.unparseable) {
        (Some(leak), _) if leak.addresses == 0 => format!(
            "the {} field holds an encoded word in a charset the relay cannot read, which could show recipients' addresses to other recipients; send one message per recipient or use Bcc",
            leak.field
        ),
        (Some(leak), _) => format!(
            "message shows {} recipient address{} to other recipients (in {}); send one message per recipient or use Bcc",
            leak.addresses,
            if leak.addresses == 1 { "" } else { "es" },
            leak.field
        ),
        (None, Some(error)) => format!(
            "an address field cannot be checked ({}); send one message per recipient or use Bcc",
            error.without_addresses()
        ),
        (None, None) => {
            "message exposes recipients; send one message per recipient or use Bcc".into()
        }
    };
    Refusal {
        reason: BlockReason::Field,
        text,
    }
}

fn rewrite_refusal(leak: &Leak, mode: &str) -> Refusal {
    let text = if leak.unreadable && leak.addresses == 0 {
        format!(
            "the {} field holds an encoded word in a charset the relay cannot read, which could show other recipients' addresses after the {mode} rewrite; nothing was delivered",
            leak.field
        )
    } else {
        format!(
            "the {} field would still show {} other recipient address{} after the {mode} rewrite; nothing was delivered",
            leak.field,
            leak.addresses,
            if leak.addresses == 1 { "" } else { "es" },
        )
    };
    Refusal {
        reason: BlockReason::Field,
        text,
    }
}

fn body_refusal(leak: &body::BodyLeak) -> Refusal {
    let text = if leak.unreadable {
        format!(
            "{} is nested too deeply to check for recipients' addresses; nothing was delivered",
            leak.part
        )
    } else {
        format!(
            "{} shows a recipient's address to other recipients (the body is shared by every copy); nothing was delivered",
            leak.part
        )
    };
    Refusal {
        reason: BlockReason::Body,
        text,
    }
}
