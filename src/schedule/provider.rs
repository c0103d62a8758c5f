//! The provider of a recipient: which big mailbox provider's rules its copy is paced by.
//!
//! Built-in entries cover the providers that throttle hard; `[[provider]]` entries in the config
//! add new providers or replace a built-in one's domains by name. Anything else is `default`.
//! (Limits per provider and MX-suffix classification arrive with traffic shaping.)

use std::collections::HashMap;

use crate::config::ProviderConfig;

/// Name of the lane for recipients no catalog entry claims.
pub const DEFAULT_PROVIDER: &str = "default";

const BUILT_IN: &[(&str, &[&str])] = &[
    (
        "yahoo",
        &[
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
    ),
    (
        "netease",
        &[
            "163.com",
            "126.com",
            "yeah.net",
            "188.com",
            "vip.163.com",
            "vip.126.com",
        ],
    ),
    ("qq", &["qq.com", "foxmail.com", "vip.qq.com"]),
    ("google", &["gmail.com", "googlemail.com"]),
    (
        "microsoft",
        &[
            "outlook.com",
            "hotmail.com",
            "live.com",
            "msn.com",
            "hotmail.co.uk",
            "outlook.fr",
        ],
    ),
    ("apple", &["icloud.com", "me.com", "mac.com"]),
];

/// Names of the built-in providers.
pub const BUILT_IN_NAMES: &[&str] = &["yahoo", "netease", "qq", "google", "microsoft", "apple"];

#[derive(Debug, Clone)]
pub struct ProviderCatalog {
    by_domain: HashMap<String, String>,
    names: Vec<String>,
}

impl ProviderCatalog {
    /// Built-in entries overridden or extended by the configured ones.
    pub fn new(configured: &[ProviderConfig]) -> Self {
        let mut entries: Vec<(String, Vec<String>)> = BUILT_IN
            .iter()
            .map(|(n, d)| (n.to_string(), d.iter().map(|d| d.to_string()).collect()))
            .collect();
        for p in configured {
            match entries.iter_mut().find(|(n, _)| *n == p.name) {
                Some(entry) if !p.domains.is_empty() => entry.1 = p.domains.clone(),
                Some(_) => {}
                None => entries.push((p.name.clone(), p.domains.clone())),
            }
        }
        let mut by_domain = HashMap::new();
        for (name, domains) in &entries {
            for d in domains {
                by_domain.insert(d.to_ascii_lowercase(), name.clone());
            }
        }
        let mut names: Vec<String> = entries.into_iter().map(|(n, _)| n).collect();
        names.push(DEFAULT_PROVIDER.to_string());
        ProviderCatalog { by_domain, names }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_domains_and_default() {
        let c = ProviderCatalog::new(&[]);
        assert_eq!(c.classify("a@Yahoo.COM"), "yahoo");
        assert_eq!(c.classify("a@vip.163.com"), "netease");
        assert_eq!(c.classify("a@foxmail.com"), "qq");
        assert_eq!(c.classify("a@example.org"), DEFAULT_PROVIDER);
        assert_eq!(c.classify("no-domain"), DEFAULT_PROVIDER);
    }

    #[test]
    fn built_in_names_match_the_table() {
        let names: Vec<&str> = BUILT_IN.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, BUILT_IN_NAMES);
    }

    #[test]
    fn config_adds_and_overrides_by_name() {
        let p = |name: &str, domains: &[&str]| ProviderConfig {
            name: name.into(),
            domains: domains.iter().map(|d| d.to_string()).collect(),
            mx_suffixes: vec![],
            messages_per_second: None,
            burst: None,
            max_connections: None,
        };
        let c = ProviderCatalog::new(&[p("yahoo", &["yahoo.com"]), p("corp", &["corp.example"])]);
        assert_eq!(
            c.classify("a@aol.com"),
            DEFAULT_PROVIDER,
            "override replaced yahoo's domains"
        );
        assert_eq!(c.classify("a@corp.example"), "corp");
        assert!(c.names().iter().any(|n| n == "corp"));
        assert_eq!(c.names().last().unwrap(), DEFAULT_PROVIDER);
    }
}
