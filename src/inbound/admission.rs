//! Who gets a connection slot: the decision made at accept, before the greeting.
//!
//! Three limits, so that clients outside `access.networks` (outsiders) can never lock the
//! application out, whatever they send or fail to send:
//! - `max_connections` for everybody (`421 4.3.2`, reason `too_many_connections`);
//! - outsiders that have not authenticated hold at most `max_connections -
//!   reserved_connections` slots (`421 4.3.2`, `too_many_outsider_connections`), so the
//!   reserved ones are always there for clients in `access.networks`;
//! - one source (an IPv4 address, an IPv6 /64: one host usually holds a whole /64) holds at
//!   most `max_connections_per_source` of the outsiders' slots (`421 4.7.0`,
//!   `too_many_source_connections`).
//!
//! A source banned from AUTH (see [`AuthBudget`]) is refused at once when it is an outsider:
//! without AUTH it could not relay anyway, and refusing it before the greeting saves the TLS
//! handshake it would make to guess again (`421 4.7.0`, `auth_banned`).
//!
//! Clients in `access.networks` count only towards `max_connections`. An outsider that
//! authenticates stops counting as an outsider ([`Ticket::trust`]), so a fleet of
//! authenticated clients behind one NAT address is bounded by `max_connections` alone.
//! The counts live here, shared by every session and kept across reloads; the limits are read
//! from the settings current at each accept, so a reload applies to the next connection.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};

use super::InboundSettings;
use super::access::{Source, in_networks};
use super::auth_budget::{AuthBudget, Gate};
use super::rejection::Rejection;
use super::replies::{self, Fixed};

/// Why a connection gets no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    Full,
    OutsidersFull,
    SourceFull,
    AuthBanned,
}

impl Refusal {
    pub fn rejection(self) -> Rejection {
        match self {
            Refusal::Full => Rejection::TooManyConnections,
            Refusal::OutsidersFull => Rejection::TooManyOutsiderConnections,
            Refusal::SourceFull => Rejection::TooManySourceConnections,
            Refusal::AuthBanned => Rejection::AuthBanned,
        }
    }

    pub fn reply(self) -> &'static Fixed {
        match self {
            // To an outsider the reserved slots look like a full server.
            Refusal::Full | Refusal::OutsidersFull => &replies::TOO_MANY_CONNECTIONS,
            Refusal::SourceFull => &replies::TOO_MANY_SOURCE_CONNECTIONS,
            Refusal::AuthBanned => &replies::AUTH_BANNED,
        }
    }
}

#[derive(Default)]
struct Counts {
    total: usize,
    /// Connections from outside `access.networks` that have not authenticated.
    outsiders: usize,
    /// The same, per source; an entry is removed when it reaches zero, so the map never
    /// holds more entries than there are open connections.
    per_source: HashMap<Source, usize>,
}

/// The slot counts, the AUTH failure budget and the cache of verified passwords, shared by the
/// accept loop and every session.
pub(crate) struct Admission {
    counts: Mutex<Counts>,
    auth: RwLock<Arc<AuthBudget>>,
    verified: crate::credentials::SuccessCache,
}

impl Admission {
    pub fn new(settings: &InboundSettings) -> Arc<Admission> {
        Arc::new(Admission {
            counts: Mutex::new(Counts::default()),
            auth: RwLock::new(Arc::new(AuthBudget::new(&settings.access))),
            verified: Default::default(),
        })
    }

    /// After a reload: a changed AUTH budget starts afresh (bans lifted); connection counts
    /// are kept and the new limits apply from the next accept.
    pub fn configure(&self, settings: &InboundSettings) {
        let mut auth = self.auth.write().expect("not poisoned");
        if !auth.has_limits_of(&settings.access) {
            *auth = Arc::new(AuthBudget::new(&settings.access));
        }
    }

    pub fn auth(&self) -> Arc<AuthBudget> {
        self.auth.read().expect("not poisoned").clone()
    }

    /// Passwords verified against the users file (tied to the credential set they matched).
    pub fn verified(&self) -> &crate::credentials::SuccessCache {
        &self.verified
    }

    /// Gives a connection from `ip` a slot under `settings`, or says why not.
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        settings: &InboundSettings,
    ) -> Result<Ticket, Refusal> {
        let server = &settings.server;
        let source = Source::of(ip);
        let outsider = !in_networks(&settings.access.networks, ip);
        if outsider && matches!(self.auth().gate(source), Gate::Banned { .. }) {
            return Err(Refusal::AuthBanned);
        }
        let mut counts = self.counts.lock().expect("not poisoned");
        if counts.total >= server.max_connections {
            return Err(Refusal::Full);
        }
        if outsider {
            let outsider_slots = server
                .max_connections
                .saturating_sub(server.reserved_connections);
            if counts.outsiders >= outsider_slots {
                return Err(Refusal::OutsidersFull);
            }
            let held = counts.per_source.get(&source).copied().unwrap_or(0);
            if held >= server.max_connections_per_source {
                return Err(Refusal::SourceFull);
            }
            counts.outsiders += 1;
            *counts.per_source.entry(source).or_insert(0) += 1;
        }
        counts.total += 1;
        Ok(Ticket {
            admission: self.clone(),
            source,
            outsider,
        })
    }

    fn release(&self, source: Source, outsider: bool, slot: bool) {
        let mut counts = self.counts.lock().expect("not poisoned");
        if slot {
            counts.total -= 1;
        }
        if outsider {
            counts.outsiders -= 1;
            if let Some(n) = counts.per_source.get_mut(&source) {
                *n -= 1;
                if *n == 0 {
                    counts.per_source.remove(&source);
                }
            }
        }
    }

    #[cfg(test)]
    pub fn open(&self) -> (usize, usize, usize) {
        let counts = self.counts.lock().expect("not poisoned");
        (counts.total, counts.outsiders, counts.per_source.len())
    }
}

/// One admitted connection's slot; released when dropped (however the session ends).
pub(crate) struct Ticket {
    admission: Arc<Admission>,
    source: Source,
    outsider: bool,
}

impl Ticket {
    pub fn source(&self) -> Source {
        self.source
    }

    /// From outside `access.networks` and not authenticated (yet): held to the outsiders'
    /// limits and to `unauthenticated_timeout`.
    pub fn is_outsider(&self) -> bool {
        self.outsider
    }

    /// The client authenticated: it no longer counts towards the outsiders' limits.
    pub fn trust(&mut self) {
        if self.outsider {
            self.admission.release(self.source, true, false);
            self.outsider = false;
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.release(self.source, self.outsider, true);
    }
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket")
            .field("source", &self.source)
            .field("outsider", &self.outsider)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inbound::tests::support::settings;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// max_connections 10, 3 reserved, 4 per source; only 127.0.0.0/8 inside.
    fn limits() -> InboundSettings {
        let mut s = settings();
        s.server.max_connections = 10;
        s.server.reserved_connections = 3;
        s.server.max_connections_per_source = 4;
        s
    }

    #[test]
    fn sources_are_addresses_and_ipv6_slash_64s() {
        assert_eq!(Source::of(ip("192.0.2.7")).to_string(), "192.0.2.7");
        assert_eq!(
            Source::of(ip("::ffff:192.0.2.7")),
            Source::of(ip("192.0.2.7"))
        );
        assert_eq!(
            Source::of(ip("2001:db8:1:2:aaaa::1")),
            Source::of(ip("2001:db8:1:2:bbbb::9"))
        );
        assert_ne!(
            Source::of(ip("2001:db8:1:2::1")),
            Source::of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            Source::of(ip("2001:db8:1:2:aaaa::1")).to_string(),
            "2001:db8:1:2::/64"
        );
    }

    #[test]
    fn one_source_is_capped_and_outsiders_leave_the_reserved_slots() {
        let s = limits();
        let a = Admission::new(&s);
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(a.admit(ip("192.0.2.1"), &s).unwrap());
        }
        assert_eq!(
            a.admit(ip("192.0.2.1"), &s).unwrap_err(),
            Refusal::SourceFull
        );
        for _ in 0..3 {
            held.push(a.admit(ip("192.0.2.2"), &s).unwrap());
        }
        // 7 outsiders = 10 - 3 reserved.
        assert_eq!(
            a.admit(ip("192.0.2.3"), &s).unwrap_err(),
            Refusal::OutsidersFull
        );
        for _ in 0..3 {
            held.push(a.admit(ip("127.0.0.1"), &s).unwrap());
        }
        assert_eq!(a.admit(ip("127.0.0.1"), &s).unwrap_err(), Refusal::Full);
        assert_eq!(a.open(), (10, 7, 2));
        held.clear();
        assert_eq!(a.open(), (0, 0, 0), "every slot released on drop");
    }

    #[test]
    fn clients_inside_the_networks_are_not_capped_per_source() {
        let s = limits();
        let a = Admission::new(&s);
        let held: Vec<_> = (0..10)
            .map(|_| a.admit(ip("127.0.0.1"), &s).unwrap())
            .collect();
        assert_eq!(a.open(), (10, 0, 0));
        drop(held);
    }

    #[test]
    fn an_authenticated_outsider_frees_its_outsider_slot() {
        let s = limits();
        let a = Admission::new(&s);
        let mut held: Vec<_> = (0..4)
            .map(|_| a.admit(ip("192.0.2.1"), &s).unwrap())
            .collect();
        held[0].trust();
        held[0].trust(); // twice is once
        assert!(!held[0].is_outsider());
        assert_eq!(a.open(), (4, 3, 1));
        held.push(a.admit(ip("192.0.2.1"), &s).unwrap());
        drop(held);
        assert_eq!(a.open(), (0, 0, 0));
    }

    #[test]
    fn lowering_the_limits_applies_to_the_next_connection() {
        let mut s = limits();
        let a = Admission::new(&s);
        let held: Vec<_> = (0..3)
            .map(|_| a.admit(ip("192.0.2.1"), &s).unwrap())
            .collect();
        s.server.max_connections_per_source = 2;
        assert_eq!(
            a.admit(ip("192.0.2.1"), &s).unwrap_err(),
            Refusal::SourceFull
        );
        s.server.max_connections = 3;
        assert_eq!(a.admit(ip("127.0.0.1"), &s).unwrap_err(), Refusal::Full);
        drop(held);
        assert!(a.admit(ip("127.0.0.1"), &s).is_ok());
    }
}
