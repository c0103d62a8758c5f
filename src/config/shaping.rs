//! Traffic-shaping keys: `[[provider]]` limits, `[shaping]` deferral rules and `[cluster]`.
//!
//! Rules are parsed into typed values here (a compiled regex, a checked factor), so a bad rule
//! stops the relay at start or is refused on reload, never at the first deferral.

use std::time::Duration;

use super::raw::{RawCluster, RawProvider, RawRule, RawShaping};
use super::values::{Problems, Secret, duration};

/// One `[[provider]]` entry: every limit is optional and overrides only that field of the
/// built-in entry with the same name (see `schedule::provider`).
#[derive(Debug, Clone, Default)]
pub struct ProviderConfig {
    pub name: String,
    /// Lower-cased; when non-empty they replace the built-in entry's domains.
    pub domains: Vec<String>,
    pub mx_suffixes: Vec<String>,
    pub messages_per_second: Option<PerSecond>,
    pub burst: Option<u32>,
    pub max_connections: Option<usize>,
    /// Transactions on one upstream connection before it is closed and a new one opened.
    pub max_deliveries_per_connection: Option<u32>,
}

/// A sustained message rate (messages per second) as a provider entry sets it: positive and
/// finite, checked when the config loads, so no throttle ever paces by zero, a negative number
/// or NaN.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct PerSecond(f64);

impl PerSecond {
    /// `None` unless `value` is a positive finite number.
    pub const fn new(value: f64) -> Option<PerSecond> {
        if value.is_finite() && value > 0.0 {
            Some(PerSecond(value))
        } else {
            None
        }
    }

    pub const fn get(self) -> f64 {
        self.0
    }
}

/// `[shaping]`: how deferral replies that mean "too fast" slow a provider down.
#[derive(Debug, Clone)]
pub struct ShapingConfig {
    /// Also use the built-in rules (after the configured ones).
    pub default_rules: bool,
    /// Configured rules, tried in order before the built-in ones; the first match wins.
    pub rules: Vec<ShapingRule>,
    /// Classify recipient domains the catalog does not know by their MX hosts (`mx_suffixes`).
    pub mx: Option<MxConfig>,
}

/// `[shaping] classify_by_mx = true`: how MX lookups are made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxConfig {
    /// Resolvers to ask (`ip:port`); empty: the system's (`/etc/resolv.conf`).
    pub nameservers: Vec<std::net::SocketAddr>,
    /// Longest an accepted message waits for the lookups of its domains; unanswered: `default`.
    pub timeout: Duration,
}

/// Default of `shaping.mx_timeout`.
pub const DEFAULT_MX_TIMEOUT: Duration = Duration::from_secs(2);

impl Default for ShapingConfig {
    fn default() -> Self {
        ShapingConfig {
            default_rules: true,
            rules: Vec::new(),
            mx: None,
        }
    }
}

/// A deferral reply pattern and what it does to the provider that sent it.
#[derive(Debug, Clone)]
pub struct ShapingRule {
    pub pattern: ReplyPattern,
    pub action: ShapingAction,
    /// How long the slowdown or suspension lasts before the provider recovers.
    pub duration: Duration,
    /// What the action applies to: the recipient's provider (its lane) or the upstream that
    /// answered (an ESP's own account limits).
    pub scope: RuleScope,
}

/// What a matched rule acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RuleScope {
    /// The recipient's provider: every upstream's deliveries to it (`[[provider]]` lane).
    #[default]
    Provider,
    /// The upstream that answered: every provider's deliveries through it.
    Upstream,
}

/// How a rule recognises a reply (the text is `"<code> <text>"`, e.g. `421 4.7.0 [TS01] ...`).
#[derive(Debug, Clone)]
pub enum ReplyPattern {
    /// Case-insensitive substring; brackets and dots are literal (`[TS01]`, `DT:SPM`).
    Contains(String),
    Regex(regex::Regex),
}

impl ReplyPattern {
    pub fn matches(&self, reply: &str) -> bool {
        match self {
            ReplyPattern::Contains(needle) => reply.to_ascii_lowercase().contains(needle),
            ReplyPattern::Regex(re) => re.is_match(reply),
        }
    }
}

impl std::fmt::Display for ReplyPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplyPattern::Contains(s) => write!(f, "contains {s:?}"),
            ReplyPattern::Regex(re) => write!(f, "regex {:?}", re.as_str()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ShapingAction {
    /// Multiply the provider's rate and concurrency by `factor` (0 < factor < 1).
    Slow { factor: f64 },
    /// Start no delivery to the provider at all (Yahoo's `TSS04`).
    Suspend,
}

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `redis://[USER@]HOST[:PORT][/DB]`, never with a password in it (a user name for a Redis
    /// ACL user may be there).
    pub redis_url: String,
    /// How many replicas are expected to share the limits: while Redis is unreachable each one
    /// paces at `rate / replicas`, so together they stay within the limit.
    pub replicas: u32,
    /// Redis' password (`AUTH`), from `cluster.password_env` or `cluster.password_file`; `None`
    /// for a Redis without one.
    pub password: Option<Secret>,
}

/// Default of `cluster.replicas`.
pub const DEFAULT_REPLICAS: u32 = 2;

pub(super) fn validate_providers(raw: Vec<RawProvider>, p: &mut Problems) -> Vec<ProviderConfig> {
    let mut out: Vec<ProviderConfig> = Vec::new();
    for (i, r) in raw.into_iter().enumerate() {
        let path = format!("provider[{i}]");
        let Some(name) = p.required(&format!("{path}.name"), r.name) else {
            continue;
        };
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            p.push(
                &format!("{path}.name"),
                "must be letters, digits, '-', '_' or '.' (it is a metric label)",
            );
        }
        if name == "all" {
            p.push(
                &format!("{path}.name"),
                "\"all\" is reserved: it names the global pause (mailveil_paused{provider=\"all\"})",
            );
        }
        if let Some(j) = out.iter().position(|o| o.name == name) {
            p.push(
                &format!("{path}.name"),
                format!("{name:?} is already used by provider[{j}]"),
            );
        }
        let rate = r.messages_per_second.and_then(|rate| {
            let typed = PerSecond::new(rate);
            if typed.is_none() {
                p.push(
                    &format!("{path}.messages_per_second"),
                    "must be a positive number",
                );
            }
            typed
        });
        let mut at_least_one = |key: &str, v: Option<u64>| match v {
            Some(0) => {
                p.push(&format!("{path}.{key}"), "must be at least 1");
                None
            }
            other => other,
        };
        let burst = at_least_one("burst", r.burst);
        let max_connections = at_least_one("max_connections", r.max_connections);
        let per_connection = at_least_one(
            "max_deliveries_per_connection",
            r.max_deliveries_per_connection,
        );
        let lower = |v: Option<Vec<String>>| {
            v.unwrap_or_default()
                .into_iter()
                .map(|d| d.to_ascii_lowercase())
                .collect()
        };
        out.push(ProviderConfig {
            name,
            domains: lower(r.domains),
            mx_suffixes: lower(r.mx_suffixes),
            messages_per_second: rate,
            burst: burst.map(|b| b.min(u32::MAX as u64) as u32),
            max_connections: max_connections.map(|c| c as usize),
            max_deliveries_per_connection: per_connection.map(|c| c.min(u32::MAX as u64) as u32),
        });
    }
    out
}

pub(super) fn validate_shaping(raw: Option<RawShaping>, p: &mut Problems) -> ShapingConfig {
    let Some(raw) = raw else {
        return ShapingConfig::default();
    };
    let mut rules = Vec::new();
    for (i, value) in raw.rule.into_iter().enumerate() {
        let path = format!("shaping.rule[{i}]");
        let Some(r) = super::read::deserialize_at::<RawRule>(value, &path, p) else {
            continue;
        };
        let pattern = match (r.contains, r.regex) {
            (Some(s), None) if !s.is_empty() => {
                Some(ReplyPattern::Contains(s.to_ascii_lowercase()))
            }
            (None, Some(re)) => match regex::RegexBuilder::new(&re)
                .case_insensitive(true)
                .size_limit(1 << 20)
                .build()
            {
                Ok(re) => Some(ReplyPattern::Regex(re)),
                Err(e) => {
                    // The parser draws the pattern with a caret under the fault over several
                    // lines; its last line says what is wrong.
                    let text = e.to_string();
                    let what = text.lines().last().unwrap_or_default();
                    let what = what.strip_prefix("error: ").unwrap_or(what);
                    p.push(
                        &format!("{path}.regex"),
                        format!("invalid regex {re:?}: {what}"),
                    );
                    None
                }
            },
            (Some(_), None) => {
                p.push(&format!("{path}.contains"), "must not be empty");
                None
            }
            (Some(_), Some(_)) => {
                p.push(&path, "give either contains or regex, not both");
                None
            }
            (None, None) => {
                if !p.is_broken(&format!("{path}.contains"))
                    && !p.is_broken(&format!("{path}.regex"))
                {
                    p.push(&path, "needs contains = \"text\" or regex = \"pattern\"");
                }
                None
            }
        };
        let action = match r.action.as_deref() {
            Some("slow") => {
                let factor = r.factor.unwrap_or(0.5);
                if !(factor > 0.0 && factor < 1.0) {
                    p.push(
                        &format!("{path}.factor"),
                        "must be greater than 0 and less than 1",
                    );
                }
                Some(ShapingAction::Slow { factor })
            }
            Some("suspend") => {
                if r.factor.is_some() {
                    p.push(
                        &format!("{path}.factor"),
                        "only applies to action = \"slow\"",
                    );
                }
                Some(ShapingAction::Suspend)
            }
            Some(other) => {
                p.push(
                    &format!("{path}.action"),
                    format!("{other:?} is not one of slow, suspend"),
                );
                None
            }
            None => {
                p.push(&format!("{path}.action"), "is required (slow or suspend)");
                None
            }
        };
        let dur = match r.duration {
            Some(d) => match duration(&d, &format!("{path}.duration"), p) {
                Some(Duration::ZERO) => {
                    p.push(&format!("{path}.duration"), "must be longer than 0");
                    None
                }
                other => other,
            },
            None => {
                p.push(&format!("{path}.duration"), "is required, e.g. \"10m\"");
                None
            }
        };
        if let (Some(pattern), Some(action), Some(duration)) = (pattern, action, dur) {
            rules.push(ShapingRule {
                pattern,
                action,
                duration,
                scope: RuleScope::Provider,
            });
        }
    }
    let timeout = raw
        .mx_timeout
        .and_then(|d| duration(&d, "shaping.mx_timeout", p))
        .unwrap_or(DEFAULT_MX_TIMEOUT);
    let nameservers: Vec<_> = raw
        .mx_nameservers
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(i, n)| p.socket_addr(&format!("shaping.mx_nameservers[{i}]"), n))
        .collect();
    let mx = raw.classify_by_mx.unwrap_or(false).then_some(MxConfig {
        nameservers,
        timeout,
    });
    ShapingConfig {
        default_rules: raw.default_rules.unwrap_or(true),
        rules,
        mx,
    }
}

/// True when a `redis://` URL carries a password (`redis://:PASS@host`, `redis://user:PASS@host`).
fn url_has_password(url: &str) -> bool {
    let rest = url.trim_start_matches("redis://");
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    authority.rsplit_once('@').is_some_and(|(userinfo, _)| {
        userinfo
            .split_once(':')
            .is_some_and(|(_, pass)| !pass.is_empty())
    })
}

pub(super) fn validate_cluster(raw: Option<RawCluster>, p: &mut Problems) -> Option<ClusterConfig> {
    let raw = raw?;
    let replicas = match raw.replicas {
        Some(0) => {
            p.push("cluster.replicas", "must be at least 1");
            DEFAULT_REPLICAS
        }
        Some(n) => n.min(u32::MAX as u64) as u32,
        None => DEFAULT_REPLICAS,
    };
    let password = p.secret(
        "cluster",
        "password",
        raw.password_env,
        raw.password_file,
        false,
    );
    match raw.redis_url {
        Some(url) if url.starts_with("redis://") && url_has_password(&url) => {
            p.push(
                "cluster.redis_url",
                "holds a password: secrets never sit in the file; remove it from the URL and name \
                 the variable that holds it in cluster.password_env (or a file in cluster.password_file)",
            );
            None
        }
        Some(url) if url.starts_with("redis://") => Some(ClusterConfig {
            redis_url: url,
            replicas,
            password,
        }),
        Some(url) if url.starts_with("rediss://") => {
            p.push(
                "cluster.redis_url",
                "rediss:// (TLS) is not supported; reach Redis over a private network or a TLS sidecar with redis://",
            );
            None
        }
        Some(_) => {
            p.push("cluster.redis_url", "must start with redis://");
            None
        }
        None => {
            p.push("cluster.redis_url", "is required in [cluster]");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    const UPSTREAM: &str = "[[upstream]]\nname = \"outbox\"\ndir = \"./outbox\"\n";

    fn problems(text: &str) -> Vec<String> {
        match Config::from_toml(&format!("{text}\n{UPSTREAM}")) {
            Ok(_) => vec![],
            Err(e) => e.problems.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn rules_parse_into_typed_values() {
        let c = Config::from_toml(&format!(
            r#"
[shaping]
default_rules = false
[[shaping.rule]]
contains = "[TS01]"
action = "slow"
factor = 0.25
duration = "2m"
[[shaping.rule]]
regex = '^421 .*too many'
action = "suspend"
duration = 30
{UPSTREAM}"#
        ))
        .unwrap();
        assert!(!c.shaping.default_rules);
        assert_eq!(c.shaping.rules.len(), 2);
        let r0 = &c.shaping.rules[0];
        assert_eq!(r0.action, ShapingAction::Slow { factor: 0.25 });
        assert_eq!(r0.duration, Duration::from_secs(120));
        assert!(r0.pattern.matches("421 4.7.0 [ts01] Messages deferred"));
        assert!(!r0.pattern.matches("421 4.7.0 TS01 without brackets"));
        let r1 = &c.shaping.rules[1];
        assert_eq!(r1.action, ShapingAction::Suspend);
        assert!(r1.pattern.matches("421 4.7.0 Too Many connections"));
        assert!(!r1.pattern.matches("451 too many connections"));
    }

    #[test]
    fn bad_rules_are_reported_with_key_paths() {
        let got = problems(
            r#"
[[shaping.rule]]
regex = "(unclosed"
action = "slow"
duration = "1m"
[[shaping.rule]]
contains = "x"
action = "halve"
duration = "1m"
[[shaping.rule]]
contains = "x"
action = "slow"
factor = 1.5
[[shaping.rule]]
action = "suspend"
duration = "1m"
bogus = 1
"#,
        );
        let has = |prefix: &str| got.iter().any(|g| g.starts_with(prefix));
        assert!(has("shaping.rule[0].regex: invalid regex"), "{got:?}");
        assert!(has("shaping.rule[1].action"), "{got:?}");
        assert!(has("shaping.rule[2].factor"), "{got:?}");
        assert!(has("shaping.rule[2].duration: is required"), "{got:?}");
        assert!(has("shaping.rule[3].bogus"), "{got:?}");
    }

    #[test]
    fn provider_limits_are_checked() {
        let got = problems(
            r#"
[[provider]]
name = "yahoo"
burst = 0
max_deliveries_per_connection = 0
messages_per_second = -1.0
[[provider]]
name = "yahoo"
"#,
        );
        for prefix in [
            "provider[0].burst",
            "provider[0].max_deliveries_per_connection",
            "provider[0].messages_per_second",
            "provider[1].name",
        ] {
            assert!(
                got.iter().any(|g| g.starts_with(prefix)),
                "{prefix}: {got:?}"
            );
        }
    }

    #[test]
    fn all_is_not_a_provider_name() {
        let got = problems("[[provider]]\nname = \"all\"\n");
        assert!(
            got.iter()
                .any(|g| g.starts_with("provider[0].name") && g.contains("reserved")),
            "{got:?}"
        );
    }

    #[test]
    fn cluster_keys() {
        let c = Config::from_toml(&format!(
            "[cluster]\nredis_url = \"redis://127.0.0.1:1/\"\nreplicas = 3\n{UPSTREAM}"
        ))
        .unwrap();
        let cluster = c.cluster.unwrap();
        assert_eq!(cluster.replicas, 3);
        let got = problems("[cluster]\nredis_url = \"rediss://h/\"\nreplicas = 0");
        assert!(
            got.iter().any(|g| g.starts_with("cluster.redis_url")),
            "{got:?}"
        );
        assert!(
            got.iter().any(|g| g.starts_with("cluster.replicas")),
            "{got:?}"
        );
        // Redis' password: never in the URL, always from the environment or a file.
        for url in ["redis://:s3cret@h/", "redis://user:s3cret@h:6379/0"] {
            let got = problems(&format!("[cluster]\nredis_url = \"{url}\""));
            assert!(
                got.iter()
                    .any(|g| g.starts_with("cluster.redis_url: holds a password")),
                "{url}: {got:?}"
            );
            assert!(!got.iter().any(|g| g.contains("s3cret")), "{got:?}");
        }
        let got = problems(
            "[cluster]\nredis_url = \"redis://h/\"\npassword_env = \"MAILVEIL_TEST_UNSET_REDIS_PW\"",
        );
        assert!(
            got.iter().any(|g| g.starts_with("cluster.password_env")
                && g.contains("MAILVEIL_TEST_UNSET_REDIS_PW")),
            "{got:?}"
        );
        let c = Config::from_toml(&format!(
            "[cluster]\nredis_url = \"redis://user@h/\"\n{UPSTREAM}"
        ))
        .unwrap();
        assert!(c.cluster.unwrap().password.is_none());
    }
}
