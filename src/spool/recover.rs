//! Reading the spool back at start: which messages still have deliveries to make, and what is
//! already known about each. Everything a crash can tear is recognised and ignored here: a batch
//! file that was never renamed into place, an outcome line without its newline.
//!
//! Damage beyond that (a changed byte, a file cut short, garbage; see [`super::read`]) costs
//! only what it touches: every intact record of the batch is recovered, and the batch is never
//! deleted. Its bytes are kept as `corrupt/<batch>.spool` for the operator: copied there at
//! start when some of its messages are still to deliver (the batch itself then goes as usual
//! once they are done), moved there when none are. Each such batch is logged (error) and
//! counted (`mailveil_spool_corrupt_batches_total`). A batch that cannot be read at all (an
//! I/O error) is left where it is and counted too; the relay starts without its messages.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use super::commit::Batch;
use super::format::{AttemptRecord, BatchLogLine, HoldState, LogEntry, MessageMeta};
use super::read::{BatchReading, Damage, RecordAt, read_batch};
use super::{SpoolError, sync_dir, write_synced};

/// A message of a batch that is not done.
pub(crate) struct FoundMessage {
    pub meta: MessageMeta,
    pub log: Vec<LogEntry>,
    /// The last attempts record of each delivery that has one.
    pub attempts: Vec<AttemptRecord>,
    /// Where its bytes start in the batch file, and how many there are.
    pub offset: u64,
    pub len: u64,
}

/// A batch with messages still to deliver.
pub(super) struct FoundBatch {
    pub batch: Batch,
    pub messages: Vec<FoundMessage>,
}

/// What a scan of the spool found.
pub(super) struct Scan {
    pub batches: Vec<FoundBatch>,
    /// Batches found damaged or unreadable (each logged).
    pub corrupt: u64,
}

/// Removes leftovers of interrupted writes: batch files never renamed into place (never
/// acknowledged), and unfinished copies into `corrupt/` (the batch they copy is still there).
pub(super) fn sweep(dirs: &[&Path]) -> Result<(), SpoolError> {
    for dir in dirs {
        for name in file_names(dir)? {
            if name.ends_with(".tmp") {
                let path = dir.join(name);
                tracing::info!(file = %path.display(), "removing incomplete spool file left by an interrupted write");
                fs::remove_file(&path).map_err(SpoolError::io(&path))?;
            }
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

/// Every batch with messages not done; batches whose messages are all done are removed, and
/// damaged ones kept under `corrupt_dir` (see the module documentation).
pub(super) fn scan(msg_dir: &Path, corrupt_dir: &Path) -> Result<Scan, SpoolError> {
    let mut names: Vec<String> = file_names(msg_dir)?
        .into_iter()
        .filter_map(|n| n.strip_suffix(".spool").map(str::to_string))
        .collect();
    names.sort();
    let mut scan = Scan {
        batches: Vec::new(),
        corrupt: 0,
    };
    let mut taken = HashSet::new();
    for name in names {
        let path = Batch::path(msg_dir, &name);
        let data = match fs::read(&path) {
            Ok(data) => data,
            Err(e) => {
                scan.corrupt += 1;
                tracing::error!(batch = %name, file = %path.display(), error = %e,
                    "cannot read a spool batch; it stays where it is and its messages wait until it can be read (restart then)");
                continue;
            }
        };
        let (messages, damage, intact) = recover_batch(&data, &mut taken, &name);
        if messages.is_empty() {
            if damage.is_empty() {
                Batch::remove(&path)?;
            } else {
                scan.corrupt += 1;
                set_aside(msg_dir, corrupt_dir, &name, &damage, intact);
            }
            continue;
        }
        let mut batch = match Batch::open(msg_dir, &name, messages.len()) {
            Ok(batch) => batch,
            Err(e) => {
                scan.corrupt += 1;
                tracing::error!(batch = %name, error = %e,
                    "cannot open a spool batch; it stays where it is and its messages wait until it can be opened (restart then)");
                continue;
            }
        };
        if !damage.is_empty() {
            scan.corrupt += 1;
            let kept = match keep_copy(corrupt_dir, &name, &data) {
                Ok(kept) => kept.display().to_string(),
                Err(e) => {
                    // No room for a copy: the batch itself moves there once its messages are
                    // done, instead of being removed.
                    let later = corrupt_dir.join(format!("{name}.spool"));
                    let text = format!(
                        "{} once its messages are done (copy failed: {e})",
                        later.display()
                    );
                    batch.keep_at = Some(later);
                    text
                }
            };
            tracing::error!(batch = %name, problems = %summary(&damage), records_recovered = intact,
                pending = messages.len(), damaged = damage.len(), kept = %kept,
                "damaged spool batch: every intact record is recovered; the batch is kept for the operator (docs/operations.md)");
        }
        scan.batches.push(FoundBatch { batch, messages });
    }
    Ok(scan)
}

/// Moves a damaged batch with nothing left to deliver into `corrupt/`. Never deletes it: when
/// even the move fails, it stays where it is (and is found again at the next start).
fn set_aside(msg_dir: &Path, corrupt_dir: &Path, name: &str, damage: &[Damage], intact: usize) {
    let from = Batch::path(msg_dir, name);
    let to = corrupt_dir.join(format!("{name}.spool"));
    // A batch written by an earlier relay under a loose umask may be 0644: not in corrupt/.
    let moved = fs::rename(&from, &to)
        .and_then(|()| crate::private_files::tighten_file(&to))
        .map_err(SpoolError::io(&to))
        .and_then(|()| sync_dir(corrupt_dir))
        .and_then(|()| sync_dir(msg_dir));
    match moved {
        Ok(()) => {
            tracing::error!(batch = name, problems = %summary(damage), records_recovered = intact,
            pending = 0, damaged = damage.len(), kept = %to.display(),
            "damaged spool batch: nothing in it is left to deliver; moved aside for the operator (docs/operations.md)")
        }
        Err(e) => {
            tracing::error!(batch = name, problems = %summary(damage), records_recovered = intact,
            error = %e, "damaged spool batch: cannot move it aside; it stays in place")
        }
    }
}

/// The records of one batch that are not done, with their outcomes so far. A queue id already
/// taken from an earlier record (of this batch or an earlier one) is not taken twice.
fn live_messages(
    reading: BatchReading,
    taken: &mut HashSet<String>,
    name: &str,
) -> Vec<FoundMessage> {
    let mut done = HashSet::new();
    let mut outcomes: HashMap<String, Vec<LogEntry>> = HashMap::new();
    let mut holds: HashMap<String, HoldState> = HashMap::new();
    let mut attempts: HashMap<String, HashMap<usize, AttemptRecord>> = HashMap::new();
    for line in reading.lines {
        match line {
            // A message an operator deleted is as good as done: nothing of it goes out.
            BatchLogLine::Done(id) | BatchLogLine::Deleted(id) => {
                done.insert(id);
            }
            BatchLogLine::Attempts(id, record) => {
                let of_message = attempts.entry(id).or_default();
                let newer = of_message
                    .get(&record.index)
                    .is_none_or(|r| r.count <= record.count);
                if newer {
                    of_message.insert(record.index, record);
                }
            }
            BatchLogLine::Outcome(id, entry) => outcomes.entry(id).or_default().push(entry),
            BatchLogLine::Hold(id, state) => {
                holds.insert(id, state);
            }
        }
    }
    let mut messages = Vec::new();
    for record in reading.records {
        let RecordAt {
            mut meta, message, ..
        } = record;
        if done.contains(&meta.id) {
            continue;
        }
        if taken.contains(&meta.id) {
            tracing::warn!(batch = name, queue_id = %meta.id, "a second record of a spooled message is ignored");
            continue;
        }
        let log = outcomes.get(&meta.id).cloned().unwrap_or_default();
        let finals: HashSet<usize> = log
            .iter()
            .filter(|e| e.is_final())
            .map(LogEntry::index)
            .collect();
        let failed = log.iter().any(|e| matches!(e, LogEntry::Failed { .. }));
        if let (Some(hold), Some(state)) = (meta.hold.as_mut(), holds.get(&meta.id)) {
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
        taken.insert(meta.id.clone());
        let mut attempts: Vec<AttemptRecord> = attempts
            .remove(&meta.id)
            .map(|m| m.into_values().collect())
            .unwrap_or_default();
        attempts.retain(|r| r.index < meta.deliveries.len());
        attempts.sort_by_key(|r| r.index);
        messages.push(FoundMessage {
            meta,
            log,
            attempts,
            offset: message.start as u64,
            len: message.len() as u64,
        });
    }
    messages
}

/// What recovery makes of one batch file's bytes: the messages still to deliver and what is
/// damaged. The whole decision, without the file system (the `recovery` fuzz target runs it).
pub(crate) fn recover_batch(
    data: &[u8],
    taken: &mut HashSet<String>,
    name: &str,
) -> (Vec<FoundMessage>, Vec<Damage>, usize) {
    let mut reading = read_batch(data);
    if reading.torn > 0 {
        tracing::warn!(
            batch = name,
            records = reading.torn,
            "a commit round torn by a crash was found at the end of a spool batch; it was never acknowledged (the clients were not told 250), so it is ignored"
        );
    }
    let damage = std::mem::take(&mut reading.damage);
    let intact = reading.records.len();
    (live_messages(reading, taken, name), damage, intact)
}

/// One line for the log: the first few problems and how many more.
fn summary(damage: &[Damage]) -> String {
    const SHOWN: usize = 5;
    let mut text: Vec<String> = damage.iter().take(SHOWN).map(Damage::to_string).collect();
    if damage.len() > SHOWN {
        text.push(format!("and {} more", damage.len() - SHOWN));
    }
    text.join("; ")
}

/// Keeps a copy of a damaged batch's bytes as `corrupt/<batch>.spool` (written as `.tmp`,
/// synced, renamed, like a batch), unless a copy is there from an earlier start.
fn keep_copy(corrupt_dir: &Path, name: &str, data: &[u8]) -> Result<PathBuf, SpoolError> {
    let kept = corrupt_dir.join(format!("{name}.spool"));
    if kept.exists() {
        return Ok(kept);
    }
    let tmp = corrupt_dir.join(format!("{name}.spool.tmp"));
    let written = write_synced(&tmp, data)
        .and_then(|()| fs::rename(&tmp, &kept).map_err(SpoolError::io(&kept)))
        .and_then(|()| sync_dir(corrupt_dir));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.map(|()| kept)
}
