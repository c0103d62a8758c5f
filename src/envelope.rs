//! The SMTP envelope and the per-transaction facts that travel with a message.
//!
//! Kept in its own module because every stage (inbound, privacy, spool, upstream) speaks it.

use serde::{Deserialize, Serialize};

/// Envelope of one SMTP transaction: who the message is from and who receives it.
///
/// `mail_from` is the reverse path without angle brackets; the empty string is the null
/// sender `<>` (bounces). Recipients are kept in the order the client gave them, each once.
///
/// Every address is in its RFC 5321 form ([`mailbox`]): a local part that is not a dot-atom
/// stays a quoted string (`"b@y, x"@z`), so what is stored, logged and sent upstream is the
/// mailbox the client named, never a de-quoted look-alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
}

/// What the inbound listener knows about the client that sent a message, for trace headers and logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    pub peer: std::net::SocketAddr,
    /// Name given in EHLO/HELO.
    pub helo: String,
    pub tls: bool,
    /// Authenticated user name, if the client used AUTH.
    pub user: Option<String>,
}

/// Why an envelope address cannot be stored (answered `501` at MAIL or RCPT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("no @ and domain")]
    NoDomain,
    #[error("empty local part")]
    EmptyLocalPart,
    #[error("domain is neither a dot-atom nor an address literal")]
    BadDomain,
    /// No mailbox needs one, and downstream it could only be stripped (making the address
    /// someone else's) or smuggled into commands, headers and logs.
    #[error("control character in the address")]
    ControlCharacter,
    /// Legal inside a quoted local part, but servers (and log readers) cut paths at them.
    #[error("angle bracket in the address")]
    AngleBracket,
    /// U+FFFD is what a decoder writes for bytes it could not read: no mailbox has one, and a
    /// reader shows one for *any* unreadable byte of a header, so a copy could show such an
    /// address without holding its bytes (found by the `rewrite` fuzz target).
    #[error("replacement character (U+FFFD) in the address")]
    ReplacementCharacter,
}

/// The RFC 5321 form of a mailbox given with its local part unquoted, the way `smtp-proto`
/// hands MAIL and RCPT addresses (`"b@y, x"@z` arrives as `b@y, x@z`, `"a\"b"@x` as `a"b@x`).
///
/// The address splits at its *last* `@`: a domain never holds `@` or `"`, so everything before
/// it is the local part's content. A local part that is a dot-atom is written as it is (so
/// `"bob"@y` becomes `bob@y`, the same mailbox); any other is written as a quoted string.
/// The domain must be a dot-atom or an address literal `[...]`.
pub fn mailbox(unquoted: &str) -> Result<String, AddressError> {
    if unquoted.chars().any(char::is_control) {
        return Err(AddressError::ControlCharacter);
    }
    if unquoted.contains(['<', '>']) {
        return Err(AddressError::AngleBracket);
    }
    if unquoted.contains(char::REPLACEMENT_CHARACTER) {
        return Err(AddressError::ReplacementCharacter);
    }
    let (local, domain) = unquoted.rsplit_once('@').ok_or(AddressError::NoDomain)?;
    if local.is_empty() {
        return Err(AddressError::EmptyLocalPart);
    }
    if !is_domain(domain) && !is_address_literal(domain) {
        return Err(AddressError::BadDomain);
    }
    if is_dot_atom(local) {
        Ok(unquoted.to_string())
    } else {
        Ok(format!("{}@{domain}", quoted_string(local)))
    }
}

/// A character of a domain's label: a letter, digit, `-` or `_` (SMTPUTF8 letters and digits
/// too). RFC 5321 allows no other (`!`, `&`, `'` are atext in RFC 5322, not in a domain), and the
/// privacy checks find a domain by exactly these characters, so an envelope domain is one they
/// can always find.
pub fn joins_domain(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_') || (!c.is_ascii() && c.is_alphanumeric())
}

/// Labels of [`joins_domain`] characters between single dots (a trailing dot allowed).
fn is_domain(domain: &str) -> bool {
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    !domain.is_empty()
        && domain
            .split('.')
            .all(|label| !label.is_empty() && label.chars().all(joins_domain))
}

/// `[192.0.2.1]`, `[IPv6:2001:db8::1]`: brackets around letters, digits, `.`, `:` and `-`.
fn is_address_literal(domain: &str) -> bool {
    domain
        .strip_prefix('[')
        .and_then(|d| d.strip_suffix(']'))
        .is_some_and(|inner| {
            !inner.is_empty()
                && inner
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '-'))
        })
}

// The address syntax every stage writes addresses in (the envelope's paths here, the `To:` of a
// split copy in `privacy::rewrite`): kept with the envelope, which imports no stage.

/// RFC 5322 dot-atom, with RFC 6532's UTF-8 characters counted as atext.
pub fn is_dot_atom(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|atom| {
            !atom.is_empty()
                && atom.chars().all(|c| {
                    c.is_ascii_alphanumeric()
                        || "!#$%&'*+-/=?^_`{|}~".contains(c)
                        || (!c.is_ascii() && !c.is_whitespace() && !c.is_control())
                })
        })
}

/// RFC 5322 quoted-string: backslash before `"` and `\`.
pub fn quoted_string(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('"');
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_atoms_stay_as_they_are() {
        assert_eq!(mailbox("bob@y.test").unwrap(), "bob@y.test");
        assert_eq!(
            mailbox("Bob.O'Neil+x@Y.test").unwrap(),
            "Bob.O'Neil+x@Y.test"
        );
        assert_eq!(mailbox("jürgen@bücher.test").unwrap(), "jürgen@bücher.test");
        assert_eq!(mailbox("a@[192.0.2.1]").unwrap(), "a@[192.0.2.1]");
        assert_eq!(
            mailbox("a@[IPv6:2001:db8::1]").unwrap(),
            "a@[IPv6:2001:db8::1]"
        );
    }

    #[test]
    fn other_local_parts_are_quoted_again() {
        assert_eq!(mailbox("b@y, x@z.test").unwrap(), "\"b@y, x\"@z.test");
        assert_eq!(mailbox("a b@x.test").unwrap(), "\"a b\"@x.test");
        assert_eq!(mailbox("a\"b@x.test").unwrap(), "\"a\\\"b\"@x.test");
        assert_eq!(mailbox("a\\b@x.test").unwrap(), "\"a\\\\b\"@x.test");
        assert_eq!(mailbox("a..b@x.test").unwrap(), "\"a..b\"@x.test");
        assert_eq!(mailbox(".a@x.test").unwrap(), "\".a\"@x.test");
    }

    #[test]
    fn unusable_addresses_are_refused() {
        assert_eq!(mailbox("nobody"), Err(AddressError::NoDomain));
        assert_eq!(mailbox("@x.test"), Err(AddressError::EmptyLocalPart));
        assert_eq!(mailbox("a@"), Err(AddressError::BadDomain));
        assert_eq!(mailbox("a@b c"), Err(AddressError::BadDomain));
        assert_eq!(mailbox("a@x..test"), Err(AddressError::BadDomain));
        assert_eq!(mailbox("a@[]"), Err(AddressError::BadDomain));
        assert_eq!(mailbox("a@[1.2.3.4"), Err(AddressError::BadDomain));
        assert_eq!(mailbox("a\0@x"), Err(AddressError::ControlCharacter));
        assert_eq!(mailbox("a\u{85}@x"), Err(AddressError::ControlCharacter));
        assert_eq!(
            mailbox("a@\u{fffd}x"),
            Err(AddressError::ReplacementCharacter)
        );
        assert_eq!(
            mailbox("\u{fffd}b@x"),
            Err(AddressError::ReplacementCharacter)
        );
        // Domains the privacy checks could not find: RFC 5322 atext that RFC 5321 refuses.
        for bad in ["bob@y&x.test", "j@!.te", "a@x'y.test", "a@x..y", "a@.x"] {
            assert_eq!(mailbox(bad), Err(AddressError::BadDomain), "{bad}");
        }
        for good in [
            "a@x.test",
            "a@x-y_z.test.",
            "a@bücher.example",
            "a@[192.0.2.1]",
        ] {
            assert!(mailbox(good).is_ok(), "{good}");
        }
        assert_eq!(mailbox("a>b@x"), Err(AddressError::AngleBracket));
    }
}
