//! A threshold rule's matches counted across the fleet (`[cluster]`): the provider (or the ESP)
//! counts our IP, not our replica, so three replicas each seeing two of five matches must act
//! together on the fifth.
//!
//! One sliding window per rule and target in the cluster's Redis: a sorted set
//! (`mailveil:threshold:<provider>:<rule>`, or `mailveil:threshold:upstream:<upstream>:<rule>`
//! for an upstream-scoped rule) whose members are the matches (a ULID each), scored by Redis'
//! own clock (`TIME`, ms), so replicas' clocks never need to agree. One Lua script adds a
//! match, drops those older than the window, keeps at most the threshold's count (the newest)
//! and sets the key to expire one window after the last match; it returns the count. Names
//! in a key are kept as they are when short and plain (letters, digits, `-_.[]`), else
//! replaced by `~` and a hash of the name, so config text never makes a long or odd key.
//!
//! While Redis does not answer (down, or slower than [`CALL_TIMEOUT`]) the replica decides on
//! its own count ([`super::Thresholds`]), logged once when it starts and once when Redis
//! answers again. Matches counted during the gap stay local: the window in Redis starts again
//! from the next match.

use std::sync::{Arc, Mutex};

use crate::config::{RuleScope, Threshold};
use crate::schedule::cluster::{CALL_TIMEOUT, SharedLimits};
use crate::schedule::pause::shared::SharedError;

/// KEYS[1]: the rule's window for one target. ARGV[1]: the window in ms. ARGV[2]: the
/// threshold's count (at most that many matches are kept). ARGV[3]: this match (unique).
/// Returns the matches within the window, this one included.
const COUNT_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local keep = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZADD', KEYS[1], now, ARGV[3])
local n = redis.call('ZCARD', KEYS[1])
if n > keep then
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - keep - 1)
  n = keep
end
redis.call('PEXPIRE', KEYS[1], window)
return n
"#;

/// The prefix of every threshold window in Redis.
pub const KEY_PREFIX: &str = "mailveil:threshold:";

/// The fleet-wide count of threshold rules' matches (only with `[cluster]`).
pub struct SharedCount {
    cluster: Arc<SharedLimits>,
    script: redis::Script,
    /// `None` until Redis was first asked; then whether it answered last time.
    reachable: Mutex<Option<bool>>,
}

impl SharedCount {
    pub fn new(cluster: Arc<SharedLimits>) -> SharedCount {
        SharedCount {
            cluster,
            script: redis::Script::new(COUNT_LUA),
            reachable: Mutex::new(None),
        }
    }

    /// Records a match of `rule` on `target` (a provider's lane or an upstream, as `scope`
    /// says) in the cluster's window: the matches within it, this one included (at most the
    /// threshold's count), or `None` when Redis did not answer within [`CALL_TIMEOUT`] (the
    /// caller then decides on its local count).
    pub async fn record(
        &self,
        rule: &str,
        scope: RuleScope,
        target: &str,
        threshold: Threshold,
    ) -> Option<u32> {
        let answer = self.call(&key(rule, scope, target), threshold).await;
        self.mark(answer.as_ref().map(|_| ()));
        answer.ok()
    }

    async fn call(&self, key: &str, threshold: Threshold) -> Result<u32, SharedError> {
        if !self.cluster.is_up() {
            // The probe found Redis away: no wait for an answer that will not come.
            return Err(SharedError::TimedOut);
        }
        let mut conn = self.cluster.connection().ok_or(SharedError::NoConnection)?;
        let window_ms = (threshold.window.as_millis() as u64).max(1);
        let mut call = self.script.key(key);
        call.arg(window_ms)
            .arg(threshold.count.max(1))
            .arg(ulid::Ulid::new().to_string());
        match tokio::time::timeout(CALL_TIMEOUT, call.invoke_async::<u32>(&mut conn)).await {
            Ok(answer) => Ok(answer?),
            Err(_) => Err(SharedError::TimedOut),
        }
    }

    /// Notes whether Redis answered; logs once per change (and the first failure).
    fn mark(&self, answer: Result<(), &SharedError>) {
        let now = answer.is_ok();
        let before = self.reachable.lock().expect("not poisoned").replace(now);
        match (before, answer) {
            (Some(false), Ok(())) => tracing::info!(
                "cluster Redis answers; threshold rules count matches across replicas again"
            ),
            (Some(false), Err(_)) | (_, Ok(())) => {}
            (_, Err(why)) => tracing::warn!(
                reason = %why,
                "cluster Redis unreachable: threshold rules count matches on each replica alone until it answers"
            ),
        }
    }
}

/// The Redis key of `rule`'s window on `target`.
pub fn key(rule: &str, scope: RuleScope, target: &str) -> String {
    let scope = match scope {
        RuleScope::Provider => "",
        RuleScope::Upstream => "upstream:",
    };
    format!("{KEY_PREFIX}{scope}{}:{}", part(target), part(rule))
}

/// `name` as a part of a key: itself when short and plain (no `:`, so the parts never run
/// into each other), else `~` and the first 16 hex digits of its BLAKE3 hash (`~` is not
/// plain, so a hash never equals a kept name).
fn part(name: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_.[]".contains(c);
    if !name.is_empty() && name.len() <= 64 && name.chars().all(plain) {
        name.to_string()
    } else {
        let hash = blake3::hash(name.as_bytes()).to_hex();
        format!("~{}", &hash[..16])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_bounded_and_plain_whatever_the_rule_is_called() {
        assert_eq!(
            key("busy-4", RuleScope::Provider, "yahoo"),
            "mailveil:threshold:yahoo:busy-4"
        );
        assert_eq!(
            key("shaping.rule[0]", RuleScope::Upstream, "ses"),
            "mailveil:threshold:upstream:ses:shaping.rule[0]"
        );
        let odd = key("a:b\u{7f}\r\n*", RuleScope::Provider, "qq");
        let long = key(&"x".repeat(500), RuleScope::Provider, "qq");
        for k in [&odd, &long] {
            let rule = k.strip_prefix("mailveil:threshold:qq:~").expect(k);
            assert_eq!(rule.len(), 16, "{k}");
            assert!(rule.chars().all(|c| c.is_ascii_hexdigit()), "{k}");
        }
        assert_ne!(odd, long);
        assert_eq!(
            odd,
            key("a:b\u{7f}\r\n*", RuleScope::Provider, "qq"),
            "stable"
        );
        assert_ne!(
            key("r", RuleScope::Provider, "ses"),
            key("r", RuleScope::Upstream, "ses"),
            "a provider and an upstream of one name count apart"
        );
    }
}
