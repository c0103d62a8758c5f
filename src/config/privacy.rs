//! `[privacy]`: the mode, who may be shown, trusted domains and the body check (the bulk hold
//! keys of the same section are in `hold.rs`).

use super::raw::RawPrivacy;
use super::values::Problems;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrivacyMode {
    Split,
    Bcc,
    Reject,
    Monitor,
}

/// `[privacy] body_check`: what a recipient's address in the shared body does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyCheck {
    /// `550 5.7.1` naming the body part (default).
    Reject,
    /// Relayed; logged and counted.
    Monitor,
    Off,
}

#[derive(Debug, Clone)]
pub struct PrivacyConfig {
    pub mode: PrivacyMode,
    /// At most this many private addresses may be shown (in To/Cc), and only to themselves.
    pub max_visible_recipients: usize,
    /// Lower-cased domains whose addresses are not private, and whose mailboxes may see
    /// every copy (the operator's own: archives, Bcc to self).
    pub trusted_domains: Vec<String>,
    pub body_check: BodyCheck,
}

impl PrivacyMode {
    /// `split`, `bcc`, `reject` or `monitor`; `None` for anything else.
    pub fn parse(text: &str) -> Option<PrivacyMode> {
        match text {
            "split" => Some(PrivacyMode::Split),
            "bcc" => Some(PrivacyMode::Bcc),
            "reject" => Some(PrivacyMode::Reject),
            "monitor" => Some(PrivacyMode::Monitor),
            _ => None,
        }
    }

    /// How much the mode protects recipients: `monitor` (relays as is) < `split` = `bcc` (both
    /// hide every recipient from the others) < `reject` (refuses). An `[[app]]` override may not
    /// go lower than `[privacy]` without `allow_weaker`.
    pub fn strength(self) -> u8 {
        match self {
            PrivacyMode::Monitor => 0,
            PrivacyMode::Split | PrivacyMode::Bcc => 1,
            PrivacyMode::Reject => 2,
        }
    }
}

pub(super) fn validate_privacy(raw: RawPrivacy, p: &mut Problems) -> PrivacyConfig {
    let text = raw.mode.as_deref().unwrap_or("split");
    let mode = PrivacyMode::parse(text).unwrap_or_else(|| {
        p.push(
            "privacy.mode",
            format!("{text:?} is not one of split, bcc, reject, monitor"),
        );
        PrivacyMode::Split
    });
    let trusted_domains = trusted_domains(
        raw.trusted_domains.unwrap_or_default(),
        "privacy.trusted_domains",
        p,
    );
    let body_check = match raw.body_check.as_deref().unwrap_or("reject") {
        "reject" => BodyCheck::Reject,
        "monitor" => BodyCheck::Monitor,
        "off" => BodyCheck::Off,
        other => {
            p.push(
                "privacy.body_check",
                format!("{other:?} is not one of reject, monitor, off"),
            );
            BodyCheck::Reject
        }
    };
    PrivacyConfig {
        mode,
        max_visible_recipients: raw.max_visible_recipients.unwrap_or(1) as usize,
        trusted_domains,
        body_check,
    }
}

/// `trusted_domains` lower-cased, a leading `@` dropped; each bad entry reported at `path[i]`.
pub(super) fn trusted_domains(list: Vec<String>, path: &str, p: &mut Problems) -> Vec<String> {
    list.into_iter()
        .enumerate()
        .filter_map(|(i, d)| {
            let d = d.trim().trim_start_matches('@').to_ascii_lowercase();
            if d.is_empty() || d.contains(['@', ' ']) {
                p.push(
                    &format!("{path}[{i}]"),
                    "must be a domain name such as example.com",
                );
                None
            } else {
                Some(d)
            }
        })
        .collect()
}
