//! The connection cap and the idle pool of one upstream.
//!
//! Why: opening a connection costs a TCP handshake, a greeting, EHLO, often STARTTLS and AUTH —
//! many round trips that dwarf one transaction. Reusing idle connections is what lets thousands
//! of copies per second go to one upstream.
//!
//! The cap: a semaphore admits at most `max_connections` sends at once, and a send opens a new
//! connection only when no idle one is left. Idle connections are taken back before the sender's
//! permit is released, so busy + idle never exceeds `max_connections` open connections.
//! Idle connections are reused most-recently-used first, so a burst's extra connections age out
//! instead of being kept warm in rotation.
//!
//! Each connection belongs to the provider lane it was opened for (its key) and carries only that
//! provider's copies, so a provider's connection count and deliveries per connection are its own.
//! When a send finds no idle connection of its key, it closes one idle connection of another key
//! before opening its own, which keeps the cap above.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, SemaphorePermit};

use super::PoolLimits;

/// A connection waiting for its next transaction.
struct Idle<C> {
    conn: C,
    since: Instant,
    key: String,
}

pub(crate) struct Pool<C> {
    limits: PoolLimits,
    sending: Semaphore,
    idle: Mutex<Vec<Idle<C>>>,
}

impl<C> Pool<C> {
    pub fn new(limits: PoolLimits) -> Pool<C> {
        Pool {
            sending: Semaphore::new(limits.max_connections.max(1)),
            idle: Mutex::new(Vec::new()),
            limits,
        }
    }

    pub fn limits(&self) -> &PoolLimits {
        &self.limits
    }

    /// Waits for the right to use a connection; hold the permit for the whole send.
    pub async fn admit(&self) -> SemaphorePermit<'_> {
        // The semaphore is never closed, so acquiring can only wait, not fail.
        match self.sending.acquire().await {
            Ok(permit) => permit,
            Err(_) => unreachable!("the pool semaphore is never closed"),
        }
    }

    /// The most recently used idle connection of `key` and how long it sat idle. Connections
    /// idle for longer than `max_idle` are dropped (closed) on the way: the server has likely
    /// closed them.
    pub fn take(&self, key: &str) -> Option<(C, Duration)> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        // Oldest first in the vector: drop the expired prefix.
        let fresh_from = idle
            .iter()
            .position(|i| now.duration_since(i.since) <= self.limits.max_idle)
            .unwrap_or(idle.len());
        idle.drain(..fresh_from);
        let at = idle.iter().rposition(|i| i.key == key)?;
        let i = idle.remove(at);
        Some((i.conn, now.duration_since(i.since)))
    }

    /// Removes the oldest idle connection of another key, for the caller to close before it
    /// opens one for `key` (so busy + idle stays within the cap).
    pub fn evict_other(&self, key: &str) -> Option<C> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let at = idle.iter().position(|i| i.key != key)?;
        Some(idle.remove(at).conn)
    }

    /// Offers a healthy connection of `key` back. Returns it when the pool does not want it
    /// (full), so the caller can close it politely.
    pub fn put(&self, conn: C, key: &str) -> Option<C> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() >= self.limits.max_connections {
            return Some(conn);
        }
        idle.push(Idle {
            conn,
            since: Instant::now(),
            key: key.to_string(),
        });
        None
    }

    /// How many connections sit idle (for tests and gauges).
    pub fn idle_count(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_connections: usize, max_idle: Duration) -> PoolLimits {
        PoolLimits {
            max_connections,
            max_idle,
            ..PoolLimits::default()
        }
    }

    #[test]
    fn most_recent_first_and_capped() {
        let pool = Pool::new(limits(2, Duration::from_secs(30)));
        assert!(pool.put(1, "").is_none());
        assert!(pool.put(2, "").is_none());
        assert_eq!(
            pool.put(3, ""),
            Some(3),
            "full pool hands the connection back"
        );
        assert_eq!(pool.take("").map(|(c, _)| c), Some(2));
        assert_eq!(pool.take("").map(|(c, _)| c), Some(1));
        assert!(pool.take("").is_none());
    }

    #[test]
    fn connections_serve_only_their_own_key() {
        let pool = Pool::new(limits(4, Duration::from_secs(30)));
        pool.put(1, "yahoo");
        pool.put(2, "google");
        pool.put(3, "yahoo");
        assert_eq!(pool.take("google").map(|(c, _)| c), Some(2));
        assert!(pool.take("google").is_none());
        assert_eq!(pool.evict_other("google"), Some(1), "oldest of another key");
        assert_eq!(pool.take("yahoo").map(|(c, _)| c), Some(3));
        assert_eq!(pool.evict_other("google"), None);
    }

    #[test]
    fn expired_connections_are_dropped() {
        let pool = Pool::new(limits(4, Duration::from_millis(20)));
        pool.put(1, "");
        std::thread::sleep(Duration::from_millis(40));
        pool.put(2, "");
        assert_eq!(pool.take("").map(|(c, _)| c), Some(2));
        assert!(pool.take("").is_none(), "1 had been idle too long");
        assert_eq!(pool.idle_count(), 0);
    }

    #[tokio::test]
    async fn admission_is_capped() {
        let pool: Pool<()> = Pool::new(limits(2, Duration::from_secs(30)));
        let a = pool.admit().await;
        let _b = pool.admit().await;
        let third = tokio::time::timeout(Duration::from_millis(50), pool.admit()).await;
        assert!(third.is_err(), "a third sender must wait");
        drop(a);
        let third = tokio::time::timeout(Duration::from_millis(500), pool.admit()).await;
        assert!(third.is_ok());
    }
}
