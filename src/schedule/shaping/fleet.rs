//! One replica's side of the fleet-wide shaping state: it publishes the decisions taken here,
//! reads the cluster's every [`POLL_INTERVAL`], and says which entries the queue must apply
//! ([`Remote`]). Each entry is acted on once (by its id), and an entry this replica wrote is
//! never applied as a remote one, so a decision travels one way: decided, published, applied
//! by the others, never published again by a receiver.
//!
//! While Redis does not answer, decisions stay local (one log line when it goes away, one when
//! it answers again); the decisions taken meanwhile that are still in force are published on
//! the first round that reaches Redis again, for the time they have left.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::Decision;
use super::shared::{self, CLEAR_VISIBLE, POLL_INTERVAL};
use crate::schedule::cluster::SharedLimits;
use crate::schedule::pause::shared::SharedError;

/// What the queue does with an entry read from the cluster. `field` is the entry's field: a
/// provider's name or an upstream's `upstream:<name>` ([`super::Target::of`] tells which).
#[derive(Debug, Clone, PartialEq)]
pub enum Remote {
    /// Another replica's decision: the same slowdown here, for the time it has left.
    Apply {
        field: String,
        decision: Decision,
        remaining: Duration,
    },
    /// An operator lifted the provider's (or upstream's) shaping on another replica.
    Clear { field: String, by: Option<String> },
}

/// The fleet-wide shaping state of this replica (only with `[cluster]`).
pub struct Fleet {
    cluster: Arc<SharedLimits>,
    replica: Option<String>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Per provider: the id of the cluster's entry last acted on, or last written here.
    seen: HashMap<String, String>,
    /// Per provider: the id of the last entry written here (a round that read the cluster
    /// just before a write lands must not take it for another replica's).
    own: HashMap<String, String>,
    /// Decisions taken here that Redis has not taken yet, with when they end here.
    pending: HashMap<String, (Decision, Instant)>,
    /// Per provider: how many writes this replica started (publish, clear). A round that read
    /// the cluster while one was under way skips that provider: what it read may be the entry
    /// the write replaces, which must not be applied again.
    writes: HashMap<String, u64>,
    /// `None` until Redis was first asked.
    reachable: Option<bool>,
    /// When a round last read the cluster's state (Unix ms, 0: never).
    last_sync_ms: u64,
}

/// With `[cluster]`: how the shaping state is shared, as `/status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FleetSync {
    pub redis_reachable: bool,
    /// When the cluster's state was last read (RFC 3339).
    pub last_sync: Option<String>,
    pub interval_ms: u64,
    /// Decisions taken here while Redis was unreachable, shared when it answers.
    pub unshared: usize,
}

impl Fleet {
    pub fn new(cluster: Arc<SharedLimits>, replica: Option<String>) -> Fleet {
        Fleet {
            cluster,
            replica,
            state: Mutex::new(State::default()),
        }
    }

    /// The name this replica signs its decisions with.
    pub fn replica(&self) -> Option<String> {
        self.replica.clone()
    }

    /// Publishes a decision taken here for `provider` (a field: a provider's name or an
    /// upstream's `upstream:<name>`), lasting `lasts`. Returns the entry as the
    /// cluster now holds it (merged with one in force) and the time it has left; `None` when
    /// Redis did not take it (it is kept and published when Redis answers).
    pub async fn publish(
        &self,
        provider: &str,
        decision: Decision,
        lasts: Duration,
    ) -> Option<(Decision, Duration)> {
        let ends = Instant::now() + lasts;
        let before = {
            let mut state = self.lock();
            state.own.insert(provider.to_string(), decision.id.clone());
            *state.writes.entry(provider.to_string()).or_default() += 1;
            state.seen.insert(provider.to_string(), decision.id.clone())
        };
        let written = match self.cluster.connection() {
            Some(mut conn) => shared::write(&mut conn, provider, &decision, lasts).await,
            None => Err(SharedError::NoConnection),
        };
        match written {
            Ok((now_ms, entry)) => {
                self.mark(Ok(()));
                let left = Duration::from_millis(entry.expires_at_ms.saturating_sub(now_ms));
                Some((entry, left))
            }
            Err(e) => {
                let mut state = self.lock();
                if state.seen.get(provider) == Some(&decision.id) {
                    match before {
                        Some(id) => state.seen.insert(provider.to_string(), id),
                        None => state.seen.remove(provider),
                    };
                }
                keep_pending(&mut state.pending, provider, decision, ends);
                drop(state);
                self.mark(Err(&e));
                None
            }
        }
    }

    /// Writes an operator's clear of each of `providers` (fields, as [`publish`](Self::publish)
    /// takes them; `all`: also of every provider and upstream the cluster holds an entry for). Returns the providers cleared in the cluster; empty when
    /// Redis did not answer (the clear then holds on this replica only).
    pub async fn clear(&self, providers: &[String], all: bool) -> Vec<String> {
        let Some(mut conn) = self.cluster.connection() else {
            self.mark(Err(&SharedError::NoConnection));
            return Vec::new();
        };
        let mut names: Vec<String> = providers.to_vec();
        if all {
            match shared::read_all(&mut conn).await {
                Ok(snap) => names.extend(snap.entries.into_keys()),
                Err(e) => {
                    self.mark(Err(&e));
                    return Vec::new();
                }
            }
        }
        names.sort();
        names.dedup();
        let mut done = Vec::new();
        for name in names {
            let tombstone = Decision::clear(self.replica.clone());
            {
                let mut state = self.lock();
                state.seen.insert(name.clone(), tombstone.id.clone());
                state.own.insert(name.clone(), tombstone.id.clone());
                *state.writes.entry(name.clone()).or_default() += 1;
                state.pending.remove(&name);
            }
            match shared::write(&mut conn, &name, &tombstone, CLEAR_VISIBLE).await {
                Ok(_) => done.push(name),
                Err(e) => {
                    self.mark(Err(&e));
                    return done;
                }
            }
        }
        self.mark(Ok(()));
        done
    }

    /// One round: reads the cluster's state and returns what to apply here; publishes the
    /// decisions taken here while Redis was unreachable that are still in force.
    pub async fn poll(&self) -> Vec<Remote> {
        let Some(mut conn) = self.cluster.connection() else {
            self.mark(Err(&SharedError::NoConnection));
            return Vec::new();
        };
        let writes_before = self.lock().writes.clone();
        let mut snap = match shared::read_all(&mut conn).await {
            Ok(s) => s,
            Err(e) => {
                self.mark(Err(&e));
                return Vec::new();
            }
        };
        self.mark(Ok(()));
        let (remote, pending) = {
            let mut state = self.lock();
            state.last_sync_ms = crate::schedule::pause::now_ms();
            // Written here meanwhile: the next round reads what the write left.
            snap.entries
                .retain(|p, _| state.writes.get(p) == writes_before.get(p));
            let State { seen, own, .. } = &mut *state;
            let remote = news(seen, own, &snap);
            (remote, std::mem::take(&mut state.pending))
        };
        for (provider, (decision, ends)) in pending {
            let left = ends.saturating_duration_since(Instant::now());
            if left.is_zero() {
                continue;
            }
            tracing::info!(%provider, rule = %decision.rule, "sharing a shaping decision taken while the cluster Redis was unreachable");
            self.publish(&provider, decision, left).await;
        }
        remote
    }

    /// How the sharing stands, for `/status`.
    pub fn sync_status(&self) -> FleetSync {
        let state = self.lock();
        FleetSync {
            redis_reachable: state.reachable == Some(true),
            last_sync: (state.last_sync_ms > 0)
                .then(|| crate::schedule::pause::rfc3339(state.last_sync_ms)),
            interval_ms: POLL_INTERVAL.as_millis() as u64,
            unshared: state.pending.len(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("not poisoned")
    }

    /// Notes whether Redis answered; logs once per change (and the first failure).
    fn mark(&self, answer: Result<(), &SharedError>) {
        let now = answer.is_ok();
        let before = self.lock().reachable.replace(now);
        match (before, answer) {
            (Some(true), Ok(())) | (Some(false), Err(_)) => {}
            (_, Ok(())) => {
                tracing::info!(
                    "cluster Redis answers; shaping decisions are shared across replicas"
                )
            }
            (_, Err(why)) => tracing::warn!(
                reason = %why,
                "cluster Redis unreachable: shaping decisions stay local to each replica until it answers"
            ),
        }
    }
}

/// The entries of `snap` not acted on yet (by id) and not written here, each marked seen.
fn news(
    seen: &mut HashMap<String, String>,
    own: &HashMap<String, String>,
    snap: &shared::Snapshot,
) -> Vec<Remote> {
    let mut out = Vec::new();
    for (provider, decision) in &snap.entries {
        if seen.get(provider) == Some(&decision.id) || own.get(provider) == Some(&decision.id) {
            seen.insert(provider.clone(), decision.id.clone());
            continue;
        }
        seen.insert(provider.clone(), decision.id.clone());
        out.push(if decision.cleared {
            Remote::Clear {
                field: provider.clone(),
                by: decision.by.clone(),
            }
        } else {
            Remote::Apply {
                field: provider.clone(),
                decision: decision.clone(),
                remaining: snap.remaining(decision),
            }
        });
    }
    out
}

/// Keeps the stronger of two unshared decisions for one provider: slowest factor, latest end.
fn keep_pending(
    pending: &mut HashMap<String, (Decision, Instant)>,
    provider: &str,
    decision: Decision,
    ends: Instant,
) {
    let merged = match pending.remove(provider) {
        Some((old, old_ends)) => {
            let slower = if old.factor < decision.factor {
                old
            } else {
                decision
            };
            (slower, ends.max(old_ends))
        }
        None => (decision, ends),
    };
    pending.insert(provider.to_string(), merged);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ShapingAction;
    use std::collections::BTreeMap;

    fn decision(id: &str, factor: f64, ends: u64) -> Decision {
        let mut d = Decision::new(
            super::super::action_of(factor, &Default::default()),
            "r",
            "421".into(),
            None,
        );
        d.id = id.into();
        d.expires_at_ms = ends;
        d
    }

    #[test]
    fn each_entry_is_acted_on_once_and_a_clear_is_a_clear() {
        let mut entries = BTreeMap::new();
        entries.insert("yahoo".to_string(), decision("A", 0.0, 5000));
        let mut snap = shared::Snapshot {
            now_ms: 1000,
            entries,
        };
        let mut seen = HashMap::new();
        let mut own = HashMap::new();
        let first = news(&mut seen, &own, &snap);
        assert_eq!(first.len(), 1);
        match &first[0] {
            Remote::Apply {
                field,
                remaining,
                decision,
            } => {
                assert_eq!(field, "yahoo");
                assert_eq!(*remaining, Duration::from_millis(4000), "never longer");
                assert_eq!(decision.factor, 0.0);
            }
            other => panic!("{other:?}"),
        }
        assert!(news(&mut seen, &own, &snap).is_empty(), "once");
        // Written here: known by its id before the write, never applied as remote.
        own.insert("google".into(), "MINE".into());
        snap.entries
            .insert("google".into(), decision("MINE", 0.5, 3000));
        assert!(news(&mut seen, &own, &snap).is_empty());
        let mut clear = Decision::clear(Some("relay-1".into()));
        clear.expires_at_ms = 9000;
        snap.entries.insert("yahoo".into(), clear);
        assert_eq!(
            news(&mut seen, &own, &snap),
            vec![Remote::Clear {
                field: "yahoo".into(),
                by: Some("relay-1".into())
            }]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn unshared_decisions_keep_the_slowest_factor_and_latest_end() {
        let mut pending = HashMap::new();
        let now = Instant::now();
        let slow = Decision::new(
            ShapingAction::Slow { factor: 0.5 },
            "a",
            String::new(),
            None,
        );
        let stop = Decision::new(ShapingAction::Suspend, "b", String::new(), None);
        keep_pending(&mut pending, "p", stop, now + Duration::from_secs(5));
        keep_pending(&mut pending, "p", slow, now + Duration::from_secs(60));
        let (d, ends) = &pending["p"];
        assert_eq!((d.factor, d.rule.as_str()), (0.0, "b"));
        assert_eq!(*ends, now + Duration::from_secs(60));
    }
}
