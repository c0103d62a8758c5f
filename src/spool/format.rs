//! On-disk format of the spool.
//!
//! ```text
//! SPOOL/msg/<id>.eml    the message, stored once whatever the number of copies
//! SPOOL/msg/<id>.json   MessageMeta: envelope, decision, one record per delivery (written last:
//!                       its presence is the commit point of an accepted message)
//! SPOOL/msg/<id>.log    append-only outcomes, one line each: "<k> delivered <unix>",
//!                       "<k> failed <code> <unix>", "<k> deferred <next-unix>"
//! SPOOL/failed/<id>.json  record of a message with permanently failed deliveries
//! ```
//! A log line counts only when it ends in `\n`, so a write torn by a crash is ignored and the
//! delivery is attempted again (worst case: one duplicate copy, never a loss).

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

/// A final or interim outcome appended to `<id>.log`.
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

    /// Parses the complete lines of a log; a torn last line (no `\n`) and garbage are skipped.
    pub fn parse_log(text: &str) -> Vec<LogEntry> {
        let complete = match text.rfind('\n') {
            Some(end) => &text[..end],
            None => return Vec::new(),
        };
        complete.lines().filter_map(LogEntry::parse_line).collect()
    }

    fn parse_line(line: &str) -> Option<LogEntry> {
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
        let text: String = entries.iter().map(LogEntry::to_line).collect();
        assert_eq!(LogEntry::parse_log(&text), entries);
    }

    #[test]
    fn torn_and_garbage_lines_are_ignored() {
        let text = "1 delivered 5\nnonsense\n2 failed x 3\n3 delivered 7 extra\n4 deliv";
        assert_eq!(
            LogEntry::parse_log(text),
            vec![LogEntry::Delivered { index: 1, at: 5 }]
        );
    }
}
