//! Fleet-wide shaping state: a slowdown or suspension that one replica decides after a
//! provider's "too fast" reply is shared through the cluster's Redis and applied by every
//! replica within a second, so three replicas do not each discover the same block.
//!
//! - [`Decision`] is the shared value: provider or upstream (the Redis field, see [`Target`]),
//!   action, factor (0 = suspend),
//!   optional limit overrides, when it ends (Unix ms of Redis' clock), the rule, the reply that
//!   caused it (already through the log redactor), the replica that decided.
//! - [`shared`] reads and writes it in one Redis hash, `mailveil:shaping` (merged in Redis:
//!   slowest factor and latest end win, as locally; the hash expires with its last entry).
//! - [`fleet`] is one replica's side: publish a local decision, poll the hash every
//!   [`shared::POLL_INTERVAL`], say which remote decisions (or clears) to apply. A receiver
//!   applies a remote decision for the time that remains and never publishes it again, so there
//!   is no ping-pong between replicas.
//!
//! Upstream-scoped decisions (an ESP's "too fast" reply, e.g. SES' `454 Throttling failure`)
//! travel the same way under the field `upstream:<name>` and are applied by every replica to
//! its upstream of the same name; `:` is in no provider or upstream name, so the two key spaces
//! never meet.
//!
//! Without `[cluster]` none of this runs: decisions stay local. While Redis does not answer,
//! decisions stay local too (one log line), and those still in force are shared when it answers.

pub mod fleet;
pub mod shared;

use serde::{Deserialize, Serialize};

use crate::config::{PerSecond, SetLimits, ShapingAction};

use super::throttle::Slowdown;

/// The label (one of [`crate::observe::metrics::SHAPING_ACTIONS`]) and `/status` word of an
/// action.
pub fn action_label(action: ShapingAction) -> &'static str {
    action.name()
}

/// The factor of an action: what [`Decision::factor`] carries (0 = suspended; 1 for `set`,
/// whose lowered limits travel in [`Decision::limits`]).
pub fn action_factor(action: ShapingAction) -> f64 {
    match action {
        ShapingAction::Slow { factor } => factor,
        ShapingAction::Suspend => 0.0,
        ShapingAction::Set(_) | ShapingAction::Defer | ShapingAction::Fail => 1.0,
    }
}

/// The local action a shared factor and its limits stand for.
pub fn action_of(factor: f64, limits: &Overrides) -> ShapingAction {
    if factor <= 0.0 {
        ShapingAction::Suspend
    } else if !limits.is_empty() {
        ShapingAction::Set(limits.to_set_limits())
    } else {
        ShapingAction::Slow {
            factor: factor.min(1.0),
        }
    }
}

/// Limits a `set` decision puts in force instead of the configured ones (absent: unchanged).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Overrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages_per_second: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_deliveries_per_connection: Option<u32>,
}

impl Overrides {
    pub fn is_empty(&self) -> bool {
        *self == Overrides::default()
    }

    /// The lowered limits as a `set` action applies them (a rate that is not a positive
    /// number is dropped).
    pub fn to_set_limits(&self) -> SetLimits {
        SetLimits {
            max_connections: self.max_connections.filter(|&c| c > 0),
            max_deliveries_per_connection: self.max_deliveries_per_connection.filter(|&d| d > 0),
            messages_per_second: self.messages_per_second.and_then(PerSecond::new),
        }
    }
}

impl From<SetLimits> for Overrides {
    fn from(limits: SetLimits) -> Overrides {
        Overrides {
            messages_per_second: limits.messages_per_second.map(PerSecond::get),
            max_connections: limits.max_connections,
            max_deliveries_per_connection: limits.max_deliveries_per_connection,
        }
    }
}

/// One provider's shaping state as the cluster holds it (the field of the hash is the
/// provider's name). A clear (an operator's `ctl shaping clear`) is an entry too, with
/// `cleared: true`, so every replica hears it once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// `slow`, `suspend` or `set`.
    pub action: String,
    /// Multiplier on rate and concurrency; 0 = suspended.
    pub factor: f64,
    #[serde(default, skip_serializing_if = "Overrides::is_empty")]
    pub limits: Overrides,
    /// When it ends: Unix milliseconds of Redis' clock (set by Redis when written; replicas
    /// compare it only with Redis' clock, never with their own).
    #[serde(default, deserialize_with = "lenient_ms")]
    pub expires_at_ms: u64,
    /// The rule that matched (its name or pattern).
    #[serde(default)]
    pub rule: String,
    /// The reply that caused it, through the log redactor (addresses redacted unless the log
    /// shows them).
    #[serde(default)]
    pub reply: String,
    /// The replica that decided (`HOSTNAME`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// Unique per write (a ULID): a replica acts on an entry once, and skips its own.
    pub id: String,
    /// An operator lifted the provider's shaping.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cleared: bool,
}

/// Redis' cjson may write a whole number of milliseconds as a float.
fn lenient_ms<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = f64::deserialize(d)?;
    Ok(if v.is_finite() && v > 0.0 {
        v as u64
    } else {
        0
    })
}

impl Decision {
    /// A decision taken here; `expires_at_ms` is filled in by Redis when it is written.
    pub fn new(action: ShapingAction, rule: &str, reply: String, by: Option<String>) -> Decision {
        Decision {
            action: action_label(action).to_string(),
            factor: action_factor(action),
            limits: match action {
                ShapingAction::Set(limits) => Overrides::from(limits),
                _ => Overrides::default(),
            },
            expires_at_ms: 0,
            rule: rule.to_string(),
            reply,
            by,
            id: ulid::Ulid::new().to_string(),
            cleared: false,
        }
    }

    /// An operator's clear, shown to every replica until `expires_at_ms`.
    pub fn clear(by: Option<String>) -> Decision {
        Decision {
            action: "clear".into(),
            factor: 1.0,
            limits: Overrides::default(),
            expires_at_ms: 0,
            rule: String::new(),
            reply: String::new(),
            by,
            id: ulid::Ulid::new().to_string(),
            cleared: true,
        }
    }
}

/// Where a slowdown in force comes from, as `/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// A reply this replica received.
    Local,
    /// Another replica's decision, read from the cluster's Redis.
    Fleet,
}

/// Why a lane is slowed down: what `/status` shows next to the factor and remaining time.
#[derive(Debug, Clone, PartialEq)]
pub struct Cause {
    pub rule: String,
    /// Already through the log redactor.
    pub reply: String,
    pub origin: Origin,
    /// With [`Origin::Fleet`]: the replica that decided, when known.
    pub by: Option<String>,
    /// Limits a `set` decision put in force (empty for slow and suspend).
    pub limits: Overrides,
}

/// One provider's active shaping in `GET /status` (`providers[].shaping`).
#[derive(Debug, Clone, Serialize)]
pub struct ShapingView {
    /// `slow`, `suspend` or `set`.
    pub action: String,
    /// Multiplier on rate and concurrency; 0 = suspended.
    pub factor: f64,
    /// Whole seconds until the configured limits return (rounded up).
    pub remaining_secs: u64,
    pub rule: String,
    /// The reply that caused it, addresses redacted as the log redacts them.
    pub reply: String,
    /// `local` (a reply this replica received) or `fleet` (another replica's decision).
    pub origin: Origin,
    /// With `fleet`: the replica that decided, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    #[serde(skip_serializing_if = "Overrides::is_empty")]
    pub limits: Overrides,
}

impl ShapingView {
    /// The view of `slowdown` (of a provider lane or an upstream), caused by `cause` (`None`:
    /// not known, shown with empty rule and reply).
    pub fn of(slowdown: &Slowdown, cause: Option<Cause>) -> ShapingView {
        let left = slowdown
            .until
            .saturating_duration_since(tokio::time::Instant::now());
        let cause = cause.unwrap_or(Cause {
            rule: String::new(),
            reply: String::new(),
            origin: Origin::Local,
            by: None,
            limits: Default::default(),
        });
        let limits = Overrides::from(slowdown.limits);
        ShapingView {
            action: action_label(action_of(slowdown.factor, &limits)).to_string(),
            factor: slowdown.factor,
            remaining_secs: left.as_secs() + u64::from(left.subsec_nanos() > 0),
            rule: cause.rule,
            reply: cause.reply,
            origin: cause.origin,
            by: cause.by,
            limits,
        }
    }
}

/// A provider name as the catalog allows it (letters, digits, `-`, `_`, `.`; at most 64): a
/// field of the hash naming anything else is ignored (it would become a metric label).
pub fn is_provider_name(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 64
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// The prefix of an upstream's field in the shared hash: `:` is in no provider or upstream
/// name (both are letters, digits, `-`, `_`, `.`), so a field names one or the other.
pub const UPSTREAM_PREFIX: &str = "upstream:";

/// What a field of the shared hash is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// A provider's lane (the field is its name).
    Provider(&'a str),
    /// An upstream (the field is [`UPSTREAM_PREFIX`] and its name).
    Upstream(&'a str),
}

impl<'a> Target<'a> {
    /// The target a field names; `None` for a field that names neither (it would become a
    /// metric label or a log field: ignored).
    pub fn of(field: &'a str) -> Option<Target<'a>> {
        match field.strip_prefix(UPSTREAM_PREFIX) {
            Some(name) => is_provider_name(name).then_some(Target::Upstream(name)),
            None => is_provider_name(field).then_some(Target::Provider(field)),
        }
    }

    /// The field of the shared hash this target's entry lives under.
    pub fn field(self) -> String {
        match self {
            Target::Provider(name) => name.to_string(),
            Target::Upstream(name) => format!("{UPSTREAM_PREFIX}{name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decision_round_trips_and_reads_what_redis_writes() {
        let d = Decision::new(
            ShapingAction::Suspend,
            "yahoo-tss04",
            "421 [TSS04]".into(),
            Some("relay-0".into()),
        );
        assert_eq!((d.action.as_str(), d.factor), ("suspend", 0.0));
        let back: Decision = serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
        assert_eq!(back, d);
        // cjson writes numbers with %.14g; a float of milliseconds is read as well.
        let lua =
            r#"{"action":"slow","factor":0.5,"expires_at_ms":1764676800123.0,"id":"X","by":null}"#;
        let d: Decision = serde_json::from_str(lua).unwrap();
        assert_eq!(d.expires_at_ms, 1_764_676_800_123);
        assert!(!d.cleared && d.limits.is_empty() && d.by.is_none());
    }

    #[test]
    fn factors_map_to_actions_and_names_are_checked() {
        let none = Overrides::default();
        assert_eq!(action_of(0.0, &none), ShapingAction::Suspend);
        assert_eq!(action_of(0.25, &none), ShapingAction::Slow { factor: 0.25 });
        assert_eq!(action_factor(ShapingAction::Slow { factor: 0.5 }), 0.5);
        // A `set` travels as factor 1 with its limits, and comes back as the same action.
        let set = SetLimits {
            max_connections: Some(1),
            messages_per_second: PerSecond::new(0.5),
            ..SetLimits::default()
        };
        let shared = Decision::new(ShapingAction::Set(set), "r", String::new(), None);
        assert_eq!((shared.action.as_str(), shared.factor), ("set", 1.0));
        assert_eq!(
            action_of(shared.factor, &shared.limits),
            ShapingAction::Set(set)
        );
        assert_eq!(action_of(0.0, &shared.limits), ShapingAction::Suspend);
        assert!(is_provider_name("yahoo") && is_provider_name("my-prov_1.x"));
        assert!(!is_provider_name("") && !is_provider_name("a b") && !is_provider_name("*"));
    }

    #[test]
    fn a_field_names_a_provider_or_an_upstream_never_both() {
        assert_eq!(Target::of("ses"), Some(Target::Provider("ses")));
        assert_eq!(Target::of("upstream:ses"), Some(Target::Upstream("ses")));
        assert_eq!(Target::Upstream("ses").field(), "upstream:ses");
        assert_eq!(Target::Provider("yahoo").field(), "yahoo");
        // No provider can be called `upstream:x`; an empty or odd upstream name is nothing.
        assert!(!is_provider_name("upstream:ses"));
        assert_eq!(Target::of("upstream:"), None);
        assert_eq!(Target::of("upstream:a b"), None);
        assert_eq!(Target::of("upstream:upstream:x"), None);
        assert_eq!(Target::of("other:x"), None);
    }
}
