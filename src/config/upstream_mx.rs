//! `[[upstream]] kind = "mx"`: direct delivery to each recipient domain's mail servers.
//!
//! `smtp_port` exists for tests, which run their "MX hosts" on 127.0.0.x at a port of their
//! own: it is refused unless the environment says `MAILVEIL_ALLOW_TEST_PORTS=1`, so a
//! production config can never send mail for the world to some other port.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::raw::RawUpstream;
use super::values::{Problems, duration};

/// The environment variable that lets `smtp_port` be set (tests).
pub const ALLOW_TEST_PORTS: &str = "MAILVEIL_ALLOW_TEST_PORTS";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxUpstreamConfig {
    /// The name we announce in EHLO; `server.hostname` when unset. Receivers check that it
    /// resolves and matches the PTR of `source_address` (docs/delivery.md).
    pub ehlo_name: Option<String>,
    /// The local address connections leave from; the system's choice when unset.
    pub source_address: Option<IpAddr>,
    /// DNS servers asked for MX and address records; the system's (`/etc/resolv.conf`) when
    /// empty.
    pub nameservers: Vec<SocketAddr>,
    pub dns_timeout: Duration,
    /// Connections open at once to all sites together.
    pub max_connections: usize,
    /// Connections open at once to one site (the set of MX hosts domains share).
    pub max_connections_per_site: usize,
    /// Limit for connecting and for each command/reply exchange.
    pub timeout: Duration,
    pub tls: MxTls,
    /// Extra trust anchor (PEM) besides the webpki roots, for verified TLS (providers with
    /// `require_tls`).
    pub ca_file: Option<std::path::PathBuf>,
    /// 25, or a test's port.
    pub port: u16,
    /// Honour MTA-STS policies (RFC 8461).
    pub mta_sts: bool,
    /// A DNSSEC-validating resolver whose AD bit is trusted: DANE (RFC 7672) is on with it.
    pub dnssec_resolver: Option<SocketAddr>,
    /// 443, or a test's port: where MTA-STS policies are fetched.
    pub https_port: u16,
    /// Where MTA-STS policies are kept across restarts (`SPOOL/mta-sts-<name>.json`); set from
    /// `spool.dir` once the config is read.
    pub policy_cache: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MxTls {
    /// STARTTLS whenever the server offers it, any certificate (RFC 7435).
    Opportunistic,
    /// Never STARTTLS (tests; a network where a middlebox breaks TLS).
    None,
}

pub const DEFAULT_MX_MAX_CONNECTIONS: usize = 100;
pub const DEFAULT_MX_MAX_CONNECTIONS_PER_SITE: usize = 10;
const DEFAULT_DNS_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads an `mx` upstream; `None` when it cannot be used (reported in `p`).
pub(super) fn validate_mx(
    u: &RawUpstream,
    path: &str,
    p: &mut Problems,
) -> Option<MxUpstreamConfig> {
    p.not_applicable(
        path,
        &[
            ("host", u.host.is_some()),
            ("port", u.port.is_some()),
            ("dir", u.dir.is_some()),
            ("username", u.username.is_some()),
            ("password_env", u.password_env.is_some()),
            ("password_file", u.password_file.is_some()),
            ("local", u.local.is_some()),
        ],
        "does not apply to kind = \"mx\" (hosts come from each domain's MX records)",
    );
    let tls = match u.tls.as_deref().unwrap_or("opportunistic") {
        "opportunistic" => MxTls::Opportunistic,
        "none" => MxTls::None,
        other => {
            p.push(
                &format!("{path}.tls"),
                format!("{other:?} is not one of opportunistic, none"),
            );
            MxTls::Opportunistic
        }
    };
    if let Some(name) = &u.ehlo_name
        && (name.is_empty() || name.contains(|c: char| c.is_whitespace() || c.is_control()))
    {
        p.push(
            &format!("{path}.ehlo_name"),
            "must be a host name without spaces",
        );
    }
    let source_address = u.source_address.as_ref().and_then(|a| match a.parse() {
        Ok(ip) => Some(ip),
        Err(_) => {
            p.push(
                &format!("{path}.source_address"),
                format!("{a:?} is not an IP address"),
            );
            None
        }
    });
    let nameservers = u
        .nameservers
        .iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, n)| p.socket_addr(&format!("{path}.nameservers[{i}]"), n))
        .collect();
    let port = test_port(u.smtp_port, 25, &format!("{path}.smtp_port"), p);
    let https_port = test_port(u.https_port, 443, &format!("{path}.https_port"), p);
    let ca_file = u.ca_file.as_ref().map(std::path::PathBuf::from);
    if let Some(f) = &ca_file
        && let Err(e) = super::tls::trust_anchors(Some(f))
    {
        p.push(&format!("{path}.ca_file"), e);
    }
    Some(MxUpstreamConfig {
        ehlo_name: u.ehlo_name.clone(),
        source_address,
        nameservers,
        dns_timeout: u
            .dns_timeout
            .as_ref()
            .and_then(|d| duration(d, &format!("{path}.dns_timeout"), p))
            .unwrap_or(DEFAULT_DNS_TIMEOUT),
        max_connections: p.positive(
            &format!("{path}.max_connections"),
            u.max_connections,
            DEFAULT_MX_MAX_CONNECTIONS,
        ),
        max_connections_per_site: p.positive(
            &format!("{path}.max_connections_per_site"),
            u.max_connections_per_site,
            DEFAULT_MX_MAX_CONNECTIONS_PER_SITE,
        ),
        timeout: u
            .timeout
            .as_ref()
            .and_then(|d| duration(d, &format!("{path}.timeout"), p))
            .unwrap_or(Duration::from_secs(60)),
        tls,
        ca_file,
        port,
        mta_sts: u.mta_sts.unwrap_or(true),
        policy_cache: None,
        dnssec_resolver: u
            .dnssec_resolver
            .as_ref()
            .and_then(|a| p.socket_addr(&format!("{path}.dnssec_resolver"), a)),
        https_port,
    })
}

/// `standard`, or `given` when the environment allows test ports.
fn test_port(given: Option<u16>, standard: u16, key: &str, p: &mut Problems) -> u16 {
    match given {
        None => standard,
        Some(port) if std::env::var(ALLOW_TEST_PORTS).as_deref() == Ok("1") => port,
        Some(_) => {
            p.push(
                key,
                format!(
                    "is for tests only (set {ALLOW_TEST_PORTS}=1): the standard port is {standard}"
                ),
            );
            standard
        }
    }
}

/// Refuses the keys only an `mx` upstream reads on an SMTP or dir upstream.
pub(super) fn refuse_mx_keys(u: &RawUpstream, path: &str, p: &mut Problems) {
    p.not_applicable(
        path,
        &[
            ("ehlo_name", u.ehlo_name.is_some()),
            ("source_address", u.source_address.is_some()),
            ("nameservers", u.nameservers.is_some()),
            ("dns_timeout", u.dns_timeout.is_some()),
            (
                "max_connections_per_site",
                u.max_connections_per_site.is_some(),
            ),
            ("smtp_port", u.smtp_port.is_some()),
            ("https_port", u.https_port.is_some()),
            ("mta_sts", u.mta_sts.is_some()),
            ("dnssec_resolver", u.dnssec_resolver.is_some()),
        ],
        "only applies to kind = \"mx\"",
    );
}

/// Gives each `mx` upstream its MTA-STS policy file in the spool directory.
pub(super) fn keep_state_in(upstreams: &mut [super::UpstreamConfig], spool_dir: &std::path::Path) {
    for u in upstreams {
        if let super::UpstreamKind::Mx(mx) = &mut u.kind {
            mx.policy_cache = Some(spool_dir.join(format!("mta-sts-{}.json", u.name)));
        }
    }
}
