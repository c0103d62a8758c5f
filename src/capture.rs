//! The capture format shared by the `dir` upstream and `mailveil sink`: `DIR/<id>.eml` holding
//! the message exactly as received, and `DIR/<id>.json` holding
//! `{"mail_from": "...", "rcpt_to": ["..."]}` (`mail_from` is `""` for the null sender).
//!
//! Why this shape: a newcomer can open the files with any editor, and tests of the whole relay
//! read them back with [`read_all`] to check what an upstream would have received.
//!
//! Privacy: the directory is created 0700 and both files 0600 (they hold whole messages and
//! envelopes), whatever the umask; see [`crate::private_files`].
//!
//! Durability and visibility: both files are written under temporary dot-names, fsync'd, then
//! renamed into place with a directory fsync after each rename, `.eml` first. So a reader that
//! sees `<id>.json` always finds the complete `<id>.eml`, even after a crash; a crash mid-write
//! leaves only dot-files, which [`read_all`] ignores.
//!
//! Ids are ULIDs: unique, and sorting them sorts messages by capture time (monotonic within
//! one process, so two messages captured in the same millisecond keep their order).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// One captured message as read back from a capture directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    /// The ULID that names both files; sorts by capture time.
    pub id: String,
    /// `""` for the null sender.
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    /// The `.eml` content: the message bytes exactly as captured.
    pub bytes: Vec<u8>,
}

/// The `.json` side file.
#[derive(Serialize, Deserialize)]
struct EnvelopeFile {
    mail_from: String,
    rcpt_to: Vec<String>,
}

/// Process-wide ULID generator: plain `Ulid::new()` is random within a millisecond, which would
/// let two captures in the same millisecond sort out of order. This is the one piece of global
/// state here, and it only hands out ids.
static IDS: Mutex<ulid::Generator> = Mutex::new(ulid::Generator::new());

fn next_id() -> String {
    let generated = IDS.lock().map(|mut g| g.generate());
    match generated {
        Ok(Ok(id)) => id.to_string(),
        // Overflow of the random part within one millisecond, or a poisoned lock: a fresh
        // random ULID is still unique, only possibly out of order within that millisecond.
        _ => ulid::Ulid::new().to_string(),
    }
}

/// Writes one message durably and returns its id. `parts` are concatenated into `<id>.eml`
/// (the header block and the body, without copying them together first). Creates `dir` if it
/// is missing. Blocking: call from a blocking thread in async code.
pub fn write<S: AsRef<str>>(
    dir: &Path,
    mail_from: &str,
    rcpt_to: &[S],
    parts: &[&[u8]],
) -> io::Result<String> {
    crate::private_files::ensure_dir(dir)?;
    let id = next_id();
    let envelope = EnvelopeFile {
        mail_from: mail_from.to_string(),
        rcpt_to: rcpt_to.iter().map(|r| r.as_ref().to_string()).collect(),
    };
    let mut json = serde_json::to_vec(&envelope).map_err(io::Error::other)?;
    json.push(b'\n');

    let eml_tmp = dir.join(format!(".{id}.eml.tmp"));
    let json_tmp = dir.join(format!(".{id}.json.tmp"));
    let result = (|| {
        write_synced(&eml_tmp, parts)?;
        write_synced(&json_tmp, &[&json])?;
        fs::rename(&eml_tmp, dir.join(format!("{id}.eml")))?;
        sync_dir(dir)?;
        fs::rename(&json_tmp, dir.join(format!("{id}.json")))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        // Best effort: leave no temporaries behind; the renamed files (if any) stay, and an
        // `.eml` without its `.json` is invisible to readers.
        let _ = fs::remove_file(&eml_tmp);
        let _ = fs::remove_file(&json_tmp);
    }
    result.map(|()| id)
}

fn write_synced(path: &Path, parts: &[&[u8]]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(crate::private_files::FILE_MODE)
        .open(path)?;
    for part in parts {
        file.write_all(part)?;
    }
    file.sync_all()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Every complete message in `dir`, sorted by id (capture order). A missing directory reads as
/// empty, so a test can poll before the first message arrives.
pub fn read_all(dir: &Path) -> io::Result<Vec<Captured>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut ids = Vec::new();
    for entry in entries {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') {
            continue;
        }
        if let Some(id) = name.strip_suffix(".json") {
            ids.push(id.to_string());
        }
    }
    ids.sort();
    ids.into_iter().map(|id| read_one(dir, id)).collect()
}

/// Reads the message `id` from `dir`.
pub fn read_one(dir: &Path, id: String) -> io::Result<Captured> {
    let json = fs::read(path_of(dir, &id, "json"))?;
    let envelope: EnvelopeFile = serde_json::from_slice(&json)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{id}.json: {e}")))?;
    let bytes = fs::read(path_of(dir, &id, "eml"))?;
    Ok(Captured {
        id,
        mail_from: envelope.mail_from,
        rcpt_to: envelope.rcpt_to,
        bytes,
    })
}

fn path_of(dir: &Path, id: &str, ext: &str) -> PathBuf {
    dir.join(format!("{id}.{ext}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("outbox"); // missing: write must create it
        let header = b"Subject: hi\r\nTo: a@example.com\r\n\r\n".as_slice();
        let body = b"line one\r\n.dot line\r\n\r\nno final newline".as_slice();
        let id1 = write(
            &dir,
            "s@example.com",
            &["a@example.com", "b@example.org"],
            &[header, body],
        )
        .unwrap();
        let id2 = write::<&str>(&dir, "", &["c@example.net"], &[b"X: y\r\n\r\n"]).unwrap();
        assert_ne!(id1, id2);
        assert!(id1 < id2, "ids sort in capture order");

        let all = read_all(&dir).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].id, id1);
        assert_eq!(all[0].mail_from, "s@example.com");
        assert_eq!(all[0].rcpt_to, vec!["a@example.com", "b@example.org"]);
        assert_eq!(all[0].bytes, [header, body].concat());
        assert_eq!(all[1].mail_from, "", "null sender is an empty string");
        assert_eq!(all[1].bytes, b"X: y\r\n\r\n");

        let json = fs::read_to_string(dir.join(format!("{id2}.json"))).unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"mail_from": "", "rcpt_to": ["c@example.net"]})
        );
        // No temporaries left behind.
        let leftovers: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn readers_ignore_incomplete_messages() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join(".01ABC.eml.tmp"), b"partial").unwrap();
        fs::write(tmp.path().join("01ABD.eml"), b"no json yet").unwrap();
        assert!(read_all(tmp.path()).unwrap().is_empty());
        assert!(read_all(&tmp.path().join("missing")).unwrap().is_empty());
    }

    #[test]
    fn ids_are_unique_and_ordered_under_load() {
        let ids: Vec<String> = (0..2000).map(|_| next_id()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, ids);
    }
}
