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
//!                          "MVS1 <id> <meta-len> <message-len> <check>\n" <meta JSON> <message>
//!                          <check> is the first 16 hex digits of BLAKE3(meta JSON || message);
//!                          written as <batch>.spool.tmp and renamed once synced
//! SPOOL/msg/<batch>.log    append-only outcomes of that batch's messages, one line each:
//!                          "<id> <k> delivered <unix>", "<id> <k> failed <code> <unix>",
//!                          "<id> <k> deferred <next-unix>", "<id> done"
//! SPOOL/failed/<id>.json   record of a message with permanently failed deliveries
//! ```
//! A batch's files are removed when every message in it is done. A log line counts only when it
//! ends in `\n`, and a record only when its check matches, so whatever a crash tears is ignored:
//! a torn record was never acknowledged, and a torn outcome means the copy is sent again (worst
//! case: one duplicate copy, never a loss).

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
}

impl BatchLogLine {
    pub fn outcome_line(id: &str, entry: &LogEntry) -> String {
        format!("{id} {}", entry.to_line())
    }

    pub fn done_line(id: &str) -> String {
        format!("{id} done\n")
    }

    /// Parses the complete lines of a batch log; a torn last line and garbage are skipped.
    pub fn parse_log(text: &str) -> Vec<BatchLogLine> {
        let complete = match text.rfind('\n') {
            Some(end) => &text[..end],
            None => return Vec::new(),
        };
        complete
            .lines()
            .filter_map(|line| {
                let (id, rest) = line.split_once(' ')?;
                if rest == "done" {
                    Some(BatchLogLine::Done(id.to_string()))
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
            "{}{}garbage\nB 1 delivered\nC 0 deliv",
            BatchLogLine::outcome_line("A", &entry),
            BatchLogLine::done_line("B"),
        );
        assert_eq!(
            BatchLogLine::parse_log(&text),
            vec![
                BatchLogLine::Outcome("A".into(), entry),
                BatchLogLine::Done("B".into())
            ]
        );
    }

    #[test]
    fn torn_and_garbage_lines_are_ignored() {
        let text = "A 1 delivered 5\nnonsense\nA 2 failed x 3\nA 3 delivered 7 extra\nA 4 deliv";
        assert_eq!(
            BatchLogLine::parse_log(text),
            vec![BatchLogLine::Outcome(
                "A".into(),
                LogEntry::Delivered { index: 1, at: 5 }
            )]
        );
    }
}
