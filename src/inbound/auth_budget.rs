//! The AUTH failure budget: token buckets (governor's GCRA) of failed password checks, one per
//! source and one for the whole relay.
//!
//! Why: the per-connection delay in `auth.rs` slows one connection, not a fleet of them; 900
//! parallel connections from one address made 374 guesses a second. A budget keyed by source
//! (not by connection) survives reconnects:
//! - each failed check takes a token from the source's bucket (`access.auth_failures_per_source`,
//!   e.g. `20/10m`: 20 in a row, one back every 30 s). The failure that takes the last token bans
//!   the source for `access.auth_ban`: while banned, AUTH is answered `421 4.7.0` before any
//!   password is checked, and an outsider is refused at connect (see `admission.rs`);
//! - each failed check also takes a token from the relay's bucket (`access.auth_failures_total`);
//!   while it is empty every AUTH is answered `421 4.7.0` unchecked until a token is back, which
//!   bounds a fleet spread over many addresses.
//!
//! A cheap check (the `*_env`/`*_file` passwords) runs with the gate and the count under one
//! lock ([`AuthBudget::attempt`]), so parallel connections cannot slip extra checks past a ban.
//! A slow one (argon2, users file) never holds the lock: the session takes a hashing permit,
//! asks the gate again ([`AuthBudget::gate`]), hashes, then counts a failure with
//! [`AuthBudget::failed`]; at most `credentials::MAX_PARALLEL_HASHES` checks can be in flight
//! past a ban that begins meanwhile. Successful logins cost nothing.
//!
//! Memory is bounded without a limit of its own: a source's bucket is forgotten once it is full
//! again ([`RateLimiter::retain_recent`]) and a ban once it ends; every entry needs a failure,
//! and failures are bounded by the relay's bucket.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::HashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::time::Instant;

use super::access::Source;
use crate::config::{AccessConfig, FailureBudget};
use crate::schedule::throttle::TokioClock;

type PerSource =
    RateLimiter<Source, HashMapStateStore<Source>, TokioClock, StateInformationMiddleware>;
type Total = RateLimiter<NotKeyed, InMemoryState, TokioClock, StateInformationMiddleware>;

/// Entries kept before stale ones are swept (a sweep walks them all).
const SWEEP_ABOVE: usize = 1024;

/// Shortest time between two reports that the relay's budget ran out.
const NOTICE_INTERVAL: Duration = Duration::from_secs(60);

/// Whether a password may be checked now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gate {
    Open,
    /// This source used its budget; refused unchecked until `until`.
    Banned {
        until: Instant,
    },
    /// The relay's budget is used up; every source is refused unchecked until `until`.
    Exhausted {
        until: Instant,
    },
}

/// What one AUTH attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attempt {
    Succeeded,
    /// The password was checked and was wrong.
    Failed {
        /// This failure took the source's last token: banned for this long.
        banned: Option<Duration>,
        /// This failure took the relay's last token (reported at most once a minute, so a
        /// sustained attack does not write a log line per refill).
        exhausted: bool,
    },
    /// Not checked: the gate was closed.
    Refused(Gate),
}

struct Inner {
    per_source: PerSource,
    total: Total,
    bans: HashMap<Source, Instant>,
    closed_until: Option<Instant>,
    last_notice: Option<Instant>,
}

pub(crate) struct AuthBudget {
    per_source: FailureBudget,
    total: FailureBudget,
    ban: Duration,
    inner: Mutex<Inner>,
}

fn quota(budget: FailureBudget) -> Quota {
    let burst = NonZeroU32::new(budget.count).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(budget.refill_interval().max(Duration::from_nanos(1)))
        .expect("period is positive")
        .allow_burst(burst)
}

impl AuthBudget {
    pub fn new(access: &AccessConfig) -> AuthBudget {
        let clock = TokioClock::new();
        AuthBudget {
            per_source: access.auth_failures_per_source,
            total: access.auth_failures_total,
            ban: access.auth_ban,
            inner: Mutex::new(Inner {
                per_source: RateLimiter::hashmap_with_clock(
                    quota(access.auth_failures_per_source),
                    clock.clone(),
                )
                .with_middleware::<StateInformationMiddleware>(),
                total: RateLimiter::direct_with_clock(quota(access.auth_failures_total), clock)
                    .with_middleware::<StateInformationMiddleware>(),
                bans: HashMap::new(),
                closed_until: None,
                last_notice: None,
            }),
        }
    }

    /// True when this budget was built from the same limits (a reload left them alone).
    pub fn has_limits_of(&self, access: &AccessConfig) -> bool {
        self.per_source == access.auth_failures_per_source
            && self.total == access.auth_failures_total
            && self.ban == access.auth_ban
    }

    /// Whether `source` may have a password checked now (nothing is counted).
    pub fn gate(&self, source: Source) -> Gate {
        let inner = self.inner.lock().expect("not poisoned");
        inner.gate(source, Instant::now())
    }

    /// Runs `check` (the password comparison) if the gate is open, and counts a failure.
    pub fn attempt(&self, source: Source, check: impl FnOnce() -> bool) -> Attempt {
        let now = Instant::now();
        let mut inner = self.inner.lock().expect("not poisoned");
        match inner.gate(source, now) {
            Gate::Open => {}
            closed => return Attempt::Refused(closed),
        }
        if check() {
            return Attempt::Succeeded;
        }
        self.count_failure(&mut inner, source, now)
    }

    /// Counts a failed check made outside the lock (a slow one, after [`AuthBudget::gate`]).
    pub fn failed(&self, source: Source) -> Attempt {
        let now = Instant::now();
        let mut inner = self.inner.lock().expect("not poisoned");
        self.count_failure(&mut inner, source, now)
    }

    fn count_failure(&self, inner: &mut Inner, source: Source, now: Instant) -> Attempt {
        let banned = match inner.per_source.check_key(&source) {
            Ok(state) if state.remaining_burst_capacity() > 0 => None,
            // The last token (or none left, which the ban normally prevents): banned at least
            // until the bucket holds a token again, so a ban shorter than the refill cannot
            // open a gap.
            _ => Some(self.ban.max(self.per_source.refill_interval())),
        };
        if let Some(ban) = banned {
            inner.bans.insert(source, now + ban);
        }
        let exhausted = match inner.total.check() {
            Ok(state) if state.remaining_burst_capacity() > 0 => false,
            _ => {
                inner.closed_until = Some(now + self.total.refill_interval());
                let quiet = inner
                    .last_notice
                    .is_none_or(|at| now.duration_since(at) >= NOTICE_INTERVAL);
                if quiet {
                    inner.last_notice = Some(now);
                }
                quiet
            }
        };
        if inner.per_source.len() > SWEEP_ABOVE || inner.bans.len() > SWEEP_ABOVE {
            inner.per_source.retain_recent();
            inner.bans.retain(|_, until| *until > now);
        }
        Attempt::Failed { banned, exhausted }
    }

    #[cfg(test)]
    pub fn tracked(&self) -> (usize, usize) {
        let inner = self.inner.lock().expect("not poisoned");
        (inner.per_source.len(), inner.bans.len())
    }
}

impl Inner {
    fn gate(&self, source: Source, now: Instant) -> Gate {
        if let Some(&until) = self.bans.get(&source)
            && until > now
        {
            return Gate::Banned { until };
        }
        match self.closed_until {
            Some(until) if until > now => Gate::Exhausted { until },
            _ => Gate::Open,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inbound::tests::support::settings;

    fn budget(per_source: &str, total: &str, ban: u64) -> AuthBudget {
        let mut access = settings().access;
        access.auth_failures_per_source = per_source.parse().unwrap();
        access.auth_failures_total = total.parse().unwrap();
        access.auth_ban = Duration::from_secs(ban);
        AuthBudget::new(&access)
    }

    fn src(ip: &str) -> Source {
        Source::of(ip.parse().unwrap())
    }

    fn fail(b: &AuthBudget, s: Source) -> Attempt {
        b.attempt(s, || false)
    }

    #[tokio::test(start_paused = true)]
    async fn a_source_gets_its_burst_then_a_ban_that_survives_reconnects() {
        let b = budget("3/1m", "100/1m", 300);
        let a = src("192.0.2.1");
        for _ in 0..2 {
            assert_eq!(
                fail(&b, a),
                Attempt::Failed {
                    banned: None,
                    exhausted: false
                }
            );
        }
        assert_eq!(
            fail(&b, a),
            Attempt::Failed {
                banned: Some(Duration::from_secs(300)),
                exhausted: false
            }
        );
        // Refused before the check runs, even with the right password.
        let mut checked = false;
        let refused = b.attempt(a, || {
            checked = true;
            true
        });
        assert!(
            matches!(refused, Attempt::Refused(Gate::Banned { .. })),
            "{refused:?}"
        );
        assert!(!checked, "no password is checked while banned");
        // Another source is not affected.
        assert_eq!(b.attempt(src("192.0.2.2"), || true), Attempt::Succeeded);
        tokio::time::advance(Duration::from_secs(299)).await;
        assert!(matches!(b.gate(a), Gate::Banned { .. }));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(b.gate(a), Gate::Open);
        // After five minutes the bucket is full again: the burst, then the next ban.
        for _ in 0..2 {
            assert!(matches!(fail(&b, a), Attempt::Failed { banned: None, .. }));
        }
        assert!(matches!(
            fail(&b, a),
            Attempt::Failed {
                banned: Some(_),
                ..
            }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn failures_counted_after_a_slow_check_use_the_same_budget() {
        // A slow check runs outside the lock: gate, check, then `failed`.
        let b = budget("2/1m", "100/1m", 60);
        let a = src("192.0.2.1");
        assert_eq!(b.gate(a), Gate::Open);
        assert!(matches!(b.failed(a), Attempt::Failed { banned: None, .. }));
        assert!(matches!(
            b.failed(a),
            Attempt::Failed {
                banned: Some(_),
                ..
            }
        ));
        assert!(matches!(b.gate(a), Gate::Banned { .. }));
        // Mixed with cheap checks: one budget.
        assert!(matches!(b.attempt(a, || true), Attempt::Refused(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn successes_cost_nothing() {
        let b = budget("2/1m", "2/1m", 60);
        let a = src("192.0.2.1");
        for _ in 0..50 {
            assert_eq!(b.attempt(a, || true), Attempt::Succeeded);
        }
        assert!(matches!(fail(&b, a), Attempt::Failed { banned: None, .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn the_relay_budget_holds_a_fleet_of_sources_to_its_rate() {
        // Each source may fail 10 times; together they may fail 5 times, then one per 12 s.
        let b = budget("10/1m", "5/1m", 60);
        let mut checks = 0;
        let mut refused = 0;
        for second in 0..60u32 {
            for host in 0..50u32 {
                let s = src(&format!("10.0.{}.{}", host / 200, host % 200 + 1));
                match fail(&b, s) {
                    Attempt::Failed { .. } => checks += 1,
                    Attempt::Refused(Gate::Exhausted { .. }) => refused += 1,
                    other => panic!("second {second}: {other:?}"),
                }
            }
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        // 5 at once, then one per 12 s over the minute.
        assert!((9..=10).contains(&checks), "{checks} checks");
        assert_eq!(checks + refused, 3000);
        // A legitimate user is refused too while the relay's budget is empty: the price of
        // bounding a distributed attack; it reopens with the next token.
        assert!(matches!(fail(&b, src("10.1.0.1")), Attempt::Failed { .. }));
        assert!(matches!(b.gate(src("192.0.2.9")), Gate::Exhausted { .. }));
        tokio::time::advance(Duration::from_secs(12)).await;
        assert_eq!(b.attempt(src("192.0.2.9"), || true), Attempt::Succeeded);
    }

    #[tokio::test(start_paused = true)]
    async fn stale_entries_are_swept() {
        let b = budget("2/2s", "100000/1s", 1);
        for host in 0..(SWEEP_ABOVE as u32 + 10) {
            fail(&b, src(&format!("10.{}.{}.1", host / 250, host % 250)));
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        fail(&b, src("192.0.2.1"));
        let (keys, bans) = b.tracked();
        assert!(keys <= 2 && bans <= 1, "{keys} keys, {bans} bans kept");
    }
}
