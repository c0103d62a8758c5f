//! Reading the spool back at start: which messages still have deliveries to make, and what is
//! already known about each. Everything a crash can tear is recognised and ignored here: a batch
//! file that was never renamed into place, a record whose check does not match, a log line
//! without its newline.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::Path;

use super::SpoolError;
use super::commit::Batch;
use super::format::{BatchLogLine, LogEntry, MessageMeta, RecordHeader, record_check};

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
/// acknowledged) and logs whose batch file is gone.
pub(super) fn sweep(msg_dir: &Path) -> Result<(), SpoolError> {
    let names = file_names(msg_dir)?;
    for name in &names {
        let orphan = match name.rsplit_once('.') {
            Some((_, "tmp")) => true,
            Some((batch, "log")) => !names.contains(&format!("{batch}.spool")),
            _ => false,
        };
        if orphan {
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
        let (data_path, log_path) = Batch::paths(msg_dir, &name);
        let data = fs::read(&data_path).map_err(SpoolError::io(&data_path))?;
        let log = match fs::read(&log_path) {
            Ok(bytes) => BatchLogLine::parse_log(&String::from_utf8_lossy(&bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(SpoolError::io(&log_path)(e)),
        };
        let messages = live_messages(&data_path, &data, log)?;
        let batch = Batch::open(msg_dir, &name, messages.len())?;
        if messages.is_empty() {
            batch.remove_files()?;
        } else {
            found.push(FoundBatch { batch, messages });
        }
    }
    Ok(found)
}

/// The records of one batch file that are not done, with their outcomes so far.
fn live_messages(
    path: &Path,
    data: &[u8],
    log: Vec<BatchLogLine>,
) -> Result<Vec<FoundMessage>, SpoolError> {
    let mut done = HashSet::new();
    let mut outcomes: HashMap<String, Vec<LogEntry>> = HashMap::new();
    for line in log {
        match line {
            BatchLogLine::Done(id) => {
                done.insert(id);
            }
            BatchLogLine::Outcome(id, entry) => outcomes.entry(id).or_default().push(entry),
        }
    }
    let mut messages = Vec::new();
    let mut at = 0usize;
    while at < data.len() {
        let Some((header, header_len)) = RecordHeader::parse(&data[at..]) else {
            torn(path, data.len() - at);
            break;
        };
        let meta_start = at + header_len;
        let message_start = meta_start + header.meta_len;
        let end = message_start + header.message_len;
        if end > data.len()
            || record_check(&data[meta_start..message_start], &data[message_start..end])
                != header.check
        {
            torn(path, data.len() - at);
            break;
        }
        at = end;
        if done.contains(&header.id) {
            continue;
        }
        let meta: MessageMeta =
            serde_json::from_slice(&data[meta_start..message_start]).map_err(|e| {
                SpoolError::Corrupt {
                    path: path.to_path_buf(),
                    reason: format!("record {}: {e}", header.id),
                }
            })?;
        let log = outcomes.remove(&header.id).unwrap_or_default();
        let finals: HashSet<usize> = log
            .iter()
            .filter(|e| e.is_final())
            .map(LogEntry::index)
            .collect();
        let failed = log.iter().any(|e| matches!(e, LogEntry::Failed { .. }));
        // All copies final but the completion was not recorded: the queue completes it (and
        // writes the failure record) when it is queued, so it is kept only if a failure needs one.
        if finals.len() == meta.deliveries.len() && !failed {
            continue;
        }
        messages.push(FoundMessage {
            meta,
            log,
            offset: message_start as u64,
            len: header.message_len as u64,
        });
    }
    Ok(messages)
}

/// A record that does not check out was being written when the process stopped: its batch was
/// never acknowledged, so nothing from there on was accepted.
fn torn(path: &Path, bytes: usize) {
    tracing::warn!(file = %path.display(), bytes, "ignoring the torn end of a spool batch (never acknowledged)");
}
