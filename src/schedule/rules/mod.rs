//! Which upstream replies mean "you are sending too fast" (or "come back later"), and what they
//! do to the copy and to the provider.
//!
//! Configured `[[shaping.rule]]` entries are tried first, then (unless `[shaping]
//! default_rules = false`) the built-in ones ([`catalog`]); the first match wins. A rule looks
//! at a reply's code class (4xx, 5xx or both), its enhanced status code and its text. The
//! matched rule also classifies the copy ([`Verdict`]): a 5xx matched by any rule but a `fail`
//! one is a deferral (retried, never bounced), and a 4xx matched by a `fail` rule fails at once.
//! A rule with a threshold acts only on the N-th match within its window ([`Thresholds`]),
//! counted across the fleet with `[cluster]` ([`shared`]).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{ShapingAction, ShapingConfig, ShapingRule, Threshold};
use crate::upstream::UpstreamError;

use super::cluster::SharedLimits;

pub mod catalog;
pub mod shared;

pub use catalog::built_in;

/// The rules in force for a configuration, in matching order.
pub fn for_config(config: &ShapingConfig) -> Vec<ShapingRule> {
    let mut rules = config.rules.clone();
    if config.default_rules {
        rules.extend(built_in());
        rules.extend(super::esp_rules::built_in());
    }
    rules
}

/// The upstream's reply in a failure, as rules see it: its code and the text after the code.
/// `None` for failures without a reply (connect, TLS, timeout) and for AUTH, whose replies
/// are about credentials, not pace.
pub fn reply_of(error: &UpstreamError) -> Option<(u16, &str)> {
    match error {
        UpstreamError::Rejected { code, text, .. } | UpstreamError::Refused { code, text, .. } => {
            Some((*code, text.as_str()))
        }
        _ => None,
    }
}

/// The first rule matching the failure's reply.
pub fn find<'a>(rules: &'a [ShapingRule], error: &UpstreamError) -> Option<&'a ShapingRule> {
    let (code, text) = reply_of(error)?;
    rules.iter().find(|r| r.matches(code, text))
}

/// What a failed attempt means for its copy, after the rules had their say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Tried again later (backoff, `max_queue_time`).
    Deferred,
    /// Never retried; failed (and bounced when configured).
    Failed,
}

/// Classifies a failure: by the matched rule when there is one (a `fail` rule fails a reply to
/// this message at once; any other rule makes it a deferral, 5xx included), else by the error
/// itself (4xx and connection trouble deferred, 5xx failed). A session refused at the greeting
/// stays deferred whatever rule matches: it says nothing about this message.
pub fn verdict(error: &UpstreamError, rule: Option<&ShapingRule>) -> Verdict {
    let about_the_message = matches!(error, UpstreamError::Rejected { .. });
    match rule.map(|r| r.action) {
        Some(ShapingAction::Fail) if about_the_message => Verdict::Failed,
        Some(_) if reply_of(error).is_some() => Verdict::Deferred,
        _ if error.is_temporary() => Verdict::Deferred,
        _ => Verdict::Failed,
    }
}

/// Counts each rule's matches per lane (or upstream) for rules with a threshold: the action is
/// taken on the match that brings the count within the window to the threshold, and on every
/// later one while the count stays there. This replica's own matches are always counted here;
/// with `[cluster]` the fleet's count in Redis ([`shared::SharedCount`]) decides while Redis
/// answers, and this one when it does not.
#[derive(Default)]
pub struct Thresholds {
    /// (rule name, lane or upstream name) -> instants of recent matches, oldest first.
    seen: Mutex<HashMap<(String, String), VecDeque<Instant>>>,
    /// With `[cluster]`: the fleet-wide count.
    shared: Option<Arc<shared::SharedCount>>,
}

impl Thresholds {
    /// Counting in memory, and with `cluster` also across the fleet.
    pub fn new(cluster: Option<Arc<SharedLimits>>) -> Thresholds {
        Thresholds {
            seen: Mutex::default(),
            shared: cluster.map(|c| Arc::new(shared::SharedCount::new(c))),
        }
    }

    /// The fleet-wide count, with `[cluster]`.
    pub fn shared(&self) -> Option<Arc<shared::SharedCount>> {
        self.shared.clone()
    }

    /// Records a match of `rule` on `target`; true when the action should be taken now.
    pub fn reached(&self, rule: &str, target: &str, threshold: Threshold) -> bool {
        self.reached_at(rule, target, threshold, Instant::now())
    }

    fn reached_at(&self, rule: &str, target: &str, threshold: Threshold, now: Instant) -> bool {
        let mut seen = self.seen.lock().expect("not poisoned");
        // Forget counters nobody matched for a day, so renamed rules or gone lanes do not pile up.
        if seen.len() > 1024 {
            let day = Duration::from_secs(86_400);
            seen.retain(|_, v| v.back().is_some_and(|t| now.duration_since(*t) < day));
        }
        let hits = seen
            .entry((rule.to_string(), target.to_string()))
            .or_default();
        while hits
            .front()
            .is_some_and(|t| now.duration_since(*t) >= threshold.window)
        {
            hits.pop_front();
        }
        hits.push_back(now);
        let count = threshold.count as usize;
        while hits.len() > count {
            hits.pop_front();
        }
        hits.len() >= count
    }

    /// Matches of `rule` on `target` within its window so far (for tests and status).
    pub fn count(&self, rule: &str, target: &str) -> usize {
        let seen = self.seen.lock().expect("not poisoned");
        seen.get(&(rule.to_string(), target.to_string()))
            .map_or(0, VecDeque::len)
    }
}

#[cfg(test)]
mod tests;
