//! Cluster mode: provider rate limits shared by every replica through one Redis.
//!
//! Each provider has one key holding its GCRA "theoretical arrival time" in microseconds of
//! Redis' own clock (`TIME`), so replicas' clocks never need to agree. A Lua script reads and
//! advances it atomically (EVALSHA, loaded on first use); it answers 0 (go) or how many
//! microseconds to wait. Replicas that wait ask again after the wait: no polling loop.
//!
//! Redis' password (`requirepass`, or an ACL user's with `redis://USER@host/`) comes from
//! `cluster.password_env` / `password_file`, never from the URL. A refused or missing password
//! is handled like Redis being down, with the reason in the log.
//!
//! When Redis does not answer (down, unreachable, slower than [`CALL_TIMEOUT`]), deliveries keep
//! going under each replica's local limiter at `rate / replicas` (see
//! [`crate::config::ClusterConfig::replicas`]), `mailveil_cluster_up` drops to 0 and one line is
//! logged. A background probe pings Redis every [`PROBE_INTERVAL`] and switches back when it
//! answers (gauge 1, one line logged).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus::IntGauge;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio_util::sync::CancellationToken;

use crate::config::ClusterConfig;

use super::rate::Rate;

/// The longest a delivery waits for Redis before it uses the local fallback.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(500);
/// How often Redis' health is checked.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// GCRA over one key. KEYS[1]: the provider's key. ARGV[1]: emission interval in µs.
/// ARGV[2]: burst tolerance in µs (interval × (burst − 1)). Returns µs to wait, 0 = go.
const GCRA_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat or tat < now then tat = now end
local allow_at = tat - tolerance
if now < allow_at then return allow_at - now end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
return 0
"#;

/// The connection to the shared Redis and whether it is answering.
pub struct SharedLimits {
    manager: Option<ConnectionManager>,
    script: redis::Script,
    replicas: u32,
    up: AtomicBool,
    gauge: IntGauge,
}

impl SharedLimits {
    /// Connects lazily (the relay starts even while Redis is down) and starts the probe, which
    /// stops with `shutdown`.
    pub fn start(
        config: &ClusterConfig,
        gauge: IntGauge,
        shutdown: CancellationToken,
    ) -> Arc<SharedLimits> {
        let manager = client(config)
            .and_then(|client| {
                let options = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CALL_TIMEOUT))
                    .set_response_timeout(Some(CALL_TIMEOUT))
                    .set_number_of_retries(1)
                    .set_max_delay(PROBE_INTERVAL);
                ConnectionManager::new_lazy_with_config(client, options)
            })
            .inspect_err(|e| tracing::error!(error = %e, "cannot use cluster.redis_url; provider limits stay local"))
            .ok();
        gauge.set(0);
        let shared = Arc::new(SharedLimits {
            manager,
            script: redis::Script::new(GCRA_LUA),
            replicas: config.replicas,
            up: AtomicBool::new(false),
            gauge,
        });
        let probe = shared.clone();
        tokio::spawn(async move {
            let mut first = true;
            loop {
                match probe.ping().await {
                    Ok(()) => probe.mark_up(),
                    Err(why) if first => tracing::warn!(
                        reason = %why,
                        "cluster Redis not usable at start; provider limits use the local fallback (rate / {}) until it answers",
                        probe.replicas
                    ),
                    Err(why) => probe.mark_down(&why),
                }
                first = false;
                tokio::select! {
                    _ = tokio::time::sleep(PROBE_INTERVAL) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        });
        shared
    }

    /// A connection to the shared Redis (reconnecting by itself), for the shared pause state
    /// (`schedule/pause/shared.rs`); `None` when `redis_url` could not be used.
    pub fn connection(&self) -> Option<ConnectionManager> {
        self.manager.clone()
    }

    /// How many replicas share a limit: the local fallback paces at `rate / replicas`.
    pub fn replicas(&self) -> u32 {
        self.replicas
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Takes one cell of `provider`'s shared limit: `Some(ZERO)` go, `Some(wait)` ask again
    /// after `wait`, `None` Redis is not answering (use the local fallback).
    pub async fn acquire(&self, provider: &str, rate: Rate) -> Option<Duration> {
        if !self.is_up() {
            return None;
        }
        let mut conn = self.manager.clone()?;
        let interval = (rate.interval().as_micros() as u64).max(1);
        let tolerance = interval.saturating_mul(u64::from(rate.burst.max(1) - 1));
        let mut call = self.script.key(key(provider));
        call.arg(interval).arg(tolerance);
        match tokio::time::timeout(CALL_TIMEOUT, call.invoke_async::<u64>(&mut conn)).await {
            Ok(Ok(wait_us)) => Some(Duration::from_micros(wait_us)),
            Ok(Err(e)) => {
                self.mark_down(&e.to_string());
                None
            }
            Err(_) => {
                self.mark_down("timed out");
                None
            }
        }
    }

    /// `PING`, with the reason when Redis does not answer it (a refused password included).
    async fn ping(&self) -> Result<(), String> {
        let Some(mut conn) = self.manager.clone() else {
            return Err("cluster.redis_url cannot be used".into());
        };
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        match tokio::time::timeout(CALL_TIMEOUT, ping).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(describe(&e)),
            Err(_) => Err("no answer to PING within 500 ms".into()),
        }
    }

    fn mark_up(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            tracing::info!("cluster Redis answers; provider limits are shared across replicas");
        }
        self.gauge.set(1);
    }

    fn mark_down(&self, why: &str) {
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                reason = why,
                "cluster Redis unreachable; provider limits use the local fallback (rate / {}) until it answers",
                self.replicas
            );
        }
        self.gauge.set(0);
    }
}

/// A client for `cluster.redis_url`, with the password of `cluster.password_env` (or
/// `password_file`) for Redis' `AUTH`. The password is never part of the URL, so no error text
/// that quotes the URL can show it.
fn client(config: &ClusterConfig) -> redis::RedisResult<redis::Client> {
    use redis::IntoConnectionInfo;
    let mut info = config.redis_url.as_str().into_connection_info()?;
    if let Some(password) = &config.password {
        let settings = info
            .redis_settings()
            .clone()
            .set_password(password.expose());
        info = info.set_redis_settings(settings);
    }
    redis::Client::open(info)
}

/// Why Redis refused, in words that point at the key to fix when it is about the password.
fn describe(e: &redis::RedisError) -> String {
    let text = e.to_string();
    if text.contains("NOAUTH") {
        format!("Redis requires a password: set cluster.password_env ({text})")
    } else if text.contains("WRONGPASS") || e.kind() == redis::ErrorKind::AuthenticationFailed {
        // Also what a Redis without any password answers (the client reports both alike).
        format!(
            "Redis refused the password: check the variable named by cluster.password_env \
             and Redis' requirepass ({text})"
        )
    } else {
        text
    }
}

/// The Redis key of one provider's limit.
fn key(provider: &str) -> String {
    format!("mailveil:throttle:{provider}")
}
