//! On-disk format of the spool.
//!
//! Messages are written in batches: every commit round of the group committer (see
//! [`super::commit`]) writes the messages accepted meanwhile into one new file and makes it
//! durable with one `fdatasync` of the file and one of the directory, however many messages it
//! holds. That is what lets the relay answer `250` only after an fsync and still accept thousands
//! of messages per second.
//!
//! ```text
//! SPOOL/msg/<batch>.spool  records, one per accepted message:
//!                            "MVS1 <id> <meta-len> <message-len> <check>\n" <meta JSON> <message>
//!                          (<check>: first 16 hex digits of BLAKE3(meta JSON || message)),
//!                          written as <batch>.spool.tmp, synced, renamed; then outcome lines
//!                          appended as deliveries finish:
//!                            "MVO1 <id> <k> delivered <unix>", "MVO1 <id> <k> failed <code> <unix>",
//!                            "MVO1 <id> <k> deferred <next-unix>", "MVO1 <id> done"
//!                          and, for a message under a bulk hold (see `docs/bulk-hold.md`),
//!                            "MVO1 <id> released", "MVO1 <id> dropped"
//! SPOOL/failed/<id>.json   record of a message with permanently failed deliveries
//! ```
//! A batch file is removed when every message in it is done. A record counts only when its
//! check matches, and an outcome line only when it is whole, so whatever a crash tears is
//! ignored: a torn record was never acknowledged (the rename comes after the sync), and a torn
//! outcome means the copy is sent again (worst case: one duplicate copy, never a loss).

use serde::{Deserialize, Serialize};

use crate::envelope::Envelope;
use crate::privacy::{Decision, PlannedDelivery};

/// Everything needed to deliver a spooled message, except its bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MessageMeta {
    pub id: String,
    /// Unix seconds when the message was accepted; `max_queue_time` counts from here.
    pub received_at: u64,
    pub envelope: Envelope,
    pub decision: Decision,
    /// Size of the stored `.eml` in bytes.
    pub size: u64,
    pub deliveries: Vec<DeliveryRecord>,
    /// Set when the message fanned out to more recipients than `privacy.hold_fanout_above`: only
    /// its canary deliveries go out until an operator (or the hold timeout) releases or drops
    /// it. Stored with the record, so the hold is durable before the client hears `250`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<Hold>,
    /// The privacy settings the copies were planned with, for the check before sending.
    /// Absent in records of mailveil 0.1 (the settings in force are used then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy: Option<crate::privacy::PrivacySettings>,
}

/// A bulk hold on a message (see `docs/bulk-hold.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// Indices of the deliveries sent at once; every other delivery waits for the release.
    pub canaries: Vec<usize>,
    /// What became of the hold: never stored in the record (which is written once), but read
    /// back from the `released`/`dropped` outcome lines at recovery.
    #[serde(skip)]
    pub state: HoldState,
}

/// Where a held message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HoldState {
    /// Only the canaries may go out.
    #[default]
    Held,
    /// Every delivery may go out.
    Released,
    /// The held deliveries never go out; the message leaves the spool once its canaries are
    /// final.
    Dropped,
}

impl Hold {
    pub fn is_canary(&self, index: usize) -> bool {
        self.canaries.contains(&index)
    }
}

/// One delivery of the message (one copy, or one multi-recipient transaction).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliveryRecord {
    #[serde(flatten)]
    pub planned: PlannedDelivery,
    /// Provider lane the delivery belongs to (all its recipients share it).
    pub provider: String,
}

/// A final or interim outcome appended to the batch's `.log`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogEntry {
    Delivered { index: usize, at: u64 },
    Failed { index: usize, code: u16, at: u64 },
    Deferred { index: usize, next_at: u64 },
}

impl LogEntry {
    pub fn index(&self) -> usize {
        match *self {
            LogEntry::Delivered { index, .. }
            | LogEntry::Failed { index, .. }
            | LogEntry::Deferred { index, .. } => index,
        }
    }

    pub fn is_final(&self) -> bool {
        match self {
            LogEntry::Delivered { .. } | LogEntry::Failed { .. } => true,
            LogEntry::Deferred { .. } => false,
        }
    }

    pub fn to_line(&self) -> String {
        match *self {
            LogEntry::Delivered { index, at } => format!("{index} delivered {at}\n"),
            LogEntry::Failed { index, code, at } => format!("{index} failed {code} {at}\n"),
            LogEntry::Deferred { index, next_at } => format!("{index} deferred {next_at}\n"),
        }
    }

    /// Parses one outcome (without its queue id and newline); `None` for anything else.
    pub(crate) fn parse_line(line: &str) -> Option<LogEntry> {
        let mut parts = line.split(' ');
        let index = parts.next()?.parse().ok()?;
        let entry = match parts.next()? {
            "delivered" => LogEntry::Delivered {
                index,
                at: parts.next()?.parse().ok()?,
            },
            "failed" => LogEntry::Failed {
                index,
                code: parts.next()?.parse().ok()?,
                at: parts.next()?.parse().ok()?,
            },
            "deferred" => LogEntry::Deferred {
                index,
                next_at: parts.next()?.parse().ok()?,
            },
            _ => return None,
        };
        parts.next().is_none().then_some(entry)
    }
}

/// First bytes of every record in a batch file (format version 1).
const RECORD_MAGIC: &str = "MVS1";
/// First bytes of every outcome line appended to a batch file.
const OUTCOME_MAGIC: &str = "MVO1";
/// A record header is one short line; anything longer is not one.
const MAX_HEADER_LEN: usize = 256;

/// The fixed part of a record in a batch file: who it is and how long its parts are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordHeader {
    pub id: String,
    pub meta_len: usize,
    pub message_len: usize,
    pub check: String,
}

/// Checksum of a record's content, so a torn or corrupted record is recognised at recovery.
pub fn record_check(meta: &[u8], message: &[u8]) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(meta);
    hasher.update(message);
    hasher.finalize().to_hex()[..16].to_string()
}

impl RecordHeader {
    pub fn new(id: &str, meta: &[u8], message: &[u8]) -> RecordHeader {
        RecordHeader {
            id: id.to_string(),
            meta_len: meta.len(),
            message_len: message.len(),
            check: record_check(meta, message),
        }
    }

    pub fn to_line(&self) -> String {
        format!(
            "{RECORD_MAGIC} {} {} {} {}\n",
            self.id, self.meta_len, self.message_len, self.check
        )
    }

    /// Parses the header at the start of `bytes`; returns it with its length in bytes, or
    /// `None` when `bytes` does not start with a complete, well-formed header.
    pub fn parse(bytes: &[u8]) -> Option<(RecordHeader, usize)> {
        let window = &bytes[..bytes.len().min(MAX_HEADER_LEN)];
        let end = memchr::memchr(b'\n', window)?;
        let line = std::str::from_utf8(&window[..end]).ok()?;
        let mut parts = line.split(' ');
        if parts.next()? != RECORD_MAGIC {
            return None;
        }
        let header = RecordHeader {
            id: parts.next()?.to_string(),
            meta_len: parts.next()?.parse().ok()?,
            message_len: parts.next()?.parse().ok()?,
            check: parts.next()?.to_string(),
        };
        let plausible_id =
            !header.id.is_empty() && header.id.bytes().all(|b| b.is_ascii_alphanumeric());
        (parts.next().is_none() && plausible_id).then_some((header, end + 1))
    }
}

/// One line of a batch log: an outcome of one of its messages, or the mark that it is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchLogLine {
    Outcome(String, LogEntry),
    Done(String),
    /// A held message was released or dropped (never [`HoldState::Held`]).
    Hold(String, HoldState),
}

impl BatchLogLine {
    pub fn outcome_line(id: &str, entry: &LogEntry) -> String {
        format!("{OUTCOME_MAGIC} {id} {}", entry.to_line())
    }

    pub fn done_line(id: &str) -> String {
        format!("{OUTCOME_MAGIC} {id} done\n")
    }

    /// The line recording an operator's (or the hold timeout's) decision on a held message.
    pub fn hold_line(id: &str, state: HoldState) -> String {
        let word = match state {
            HoldState::Held => "held",
            HoldState::Released => "released",
            HoldState::Dropped => "dropped",
        };
        format!("{OUTCOME_MAGIC} {id} {word}\n")
    }

    /// Parses the complete lines of a batch's outcome section; a torn last line and garbage
    /// (such as the zeros a crash can leave in a file's tail) are skipped.
    pub fn parse_log(bytes: &[u8]) -> Vec<BatchLogLine> {
        let complete = match memchr::memrchr(b'\n', bytes) {
            Some(end) => &bytes[..end],
            None => return Vec::new(),
        };
        complete
            .split(|&b| b == b'\n')
            .filter_map(|line| {
                let line = std::str::from_utf8(line).ok()?;
                let rest = line.strip_prefix(OUTCOME_MAGIC)?.strip_prefix(' ')?;
                let (id, rest) = rest.split_once(' ')?;
                if rest == "done" {
                    Some(BatchLogLine::Done(id.to_string()))
                } else if rest == "released" {
                    Some(BatchLogLine::Hold(id.to_string(), HoldState::Released))
                } else if rest == "dropped" {
                    Some(BatchLogLine::Hold(id.to_string(), HoldState::Dropped))
                } else {
                    LogEntry::parse_line(rest).map(|e| BatchLogLine::Outcome(id.to_string(), e))
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_round_trip() {
        let entries = [
            LogEntry::Delivered { index: 3, at: 17 },
            LogEntry::Failed {
                index: 0,
                code: 550,
                at: 18,
            },
            LogEntry::Deferred {
                index: 9,
                next_at: 99,
            },
        ];
        for entry in entries {
            let line = entry.to_line();
            assert_eq!(LogEntry::parse_line(line.trim_end()), Some(entry));
        }
    }

    #[test]
    fn record_headers_round_trip_and_reject_garbage() {
        let header = RecordHeader::new("01ABC", b"{}", b"body");
        let line = header.to_line();
        let mut bytes = line.clone().into_bytes();
        bytes.extend_from_slice(b"{}body");
        assert_eq!(RecordHeader::parse(&bytes), Some((header, line.len())));
        for bad in [
            &b"MVS1 01ABC 2 4"[..],
            b"MVS2 01ABC 2 4 abc\n",
            b"MVS1 ../x 2 4 abc\n",
            b"MVS1 01ABC two 4 abc\n",
            b"",
        ] {
            assert_eq!(RecordHeader::parse(bad), None, "{bad:?}");
        }
        assert_ne!(record_check(b"{}", b"body"), record_check(b"{}", b"bodY"));
    }

    #[test]
    fn batch_log_lines_round_trip_and_skip_torn_lines() {
        let entry = LogEntry::Failed {
            index: 2,
            code: 550,
            at: 9,
        };
        let text = format!(
            "{}\0\0\0\n{}garbage\nMVO1 B 1 delivered\nB 2 done\nMVO1 C 0 deliv",
            BatchLogLine::outcome_line("A", &entry),
            BatchLogLine::done_line("B"),
        );
        assert_eq!(
            BatchLogLine::parse_log(text.as_bytes()),
            vec![
                BatchLogLine::Outcome("A".into(), entry),
                BatchLogLine::Done("B".into())
            ]
        );
    }

    #[test]
    fn hold_lines_round_trip() {
        let text = format!(
            "{}{}MVO1 C held\n",
            BatchLogLine::hold_line("A", HoldState::Released),
            BatchLogLine::hold_line("B", HoldState::Dropped),
        );
        assert_eq!(
            BatchLogLine::parse_log(text.as_bytes()),
            vec![
                BatchLogLine::Hold("A".into(), HoldState::Released),
                BatchLogLine::Hold("B".into(), HoldState::Dropped)
            ]
        );
    }

    #[test]
    fn torn_and_garbage_lines_are_ignored() {
        let text = "MVO1 A 1 delivered 5\nnonsense\nMVO1 A 2 failed x 3\nMVO1 A 3 delivered 7 extra\nMVO1 A 4 deliv";
        assert_eq!(
            BatchLogLine::parse_log(text.as_bytes()),
            vec![BatchLogLine::Outcome(
                "A".into(),
                LogEntry::Delivered { index: 1, at: 5 }
            )]
        );
    }
}
