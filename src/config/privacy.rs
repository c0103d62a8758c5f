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

pub(super) fn validate_privacy(raw: RawPrivacy, p: &mut Problems) -> PrivacyConfig {
    let mode = match raw.mode.as_deref().unwrap_or("split") {
        "split" => PrivacyMode::Split,
        "bcc" => PrivacyMode::Bcc,
        "reject" => PrivacyMode::Reject,
        "monitor" => PrivacyMode::Monitor,
        other => {
            p.push(
                "privacy.mode",
                format!("{other:?} is not one of split, bcc, reject, monitor"),
            );
            PrivacyMode::Split
        }
    };
    let trusted_domains = raw
        .trusted_domains
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .filter_map(|(i, d)| {
            let d = d.trim().trim_start_matches('@').to_ascii_lowercase();
            if d.is_empty() || d.contains(['@', ' ']) {
                p.push(
                    &format!("privacy.trusted_domains[{i}]"),
                    "must be a domain name such as example.com",
                );
                None
            } else {
                Some(d)
            }
        })
        .collect();
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
