//! `[spool]`: where messages are stored, how long they are kept and retried, bounces.

use std::path::PathBuf;
use std::time::Duration;

use super::raw::{RawDuration, RawSpool};
use super::values::{Problems, duration};

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
    };
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
