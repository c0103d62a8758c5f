//! Unit tests for the privacy policy, one file per stage.

mod inspect;
mod policy;
mod recipients;
mod rewrite;

use crate::config::{PrivacyConfig, PrivacyMode};
use crate::envelope::Envelope;

fn config(mode: PrivacyMode, max: usize, trusted: &[&str]) -> PrivacyConfig {
    PrivacyConfig {
        mode,
        max_visible_recipients: max,
        trusted_domains: trusted.iter().map(|d| d.to_string()).collect(),
        body_check: crate::config::BodyCheck::Reject,
    }
}

fn split() -> PrivacyConfig {
    config(PrivacyMode::Split, 1, &[])
}

fn envelope(from: &str, rcpts: &[&str]) -> Envelope {
    Envelope {
        mail_from: from.into(),
        rcpt_to: rcpts.iter().map(|r| r.to_string()).collect(),
    }
}

/// Header with `\r\n` line endings from `\n`-separated lines, then the body.
fn crlf(s: &str) -> Vec<u8> {
    s.replace('\n', "\r\n").into_bytes()
}
