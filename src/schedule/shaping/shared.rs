//! The shaping state in the cluster's Redis: one hash, `mailveil:shaping`, one field per
//! provider (its name) or upstream (`upstream:<name>`, see [`Target`]), each a JSON
//! [`Decision`]. Both scripts read Redis' own clock (`TIME`), so an end
//! time is written and compared on one clock and replicas' clocks never need to agree.
//!
//! Writing ([`write`]) merges in Redis, atomically: over an entry still in force, the slowest
//! factor and the latest end win (as [`Throttle::slow_down`](crate::schedule::throttle::Throttle::slow_down)
//! merges locally); the rule, reply and replica of the slower one are kept. Expired fields are
//! removed on every write and the hash itself expires one second after its last entry ends, so
//! stale state disappears even when no replica writes again.
//!
//! Reading ([`read_all`]) is one script: Redis' time and the whole hash. Replicas poll it every
//! [`POLL_INTERVAL`] (as the pause state: a clear must reach every replica as surely as a
//! suspension, and a replica that missed a pub/sub message would not hear it again).

use std::collections::BTreeMap;
use std::time::Duration;

use redis::aio::ConnectionManager;

use super::{Decision, Target};
use crate::observe::log::escaped;
use crate::schedule::cluster::CALL_TIMEOUT;
use crate::schedule::pause::shared::SharedError;

/// How often a replica reads the cluster's shaping state: a decision reaches every replica
/// within this plus one Redis round trip (well under a second).
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// The Redis hash holding every provider's shaping state.
pub const HASH_KEY: &str = "mailveil:shaping";

/// How long a clear stays visible at least, so every replica polling reads it.
pub const CLEAR_VISIBLE: Duration = Duration::from_secs(10);

/// KEYS[1]: the hash. ARGV[1]: the provider. ARGV[2]: the decision (JSON). ARGV[3]: how long it
/// lasts, in ms. Returns Redis' time (ms) and the entry as written.
const WRITE_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local new = cjson.decode(ARGV[2])
local ends = now + tonumber(ARGV[3])
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local ok, old = pcall(cjson.decode, cur)
  if ok and type(old) == 'table' then
    local old_ends = tonumber(old['expires_at_ms']) or 0
    local old_factor = tonumber(old['factor'])
    if old_ends > now then
      if new['cleared'] == true then
        if old_ends > ends then ends = old_ends end
      elseif old['cleared'] ~= true and old_factor then
        if old_ends > ends then ends = old_ends end
        if old_factor < tonumber(new['factor']) then
          for _, k in ipairs({'action', 'factor', 'limits', 'rule', 'reply', 'by'}) do
            new[k] = old[k]
          end
        end
      end
    end
  end
end
new['expires_at_ms'] = ends
local encoded = cjson.encode(new)
redis.call('HSET', KEYS[1], ARGV[1], encoded)
local last = ends
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local ok, e = pcall(cjson.decode, all[i + 1])
  local e_ends = 0
  if ok and type(e) == 'table' then e_ends = tonumber(e['expires_at_ms']) or 0 end
  if e_ends <= now then
    redis.call('HDEL', KEYS[1], all[i])
  elseif e_ends > last then
    last = e_ends
  end
end
redis.call('PEXPIREAT', KEYS[1], last + 1000)
return {tostring(now), encoded}
"#;

/// KEYS[1]: the hash. Returns Redis' time (ms), then field, value, field, value...
const READ_LUA: &str = r#"
local t = redis.call('TIME')
local out = {tostring(tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all do out[#out + 1] = all[i] end
return out
"#;

/// The cluster's shaping state at one moment of Redis' clock.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Redis' time when it was read (Unix ms).
    pub now_ms: u64,
    /// Entries in force (not yet ended), by provider.
    pub entries: BTreeMap<String, Decision>,
}

impl Snapshot {
    /// How long `decision` still holds (zero when it has ended).
    pub fn remaining(&self, decision: &Decision) -> Duration {
        Duration::from_millis(decision.expires_at_ms.saturating_sub(self.now_ms))
    }
}

/// Writes `decision` for `provider`, lasting `lasts` from Redis' now, merged with the entry in
/// force (see the module doc). Returns Redis' time and the entry as written.
pub async fn write(
    conn: &mut ConnectionManager,
    provider: &str,
    decision: &Decision,
    lasts: Duration,
) -> Result<(u64, Decision), SharedError> {
    let value = serde_json::to_string(decision).expect("a decision serializes");
    let script = redis::Script::new(WRITE_LUA);
    let mut call = script.key(HASH_KEY);
    call.arg(provider)
        .arg(value)
        .arg(lasts.as_millis().max(1) as u64);
    let (now, written): (String, String) = timed(call.invoke_async(conn)).await?;
    let decision = serde_json::from_str(&written).map_err(|e| {
        SharedError::Redis(redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "unreadable shaping entry",
            e.to_string(),
        )))
    })?;
    Ok((now.parse().unwrap_or(0), decision))
}

/// Every provider's and upstream's entry in force. A field that names neither or does not parse is
/// skipped with a warning (written by hand or by a newer relay).
pub async fn read_all(conn: &mut ConnectionManager) -> Result<Snapshot, SharedError> {
    let script = redis::Script::new(READ_LUA);
    let call = script.key(HASH_KEY);
    let raw: Vec<String> = timed(call.invoke_async(conn)).await?;
    Ok(parse(&raw))
}

fn parse(raw: &[String]) -> Snapshot {
    let now_ms = raw.first().and_then(|n| n.parse().ok()).unwrap_or(0);
    let mut entries = BTreeMap::new();
    for pair in raw.get(1..).unwrap_or_default().chunks(2) {
        let [key, value] = pair else { continue };
        if Target::of(key).is_none() {
            tracing::warn!(field = %escaped(key), "ignoring a field of the cluster's shaping state that names no provider or upstream");
            continue;
        }
        match serde_json::from_str::<Decision>(value) {
            Ok(mut d) if d.expires_at_ms > now_ms => {
                // Shown in `/status` and `ctl status`: no control characters, bounded.
                d.rule = clean(&d.rule, 128);
                d.reply = clean(&d.reply, 512);
                // Shown in logs and `/status`: a host name, not free text.
                d.by = d.by.filter(|b| {
                    !b.is_empty() && b.len() <= 253 && b.chars().all(|c| c.is_ascii_graphic())
                });
                entries.insert(key.clone(), d);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(field = %key, error = %e, "ignoring an unreadable field of the cluster's shaping state")
            }
        }
    }
    Snapshot { now_ms, entries }
}

/// `text` with control characters escaped, at most `max` characters.
fn clean(text: &str, max: usize) -> String {
    escaped(text).to_string().chars().take(max).collect()
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
    fn ended_unnamed_and_unreadable_entries_are_left_out() {
        let live = r#"{"action":"suspend","factor":0,"expires_at_ms":2000,"id":"A","rule":"r","reply":"421"}"#;
        let ended = r#"{"action":"slow","factor":0.5,"expires_at_ms":1000,"id":"B"}"#;
        let raw: Vec<String> = [
            "1500",
            "yahoo",
            live,
            "google",
            ended,
            "a b",
            live,
            "qq",
            "{not json",
            "upstream:ses",
            live,
            "upstream:",
            live,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let snap = parse(&raw);
        assert_eq!(snap.now_ms, 1500);
        assert_eq!(
            snap.entries.keys().collect::<Vec<_>>(),
            vec!["upstream:ses", "yahoo"]
        );
        let d = &snap.entries["yahoo"];
        assert_eq!(snap.remaining(d), Duration::from_millis(500));
        assert_eq!(parse(&[]).entries.len(), 0);
    }
}
