//! One provider's lane: the deliveries ready to go to that provider, in priority order, and the
//! limit on how many of them are in flight at once.
//!
//! Why lanes: a provider that is slow, failing, throttled or paused only fills its own lane; the
//! others keep their own slots and keep flowing. Why priority: a password reset that arrives
//! behind a 23,000-copy newsletter must not wait for it, so deliveries of messages with few
//! copies ([`Class::Transactional`]) are taken before copies of a large fan-out.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::queue::QueuedMessage;

/// Messages with at most this many deliveries are transactional.
pub const TRANSACTIONAL_MAX_DELIVERIES: usize = 10;

/// Priority class of a delivery: lower goes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    Transactional,
    Bulk,
}

impl Class {
    pub fn of(deliveries: usize) -> Class {
        if deliveries <= TRANSACTIONAL_MAX_DELIVERIES {
            Class::Transactional
        } else {
            Class::Bulk
        }
    }
}

/// A delivery ready to be attempted.
pub struct Ready {
    pub class: Class,
    /// Arrival order within a class (FIFO).
    pub seq: u64,
    pub message: Arc<QueuedMessage>,
    pub index: usize,
    /// Attempts made so far (for backoff).
    pub attempts: u32,
}

impl PartialEq for Ready {
    fn eq(&self, other: &Self) -> bool {
        (self.class, self.seq) == (other.class, other.seq)
    }
}
impl Eq for Ready {}
impl PartialOrd for Ready {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Ready {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.class, self.seq).cmp(&(other.class, other.seq))
    }
}

pub struct Lane {
    pub name: String,
    ready: Mutex<BinaryHeap<Reverse<Ready>>>,
    /// Woken when an item is pushed or the lane is resumed.
    wake: Notify,
    paused: AtomicBool,
    /// Slots for deliveries in flight; the lane's concurrency.
    slots: Arc<Semaphore>,
    concurrency: AtomicUsize,
    /// Deliveries of this provider not yet final: ready, in flight or waiting for a retry.
    pub queued: AtomicU64,
}

impl Lane {
    pub fn new(name: &str, concurrency: usize) -> Lane {
        let concurrency = concurrency.max(1);
        Lane {
            name: name.to_string(),
            ready: Mutex::new(BinaryHeap::new()),
            wake: Notify::new(),
            paused: AtomicBool::new(false),
            slots: Arc::new(Semaphore::new(concurrency)),
            concurrency: AtomicUsize::new(concurrency),
            queued: AtomicU64::new(0),
        }
    }

    pub fn push(&self, item: Ready) {
        self.ready.lock().expect("not poisoned").push(Reverse(item));
        self.wake.notify_one();
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::Relaxed);
        if !paused {
            self.wake.notify_one();
        }
    }

    /// Wakes the dispatcher to look again (after a global resume).
    pub fn nudge(&self) {
        self.wake.notify_one();
    }

    /// Changes how many deliveries may be in flight (config reload). Lowering takes effect as
    /// deliveries in flight finish.
    pub fn set_concurrency(&self, target: usize) {
        let target = target.max(1);
        let old = self.concurrency.swap(target, Ordering::Relaxed);
        if target > old {
            self.slots.add_permits(target - old);
        } else if target < old {
            let slots = self.slots.clone();
            let mut missing = old - target;
            missing -= slots.forget_permits(missing);
            if missing > 0 {
                // Take the rest as deliveries in flight return their slots.
                tokio::spawn(async move {
                    if let Ok(p) = slots.acquire_many_owned(missing as u32).await {
                        p.forget();
                    }
                });
            }
        }
    }

    pub fn concurrency(&self) -> usize {
        self.concurrency.load(Ordering::Relaxed)
    }

    /// Waits for a free slot and then for a ready item while the lane (and the whole queue, per
    /// `globally_paused`) is not paused. Returns `None` only if the semaphore is closed.
    pub async fn next(
        &self,
        globally_paused: &AtomicBool,
    ) -> Option<(Ready, OwnedSemaphorePermit)> {
        let permit = self.slots.clone().acquire_owned().await.ok()?;
        loop {
            let notified = self.wake.notified();
            if !self.is_paused() && !globally_paused.load(Ordering::Relaxed) {
                if let Some(Reverse(item)) = self.ready.lock().expect("not poisoned").pop() {
                    return Some((item, permit));
                }
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_order_before_arrival() {
        assert!(Class::Transactional < Class::Bulk);
        assert_eq!(Class::of(1), Class::Transactional);
        assert_eq!(Class::of(TRANSACTIONAL_MAX_DELIVERIES + 1), Class::Bulk);
    }
}
