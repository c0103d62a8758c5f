//! The kill switch of one replica: its [`Board`], the record that keeps it through restarts and
//! the cluster it is shared with. Every change (an operator's command, a sync round) runs under
//! one lock, so a round that read the cluster before a command cannot undo the command with
//! what it read.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::record::{Record, RecordError, Restored};
use super::shared::{self, SharedError};
use super::{ALL, Board, Step, reconcile};
use crate::schedule::cluster::SharedLimits;

/// The pause state of this replica.
pub struct Switch {
    board: Mutex<Board>,
    /// Serializes changes (see the module doc).
    changes: tokio::sync::Mutex<()>,
    record: Record,
    replica: Option<String>,
    cluster: Option<Arc<SharedLimits>>,
    /// A sync round has completed (answered or not) since start.
    first_round_done: AtomicBool,
    /// The last round reached Redis.
    reachable: AtomicBool,
    /// When a round last read the cluster's state (Unix ms, 0: never).
    last_sync_ms: AtomicU64,
    /// Why the record could not be read at start, if so (shown in `/status`).
    unreadable: Option<String>,
}

impl Switch {
    /// Restores the record in `spool_root` (logging what it found).
    pub fn restore(spool_root: &std::path::Path, cluster: Option<Arc<SharedLimits>>) -> Switch {
        let record = Record::in_spool(spool_root);
        let replica = super::replica_name();
        let (board, unreadable) = match record.restore(replica.clone()) {
            Restored::Nothing => (Board::default(), None),
            Restored::Board(board) => (board, None),
            Restored::Unreadable { board, reason } => {
                tracing::error!(
                    file = %record.path().display(), %reason,
                    "the pause record cannot be read; all deliveries stay paused until an operator resumes them (ctl resume)"
                );
                (board, Some(reason))
            }
        };
        for (key, e) in &board.targets {
            if e.change.paused {
                tracing::warn!(
                    provider = label(key), since = %super::rfc3339(e.change.at_ms),
                    by = e.change.by.as_deref().unwrap_or("unknown"),
                    "deliveries stay paused: restored from the spool's pause record"
                );
            }
        }
        Switch {
            board: Mutex::new(board),
            changes: tokio::sync::Mutex::new(()),
            record,
            replica,
            cluster,
            first_round_done: AtomicBool::new(false),
            reachable: AtomicBool::new(false),
            last_sync_ms: AtomicU64::new(0),
            unreadable,
        }
    }

    /// The state now.
    pub fn board(&self) -> Board {
        self.board.lock().expect("not poisoned").clone()
    }

    pub fn is_shared(&self) -> bool {
        self.cluster.is_some()
    }

    /// With `[cluster]`, true until the first sync round has asked Redis (answered or not):
    /// meanwhile nothing is sent, so a replica that starts during a fleet-wide pause does not
    /// send what it recovered before it hears of the pause.
    pub fn waiting_for_cluster(&self) -> bool {
        self.cluster.is_some() && !self.first_round_done.load(Ordering::Relaxed)
    }

    pub fn cluster_reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    pub fn last_sync_ms(&self) -> Option<u64> {
        Some(self.last_sync_ms.load(Ordering::Relaxed)).filter(|&ms| ms > 0)
    }

    pub fn unreadable_record(&self) -> Option<&str> {
        self.unreadable.as_deref()
    }

    /// An operator's decision for `key` (`*` or a provider): recorded in the spool before it
    /// returns, then written to the cluster when it is reachable (else shared by a later
    /// round). The change applies in memory even when the record cannot be written (a kill
    /// switch must work on a full disk); the error says it will not survive a restart.
    pub async fn command(&self, key: &str, paused: bool) -> Result<(), RecordError> {
        let _serial = self.changes.lock().await;
        let change = {
            let mut board = self.board.lock().expect("not poisoned");
            board.command(key, paused, self.replica.clone(), self.cluster.is_some())
        };
        self.write_record().await?;
        let Some(cluster) = &self.cluster else {
            return Ok(());
        };
        if !self.reachable.load(Ordering::Relaxed) && self.first_round_done.load(Ordering::Relaxed)
        {
            tracing::warn!(
                provider = label(key),
                "cluster Redis unreachable: the change holds here and is shared when Redis answers"
            );
            return Ok(());
        }
        let Some(mut conn) = cluster.connection() else {
            return Ok(());
        };
        match shared::write(&mut conn, key, &change).await {
            Ok(()) => {
                self.board
                    .lock()
                    .expect("not poisoned")
                    .shared(key, &change.id);
                self.write_record().await
            }
            Err(e) => {
                self.mark_unreachable(&e);
                Ok(())
            }
        }
    }

    /// One sync round with the cluster (a no-op without one): reads every target's change,
    /// adopts, confirms or writes back each (see [`reconcile`]). True when the state changed.
    pub async fn sync(&self) -> bool {
        let Some(cluster) = &self.cluster else {
            return false;
        };
        let _serial = self.changes.lock().await;
        let changed = self.sync_round(cluster).await;
        self.first_round_done.store(true, Ordering::Relaxed);
        changed
    }

    async fn sync_round(&self, cluster: &SharedLimits) -> bool {
        let Some(mut conn) = cluster.connection() else {
            self.mark_unreachable(&SharedError::NoConnection);
            return false;
        };
        let remote = match shared::read_all(&mut conn).await {
            Ok(r) => r,
            Err(e) => {
                self.mark_unreachable(&e);
                return false;
            }
        };
        self.mark_reachable();
        let local = self.board();
        let keys: BTreeSet<&String> = local.targets.keys().chain(remote.keys()).collect();
        let (mut changed, mut dirty) = (false, false);
        for key in keys {
            let (l, r) = (local.targets.get(key), remote.get(key));
            let step = reconcile(l, r);
            let ours = || {
                l.expect("a step that writes has a local entry")
                    .change
                    .clone()
            };
            let written = match step {
                Step::Keep => continue,
                Step::Adopt => {
                    let r = r.expect("adopt has a remote entry");
                    let before = l.is_some_and(|l| l.change.paused);
                    self.board.lock().expect("not poisoned").adopt(key, r);
                    if before != r.paused {
                        tracing::warn!(
                            provider = label(key),
                            by = r.by.as_deref().unwrap_or("unknown"),
                            "deliveries {} by the cluster",
                            if r.paused { "paused" } else { "resumed" }
                        );
                    }
                    changed = true;
                    dirty = true;
                    continue;
                }
                Step::Confirm => {
                    let id = ours().id;
                    self.board.lock().expect("not poisoned").shared(key, &id);
                    dirty = true;
                    continue;
                }
                Step::Push { expect } => {
                    shared::write_if(&mut conn, key, &ours(), expect.as_deref()).await
                }
                Step::Force => {
                    tracing::warn!(
                        provider = label(key),
                        "a pause made here while Redis was unreachable meets a resume made meanwhile elsewhere: the pause wins"
                    );
                    shared::write(&mut conn, key, &ours()).await.map(|()| true)
                }
            };
            match written {
                Ok(true) => {
                    let id = ours().id;
                    self.board.lock().expect("not poisoned").shared(key, &id);
                    dirty = true;
                }
                // Another change got there first: the next round reconciles with it.
                Ok(false) => {}
                Err(e) => {
                    self.mark_unreachable(&e);
                    break;
                }
            }
        }
        self.last_sync_ms.store(super::now_ms(), Ordering::Relaxed);
        if dirty && let Err(e) = self.write_record().await {
            tracing::error!(error = %e, "the pause state from the cluster holds in memory only");
        }
        changed
    }

    async fn write_record(&self) -> Result<(), RecordError> {
        let (record, board) = (self.record.clone(), self.board());
        match tokio::task::spawn_blocking(move || record.write(&board)).await {
            Ok(r) => r,
            Err(e) => Err(RecordError {
                path: self.record.path().to_path_buf(),
                source: std::io::Error::other(e.to_string()),
            }),
        }
    }

    fn mark_reachable(&self) {
        if !self.reachable.swap(true, Ordering::Relaxed) {
            tracing::info!("cluster Redis answers; the pause state is shared across replicas");
        }
    }

    fn mark_unreachable(&self, why: &SharedError) {
        let first = !self.first_round_done.load(Ordering::Relaxed);
        if self.reachable.swap(false, Ordering::Relaxed) || first {
            tracing::warn!(
                reason = %why,
                "cluster Redis unreachable: the pause state stays as last known here until it answers"
            );
        }
    }
}

/// A key as shown in logs, `/status` and the metric's label: `all` for `*`.
pub fn label(key: &str) -> &str {
    if key == ALL { super::ALL_LABEL } else { key }
}
