//! Reading one batch file's bytes back: every record and outcome line it holds, and what in it
//! is damaged. Pure (bytes in, findings out), so the `recovery` fuzz target runs it directly.
//!
//! Why it searches instead of walking from record to record: a walk stops at the first damaged
//! record (or trusts a damaged length and lands in the middle of the next one), and everything
//! after it is lost. Records and outcome lines are self-delimiting and self-checking (see
//! [`super::format`]): a record is a header line naming its lengths and a check of its content,
//! an outcome line ends in a newline and (when the relay wrote it) a check. Neither can occur
//! inside a stored message, which holds CRLF lines only, nor inside the one-line meta JSON. So
//! every place in the file that starts with a magic is tried, and each item that parses and
//! checks out is taken, wherever damage left it: a flipped byte costs exactly the record or line
//! it is in.
//!
//! What is left over (bytes no intact item covers) is damage, except what a crash leaves: a line
//! torn mid-write, the zeros some file systems leave in a file's tail, and a commit round torn
//! while it was written into a batch's room (see [`super::commit`]): records after the last
//! intact one that do not check out and still hold zeros where the room's pages were not yet
//! written (an aligned block of [`TORN_BLOCK`] zero bytes). Such a round was never acknowledged,
//! so it is not damage. A batch's first round is synced before the batch gets its name, so a
//! crash never tears it; a record cut short or changed elsewhere is damage as before.
//!
//! Cost: one pass over the file per magic, plus one hash of each candidate record's extent.
//! In a healthy batch that is each record once; only damage adds candidates.

use std::fmt;
use std::ops::Range;

use memchr::memmem;

use super::format::{
    BatchLogLine, MAX_LINE_LEN, MessageMeta, OUTCOME_MAGIC, RECORD_MAGIC, RecordHeader,
    record_check,
};

/// An intact record: its meta (parsed) and where its message bytes are.
#[derive(Debug, Clone)]
pub struct RecordAt {
    pub meta: MessageMeta,
    /// Where the record starts (its header line).
    pub offset: usize,
    pub message: Range<usize>,
}

/// Something in a batch file that could not be read. Each names where it is, so an operator can
/// find it in the copy kept under `corrupt/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    /// A record whose meta or message does not match its check (a changed byte in the record,
    /// or in the check itself).
    CheckMismatch { id: String, offset: usize },
    /// A record whose lengths run past the end of the file: the file was cut short, or a length
    /// was damaged (into a huge number, say).
    PastEnd { id: String, offset: usize },
    /// A record that checks out but whose meta cannot be read (or names no queue id).
    BadMeta {
        id: String,
        offset: usize,
        reason: String,
    },
    /// A record whose header names another queue id than its meta; the content checks out, so
    /// it is recovered under the meta's id.
    HeaderId {
        header: String,
        meta: String,
        offset: usize,
    },
    /// Bytes that are neither an intact record nor an intact outcome line (a damaged outcome
    /// line, garbage, the rest of a damaged record).
    Unreadable { offset: usize, len: usize },
    /// No record at all: a batch is written with at least one, so the file lost them.
    NoRecord,
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Damage::CheckMismatch { id, offset } => {
                write!(f, "record {id} at byte {offset} does not match its check")
            }
            Damage::PastEnd { id, offset } => write!(
                f,
                "record {id} at byte {offset} runs past the end of the file (cut short, or a damaged length)"
            ),
            Damage::BadMeta { id, offset, reason } => {
                write!(
                    f,
                    "record {id} at byte {offset} has unreadable meta: {reason}"
                )
            }
            Damage::HeaderId {
                header,
                meta,
                offset,
            } => write!(
                f,
                "record at byte {offset} is headed {header} but its meta says {meta} (recovered as {meta})"
            ),
            Damage::Unreadable { offset, len } => {
                write!(f, "{len} unreadable bytes at byte {offset}")
            }
            Damage::NoRecord => f.write_str("no record found"),
        }
    }
}

/// Everything found in one batch file.
#[derive(Debug, Default)]
pub struct BatchReading {
    /// Intact records, in file order.
    pub records: Vec<RecordAt>,
    /// Intact outcome lines, in file order.
    pub lines: Vec<BatchLogLine>,
    pub damage: Vec<Damage>,
    /// Records of a commit round a crash tore (never acknowledged; not damage).
    pub torn: usize,
}

/// The unit in which a torn round's unwritten room shows: a disk sector of zeros.
pub const TORN_BLOCK: usize = 512;

/// Reads a batch file's bytes. Never panics, whatever the bytes.
pub fn read_batch(data: &[u8]) -> BatchReading {
    let mut reading = BatchReading::default();
    // Byte ranges covered by intact items, and where damaged record headers start.
    let mut covered: Vec<Range<usize>> = Vec::new();
    let mut bad_headers: Vec<usize> = Vec::new();
    // Records that do not check out: where each starts and ends (its end clamped to the file's).
    let mut unchecked: Vec<Range<usize>> = Vec::new();
    // Where intact outcome lines start: a crash's leftovers are benign only before one of these
    // or at the end of the file.
    let mut line_starts: Vec<usize> = Vec::new();

    for at in memmem::find_iter(data, RECORD_MAGIC) {
        let Some((header, header_len)) = RecordHeader::parse(&data[at..]) else {
            continue;
        };
        let Some((meta, message)) = header.extent(at, header_len, data.len()) else {
            reading.damage.push(Damage::PastEnd {
                id: header.id,
                offset: at,
            });
            bad_headers.push(at);
            unchecked.push(at..data.len());
            continue;
        };
        if record_check(&data[meta.clone()], &data[message.clone()]) != header.check {
            reading.damage.push(Damage::CheckMismatch {
                id: header.id,
                offset: at,
            });
            bad_headers.push(at);
            unchecked.push(at..message.end);
            continue;
        }
        let parsed = serde_json::from_slice::<MessageMeta>(&data[meta])
            .map_err(|e| e.to_string())
            .and_then(|m| {
                if m.id.is_empty() || !m.id.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    Err(format!("queue id {:?} is not one the relay writes", m.id))
                } else {
                    Ok(m)
                }
            });
        let meta = match parsed {
            Ok(meta) => meta,
            Err(reason) => {
                reading.damage.push(Damage::BadMeta {
                    id: header.id,
                    offset: at,
                    reason,
                });
                bad_headers.push(at);
                continue;
            }
        };
        if meta.id != header.id {
            reading.damage.push(Damage::HeaderId {
                header: header.id,
                meta: meta.id.clone(),
                offset: at,
            });
        }
        covered.push(at..message.end);
        reading.records.push(RecordAt {
            meta,
            offset: at,
            message,
        });
    }

    // A torn round: records after the last intact one, still holding unwritten room.
    let last_intact = reading.records.last().map(|r| r.offset);
    let torn: Vec<usize> = unchecked
        .iter()
        .filter(|r| last_intact.is_none_or(|l| l < r.start) && holds_zero_block(data, r))
        .map(|r| r.start)
        .collect();
    if !torn.is_empty() {
        reading.damage.retain(|d| match d {
            Damage::PastEnd { offset, .. } | Damage::CheckMismatch { offset, .. } => {
                !torn.contains(offset)
            }
            _ => true,
        });
        reading.torn = torn.len();
    }

    // Where intact records are, in file order. Damage can make two overlap: a record cut short
    // still checks out when the bytes after it happen to be the ones it lost.
    // So: starts in file order, and the furthest end reached by any record up to each.
    let starts: Vec<usize> = covered.iter().map(|r| r.start).collect();
    let reach: Vec<usize> = covered
        .iter()
        .scan(0, |end, r| {
            *end = r.end.max(*end);
            Some(*end)
        })
        .collect();
    let inside_record = |at: usize| {
        let before = starts.partition_point(|&s| s < at);
        before > 0 && reach[before - 1] > at
    };
    for at in memmem::find_iter(data, OUTCOME_MAGIC) {
        let window = &data[at..data.len().min(at.saturating_add(MAX_LINE_LEN))];
        let Some(len) = memchr::memchr(b'\n', window) else {
            continue;
        };
        // An unchecked line (an earlier relay's, or an operator's) that starts inside an intact
        // record is that message's text: a message ending without a line end, followed by
        // damage that begins with one, or a message of a spool written before DATA was
        // normalised to CRLF. Checked lines are the relay's own and count wherever they are.
        if !BatchLogLine::is_checked(&window[..len]) && inside_record(at) {
            continue;
        }
        if let Some(line) = BatchLogLine::parse(&window[..len]) {
            covered.push(at..at + len + 1);
            line_starts.push(at);
            reading.lines.push(line);
        }
    }

    if reading.records.is_empty() && bad_headers.is_empty() {
        reading.damage.push(Damage::NoRecord);
    }
    for gap in gaps(&mut covered, data.len()) {
        let followed_by_line = gap.end == data.len() || line_starts.binary_search(&gap.end).is_ok();
        if gap.start > 0 && followed_by_line && crash_leftover(&data[gap.clone()]) {
            continue;
        }
        // A damaged record is reported by its id; the bytes it leaves are not counted twice.
        if bad_headers.iter().any(|h| gap.contains(h)) {
            continue;
        }
        reading.damage.push(Damage::Unreadable {
            offset: gap.start,
            len: gap.len(),
        });
    }
    reading
}

/// Whether an aligned block of [`TORN_BLOCK`] zero bytes starts inside `range` of `data` (it may
/// reach past the range: the room after a torn record is unwritten too). A record's own bytes
/// never end in zeros (a stored message ends in CRLF, the meta JSON in `}`), so a damaged one
/// that does was never fully written.
fn holds_zero_block(data: &[u8], range: &Range<usize>) -> bool {
    let mut at = range.start.next_multiple_of(TORN_BLOCK);
    while at < range.end && at + TORN_BLOCK <= data.len() {
        if data[at..at + TORN_BLOCK].iter().all(|&b| b == 0) {
            return true;
        }
        at += TORN_BLOCK;
    }
    false
}

/// The ranges of `0..len` not covered by any of `covered` (which is sorted in place).
fn gaps(covered: &mut [Range<usize>], len: usize) -> Vec<Range<usize>> {
    covered.sort_by_key(|r| r.start);
    let mut gaps = Vec::new();
    let mut at = 0;
    for r in covered.iter() {
        if r.start > at {
            gaps.push(at..r.start);
        }
        at = at.max(r.end);
    }
    if at < len {
        gaps.push(at..len);
    }
    gaps
}

/// What a crash can leave among the outcome lines: zeros (a file system that had extended the
/// file but not written its data), around at most one line torn mid-write (no newline, a
/// prefix of `MVO1 ...`).
fn crash_leftover(bytes: &[u8]) -> bool {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|&b| b != 0).map_or(start, |p| p + 1);
    let torn = &bytes[start..end];
    torn.is_empty()
        || ((torn.starts_with(OUTCOME_MAGIC) || OUTCOME_MAGIC.starts_with(torn))
            && torn.iter().all(|&b| b.is_ascii_graphic() || b == b' '))
}
