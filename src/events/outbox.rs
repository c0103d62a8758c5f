//! One app's event outbox: JSON lines in `SPOOL/events/<app>/<seq>.jsonl`, a new file past
//! `max_file_bytes`, and (with a webhook) `cursor.json`, how far the webhook has acknowledged.
//!
//! Why each event is written to the file at once (one `write(2)`, no buffering in the process):
//! an event is appended *before* the spool records what it reports (the outcome line, the
//! `250`), so a killed relay (kill -9, OOM) never has an outcome without its event: what was
//! written is in the kernel's page cache. The files are fdatasynced once a second, not per
//! event, to keep the delivery path fast: a machine that loses power may lose the last second
//! of events (as the spool may lose its last outcome lines, whose copies are then sent again).

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Where the webhook stands: the next event to send is at `offset` of file `seq`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub seq: u64,
    pub offset: u64,
}

struct Writer {
    file: Option<File>,
    seq: u64,
    size: u64,
}

pub struct Outbox {
    dir: PathBuf,
    writer: Mutex<Writer>,
    max_file_bytes: AtomicU64,
    dirty: AtomicBool,
    /// Bytes appended since start (the webhook compares its cursor's bytes with it).
    pub appended: AtomicU64,
}

fn file_name(seq: u64) -> String {
    format!("{seq:010}.jsonl")
}

impl Outbox {
    /// The outbox in `dir` (created 0700), appending to its newest file.
    pub fn open(dir: PathBuf, max_file_bytes: u64) -> std::io::Result<Outbox> {
        crate::private_files::ensure_dir(&dir)?;
        let seq = list(&dir)?.last().copied().unwrap_or(1);
        let size = std::fs::metadata(dir.join(file_name(seq)))
            .map(|m| m.len())
            .unwrap_or(0);
        Ok(Outbox {
            dir,
            writer: Mutex::new(Writer {
                file: None,
                seq,
                size,
            }),
            max_file_bytes: AtomicU64::new(max_file_bytes),
            dirty: AtomicBool::new(false),
            appended: AtomicU64::new(0),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn set_max_file_bytes(&self, max: u64) {
        self.max_file_bytes.store(max, Ordering::Relaxed);
    }

    /// Appends one event's line (ending in `\n`) with one write.
    pub fn append(&self, line: &[u8]) -> std::io::Result<()> {
        let mut w = self.writer.lock().expect("not poisoned");
        if w.size > 0 && w.size + line.len() as u64 > self.max_file_bytes.load(Ordering::Relaxed) {
            if let Some(f) = w.file.take() {
                f.sync_data()?;
            }
            w.seq += 1;
            w.size = 0;
        }
        if w.file.is_none() {
            let path = self.dir.join(file_name(w.seq));
            let file = crate::private_files::create_options()
                .append(true)
                .truncate(false)
                .open(&path)?;
            w.file = Some(file);
        }
        w.file.as_mut().expect("opened").write_all(line)?;
        w.size += line.len() as u64;
        self.dirty.store(true, Ordering::Relaxed);
        self.appended
            .fetch_add(line.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// fdatasyncs the file being written, if anything was appended since the last sync.
    pub fn sync(&self) -> std::io::Result<()> {
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        let w = self.writer.lock().expect("not poisoned");
        match &w.file {
            Some(f) => f.try_clone()?.sync_data(),
            None => Ok(()),
        }
    }

    /// The file being written and its size.
    pub fn head(&self) -> (u64, u64) {
        let w = self.writer.lock().expect("not poisoned");
        (w.seq, w.size)
    }

    /// The files, oldest first.
    pub fn files(&self) -> std::io::Result<Vec<u64>> {
        list(&self.dir)
    }

    /// Up to `max` whole lines from `cursor` on (moving to the next file at the end of one),
    /// and the cursor after them.
    pub fn read(
        &self,
        mut cursor: Cursor,
        max: usize,
        max_bytes: u64,
    ) -> std::io::Result<(Vec<String>, Cursor)> {
        let (head_seq, _) = self.head();
        let mut lines = Vec::new();
        let mut bytes = 0u64;
        loop {
            let path = self.dir.join(file_name(cursor.seq));
            let mut file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && cursor.seq < head_seq => {
                    cursor = Cursor {
                        seq: cursor.seq + 1,
                        offset: 0,
                    };
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((lines, cursor)),
                Err(e) => return Err(e),
            };
            file.seek(SeekFrom::Start(cursor.offset))?;
            let mut reader = BufReader::new(file);
            loop {
                if lines.len() >= max || bytes >= max_bytes {
                    return Ok((lines, cursor));
                }
                let mut line = String::new();
                let n = reader.read_line(&mut line)?;
                if n == 0 || !line.ends_with('\n') {
                    break; // end of the file, or a line still being written
                }
                cursor.offset += n as u64;
                bytes += n as u64;
                line.pop();
                lines.push(line);
            }
            if cursor.seq >= head_seq {
                return Ok((lines, cursor));
            }
            cursor = Cursor {
                seq: cursor.seq + 1,
                offset: 0,
            };
        }
    }

    /// Bytes from `cursor` to the end of the outbox.
    pub fn backlog_bytes(&self, cursor: Cursor) -> u64 {
        let (head_seq, head_size) = self.head();
        let mut total = 0;
        for seq in cursor.seq..=head_seq {
            let size = if seq == head_seq {
                head_size
            } else {
                std::fs::metadata(self.dir.join(file_name(seq))).map_or(0, |m| m.len())
            };
            total += if seq == cursor.seq {
                size.saturating_sub(cursor.offset)
            } else {
                size
            };
        }
        total
    }

    /// Lines from `cursor` to the end (for the backlog gauge at start).
    pub fn count_from(&self, cursor: Cursor) -> u64 {
        let (head_seq, _) = self.head();
        let mut count = 0;
        for seq in cursor.seq..=head_seq {
            let Ok(mut f) = File::open(self.dir.join(file_name(seq))) else {
                continue;
            };
            if seq == cursor.seq && f.seek(SeekFrom::Start(cursor.offset)).is_err() {
                continue;
            }
            let mut text = Vec::new();
            if f.read_to_end(&mut text).is_ok() {
                count += text.iter().filter(|b| **b == b'\n').count() as u64;
            }
        }
        count
    }

    /// Deletes files before `seq`, keeping the newest `keep` of them.
    pub fn prune_before(&self, seq: u64, keep: usize) {
        let Ok(files) = self.files() else { return };
        let old: Vec<u64> = files.into_iter().filter(|s| *s < seq).collect();
        for s in old.iter().take(old.len().saturating_sub(keep)) {
            let _ = std::fs::remove_file(self.dir.join(file_name(*s)));
        }
    }

    pub fn load_cursor(&self) -> Option<Cursor> {
        let text = std::fs::read(self.dir.join("cursor.json")).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Writes the cursor for good (temp file, fsync, rename).
    pub fn store_cursor(&self, cursor: Cursor) -> std::io::Result<()> {
        let path = self.dir.join("cursor.json");
        let tmp = self.dir.join("cursor.json.tmp");
        {
            let mut f = crate::private_files::create_options().open(&tmp)?;
            f.write_all(&serde_json::to_vec(&cursor).map_err(std::io::Error::other)?)?;
            f.sync_data()?;
        }
        std::fs::rename(&tmp, &path)
    }
}

fn list(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut seqs: Vec<u64> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".jsonl")?.parse().ok()
        })
        .collect();
    seqs.sort_unstable();
    Ok(seqs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_read_across_rotated_files_from_a_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path().join("billing"), 4096).unwrap();
        for i in 0..200 {
            outbox
                .append(format!("{{\"n\":{i},\"pad\":\"{}\"}}\n", "x".repeat(40)).as_bytes())
                .unwrap();
        }
        assert!(outbox.files().unwrap().len() > 1, "rotated");
        let (first, cursor) = outbox
            .read(Cursor { seq: 1, offset: 0 }, 150, u64::MAX)
            .unwrap();
        assert_eq!(first.len(), 150);
        assert!(first[149].starts_with("{\"n\":149,"));
        let (rest, end) = outbox.read(cursor, 1000, u64::MAX).unwrap();
        assert_eq!(rest.len(), 50);
        assert_eq!(outbox.count_from(cursor), 50);
        assert_eq!(outbox.backlog_bytes(end), 0);
        outbox.store_cursor(end).unwrap();
        assert_eq!(outbox.load_cursor(), Some(end));
        outbox.prune_before(end.seq, 0);
        assert_eq!(outbox.files().unwrap(), vec![end.seq]);
        drop(outbox);
        let again = Outbox::open(dir.path().join("billing"), 4096).unwrap();
        assert_eq!(again.head().0, end.seq, "appends go on in the newest file");
    }
}
