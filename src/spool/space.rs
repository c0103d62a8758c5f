//! Whether the spool is refusing mail for lack of space, for `/readyz`, `GET /status` and the
//! `mailveil_spool_full` gauge.
//!
//! Why it is remembered rather than probed: the readiness probe writes a few bytes, which still
//! fit on a disk that has no room for a 100 KiB message; the relay would say "ready" while every
//! client hears `452 4.3.1`. So the committer records when a commit round fails for space, and
//! clears it when one succeeds.
//!
//! Why it is also re-checked: a relay that is not ready gets no new connections from a
//! Kubernetes Service, so no commit would ever succeed to clear it, even after deliveries (or
//! the operator) freed space. While it is set, [`SpaceState::recheck`] writes a probe as large as
//! the round that failed (at most [`MAX_PROBE`]) and clears it if that fits.

use std::fs;
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use super::SpoolError;

/// Largest probe written by a re-check: a batch holds at most 16 MiB plus one message, and
/// writing more than this every few seconds on a struggling disk would be a burden of its own.
pub const MAX_PROBE: u64 = 32 << 20;

/// `0` while commits succeed; otherwise the bytes the last failed round needed (at least 1).
#[derive(Debug, Default)]
pub struct SpaceState {
    needed: AtomicU64,
}

/// True when an error means the file system (or the user's quota) is full.
pub fn is_out_of_space(error: &SpoolError) -> bool {
    match error {
        SpoolError::Io { source, .. } => matches!(
            source.kind(),
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
        ),
        SpoolError::Corrupt { .. } | SpoolError::Unusable { .. } => false,
    }
}

impl SpaceState {
    /// A commit round of `bytes` failed for space.
    pub fn failed(&self, bytes: u64) {
        if self.needed.swap(bytes.max(1), Ordering::AcqRel) == 0 {
            tracing::error!(
                needed = bytes,
                "spool full: answering 452 4.3.1 and reporting not ready until there is room again"
            );
        }
    }

    /// A commit round succeeded: there is room.
    pub fn committed(&self) {
        if self.needed.swap(0, Ordering::AcqRel) != 0 {
            tracing::info!("spool has room again: accepting mail, ready");
        }
    }

    /// The bytes the last failed round needed, while the spool refuses mail for space.
    pub fn refusing(&self) -> Option<u64> {
        match self.needed.load(Ordering::Acquire) {
            0 => None,
            n => Some(n),
        }
    }

    /// While refusing: tries to write a probe as large as the failed round (capped) in `dir`,
    /// and clears the state if it fits. Blocking. Returns whether the spool still refuses.
    pub fn recheck(&self, dir: &Path) -> bool {
        let Some(needed) = self.refusing() else {
            return false;
        };
        let probe = dir.join(".space-probe");
        let fits = write_zeros(&probe, needed.min(MAX_PROBE)).is_ok();
        let _ = fs::remove_file(&probe);
        if fits {
            // Only the episode that was checked: a round failing meanwhile sets it again.
            if self
                .needed
                .compare_exchange(needed, 0, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                tracing::info!(probe = needed.min(MAX_PROBE), "spool has room again: ready");
            }
            return self.refusing().is_some();
        }
        true
    }
}

fn write_zeros(path: &Path, len: u64) -> io::Result<()> {
    let mut file = crate::private_files::create_options().open(path)?;
    let chunk = vec![0u8; 64 << 10];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    file.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_round_is_remembered_until_a_commit_or_a_recheck_that_fits() {
        let tmp = tempfile::tempdir().unwrap();
        let space = SpaceState::default();
        assert_eq!(space.refusing(), None);
        assert!(!space.recheck(tmp.path()));
        space.failed(1000);
        assert_eq!(space.refusing(), Some(1000));
        space.committed();
        assert_eq!(space.refusing(), None);
        space.failed(4096);
        assert!(!space.recheck(tmp.path()), "4 KiB fit in the temp dir");
        assert_eq!(space.refusing(), None);
        assert!(!tmp.path().join(".space-probe").exists());
        space.failed(10);
        assert!(space.recheck(&tmp.path().join("missing")), "cannot write");
        assert_eq!(space.refusing(), Some(10));
    }

    #[test]
    fn only_a_full_disk_or_quota_counts() {
        let err = |kind| SpoolError::Io {
            path: "x".into(),
            source: io::Error::new(kind, "e"),
        };
        assert!(is_out_of_space(&err(io::ErrorKind::StorageFull)));
        assert!(is_out_of_space(&err(io::ErrorKind::QuotaExceeded)));
        assert!(!is_out_of_space(&err(io::ErrorKind::PermissionDenied)));
    }
}
