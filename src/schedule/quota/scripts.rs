//! The Lua scripts of the shared quota count (`[cluster]`): each runs atomically in Redis, so
//! replicas reserving at the same moment never overshoot the quota together.

/// Checks every counter of a copy and raises them all, or none. KEYS: the counters.
/// ARGV[1]: expiry (Unix s); then (count, limit) per key. Returns {granted 0/1, used...}.
const RESERVE_LUA: &str = r#"
local ok = 1
local used = {}
for i = 1, #KEYS do
  used[i] = tonumber(redis.call('GET', KEYS[i]) or '0')
  if used[i] + tonumber(ARGV[2 * i]) > tonumber(ARGV[2 * i + 1]) then ok = 0 end
end
if ok == 1 then
  for i = 1, #KEYS do
    used[i] = redis.call('INCRBY', KEYS[i], ARGV[2 * i])
    redis.call('EXPIREAT', KEYS[i], ARGV[1])
  end
end
table.insert(used, 1, ok)
return used
"#;

/// Gives a reservation back. KEYS: the counters; ARGV: the count per key.
const RELEASE_LUA: &str = r#"
for i = 1, #KEYS do
  if tonumber(redis.call('GET', KEYS[i]) or '0') >= tonumber(ARGV[i]) then
    redis.call('DECRBY', KEYS[i], ARGV[i])
  end
end
return 0
"#;

/// Marks the counters spent (raised to their limit). KEYS: counters; ARGV[1]: expiry; then
/// the limit per key.
const SPEND_LUA: &str = r#"
for i = 1, #KEYS do
  if tonumber(redis.call('GET', KEYS[i]) or '0') < tonumber(ARGV[i + 1]) then
    redis.call('SET', KEYS[i], ARGV[i + 1])
  end
  redis.call('EXPIREAT', KEYS[i], ARGV[1])
end
return 0
"#;

/// The Lua scripts, hashed once (EVALSHA, loaded on first use).
pub(super) struct Scripts {
    pub(super) reserve: redis::Script,
    pub(super) release: redis::Script,
    pub(super) spend: redis::Script,
}

impl Scripts {
    pub(super) fn new() -> Scripts {
        Scripts {
            reserve: redis::Script::new(RESERVE_LUA),
            release: redis::Script::new(RELEASE_LUA),
            spend: redis::Script::new(SPEND_LUA),
        }
    }
}
