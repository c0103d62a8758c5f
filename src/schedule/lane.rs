//! One provider's lane: the deliveries ready to go to that provider, in priority order, and the
//! limit on how many of them are in flight at once.
//!
//! Why lanes: a provider that is slow, failing, throttled or paused only fills its own lane; the
//! others keep their own slots and keep flowing. Why priority: a password reset that arrives
//! behind a 23,000-copy newsletter must not wait for it, so deliveries of messages with few
//! copies ([`Class::Transactional`]) are taken before copies of a large fan-out.
//!
//! Pacing: before a delivery starts, the dispatcher awaits the lane's [`Throttle`] (the
//! provider's rate); a "too fast" deferral slows the lane ([`Lane::slow_down`]) — rate and
//! concurrency — until a timer restores the configured limits. The same hook applies another
//! replica's decision read from the cluster ([`crate::schedule::shaping`]), with its [`Cause`]
//! kept for `/status`.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::ShapingAction;

use super::message::{Class, QueuedMessage};
use super::shaping::{Cause, Origin, ShapingView};
use super::throttle::{SlowdownChange, Throttle};

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
    /// Wakes the retry timers of this lane's deferred deliveries (a resume makes them due).
    due_now: Notify,
    paused: AtomicBool,
    /// Slots for deliveries in flight; the lane's concurrency.
    slots: Arc<Semaphore>,
    /// Slots in force (the configured concurrency, lowered while slowed down).
    concurrency: AtomicUsize,
    /// The configured concurrency.
    configured: AtomicUsize,
    /// The provider's pacing.
    pub throttle: Throttle,
    /// Deliveries of this provider not yet final: ready, in flight or waiting for a retry.
    pub queued: AtomicU64,
    /// Of those, the ones waiting for a retry (on a timer, not in the lane).
    pub waiting: AtomicU64,
    /// Why the slowdown in force holds (the decision that set its factor), for `/status`.
    cause: Mutex<Option<Cause>>,
}

impl Lane {
    pub fn new(name: &str, concurrency: usize, throttle: Throttle) -> Lane {
        let concurrency = concurrency.max(1);
        Lane {
            name: name.to_string(),
            ready: Mutex::new(BinaryHeap::new()),
            wake: Notify::new(),
            due_now: Notify::new(),
            paused: AtomicBool::new(false),
            slots: Arc::new(Semaphore::new(concurrency)),
            concurrency: AtomicUsize::new(concurrency),
            configured: AtomicUsize::new(concurrency),
            throttle,
            queued: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            cause: Mutex::new(None),
        }
    }

    pub fn push(&self, item: Ready) {
        self.ready.lock().expect("not poisoned").push(Reverse(item));
        self.wake.notify_one();
    }

    /// Takes every ready item of `message` out of the lane (an operator deleted or bounced
    /// it); returns how many there were.
    pub fn remove_message(&self, message: &Arc<QueuedMessage>) -> usize {
        let mut ready = self.ready.lock().expect("not poisoned");
        let before = ready.len();
        ready.retain(|Reverse(item)| !Arc::ptr_eq(&item.message, message));
        before - ready.len()
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

    /// Makes every deferred delivery of this lane due now (a resume: after an incident the
    /// copies deferred meanwhile should not wait up to `retry_max`). Their timers wait on
    /// [`due_now_signal`](Self::due_now_signal).
    pub fn make_deferred_due(&self) {
        self.due_now.notify_waiters();
    }

    /// Completes at the next [`make_deferred_due`](Self::make_deferred_due) called after this
    /// future was created (even before it is first polled).
    pub fn due_now_signal(&self) -> tokio::sync::futures::Notified<'_> {
        self.due_now.notified()
    }

    /// Changes how many deliveries may be in flight (config reload). Lowering takes effect as
    /// deliveries in flight finish. A slowdown in force still applies on top.
    pub fn set_concurrency(&self, configured: usize) {
        self.configured.store(configured.max(1), Ordering::Relaxed);
        self.apply_concurrency();
    }

    /// Sets the slots in force from the configured concurrency and the throttle's slowdown
    /// (its factor, and a connection limit a `set` rule lowered).
    fn apply_concurrency(&self) {
        let configured = self.configured.load(Ordering::Relaxed) as f64;
        let factor = self.throttle.concurrency_factor();
        let slowed = (configured * factor).floor() as usize;
        let cap = self.throttle.set_limits().max_connections;
        self.resize(cap.map_or(slowed, |c| slowed.min(c)));
    }

    fn resize(&self, target: usize) {
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

    /// Waits for a free slot, then for a ready item while the lane (and the whole queue, per
    /// `globally_paused`) is not paused, then for the provider's throttle. The item is taken
    /// only after the throttle, so one that arrives meanwhile with a higher priority goes first.
    /// Once `unthrottled` is cancelled (the hand-off at shutdown: the receiving relay paces
    /// the copies) the throttle is no longer awaited. Returns `None` only if the semaphore is
    /// closed.
    pub async fn next(
        &self,
        globally_paused: &AtomicBool,
        unthrottled: &CancellationToken,
    ) -> Option<(Ready, OwnedSemaphorePermit)> {
        let permit = self.slots.clone().acquire_owned().await.ok()?;
        loop {
            let notified = self.wake.notified();
            let may_start = || !self.is_paused() && !globally_paused.load(Ordering::Relaxed);
            if may_start() && !self.ready.lock().expect("not poisoned").is_empty() {
                if !unthrottled.is_cancelled() {
                    tokio::select! {
                        _ = self.throttle.acquire() => {}
                        _ = unthrottled.cancelled() => {}
                    }
                }
                // Only this lane's dispatcher takes items, so one is still there unless a pause
                // came while the throttle waited (then the throttle's turn is simply spent).
                if may_start()
                    && let Some(Reverse(item)) = self.ready.lock().expect("not poisoned").pop()
                {
                    return Some((item, permit));
                }
                continue;
            }
            notified.await;
        }
    }

    /// Applies a shaping rule's action to this provider for `duration`, then restores the
    /// configured limits: a reply this replica received ([`Origin::Local`]) or another
    /// replica's decision for the time it has left ([`Origin::Fleet`]). Logs one line when the
    /// provider gets slower (with the wall-clock end) and one when it recovers (naming the rule,
    /// not the reply, which may contain an address). `defer` and `fail` are about one copy:
    /// nothing happens here (`None`).
    pub fn slow_down(
        self: &Arc<Self>,
        action: ShapingAction,
        duration: Duration,
        cause: &Cause,
    ) -> Option<SlowdownChange> {
        if matches!(action, ShapingAction::Defer | ShapingAction::Fail) {
            return None;
        }
        let change = self.throttle.slow_down(action, duration);
        self.apply_concurrency();
        {
            let mut held = self.cause.lock().expect("not poisoned");
            if change.slower || held.is_none() {
                *held = Some(cause.clone());
            }
        }
        let rule = cause.rule.as_str();
        let by = cause.by.as_deref().unwrap_or("unknown");
        if change.slower {
            let left = change
                .slowdown
                .until
                .saturating_duration_since(tokio::time::Instant::now());
            let until = wall_clock_after(left);
            let for_secs = left.as_secs();
            let fleet = cause.origin == Origin::Fleet;
            let by = fleet.then_some(by);
            match action {
                ShapingAction::Suspend => tracing::warn!(
                    provider = %self.name, for_secs, %until, %rule, by,
                    "{}", if fleet {
                        "provider suspended by another replica's decision"
                    } else {
                        "provider suspended after a throttling reply"
                    }
                ),
                ShapingAction::Slow { .. } => tracing::warn!(
                    provider = %self.name, factor = change.slowdown.factor,
                    messages_per_second = self.throttle.effective_rate().map(|r| r.per_second),
                    concurrency = self.concurrency(), for_secs, %until, %rule, by,
                    "{}", if fleet {
                        "provider slowed down by another replica's decision"
                    } else {
                        "provider slowed down after a throttling reply"
                    }
                ),
                _ => tracing::warn!(
                    provider = %self.name,
                    messages_per_second = self.throttle.effective_rate().map(|r| r.per_second),
                    concurrency = self.concurrency(),
                    max_deliveries_per_connection = change.slowdown.limits.max_deliveries_per_connection,
                    for_secs, %until, %rule, by,
                    "{}", if fleet {
                        "provider limits lowered by another replica's decision"
                    } else {
                        "provider limits lowered after a throttling reply"
                    }
                ),
            }
        }
        let lane = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(change.slowdown.until).await;
            if lane.throttle.recover(change.slowdown.generation) {
                *lane.cause.lock().expect("not poisoned") = None;
                lane.apply_concurrency();
                tracing::info!(
                    provider = %lane.name,
                    messages_per_second = lane.throttle.effective_rate().map(|r| r.per_second),
                    concurrency = lane.concurrency(),
                    "provider recovered; configured limits restored"
                );
            }
        });
        Some(change)
    }

    /// Lifts the slowdown or suspension in force (an operator's `ctl shaping clear`, made here
    /// or, `by`, on another replica) and makes the lane's deferred copies due now. True when
    /// there was one.
    pub fn clear_shaping(&self, by: Option<&str>) -> bool {
        if !self.throttle.clear() {
            return false;
        }
        *self.cause.lock().expect("not poisoned") = None;
        self.apply_concurrency();
        self.wake.notify_one();
        // Copies deferred while it was in force wait for its end (or their backoff): due now.
        self.make_deferred_due();
        tracing::warn!(
            provider = %self.name, by = by.unwrap_or("this replica"),
            "provider shaping cleared by an operator; configured limits restored"
        );
        true
    }

    /// The shaping in force, as `/status` shows it.
    pub fn shaping_view(&self) -> Option<ShapingView> {
        let slowdown = self.throttle.slowdown()?;
        let cause = self.cause.lock().expect("not poisoned").clone();
        Some(ShapingView::of(&slowdown, cause))
    }

    /// When a suspension in force ends, if the provider is suspended.
    pub fn suspended_until(&self) -> Option<tokio::time::Instant> {
        self.throttle
            .slowdown()
            .filter(|s| s.factor == 0.0 && s.until > tokio::time::Instant::now())
            .map(|s| s.until)
    }
}

/// The wall-clock time `left` from now, RFC 3339 in UTC, to the second (for logs).
fn wall_clock_after(left: Duration) -> String {
    let at = std::time::SystemTime::now() + left;
    let secs = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() + u64::from(d.subsec_millis() >= 500));
    super::pause::rfc3339(secs * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::throttle::{Rate, ThrottleMetrics};

    fn lane(concurrency: usize) -> Arc<Lane> {
        let metrics = ThrottleMetrics {
            delays: prometheus::IntCounter::new("d", "d").unwrap(),
            slowed: prometheus::IntGauge::new("s", "s").unwrap(),
        };
        let rate = Some(Rate {
            per_second: 10.0,
            burst: 4,
        });
        let throttle = Throttle::new("p", rate, metrics, None);
        Arc::new(Lane::new("p", concurrency, throttle))
    }

    #[tokio::test(start_paused = true)]
    async fn a_slowdown_lowers_concurrency_and_rate_until_it_ends() {
        let lane = lane(4);
        let cause = Cause {
            rule: "test".into(),
            reply: "421 slow".into(),
            origin: Origin::Local,
            by: None,
            limits: Default::default(),
        };
        lane.slow_down(
            ShapingAction::Slow { factor: 0.5 },
            Duration::from_secs(60),
            &cause,
        );
        let view = lane.shaping_view().unwrap();
        assert_eq!((view.action.as_str(), view.factor), ("slow", 0.5));
        assert_eq!(view.remaining_secs, 60);
        assert_eq!(
            (view.rule.as_str(), view.reply.as_str()),
            ("test", "421 slow")
        );
        assert_eq!(lane.concurrency(), 2);
        assert_eq!(lane.throttle.effective_rate().unwrap().per_second, 5.0);
        lane.set_concurrency(8); // a reload during the slowdown
        assert_eq!(lane.concurrency(), 4, "the slowdown still applies");
        tokio::time::sleep(Duration::from_secs(59)).await;
        assert_eq!(lane.concurrency(), 4);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(lane.concurrency(), 8, "recovered to the reloaded value");
        assert_eq!(lane.throttle.effective_rate().unwrap().per_second, 10.0);
        assert!(lane.throttle.slowdown().is_none());
        assert!(lane.shaping_view().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_clear_restores_the_limits_before_the_time_is_up() {
        let lane = lane(4);
        let cause = Cause {
            rule: "r".into(),
            reply: String::new(),
            origin: Origin::Fleet,
            by: Some("relay-1".into()),
            limits: Default::default(),
        };
        lane.slow_down(ShapingAction::Suspend, Duration::from_secs(600), &cause);
        let view = lane.shaping_view().unwrap();
        assert_eq!(
            (view.action.as_str(), view.origin),
            ("suspend", Origin::Fleet)
        );
        assert!(lane.clear_shaping(None));
        assert!(lane.shaping_view().is_none());
        assert!(!lane.clear_shaping(None));
        assert_eq!(lane.concurrency(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_set_rule_caps_connections_and_defer_changes_nothing() {
        use crate::config::SetLimits;
        let cause = |rule: &str| Cause {
            rule: rule.into(),
            reply: String::new(),
            origin: Origin::Local,
            by: None,
            limits: Default::default(),
        };
        let lane = lane(4);
        lane.slow_down(ShapingAction::Defer, Duration::from_secs(60), &cause("d"));
        assert!(lane.throttle.slowdown().is_none());
        let one = SetLimits {
            max_connections: Some(1),
            ..SetLimits::default()
        };
        lane.slow_down(
            ShapingAction::Set(one),
            Duration::from_secs(60),
            &cause("s"),
        );
        assert_eq!(lane.concurrency(), 1);
        assert_eq!(lane.throttle.effective_rate().unwrap().per_second, 10.0);
        assert!(lane.suspended_until().is_none());
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert_eq!(lane.concurrency(), 4, "restored");
        lane.slow_down(ShapingAction::Suspend, Duration::from_secs(30), &cause("x"));
        assert!(lane.suspended_until().is_some());
    }
}
