//! The pause state on disk: `<spool>/pause.json`, written as a whole to `pause.json.tmp`
//! (mode 0600), synced, renamed over the old record and the directory synced: after a crash at
//! any point the record is the old state or the new one, never a mix. Read once at start.
//!
//! A record that exists but cannot be read (damaged by hand or by the disk) must not silently
//! resume deliveries: the relay starts with a global pause of its own and says why in the log
//! and in `/status` ([`Restored::Unreadable`]).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ALL, Board, Change, Entry, Source};
use crate::private_files;

/// The record's file name in the spool directory.
pub const FILE_NAME: &str = "pause.json";

/// The format version written; a newer one is read as unreadable.
const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    #[serde(flatten)]
    board: Board,
}

/// What was found at start.
#[derive(Debug)]
pub enum Restored {
    /// No record: nothing was ever paused here.
    Nothing,
    Board(Board),
    /// A record that cannot be read; the board holds a global pause standing in for it.
    Unreadable {
        board: Board,
        reason: String,
    },
}

/// The record of one spool directory.
#[derive(Debug, Clone)]
pub struct Record {
    path: PathBuf,
}

/// The record could not be written: the change holds in memory only.
#[derive(Debug, thiserror::Error)]
#[error("cannot record the pause state in {path}: {source}")]
pub struct RecordError {
    pub path: PathBuf,
    pub source: io::Error,
}

impl Record {
    pub fn in_spool(spool_root: &Path) -> Record {
        Record {
            path: spool_root.join(FILE_NAME),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the record (sources become [`Source::Spool`]).
    pub fn restore(&self, by: Option<String>) -> Restored {
        let text = match fs::read(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Restored::Nothing,
            Err(e) => return unreadable(e.to_string(), by),
        };
        match serde_json::from_slice::<OnDisk>(&text) {
            Ok(d) if d.version == VERSION => Restored::Board(d.board.restored()),
            Ok(d) => unreadable(format!("unknown format version {}", d.version), by),
            Err(e) => unreadable(e.to_string(), by),
        }
    }

    /// Writes `board` durably (see the module doc). Blocking: call from a blocking thread.
    pub fn write(&self, board: &Board) -> Result<(), RecordError> {
        let err = |source| RecordError {
            path: self.path.clone(),
            source,
        };
        let text = serde_json::to_vec_pretty(&OnDisk {
            version: VERSION,
            board: board.clone(),
        })
        .map_err(|e| err(io::Error::other(e)))?;
        let tmp = self.path.with_extension("json.tmp");
        let mut file = private_files::create_options().open(&tmp).map_err(err)?;
        file.write_all(&text).map_err(err)?;
        file.sync_all().map_err(err)?;
        drop(file);
        fs::rename(&tmp, &self.path).map_err(err)?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        File::open(dir).and_then(|d| d.sync_all()).map_err(err)
    }
}

/// A global pause standing in for a record that cannot be read. Never shared with the cluster
/// (it is this replica's doubt, not a decision): the cluster's entry replaces it when there is
/// one.
fn unreadable(reason: String, by: Option<String>) -> Restored {
    let mut board = Board::default();
    board.targets.insert(
        ALL.to_string(),
        Entry {
            change: Change {
                paused: true,
                id: format!("unreadable-record-{}", ulid::Ulid::new()),
                at_ms: super::now_ms(),
                by,
            },
            source: Source::Spool,
            pending: false,
            seen: None,
        },
    );
    Restored::Unreadable { board, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_record_reads_back_with_its_source_as_spool() {
        let dir = tempfile::tempdir().unwrap();
        let record = Record::in_spool(dir.path());
        assert!(matches!(record.restore(None), Restored::Nothing));
        let mut board = Board::default();
        board.command("yahoo", true, Some("relay-1".into()), false);
        board.command(ALL, false, None, false);
        record.write(&board).unwrap();
        assert!(!dir.path().join("pause.json.tmp").exists());
        let Restored::Board(back) = record.restore(None) else {
            panic!("record not read back");
        };
        assert!(back.is_paused("yahoo") && !back.is_paused(ALL));
        assert_eq!(back.targets["yahoo"].source, Source::Spool);
        assert_eq!(back.targets["yahoo"].change.by.as_deref(), Some("relay-1"));
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(record.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn an_unreadable_record_starts_paused() {
        let dir = tempfile::tempdir().unwrap();
        let record = Record::in_spool(dir.path());
        fs::write(record.path(), b"{\"version\":1,\"targets\":{\"*\":").unwrap();
        let Restored::Unreadable { board, .. } = record.restore(None) else {
            panic!("a torn record must not read as a state");
        };
        assert!(board.is_paused(ALL));
        assert_eq!(board.targets[ALL].seen, None, "never shared");
        fs::write(record.path(), b"{\"version\":9,\"targets\":{}}").unwrap();
        assert!(matches!(record.restore(None), Restored::Unreadable { .. }));
    }
}
