//! Per-provider pacing: a GCRA rate limiter with burst (governor), and the temporary slowdown
//! or suspension that "too fast" deferrals trigger.
//!
//! Why GCRA: it spaces deliveries evenly at the configured rate yet lets an idle provider take a
//! short burst, and its whole state is one timestamp, which is what makes the shared Redis
//! version ([`super::cluster`]) a few lines of Lua.
//!
//! The lane's dispatcher awaits [`Throttle::acquire`] before it starts a delivery: a throttled
//! delivery waits in its own lane on a timer (never spinning, never holding other providers'
//! slots) and each delivery that had to wait counts once in `mailveil_throttle_delays_total`.
//!
//! Time is tokio's clock ([`TokioClock`]), so tests with a paused runtime control it exactly.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use prometheus::{IntCounter, IntGauge};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::{SetLimits, ShapingAction};

use super::cluster::SharedLimits;
// Part of this module's API (`Throttle::new`, `set_rate`); its home is `rate.rs`.
pub use super::rate::Rate;

/// governor's view of tokio's clock (time since the throttle was made).
#[derive(Debug, Clone)]
pub struct TokioClock {
    origin: Instant,
}

impl TokioClock {
    pub fn new() -> TokioClock {
        TokioClock {
            origin: Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

type Local = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Duration>>;

/// governor's quota for `rate`: the sustained interval, and the burst (at least 1).
fn quota(rate: &Rate) -> Quota {
    let burst = NonZeroU32::new(rate.burst.max(1)).expect("at least 1");
    Quota::with_period(rate.interval().max(Duration::from_nanos(1)))
        .expect("period is positive")
        .allow_burst(burst)
}

/// A slowdown in force.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Slowdown {
    /// Multiplier on rate and concurrency; 0 means suspended.
    pub factor: f64,
    /// Limits lowered by an `action = "set"` rule (each the lowest asked for).
    pub limits: SetLimits,
    pub until: Instant,
    /// Bumped by every new slowdown so that only the latest one's timer recovers.
    pub generation: u64,
}

/// What [`Throttle::slow_down`] did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlowdownChange {
    pub slowdown: Slowdown,
    /// The provider got slower than it was (not merely a longer slowdown): worth a log line.
    pub slower: bool,
}

/// One provider's pacing. Shared by its lane and the deliveries that may slow it down.
pub struct Throttle {
    provider: String,
    clock: TokioClock,
    state: Mutex<State>,
    /// Woken when limits change, so a waiting dispatcher re-computes its wait.
    changed: Notify,
    metrics: ThrottleMetrics,
    cluster: Option<Arc<SharedLimits>>,
}

/// The provider's series of `mailveil_throttle_delays_total` and `mailveil_provider_slowed`.
#[derive(Clone)]
pub struct ThrottleMetrics {
    pub delays: IntCounter,
    pub slowed: IntGauge,
}

struct State {
    base: Option<Rate>,
    slowdown: Option<Slowdown>,
    generation: u64,
    /// The local limiter for the effective rate: the rate itself on a single node, or the
    /// conservative share (`rate / replicas`) used while the cluster's Redis is unreachable.
    local: Option<Arc<Local>>,
}

/// What the dispatcher must do next.
enum Step {
    Go,
    Wait(Duration),
    /// Ask Redis for the cluster-wide rate; use `fallback` when it does not answer.
    Shared {
        rate: Rate,
        fallback: Arc<Local>,
    },
}

impl Throttle {
    /// A throttle for `provider` at `rate` (`None`: unthrottled). With `cluster`, the rate is
    /// enforced across replicas through Redis.
    pub fn new(
        provider: &str,
        rate: Option<Rate>,
        metrics: ThrottleMetrics,
        cluster: Option<Arc<SharedLimits>>,
    ) -> Throttle {
        metrics.slowed.set(0);
        let throttle = Throttle {
            provider: provider.to_string(),
            clock: TokioClock::new(),
            state: Mutex::new(State {
                base: rate,
                slowdown: None,
                generation: 0,
                local: None,
            }),
            changed: Notify::new(),
            metrics,
            cluster,
        };
        throttle.rebuild(&mut throttle.state.lock().expect("not poisoned"), false);
        throttle
    }

    /// Waits until a delivery to this provider may start. Returns true when it had to wait.
    pub async fn acquire(&self) -> bool {
        let mut delayed = false;
        loop {
            let changed = self.changed.notified();
            let wait = match self.step() {
                Step::Go => return delayed,
                Step::Wait(d) => d,
                Step::Shared { rate, fallback } => {
                    let shared = match &self.cluster {
                        Some(c) => c.acquire(&self.provider, rate).await,
                        None => None,
                    };
                    match shared {
                        Some(d) if d.is_zero() => return delayed,
                        Some(d) => d,
                        None => match self.check(&fallback) {
                            None => return delayed,
                            Some(d) => d,
                        },
                    }
                }
            };
            if !delayed {
                delayed = true;
                self.metrics.delays.inc();
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = changed => {}
            }
        }
    }

    fn step(&self) -> Step {
        let state = self.state.lock().expect("not poisoned");
        if let Some(s) = state.slowdown.filter(|s| s.factor == 0.0) {
            let now = Instant::now();
            if s.until > now {
                return Step::Wait(s.until - now);
            }
        }
        let Some(local) = state.local.clone() else {
            return Step::Go;
        };
        if self.cluster.is_some() {
            let rate = effective(&state).expect("a local limiter means a rate");
            return Step::Shared {
                rate,
                fallback: local,
            };
        }
        drop(state);
        match self.check(&local) {
            None => Step::Go,
            Some(d) => Step::Wait(d),
        }
    }

    /// `None` when a cell conforms now (and is taken), else how long until one may.
    fn check(&self, limiter: &Local) -> Option<Duration> {
        match limiter.check() {
            Ok(()) => None,
            Err(not_until) => Some(not_until.wait_time_from(self.clock.now())),
        }
    }

    /// Applies a rule's action for `duration`. Several slowdowns do not compound: the slowest
    /// factor, the lowest of each set limit and the latest end win. `defer` and `fail` do not
    /// change the pace (they are about one copy).
    pub fn slow_down(&self, action: ShapingAction, duration: Duration) -> SlowdownChange {
        let (factor, limits) = match action {
            ShapingAction::Slow { factor } => (factor, SetLimits::default()),
            ShapingAction::Suspend => (0.0, SetLimits::default()),
            ShapingAction::Set(limits) => (1.0, limits),
            ShapingAction::Defer | ShapingAction::Fail => (1.0, SetLimits::default()),
        };
        let mut state = self.state.lock().expect("not poisoned");
        let until = Instant::now() + duration;
        state.generation += 1;
        let (slowdown, slower) = match state.slowdown {
            Some(old) => {
                let limits = old.limits.lowest(limits);
                (
                    Slowdown {
                        factor: old.factor.min(factor),
                        limits,
                        until: old.until.max(until),
                        generation: state.generation,
                    },
                    factor < old.factor || limits != old.limits,
                )
            }
            None => (
                Slowdown {
                    factor,
                    limits,
                    until,
                    generation: state.generation,
                },
                true,
            ),
        };
        state.slowdown = Some(slowdown);
        self.metrics.slowed.set(1);
        if slower {
            self.rebuild(&mut state, true);
        }
        drop(state);
        self.changed.notify_waiters();
        SlowdownChange { slowdown, slower }
    }

    /// Ends the slowdown of `generation` (a later one keeps going). True when it ended.
    pub fn recover(&self, generation: u64) -> bool {
        let mut state = self.state.lock().expect("not poisoned");
        if state.slowdown.is_none_or(|s| s.generation != generation) {
            return false;
        }
        state.slowdown = None;
        self.metrics.slowed.set(0);
        self.rebuild(&mut state, true);
        drop(state);
        self.changed.notify_waiters();
        true
    }

    /// Ends whatever slowdown is in force (an operator's `ctl shaping clear`, here or on another
    /// replica). True when there was one. Its recovery timer then finds a newer generation and
    /// does nothing.
    pub fn clear(&self) -> bool {
        let mut state = self.state.lock().expect("not poisoned");
        if state.slowdown.is_none() {
            return false;
        }
        state.slowdown = None;
        state.generation += 1;
        self.metrics.slowed.set(0);
        self.rebuild(&mut state, true);
        drop(state);
        self.changed.notify_waiters();
        true
    }

    /// New configured rate (config reload); a slowdown in force stays.
    pub fn set_rate(&self, rate: Option<Rate>) {
        let mut state = self.state.lock().expect("not poisoned");
        if state.base == rate {
            return;
        }
        state.base = rate;
        self.rebuild(&mut state, true);
        drop(state);
        self.changed.notify_waiters();
    }

    /// The slowdown in force, if any.
    pub fn slowdown(&self) -> Option<Slowdown> {
        self.state.lock().expect("not poisoned").slowdown
    }

    /// Multiplier for the lane's concurrency: the slowdown's factor, 1 otherwise (a suspended
    /// lane starts nothing anyway, so its concurrency is left alone).
    pub fn concurrency_factor(&self) -> f64 {
        match self.slowdown() {
            Some(s) if s.factor > 0.0 => s.factor,
            _ => 1.0,
        }
    }

    /// The limits a `set` rule lowered, in force now (none set: all `None`).
    pub fn set_limits(&self) -> SetLimits {
        self.slowdown().map(|s| s.limits).unwrap_or_default()
    }

    /// The rate in force now (configured rate times any slowdown), for status and logs.
    pub fn effective_rate(&self) -> Option<Rate> {
        effective(&self.state.lock().expect("not poisoned"))
    }

    /// Makes a new limiter for the effective rate. `drained`: it starts with no burst left, so
    /// a change of rate never releases a burst right after a provider said "too fast".
    fn rebuild(&self, state: &mut State, drained: bool) {
        state.local = effective(state).map(|rate| {
            let share = match &self.cluster {
                Some(c) => rate.scaled(1.0 / f64::from(c.replicas().max(1))),
                None => rate,
            };
            let limiter = Arc::new(Local::direct_with_clock(quota(&share), self.clock.clone()));
            if drained {
                let burst = NonZeroU32::new(share.burst.max(1)).expect("at least 1");
                let _ = limiter.check_n(burst);
            }
            limiter
        });
    }
}

/// The configured rate times the slowdown's factor, never above a rate a `set` rule lowered
/// it to (which also paces a provider that is otherwise unthrottled).
fn effective(state: &State) -> Option<Rate> {
    let scaled = match (state.base, state.slowdown) {
        (Some(base), Some(s)) if s.factor > 0.0 => Some(base.scaled(s.factor)),
        (base, _) => base,
    };
    let cap = state
        .slowdown
        .and_then(|s| s.limits.messages_per_second)
        .map(|r| r.get());
    match (scaled, cap) {
        (Some(rate), Some(cap)) if cap < rate.per_second => Some(Rate {
            per_second: cap,
            burst: 1,
        }),
        (None, Some(cap)) => Some(Rate {
            per_second: cap,
            burst: 1,
        }),
        (rate, _) => rate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(rate: Option<Rate>) -> (Throttle, IntCounter) {
        let metrics = ThrottleMetrics {
            delays: IntCounter::new("t", "t").unwrap(),
            slowed: IntGauge::new("s", "s").unwrap(),
        };
        let delays = metrics.delays.clone();
        (Throttle::new("p", rate, metrics, None), delays)
    }

    fn rate(per_second: f64, burst: u32) -> Option<Rate> {
        Some(Rate { per_second, burst })
    }

    /// Acquires `n` times and returns the instants (relative to the start) each went through.
    async fn times(t: &Throttle, n: usize) -> Vec<Duration> {
        let start = Instant::now();
        let mut out = Vec::new();
        for _ in 0..n {
            t.acquire().await;
            out.push(start.elapsed());
        }
        out
    }

    fn ms(d: Duration) -> u128 {
        d.as_millis()
    }

    #[tokio::test(start_paused = true)]
    async fn burst_then_evenly_spaced_at_the_rate() {
        let (t, delays) = throttle(rate(5.0, 3));
        let at = times(&t, 6).await;
        let at: Vec<u128> = at.into_iter().map(ms).collect();
        assert_eq!(at, vec![0, 0, 0, 200, 400, 600]);
        assert_eq!(delays.get(), 3, "each waiting delivery counts once");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_time_refills_the_burst_but_never_beyond_it() {
        let (t, _) = throttle(rate(2.0, 2));
        times(&t, 2).await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        let at: Vec<u128> = times(&t, 3).await.into_iter().map(ms).collect();
        assert_eq!(at, vec![0, 0, 500]);
    }

    #[tokio::test(start_paused = true)]
    async fn unthrottled_never_waits() {
        let (t, delays) = throttle(None);
        let at = times(&t, 1000).await;
        assert_eq!(*at.last().unwrap(), Duration::ZERO);
        assert_eq!(delays.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn slowdown_halves_the_rate_then_recovers() {
        let (t, _) = throttle(rate(10.0, 1));
        times(&t, 1).await;
        let change = t.slow_down(ShapingAction::Slow { factor: 0.5 }, Duration::from_secs(5));
        assert!(change.slower);
        assert_eq!(t.concurrency_factor(), 0.5);
        // Drained: the next delivery waits one slowed interval, then every 200 ms.
        let at: Vec<u128> = times(&t, 3).await.into_iter().map(ms).collect();
        assert_eq!(at, vec![200, 400, 600]);
        tokio::time::sleep_until(change.slowdown.until).await;
        assert!(t.recover(change.slowdown.generation));
        assert_eq!(t.concurrency_factor(), 1.0);
        let at: Vec<u128> = times(&t, 3).await.into_iter().map(ms).collect();
        assert_eq!(at, vec![100, 200, 300], "back to 10/s");
    }

    #[tokio::test(start_paused = true)]
    async fn slowdowns_do_not_compound_and_only_the_latest_recovers() {
        let (t, _) = throttle(rate(8.0, 1));
        let first = t.slow_down(ShapingAction::Slow { factor: 0.5 }, Duration::from_secs(10));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let second = t.slow_down(ShapingAction::Slow { factor: 0.5 }, Duration::from_secs(10));
        assert!(!second.slower, "same factor again is not slower");
        assert_eq!(t.effective_rate().unwrap().per_second, 4.0);
        assert!(!t.recover(first.slowdown.generation), "superseded");
        assert!(t.slowdown().is_some());
        assert!(t.recover(second.slowdown.generation));
        assert_eq!(t.effective_rate().unwrap().per_second, 8.0);
    }

    #[tokio::test(start_paused = true)]
    async fn suspend_holds_every_start_until_it_ends() {
        let (t, delays) = throttle(None);
        let change = t.slow_down(ShapingAction::Suspend, Duration::from_secs(30));
        assert_eq!(t.concurrency_factor(), 1.0);
        let at = times(&t, 2).await;
        assert_eq!(at, vec![Duration::from_secs(30); 2]);
        assert_eq!(delays.get(), 1);
        assert!(t.recover(change.slowdown.generation));
    }

    #[tokio::test(start_paused = true)]
    async fn a_set_rule_lowers_only_what_it_names_and_never_raises() {
        use crate::config::PerSecond;
        let (t, _) = throttle(rate(10.0, 5));
        let slower = |per_second: f64| SetLimits {
            messages_per_second: PerSecond::new(per_second),
            ..SetLimits::default()
        };
        let change = t.slow_down(ShapingAction::Set(slower(2.0)), Duration::from_secs(60));
        assert!(change.slower);
        assert_eq!(t.effective_rate().unwrap().per_second, 2.0);
        assert_eq!(
            t.concurrency_factor(),
            1.0,
            "set leaves concurrency to its own limit"
        );
        let higher = t.slow_down(ShapingAction::Set(slower(50.0)), Duration::from_secs(60));
        assert!(!higher.slower, "a higher limit is not slower");
        assert_eq!(t.effective_rate().unwrap().per_second, 2.0);
        let conns = SetLimits {
            max_connections: Some(1),
            ..SetLimits::default()
        };
        assert!(
            t.slow_down(ShapingAction::Set(conns), Duration::from_secs(60))
                .slower
        );
        assert_eq!(t.set_limits().max_connections, Some(1));
        assert_eq!(t.set_limits().messages_per_second, PerSecond::new(2.0));
        let last = t.slowdown().unwrap().generation;
        assert!(t.recover(last));
        assert_eq!(t.effective_rate().unwrap().per_second, 10.0);
        assert_eq!(t.set_limits(), SetLimits::default());
        // An unthrottled provider is paced by a set rate while it lasts.
        let (free, _) = throttle(None);
        free.slow_down(ShapingAction::Set(slower(0.5)), Duration::from_secs(60));
        assert_eq!(free.effective_rate().unwrap().per_second, 0.5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_clear_ends_a_suspension_at_once_and_its_timer_does_nothing() {
        let (t, _) = throttle(None);
        let change = t.slow_down(ShapingAction::Suspend, Duration::from_secs(600));
        let t = Arc::new(t);
        let waiter = {
            let t = t.clone();
            tokio::spawn(async move { times(&t, 1).await[0] })
        };
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(t.clear());
        let waited = waiter.await.unwrap();
        assert!(waited < Duration::from_secs(3), "{waited:?}");
        assert!(!t.clear(), "nothing left to clear");
        assert!(!t.recover(change.slowdown.generation));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_acquire_sees_a_faster_rate_at_once() {
        let (t, _) = throttle(rate(1.0 / 60.0, 1));
        times(&t, 1).await;
        let t = Arc::new(t);
        let waiter = {
            let t = t.clone();
            tokio::spawn(async move { times(&t, 1).await[0] })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        t.set_rate(rate(10.0, 1));
        let waited = waiter.await.unwrap();
        assert!(waited < Duration::from_secs(2), "{waited:?}");
    }

    #[test]
    fn scaling_keeps_at_least_one_of_burst() {
        let r = Rate {
            per_second: 4.0,
            burst: 3,
        };
        assert_eq!(
            r.scaled(0.25),
            Rate {
                per_second: 1.0,
                burst: 1
            }
        );
        assert_eq!(r.interval(), Duration::from_millis(250));
    }
}
