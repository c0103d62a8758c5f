//! Upstream delivery: SMTP (lettre over tokio, TLS verified) or a capture directory.
//!
//! INTERFACE (to be implemented by the upstream work): [`Upstream::from_config`] builds a ready
//! upstream (TLS roots, credentials, connection cap); [`Upstream::send`] hands one copy over and
//! classifies failures as temporary or permanent.

use crate::config::UpstreamConfig;

/// One copy ready to send: envelope plus the header block and body (sent back to back).
#[derive(Debug, Clone, Copy)]
pub struct Outbound<'a> {
    /// Empty string = null sender `<>`.
    pub mail_from: &'a str,
    pub rcpt_to: &'a [String],
    /// Header block including the empty line that ends it.
    pub header: &'a [u8],
    pub body: &'a [u8],
}

/// A successful hand-over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// The upstream's final reply, e.g. `250 2.0.0 Ok: queued as ABC`, or the capture id.
    pub reply: String,
}

/// Why a copy was not handed over. `is_temporary` drives retries.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("placeholder")]
    Todo,
}

impl UpstreamError {
    pub fn is_temporary(&self) -> bool {
        true
    }
    /// The SMTP reply code when the upstream answered with one.
    pub fn code(&self) -> Option<u16> {
        None
    }
}

/// A configured upstream.
pub struct Upstream {
    pub name: String,
}

impl Upstream {
    /// `helo` is the name we announce (server.hostname).
    pub fn from_config(_config: &UpstreamConfig, _helo: &str) -> Result<Upstream, UpstreamError> {
        unimplemented!("upstream::from_config")
    }

    pub async fn send(&self, _msg: Outbound<'_>) -> Result<Delivered, UpstreamError> {
        unimplemented!("upstream::send")
    }
}
