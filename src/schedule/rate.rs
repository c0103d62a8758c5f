//! A provider's message rate: the one value the local throttle ([`super::throttle`]) and the
//! Redis-shared limit ([`super::cluster`]) both pace by, in its own file so that neither of them
//! imports the other for it.

use std::time::Duration;

/// A message rate with burst.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

impl Rate {
    /// The slowest rate we pace at: one message an hour.
    const MIN_PER_SECOND: f64 = 1.0 / 3600.0;

    /// Time between two messages at the sustained rate.
    pub fn interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.per_second.max(Self::MIN_PER_SECOND))
    }

    /// This rate multiplied by `factor` (burst too, at least 1).
    pub fn scaled(self, factor: f64) -> Rate {
        Rate {
            per_second: (self.per_second * factor).max(Self::MIN_PER_SECOND),
            burst: ((f64::from(self.burst) * factor).floor() as u32).max(1),
        }
    }
}
