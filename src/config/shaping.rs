//! Traffic-shaping keys: `[[provider]]` limits, `[shaping]` deferral rules and `[cluster]`.
//!
//! Rules are parsed into typed values here (a compiled regex, a checked factor), so a bad rule
//! stops the relay at start or is refused on reload, never at the first deferral.

use std::time::Duration;

use super::raw::{RawCluster, RawProvider, RawShaping};
use super::rule::ShapingRule;
pub use super::values::PerSecond;
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
    /// Copies to this provider leave only through upstreams with TLS on.
    pub require_tls: Option<bool>,
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
            require_tls: r.require_tls,
        });
    }
    out
}

pub(super) fn validate_shaping(raw: Option<RawShaping>, p: &mut Problems) -> ShapingConfig {
    let Some(raw) = raw else {
        return ShapingConfig::default();
    };
    let rules = super::rule::validate_rules(raw.rule, p);
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

    const UPSTREAM: &str = "[[upstream]]\nname = \"outbox\"\ndir = \"./outbox\"\n";

    fn problems(text: &str) -> Vec<String> {
        match Config::from_toml(&format!("{text}\n{UPSTREAM}")) {
            Ok(_) => vec![],
            Err(e) => e.problems.iter().map(|p| p.to_string()).collect(),
        }
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
