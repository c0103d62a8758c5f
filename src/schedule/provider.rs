//! The provider of a recipient: which big mailbox provider's rules its copy is paced by, and
//! the limits of that provider.
//!
//! Built-in entries cover the providers that throttle hard, with conservative default limits
//! (see `docs/shaping.md` for where the numbers come from); `[[provider]]` entries in the config
//! add new providers or override a built-in one field by field, by name. Anything else is
//! `default`, which is unthrottled unless a `[[provider]] name = "default"` entry sets limits.

use std::collections::HashMap;

use crate::config::{PerSecond, ProviderConfig};
use crate::privacy::PlannedDelivery;
use crate::spool::DeliveryRecord;

/// Name of the lane for recipients no catalog entry claims.
pub const DEFAULT_PROVIDER: &str = "default";

/// How fast, and over how many connections, one provider may be sent to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProviderLimits {
    /// Sustained message rate; `None` is unthrottled.
    pub messages_per_second: Option<PerSecond>,
    /// Messages that may go back to back before the rate applies (GCRA burst).
    pub burst: u32,
    /// Deliveries in flight (= upstream connections busy) at once; `None`: what the upstreams
    /// allow.
    pub max_connections: Option<usize>,
    /// Transactions on one connection before it is closed and a fresh one opened; `None`: the
    /// upstream's own limit.
    pub max_deliveries_per_connection: Option<u32>,
    /// Copies leave only through upstreams with TLS on (`[[provider]] require_tls`); with none
    /// configured they wait (deferred), never sent in plaintext.
    pub require_tls: bool,
}

impl ProviderLimits {
    /// No limits at all: the `default` lane and configured providers without limits.
    pub const UNLIMITED: ProviderLimits = ProviderLimits {
        messages_per_second: None,
        burst: 1,
        max_connections: None,
        max_deliveries_per_connection: None,
        require_tls: false,
    };

    const fn new(rate: f64, burst: u32, connections: usize, per_connection: u32) -> Self {
        ProviderLimits {
            messages_per_second: PerSecond::new(rate),
            burst,
            max_connections: Some(connections),
            max_deliveries_per_connection: Some(per_connection),
            require_tls: false,
        }
    }

    const fn tls_required(self) -> Self {
        ProviderLimits {
            require_tls: true,
            ..self
        }
    }

    /// These limits with every field the config sets replaced.
    fn overridden_by(self, p: &ProviderConfig) -> ProviderLimits {
        ProviderLimits {
            messages_per_second: p.messages_per_second.or(self.messages_per_second),
            burst: p.burst.unwrap_or(self.burst),
            max_connections: p.max_connections.or(self.max_connections),
            max_deliveries_per_connection: p
                .max_deliveries_per_connection
                .or(self.max_deliveries_per_connection),
            require_tls: p.require_tls.unwrap_or(self.require_tls),
        }
    }
}

struct BuiltIn {
    name: &'static str,
    domains: &'static [&'static str],
    /// Host-name endings of the provider's MX servers, for `[shaping] classify_by_mx`: a domain
    /// hosted by the provider (a company on Google Workspace, say) is throttled with it.
    mx_suffixes: &'static [&'static str],
    limits: ProviderLimits,
}

/// The built-in catalog. Limits are per relay (or per cluster with `[cluster]`) and deliberately
/// conservative: a sender without an established reputation that stays under them should rarely
/// see a "too fast" deferral. Few providers publish numbers: connections and deliveries per
/// connection follow KumoMTA's published shaping data where it has them (sources per number in
/// `docs/shaping.md`, "The built-in catalog"); rates are mailveil's own conservative choice.
const BUILT_IN: &[BuiltIn] = &[
    BuiltIn {
        name: "yahoo",
        mx_suffixes: &[".yahoodns.net"],
        domains: &[
            "yahoo.com",
            "ymail.com",
            "rocketmail.com",
            "aol.com",
            "aim.com",
            "yahoo.co.uk",
            "yahoo.co.jp",
            "yahoo.fr",
            "yahoo.de",
        ],
        // 20 per connection, "provided by Yahoo directly": KumoMTA policy-extras/shaping.toml.
        limits: ProviderLimits::new(2.0, 10, 4, 20),
    },
    BuiltIn {
        name: "netease",
        mx_suffixes: &[".netease.com"],
        domains: &[
            "163.com",
            "126.com",
            "yeah.net",
            "188.com",
            "vip.163.com",
            "vip.126.com",
        ],
        // 7 per connection: KumoMTA community shaping.toml (163.com).
        limits: ProviderLimits::new(1.0, 5, 2, 7),
    },
    BuiltIn {
        name: "qq",
        mx_suffixes: &[".qq.com"],
        domains: &["qq.com", "foxmail.com", "vip.qq.com"],
        // 8 per connection and TLS required: KumoMTA community shaping.toml (qq.com).
        limits: ProviderLimits::new(1.0, 5, 2, 8).tls_required(),
    },
    BuiltIn {
        name: "google",
        mx_suffixes: &[".google.com", ".googlemail.com"],
        domains: &["gmail.com", "googlemail.com"],
        // 5 connections across the provider, 50 per connection: KumoMTA policy-extras/shaping.toml.
        limits: ProviderLimits::new(10.0, 50, 5, 50),
    },
    BuiltIn {
        name: "microsoft",
        mx_suffixes: &[".protection.outlook.com", ".mx.microsoft"],
        domains: &[
            "outlook.com",
            "hotmail.com",
            "live.com",
            "msn.com",
            "hotmail.co.uk",
            "outlook.fr",
        ],
        // 5 connections, 50 per connection: KumoMTA policy-extras/shaping.toml (outlook, office365).
        limits: ProviderLimits::new(5.0, 20, 5, 50),
    },
    BuiltIn {
        name: "apple",
        mx_suffixes: &[".mail.icloud.com"],
        domains: &["icloud.com", "me.com", "mac.com"],
        // 10 connections across the provider, 5 per connection: KumoMTA
        // policy-extras/shaping.toml, citing https://support.apple.com/en-us/102322.
        limits: ProviderLimits::new(5.0, 20, 10, 5),
    },
];

/// Names of the built-in providers.
pub const BUILT_IN_NAMES: &[&str] = &["yahoo", "netease", "qq", "google", "microsoft", "apple"];

#[derive(Debug, Clone)]
pub struct ProviderCatalog {
    by_domain: HashMap<String, String>,
    /// (host-name ending, provider), longest ending first.
    by_mx_suffix: Vec<(String, String)>,
    names: Vec<String>,
    limits: HashMap<String, ProviderLimits>,
}

/// One catalog entry while the built-in and configured ones are merged.
struct Entry {
    name: String,
    domains: Vec<String>,
    mx_suffixes: Vec<String>,
    limits: ProviderLimits,
}

impl ProviderCatalog {
    /// Built-in entries overridden or extended by the configured ones.
    pub fn new(configured: &[ProviderConfig]) -> Self {
        let strings = |v: &[&str]| v.iter().map(|d| d.to_string()).collect();
        let mut entries: Vec<Entry> = BUILT_IN
            .iter()
            .map(|b| Entry {
                name: b.name.to_string(),
                domains: strings(b.domains),
                mx_suffixes: strings(b.mx_suffixes),
                limits: b.limits,
            })
            .collect();
        entries.push(Entry {
            name: DEFAULT_PROVIDER.into(),
            domains: Vec::new(),
            mx_suffixes: Vec::new(),
            limits: ProviderLimits::UNLIMITED,
        });
        for p in configured {
            match entries.iter_mut().find(|e| e.name == p.name) {
                Some(entry) => {
                    if !p.domains.is_empty() {
                        entry.domains = p.domains.clone();
                    }
                    if !p.mx_suffixes.is_empty() {
                        entry.mx_suffixes = p.mx_suffixes.clone();
                    }
                    entry.limits = entry.limits.overridden_by(p);
                }
                None => entries.push(Entry {
                    name: p.name.clone(),
                    domains: p.domains.clone(),
                    mx_suffixes: p.mx_suffixes.clone(),
                    limits: ProviderLimits::UNLIMITED.overridden_by(p),
                }),
            }
        }
        let mut by_domain = HashMap::new();
        let mut by_mx_suffix = Vec::new();
        let mut names = Vec::new();
        let mut limits = HashMap::new();
        for e in entries {
            for d in e.domains {
                by_domain.insert(d.to_ascii_lowercase(), e.name.clone());
            }
            for suffix in e.mx_suffixes {
                let suffix = suffix.trim_end_matches('.').to_ascii_lowercase();
                let suffix = if suffix.starts_with('.') {
                    suffix
                } else {
                    format!(".{suffix}")
                };
                by_mx_suffix.push((suffix, e.name.clone()));
            }
            limits.insert(e.name.clone(), e.limits);
            if e.name != DEFAULT_PROVIDER {
                names.push(e.name);
            }
        }
        by_mx_suffix.sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        names.push(DEFAULT_PROVIDER.to_string());
        ProviderCatalog {
            by_domain,
            by_mx_suffix,
            names,
            limits,
        }
    }

    /// True when the catalog knows the address's domain (no MX lookup needed).
    pub fn knows(&self, address: &str) -> bool {
        self.classify(address) != DEFAULT_PROVIDER
    }

    /// The provider whose MX host-name endings match the first of `hosts` (in preference order)
    /// that matches any; `None`: hosted by nobody in the catalog.
    pub fn classify_mx(&self, hosts: &[String]) -> Option<&str> {
        hosts.iter().find_map(|host| {
            let host = format!(".{}", host.trim_end_matches('.').to_ascii_lowercase());
            self.by_mx_suffix
                .iter()
                .find(|(suffix, _)| host.ends_with(suffix.as_str()))
                .map(|(_, name)| name.as_str())
        })
    }

    /// The provider lane of one address (by its domain, case-insensitively).
    pub fn classify(&self, address: &str) -> &str {
        let domain = address.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        self.by_domain
            .get(&domain)
            .map(String::as_str)
            .unwrap_or(DEFAULT_PROVIDER)
    }

    /// Every provider name, `default` last: the bounded label set of the metrics.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Divides each planned delivery by provider lane, so one slow provider never holds another
    /// provider's recipients (envelope recipients are only divided, never changed).
    /// `by_mx` maps domains the catalog does not list to a provider found by their MX hosts.
    /// With `by_domain`, each delivery is divided by recipient domain too (direct delivery:
    /// each domain has its own servers).
    pub fn divide(
        &self,
        planned: Vec<PlannedDelivery>,
        by_mx: &HashMap<String, String>,
        by_domain: bool,
    ) -> Vec<DeliveryRecord> {
        let mut out = Vec::with_capacity(planned.len());
        for delivery in planned {
            // (provider, domain when dividing by domain, recipients)
            let mut lanes: Vec<(String, String, Vec<String>)> = Vec::new();
            for rcpt in delivery.rcpt_to {
                let domain = rcpt.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
                let domain = domain.trim_end_matches('.').to_ascii_lowercase();
                let mut provider = self.classify(&rcpt);
                if !by_mx.is_empty()
                    && !self.knows(&rcpt)
                    && let Some(p) = by_mx.get(&domain)
                {
                    provider = p;
                }
                let part = if by_domain { domain } else { String::new() };
                match lanes
                    .iter_mut()
                    .find(|(p, d, _)| p == provider && *d == part)
                {
                    Some((_, _, rcpts)) => rcpts.push(rcpt),
                    None => lanes.push((provider.to_string(), part, vec![rcpt])),
                }
            }
            for (provider, _, rcpt_to) in lanes {
                out.push(DeliveryRecord {
                    planned: PlannedDelivery {
                        rcpt_to,
                        rewrite: delivery.rewrite.clone(),
                    },
                    provider,
                });
            }
        }
        out
    }

    /// The limits of `provider`; unknown names (a lane from an older config) are unlimited.
    pub fn limits(&self, provider: &str) -> ProviderLimits {
        self.limits
            .get(provider)
            .copied()
            .unwrap_or(ProviderLimits::UNLIMITED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_domains_and_default() {
        let c = ProviderCatalog::new(&[]);
        assert_eq!(c.classify("a@Yahoo.COM"), "yahoo");
        assert_eq!(c.classify("a@aol.com"), "yahoo");
        assert_eq!(c.classify("a@vip.163.com"), "netease");
        assert_eq!(c.classify("a@yeah.net"), "netease");
        assert_eq!(c.classify("a@foxmail.com"), "qq");
        assert_eq!(c.classify("a@msn.com"), "microsoft");
        assert_eq!(c.classify("a@mac.com"), "apple");
        let hosts = |h: &[&str]| h.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            c.classify_mx(&hosts(&["mta5.am0.yahoodns.net."])),
            Some("yahoo")
        );
        assert_eq!(
            c.classify_mx(&hosts(&["mx.example.org", "aspmx.l.GOOGLE.com"])),
            Some("google")
        );
        assert_eq!(
            c.classify_mx(&hosts(&["example-com.mail.protection.outlook.com"])),
            Some("microsoft")
        );
        assert_eq!(c.classify_mx(&hosts(&["notgoogle.com"])), None);
        assert_eq!(c.classify_mx(&hosts(&["mx.example.org"])), None);
        assert_eq!(c.classify("a@example.org"), DEFAULT_PROVIDER);
        assert_eq!(c.classify("no-domain"), DEFAULT_PROVIDER);
    }

    #[test]
    fn built_in_names_match_the_table() {
        let names: Vec<&str> = BUILT_IN.iter().map(|b| b.name).collect();
        assert_eq!(names, BUILT_IN_NAMES);
    }

    #[test]
    fn every_built_in_has_complete_conservative_limits() {
        let c = ProviderCatalog::new(&[]);
        for name in BUILT_IN_NAMES {
            let l = c.limits(name);
            let rate = l
                .messages_per_second
                .expect("built-ins are throttled")
                .get();
            assert!(rate > 0.0 && rate <= 10.0, "{name}");
            assert!(l.burst >= 1 && f64::from(l.burst) <= rate * 10.0, "{name}");
            assert!(l.max_connections.is_some_and(|n| n <= 10), "{name}");
            assert!(l.max_deliveries_per_connection.is_some(), "{name}");
        }
        assert_eq!(c.limits(DEFAULT_PROVIDER), ProviderLimits::UNLIMITED);
    }

    #[test]
    fn catalog_figures_follow_their_sources() {
        let c = ProviderCatalog::new(&[]);
        let l = |name: &str| {
            let l = c.limits(name);
            (
                l.max_connections.unwrap(),
                l.max_deliveries_per_connection.unwrap(),
            )
        };
        assert_eq!(l("yahoo").1, 20);
        assert_eq!(l("netease").1, 7);
        assert_eq!(l("qq").1, 8);
        assert_eq!(l("google"), (5, 50));
        assert_eq!(l("microsoft"), (5, 50));
        assert_eq!(l("apple"), (10, 5));
        let tls: Vec<&str> = BUILT_IN_NAMES
            .iter()
            .copied()
            .filter(|n| c.limits(n).require_tls)
            .collect();
        assert_eq!(tls, ["qq"]);
        let relaxed = ProviderCatalog::new(&[ProviderConfig {
            require_tls: Some(false),
            ..p("qq", &[])
        }]);
        assert!(
            !relaxed.limits("qq").require_tls,
            "config overrides the built-in"
        );
        let strict = ProviderCatalog::new(&[ProviderConfig {
            require_tls: Some(true),
            ..p("corp", &["corp.example"])
        }]);
        assert!(strict.limits("corp").require_tls);
    }

    fn p(name: &str, domains: &[&str]) -> ProviderConfig {
        ProviderConfig {
            name: name.into(),
            domains: domains.iter().map(|d| d.to_string()).collect(),
            ..ProviderConfig::default()
        }
    }

    #[test]
    fn config_adds_and_overrides_by_name() {
        let c = ProviderCatalog::new(&[p("yahoo", &["yahoo.com"]), p("corp", &["corp.example"])]);
        assert_eq!(
            c.classify("a@aol.com"),
            DEFAULT_PROVIDER,
            "override replaced yahoo's domains"
        );
        assert_eq!(c.classify("a@corp.example"), "corp");
        assert!(c.names().iter().any(|n| n == "corp"));
        assert_eq!(c.names().last().unwrap(), DEFAULT_PROVIDER);
        assert_eq!(
            c.names().iter().filter(|n| *n == DEFAULT_PROVIDER).count(),
            1
        );
        assert_eq!(c.limits("corp"), ProviderLimits::UNLIMITED);
    }

    #[test]
    fn overrides_are_per_field() {
        let yahoo = ProviderConfig {
            messages_per_second: PerSecond::new(7.5),
            ..p("yahoo", &[])
        };
        let default = ProviderConfig {
            max_connections: Some(3),
            ..p(DEFAULT_PROVIDER, &[])
        };
        let c = ProviderCatalog::new(&[yahoo, default]);
        let built_in = ProviderCatalog::new(&[]).limits("yahoo");
        let l = c.limits("yahoo");
        assert_eq!(l.messages_per_second.map(PerSecond::get), Some(7.5));
        assert_eq!(l.burst, built_in.burst, "burst kept from the built-in");
        assert_eq!(l.max_connections, built_in.max_connections);
        assert_eq!(
            c.classify("a@aol.com"),
            "yahoo",
            "domains kept when none given"
        );
        assert_eq!(c.limits(DEFAULT_PROVIDER).max_connections, Some(3));
        assert_eq!(c.limits(DEFAULT_PROVIDER).messages_per_second, None);
    }
}
