//! The cap on DATA held in memory at once across all sessions (`server.max_data_memory`).
//!
//! Why: every session buffers its message whole until end of DATA (the privacy policy reads
//! all of it), so `max_connections` sessions sending `max_message_size` messages at once would
//! need far more memory than a container is given. A session reserves room in the shared
//! [`DataBudget`] before its buffer grows; when the budget has no room it waits a moment for
//! other sessions to finish, then stops buffering, reads the rest of the message to its end
//! and answers `452 4.3.1` (nothing of it is accepted; the client tries again later).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus::IntGauge;
use tokio::sync::Notify;

/// How long a session waits for room before it gives up on its message.
pub(super) const WAIT_FOR_ROOM: Duration = Duration::from_millis(500);

/// Bytes of DATA all sessions hold, against the cap. One per listener.
#[derive(Debug)]
pub(crate) struct DataBudget {
    limit: AtomicU64,
    used: AtomicU64,
    /// Woken when a session lets go of memory.
    freed: Notify,
    gauge: IntGauge,
}

impl DataBudget {
    pub fn new(limit: u64, gauge: IntGauge, limit_gauge: &IntGauge) -> Arc<DataBudget> {
        limit_gauge.set(limit as i64);
        Arc::new(DataBudget {
            limit: AtomicU64::new(limit),
            used: AtomicU64::new(0),
            freed: Notify::new(),
            gauge,
        })
    }

    /// A reloaded cap: applies to growth from now on (memory held stays held).
    pub fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// Bytes that could still be reserved now.
    pub fn room(&self) -> u64 {
        self.limit
            .load(Ordering::Relaxed)
            .saturating_sub(self.used.load(Ordering::Relaxed))
    }

    fn try_take(&self, bytes: u64) -> bool {
        let limit = self.limit.load(Ordering::Relaxed);
        let taken = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= limit)
            })
            .is_ok();
        if taken {
            self.gauge.add(bytes as i64);
        }
        taken
    }

    fn give_back(&self, bytes: u64) {
        if bytes > 0 {
            self.used.fetch_sub(bytes, Ordering::AcqRel);
            self.gauge.sub(bytes as i64);
            self.freed.notify_waiters();
        }
    }
}

/// The memory one session holds in the budget; given back when dropped.
#[derive(Debug)]
pub(super) struct Reservation {
    budget: Arc<DataBudget>,
    held: u64,
}

impl Reservation {
    pub fn new(budget: &Arc<DataBudget>) -> Reservation {
        Reservation {
            budget: budget.clone(),
            held: 0,
        }
    }

    #[cfg(test)]
    pub fn held(&self) -> u64 {
        self.held
    }

    /// Gives back everything held (the session dropped its buffer).
    pub fn release(&mut self) {
        self.budget.give_back(std::mem::take(&mut self.held));
    }

    /// Grows the reservation to `total` bytes, waiting up to [`WAIT_FOR_ROOM`] for other
    /// sessions to give memory back. False: no room (the reservation is unchanged).
    pub async fn grow_to(&mut self, total: u64) -> bool {
        let Some(more) = total.checked_sub(self.held).filter(|m| *m > 0) else {
            return true;
        };
        let deadline = tokio::time::Instant::now() + WAIT_FOR_ROOM;
        loop {
            let freed = self.budget.freed.notified();
            if self.budget.try_take(more) {
                self.held = total;
                return true;
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return false;
            }
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.give_back(self.held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(limit: u64) -> Arc<DataBudget> {
        let gauge = IntGauge::new("g", "g").unwrap();
        let limit_gauge = IntGauge::new("l", "l").unwrap();
        DataBudget::new(limit, gauge, &limit_gauge)
    }

    #[tokio::test(start_paused = true)]
    async fn reservations_share_the_cap_and_give_back_on_drop() {
        let b = budget(100);
        let mut one = Reservation::new(&b);
        assert!(one.grow_to(60).await);
        let mut two = Reservation::new(&b);
        assert!(!two.grow_to(50).await, "60 + 50 is over 100");
        assert_eq!(two.held(), 0);
        assert!(two.grow_to(40).await);
        assert_eq!(b.room(), 0);
        drop(one);
        assert_eq!(b.room(), 60);
        assert!(two.grow_to(100).await);
        drop(two);
        assert_eq!(b.room(), 100);
        assert_eq!(b.gauge.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_waiting_for_room_gets_it_when_another_ends() {
        let b = budget(100);
        let mut one = Reservation::new(&b);
        assert!(one.grow_to(100).await);
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move {
                let mut two = Reservation::new(&b);
                two.grow_to(50).await
            })
        };
        tokio::time::sleep(WAIT_FOR_ROOM / 2).await;
        drop(one);
        assert!(waiter.await.unwrap());
    }
}
