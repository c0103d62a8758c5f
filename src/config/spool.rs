//! `[spool]`: where messages are stored, how long they are kept and retried, bounces.

use std::path::PathBuf;
use std::time::Duration;

use super::raw::{RawDuration, RawSpool};
use super::values::{Problems, duration, size};

/// Default of `spool.drain_timeout`: below Kubernetes' default 30 s `terminationGracePeriodSeconds`,
/// leaving a few seconds for the process to exit.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(25);

#[derive(Debug, Clone)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    pub max_queue_time: Duration,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// How long an upstream that failed at connection level is skipped before it is tried again.
    pub upstream_cool_off: Duration,
    /// Send an RFC 3464 bounce to a non-null sender when a delivery fails permanently.
    pub bounce: bool,
    /// Above this many bytes of spooled messages, new mail is answered `452 4.3.1` (at MAIL,
    /// or at end of DATA when the message would cross it). `None`: no cap but the disk's.
    pub max_bytes: Option<u64>,
    /// From SIGTERM to exit: the queue keeps delivering (within its throttles) meanwhile; see
    /// docs/operations.md, "Stopping: drain and hand-off".
    pub drain_timeout: Duration,
    /// The `[[upstream]]` that takes every remaining copy at SIGTERM (already rewritten, without
    /// the provider throttles), so the spool is empty at exit; reserved for that hand-off.
    pub handoff_upstream: Option<String>,
}

pub(super) fn validate_spool(raw: RawSpool, p: &mut Problems) -> SpoolConfig {
    let d = |v: Option<RawDuration>, key: &str, default: u64, p: &mut Problems| {
        v.and_then(|v| duration(&v, key, p))
            .unwrap_or(Duration::from_secs(default))
    };
    let spool = SpoolConfig {
        dir: PathBuf::from(raw.dir.unwrap_or_else(|| "./spool".into())),
        max_queue_time: d(raw.max_queue_time, "spool.max_queue_time", 3 * 86_400, p),
        retry_initial: d(raw.retry_initial, "spool.retry_initial", 5, p),
        retry_max: d(raw.retry_max, "spool.retry_max", 600, p),
        upstream_cool_off: d(raw.upstream_cool_off, "spool.upstream_cool_off", 30, p),
        bounce: raw.bounce.unwrap_or(false),
        max_bytes: raw.max_bytes.and_then(|s| size(&s, "spool.max_bytes", p)),
        drain_timeout: raw
            .drain_timeout
            .and_then(|v| duration(&v, "spool.drain_timeout", p))
            .unwrap_or(DEFAULT_DRAIN_TIMEOUT),
        handoff_upstream: raw.handoff_upstream,
    };
    if spool.drain_timeout.is_zero() {
        p.push("spool.drain_timeout", "must be greater than zero");
    }
    if let Some(name) = &spool.handoff_upstream
        && name.trim().is_empty()
    {
        p.push(
            "spool.handoff_upstream",
            "must name an [[upstream]] entry (its `name`)",
        );
    }
    // `Spool::open` creates it; a file in its place would stop `run`.
    p.directory("spool.dir", &spool.dir);
    if spool.retry_initial.is_zero() {
        p.push("spool.retry_initial", "must be greater than zero");
    }
    if spool.retry_max < spool.retry_initial {
        p.push(
            "spool.retry_max",
            "must not be smaller than spool.retry_initial",
        );
    }
    spool
}
