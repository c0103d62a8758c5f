//! The durable spool: a message is on disk and fsync'd (file and directory entry) before the
//! client hears `250`, stored once however many copies it fans out to, with an append-only
//! record of each delivery's outcome. On start, [`Spool::recover`] returns every message that
//! still has deliveries to make. See [`format`] for the files and [`commit`] for the group
//! commit that makes one fsync serve many messages.
//!
//! [`Spool::store`] blocks until the message is durable (async callers use
//! [`Spool::store_async`]); [`Spool::append`] and [`Spool::complete`] only write (their records
//! are synced in the background) except when a permanent failure must be recorded.

mod commit;
pub mod format;
pub mod inspect;
pub mod read;
mod records;
pub(crate) mod recover;
mod space;

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::private_files;
use commit::{Batch, Reply, StoreRequest, SyncRequest};
use format::BatchLogLine;
pub use format::{
    AttemptRecord, DeliveryRecord, FailureRecord, Hold, HoldState, LogEntry, MessageMeta,
};

/// Why the spool could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool I/O on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("spool file {path} is unreadable: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    /// The spool directory (or one of its folders) cannot be created or used, in plain words.
    #[error("cannot use the spool directory {path} (spool.dir): {reason}")]
    Unusable { path: PathBuf, reason: String },
}

/// Why `dir` could not be created or made private, in plain words: a file in the way is named
/// as such (the system's text is `File exists`).
fn unusable_dir(dir: &Path, e: &io::Error) -> String {
    let file_in_the_way = dir
        .ancestors()
        .find(|a| std::fs::metadata(a).is_ok_and(|m| !m.is_dir()));
    match (e.kind(), file_in_the_way) {
        (io::ErrorKind::AlreadyExists | io::ErrorKind::NotADirectory, Some(file)) => {
            format!("{} is a file, not a directory", file.display())
        }
        (io::ErrorKind::PermissionDenied, _) => {
            format!("permission denied on {} for this user", dir.display())
        }
        _ => {
            let text = e.to_string();
            let text = text.split(" (os error").next().unwrap_or_default();
            format!("{}: {text}", dir.display())
        }
    }
}

impl SpoolError {
    fn io(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
        move |source| SpoolError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    fn gone(id: &str) -> SpoolError {
        SpoolError::Io {
            path: PathBuf::from(id),
            source: io::Error::new(io::ErrorKind::NotFound, "no such message in the spool"),
        }
    }
}

/// A spooled message found at start-up, with the outcomes already recorded for it.
#[derive(Debug, Clone)]
pub struct Recovered {
    pub meta: MessageMeta,
    pub log: Vec<LogEntry>,
    /// The last attempts record of each delivery that has one (count, times, last reply).
    pub attempts: Vec<AttemptRecord>,
}

/// Where a stored message's bytes are.
#[derive(Debug, Clone)]
struct Slot {
    batch: Arc<Batch>,
    offset: u64,
    len: u64,
}

/// State shared with the commit threads.
#[derive(Debug)]
struct Shared {
    msg_dir: PathBuf,
    /// `msg_dir` open, for the syncs that make new batch files' names durable.
    dir: File,
    /// Every message in the spool that is not done.
    index: Mutex<HashMap<String, Slot>>,
    /// Bytes of spooled messages (the `mailveil_spool_bytes` gauge).
    bytes: AtomicU64,
    /// Whether the last commit round failed for lack of space (see [`space`]).
    space: space::SpaceState,
}

#[derive(Debug)]
pub struct Spool {
    root: PathBuf,
    failed_dir: PathBuf,
    /// Damaged batches found at start, kept for the operator (see [`recover`]).
    corrupt_dir: PathBuf,
    /// How many batches the last [`Spool::recover`] found damaged or unreadable.
    corrupt_found: AtomicU64,
    shared: Arc<Shared>,
    stores: Mutex<Option<Sender<StoreRequest>>>,
    syncs: Mutex<Option<Sender<SyncRequest>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// A shared lock on the spool directory, held while the relay runs: `mailveil spool
    /// delete` on a stopped relay's spool takes it exclusively and refuses while it is held.
    _lock: File,
}

/// Current time in whole Unix seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Spool {
    /// Opens (creating if needed) the spool at `root`, clears what a crash may have left
    /// half-written, and starts the commit threads.
    pub fn open(root: &Path) -> Result<Spool, SpoolError> {
        let msg_dir = root.join("msg");
        let failed_dir = root.join("failed");
        let corrupt_dir = root.join("corrupt");
        // Message bodies, envelopes and the redaction key: the relay's user only.
        for dir in [root, &msg_dir, &failed_dir, &corrupt_dir] {
            private_files::tighten_dir(dir).map_err(|e| SpoolError::Unusable {
                path: root.to_path_buf(),
                reason: unusable_dir(dir, &e),
            })?;
        }
        let lock = File::open(root).map_err(SpoolError::io(root))?;
        // Waits only while `mailveil spool delete` writes (a moment); relays share the lock.
        // A file system without locks must not keep the relay from starting.
        if let Err(e) = lock.lock_shared() {
            tracing::warn!(dir = %root.display(), error = %e,
                "cannot lock the spool directory; `mailveil spool delete` cannot tell that this relay runs on it");
        }
        recover::sweep(&[&msg_dir, &corrupt_dir])?;
        let dir = File::open(&msg_dir).map_err(SpoolError::io(&msg_dir))?;
        let shared = Arc::new(Shared {
            dir,
            msg_dir,
            index: Mutex::new(HashMap::new()),
            bytes: AtomicU64::new(0),
            space: space::SpaceState::default(),
        });
        let (store_tx, store_rx) = mpsc::channel();
        let (sync_tx, sync_rx) = mpsc::channel();
        let committer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("spool-commit".into())
                .spawn(move || commit::committer(shared, store_rx))
                .map_err(SpoolError::io(root))?
        };
        let syncer = {
            let msg_dir = shared.msg_dir.clone();
            std::thread::Builder::new()
                .name("spool-sync".into())
                .spawn(move || commit::syncer(msg_dir, sync_rx))
                .map_err(SpoolError::io(root))?
        };
        Ok(Spool {
            root: root.to_path_buf(),
            failed_dir,
            corrupt_dir,
            corrupt_found: AtomicU64::new(0),
            shared,
            stores: Mutex::new(Some(store_tx)),
            syncs: Mutex::new(Some(sync_tx)),
            threads: Mutex::new(vec![committer, syncer]),
            _lock: lock,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A fresh queue id: unique and sortable by arrival time.
    pub fn new_id() -> String {
        ulid::Ulid::new().to_string()
    }

    pub fn bytes(&self) -> u64 {
        self.shared.bytes.load(Ordering::Relaxed)
    }

    fn submit(&self, meta: &MessageMeta, message: Arc<Vec<u8>>, reply: Reply) {
        let request = StoreRequest {
            id: meta.id.clone(),
            meta: serde_json::to_vec(meta).expect("meta serializes"),
            message,
            reply,
        };
        let sender = self.stores.lock().expect("not poisoned").clone();
        let rejected = match sender {
            Some(tx) => tx.send(request).err().map(|e| e.0),
            None => Some(request),
        };
        if let Some(request) = rejected {
            request.reply.send(Err(closed(&self.root)));
        }
    }

    /// Stores a message durably, waiting for its commit round. On `Ok`, the message survives a
    /// crash or power loss; on error nothing of it remains (the caller answers `452 4.3.1`).
    pub fn store(&self, meta: &MessageMeta, message: &[u8]) -> Result<(), SpoolError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit(meta, Arc::new(message.to_vec()), Reply::Blocking(tx));
        rx.recv().unwrap_or_else(|_| Err(closed(&self.root)))
    }

    /// [`Spool::store`] for async callers: the task waits, no thread blocks.
    pub async fn store_async(
        &self,
        meta: &MessageMeta,
        message: Arc<Vec<u8>>,
    ) -> Result<(), SpoolError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(meta, message, Reply::Async(tx));
        rx.await.unwrap_or_else(|_| Err(closed(&self.root)))
    }

    fn slot(&self, id: &str) -> Result<Slot, SpoolError> {
        self.shared
            .index
            .lock()
            .expect("not poisoned")
            .get(id)
            .cloned()
            .ok_or_else(|| SpoolError::gone(id))
    }

    /// Reads a spooled message's bytes (for sending a copy).
    pub fn read_message(&self, id: &str) -> Result<Vec<u8>, SpoolError> {
        let slot = self.slot(id)?;
        let mut bytes = vec![0; slot.len as usize];
        slot.batch
            .file
            .read_exact_at(&mut bytes, slot.offset)
            .map_err(SpoolError::io(&slot.batch.path))?;
        Ok(bytes)
    }

    /// Records outcomes of a message's deliveries. The write is synced in the background: a crash
    /// in the next few milliseconds may lose it, and the copy is then sent again.
    pub fn append(&self, id: &str, entries: &[LogEntry]) -> Result<(), SpoolError> {
        let text: String = entries
            .iter()
            .map(|e| BatchLogLine::outcome_line(id, e))
            .collect();
        self.write_log(&self.slot(id)?.batch, &text)
    }

    /// Records what the attempts of a delivery were so far, then (when given) the attempt's
    /// outcome; synced in the background like [`Spool::append`].
    pub fn record_attempt(
        &self,
        id: &str,
        record: &AttemptRecord,
        entry: Option<&LogEntry>,
    ) -> Result<(), SpoolError> {
        let mut text = BatchLogLine::attempts_line(id, record);
        if let Some(e) = entry {
            text.push_str(&BatchLogLine::outcome_line(id, e));
        }
        self.write_log(&self.slot(id)?.batch, &text)
    }

    /// Attempts records and outcomes, synced before it returns: an operator's `queue bounce`
    /// is durable when the API answers. Blocks for one `fdatasync`.
    pub fn append_synced(
        &self,
        id: &str,
        attempts: &[AttemptRecord],
        entries: &[LogEntry],
    ) -> Result<(), SpoolError> {
        let text: String = attempts
            .iter()
            .map(|a| BatchLogLine::attempts_line(id, a))
            .chain(entries.iter().map(|e| BatchLogLine::outcome_line(id, e)))
            .collect();
        let batch = self.slot(id)?.batch;
        batch.append(text.as_bytes())?;
        batch.file.sync_data().map_err(SpoolError::io(&batch.path))
    }

    /// Records that an operator deleted message `id`, synced before it returns: once the API
    /// answers, no restart (not even after `kill -9`) sends a copy of it. Blocks for one
    /// `fdatasync`. The message stays indexed until [`Spool::complete`].
    pub fn record_deleted(&self, id: &str) -> Result<(), SpoolError> {
        let batch = self.slot(id)?.batch;
        batch.append(BatchLogLine::deleted_line(id).as_bytes())?;
        batch.file.sync_data().map_err(SpoolError::io(&batch.path))
    }

    /// Records that a held message was released or dropped, synced before it returns: once the
    /// operator hears "released", a restart must not hold the message again, and once they hear
    /// "dropped", it must not send the held copies. Blocks for one `fdatasync`.
    pub fn record_hold(&self, id: &str, state: HoldState) -> Result<(), SpoolError> {
        let batch = self.slot(id)?.batch;
        batch.append(BatchLogLine::hold_line(id, state).as_bytes())?;
        batch.file.sync_data().map_err(SpoolError::io(&batch.path))
    }

    fn write_log(&self, batch: &Arc<Batch>, text: &str) -> Result<(), SpoolError> {
        batch.append(text.as_bytes())?;
        if !batch.dirty.swap(true, Ordering::AcqRel)
            && let Some(tx) = self.syncs.lock().expect("not poisoned").as_ref()
        {
            let _ = tx.send(SyncRequest::Dirty(batch.clone()));
        }
        Ok(())
    }

    /// Every delivery of the message has a final outcome: it leaves the spool, keeping a record
    /// under `failed/` (synced before anything is removed) when any delivery failed permanently:
    /// for each such delivery its recipients, code, reason, last reply, upstream, attempts and
    /// their times (see [`FailureRecord`]).
    pub fn complete(&self, meta: &MessageMeta, failed: &[FailureRecord]) -> Result<(), SpoolError> {
        if !failed.is_empty() {
            let record = serde_json::json!({
                "id": meta.id,
                "received_at": meta.received_at,
                "completed_at": unix_now(),
                "mail_from": meta.envelope.mail_from,
                "failed": failed,
            });
            let path = self.failed_dir.join(format!("{}.json", meta.id));
            write_synced(&path, record.to_string().as_bytes())?;
            sync_dir(&self.failed_dir)?;
        }
        let Some(slot) = self
            .shared
            .index
            .lock()
            .expect("not poisoned")
            .remove(&meta.id)
        else {
            return Ok(());
        };
        self.shared
            .bytes
            .fetch_sub(slot.len.min(self.bytes()), Ordering::Relaxed);
        // The done line first: while the batch is open, the count below is not its last.
        if slot.batch.live.load(Ordering::Acquire) > 1 {
            self.write_log(&slot.batch, &BatchLogLine::done_line(&meta.id))?;
        }
        commit::release(&slot.batch);
        Ok(())
    }

    /// Every spooled message with its recorded outcomes, oldest first. Call once, at start,
    /// before anything is stored. Damaged batches give up only what is damaged; they are kept
    /// under `corrupt/` and counted in [`Spool::corrupt_batches`].
    pub fn recover(&self) -> Result<Vec<Recovered>, SpoolError> {
        let scan = recover::scan(&self.shared.msg_dir, &self.corrupt_dir)?;
        self.corrupt_found.store(scan.corrupt, Ordering::Relaxed);
        let mut index = self.shared.index.lock().expect("not poisoned");
        index.clear();
        let mut total = 0;
        let mut recovered = Vec::new();
        for batch in scan.batches {
            let batch_ref = Arc::new(batch.batch);
            for message in batch.messages {
                total += message.len;
                index.insert(
                    message.meta.id.clone(),
                    Slot {
                        batch: batch_ref.clone(),
                        offset: message.offset,
                        len: message.len,
                    },
                );
                recovered.push(Recovered {
                    meta: message.meta,
                    log: message.log,
                    attempts: message.attempts,
                });
            }
        }
        recovered.sort_by(|a, b| a.meta.id.cmp(&b.meta.id));
        self.shared.bytes.store(total, Ordering::Relaxed);
        Ok(recovered)
    }

    /// Batches the last [`Spool::recover`] found damaged or unreadable (each logged, and kept
    /// under `corrupt/` or left in place; see `docs/operations.md`).
    pub fn corrupt_batches(&self) -> u64 {
        self.corrupt_found.load(Ordering::Relaxed)
    }

    /// Makes every outcome written so far durable (at shutdown).
    pub fn flush(&self) {
        let (tx, rx) = mpsc::sync_channel(1);
        let sent = self
            .syncs
            .lock()
            .expect("not poisoned")
            .as_ref()
            .is_some_and(|s| s.send(SyncRequest::Flush(tx)).is_ok());
        if sent {
            let _ = rx.recv();
        }
    }

    /// `Some(bytes needed)` while the spool refuses mail (`452 4.3.1`) because its last commit
    /// round failed for lack of space; `None` once a round succeeds or a re-check finds room.
    pub fn refusing_for_space(&self) -> Option<u64> {
        self.shared.space.refusing()
    }

    /// While refusing for space: checks whether a round like the one that failed would fit now
    /// (writes and removes a probe of its size, at most 32 MiB) and stops refusing if so.
    /// Returns whether it still refuses. Blocking; for `/readyz`, which must not stay 503 after
    /// space is back just because a not-ready relay gets no mail to commit.
    pub fn recheck_space(&self) -> bool {
        self.shared.space.recheck(&self.shared.msg_dir)
    }

    /// True when a file can be created and synced in the spool (for `/readyz`).
    pub fn is_writable(&self) -> bool {
        let probe = self.root.join(".ready-probe");
        let ok = write_synced(&probe, b"ok").is_ok();
        let _ = fs::remove_file(&probe);
        ok
    }

    /// The key for log redaction hashes, read without creating it (for tools that read a
    /// stopped relay's spool): `None` when there is none yet.
    pub fn read_redaction_key(root: &Path) -> Option<[u8; 32]> {
        let bytes = fs::read(root.join(".redaction-key")).ok()?;
        <[u8; 32]>::try_from(bytes.as_slice()).ok()
    }

    /// The key for log redaction hashes: created once and kept in the spool so hashes stay
    /// stable across restarts without being guessable from the outside.
    pub fn redaction_key(&self) -> Result<[u8; 32], SpoolError> {
        let path = self.root.join(".redaction-key");
        if path.exists() {
            // Written world-readable by relays before 0600 was the rule.
            private_files::tighten_file(&path).map_err(SpoolError::io(&path))?;
        }
        if let Ok(bytes) = fs::read(&path)
            && let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice())
        {
            return Ok(key);
        }
        let key: [u8; 32] = rand::random();
        write_synced(&path, &key)?;
        Ok(key)
    }
}

impl Drop for Spool {
    /// Stops the commit threads after they finish what they hold (records get synced).
    fn drop(&mut self) {
        self.stores.lock().expect("not poisoned").take();
        self.syncs.lock().expect("not poisoned").take();
        for thread in self.threads.lock().expect("not poisoned").drain(..) {
            let _ = thread.join();
        }
    }
}

fn closed(root: &Path) -> SpoolError {
    SpoolError::Io {
        path: root.to_path_buf(),
        source: io::Error::new(io::ErrorKind::BrokenPipe, "spool is shut down"),
    }
}

/// Creates `path` (mode 0600) with `data` and fsyncs it.
fn write_synced(path: &Path, data: &[u8]) -> Result<(), SpoolError> {
    let mut file = private_files::create_options()
        .open(path)
        .map_err(SpoolError::io(path))?;
    file.write_all(data).map_err(SpoolError::io(path))?;
    file.sync_all().map_err(SpoolError::io(path))
}

/// Makes directory entries (creations, renames, removals) durable.
fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(SpoolError::io(dir))
}

#[cfg(test)]
mod tests;
