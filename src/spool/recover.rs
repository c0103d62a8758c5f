//! Reading the spool back at start: which messages still have deliveries to make, and what is
//! already known about each. Everything a crash can tear is recognised and ignored here: a batch
//! file that was never renamed into place, a record whose check does not match, an outcome line
//! without its newline.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::Path;

use super::SpoolError;
use super::commit::Batch;
use super::format::{BatchLogLine, HoldState, LogEntry, MessageMeta, RecordHeader, record_check};

/// A message of a batch that is not done.
pub(super) struct FoundMessage {
    pub meta: MessageMeta,
    pub log: Vec<LogEntry>,
    /// Where its bytes start in the batch file, and how many there are.
    pub offset: u64,
    pub len: u64,
}

/// A batch with messages still to deliver.
pub(super) struct FoundBatch {
    pub batch: Batch,
    pub messages: Vec<FoundMessage>,
}

/// Removes leftovers of interrupted writes: batch files never renamed into place (never
/// acknowledged).
pub(super) fn sweep(msg_dir: &Path) -> Result<(), SpoolError> {
    for name in file_names(msg_dir)? {
        if name.ends_with(".tmp") {
            let path = msg_dir.join(name);
            tracing::info!(file = %path.display(), "removing incomplete spool file left by an interrupted write");
            fs::remove_file(&path).map_err(SpoolError::io(&path))?;
        }
    }
    Ok(())
}

fn file_names(dir: &Path) -> Result<HashSet<String>, SpoolError> {
    let mut names = HashSet::new();
    for entry in fs::read_dir(dir).map_err(SpoolError::io(dir))? {
        let entry = entry.map_err(SpoolError::io(dir))?;
        if let Some(name) = entry.file_name().to_str() {
            names.insert(name.to_string());
        }
    }
    Ok(names)
}

/// Every batch with messages not done; batches whose messages are all done are removed.
pub(super) fn scan(msg_dir: &Path) -> Result<Vec<FoundBatch>, SpoolError> {
    let mut batches: Vec<String> = file_names(msg_dir)?
        .into_iter()
        .filter_map(|n| n.strip_suffix(".spool").map(str::to_string))
        .collect();
    batches.sort();
    let mut found = Vec::new();
    for name in batches {
        let path = Batch::path(msg_dir, &name);
        let data = fs::read(&path).map_err(SpoolError::io(&path))?;
        let messages = live_messages(&path, &data)?;
        let batch = Batch::open(msg_dir, &name, messages.len())?;
        if messages.is_empty() {
            batch.remove_file()?;
        } else {
            found.push(FoundBatch { batch, messages });
        }
    }
    Ok(found)
}

/// A record found in a batch file: its header and where its parts are.
struct RecordAt {
    id: String,
    meta: std::ops::Range<usize>,
    message: std::ops::Range<usize>,
}

/// Splits a batch file into its records (which were synced before the file got its name) and
/// the outcome lines appended after them.
fn records(path: &Path, data: &[u8]) -> (Vec<RecordAt>, usize) {
    let mut found = Vec::new();
    let mut at = 0usize;
    while let Some((header, header_len)) = RecordHeader::parse(&data[at..]) {
        let meta_start = at + header_len;
        let message_start = meta_start + header.meta_len;
        let end = message_start.saturating_add(header.message_len);
        if end > data.len()
            || record_check(&data[meta_start..message_start], &data[message_start..end])
                != header.check
        {
            tracing::warn!(file = %path.display(), record = %header.id, "ignoring a spool record that does not check out");
            break;
        }
        found.push(RecordAt {
            id: header.id,
            meta: meta_start..message_start,
            message: message_start..end,
        });
        at = end;
    }
    (found, at)
}

/// The records of one batch file that are not done, with their outcomes so far.
fn live_messages(path: &Path, data: &[u8]) -> Result<Vec<FoundMessage>, SpoolError> {
    let (records, outcomes_start) = records(path, data);
    let mut done = HashSet::new();
    let mut outcomes: HashMap<String, Vec<LogEntry>> = HashMap::new();
    let mut holds: HashMap<String, HoldState> = HashMap::new();
    for line in BatchLogLine::parse_log(&data[outcomes_start..]) {
        match line {
            BatchLogLine::Done(id) => {
                done.insert(id);
            }
            BatchLogLine::Outcome(id, entry) => outcomes.entry(id).or_default().push(entry),
            BatchLogLine::Hold(id, state) => {
                holds.insert(id, state);
            }
        }
    }
    let mut messages = Vec::new();
    for record in records {
        if done.contains(&record.id) {
            continue;
        }
        let mut meta: MessageMeta =
            serde_json::from_slice(&data[record.meta.clone()]).map_err(|e| {
                SpoolError::Corrupt {
                    path: path.to_path_buf(),
                    reason: format!("record {}: {e}", record.id),
                }
            })?;
        let log = outcomes.remove(&record.id).unwrap_or_default();
        let finals: HashSet<usize> = log
            .iter()
            .filter(|e| e.is_final())
            .map(LogEntry::index)
            .collect();
        let failed = log.iter().any(|e| matches!(e, LogEntry::Failed { .. }));
        if let (Some(hold), Some(state)) = (meta.hold.as_mut(), holds.get(&record.id)) {
            hold.state = *state;
        }
        // Dropped, and every canary final: the held copies never go out, so nothing is left.
        let dropped_and_done = meta.hold.as_ref().is_some_and(|h| {
            h.state == HoldState::Dropped && h.canaries.iter().all(|k| finals.contains(k))
        });
        if dropped_and_done && !failed {
            continue;
        }
        // All copies final but the completion was not recorded: the queue completes it (and
        // writes the failure record) when it is queued, so it is kept only if a failure needs one.
        if finals.len() == meta.deliveries.len() && !failed {
            continue;
        }
        messages.push(FoundMessage {
            meta,
            log,
            offset: record.message.start as u64,
            len: record.message.len() as u64,
        });
    }
    Ok(messages)
}
