//! Group commit: the two threads that make spool writes durable.
//!
//! Why: an `fsync` costs milliseconds on real disks, and `250` may only be answered once a message
//! is synced. Syncing each message's files separately (Postfix's way) caps a relay at a few hundred
//! messages per second. Instead, the *committer* takes every message that arrived while it was
//! syncing the previous batch, writes them all into one new batch file, syncs that file and the
//! directory once, and only then releases the waiting sessions. Under load a round carries many
//! messages for the price of two syncs; with a single client it costs what one message always did.
//!
//! The *syncer* makes outcome records (lines appended to the batch files) durable in the background. A
//! delivery does not wait for its record: the only thing a crash can lose is the record of a copy
//! delivered in the last few milliseconds, which is then delivered again (a duplicate, never a loss).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex};

use super::format::RecordHeader;
use super::{Shared, Slot, SpoolError, sync_dir};

/// Most messages in one batch file.
const MAX_BATCH_MESSAGES: usize = 512;
/// A batch stops taking messages once it holds this many bytes (it always takes one).
const MAX_BATCH_BYTES: usize = 16 << 20;

/// The file written by one commit round, shared by every message stored in it: the records of
/// its messages, then (appended later) the outcome lines of their deliveries.
#[derive(Debug)]
pub(super) struct Batch {
    pub name: String,
    pub path: PathBuf,
    /// Read handle for copies (`pread`) and append handle for outcome lines (`O_APPEND`).
    pub file: File,
    /// Serialises outcome appends, so each line lands whole.
    pub append: Mutex<()>,
    /// Messages of the batch not yet done; the file goes when it reaches zero.
    pub live: AtomicUsize,
    /// Set when outcome lines were written that the syncer has not yet synced.
    pub dirty: AtomicBool,
    /// A damaged batch of which no copy could be kept: it moves here when its messages are
    /// done, instead of being removed (see `recover`).
    pub keep_at: Option<PathBuf>,
}

impl Batch {
    pub fn path(msg_dir: &Path, name: &str) -> PathBuf {
        msg_dir.join(format!("{name}.spool"))
    }

    /// Opens a batch that is on disk (just committed, or found at recovery).
    pub fn open(msg_dir: &Path, name: &str, live: usize) -> Result<Batch, SpoolError> {
        let path = Batch::path(msg_dir, name);
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .map_err(SpoolError::io(&path))?;
        Ok(Batch {
            name: name.to_string(),
            path,
            file,
            append: Mutex::new(()),
            live: AtomicUsize::new(live),
            dirty: AtomicBool::new(false),
            keep_at: None,
        })
    }

    /// Appends outcome lines (synced later by the syncer).
    pub fn append(&self, text: &[u8]) -> Result<(), SpoolError> {
        let _one_writer = self.append.lock().expect("not poisoned");
        (&self.file)
            .write_all(text)
            .map_err(SpoolError::io(&self.path))
    }

    /// Every message in the batch is done: its file goes (or, for a damaged batch of which no
    /// copy could be kept, moves to where the copy would be).
    pub fn retire(&self) -> Result<(), SpoolError> {
        match &self.keep_at {
            None => Batch::remove(&self.path),
            Some(kept) => {
                fs::rename(&self.path, kept).map_err(SpoolError::io(kept))?;
                tracing::error!(batch = %self.name, kept = %kept.display(), "damaged spool batch moved aside now that its intact messages are done");
                Ok(())
            }
        }
    }

    /// Removes a batch file (already gone is fine).
    pub fn remove(path: &Path) -> Result<(), SpoolError> {
        match fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(SpoolError::io(path)(e)),
        }
    }
}

/// Where the committer sends a store's outcome.
pub(super) enum Reply {
    Blocking(std::sync::mpsc::SyncSender<Result<(), SpoolError>>),
    Async(tokio::sync::oneshot::Sender<Result<(), SpoolError>>),
}

impl Reply {
    pub fn send(self, result: Result<(), SpoolError>) {
        // A waiter that went away (client disconnected) needs no answer.
        let _ = match self {
            Reply::Blocking(tx) => tx.send(result).map_err(drop),
            Reply::Async(tx) => tx.send(result).map_err(drop),
        };
    }
}

/// A message waiting to be committed.
pub(super) struct StoreRequest {
    pub id: String,
    pub meta: Vec<u8>,
    pub message: Arc<Vec<u8>>,
    pub reply: Reply,
}

/// Work for the syncer.
pub(super) enum SyncRequest {
    /// A batch log has new lines.
    Dirty(Arc<Batch>),
    /// Sync everything dirty, then answer.
    Flush(std::sync::mpsc::SyncSender<()>),
}

/// The committer: runs until every sender of `requests` is gone.
pub(super) fn committer(shared: Arc<Shared>, requests: Receiver<StoreRequest>) {
    while let Ok(first) = requests.recv() {
        let mut round = vec![first];
        let mut bytes = round[0].message.len();
        while round.len() < MAX_BATCH_MESSAGES && bytes < MAX_BATCH_BYTES {
            match requests.try_recv() {
                Ok(next) => {
                    bytes += next.message.len();
                    round.push(next);
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        commit_round(&shared, round);
    }
}

/// Writes one batch, makes it durable, indexes its messages, and answers their waiters.
fn commit_round(shared: &Shared, round: Vec<StoreRequest>) {
    let name = ulid::Ulid::new().to_string();
    match write_batch(shared, &name, &round) {
        Ok(slots) => {
            let batch = match Batch::open(&shared.msg_dir, &name, round.len()) {
                Ok(batch) => Arc::new(batch),
                Err(e) => return fail_round(shared, &name, round, e),
            };
            {
                let mut index = shared.index.lock().expect("not poisoned");
                for (request, (offset, len)) in round.iter().zip(slots) {
                    index.insert(
                        request.id.clone(),
                        Slot {
                            batch: batch.clone(),
                            offset,
                            len,
                        },
                    );
                }
            }
            let total: usize = round.iter().map(|r| r.message.len()).sum();
            shared.bytes.fetch_add(total as u64, Ordering::Relaxed);
            shared.space.committed();
            for request in round {
                request.reply.send(Ok(()));
            }
        }
        Err(e) => fail_round(shared, &name, round, e),
    }
}

/// Nothing of a failed round may remain: the clients hear `452` and keep their messages.
fn fail_round(shared: &Shared, name: &str, round: Vec<StoreRequest>, error: SpoolError) {
    let data = Batch::path(&shared.msg_dir, name);
    for path in [tmp_path(&data), data] {
        let _ = fs::remove_file(path);
    }
    tracing::error!(batch = name, messages = round.len(), %error, "spool write failed");
    if super::space::is_out_of_space(&error) {
        let bytes: usize = round
            .iter()
            .map(|r| RecordHeader::MAX_LEN + r.meta.len() + r.message.len())
            .sum();
        shared.space.failed(bytes as u64);
    }
    let kind = match &error {
        SpoolError::Io { source, .. } => source.kind(),
        SpoolError::Corrupt { .. } | SpoolError::Unusable { .. } => std::io::ErrorKind::Other,
    };
    for request in round {
        request.reply.send(Err(SpoolError::Io {
            path: shared.msg_dir.clone(),
            source: std::io::Error::new(kind, error.to_string()),
        }));
    }
}

fn tmp_path(data: &Path) -> PathBuf {
    data.with_extension("spool.tmp")
}

/// Writes the batch file (as `.tmp`, synced, then renamed), then syncs the directory. Returns
/// each message's offset and length within the file. One file per round, not per message or
/// per message part: creating inodes is a large share of a busy spool's CPU time.
fn write_batch(
    shared: &Shared,
    name: &str,
    round: &[StoreRequest],
) -> Result<Vec<(u64, u64)>, SpoolError> {
    let data = Batch::path(&shared.msg_dir, name);
    let tmp = tmp_path(&data);
    let mut slots = Vec::with_capacity(round.len());
    let file = crate::private_files::create_options()
        .open(&tmp)
        .map_err(SpoolError::io(&tmp))?;
    let mut out = BufWriter::with_capacity(256 << 10, file);
    let mut offset = 0u64;
    for request in round {
        let header = RecordHeader::new(&request.id, &request.meta, &request.message).to_line();
        out.write_all(header.as_bytes())
            .and_then(|()| out.write_all(&request.meta))
            .and_then(|()| out.write_all(&request.message))
            .map_err(SpoolError::io(&tmp))?;
        offset += (header.len() + request.meta.len()) as u64;
        slots.push((offset, request.message.len() as u64));
        offset += request.message.len() as u64;
    }
    let file = out
        .into_inner()
        .map_err(|e| SpoolError::io(&tmp)(e.into_error()))?;
    file.sync_data().map_err(SpoolError::io(&tmp))?;
    fs::rename(&tmp, &data).map_err(SpoolError::io(&data))?;
    sync_dir(&shared.msg_dir)?;
    Ok(slots)
}

/// The syncer: runs until every sender of `requests` is gone, syncing what is left first.
pub(super) fn syncer(requests: Receiver<SyncRequest>) {
    let mut dirty: HashMap<String, Arc<Batch>> = HashMap::new();
    let mut flushes = Vec::new();
    while let Ok(first) = requests.recv() {
        let mut next = Some(first);
        while let Some(request) = next.take() {
            match request {
                SyncRequest::Dirty(batch) => {
                    dirty.insert(batch.name.clone(), batch);
                }
                SyncRequest::Flush(done) => flushes.push(done),
            }
            next = requests.try_recv().ok();
        }
        for (_, batch) in dirty.drain() {
            sync_log(&batch);
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

fn sync_log(batch: &Batch) {
    if !batch.dirty.swap(false, Ordering::AcqRel) {
        return;
    }
    // A finished batch's file may be gone already: then there is nothing left to keep.
    if let Err(e) = batch.file.sync_data()
        && batch.live.load(Ordering::Acquire) > 0
    {
        tracing::error!(batch = %batch.name, error = %e, "cannot sync delivery records; copies may be sent again after a crash");
    }
}
