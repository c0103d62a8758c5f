//! The durable spool: a message is on disk and fsync'd (file and directory entry) before the
//! client hears `250`, stored once however many copies it fans out to, with an append-only
//! record of each delivery's outcome. On start, [`Spool::recover`] returns every message that
//! still has deliveries to make. See [`format`] for the files.
//!
//! All methods block on disk I/O: async callers run them in `spawn_blocking`.

pub mod format;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub use format::{DeliveryRecord, LogEntry, MessageMeta};

/// Why the spool could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool I/O on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("spool file {path} is unreadable: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

impl SpoolError {
    fn io(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
        move |source| SpoolError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A spooled message found at start-up, with the outcomes already recorded for it.
#[derive(Debug, Clone)]
pub struct Recovered {
    pub meta: MessageMeta,
    pub log: Vec<LogEntry>,
}

#[derive(Debug)]
pub struct Spool {
    root: PathBuf,
    msg_dir: PathBuf,
    failed_dir: PathBuf,
    /// Bytes of `.eml` files currently spooled (the `mailveil_spool_bytes` gauge).
    bytes: AtomicU64,
}

/// Current time in whole Unix seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Spool {
    /// Opens (creating if needed) the spool at `root` and clears what a crash may have left
    /// half-written: temp files, and `.eml` files whose `.json` never landed (never answered 250).
    pub fn open(root: &Path) -> Result<Spool, SpoolError> {
        let msg_dir = root.join("msg");
        let failed_dir = root.join("failed");
        for dir in [root, &msg_dir, &failed_dir] {
            fs::create_dir_all(dir).map_err(SpoolError::io(dir))?;
        }
        let spool = Spool {
            root: root.to_path_buf(),
            msg_dir,
            failed_dir,
            bytes: AtomicU64::new(0),
        };
        spool.sweep()?;
        Ok(spool)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A fresh queue id: unique and sortable by arrival time.
    pub fn new_id() -> String {
        ulid::Ulid::new().to_string()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn path(&self, id: &str, ext: &str) -> PathBuf {
        self.msg_dir.join(format!("{id}.{ext}"))
    }

    /// Stores a message durably. On return `Ok`, the message survives a crash or power loss;
    /// on error nothing of it remains (the caller answers `452 4.3.1`).
    pub fn store(&self, meta: &MessageMeta, message: &[u8]) -> Result<(), SpoolError> {
        let eml = self.path(&meta.id, "eml");
        let json = self.path(&meta.id, "json");
        let tmp = self.path(&meta.id, "json.tmp");
        let result = (|| {
            write_synced(&eml, message)?;
            let text = serde_json::to_vec(meta).expect("meta serializes");
            write_synced(&tmp, &text)?;
            fs::rename(&tmp, &json).map_err(SpoolError::io(&json))?;
            sync_dir(&self.msg_dir)
        })();
        if result.is_err() {
            for p in [&tmp, &json, &eml] {
                let _ = fs::remove_file(p);
            }
        } else {
            self.bytes
                .fetch_add(message.len() as u64, Ordering::Relaxed);
        }
        result
    }

    /// Reads a spooled message's bytes (for sending a copy).
    pub fn read_message(&self, id: &str) -> Result<Vec<u8>, SpoolError> {
        let path = self.path(id, "eml");
        fs::read(&path).map_err(SpoolError::io(&path))
    }

    /// Appends outcomes to the message's log and fsyncs it.
    pub fn append(&self, id: &str, entries: &[LogEntry]) -> Result<(), SpoolError> {
        let path = self.path(id, "log");
        let text: String = entries.iter().map(LogEntry::to_line).collect();
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(SpoolError::io(&path))?;
        file.write_all(text.as_bytes())
            .map_err(SpoolError::io(&path))?;
        file.sync_data().map_err(SpoolError::io(&path))
    }

    /// Every delivery of the message has a final outcome: remove it from the spool, keeping a
    /// record under `failed/` when any delivery failed permanently.
    pub fn complete(&self, meta: &MessageMeta, failed: &[(usize, u16)]) -> Result<(), SpoolError> {
        if !failed.is_empty() {
            let record = serde_json::json!({
                "id": meta.id,
                "received_at": meta.received_at,
                "completed_at": unix_now(),
                "mail_from": meta.envelope.mail_from,
                "failed": failed.iter().map(|(k, code)| serde_json::json!({
                    "rcpt_to": meta.deliveries[*k].planned.rcpt_to,
                    "code": code,
                })).collect::<Vec<_>>(),
            });
            let path = self.failed_dir.join(format!("{}.json", meta.id));
            write_synced(&path, record.to_string().as_bytes())?;
            sync_dir(&self.failed_dir)?;
        }
        for ext in ["json", "log", "eml"] {
            let path = self.path(&meta.id, ext);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(SpoolError::Io { path, source: e }),
            }
        }
        self.bytes
            .fetch_sub(meta.size.min(self.bytes()), Ordering::Relaxed);
        sync_dir(&self.msg_dir)
    }

    /// Every spooled message with its recorded outcomes, oldest first.
    pub fn recover(&self) -> Result<Vec<Recovered>, SpoolError> {
        let mut found = Vec::new();
        let mut total = 0;
        for entry in fs::read_dir(&self.msg_dir).map_err(SpoolError::io(&self.msg_dir))? {
            let path = entry.map_err(SpoolError::io(&self.msg_dir))?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let text = fs::read(&path).map_err(SpoolError::io(&path))?;
            let meta: MessageMeta =
                serde_json::from_slice(&text).map_err(|e| SpoolError::Corrupt {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            let log_path = self.path(&meta.id, "log");
            let log = match fs::read(&log_path) {
                Ok(bytes) => LogEntry::parse_log(&String::from_utf8_lossy(&bytes)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
                Err(e) => {
                    return Err(SpoolError::Io {
                        path: log_path,
                        source: e,
                    });
                }
            };
            total += meta.size;
            found.push(Recovered { meta, log });
        }
        found.sort_by(|a, b| a.meta.id.cmp(&b.meta.id));
        self.bytes.store(total, Ordering::Relaxed);
        Ok(found)
    }

    /// True when a file can be created and synced in the spool (for `/readyz`).
    pub fn is_writable(&self) -> bool {
        let probe = self.root.join(".ready-probe");
        let ok = write_synced(&probe, b"ok").is_ok();
        let _ = fs::remove_file(&probe);
        ok
    }

    /// The key for log redaction hashes: created once and kept in the spool so hashes stay
    /// stable across restarts without being guessable from the outside.
    pub fn redaction_key(&self) -> Result<[u8; 32], SpoolError> {
        let path = self.root.join(".redaction-key");
        if let Ok(bytes) = fs::read(&path) {
            if let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice()) {
                return Ok(key);
            }
        }
        let key: [u8; 32] = rand::random();
        write_synced(&path, &key)?;
        Ok(key)
    }

    /// Removes leftovers of interrupted writes.
    fn sweep(&self) -> Result<(), SpoolError> {
        let mut names = std::collections::HashSet::new();
        let mut entries = Vec::new();
        for entry in fs::read_dir(&self.msg_dir).map_err(SpoolError::io(&self.msg_dir))? {
            let path = entry.map_err(SpoolError::io(&self.msg_dir))?.path();
            if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
                names.insert(name.to_string());
            }
            entries.push(path);
        }
        for path in entries {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            let orphan = match name.rsplit_once('.') {
                Some((_, "tmp")) => true,
                Some((id, "eml")) | Some((id, "log")) => !names.contains(&format!("{id}.json")),
                _ => false,
            };
            if orphan {
                tracing::info!(file = %path.display(), "removing incomplete spool file left by an interrupted write");
                fs::remove_file(&path).map_err(SpoolError::io(&path))?;
            }
        }
        Ok(())
    }
}

/// Creates `path` with `data` and fsyncs it.
fn write_synced(path: &Path, data: &[u8]) -> Result<(), SpoolError> {
    let mut file = File::create(path).map_err(SpoolError::io(path))?;
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
