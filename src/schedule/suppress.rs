//! The suppression list: recipients that must never receive mail from this relay, whatever app
//! sends to them (hard bounces added automatically with `apps.suppress_hard_bounces`, and the
//! operator's entries through the admin API / `mailveil ctl suppress`). Every copy is checked
//! right before each attempt (`queue/suppressed.rs`), so an entry added while mail
//! waits in the queue still stops it; a suppressed copy ends `suppressed`, never sent.
//!
//! Stored without addresses: an entry is keyed by a keyed BLAKE3 hash of the normalised address
//! (the relay's recipient identity, [`crate::privacy::address::key`]: `"Bob"@Example.COM` is
//! `bob@example.com`, with the domain in IDNA ASCII form). The hash key is random, made once:
//! `SPOOL/suppression.key` (0600), or with `[cluster]` the one in Redis
//! (`mailveil:suppress:key`, set by the first replica that gets there) so every replica hashes
//! alike. Without `[cluster]` the entries live in `SPOOL/suppression.json` (written to a temp
//! file, fsynced, renamed); with it in the Redis hash `mailveil:suppress` (field: the hash),
//! with `mailveil:suppress:version` raised on each change, and each replica keeps a copy it
//! refreshes every second (also cached in the file), so the per-copy check never waits on Redis.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::cluster::{CALL_TIMEOUT, SharedLimits};
use crate::observe::Metrics;

const HASH_KEY: &str = "mailveil:suppress";
const KEY_KEY: &str = "mailveil:suppress:key";
const VERSION_KEY: &str = "mailveil:suppress:version";
/// How often a replica re-reads the fleet's list (when its version changed).
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Why an address is on the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// A permanent failure saying the mailbox does not exist (`5.1.1`, `5.1.10`).
    HardBounce,
    /// Added by an operator.
    Operator,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::HardBounce => "hard_bounce",
            Reason::Operator => "operator",
        }
    }
}

/// One entry (never the address itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub reason: Reason,
    /// Unix seconds.
    pub added_at: u64,
    /// The app whose mail bounced (hard bounces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Unix seconds after which the entry no longer counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

impl Entry {
    fn live(&self, now: u64) -> bool {
        self.expires_at.is_none_or(|t| t > now)
    }
}

/// What `SPOOL/suppression.json` holds.
#[derive(Default, Serialize, Deserialize)]
struct Stored {
    entries: HashMap<String, Entry>,
}

/// Why a change to the list was not made.
#[derive(Debug, thiserror::Error)]
pub enum SuppressError {
    #[error("cannot write the suppression list: {0}")]
    Io(#[from] std::io::Error),
    #[error("the cluster's Redis did not take the change (try again): {0}")]
    Redis(String),
}

/// The list, shared by the queue (checks), the admin API (changes) and the sync task.
pub struct Suppressions {
    key: RwLock<[u8; 32]>,
    entries: RwLock<HashMap<String, Entry>>,
    file: PathBuf,
    key_file: PathBuf,
    /// The cluster's Redis, attached by the scheduler (which starts it) when `[cluster]` is set.
    cluster: std::sync::OnceLock<Arc<SharedLimits>>,
    /// The fleet's list version last read (with `[cluster]`).
    version: AtomicI64,
    /// `apps.suppress_hard_bounces`: reloadable.
    hard_bounces: AtomicBool,
    metrics: Metrics,
}

fn now() -> u64 {
    crate::spool::unix_now()
}

/// The address as the list knows it: the relay's recipient key, the domain in IDNA ASCII.
pub fn normalise(address: &str) -> String {
    let key = crate::privacy::address::key(address);
    match key.rsplit_once('@') {
        Some((local, domain)) => {
            let domain = idna::domain_to_ascii(domain).unwrap_or_else(|_| domain.to_string());
            format!("{local}@{domain}")
        }
        None => key,
    }
}

impl Suppressions {
    /// The list kept under `spool_root` (shared through Redis once [`attach`](Self::attach)ed).
    pub fn open(spool_root: &Path, metrics: Metrics) -> std::io::Result<Arc<Suppressions>> {
        let key_file = spool_root.join("suppression.key");
        let key = match std::fs::read_to_string(&key_file) {
            Ok(text) => parse_key(&text).ok_or_else(|| {
                std::io::Error::other(format!("{} is not a 64-digit hex key", key_file.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key: [u8; 32] = rand::random();
                write_synced(&key_file, hex(&key).as_bytes())?;
                key
            }
            Err(e) => return Err(e),
        };
        let file = spool_root.join("suppression.json");
        let stored: Stored = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                std::io::Error::other(format!("{} cannot be read: {e}", file.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Stored::default(),
            Err(e) => return Err(e),
        };
        let list = Arc::new(Suppressions {
            key: RwLock::new(key),
            entries: RwLock::new(stored.entries),
            file,
            key_file,
            cluster: std::sync::OnceLock::new(),
            version: AtomicI64::new(-1),
            hard_bounces: AtomicBool::new(false),
            metrics,
        });
        list.publish();
        Ok(list)
    }

    /// `apps.suppress_hard_bounces` (at start and on reload).
    pub fn set_hard_bounces(&self, on: bool) {
        self.hard_bounces.store(on, Ordering::Relaxed);
    }

    pub fn hard_bounces(&self) -> bool {
        self.hard_bounces.load(Ordering::Relaxed)
    }

    /// The entry's name for `address`: hex of the keyed hash of its normal form.
    pub fn hash(&self, address: &str) -> String {
        let key = *self.key.read().expect("not poisoned");
        blake3::keyed_hash(&key, normalise(address).as_bytes())
            .to_hex()
            .to_string()
    }

    /// The live entry for `address`, if it is suppressed.
    pub fn check(&self, address: &str) -> Option<Entry> {
        let entries = self.entries.read().expect("not poisoned");
        if entries.is_empty() {
            return None;
        }
        entries
            .get(&self.hash(address))
            .filter(|e| e.live(now()))
            .cloned()
    }

    /// Puts `address` on the list (replacing an entry it had). True when it was not on it.
    pub async fn add(&self, address: &str, entry: Entry) -> Result<bool, SuppressError> {
        let hash = self.hash(address);
        let value = serde_json::to_string(&entry).expect("serialisable");
        self.change_fleet(|pipe| pipe.hset(HASH_KEY, &hash, value))
            .await?;
        let reason = entry.reason;
        let new = self
            .entries
            .write()
            .expect("not poisoned")
            .insert(hash, entry)
            .is_none();
        self.persist().await?;
        self.metrics
            .suppression_added
            .with_label_values(&[reason.as_str()])
            .inc();
        self.publish();
        Ok(new)
    }

    /// Takes `address` off the list. True when it was on it.
    pub async fn remove(&self, address: &str) -> Result<bool, SuppressError> {
        let hash = self.hash(address);
        self.change_fleet(|pipe| pipe.hdel(HASH_KEY, &hash)).await?;
        let was = self
            .entries
            .write()
            .expect("not poisoned")
            .remove(&hash)
            .is_some();
        self.persist().await?;
        self.publish();
        Ok(was)
    }

    /// With `[cluster]`: makes `change` to the fleet's list and raises its version, in one
    /// transaction (the other replicas re-read the list when the version moves).
    async fn change_fleet(
        &self,
        change: impl FnOnce(&mut redis::Pipeline) -> &mut redis::Pipeline,
    ) -> Result<(), SuppressError> {
        let Some(cluster) = self.cluster.get() else {
            return Ok(());
        };
        let mut conn = cluster
            .connection()
            .ok_or_else(|| SuppressError::Redis("no connection".into()))?;
        let mut pipe = redis::pipe();
        change(pipe.atomic()).ignore().incr(VERSION_KEY, 1).ignore();
        let call = pipe.query_async::<()>(&mut conn);
        match tokio::time::timeout(CALL_TIMEOUT * 4, call).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(SuppressError::Redis(e.to_string())),
            Err(_) => Err(SuppressError::Redis("timed out".into())),
        }
    }

    /// Every live entry with its hash, oldest first.
    pub fn list(&self) -> Vec<(String, Entry)> {
        let now = now();
        let mut all: Vec<(String, Entry)> = self
            .entries
            .read()
            .expect("not poisoned")
            .iter()
            .filter(|(_, e)| e.live(now))
            .map(|(h, e)| (h.clone(), e.clone()))
            .collect();
        all.sort_by(|a, b| a.1.added_at.cmp(&b.1.added_at).then(a.0.cmp(&b.0)));
        all
    }

    fn publish(&self) {
        let n = self.entries.read().expect("not poisoned").len();
        self.metrics.suppression_entries.set(n as i64);
    }

    /// Writes the list (or, with `[cluster]`, the cache of the fleet's) to the spool, synced.
    async fn persist(&self) -> std::io::Result<()> {
        let text = {
            let entries = self.entries.read().expect("not poisoned");
            serde_json::to_vec(&Stored {
                entries: entries.clone(),
            })
            .map_err(std::io::Error::other)?
        };
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || write_synced(&file, &text))
            .await
            .map_err(std::io::Error::other)?
    }

    /// With `[cluster]`: shares the list through `cluster`'s Redis from now on: agrees on the
    /// hash key with the fleet, then re-reads the fleet's list whenever its version changes,
    /// until `shutdown`.
    pub fn attach(self: Arc<Self>, cluster: Arc<SharedLimits>, shutdown: CancellationToken) {
        if self.cluster.set(cluster.clone()).is_err() {
            return;
        }
        tokio::spawn(async move {
            let mut keyed = false;
            loop {
                if let Some(mut conn) = cluster.connection() {
                    let sync = async {
                        if !keyed {
                            keyed = self.agree_on_key(&mut conn).await?;
                        }
                        self.refresh(&mut conn).await
                    };
                    if let Ok(Err(e)) = tokio::time::timeout(CALL_TIMEOUT * 4, sync).await {
                        tracing::debug!(error = %e, "suppression list not refreshed from Redis");
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(POLL_INTERVAL) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        });
    }

    async fn agree_on_key(
        &self,
        conn: &mut redis::aio::ConnectionManager,
    ) -> redis::RedisResult<bool> {
        let mine = hex(&self.key.read().expect("not poisoned"));
        let _: Option<String> = redis::cmd("SET")
            .arg(KEY_KEY)
            .arg(&mine)
            .arg("NX")
            .query_async(conn)
            .await?;
        let fleet: Option<String> = redis::cmd("GET").arg(KEY_KEY).query_async(conn).await?;
        let Some(key) = fleet.as_deref().and_then(parse_key) else {
            return Ok(false);
        };
        if fleet.as_deref() != Some(mine.as_str()) {
            *self.key.write().expect("not poisoned") = key;
            if let Err(e) = write_synced(&self.key_file, hex(&key).as_bytes()) {
                tracing::warn!(error = %e, "cannot keep the fleet's suppression key in the spool");
            }
            tracing::info!("suppression list: using the fleet's hash key from Redis");
            self.version.store(-1, Ordering::Relaxed);
        }
        Ok(true)
    }

    async fn refresh(&self, conn: &mut redis::aio::ConnectionManager) -> redis::RedisResult<()> {
        let version: Option<i64> = redis::cmd("GET").arg(VERSION_KEY).query_async(conn).await?;
        let version = version.unwrap_or(0);
        if version == self.version.load(Ordering::Relaxed) {
            return Ok(());
        }
        let all: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(HASH_KEY)
            .query_async(conn)
            .await?;
        let entries: HashMap<String, Entry> = all
            .into_iter()
            .filter_map(|(h, v)| Some((h, serde_json::from_str(&v).ok()?)))
            .collect();
        *self.entries.write().expect("not poisoned") = entries;
        self.version.store(version, Ordering::Relaxed);
        self.publish();
        if let Err(e) = self.persist().await {
            tracing::warn!(error = %e, "cannot cache the fleet's suppression list in the spool");
        }
        Ok(())
    }
}

fn hex(key: &[u8; 32]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_key(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(key)
}

/// `text` into `path` for good: a private temp file, fsynced, renamed, the directory fsynced.
fn write_synced(path: &Path, text: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = crate::private_files::create_options().open(&tmp)?;
        f.write_all(text)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            reason: Reason::Operator,
            added_at: now(),
            app: None,
            note: None,
            expires_at: None,
        }
    }

    #[test]
    fn the_normal_form_folds_case_quotes_and_idna() {
        assert_eq!(normalise("Bob@Example.COM"), "bob@example.com");
        assert_eq!(normalise("\"bob\"@example.com."), "bob@example.com");
        assert_eq!(normalise("anna@bücher.de"), "anna@xn--bcher-kva.de");
        assert_eq!(normalise("anna@XN--BCHER-KVA.de"), "anna@xn--bcher-kva.de");
    }

    #[tokio::test]
    async fn entries_are_hashed_kept_across_a_restart_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let list = Suppressions::open(dir.path(), Metrics::new()).unwrap();
        assert!(list.add("Gone@Example.com", entry()).await.unwrap());
        assert!(
            !list.add("gone@example.com", entry()).await.unwrap(),
            "the same mailbox"
        );
        list.add(
            "old@example.com",
            Entry {
                expires_at: Some(now() - 1),
                ..entry()
            },
        )
        .await
        .unwrap();
        assert!(list.check("\"gone\"@EXAMPLE.com").is_some());
        assert!(list.check("old@example.com").is_none(), "expired");
        assert!(list.check("other@example.com").is_none());
        let stored = std::fs::read_to_string(dir.path().join("suppression.json")).unwrap();
        assert!(
            !stored.contains("gone") && !stored.contains("example"),
            "{stored}"
        );
        drop(list);
        let again = Suppressions::open(dir.path(), Metrics::new()).unwrap();
        assert!(
            again.check("gone@example.com").is_some(),
            "same key, same hash"
        );
        assert!(again.remove("gone@example.com").await.unwrap());
        assert!(again.check("gone@example.com").is_none());
        let other = tempfile::tempdir().unwrap();
        let elsewhere = Suppressions::open(other.path(), Metrics::new()).unwrap();
        assert_ne!(
            elsewhere.hash("gone@example.com"),
            again.hash("gone@example.com"),
            "keyed: another relay's hashes differ"
        );
    }
}
