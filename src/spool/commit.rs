//! Group commit: the two threads that make spool writes durable.
//!
//! Why: an `fsync` costs milliseconds on real disks, and `250` may only be answered once a message
//! is synced. Syncing each message's files separately (Postfix's way) caps a relay at a few hundred
//! messages per second. Instead, the *committer* takes every message that arrived while it was
//! syncing the previous round, writes them all at once, syncs once, and only then releases the
//! waiting sessions.
//!
//! Where a round goes: a new batch file is created with room to spare (zeros after its records,
//! about a second of the recent traffic, 32 KiB to 2 MiB), written as `.tmp`, synced, renamed, and
//! the directory synced: five or so disk writes. Later rounds are written into that room, in place,
//! while they fit: the file's size and blocks do not change, so their `fdatasync` writes the data
//! and nothing else, one disk write per round. Outcome lines go into the same room. The batch
//! that takes rounds stays *open* until it is full or no round came for [`IDLE_CLOSE`]; the
//! committer holds it (one count in `live`), so it is not removed while rounds may still come.
//! A crash during an in-place round leaves that round torn in the room; it was never acknowledged,
//! and [`super::read`] recognises it by the zeros it still holds.
//!
//! The *syncer* makes outcome records durable in the background. A delivery does not wait for its
//! record: the only thing a crash can lose is the record of a copy delivered in the last few
//! tens of milliseconds ([`SYNC_DELAY`]), which is then delivered again (a duplicate, never a
//! loss). The open batch's lines are usually synced by the committer's next round meanwhile; a
//! batch removed meanwhile is not synced: a sync of the directory makes its removal durable.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::format::RecordHeader;
use super::{Shared, Slot, SpoolError};

/// Most messages in one batch file.
const MAX_BATCH_MESSAGES: usize = 512;
/// A batch stops taking messages once it holds this many bytes (it always takes one).
const MAX_BATCH_BYTES: usize = 16 << 20;
/// Room a new batch file is created with, at least and at most (see the module documentation).
const MIN_ROOM: u64 = 32 << 10;
const MAX_ROOM: u64 = 2 << 20;
/// An open batch takes no more rounds once none came for this long: its file can then go as
/// soon as its messages are done.
pub(super) const IDLE_CLOSE: Duration = Duration::from_millis(100);
/// How long outcome lines may wait for their sync (a crash in that time sends those copies again).
const SYNC_DELAY: Duration = Duration::from_millis(20);

/// The file written by one commit round, shared by every message stored in it: the records of
/// its messages, then (appended later) the outcome lines of their deliveries.
#[derive(Debug)]
pub(super) struct Batch {
    pub name: String,
    pub path: PathBuf,
    /// Read handle for copies (`pread`) and write handle for later rounds and outcome lines
    /// (`pwrite` at `tail`).
    pub file: File,
    /// Where the next write goes; held while writing, so each round and line lands whole and
    /// in order.
    pub tail: Mutex<u64>,
    /// The file's size when created: writes below it change neither size nor blocks.
    pub room: u64,
    /// Messages of the batch not yet done, plus one while the committer holds it open; the file
    /// goes when it reaches zero.
    pub live: AtomicUsize,
    /// Set when outcome lines were written that the syncer has not yet synced.
    pub dirty: AtomicBool,
    /// Set once the file is removed (or moved aside): nothing of it needs syncing any more.
    pub retired: AtomicBool,
    /// A damaged batch of which no copy could be kept: it moves here when its messages are
    /// done, instead of being removed (see `recover`).
    pub keep_at: Option<PathBuf>,
}

impl Batch {
    pub fn path(msg_dir: &Path, name: &str) -> PathBuf {
        msg_dir.join(format!("{name}.spool"))
    }

    /// Opens a batch found on disk at recovery: later lines go after its last byte.
    pub fn open(msg_dir: &Path, name: &str, live: usize) -> Result<Batch, SpoolError> {
        let path = Batch::path(msg_dir, name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(SpoolError::io(&path))?;
        let end = file.metadata().map_err(SpoolError::io(&path))?.len();
        Ok(Batch::new(name, path, file, end, 0, live))
    }

    fn new(name: &str, path: PathBuf, file: File, tail: u64, room: u64, live: usize) -> Batch {
        Batch {
            name: name.to_string(),
            path,
            file,
            tail: Mutex::new(tail),
            room,
            live: AtomicUsize::new(live),
            dirty: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            keep_at: None,
        }
    }

    /// Appends outcome lines (synced later by the syncer).
    pub fn append(&self, text: &[u8]) -> Result<(), SpoolError> {
        let mut tail = self.tail.lock().expect("not poisoned");
        self.file
            .write_all_at(text, *tail)
            .map_err(SpoolError::io(&self.path))?;
        *tail += text.len() as u64;
        Ok(())
    }

    /// Writes a later round's records in place, if they fit in the room left, and syncs them.
    /// Returns where they start. A failed write or sync leaves zeros where the round was (a
    /// round never acknowledged must not come back at recovery).
    fn write_round(&self, bytes: &[u8]) -> Option<Result<u64, SpoolError>> {
        let start = {
            let mut tail = self.tail.lock().expect("not poisoned");
            let start = *tail;
            if start + bytes.len() as u64 > self.room {
                return None;
            }
            *tail += bytes.len() as u64;
            if let Err(e) = self.file.write_all_at(bytes, start) {
                let _ = self.file.write_all_at(&vec![0; bytes.len()], start);
                return Some(Err(SpoolError::io(&self.path)(e)));
            }
            start
        };
        // Outcome lines written so far are synced by this round's sync too.
        self.dirty.store(false, Ordering::Release);
        if let Err(e) = self.file.sync_data() {
            let _tail = self.tail.lock().expect("not poisoned");
            let _ = self.file.write_all_at(&vec![0; bytes.len()], start);
            return Some(Err(SpoolError::io(&self.path)(e)));
        }
        Some(Ok(start))
    }

    /// Every message in the batch is done: its file goes (or, for a damaged batch of which no
    /// copy could be kept, moves to where the copy would be).
    pub fn retire(&self) -> Result<(), SpoolError> {
        match &self.keep_at {
            None => Batch::remove(&self.path)?,
            Some(kept) => {
                fs::rename(&self.path, kept).map_err(SpoolError::io(kept))?;
                tracing::error!(batch = %self.name, kept = %kept.display(), "damaged spool batch moved aside now that its intact messages are done");
            }
        }
        self.retired.store(true, Ordering::Release);
        Ok(())
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
    let mut open = OpenBatch::default();
    loop {
        let first = if open.batch.is_some() {
            match requests.recv_timeout(IDLE_CLOSE) {
                Ok(first) => first,
                Err(RecvTimeoutError::Timeout) => {
                    open.close();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match requests.recv() {
                Ok(first) => first,
                Err(_) => break,
            }
        };
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
        commit_round(&shared, &mut open, round);
    }
    open.close();
}

/// The batch that takes rounds in place, and how much the recent rounds carried (to size the
/// room of the next new batch).
#[derive(Default)]
struct OpenBatch {
    batch: Option<Arc<Batch>>,
    window_start: Option<Instant>,
    window_bytes: u64,
    last_window_bytes: u64,
}

impl OpenBatch {
    /// Takes no more rounds into the open batch; it goes once its messages are done.
    fn close(&mut self) {
        if let Some(batch) = self.batch.take() {
            release(&batch);
        }
    }

    fn count(&mut self, bytes: usize) {
        let now = Instant::now();
        match self.window_start {
            Some(start) if now.duration_since(start) < Duration::from_secs(1) => {}
            _ => {
                self.last_window_bytes = self.window_bytes;
                self.window_bytes = 0;
                self.window_start = Some(now);
            }
        }
        self.window_bytes += bytes as u64;
    }

    /// Room for a new batch: about a second of the recent rounds.
    fn room(&self) -> u64 {
        self.last_window_bytes
            .max(self.window_bytes)
            .clamp(MIN_ROOM, MAX_ROOM)
    }
}

/// One count of `live` given back: the last one removes the batch file.
pub(super) fn release(batch: &Batch) {
    if batch.live.fetch_sub(1, Ordering::AcqRel) == 1
        && let Err(e) = batch.retire()
    {
        tracing::error!(batch = %batch.name, error = %e, "cannot remove a finished spool batch");
    }
}

/// The records of a round, one after another, and where each message's bytes are in them.
fn encode(round: &[StoreRequest]) -> (Vec<u8>, Vec<(u64, u64)>) {
    let total: usize = round
        .iter()
        .map(|r| RecordHeader::MAX_LEN + r.meta.len() + r.message.len())
        .sum();
    let mut bytes = Vec::with_capacity(total);
    let mut slots = Vec::with_capacity(round.len());
    for request in round {
        let header = RecordHeader::new(&request.id, &request.meta, &request.message).to_line();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&request.meta);
        slots.push((bytes.len() as u64, request.message.len() as u64));
        bytes.extend_from_slice(&request.message);
    }
    (bytes, slots)
}

/// Makes one round durable (in place in the open batch when it fits, else in a new batch that
/// becomes the open one), indexes its messages, and answers their waiters.
fn commit_round(shared: &Shared, open: &mut OpenBatch, round: Vec<StoreRequest>) {
    let (bytes, slots) = encode(&round);
    open.count(bytes.len());
    let in_place = open.batch.as_ref().and_then(|batch| {
        // Counted before anyone hears 250, so a quick `complete` cannot take the batch away.
        batch.live.fetch_add(round.len(), Ordering::AcqRel);
        let written = batch.write_round(&bytes);
        if !matches!(written, Some(Ok(_))) {
            batch.live.fetch_sub(round.len(), Ordering::AcqRel);
        }
        written.map(|w| w.map(|start| (batch.clone(), start)))
    });
    let stored = match in_place {
        Some(Ok(stored)) => Ok(stored),
        Some(Err(e)) => {
            open.close();
            Err((None, e))
        }
        None => {
            open.close();
            let name = ulid::Ulid::new().to_string();
            match new_batch(shared, &name, &bytes, open.room(), round.len()) {
                Ok(batch) => {
                    let batch = Arc::new(batch);
                    open.batch = Some(batch.clone());
                    Ok((batch, 0))
                }
                Err(e) => Err((Some(name), e)),
            }
        }
    };
    let (batch, start) = match stored {
        Ok(stored) => stored,
        Err((name, e)) => return fail_round(shared, name.as_deref(), round, e),
    };
    {
        let mut index = shared.index.lock().expect("not poisoned");
        for (request, (offset, len)) in round.iter().zip(slots) {
            index.insert(
                request.id.clone(),
                Slot {
                    batch: batch.clone(),
                    offset: start + offset,
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

/// Nothing of a failed round may remain: the clients hear `452` and keep their messages.
fn fail_round(shared: &Shared, name: Option<&str>, round: Vec<StoreRequest>, error: SpoolError) {
    if let Some(name) = name {
        let data = Batch::path(&shared.msg_dir, name);
        for path in [tmp_path(&data), data] {
            let _ = fs::remove_file(path);
        }
    }
    tracing::error!(batch = name.unwrap_or("(open batch)"), messages = round.len(), %error, "spool write failed");
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

/// Creates a batch file holding `bytes` and zeros up to `room` (as `.tmp`, synced, then
/// renamed), then syncs the directory. Without space for the zeros, it is made without them.
/// The batch is returned held open (`live` = messages + 1).
fn new_batch(
    shared: &Shared,
    name: &str,
    bytes: &[u8],
    room: u64,
    messages: usize,
) -> Result<Batch, SpoolError> {
    let data = Batch::path(&shared.msg_dir, name);
    let tmp = tmp_path(&data);
    let mut room = room.max(bytes.len() as u64);
    let file = loop {
        match write_synced_with_room(&tmp, bytes, room) {
            Ok(file) => break file,
            Err(e) if room > bytes.len() as u64 && super::space::is_out_of_space(&e) => {
                let _ = fs::remove_file(&tmp);
                room = bytes.len() as u64;
            }
            Err(e) => return Err(e),
        }
    };
    fs::rename(&tmp, &data).map_err(SpoolError::io(&data))?;
    shared
        .dir
        .sync_all()
        .map_err(SpoolError::io(&shared.msg_dir))?;
    Ok(Batch::new(
        name,
        data,
        file,
        bytes.len() as u64,
        room,
        messages + 1,
    ))
}

fn write_synced_with_room(tmp: &Path, bytes: &[u8], room: u64) -> Result<File, SpoolError> {
    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    let mut file = crate::private_files::create_options()
        .read(true)
        .open(tmp)
        .map_err(SpoolError::io(tmp))?;
    file.write_all(bytes).map_err(SpoolError::io(tmp))?;
    let mut left = room - bytes.len() as u64;
    while left > 0 {
        let n = left.min(ZEROS.len() as u64) as usize;
        file.write_all(&ZEROS[..n]).map_err(SpoolError::io(tmp))?;
        left -= n as u64;
    }
    file.sync_data().map_err(SpoolError::io(tmp))?;
    Ok(file)
}

/// The syncer: runs until every sender of `requests` is gone, syncing what is left first.
pub(super) fn syncer(msg_dir: PathBuf, requests: Receiver<SyncRequest>) {
    let mut dirty: HashMap<String, Arc<Batch>> = HashMap::new();
    let mut flushes = Vec::new();
    while let Ok(first) = requests.recv() {
        let mut next = Some(first);
        for pass in 0..2 {
            while let Some(request) = next.take() {
                match request {
                    SyncRequest::Dirty(batch) => {
                        dirty.insert(batch.name.clone(), batch);
                    }
                    SyncRequest::Flush(done) => flushes.push(done),
                }
                next = requests.try_recv().ok();
            }
            // A moment for the committer's next round, whose sync covers the open batch's
            // lines too, and for more lines to share one sync. A flush does not wait.
            if pass == 0 && flushes.is_empty() {
                std::thread::sleep(SYNC_DELAY);
                next = requests.try_recv().ok();
            }
        }
        let mut removed = false;
        for (_, batch) in dirty.drain() {
            removed |= sync_log(&batch);
        }
        if removed && let Err(e) = super::sync_dir(&msg_dir) {
            tracing::error!(error = %e, "cannot sync the removal of finished spool batches; their copies may be sent again after a crash");
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

/// Syncs a batch's new outcome lines; returns true instead when the batch is gone already
/// (its removal is what must be made durable then).
fn sync_log(batch: &Batch) -> bool {
    if !batch.dirty.swap(false, Ordering::AcqRel) {
        return false;
    }
    if batch.retired.load(Ordering::Acquire) {
        return true;
    }
    // A batch finished meanwhile may be gone already: then there is nothing left to keep.
    if let Err(e) = batch.file.sync_data()
        && batch.live.load(Ordering::Acquire) > 0
    {
        tracing::error!(batch = %batch.name, error = %e, "cannot sync delivery records; copies may be sent again after a crash");
    }
    false
}
