//! The kill switch's state: which deliveries are paused (all, or one provider's), since when, by
//! whom, and how this replica learned it. A pause must hold through everything an incident
//! brings, so it is
//! - durable: every change is written to `<spool>/pause.json` (synced, renamed into place)
//!   before the admin API answers, and read back at start before any spooled copy is queued
//!   ([`record`]);
//! - fleet-wide with `[cluster]`: every change is written to one Redis hash and every replica
//!   reads that hash every [`shared::POLL_INTERVAL`], so a pause on one replica stops every
//!   replica within a second ([`shared`]). A replica that cannot reach Redis keeps the last state
//!   it knew (and its record); a change made on it meanwhile is shared when Redis answers again.
//!
//! This file holds the state itself ([`Board`]) and the pure decision of how a replica's entry
//! and the cluster's entry for one target are reconciled ([`reconcile`]).

pub mod record;
pub mod shared;
pub mod switch;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The key of the global pause in the board, the record and the Redis hash (provider names are
/// letters, digits, `-`, `_` and `.`, so no provider is called this).
pub const ALL: &str = "*";

/// The `provider` label of `mailveil_paused` and the `provider` shown in `/status` for the
/// global pause (`all` is refused as a provider name by the configuration).
pub const ALL_LABEL: &str = "all";

/// One pause or resume decision, as shared between replicas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub paused: bool,
    /// Unique per decision (a ULID): replicas compare ids, never clocks.
    pub id: String,
    /// When it was made (Unix milliseconds of the replica that made it; shown, never compared).
    pub at_ms: u64,
    /// The replica that made it (`HOSTNAME`, the pod name under Kubernetes), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// How this replica learned the state of one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// An admin request to this replica (`ctl pause`, `POST /pause`).
    Command,
    /// Read from the spool's record at start.
    Spool,
    /// Read from the cluster's Redis (another replica's decision).
    Cluster,
}

/// This replica's state for one target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    #[serde(flatten)]
    pub change: Change,
    pub source: Source,
    /// Made here while the cluster was unreachable and not yet written to Redis.
    #[serde(default)]
    pub pending: bool,
    /// The id of the cluster's entry this replica last saw for this target (`None`: never
    /// shared). A pending change is written over that entry only if it is still there.
    #[serde(default)]
    pub seen: Option<String>,
}

/// Every target's state: `*` and provider names. Resumed targets stay (with `paused: false`) so
/// a resume has an id replicas can compare too.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Board {
    pub targets: BTreeMap<String, Entry>,
}

impl Board {
    /// Whether `key` (`*` or a provider) is paused.
    pub fn is_paused(&self, key: &str) -> bool {
        self.targets.get(key).is_some_and(|e| e.change.paused)
    }

    /// Records an operator's decision made on this replica. With `shared` (a `[cluster]`), the
    /// entry stays pending until it is written to Redis.
    pub fn command(&mut self, key: &str, paused: bool, by: Option<String>, shared: bool) -> Change {
        let change = Change {
            paused,
            id: ulid::Ulid::new().to_string(),
            at_ms: now_ms(),
            by,
        };
        let seen = self.targets.get(key).and_then(|e| e.seen.clone());
        self.targets.insert(
            key.to_string(),
            Entry {
                change: change.clone(),
                source: Source::Command,
                pending: shared,
                seen,
            },
        );
        change
    }

    /// Takes the cluster's entry for `key` as this replica's state.
    pub fn adopt(&mut self, key: &str, remote: &Change) {
        self.targets.insert(
            key.to_string(),
            Entry {
                change: remote.clone(),
                source: Source::Cluster,
                pending: false,
                seen: Some(remote.id.clone()),
            },
        );
    }

    /// Notes that this replica's entry for `key` is now the cluster's.
    pub fn shared(&mut self, key: &str, id: &str) {
        if let Some(e) = self.targets.get_mut(key)
            && e.change.id == id
        {
            e.pending = false;
            e.seen = Some(id.to_string());
        }
    }

    /// The board as restored at start: every entry's source becomes [`Source::Spool`] (when and
    /// by whom stay those of the decision).
    pub fn restored(mut self) -> Board {
        for e in self.targets.values_mut() {
            e.source = Source::Spool;
        }
        self
    }
}

/// What one sync round does with one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do: both agree, or neither knows the target.
    Keep,
    /// Take the cluster's entry.
    Adopt,
    /// The cluster already holds our pending change (written before a crash or a lost
    /// answer): it is shared.
    Confirm,
    /// Write ours to the cluster if its entry is still `expect` (`None`: absent).
    Push { expect: Option<String> },
    /// Write ours whatever the cluster holds: a pause made here while the cluster was
    /// unreachable meets a resume made meanwhile elsewhere. The two cannot be ordered (clocks
    /// are not compared), and a kill switch that one operator pulled must not be undone by a
    /// change that never saw it: the pause wins; resuming is one more explicit command.
    Force,
}

/// How this replica's `local` entry and the cluster's `remote` entry for one target are
/// reconciled. The cluster's entry is the fleet's state: it is adopted unless this replica has
/// a change of its own the cluster has not seen yet (pending), or knows a shared entry the
/// cluster lost (Redis restarted without persistence: written back, so one replica's memory
/// restores the fleet's state).
pub fn reconcile(local: Option<&Entry>, remote: Option<&Change>) -> Step {
    match (local, remote) {
        (None, None) => Step::Keep,
        (None, Some(_)) => Step::Adopt,
        (Some(l), None) if l.pending || l.seen.is_some() => Step::Push { expect: None },
        // Known only here and never shared (a pause from before `[cluster]` was configured): it
        // stays this replica's own.
        (Some(_), None) => Step::Keep,
        (Some(l), Some(r)) if l.change.id == r.id => {
            if l.pending {
                // Written before a crash or a lost answer: it is there.
                Step::Confirm
            } else {
                Step::Keep
            }
        }
        (Some(l), Some(r)) if l.pending => {
            if l.seen.as_deref() == Some(r.id.as_str()) {
                Step::Push {
                    expect: Some(r.id.clone()),
                }
            } else if l.change.paused && !r.paused {
                Step::Force
            } else {
                Step::Adopt
            }
        }
        (Some(_), Some(_)) => Step::Adopt,
    }
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The name this replica gives itself in shared decisions: `HOSTNAME` (the pod name under
/// Kubernetes), else the kernel's host name.
pub fn replica_name() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

/// `at_ms` as RFC 3339 UTC (`2026-12-02T11:44:45.123Z`).
pub fn rfc3339(at_ms: u64) -> String {
    let nanos = i128::from(at_ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| at_ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(paused: bool, id: &str) -> Change {
        Change {
            paused,
            id: id.into(),
            at_ms: 1,
            by: None,
        }
    }

    fn entry(paused: bool, id: &str, pending: bool, seen: Option<&str>) -> Entry {
        Entry {
            change: change(paused, id),
            source: Source::Command,
            pending,
            seen: seen.map(str::to_string),
        }
    }

    #[test]
    fn the_cluster_entry_is_adopted_unless_a_local_change_is_pending() {
        let r = change(true, "B");
        assert_eq!(reconcile(None, Some(&r)), Step::Adopt);
        assert_eq!(reconcile(None, None), Step::Keep);
        let synced = entry(false, "A", false, Some("A"));
        assert_eq!(reconcile(Some(&synced), Some(&r)), Step::Adopt);
        let same = entry(true, "B", false, Some("B"));
        assert_eq!(reconcile(Some(&same), Some(&r)), Step::Keep);
    }

    #[test]
    fn a_pending_change_is_pushed_over_the_entry_it_saw_and_a_pause_wins_a_conflict() {
        // Made while Redis was away, over entry A which is still the cluster's: pushed.
        let pending = entry(true, "C", true, Some("A"));
        assert_eq!(
            reconcile(Some(&pending), Some(&change(false, "A"))),
            Step::Push {
                expect: Some("A".into())
            }
        );
        // Meanwhile someone resumed (B): the pause made here still wins.
        assert_eq!(
            reconcile(Some(&pending), Some(&change(false, "B"))),
            Step::Force
        );
        // A pending resume meeting a newer cluster pause gives way.
        let resume = entry(false, "D", true, Some("A"));
        assert_eq!(
            reconcile(Some(&resume), Some(&change(true, "B"))),
            Step::Adopt
        );
        // A cluster that lost its data gets the entry back.
        assert_eq!(reconcile(Some(&pending), None), Step::Push { expect: None });
        let shared_before = entry(true, "A", false, Some("A"));
        assert_eq!(
            reconcile(Some(&shared_before), None),
            Step::Push { expect: None }
        );
        // Written before a lost answer: confirmed, not written again.
        assert_eq!(
            reconcile(Some(&pending), Some(&change(true, "C"))),
            Step::Confirm
        );
        // Never shared (no [cluster] when it was made): stays local.
        let local_only = entry(true, "E", false, None);
        assert_eq!(reconcile(Some(&local_only), None), Step::Keep);
    }

    #[test]
    fn a_command_keeps_the_entry_it_was_made_over_and_sharing_clears_pending() {
        let mut board = Board::default();
        board.adopt(ALL, &change(false, "A"));
        let c = board.command(ALL, true, Some("relay-0".into()), true);
        let e = &board.targets[ALL];
        assert!(e.pending && e.change.paused);
        assert_eq!(e.seen.as_deref(), Some("A"));
        board.shared(ALL, &c.id);
        let e = &board.targets[ALL];
        assert!(!e.pending);
        assert_eq!(e.seen.as_deref(), Some(c.id.as_str()));
        assert!(board.is_paused(ALL));
        let restored = board.restored();
        assert_eq!(restored.targets[ALL].source, Source::Spool);
    }

    #[test]
    fn times_are_shown_in_rfc3339() {
        assert_eq!(rfc3339(1_764_676_800_000), "2025-12-02T12:00:00Z");
    }
}
