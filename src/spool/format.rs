//! On-disk format of the spool.
//!
//! Over ~500 lines only with its unit tests (a round trip and a damaged form of every line kind);
//! the format itself is one piece: records, outcome lines and their checks.
//!
//! Messages are written in batches: every commit round of the group committer (see
//! [`super::commit`]) writes the messages accepted meanwhile either into one new file, made
//! durable with one `fdatasync` of the file and one of the directory, or into the room left in
//! the batch still open, made durable with one `fdatasync` of data alone, however many messages
//! the round holds. That is what lets the relay answer `250` only after an fsync and still accept thousands
//! of messages per second.
//!
//! ```text
//! SPOOL/msg/<batch>.spool  records, one per accepted message:
//!                            "MVS1 <id> <meta-len> <message-len> <check>\n" <meta JSON> <message>
//!                          (<check>: first 16 hex digits of BLAKE3(meta JSON || message)),
//!                          written as <batch>.spool.tmp with room after them (zeros),
//!                          synced, renamed; later rounds' records and outcome lines written
//!                          into the room in place (and after it once it is used up), outcome
//!                          lines as deliveries finish, each ending in " #<line-check>"
//!                          (first 8 hex digits of BLAKE3 of the text between "MVO1 " and " #"):
//!                            "MVO1 <id> <k> delivered <unix>", "MVO1 <id> <k> failed <code> <unix>",
//!                            "MVO1 <id> <k> deferred <next-unix>", "MVO1 <id> done",
//!                            "MVO1 <id> <k> handedoff <unix>" (forwarded to `spool.handoff_upstream`),
//!                            "MVO1 <id> <k> suppressed <unix>" (every recipient on the suppression list)
//!                          and, for a message under a bulk hold (see `docs/bulk-hold.md`),
//!                            "MVO1 <id> released", "MVO1 <id> dropped"
//!                          and what the attempts of a delivery were so far (count, first and
//!                          last time, the last reply; see [`AttemptRecord`]):
//!                            "MVO1 <id> <k> attempts <JSON object>"
//!                          and an operator's `queue delete` (synced before it is answered):
//!                            "MVO1 <id> deleted"
//! SPOOL/failed/<id>.json   record of a message with permanently failed deliveries
//! SPOOL/corrupt/<batch>.spool  a batch found damaged at start, kept for the operator
//! ```
//! A batch file is removed when every message in it is done. A record counts only when its
//! check matches, and an outcome line only when it is whole (and its check matches), so whatever
//! a crash tears is ignored: a torn record was never acknowledged (the rename, or the answer to a
//! round written in place, comes after the sync), and a torn outcome means the copy is sent again (worst case: one duplicate copy, never
//! a loss). Outcome lines without a check are read too: earlier relays wrote them, and an operator
//! may append `MVO1 <id> done` by hand.
//!
//! Records and outcome lines are self-delimiting: each ends in a bare LF (record headers and
//! outcome lines), and a stored message never holds a bare LF (the DATA decoder stores CRLF
//! lines only) nor does the meta JSON (serde writes it on one line). So neither can be mistaken
//! for something inside a message, and [`super::read`] finds every intact one wherever damage
//! left it.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::envelope::Envelope;
use crate::privacy::{Decision, PlannedDelivery};

pub use super::records::{AttemptRecord, FailureRecord};

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
    /// The `[[app]]` the message came from (its delivery events go to that app). Absent for
    /// messages of no app and in records written before apps existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
}

#[cfg(any(test, feature = "fuzzing"))]
impl MessageMeta {
    /// A split message's record for tests and fuzzing: one private copy per recipient, all on
    /// the `default` lane.
    pub fn split_sample(id: &str, received_at: u64, size: u64, rcpts: &[&str]) -> MessageMeta {
        use crate::privacy::{PlannedDelivery, Rewrite};
        MessageMeta {
            id: id.into(),
            received_at,
            envelope: crate::envelope::Envelope {
                mail_from: "s@x.test".into(),
                rcpt_to: rcpts.iter().map(|r| r.to_string()).collect(),
            },
            decision: crate::privacy::Decision::Split,
            size,
            deliveries: rcpts
                .iter()
                .map(|r| DeliveryRecord {
                    planned: PlannedDelivery {
                        rcpt_to: vec![r.to_string()],
                        rewrite: Rewrite::OnlyRecipient {
                            address: r.to_string(),
                            display_name: None,
                        },
                    },
                    provider: "default".into(),
                })
                .collect(),
            hold: None,
            privacy: None,
            app: None,
        }
    }
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
    Delivered {
        index: usize,
        at: u64,
    },
    Failed {
        index: usize,
        code: u16,
        at: u64,
    },
    Deferred {
        index: usize,
        next_at: u64,
    },
    /// Forwarded to `spool.handoff_upstream` at shutdown, which took it: final, like
    /// `Delivered`, so the copy is never sent again from this spool.
    HandedOff {
        index: usize,
        at: u64,
    },
    /// Every recipient of the copy is on the suppression list (`src/suppress.rs`): final,
    /// never sent, not a failure (no bounce).
    Suppressed {
        index: usize,
        at: u64,
    },
}

impl LogEntry {
    pub fn index(&self) -> usize {
        match *self {
            LogEntry::Delivered { index, .. }
            | LogEntry::Failed { index, .. }
            | LogEntry::Deferred { index, .. }
            | LogEntry::HandedOff { index, .. }
            | LogEntry::Suppressed { index, .. } => index,
        }
    }

    pub fn is_final(&self) -> bool {
        match self {
            LogEntry::Delivered { .. }
            | LogEntry::Failed { .. }
            | LogEntry::HandedOff { .. }
            | LogEntry::Suppressed { .. } => true,
            LogEntry::Deferred { .. } => false,
        }
    }

    /// The outcome as written after the queue id in an outcome line.
    pub fn to_text(&self) -> String {
        match *self {
            LogEntry::Delivered { index, at } => format!("{index} delivered {at}"),
            LogEntry::Failed { index, code, at } => format!("{index} failed {code} {at}"),
            LogEntry::Deferred { index, next_at } => format!("{index} deferred {next_at}"),
            LogEntry::HandedOff { index, at } => format!("{index} handedoff {at}"),
            LogEntry::Suppressed { index, at } => format!("{index} suppressed {at}"),
        }
    }

    /// Parses one outcome (without its queue id, check and newline); `None` for anything else.
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
            "handedoff" => LogEntry::HandedOff {
                index,
                at: parts.next()?.parse().ok()?,
            },
            "suppressed" => LogEntry::Suppressed {
                index,
                at: parts.next()?.parse().ok()?,
            },
            _ => return None,
        };
        parts.next().is_none().then_some(entry)
    }
}

/// First bytes of every record in a batch file (format version 1), with the space after them.
pub(super) const RECORD_MAGIC: &[u8] = b"MVS1 ";
/// First bytes of every outcome line appended to a batch file, with the space after them.
pub(super) const OUTCOME_MAGIC: &[u8] = b"MVO1 ";
/// A record header is one short line; anything longer is not one.
const MAX_HEADER_LEN: usize = 256;
/// Longest outcome line read (see [`super::records`]).
pub(super) use super::records::MAX_LINE_LEN;
/// Hex digits of a record's check, and of an outcome line's.
const RECORD_CHECK_LEN: usize = 16;
const LINE_CHECK_LEN: usize = 8;

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
    hasher.finalize().to_hex()[..RECORD_CHECK_LEN].to_string()
}

/// Checksum of an outcome line's text (between `MVO1 ` and ` #`), so a damaged line that still
/// reads as an outcome (a flipped digit in a delivery index) is not believed.
fn line_check(text: &str) -> String {
    blake3::hash(text.as_bytes()).to_hex()[..LINE_CHECK_LEN].to_string()
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A queue id as the relay writes them (ULIDs): letters and digits only, so it can never hold
/// a separator or a path component.
fn plausible_id(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

impl RecordHeader {
    /// Longest header line a record can have.
    pub const MAX_LEN: usize = MAX_HEADER_LEN;

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
            "MVS1 {} {} {} {}\n",
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
        if parts.next()? != "MVS1" {
            return None;
        }
        let header = RecordHeader {
            id: parts.next()?.to_string(),
            meta_len: parts.next()?.parse().ok()?,
            message_len: parts.next()?.parse().ok()?,
            check: parts.next()?.to_string(),
        };
        let well_formed = parts.next().is_none()
            && plausible_id(&header.id)
            && is_lower_hex(&header.check, RECORD_CHECK_LEN);
        well_formed.then_some((header, end + 1))
    }

    /// Where the meta JSON and the message of a record whose header starts at `start` (and is
    /// `header_len` bytes long) lie in a file of `file_len` bytes; `None` when the lengths run
    /// past the end of the file (a truncated file, or lengths damaged into huge numbers: every
    /// sum is checked, nothing wraps).
    pub fn extent(
        &self,
        start: usize,
        header_len: usize,
        file_len: usize,
    ) -> Option<(Range<usize>, Range<usize>)> {
        let meta_start = start.checked_add(header_len)?;
        let message_start = meta_start.checked_add(self.meta_len)?;
        let end = message_start.checked_add(self.message_len)?;
        (end <= file_len).then_some((meta_start..message_start, message_start..end))
    }
}

/// One line of a batch log: an outcome of one of its messages, or the mark that it is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchLogLine {
    Outcome(String, LogEntry),
    Done(String),
    /// A held message was released or dropped (never [`HoldState::Held`]).
    Hold(String, HoldState),
    /// What the attempts of one delivery were so far.
    Attempts(String, AttemptRecord),
    /// An operator deleted the message: none of its copies not yet sent goes out.
    Deleted(String),
}

impl BatchLogLine {
    /// The queue id the line is about.
    pub fn id(&self) -> &str {
        match self {
            BatchLogLine::Outcome(id, _)
            | BatchLogLine::Done(id)
            | BatchLogLine::Hold(id, _)
            | BatchLogLine::Attempts(id, _)
            | BatchLogLine::Deleted(id) => id,
        }
    }

    /// `MVO1 <text> #<check>` and its newline.
    fn checked(text: &str) -> String {
        format!("MVO1 {text} #{}\n", line_check(text))
    }

    pub fn outcome_line(id: &str, entry: &LogEntry) -> String {
        Self::checked(&format!("{id} {}", entry.to_text()))
    }

    pub fn done_line(id: &str) -> String {
        Self::checked(&format!("{id} done"))
    }

    pub fn attempts_line(id: &str, record: &AttemptRecord) -> String {
        Self::checked(&format!("{id} {}", record.to_text()))
    }

    pub fn deleted_line(id: &str) -> String {
        Self::checked(&format!("{id} deleted"))
    }

    /// The line recording an operator's (or the hold timeout's) decision on a held message.
    pub fn hold_line(id: &str, state: HoldState) -> String {
        let word = match state {
            HoldState::Held => "held",
            HoldState::Released => "released",
            HoldState::Dropped => "dropped",
        };
        Self::checked(&format!("{id} {word}"))
    }

    /// Whether a line (without its newline) ends in a check, as the relay writes them.
    pub fn is_checked(line: &[u8]) -> bool {
        line.len() > LINE_CHECK_LEN + 2
            && line[line.len() - LINE_CHECK_LEN - 2..].starts_with(b" #")
    }

    /// Parses one outcome line (without its newline): checked as the relay writes them, or
    /// without a check as earlier relays and operators write them. A line whose check does not
    /// match, or that is not exactly one of the forms above, is `None`.
    pub fn parse(line: &[u8]) -> Option<BatchLogLine> {
        let line = std::str::from_utf8(line).ok()?;
        let rest = line.strip_prefix("MVO1 ")?;
        let text = match rest.rsplit_once(" #") {
            Some((text, check)) => {
                if !is_lower_hex(check, LINE_CHECK_LEN) || line_check(text) != check {
                    return None;
                }
                text
            }
            None => rest,
        };
        let (id, what) = text.split_once(' ')?;
        if !plausible_id(id) {
            return None;
        }
        let id = id.to_string();
        Some(match what {
            "done" => BatchLogLine::Done(id),
            "deleted" => BatchLogLine::Deleted(id),
            "released" => BatchLogLine::Hold(id, HoldState::Released),
            "dropped" => BatchLogLine::Hold(id, HoldState::Dropped),
            _ => match what.split_once(" attempts ") {
                Some((index, json)) => {
                    let mut record: AttemptRecord = serde_json::from_str(json).ok()?;
                    record.index = index.parse().ok()?;
                    BatchLogLine::Attempts(id, record)
                }
                None => BatchLogLine::Outcome(id, LogEntry::parse_line(what)?),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_lines(text: &str) -> Vec<BatchLogLine> {
        text.split('\n')
            .filter_map(|l| BatchLogLine::parse(l.as_bytes()))
            .collect()
    }

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
            LogEntry::HandedOff { index: 4, at: 20 },
        ];
        for entry in entries {
            assert_eq!(LogEntry::parse_line(&entry.to_text()), Some(entry));
            let line = BatchLogLine::outcome_line("A1", &entry);
            assert!(line.ends_with('\n') && line.contains(" #"), "{line:?}");
            assert_eq!(
                BatchLogLine::parse(line.trim_end().as_bytes()),
                Some(BatchLogLine::Outcome("A1".into(), entry))
            );
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
            b"MVS2 01ABC 2 4 0123456789abcdef\n",
            b"MVS1 ../x 2 4 0123456789abcdef\n",
            b"MVS1 01ABC two 4 0123456789abcdef\n",
            // The check is exactly 16 lowercase hex digits: a CRLF line (as inside a stored
            // message) is never a header.
            b"MVS1 01ABC 2 4 0123456789abcdef\r\n",
            b"MVS1 01ABC 2 4 0123456789ABCDEF\n",
            b"MVS1 01ABC 2 4 abc\n",
            b"",
        ] {
            assert_eq!(RecordHeader::parse(bad), None, "{bad:?}");
        }
        assert_ne!(record_check(b"{}", b"body"), record_check(b"{}", b"bodY"));
    }

    #[test]
    fn a_huge_length_never_wraps() {
        let line = b"MVS1 X 18446744073709551566 0 0123456789abcdef\n";
        let (header, len) = RecordHeader::parse(line).unwrap();
        assert_eq!(header.extent(72, len, 200), None);
        let (header, len) =
            RecordHeader::parse(b"MVS1 X 2 18446744073709551615 0123456789abcdef\n").unwrap();
        assert_eq!(header.extent(0, len, usize::MAX), None);
        let (header, len) = RecordHeader::parse(b"MVS1 X 2 3 0123456789abcdef\n").unwrap();
        assert_eq!(header.extent(0, len, len + 4), None, "one byte short");
        assert_eq!(
            header.extent(0, len, len + 5),
            Some((len..len + 2, len + 2..len + 5))
        );
    }

    #[test]
    fn batch_log_lines_round_trip_and_skip_damaged_lines() {
        let entry = LogEntry::Failed {
            index: 2,
            code: 550,
            at: 9,
        };
        let flipped = BatchLogLine::outcome_line("C", &LogEntry::Delivered { index: 1, at: 5 })
            .replace("C 1 delivered", "C 3 delivered");
        let text = format!(
            "{}\0\0\0\n{}garbage\nMVO1 B 1 delivered\nB 2 done\n{flipped}MVO1 C 0 deliv",
            BatchLogLine::outcome_line("A", &entry),
            BatchLogLine::done_line("B"),
        );
        assert_eq!(
            parse_lines(&text),
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
            parse_lines(&text),
            vec![
                BatchLogLine::Hold("A".into(), HoldState::Released),
                BatchLogLine::Hold("B".into(), HoldState::Dropped)
            ]
        );
    }

    #[test]
    fn unchecked_lines_of_earlier_relays_and_operators_are_read() {
        let text = "MVO1 A 1 delivered 5\nnonsense\nMVO1 A 2 failed x 3\nMVO1 A 3 delivered 7 extra\nMVO1 B done\nMVO1 C done\r\nMVO1 A 4 deliv";
        assert_eq!(
            parse_lines(text),
            vec![
                BatchLogLine::Outcome("A".into(), LogEntry::Delivered { index: 1, at: 5 }),
                BatchLogLine::Done("B".into())
            ]
        );
    }
}
