//! The pause state in the cluster's Redis: one hash, `mailveil:pause`, one field per target
//! (`*` for all deliveries, else the provider's name), each a JSON [`Change`] with a unique id.
//! Redis orders the writes; replicas never compare clocks. Every replica reads the whole hash
//! every [`POLL_INTERVAL`] (one `HGETALL`; a resume must reach every replica as surely as a
//! pause, and a replica that missed a message would not hear it again, so no pub/sub) and
//! reconciles it with its own state ([`super::reconcile`]).
//!
//! An operator's command writes its field at once (`HSET`). A change made while Redis was
//! unreachable, or an entry Redis lost, is written back with a compare-and-set script: only over
//! the entry this replica last saw, else the next round reconciles again.

use std::collections::BTreeMap;
use std::time::Duration;

use redis::aio::ConnectionManager;

use super::Change;
use crate::observe::log::escaped;
use crate::schedule::cluster::CALL_TIMEOUT;

/// How often a replica reads the cluster's pause state: a pause reaches every replica within
/// this plus one Redis round trip (well under a second).
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// The Redis hash holding every target's latest change.
pub const HASH_KEY: &str = "mailveil:pause";

/// Writes ARGV[3] into field ARGV[1] of KEYS[1] when the field is absent or its `id` is ARGV[2]
/// (`''`: only when absent). Returns 1 when written, 0 when another change is there.
const WRITE_IF_LUA: &str = r#"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local ok, decoded = pcall(cjson.decode, cur)
  local id = ''
  if ok and type(decoded) == 'table' and type(decoded['id']) == 'string' then id = decoded['id'] end
  if id ~= ARGV[2] or ARGV[2] == '' then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"#;

/// Why a Redis call gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
    #[error("no answer within {CALL_TIMEOUT:?}")]
    TimedOut,
    #[error("cluster.redis_url cannot be used")]
    NoConnection,
}

/// Every target's change as the cluster holds it. A field that does not parse is skipped with a
/// warning (written by hand or by a newer relay).
pub async fn read_all(
    conn: &mut ConnectionManager,
) -> Result<BTreeMap<String, Change>, SharedError> {
    let cmd = redis::cmd("HGETALL").arg(HASH_KEY).clone();
    let fields: BTreeMap<String, String> = timed(cmd.query_async(conn)).await?;
    Ok(fields
        .into_iter()
        .filter_map(|(key, value)| {
            if !is_target(&key) {
                tracing::warn!(field = %escaped(&key), "ignoring a field of the cluster's pause state that names no provider");
                return None;
            }
            match serde_json::from_str::<Change>(&value) {
                Ok(mut change) => {
                    // Shown in logs and `/status`: a name, not free text.
                    change.by = change.by.filter(|b| is_replica_name(b));
                    Some((key, change))
                }
                Err(e) => {
                    tracing::warn!(field = %key, error = %e, "ignoring an unreadable field of the cluster's pause state");
                    None
                }
            }
        })
        .collect())
}

/// `*` or what a provider name may be (letters, digits, `-`, `_`, `.`; it becomes a metric
/// label), at most 64 characters.
fn is_target(key: &str) -> bool {
    key == super::ALL
        || (!key.is_empty()
            && key.len() <= 64
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
}

/// A host name (a pod name): printable ASCII without spaces, at most 253 characters.
fn is_replica_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 253 && name.chars().all(|c| c.is_ascii_graphic())
}

/// Writes `change` for `key` whatever the cluster holds.
pub async fn write(
    conn: &mut ConnectionManager,
    key: &str,
    change: &Change,
) -> Result<(), SharedError> {
    let value = serde_json::to_string(change).expect("a change serializes");
    let cmd = redis::cmd("HSET").arg(HASH_KEY).arg(key).arg(value).clone();
    timed(cmd.query_async::<i64>(conn)).await.map(|_| ())
}

/// Writes `change` for `key` only over the entry `expect` (`None`: only where there is none).
/// `Ok(false)`: another change is there.
pub async fn write_if(
    conn: &mut ConnectionManager,
    key: &str,
    change: &Change,
    expect: Option<&str>,
) -> Result<bool, SharedError> {
    let value = serde_json::to_string(change).expect("a change serializes");
    let script = redis::Script::new(WRITE_IF_LUA);
    let mut call = script.key(HASH_KEY);
    call.arg(key).arg(expect.unwrap_or("")).arg(value);
    timed(call.invoke_async::<i64>(conn)).await.map(|n| n == 1)
}

async fn timed<T>(
    call: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, SharedError> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(SharedError::TimedOut),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_provider_names_and_host_names_are_taken_from_redis() {
        assert!(is_target("*") && is_target("yahoo") && is_target("my-prov_1.x"));
        assert!(
            !is_target("")
                && !is_target("a b")
                && !is_target("x\ny")
                && !is_target(&"a".repeat(65))
        );
        assert!(is_replica_name("relay-0"));
        assert!(
            !is_replica_name("relay 0") && !is_replica_name("r\x1b[2J") && !is_replica_name("")
        );
    }
}
