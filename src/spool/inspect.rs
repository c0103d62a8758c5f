//! A stopped relay's spool, read and steered from outside (`mailveil spool list|show|delete
//! DIR`): what an operator needs when the relay cannot start, or in a debug pod next to a
//! scaled-down StatefulSet's volume.
//!
//! Reading uses the relay's own recovery decision ([`recover::recover_batch`], over
//! [`super::read`]), so the tool shows exactly the messages and outcomes a start would find,
//! but changes nothing: no batch is removed or moved aside, no `.tmp` swept.
//!
//! Deleting appends the same synced `deleted` line the running relay writes for `ctl queue
//! delete`. It needs the spool to itself: a running relay holds a shared lock on the spool
//! directory ([`super::Spool::open`]), and a delete takes it exclusively or refuses, so the two
//! never write the same batch at once (and a relay starting meanwhile waits for the delete).

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::format::{AttemptRecord, BatchLogLine, LogEntry, MessageMeta};
use super::recover::recover_batch;
use super::{SpoolError, commit::Batch};

/// A message of a stopped spool that a start would queue, with what is known about it.
#[derive(Debug, Clone)]
pub struct SpooledMessage {
    pub meta: MessageMeta,
    pub log: Vec<LogEntry>,
    pub attempts: Vec<AttemptRecord>,
    /// The batch file that holds it (name without `.spool`).
    pub batch: String,
    /// The message's header block (up to 64 KiB), for its Message-ID.
    pub header: Vec<u8>,
}

/// What a read of a stopped spool found.
#[derive(Debug, Default)]
pub struct Inspection {
    /// Oldest first.
    pub messages: Vec<SpooledMessage>,
    /// Damaged or unreadable batches, one line each (a start would keep them under
    /// `corrupt/`; see docs/operations.md).
    pub problems: Vec<String>,
    /// A relay holds the spool now: what was read may change under the reader.
    pub relay_running: bool,
}

/// Why a stopped spool could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("{0} is not a spool directory (no msg/ in it)")]
    NotASpool(PathBuf),
    #[error(
        "a running relay holds the spool {0}; use `mailveil ctl queue ...` against its admin API"
    )]
    RelayRunning(PathBuf),
    #[error("no message {0:?} with copies left in the spool")]
    NotFound(String),
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

/// Most header bytes kept per message.
const MAX_HEADER: usize = 64 << 10;

/// Reads the spool at `root` as a start would, changing nothing.
pub fn read(root: &Path) -> Result<Inspection, InspectError> {
    if !root.join("msg").is_dir() {
        return Err(InspectError::NotASpool(root.to_path_buf()));
    }
    // Reading is safe either way; where the file system has no locks, say nothing.
    let relay_running = matches!(
        File::open(root).map(|f| f.try_lock()),
        Ok(Err(fs::TryLockError::WouldBlock))
    );
    let mut inspection = scan(root)?;
    inspection.relay_running = relay_running;
    Ok(inspection)
}

/// Every message a start would queue, without looking at the lock.
fn scan(root: &Path) -> Result<Inspection, InspectError> {
    let msg_dir = root.join("msg");
    if !msg_dir.is_dir() {
        return Err(InspectError::NotASpool(root.to_path_buf()));
    }
    let mut names: Vec<String> = fs::read_dir(&msg_dir)
        .map_err(SpoolError::io(&msg_dir))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(".spool").map(str::to_string))
        .collect();
    names.sort();
    let mut inspection = Inspection::default();
    let mut taken = HashSet::new();
    for name in names {
        let path = Batch::path(&msg_dir, &name);
        let data = match fs::read(&path) {
            Ok(d) => d,
            Err(e) => {
                inspection
                    .problems
                    .push(format!("batch {name}: cannot read it: {e}"));
                continue;
            }
        };
        let (found, damage, _) = recover_batch(&data, &mut taken, &name);
        if !damage.is_empty() {
            let text: Vec<String> = damage.iter().map(|d| d.to_string()).collect();
            inspection
                .problems
                .push(format!("batch {name}: {}", text.join("; ")));
        }
        for m in found {
            let start = m.offset as usize;
            let bytes = &data[start..start + m.len as usize];
            let end = memchr::memmem::find(bytes, b"\r\n\r\n").map_or(bytes.len(), |p| p + 4);
            inspection.messages.push(SpooledMessage {
                meta: m.meta,
                log: m.log,
                attempts: m.attempts,
                batch: name.clone(),
                header: bytes[..end.min(MAX_HEADER)].to_vec(),
            });
        }
    }
    inspection
        .messages
        .sort_by(|a, b| a.meta.id.cmp(&b.meta.id));
    Ok(inspection)
}

/// Deletes message `id` from the stopped spool at `root`: appends its `deleted` line to its
/// batch and syncs it, so no later start sends any of its copies. Refuses while a relay runs.
/// Returns the message as it was.
pub fn delete(root: &Path, id: &str) -> Result<SpooledMessage, InspectError> {
    let lock = File::open(root).map_err(SpoolError::io(root))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            return Err(InspectError::RelayRunning(root.to_path_buf()));
        }
        Err(fs::TryLockError::Error(e)) => return Err(SpoolError::io(root)(e).into()),
    }
    let inspection = scan(root)?;
    let message = inspection
        .messages
        .into_iter()
        .find(|m| m.meta.id == id)
        .ok_or_else(|| InspectError::NotFound(id.to_string()))?;
    let path = Batch::path(&root.join("msg"), &message.batch);
    let mut file = OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(SpoolError::io(&path))?;
    file.write_all(BatchLogLine::deleted_line(id).as_bytes())
        .and_then(|()| file.sync_data())
        .map_err(SpoolError::io(&path))?;
    drop(lock);
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::Spool;

    #[test]
    fn a_stopped_spool_is_read_as_a_start_would_and_a_delete_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        {
            let spool = Spool::open(dir.path()).unwrap();
            let a = MessageMeta::split_sample("A1", 1, 5, &["a@x.test", "b@y.test"]);
            spool.store(&a, b"Message-ID: <m1@x>\r\n\r\nhello").unwrap();
            spool
                .append("A1", &[LogEntry::Delivered { index: 0, at: 2 }])
                .unwrap();
            let b = MessageMeta::split_sample("B1", 1, 5, &["c@x.test"]);
            spool.store(&b, b"Subject: s\r\n\r\nbody").unwrap();
            // Open: the directory is locked, deleting refuses.
            assert!(matches!(
                delete(dir.path(), "B1"),
                Err(InspectError::RelayRunning(_))
            ));
            assert!(read(dir.path()).unwrap().relay_running);
            spool.flush();
        }
        let found = read(dir.path()).unwrap();
        assert!(!found.relay_running);
        let ids: Vec<&str> = found.messages.iter().map(|m| m.meta.id.as_str()).collect();
        assert_eq!(ids, ["A1", "B1"]);
        assert_eq!(found.messages[0].log.len(), 1);
        assert_eq!(found.messages[0].header, b"Message-ID: <m1@x>\r\n\r\n");
        delete(dir.path(), "B1").unwrap();
        assert!(matches!(
            delete(dir.path(), "B1"),
            Err(InspectError::NotFound(_))
        ));
        let spool = Spool::open(dir.path()).unwrap();
        let recovered: Vec<String> = spool
            .recover()
            .unwrap()
            .into_iter()
            .map(|r| r.meta.id)
            .collect();
        assert_eq!(recovered, ["A1"], "the deleted message is not queued again");
    }
}
