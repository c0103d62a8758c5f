//! Where each delivery (copy) of a queued message stands: the state `mailveil ctl queue list`
//! filters on, and what its attempts were (count, times, last reply, upstream) for `queue show`
//! and the `failed/<id>.json` record.
//!
//! One owner for the reading of the spool: [`from_spool`] turns a message's outcome lines and
//! attempts records into its tracks, both for the running relay (at start) and for `mailveil
//! spool list` on a stopped relay's spool, so both show the same thing.

use serde::{Deserialize, Serialize};

use crate::spool::{AttemptRecord, HoldState, LogEntry, MessageMeta};

/// Where one copy stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CopyState {
    /// Due: waiting in its provider's lane for a slot, the throttle or the end of a pause.
    #[default]
    Queued,
    /// Being handed to an upstream right now.
    Active,
    /// A temporary failure; waits for its next attempt.
    Deferred,
    /// Waits for an operator's decision on a bulk hold.
    Held,
    Delivered,
    Failed,
    /// An operator deleted the message before this copy went out.
    Deleted,
    /// A bulk hold was dropped: this copy never goes out.
    Dropped,
    /// Every recipient is on the suppression list: never sent.
    Suppressed,
}

impl CopyState {
    /// Still to be sent (or being sent).
    pub fn is_pending(self) -> bool {
        match self {
            CopyState::Queued | CopyState::Active | CopyState::Deferred | CopyState::Held => true,
            CopyState::Delivered
            | CopyState::Failed
            | CopyState::Deleted
            | CopyState::Dropped
            | CopyState::Suppressed => false,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CopyState::Queued => "queued",
            CopyState::Active => "active",
            CopyState::Deferred => "deferred",
            CopyState::Held => "held",
            CopyState::Delivered => "delivered",
            CopyState::Failed => "failed",
            CopyState::Deleted => "deleted",
            CopyState::Dropped => "dropped",
            CopyState::Suppressed => "suppressed",
        }
    }

    /// The states a queue listing can filter on (those of copies still in the queue).
    pub fn parse_filter(text: &str) -> Option<CopyState> {
        match text {
            "queued" => Some(CopyState::Queued),
            "active" => Some(CopyState::Active),
            "deferred" => Some(CopyState::Deferred),
            "held" => Some(CopyState::Held),
            _ => None,
        }
    }
}

/// One copy's state and history.
#[derive(Debug, Clone, Default)]
pub struct Track {
    pub state: CopyState,
    /// When a deferred copy is tried next (Unix seconds).
    pub next_at: Option<u64>,
    /// Attempts so far (`count` 0: none yet). Its `index` is the delivery's.
    pub attempts: AttemptRecord,
    /// An operator asked for the next attempt now (`queue retry`); the retry timer takes it.
    pub retry_now: bool,
    /// The final code and when it became final, for delivered and failed copies.
    pub final_code: Option<u16>,
    pub final_at: Option<u64>,
    /// Why a failed copy failed (`permanent`, `expired`, `stopped`, `bounced`).
    pub reason: Option<&'static str>,
    /// An operator deleted (`Deleted`) or bounced (`Failed`) the message while this copy was
    /// being handed over: if that attempt does not deliver it, it is not tried again.
    pub cancelled: Option<CopyState>,
}

/// The reasons a copy fails for good, as the spool writes them.
pub const FAILURE_REASONS: [&str; 4] = ["permanent", "expired", "stopped", "bounced"];

fn reason_named(name: &str) -> Option<&'static str> {
    FAILURE_REASONS.into_iter().find(|r| *r == name)
}

/// The tracks of `meta`'s deliveries from what the spool recorded: final outcomes, the last
/// deferral of each copy (deferred when its time is after `now`, queued otherwise), the
/// attempts records, and the bulk hold.
pub fn from_spool(
    meta: &MessageMeta,
    log: &[LogEntry],
    attempts: &[AttemptRecord],
    now: u64,
) -> Vec<Track> {
    let mut tracks: Vec<Track> = (0..meta.deliveries.len())
        .map(|index| Track {
            attempts: AttemptRecord {
                index,
                ..AttemptRecord::default()
            },
            ..Track::default()
        })
        .collect();
    for record in attempts {
        if let Some(t) = tracks.get_mut(record.index) {
            t.attempts = record.clone();
        }
    }
    for entry in log {
        let Some(t) = tracks.get_mut(entry.index()) else {
            continue;
        };
        match *entry {
            // Handed off: it left this relay for `spool.handoff_upstream`, final here.
            LogEntry::Delivered { at, .. } | LogEntry::HandedOff { at, .. } => {
                t.state = CopyState::Delivered;
                t.final_at = Some(at);
                t.next_at = None;
            }
            LogEntry::Failed { code, at, .. } => {
                t.reason = t.attempts.reason.as_deref().and_then(reason_named);
                t.state = CopyState::Failed;
                t.final_code = Some(code);
                t.final_at = Some(at);
                t.next_at = None;
            }
            LogEntry::Suppressed { at, .. } => {
                t.state = CopyState::Suppressed;
                t.final_at = Some(at);
                t.next_at = None;
            }
            LogEntry::Deferred { .. } if !t.state.is_pending() => {}
            LogEntry::Deferred { next_at, .. } => {
                t.next_at = Some(next_at);
                t.state = if next_at > now {
                    CopyState::Deferred
                } else {
                    CopyState::Queued
                };
            }
        }
    }
    if let Some(hold) = &meta.hold {
        for (index, t) in tracks.iter_mut().enumerate() {
            if hold.is_canary(index) || !t.state.is_pending() {
                continue;
            }
            match hold.state {
                HoldState::Held => t.state = CopyState::Held,
                HoldState::Dropped => t.state = CopyState::Dropped,
                HoldState::Released => {}
            }
        }
    }
    tracks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::Hold;

    #[test]
    fn tracks_follow_the_spool_records() {
        let mut meta = MessageMeta::split_sample("M", 0, 1, &["a@x", "b@x", "c@x", "d@x"]);
        let log = [
            LogEntry::Delivered { index: 0, at: 5 },
            LogEntry::Deferred {
                index: 1,
                next_at: 100,
            },
            LogEntry::Deferred {
                index: 2,
                next_at: 10,
            },
            LogEntry::Failed {
                index: 3,
                code: 550,
                at: 20,
            },
        ];
        let bounced = AttemptRecord {
            index: 3,
            reason: Some("bounced".into()),
            ..AttemptRecord::default()
        };
        let attempts = [
            bounced,
            AttemptRecord {
                index: 1,
                count: 3,
                first: 1,
                last: 9,
                code: Some(451),
                upstream: "up".into(),
                reply: "later".into(),
                reason: None,
            },
        ];
        let t = from_spool(&meta, &log, &attempts, 50);
        assert_eq!(
            t[3].reason,
            Some("bounced"),
            "the reason survives a restart"
        );
        let t = from_spool(&meta, &log, &attempts, 50);
        let states: Vec<CopyState> = t.iter().map(|t| t.state).collect();
        use CopyState::*;
        assert_eq!(states, [Delivered, Deferred, Queued, Failed]);
        assert_eq!(t[1].attempts.count, 3);
        assert_eq!(t[1].next_at, Some(100));
        meta.hold = Some(Hold {
            canaries: vec![0],
            state: HoldState::Held,
        });
        let states: Vec<CopyState> = from_spool(&meta, &log, &[], 50)
            .iter()
            .map(|t| t.state)
            .collect();
        assert_eq!(states, [Delivered, Held, Held, Failed]);
    }
}
