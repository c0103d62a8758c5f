//! Classifying recipient domains the catalog does not list by their MX hosts (`[shaping]
//! classify_by_mx`, off by default): a company whose mail is hosted by Google or Microsoft is
//! throttled with that provider, because that is whose limits its mail meets.
//!
//! Lookups go through hickory-resolver, whose cache keeps each answer for its DNS TTL, so a
//! domain costs one query per TTL whatever the traffic. They happen when a message is accepted,
//! under `mx_timeout` for all of its domains together; a domain not answered in time (or with
//! no MX matching the catalog) goes to the `default` lane. The lookup sits behind [`MxLookup`]
//! so tests can point it at a DNS server on loopback or answer from a table.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::RData;

use super::ProviderCatalog;
use crate::config::MxConfig;

/// MX host names of a domain, most preferred first; empty when there are none or the lookup
/// failed.
pub trait MxLookup: Send + Sync + 'static {
    fn mx_hosts(&self, domain: String) -> Pin<Box<dyn Future<Output = Vec<String>> + Send>>;
}

/// [`MxLookup`] through DNS.
pub struct DnsMx {
    resolver: TokioResolver,
}

impl DnsMx {
    /// Asks `nameservers`, or the system's resolvers (`/etc/resolv.conf`) when empty.
    pub fn new(nameservers: &[SocketAddr], timeout: Duration) -> Result<DnsMx, String> {
        Ok(DnsMx {
            resolver: crate::upstream::dns_resolver(nameservers, timeout)?,
        })
    }
}

impl MxLookup for DnsMx {
    fn mx_hosts(&self, domain: String) -> Pin<Box<dyn Future<Output = Vec<String>> + Send>> {
        let resolver = self.resolver.clone();
        Box::pin(async move {
            // A fully qualified name: never the resolver's search domains.
            let name = format!("{}.", domain.trim_end_matches('.'));
            match resolver.mx_lookup(name).await {
                Ok(lookup) => {
                    let mut mx: Vec<(u16, String)> = lookup
                        .answers()
                        .iter()
                        .filter_map(|r| match &r.data {
                            RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii())),
                            _ => None,
                        })
                        .collect();
                    mx.sort();
                    mx.into_iter().map(|(_, host)| host).collect()
                }
                Err(e) => {
                    let error = crate::observe::log::escaped(&e);
                    tracing::debug!(%domain, %error, "MX lookup failed; default lane");
                    Vec::new()
                }
            }
        })
    }
}

/// Finds the provider of domains by their MX hosts.
#[derive(Clone)]
pub struct MxClassifier {
    lookup: Arc<dyn MxLookup>,
    timeout: Duration,
}

impl std::fmt::Debug for MxClassifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MxClassifier")
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl MxClassifier {
    /// The DNS classifier of `config`; `None` (logged) when no resolver can be set up, so the
    /// relay still runs, with every unlisted domain in `default`.
    pub fn from_config(config: &MxConfig) -> Option<MxClassifier> {
        match DnsMx::new(&config.nameservers, config.timeout) {
            Ok(dns) => Some(MxClassifier::new(Arc::new(dns), config.timeout)),
            Err(e) => {
                tracing::error!(error = %e, "classify_by_mx is on but no DNS resolver could be set up; unlisted domains use the default lane");
                None
            }
        }
    }

    pub fn new(lookup: Arc<dyn MxLookup>, timeout: Duration) -> MxClassifier {
        MxClassifier { lookup, timeout }
    }

    /// The provider of each of `addresses`' domains that the catalog does not list but whose
    /// MX hosts it recognises. Waits at most the configured timeout for all of them.
    pub async fn providers<'a>(
        &self,
        catalog: &ProviderCatalog,
        addresses: impl Iterator<Item = &'a String>,
    ) -> HashMap<String, String> {
        let domains: HashSet<String> = addresses
            .filter(|a| !catalog.knows(a))
            .filter_map(|a| a.rsplit_once('@'))
            .map(|(_, d)| d.trim_end_matches('.').to_ascii_lowercase())
            .filter(|d| !d.is_empty() && !d.starts_with('['))
            .collect();
        let mut lookups = tokio::task::JoinSet::new();
        for domain in domains {
            let lookup = self.lookup.clone();
            lookups.spawn(async move {
                let hosts = lookup.mx_hosts(domain.clone()).await;
                (domain, hosts)
            });
        }
        let mut found = HashMap::new();
        let deadline = tokio::time::Instant::now() + self.timeout;
        while let Ok(Some(Ok((domain, hosts)))) =
            tokio::time::timeout_at(deadline, lookups.join_next()).await
        {
            if let Some(provider) = catalog.classify_mx(&hosts) {
                found.insert(domain, provider.to_string());
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers from a table, or never (for the timeout).
    struct Table(HashMap<&'static str, Vec<&'static str>>);

    impl MxLookup for Table {
        fn mx_hosts(&self, domain: String) -> Pin<Box<dyn Future<Output = Vec<String>> + Send>> {
            let answer = self.0.get(domain.as_str()).cloned();
            Box::pin(async move {
                match answer {
                    Some(hosts) => hosts.into_iter().map(String::from).collect(),
                    None => std::future::pending().await,
                }
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn unlisted_domains_are_classified_by_mx_and_slow_ones_go_default() {
        let table = Table(HashMap::from([
            ("corp.test", vec!["corp-test.mail.protection.outlook.com."]),
            ("startup.test", vec!["aspmx.l.google.com."]),
            ("self.test", vec!["mx.self.test."]),
        ]));
        let mx = MxClassifier::new(Arc::new(table), Duration::from_secs(2));
        let catalog = ProviderCatalog::new(&[]);
        let rcpts: Vec<String> = [
            "a@corp.test",
            "b@Startup.TEST",
            "c@self.test",
            "d@yahoo.com",
            "e@hangs.test",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let started = tokio::time::Instant::now();
        let found = mx.providers(&catalog, rcpts.iter()).await;
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(2),
            "bounded by the timeout"
        );
        assert_eq!(
            found.get("corp.test").map(String::as_str),
            Some("microsoft")
        );
        assert_eq!(
            found.get("startup.test").map(String::as_str),
            Some("google")
        );
        assert!(!found.contains_key("self.test"), "no catalog MX: default");
        assert!(
            !found.contains_key("yahoo.com"),
            "listed domains are not looked up"
        );
        assert!(!found.contains_key("hangs.test"));
    }
}
