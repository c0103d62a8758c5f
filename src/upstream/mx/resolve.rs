//! Where a domain's mail goes (RFC 5321 5.1): its MX hosts by preference, the domain itself
//! when it has none (implicit MX), nowhere when it says so (null MX, RFC 7505) or does not
//! exist. hickory-resolver's cache keeps each answer for its TTL, so a busy domain costs one
//! query per TTL.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use rand::seq::SliceRandom;

use crate::upstream::UpstreamError;

/// A resolver asking `nameservers`, or the system's (`/etc/resolv.conf`) when empty; one
/// attempt of `timeout` per query.
pub fn resolver(nameservers: &[SocketAddr], timeout: Duration) -> Result<TokioResolver, String> {
    let mut builder = if nameservers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| format!("system resolver: {e}"))?
    } else {
        let mut config = ResolverConfig::default();
        for ns in nameservers {
            let mut server = NameServerConfig::udp_and_tcp(ns.ip());
            for connection in &mut server.connections {
                connection.port = ns.port();
            }
            config.add_name_server(server);
        }
        TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
    };
    builder.options_mut().timeout = timeout;
    builder.options_mut().attempts = 1;
    builder.build().map_err(|e| format!("resolver: {e}"))
}

/// One host mail for a domain may go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxHost {
    /// Lower case, without the final dot.
    pub name: String,
    pub preference: u16,
    /// An address literal (`[192.0.2.1]`): no lookup.
    pub literal: Option<IpAddr>,
}

/// A domain's route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The site: the MX host names, sorted, joined by commas. Domains with the same hosts
    /// share a site, hence its connections and its limit (KumoMTA's "MX rollup").
    pub site: String,
    /// Most preferred first; hosts of equal preference in random order, so load spreads.
    pub hosts: Vec<MxHost>,
}

/// The route of `domain` (lower case, no final dot), or why there is none: permanent for a
/// null MX or a domain that does not exist, temporary for a DNS failure.
pub async fn route(resolver: &TokioResolver, domain: &str) -> Result<Route, UpstreamError> {
    if let Some(literal) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
        let ip: IpAddr =
            literal
                .trim_start_matches("IPv6:")
                .parse()
                .map_err(|_| UpstreamError::NoRoute {
                    permanent: true,
                    text: format!("5.1.2 {domain} is not an address literal we can reach"),
                })?;
        return Ok(Route {
            site: domain.to_string(),
            hosts: vec![MxHost {
                name: domain.to_string(),
                preference: 0,
                literal: Some(ip),
            }],
        });
    }
    let fqdn = format!("{domain}.");
    let mut hosts: Vec<MxHost> = match resolver.mx_lookup(fqdn.as_str()).await {
        Ok(lookup) => {
            let mut null = false;
            let hosts: Vec<MxHost> = lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::MX(mx) if mx.exchange.is_root() => {
                        null = true;
                        None
                    }
                    RData::MX(mx) => Some(MxHost {
                        name: host_name(&mx.exchange.to_ascii()),
                        preference: mx.preference,
                        literal: None,
                    }),
                    _ => None,
                })
                .collect();
            if hosts.is_empty() && null {
                return Err(UpstreamError::NoRoute {
                    permanent: true,
                    text: format!("5.1.10 {domain} accepts no mail (null MX, RFC 7505)"),
                });
            }
            hosts
        }
        Err(e) if e.is_nx_domain() => {
            return Err(UpstreamError::NoRoute {
                permanent: true,
                text: format!("5.1.2 domain {domain} does not exist"),
            });
        }
        Err(e) if e.is_no_records_found() => Vec::new(),
        Err(e) => {
            return Err(UpstreamError::NoRoute {
                permanent: false,
                text: format!(
                    "4.4.3 MX lookup for {domain} failed: {}",
                    crate::observe::log::escaped(&e)
                ),
            });
        }
    };
    if hosts.is_empty() {
        // Implicit MX: the domain itself, as if it were its only MX host.
        hosts.push(MxHost {
            name: domain.to_string(),
            preference: 0,
            literal: None,
        });
    }
    let mut names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let site = names.join(",");
    hosts.shuffle(&mut rand::rng());
    hosts.sort_by_key(|h| h.preference);
    Ok(Route { site, hosts })
}

/// The addresses of `host`: its literal, or A and AAAA records. Empty when it has none.
pub async fn addresses(resolver: &TokioResolver, host: &MxHost) -> Result<Vec<IpAddr>, String> {
    if let Some(ip) = host.literal {
        return Ok(vec![ip]);
    }
    if let Ok(ip) = host.name.parse::<IpAddr>() {
        // An MX that names an address (not allowed, but seen): use it as written.
        return Ok(vec![ip]);
    }
    match resolver.lookup_ip(format!("{}.", host.name)).await {
        Ok(lookup) => Ok(lookup.iter().collect()),
        Err(e) if e.is_no_records_found() => Ok(Vec::new()),
        Err(e) => Err(crate::observe::log::escaped(&e).to_string()),
    }
}

/// `Mx.Example.COM.` -> `mx.example.com`.
fn host_name(raw: &str) -> String {
    raw.trim_end_matches('.').to_ascii_lowercase()
}
