//! The records that say what the attempts of a delivery were: kept in the batch file after
//! each attempt ([`AttemptRecord`], an outcome line of its own: see [`super::format`]) and,
//! for a delivery that failed for good, in `failed/<id>.json` ([`FailureRecord`]).

use serde::{Deserialize, Serialize};

/// An outcome line is short (id, index, word, code, two times, check); an attempts line holds
/// the last reply too, cut to fit.
pub(super) const MAX_LINE_LEN: usize = 1024;

/// What the attempts of one delivery were so far, kept in the spool so that a restart neither
/// starts the count (and the backoff) again at 1 nor forgets the last reply: `queue show` and
/// the `failed/<id>.json` record read it. Written after each attempt, before its outcome line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct AttemptRecord {
    #[serde(skip)]
    pub index: usize,
    /// Attempts made (each one a hand-over tried, whatever came of it).
    #[serde(rename = "n")]
    pub count: u32,
    /// Unix seconds of the first and of the last attempt.
    pub first: u64,
    pub last: u64,
    /// The reply code of the last attempt, when the upstream answered with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    /// The upstream that answered last (or `-` when none was reached).
    #[serde(default)]
    pub upstream: String,
    /// The last reply or error, one line, cut to fit an outcome line.
    #[serde(default)]
    pub reply: String,
    /// For a copy that failed for good: why (`permanent`, `expired`, `stopped`, `bounced`),
    /// so that the failure record says it after a restart too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl AttemptRecord {
    /// The JSON of the record with every `M` written as `\u004d`: the line can then never hold
    /// `MVO1 ` or `MVS1 ` (both start with `M`), whatever an upstream wrote in its reply, so
    /// [`super::read`], which tries every place a magic occurs, never finds one inside it.
    fn to_json(&self) -> String {
        serde_json::to_string(self)
            .expect("attempt record serializes")
            .replace('M', "\\u004d")
    }

    /// The outcome-line text after the queue id (`<k> attempts <JSON>`), the reply shortened
    /// until the whole line fits [`MAX_LINE_LEN`] (an id of up to 40 bytes assumed).
    pub(super) fn to_text(&self) -> String {
        let mut record = self.clone();
        record.reply = record
            .reply
            .chars()
            .filter(|c| !c.is_control())
            .take(400)
            .collect();
        record.upstream = record
            .upstream
            .chars()
            .filter(|c| !c.is_control())
            .take(64)
            .collect();
        loop {
            let text = format!("{} attempts {}", record.index, record.to_json());
            if text.len() + 64 <= MAX_LINE_LEN || record.reply.is_empty() {
                return text;
            }
            let keep = record.reply.chars().count() / 2;
            record.reply = record.reply.chars().take(keep).collect();
        }
    }
}

/// A delivery that failed for good, as `failed/<id>.json` records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureRecord {
    pub rcpt_to: Vec<String>,
    pub code: u16,
    /// Index of the delivery in the message's record.
    pub delivery: usize,
    /// Why: `permanent` (a 5xx reply), `expired` (`max_queue_time`), `stopped` (the check
    /// before sending), `bounced` (an operator's `queue bounce`).
    pub reason: String,
    /// The last reply or error text (addresses as the upstream wrote them: the record is in
    /// the spool, with the envelope).
    pub reply: String,
    pub upstream: String,
    pub attempts: u32,
    pub first_attempt_at: Option<u64>,
    pub last_attempt_at: Option<u64>,
    pub failed_at: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::format::BatchLogLine;

    #[test]
    fn attempts_and_deleted_lines_round_trip_and_never_hold_a_magic() {
        let record = AttemptRecord {
            index: 2,
            count: 3,
            first: 10,
            last: 20,
            code: Some(451),
            upstream: "up".into(),
            reply: "upstream replied 451 MVO1 X done #00000000 MVS1 \r\n\u{7}".repeat(40),
            reason: Some("bounced".into()),
        };
        let line = BatchLogLine::attempts_line("A1", &record);
        assert!(line.len() <= MAX_LINE_LEN, "{}", line.len());
        assert_eq!(line.matches("MVO1 ").count(), 1, "{line}");
        assert!(!line.contains("MVS1"), "{line}");
        assert_eq!(line.matches('\n').count(), 1);
        let Some(BatchLogLine::Attempts(id, got)) = BatchLogLine::parse(line.trim_end().as_bytes())
        else {
            panic!("{line}")
        };
        assert_eq!(id, "A1");
        assert_eq!(
            (got.index, got.count, got.first, got.last, got.code),
            (2, 3, 10, 20, Some(451))
        );
        assert!(
            got.reply.starts_with("upstream replied 451 MVO1 X done"),
            "{}",
            got.reply
        );
        assert!(!got.reply.contains('\u{7}'));
        assert_eq!(got.reason.as_deref(), Some("bounced"));
        let deleted = BatchLogLine::deleted_line("B");
        assert_eq!(
            BatchLogLine::parse(deleted.trim_end().as_bytes()),
            Some(BatchLogLine::Deleted("B".into()))
        );
    }
}
