//! Retry timing after a temporary failure: exponential backoff from `retry_initial`, doubling
//! per attempt, capped at `retry_max`, with +-20% jitter so a burst of deferred copies does not
//! come back as a burst.

use std::time::Duration;

/// Delay before attempt number `attempt + 1`, given that `attempt` attempts (>= 1) have failed.
/// `jitter` is a factor in `[-0.2, 0.2]` (drawn at random by the caller; fixed in tests).
pub fn backoff(attempt: u32, initial: Duration, max: Duration, jitter: f64) -> Duration {
    let exponent = attempt.saturating_sub(1).min(32);
    let base = initial.saturating_mul(1u32 << exponent.min(31)).min(max);
    let factor = 1.0 + jitter.clamp(-0.2, 0.2);
    base.mul_f64(factor).min(max.mul_f64(1.2))
}

/// A jitter factor drawn uniformly from `[-0.2, 0.2]`.
pub fn random_jitter() -> f64 {
    rand::random_range(-0.2..=0.2)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn doubles_from_initial_up_to_the_cap() {
        let got: Vec<u64> = (1..=8)
            .map(|a| backoff(a, 5 * S, 60 * S, 0.0).as_secs())
            .collect();
        assert_eq!(got, vec![5, 10, 20, 40, 60, 60, 60, 60]);
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        assert_eq!(backoff(2, 5 * S, 600 * S, 0.2), 12 * S);
        assert_eq!(backoff(2, 5 * S, 600 * S, -0.2), 8 * S);
        assert_eq!(backoff(2, 5 * S, 600 * S, 5.0), 12 * S, "clamped");
        for _ in 0..1000 {
            let j = random_jitter();
            assert!((-0.2..=0.2).contains(&j));
        }
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        assert_eq!(backoff(u32::MAX, 5 * S, 600 * S, 0.0), 600 * S);
    }
}
