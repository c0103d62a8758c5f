//! `kind = "mx"`: direct delivery to each recipient domain's mail servers.
//!
//! A copy's domain is resolved (`resolve.rs`) into a route: its MX hosts by preference, or the
//! domain itself (implicit MX), or a permanent failure (null MX, no such domain). Domains with
//! the same MX hosts form one site; each site has its own pool of connections, capped by
//! `max_connections_per_site`, and all sites together by `max_connections`, both under the
//! provider lanes' own limits (the scheduler's). A new connection walks the hosts most
//! preferred first, each host's addresses in turn, and moves on when a host cannot be reached,
//! does not greet with 220 (4xx or 5xx), or fails EHLO or STARTTLS; the copy is deferred when
//! none of them takes it.
//!
//! TLS: opportunistic STARTTLS by default (`tls = "opportunistic"`: whenever offered, whatever
//! the certificate); for the copies of a provider with `require_tls` (QQ's built-in entry, or a
//! `[[provider]]` naming the domains that must never travel in plaintext) STARTTLS is required
//! and the certificate must be valid for the MX host's name (webpki roots plus `ca_file`):
//! a host that fails that is skipped like an unreachable one, and the copy deferred. A domain
//! with an MTA-STS policy (`mta_sts.rs`) in `enforce` mode gets the same, and only the MX
//! hosts the policy lists. An MX host with authenticated DANE TLSA records (`dane.rs`, with a
//! `dnssec_resolver`) gets STARTTLS with a certificate matching them, whatever else applies.
//!
//! The relay divides copies by recipient domain when an MX upstream is configured
//! (`schedule/provider.rs`), so a copy normally has one domain. A copy spooled before that (the
//! config changed) goes to each of its domains in turn.

mod dane;
mod mta_sts;
mod resolve;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use hickory_resolver::TokioResolver;
use tokio::sync::Semaphore;

use mta_sts::{Mode, MtaSts, Policy};
pub use resolve::resolver;
use resolve::{MxHost, Route};

use super::pool::Pool;
use super::smtp::{self, Connection, Security, SmtpClient, Target, TlsUsed};
use super::tls::{TlsSetup, opportunistic_connector, sni_name, verified_connector};
use super::{Delivered, Outbound, PoolLimits, Reuse, Timeouts, UpstreamError};
use crate::config::{MxTls, MxUpstreamConfig};

pub(crate) struct MxUpstream {
    client: SmtpClient,
    resolver: TokioResolver,
    port: u16,
    /// `None` for `tls = "none"`.
    opportunistic: Option<tokio_rustls::TlsConnector>,
    /// For the copies of providers that require TLS and MTA-STS: webpki roots plus `ca_file`.
    verified: tokio_rustls::TlsConnector,
    /// `None` with `mta_sts = false`.
    mta_sts: Option<MtaSts>,
    /// The validating resolver of DANE; `None`: no DANE.
    dnssec: Option<dane::SecureMx>,
    dns_timeout: std::time::Duration,
    sites: Mutex<Sites>,
    /// `max_connections`: every site together.
    total: Semaphore,
    site_limits: PoolLimits,
}

impl MxUpstream {
    pub fn new(
        config: &MxUpstreamConfig,
        helo: &str,
        timeouts: Timeouts,
    ) -> Result<MxUpstream, UpstreamError> {
        let resolver = resolve::resolver(&config.nameservers, config.dns_timeout)
            .map_err(UpstreamError::Config)?;
        let opportunistic = match config.tls {
            MxTls::Opportunistic => Some(opportunistic_connector()?),
            MxTls::None => None,
        };
        let verified = verified_connector(config.ca_file.as_deref())?;
        let ehlo = config.ehlo_name.as_deref().unwrap_or(helo);
        Ok(MxUpstream {
            client: SmtpClient::new(ehlo, config.source_address, timeouts),
            resolver,
            port: config.port,
            opportunistic,
            mta_sts: config.mta_sts.then(|| {
                MtaSts::new(
                    verified.clone(),
                    config.https_port,
                    config.timeout,
                    config.policy_cache.clone(),
                )
            }),
            verified,
            dnssec: config
                .dnssec_resolver
                .map(|server| dane::SecureMx::new(server, config.dns_timeout)),
            dns_timeout: config.dns_timeout,
            sites: Mutex::new(Sites {
                pool: HashMap::new(),
                sweep_at: SITES_BEFORE_SWEEP,
            }),
            total: Semaphore::new(config.max_connections.max(1)),
            site_limits: PoolLimits {
                max_connections: config.max_connections_per_site,
                ..PoolLimits::default()
            },
        })
    }

    pub async fn send(
        &self,
        msg: &Outbound<'_>,
        reuse: Reuse<'_>,
    ) -> Result<Delivered, UpstreamError> {
        smtp::check_envelope(msg)?;
        let mut by_domain: Vec<(String, Vec<String>)> = Vec::new();
        for rcpt in msg.rcpt_to {
            let domain = domain_of(rcpt);
            match by_domain.iter_mut().find(|(d, _)| *d == domain) {
                Some((_, rcpts)) => rcpts.push(rcpt.clone()),
                None => by_domain.push((domain, vec![rcpt.clone()])),
            }
        }
        let mut delivered = None;
        for (domain, rcpt_to) in &by_domain {
            let part = Outbound { rcpt_to, ..*msg };
            delivered = Some(self.send_to_domain(domain, &part, reuse).await?);
        }
        delivered.ok_or(UpstreamError::Envelope("no recipients"))
    }

    async fn send_to_domain(
        &self,
        domain: &str,
        msg: &Outbound<'_>,
        reuse: Reuse<'_>,
    ) -> Result<Delivered, UpstreamError> {
        let mut route = resolve::route(&self.resolver, domain).await?;
        let literal = route.hosts.iter().any(|h| h.literal.is_some());
        let policy = match &self.mta_sts {
            Some(sts) if !literal => sts.policy(&self.resolver, domain).await,
            _ => None,
        };
        let want = match &policy {
            Some(p) if p.mode == Mode::Enforce => {
                let before = route.hosts.len();
                route.hosts.retain(|h| p.allows(&h.name));
                if route.hosts.is_empty() {
                    return Err(no_route(format!(
                        "4.7.5 none of the {before} MX hosts of {domain} is in its MTA-STS policy"
                    )));
                }
                Want::Verified(TlsUsed::MtaSts)
            }
            _ if reuse.require_tls => Want::Verified(TlsUsed::Verified),
            Some(p) => Want::Testing(p),
            None => Want::Opportunistic,
        };
        // DANE applies to MX hosts learnt from a signed zone (RFC 7672 2.2).
        let dane = match &self.dnssec {
            Some(secure) if !literal => secure.is_secure(domain).await,
            _ => false,
        };
        let site = self.site(&route.site);
        // Connections are reused only for copies that ask as much of TLS as they give.
        let class = if dane { "dane" } else { want.pool_key() };
        let key = format!("{}\u{0}{}", reuse.provider, class);
        let reuse = Reuse {
            provider: &key,
            ..reuse
        };
        super::send_pooled(&self.client, &site, Some(&self.total), msg, reuse, || {
            self.connect_any(domain, &route, &want, dane)
        })
        .await
    }

    /// The pool of `site`, made on first use. Pools nobody uses and with no idle connection
    /// are dropped once the map has doubled since the last sweep, so a relay that meets
    /// millions of domains keeps only the sites it is talking to.
    fn site(&self, site: &str) -> Arc<Pool<Connection>> {
        let mut sites = self.sites.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pool) = sites.pool.get(site) {
            return pool.clone();
        }
        if sites.pool.len() >= sites.sweep_at {
            sites
                .pool
                .retain(|_, p| Arc::strong_count(p) > 1 || p.idle_count() > 0);
            sites.sweep_at = (sites.pool.len() * 2).max(SITES_BEFORE_SWEEP);
        }
        let pool = Arc::new(Pool::new(self.site_limits));
        sites.pool.insert(site.to_string(), pool.clone());
        pool
    }

    /// A session with the first host of `route` that takes one, on `want`'s terms.
    async fn connect_any(
        &self,
        domain: &str,
        route: &Route,
        want: &Want<'_>,
        dane: bool,
    ) -> Result<Connection, UpstreamError> {
        let mut last: Option<UpstreamError> = None;
        let mut tried = 0;
        for host in route.hosts.iter().take(MAX_HOSTS_PER_ATTEMPT) {
            if tried >= MAX_ADDRESSES_PER_ATTEMPT {
                break;
            }
            let addrs = match resolve::addresses(&self.resolver, host).await {
                Ok(addrs) if !addrs.is_empty() => addrs,
                Ok(_) => {
                    last = Some(no_route(format!(
                        "4.4.4 MX host {} has no address",
                        host.name
                    )));
                    continue;
                }
                Err(e) => {
                    last = Some(no_route(format!(
                        "4.4.3 address lookup for MX host {} failed: {e}",
                        host.name
                    )));
                    continue;
                }
            };
            let tlsa = match (dane, &self.dnssec) {
                (true, Some(secure)) => {
                    match dane::tlsa(secure.server(), &host.name, self.dns_timeout).await {
                        Ok(dane::Secure::Yes(records)) if !records.is_empty() => Some(records),
                        Ok(_) => None,
                        Err(e) => {
                            // A signed zone that cannot be asked: this host waits (RFC 7672 2.2).
                            last = Some(no_route(format!(
                                "4.7.5 TLSA lookup for {} failed: {e}",
                                host.name
                            )));
                            continue;
                        }
                    }
                }
                _ => None,
            };
            for ip in addrs {
                if tried >= MAX_ADDRESSES_PER_ATTEMPT {
                    break;
                }
                tried += 1;
                let addr = SocketAddr::new(ip, self.port);
                let attempt = match &tlsa {
                    Some(records) => self.connect_dane(host, addr, records.clone()).await,
                    None => self.connect_one(domain, host, addr, want).await,
                };
                match attempt {
                    Ok(conn) => return Ok(conn),
                    Err(e) => {
                        tracing::debug!(
                            mx = %host.name,
                            %addr,
                            error = %crate::observe::log::escaped(&e),
                            "MX host did not take a session; trying the next"
                        );
                        last = Some(e);
                    }
                }
            }
        }
        Err(last.unwrap_or_else(|| no_route("4.4.4 no MX host to try".into())))
    }

    /// One session with `host` at `addr`.
    async fn connect_one(
        &self,
        domain: &str,
        host: &MxHost,
        addr: SocketAddr,
        want: &Want<'_>,
    ) -> Result<Connection, UpstreamError> {
        match want {
            Want::Verified(label) => {
                let mut conn = self
                    .client
                    .connect(&self.verified_target(host, addr))
                    .await?;
                conn.tls = *label;
                Ok(conn)
            }
            Want::Testing(policy) => {
                // What enforce would do; when it would refuse, say so and go on as without
                // a policy (RFC 8461 5: testing mode delivers, and reports).
                let refusal = if policy.allows(&host.name) {
                    match self.client.connect(&self.verified_target(host, addr)).await {
                        Ok(mut conn) => {
                            conn.tls = TlsUsed::MtaSts;
                            return Ok(conn);
                        }
                        Err(e @ (UpstreamError::Tls(_) | UpstreamError::NoStartTls)) => {
                            e.to_string()
                        }
                        Err(e) => return Err(e),
                    }
                } else {
                    "the host is not in the policy's mx list".to_string()
                };
                tracing::warn!(
                    %domain,
                    mx = %host.name,
                    %addr,
                    reason = %crate::observe::log::escaped(&refusal),
                    "MTA-STS testing: enforce would refuse this MX host; delivering without the policy"
                );
                self.connect_opportunistic(host, addr).await
            }
            Want::Opportunistic => self.connect_opportunistic(host, addr).await,
        }
    }

    /// STARTTLS required, the certificate matching the host's authenticated TLSA records: a
    /// mismatch is a hard failure for this host (RFC 7672 2.2).
    async fn connect_dane(
        &self,
        host: &MxHost,
        addr: SocketAddr,
        records: Vec<dane::Tlsa>,
    ) -> Result<Connection, UpstreamError> {
        let connector = dane::DaneVerifier::connector(records).map_err(UpstreamError::Config)?;
        let security = Security::StartTls(TlsSetup {
            connector,
            server_name: sni_name(&host.name, addr.ip()),
        });
        let mut conn = self
            .client
            .connect(&self.target(host, addr, security))
            .await?;
        conn.tls = TlsUsed::Dane;
        Ok(conn)
    }

    /// STARTTLS when offered, any certificate; plaintext (logged) when the STARTTLS it offered
    /// fails.
    async fn connect_opportunistic(
        &self,
        host: &MxHost,
        addr: SocketAddr,
    ) -> Result<Connection, UpstreamError> {
        let Some(connector) = &self.opportunistic else {
            return self
                .client
                .connect(&self.target(host, addr, Security::None))
                .await;
        };
        let security = Security::Opportunistic(TlsSetup {
            connector: connector.clone(),
            server_name: sni_name(&host.name, addr.ip()),
        });
        match self
            .client
            .connect(&self.target(host, addr, security))
            .await
        {
            Err(UpstreamError::Tls(text)) => {
                // This host in plaintext, said aloud (Postfix's `may` does the same; RFC 7435).
                tracing::warn!(
                    mx = %host.name,
                    %addr,
                    error = %crate::observe::log::escaped(&text),
                    "STARTTLS failed; this session goes on in plaintext (tls=fallback)"
                );
                let mut conn = self
                    .client
                    .connect(&self.target(host, addr, Security::None))
                    .await?;
                conn.tls = TlsUsed::Fallback;
                Ok(conn)
            }
            other => other,
        }
    }

    /// STARTTLS required, the certificate valid for the host's name.
    fn verified_target(&self, host: &MxHost, addr: SocketAddr) -> Target {
        let security = Security::StartTls(TlsSetup {
            connector: self.verified.clone(),
            server_name: sni_name(&host.name, addr.ip()),
        });
        self.target(host, addr, security)
    }

    fn target(&self, host: &MxHost, addr: SocketAddr, security: Security) -> Target {
        Target {
            host: host.name.clone(),
            port: addr.port(),
            addr: Some(addr),
            security,
        }
    }

    /// Idle pooled connections right now, every site together.
    pub fn idle_connections(&self) -> usize {
        let sites = self.sites.lock().unwrap_or_else(|e| e.into_inner());
        sites.pool.values().map(|p| p.idle_count()).sum()
    }
}

/// Each site's connection pool, by site name.
struct Sites {
    pool: HashMap<String, Arc<Pool<Connection>>>,
    /// The map's size at which unused pools are swept out.
    sweep_at: usize,
}

const SITES_BEFORE_SWEEP: usize = 1024;

/// Addresses tried for one copy at most, over all its MX hosts (Postfix's
/// `smtp_mx_address_limit`): a domain whose many MX hosts all black-hole connections costs
/// at most this many connect timeouts per attempt, not one per address it lists.
const MAX_ADDRESSES_PER_ATTEMPT: usize = 5;

/// MX hosts looked at for one copy at most, most preferred first: a domain listing hundreds of
/// names without addresses costs at most this many address lookups per attempt.
const MAX_HOSTS_PER_ATTEMPT: usize = 10;

/// What a copy asks of TLS.
enum Want<'p> {
    /// STARTTLS when offered (the default).
    Opportunistic,
    /// STARTTLS with a certificate valid for the MX host's name, or no session; the label says
    /// why (a `require_tls` provider, or an MTA-STS policy in `enforce` mode).
    Verified(TlsUsed),
    /// An MTA-STS policy in `testing` mode.
    Testing(&'p Policy),
}

impl Want<'_> {
    /// Which pooled connections may serve the copy.
    fn pool_key(&self) -> &'static str {
        match self {
            Want::Verified(_) => "verified",
            Want::Testing(_) | Want::Opportunistic => "any",
        }
    }
}

fn no_route(text: String) -> UpstreamError {
    UpstreamError::NoRoute {
        permanent: false,
        text,
    }
}

/// The domain of `address`, lower case, without a final dot.
fn domain_of(address: &str) -> String {
    let domain = address.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
    domain.trim_end_matches('.').to_ascii_lowercase()
}
