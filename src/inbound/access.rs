//! Who may relay. mailveil is never an open relay: a recipient is accepted only from a client
//! address inside `access.networks` or from an authenticated session. Also who a client is for
//! the per-source limits ([`Source`]), shared by connection admission and the AUTH failure budget.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use ipnet::IpNet;

/// The relay decision for one RCPT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Relay {
    Allowed,
    /// Not allowed yet, but AUTH could allow it: `530 5.7.0`.
    AuthRequired,
    /// Not allowed and AUTH cannot help: `554 5.7.1`.
    Denied,
}

/// `auth_possible` is true when users are configured and TLS is (or can become) active, so
/// telling the client to authenticate is advice it can follow.
pub(super) fn relay(
    networks: &[IpNet],
    client: IpAddr,
    authenticated: bool,
    auth_possible: bool,
) -> Relay {
    if authenticated || in_networks(networks, client) {
        Relay::Allowed
    } else if auth_possible {
        Relay::AuthRequired
    } else {
        Relay::Denied
    }
}

/// True when `client` may relay without AUTH. An IPv4 client on a dual-stack socket shows up
/// as `::ffff:a.b.c.d`; it is matched as the IPv4 address so `127.0.0.0/8` means what the
/// operator wrote.
pub(super) fn in_networks(networks: &[IpNet], client: IpAddr) -> bool {
    let client = canonical(client);
    networks.iter().any(|n| n.contains(&client))
}

/// The address as the client would name it: an IPv4-mapped IPv6 address as IPv4.
pub(super) fn canonical(client: IpAddr) -> IpAddr {
    match client {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// Whose connections and AUTH failures are counted together: an IPv4 address, or the /64 an
/// IPv6 address belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Source(IpAddr);

impl Source {
    pub fn of(ip: IpAddr) -> Source {
        match canonical(ip) {
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                Source(IpAddr::V6(Ipv6Addr::from(prefix)))
            }
            v4 => Source(v4),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets() -> Vec<IpNet> {
        vec![
            "127.0.0.0/8".parse().unwrap(),
            "10.1.0.0/16".parse().unwrap(),
        ]
    }

    #[test]
    fn networks_and_auth_allow() {
        assert_eq!(
            relay(&nets(), "127.0.0.9".parse().unwrap(), false, false),
            Relay::Allowed
        );
        assert_eq!(
            relay(&nets(), "10.1.2.3".parse().unwrap(), false, true),
            Relay::Allowed
        );
        assert_eq!(
            relay(&nets(), "192.0.2.1".parse().unwrap(), true, true),
            Relay::Allowed
        );
    }

    #[test]
    fn others_are_refused() {
        let ip = "192.0.2.1".parse().unwrap();
        assert_eq!(relay(&nets(), ip, false, false), Relay::Denied);
        assert_eq!(relay(&nets(), ip, false, true), Relay::AuthRequired);
        assert_eq!(
            relay(&[], "127.0.0.1".parse().unwrap(), false, false),
            Relay::Denied
        );
    }

    #[test]
    fn ipv4_mapped_ipv6_matches_ipv4_networks() {
        let mapped = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(relay(&nets(), mapped, false, false), Relay::Allowed);
    }
}
