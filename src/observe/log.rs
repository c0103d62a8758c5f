//! Address redaction for logs. By default an address appears as a short keyed hash of the local
//! part plus the domain (`3f9a1c2b@example.com`): enough to correlate lines about one recipient,
//! not enough to read the address.

use std::fmt;
use std::sync::Arc;

#[derive(Clone)]
pub struct Redactor {
    show: bool,
    key: Arc<[u8; 32]>,
}

impl Redactor {
    /// `key` keeps hashes stable across restarts when it is persisted (the relay keeps one in the
    /// spool directory); anyone without it cannot test guesses against the log.
    pub fn new(show_addresses: bool, key: [u8; 32]) -> Self {
        Redactor {
            show: show_addresses,
            key: Arc::new(key),
        }
    }

    /// Redactor that shows addresses as they are (tests and `show_addresses = true`).
    pub fn plain() -> Self {
        Redactor::new(true, [0; 32])
    }

    /// A `Display` value for one address, redacted as configured.
    pub fn addr<'a>(&'a self, address: &'a str) -> RedactedAddr<'a> {
        RedactedAddr {
            redactor: self,
            address,
        }
    }

    /// Comma-separated redacted list.
    pub fn list(&self, addresses: &[String]) -> String {
        addresses
            .iter()
            .map(|a| self.addr(a).to_string())
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redactor")
            .field("show", &self.show)
            .finish_non_exhaustive()
    }
}

pub struct RedactedAddr<'a> {
    redactor: &'a Redactor,
    address: &'a str,
}

impl fmt::Display for RedactedAddr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.redactor.show {
            return f.write_str(if self.address.is_empty() {
                "<>"
            } else {
                self.address
            });
        }
        if self.address.is_empty() {
            return f.write_str("<>");
        }
        let (local, domain) = match self.address.rsplit_once('@') {
            Some((l, d)) => (l, d),
            None => (self.address, ""),
        };
        let hash = blake3::keyed_hash(&self.redactor.key, local.to_lowercase().as_bytes());
        let hex = hash.to_hex();
        if domain.is_empty() {
            write!(f, "{}", &hex[..8])
        } else {
            write!(f, "{}@{}", &hex[..8], domain.to_ascii_lowercase())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_by_default_keeps_domain_only() {
        let r = Redactor::new(false, [7; 32]);
        let s = r.addr("Alice.Smith@Example.com").to_string();
        assert!(!s.to_lowercase().contains("alice"), "{s}");
        assert!(s.ends_with("@example.com"));
        assert_eq!(
            s,
            r.addr("alice.smith@example.com").to_string(),
            "case-insensitive local part"
        );
        assert_ne!(
            s,
            Redactor::new(false, [8; 32])
                .addr("alice.smith@example.com")
                .to_string(),
            "keyed"
        );
    }

    #[test]
    fn shown_when_configured() {
        assert_eq!(Redactor::plain().addr("a@b.c").to_string(), "a@b.c");
        assert_eq!(Redactor::plain().addr("").to_string(), "<>");
    }
}
