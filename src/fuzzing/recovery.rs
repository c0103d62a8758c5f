//! The `recovery` target: spool recovery on damaged batch files.
//!
//! Two modes, chosen by the top bit of byte 0:
//! - **raw**: the rest of the input is a batch file. Recovery must not panic, and everything it
//!   recovers must lie inside the file.
//! - **built**: the input describes a batch the way the committer writes one (1 to 6 records,
//!   each with CRLF body bytes taken from the input, and outcome lines for some of them:
//!   delivered, deferred, handed off, done), then up to 8 damage operations (flip a bit,
//!   overwrite bytes, insert junk, cut a piece short, cut the file, give a record a huge
//!   length), each aimed by the input at one piece of the
//!   file. Recovery must then recover **every intact record** (one whose bytes are unchanged)
//!   with its message bytes and exactly the outcomes of its intact outcome lines, except where
//!   the file itself says otherwise: an intact `done` line, or intact lines making every copy
//!   final, mean the message is finished; and damaged bytes that still parse, by the format's
//!   own header and line parsers, as an item naming the record's queue id (a forged record or
//!   outcome line: libFuzzer can learn checks from the comparisons it sees) make that id's
//!   fate undecidable, so it is not judged.
//!
//! The oracle never looks at how recovery searches, skips or resynchronises; it knows where it
//! put each piece and which ones it damaged.

use std::collections::HashSet;

use crate::spool::format::{BatchLogLine, LogEntry, MessageMeta, RecordHeader};
use crate::spool::recover::recover_batch;

/// Deliveries per built message (so "every copy final" needs two lines).
const RECIPIENTS: [&str; 2] = ["a@x.test", "b@y.test"];

/// Reads the input byte by byte; zeros once it is used up.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn take(&mut self, n: usize) -> &[u8] {
        let (taken, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        taken
    }
}

/// What one piece of the built file is.
#[derive(Clone)]
enum Kind {
    /// Record `i`.
    Record(usize),
    /// An outcome line about record `i`: `Some(entry)` or `None` for `done`.
    Line(usize, Option<LogEntry>),
    /// Bytes inserted by a damage operation.
    Junk,
}

struct Piece {
    kind: Kind,
    written: Vec<u8>,
    bytes: Vec<u8>,
}

impl Piece {
    fn intact(&self) -> bool {
        !matches!(self.kind, Kind::Junk) && self.bytes == self.written
    }
}

/// Fuzzes recovery of one batch file (see the module documentation).
pub fn recovery(data: &[u8]) {
    let Some((&shape, rest)) = data.split_first() else {
        return;
    };
    if shape & 0x80 != 0 {
        return raw(rest);
    }
    let mut input = Input(rest);
    let records = 1 + usize::from(shape) % 6;
    let mut metas = Vec::new();
    let mut bodies = Vec::new();
    let mut pieces = Vec::new();
    let mut lines = Vec::new();
    for i in 0..records {
        let state = input.byte();
        let len = usize::from(input.byte() % 48);
        // What the DATA decoder stores: CRLF lines, no NUL.
        let raw: Vec<u8> = input
            .take(len)
            .iter()
            .copied()
            .filter(|&b| b != 0)
            .collect();
        let mut body = crate::privacy::bytes::crlf_only(&raw)
            .expect("no NUL left")
            .into_owned();
        // Complete lines: the decoder keeps the CRLF before the final dot.
        if !body.is_empty() && !body.ends_with(b"\r\n") {
            body.extend_from_slice(b"\r\n");
        }
        let meta = built_meta(i);
        let meta_json = serde_json::to_vec(&meta).expect("meta serializes");
        let mut written = RecordHeader::new(&meta.id, &meta_json, &body)
            .to_line()
            .into_bytes();
        written.extend_from_slice(&meta_json);
        written.extend_from_slice(&body);
        pieces.push(piece(Kind::Record(i), written));
        let at = 1_700_000_000 + i as u64;
        match state % 4 {
            1 => {
                let entry = LogEntry::Delivered { index: 0, at };
                lines.push((i, Some(entry), BatchLogLine::outcome_line(&meta.id, &entry)));
                // An unchecked line, as earlier relays wrote them.
                let entry = LogEntry::Deferred {
                    index: 1,
                    next_at: at,
                };
                lines.push((
                    i,
                    Some(entry),
                    format!("MVO1 {} 1 deferred {at}\n", meta.id),
                ));
            }
            2 => lines.push((i, None, BatchLogLine::done_line(&meta.id))),
            3 => {
                // One copy delivered, the other handed off at a drain: both final.
                for index in 0..RECIPIENTS.len() {
                    let entry = if index == 0 {
                        LogEntry::Delivered { index, at }
                    } else {
                        LogEntry::HandedOff { index, at }
                    };
                    lines.push((i, Some(entry), BatchLogLine::outcome_line(&meta.id, &entry)));
                }
            }
            _ => {}
        }
        metas.push(meta);
        bodies.push(body);
    }
    for (i, entry, text) in lines {
        pieces.push(piece(Kind::Line(i, entry), text.into_bytes()));
    }
    for _ in 0..8 {
        if input.0.is_empty() {
            break;
        }
        damage(&mut pieces, &mut input);
    }
    let (file, junk) = assemble(&pieces);
    check(&file, &junk, &pieces, &metas, &bodies);
}

fn piece(kind: Kind, written: Vec<u8>) -> Piece {
    Piece {
        kind,
        bytes: written.clone(),
        written,
    }
}

fn built_meta(i: usize) -> MessageMeta {
    let mut meta = MessageMeta::split_sample(&format!("01FUZZ{i}"), 1_700_000_000, 0, &RECIPIENTS);
    meta.envelope.mail_from = "s@fuzz.test".into();
    meta
}

/// One damage operation, aimed at a piece by the input.
fn damage(pieces: &mut Vec<Piece>, input: &mut Input<'_>) {
    let op = input.byte();
    let target = usize::from(input.byte()) % pieces.len();
    let pos = usize::from(input.byte()) | usize::from(input.byte()) << 8;
    if op % 6 == 2 {
        let n = usize::from(input.byte() % 64);
        let junk = input.take(n).to_vec();
        pieces.insert(target + 1, piece(Kind::Junk, junk));
        return;
    }
    if op % 6 == 4 {
        // The file ends inside this piece.
        pieces.truncate(target + 1);
    }
    let bytes = &mut pieces[target].bytes;
    let len = bytes.len();
    match op % 6 {
        0 if len > 0 => bytes[pos % len] ^= 1 << (op >> 3 & 7),
        1 if len > 0 => {
            let n = usize::from(input.byte() % 8);
            for (k, b) in input.take(n).iter().enumerate() {
                if let Some(slot) = bytes.get_mut(pos % len + k) {
                    *slot = *b;
                }
            }
        }
        3 | 4 => bytes.truncate(pos % (len + 1)),
        5 => {
            // A record header's meta length replaced by a number near `u64::MAX`.
            if let Some((header, header_len)) = RecordHeader::parse(bytes) {
                let huge = u64::MAX - (pos as u64);
                let line = format!(
                    "MVS1 {} {huge} {} {}\n",
                    header.id, header.message_len, header.check
                );
                bytes.splice(..header_len, line.into_bytes());
            }
        }
        _ => {}
    }
}

/// The file, and the byte ranges of its damaged pieces.
fn assemble(pieces: &[Piece]) -> (Vec<u8>, Vec<std::ops::Range<usize>>) {
    let mut file = Vec::new();
    let mut junk = Vec::new();
    for p in pieces {
        let start = file.len();
        file.extend_from_slice(&p.bytes);
        if !p.intact() {
            junk.push(start..file.len());
        }
    }
    (file, junk)
}

/// Queue ids that damaged bytes name in something the format's own parsers accept: a record
/// header (or the meta behind it), or an outcome line.
fn named_by_damage(file: &[u8], junk: &[std::ops::Range<usize>]) -> HashSet<String> {
    let in_junk = |at: usize| junk.iter().any(|r| r.contains(&at));
    let mut named = HashSet::new();
    for at in memchr::memmem::find_iter(file, b"MVS1 ").filter(|&at| in_junk(at)) {
        if let Some((header, header_len)) = RecordHeader::parse(&file[at..]) {
            if let Some((meta, _)) = header.extent(at, header_len, file.len())
                && let Ok(m) = serde_json::from_slice::<MessageMeta>(&file[meta])
            {
                named.insert(m.id);
            }
            named.insert(header.id);
        }
    }
    for at in memchr::memmem::find_iter(file, b"MVO1 ").filter(|&at| in_junk(at)) {
        let end = memchr::memchr(b'\n', &file[at..]).map_or(file.len(), |n| at + n);
        if let Some(line) = BatchLogLine::parse(&file[at..end]) {
            named.insert(line.id().to_string());
        }
    }
    named
}

fn check(
    file: &[u8],
    junk: &[std::ops::Range<usize>],
    pieces: &[Piece],
    metas: &[MessageMeta],
    bodies: &[Vec<u8>],
) {
    let (found, damage, _) = recover_batch(file, &mut HashSet::new(), "fuzz");
    let damaged = !junk.is_empty();
    for m in &found {
        assert!(
            m.offset
                .checked_add(m.len)
                .is_some_and(|end| end <= file.len() as u64),
            "recovered bytes outside the file"
        );
    }
    if !damaged {
        assert!(damage.is_empty(), "an undamaged batch reported {damage:?}");
    }
    let named = named_by_damage(file, junk);
    for p in pieces.iter().filter(|p| p.intact()) {
        let Kind::Record(i) = p.kind else { continue };
        let id = &metas[i].id;
        if named.contains(id) {
            continue;
        }
        let intact_lines: Vec<&Option<LogEntry>> = pieces
            .iter()
            .filter(|q| q.intact())
            .filter_map(|q| match &q.kind {
                Kind::Line(j, entry) if *j == i => Some(entry),
                _ => None,
            })
            .collect();
        let done = intact_lines.iter().any(|e| e.is_none());
        let log: Vec<LogEntry> = intact_lines.iter().filter_map(|e| **e).collect();
        let finals: HashSet<usize> = log
            .iter()
            .filter(|e| e.is_final())
            .map(LogEntry::index)
            .collect();
        let finished = done || finals.len() == RECIPIENTS.len();
        let got = found.iter().find(|m| &m.meta.id == id);
        match got {
            None => assert!(
                finished,
                "intact record {id} was not recovered ({damage:?}) from {}",
                file.escape_ascii()
            ),
            Some(m) => {
                assert!(!finished, "finished record {id} was recovered");
                assert_eq!(m.log, log, "outcomes of {id} in {}", file.escape_ascii());
                let start = m.offset as usize;
                assert_eq!(
                    &file[start..start + m.len as usize],
                    bodies[i].as_slice(),
                    "message bytes of {id}"
                );
                assert_eq!(m.meta.deliveries.len(), RECIPIENTS.len());
            }
        }
    }
}

/// Arbitrary bytes as a batch file: no panic, everything recovered lies inside the file.
fn raw(data: &[u8]) {
    let (found, damage, intact) = recover_batch(data, &mut HashSet::new(), "fuzz");
    assert!(found.len() <= intact);
    for m in &found {
        assert!(
            m.offset
                .checked_add(m.len)
                .is_some_and(|end| end <= data.len() as u64),
            "recovered bytes outside the file"
        );
    }
    for d in &damage {
        let _ = d.to_string();
    }
}
