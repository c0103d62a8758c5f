//! Delivering one copy: render its header for its recipients ([`privacy::render_header`]),
//! DKIM-sign it, check the exact bytes about to leave ([`check`]), hand it to the first healthy
//! upstream ([`failover`](super::failover)) and classify what happened into an [`Outcome`]
//! (by the shaping rules where a reply matches one: a 5xx that means "too fast" is deferred).
//!
//! Why apart from the queue: this is the path every copy takes to the outside, and it keeps no
//! queue state. The queue ([`queue`](super::queue)) decides when a copy goes and records the
//! [`Outcome`] (spool lines, metrics, logs, retries, bounces); nothing here writes any of them.

use crate::config::ShapingRule;
use crate::dkim::Signer;
use crate::observe::Metrics;
use crate::privacy::{self, Exposure};
use crate::spool::MessageMeta;
use crate::upstream::{Outbound, Reuse, UpstreamError};
use std::sync::Arc;

use super::failover::{self, UpstreamSlot};

use super::rules::{self, Verdict};

mod check;
pub(super) use check::{NO_UPSTREAM, Stopped};

/// Delivery `index` of a queued message, ready for its attempt.
pub(super) struct Copy<'a> {
    pub meta: &'a MessageMeta,
    pub index: usize,
    /// The message bytes in the one view the checks read; let go as soon as the copy is sent.
    pub bytes: Arc<Vec<u8>>,
    /// The message's private addresses, which the copy is checked against.
    pub exposure: &'a Exposure,
    /// Whether `bytes` hold only CRLF line ends and no NUL (found once per message).
    pub clean: bool,
    /// The recipients for this attempt when some of the delivery's are suppressed.
    pub rcpt_to: Option<Vec<String>>,
}

/// How a copy leaves: the upstreams in failover order, the provider's connection reuse, and
/// the DKIM keys in force.
pub(super) struct Route<'a> {
    pub upstreams: &'a [Arc<UpstreamSlot>],
    pub reuse: Reuse<'a>,
    /// How long an upstream that failed is skipped; whether upstreams' rates are awaited.
    pub policy: failover::Policy,
    pub dkim: &'a Signer,
    pub metrics: &'a Metrics,
    /// The shaping rules in force: a reply they match is classified by them
    /// ([`rules::verdict`](super::rules::verdict)).
    pub rules: &'a [ShapingRule],
}

/// A copy after its attempt: the header block it was (or would have been) sent with, which a
/// bounce returns, and what became of it.
pub(super) struct Sent<'a> {
    pub header: Vec<u8>,
    pub outcome: Outcome<'a>,
}

/// What became of one attempt, named by what the queue does next. `upstream` is the one that
/// answered last.
pub(super) enum Outcome<'a> {
    /// The upstream took the copy (`code` from its final reply, `250` when it has none).
    Delivered {
        upstream: &'a str,
        code: u16,
        reply: String,
        /// What protected the copy in transit (`TlsUsed::label`, or `local` for a capture).
        tls: &'static str,
    },
    /// A permanent failure: never retried. `rule`: the shaping rule the reply matched (a
    /// `fail` rule, or a rule without a say on a 5xx).
    Failed {
        upstream: &'a str,
        error: UpstreamError,
        rule: Option<&'a ShapingRule>,
    },
    /// A temporary failure (or a 5xx a shaping rule calls throttling): tried again later.
    /// `rule`: the shaping rule the reply matched, whose action the queue takes.
    Deferred {
        upstream: &'a str,
        error: UpstreamError,
        rule: Option<&'a ShapingRule>,
    },
    /// The check before sending refused the copy; it never reached an upstream.
    Stopped(Stopped),
}

/// Renders, signs, checks and sends `copy` along `route`.
pub(super) async fn deliver<'a>(copy: Copy<'_>, route: Route<'a>) -> Sent<'a> {
    let Copy {
        meta,
        index,
        bytes,
        exposure,
        clean,
        rcpt_to,
    } = copy;
    let record = &meta.deliveries[index];
    let mut header = privacy::render_header(&bytes, &record.planned.rewrite, exposure);
    let body = &bytes[privacy::body_offset(&bytes)..];
    route
        .dkim
        .sign_copy(&mut header, body, &record.planned.rewrite);
    if let Err(stopped) = check::check_copy(meta, record, exposure, &header, clean) {
        return Sent {
            header,
            outcome: Outcome::Stopped(stopped),
        };
    }
    let outbound = Outbound {
        mail_from: &meta.envelope.mail_from,
        rcpt_to: rcpt_to.as_ref().unwrap_or(&record.planned.rcpt_to),
        header: &header,
        body,
    };
    if route.upstreams.is_empty() {
        // Only when the provider requires TLS and no upstream has it: never sent in plaintext.
        let error = UpstreamError::Config(
            "the provider requires TLS and no upstream with TLS is configured".into(),
        );
        return Sent {
            header,
            outcome: Outcome::Deferred {
                upstream: NO_UPSTREAM,
                error,
                rule: None,
            },
        };
    }
    let (upstream, result) = failover::send(
        route.upstreams,
        outbound,
        route.reuse,
        route.metrics,
        route.policy,
    )
    .await;
    drop(bytes);
    let outcome = match result {
        Ok(delivered) => Outcome::Delivered {
            upstream,
            code: reply_code(&delivered.reply),
            tls: delivered.tls.map_or("local", |t| t.label()),
            reply: delivered.reply,
        },
        Err(error) => {
            let rule = rules::find(route.rules, &error);
            match rules::verdict(&error, rule) {
                Verdict::Failed => Outcome::Failed {
                    upstream,
                    error,
                    rule,
                },
                Verdict::Deferred => Outcome::Deferred {
                    upstream,
                    error,
                    rule,
                },
            }
        }
    };
    Sent { header, outcome }
}

/// The code of a final reply such as `250 2.0.0 Ok`; `250` for a reply without one (the `dir`
/// upstream answers with a capture id).
fn reply_code(reply: &str) -> u16 {
    reply
        .get(..3)
        .and_then(|c| c.parse::<u16>().ok())
        .unwrap_or(250)
}
