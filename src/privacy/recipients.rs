//! The visible recipient set V: every address a reader of the message sees in `To` and `Cc`.
//!
//! Address lists are parsed by `mail-parser`, field by field. That parser is lenient by design
//! (it is built to read whatever arrives), which is the wrong default for a privacy check: a
//! field it half-understands could hide addresses from the count. So each field's result is
//! cross-checked against a small lexical scan of the raw bytes, and any doubt marks the field
//! unparseable, which makes the whole message count as exposing (fail closed).

use std::collections::{HashMap, HashSet};

use mail_parser::parsers::MessageStream;
use mail_parser::{Addr, HeaderValue};

use super::address;
use super::fields::{self, FieldKind};

/// An address as written in a header, with the display name a reader sees next to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderAddress {
    pub address: String,
    /// Decoded (RFC 2047) display name, or the comment when there is no name.
    pub display_name: Option<String>,
}

/// What the `To`/`Cc` fields of one message show.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VisibleRecipients {
    /// Distinct addresses (case-insensitively) in header order, trusted domains included, so a
    /// split copy can keep its recipient's display name.
    pub addresses: Vec<HeaderAddress>,
    /// |V|: distinct addresses outside the trusted domains.
    pub counted: usize,
    /// Why a `To`/`Cc` field could not be fully accounted for, if one could not.
    pub unparseable: Option<AddressFieldError>,
}

impl VisibleRecipients {
    /// The count the policy compares with `max_visible_recipients`: an unparseable field
    /// pushes it above the limit so the message is handled as exposing.
    pub fn visible(&self, max_visible_recipients: usize) -> usize {
        match self.unparseable {
            Some(_) => self.counted.max(max_visible_recipients.saturating_add(1)),
            None => self.counted,
        }
    }

    /// The display name each address has in To/Cc (the first one a reader sees), keyed by
    /// [`address::key`].
    pub fn display_names(&self) -> HashMap<String, &str> {
        let mut names = HashMap::with_capacity(self.addresses.len());
        for a in &self.addresses {
            if let Some(name) = a.display_name.as_deref() {
                names.entry(address::key(&a.address)).or_insert(name);
            }
        }
        names
    }
}

/// Why an address field does not parse into addresses that account for all of its content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressFieldError {
    #[error("unbalanced quotes, comments or angle brackets")]
    Unbalanced,
    #[error("character {0:?} where an address list cannot have it")]
    UnexpectedCharacter(char),
    #[error("an entry without an address")]
    MissingAddress,
    #[error("{0:?} is not an address")]
    MalformedAddress(String),
    #[error("{at_signs} unquoted '@' but {addresses} address(es) recognised")]
    Unaccounted { at_signs: usize, addresses: usize },
    #[error("a display name or comment shows an address other than its own")]
    AddressInName,
    #[error("not an address list")]
    NotAddressList,
}

impl AddressFieldError {
    /// The reason without the text it quotes (for replies and logs, which never show
    /// addresses).
    pub fn without_addresses(&self) -> String {
        match self {
            AddressFieldError::MalformedAddress(_) => "an entry is not an address".into(),
            other => other.to_string(),
        }
    }
}

/// Result of parsing one address field: the plausible addresses found, and whether they are
/// known to be all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParsedField {
    pub addresses: Vec<HeaderAddress>,
    pub error: Option<AddressFieldError>,
}

/// Computes V for a message. `trusted_domains` must be lower-case (as the config stores them).
pub fn visible_recipients(message: &[u8], trusted_domains: &[String]) -> VisibleRecipients {
    let mut out = VisibleRecipients::default();
    let mut seen = HashSet::new();
    for field in fields::scan(message).fields {
        if !matches!(field.kind, FieldKind::To | FieldKind::Cc) {
            continue;
        }
        let parsed = parse_field(&message[field.value_start..field.end]);
        if out.unparseable.is_none() {
            out.unparseable = parsed.error;
        }
        for a in parsed.addresses {
            if seen.insert(a.address.to_lowercase()) {
                if !is_trusted(&a.address, trusted_domains) {
                    out.counted += 1;
                }
                out.addresses.push(a);
            }
        }
    }
    out
}

/// Every address in To, Cc and Bcc, de-duplicated case-insensitively, in header order: the
/// envelope `mailveil inspect` assumes when no `--to` is given.
pub fn header_recipients(message: &[u8]) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for field in fields::scan(message).fields {
        if !matches!(field.kind, FieldKind::To | FieldKind::Cc | FieldKind::Bcc) {
            continue;
        }
        for a in parse_field(&message[field.value_start..field.end]).addresses {
            if seen.insert(a.address.to_lowercase()) {
                out.push(a.address);
            }
        }
    }
    out
}

/// The first `From` address: the envelope sender `mailveil inspect` assumes without `--from`.
pub fn header_from(message: &[u8]) -> Option<String> {
    fields::scan(message)
        .fields
        .iter()
        .filter(|f| f.kind == FieldKind::From)
        .find_map(|f| {
            parse_field(&message[f.value_start..f.end])
                .addresses
                .into_iter()
                .next()
        })
        .map(|a| a.address)
}

fn is_trusted(address: &str, trusted_domains: &[String]) -> bool {
    let domain = address.rsplit_once('@').map_or("", |(_, d)| d);
    let domain = domain.to_ascii_lowercase();
    trusted_domains.contains(&domain)
}

/// Parses one field value (the bytes after the colon, folding included).
pub(crate) fn parse_field(raw: &[u8]) -> ParsedField {
    // Unfold: every line break becomes a space. For a real fold that is RFC 5322 unfolding
    // plus harmless white space; for a malformed continuation line it keeps the tokens apart
    // so they are still seen (and then fail the checks below). The trailing LF tells
    // mail-parser where the field ends (without it the last token is dropped).
    let mut value: Vec<u8> = raw
        .iter()
        .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b })
        .collect();
    let lexical = lexical_scan(&value);
    value.push(b'\n');
    let parsed = MessageStream::new(&value).parse_address();
    let list: Vec<&Addr> = match &parsed {
        HeaderValue::Address(a) => a.iter().collect(),
        HeaderValue::Empty => Vec::new(),
        _ => {
            return ParsedField {
                addresses: Vec::new(),
                error: Some(AddressFieldError::NotAddressList),
            };
        }
    };
    let text = crate::text::lossy(&value);
    let mut addresses = Vec::with_capacity(list.len());
    let mut error = lexical.as_ref().err().cloned();
    // Addresses come back in the order they stand in the field: each is looked for after the
    // previous one, so a list of n addresses costs one pass, not n.
    let mut cursor = 0;
    for addr in list {
        let Some(address) = addr.address.as_deref().map(str::trim) else {
            error.get_or_insert(AddressFieldError::MissingAddress);
            continue;
        };
        // The address must be a plain addr-spec that literally occurs in the field: this
        // catches mail-parser gluing tokens together (`a@x b@y` -> `a@xb@y`).
        let found = text[cursor..].find(address).map(|i| cursor + i);
        let Some(at) = found.filter(|_| is_plain_address(address)) else {
            error.get_or_insert(AddressFieldError::MalformedAddress(address.to_string()));
            continue;
        };
        cursor = at + address.len();
        let display_name = addr
            .name
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_string);
        // Readers see names and comments too: `"a@x, b@y" <me@z>` shows two more addresses
        // than it has. Only the mailbox's own address may appear there.
        if let Some(name) = &display_name
            && name
                .to_lowercase()
                .replace(&address.to_lowercase(), "")
                .contains('@')
        {
            error.get_or_insert(AddressFieldError::AddressInName);
        }
        addresses.push(HeaderAddress {
            address: address.to_string(),
            display_name,
        });
    }
    if let (Ok(at_signs), None) = (lexical, &error) {
        // Each unquoted, uncommented '@' belongs to exactly one addr-spec; an '@' that produced
        // no address means part of the field was not understood.
        if at_signs != addresses.len() {
            error = Some(AddressFieldError::Unaccounted {
                at_signs,
                addresses: addresses.len(),
            });
        }
    }
    ParsedField { addresses, error }
}

/// `local@domain` with both parts non-empty and no characters that only appear in the
/// structure around an address (or that mail-parser would have had to drop or merge).
fn is_plain_address(a: &str) -> bool {
    let Some((local, domain)) = a.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.is_empty()
        && !domain.contains('@')
        && !a
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "<>()[]\",;:\\".contains(c))
}

/// Checks quotes, comments and angle brackets balance, and counts the '@' signs outside
/// quoted strings and comments (the ones that can only belong to an address).
fn lexical_scan(value: &[u8]) -> Result<usize, AddressFieldError> {
    let mut at_signs = 0;
    let mut in_quote = false;
    let mut comment_depth = 0usize;
    let mut in_angle = false;
    let mut escaped = false;
    for &b in value {
        if escaped {
            escaped = false;
        } else if in_quote {
            match b {
                b'\\' => escaped = true,
                b'"' => in_quote = false,
                _ => {}
            }
        } else if comment_depth > 0 {
            match b {
                b'\\' => escaped = true,
                b'(' => comment_depth += 1,
                b')' => comment_depth -= 1,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_quote = true,
                b'(' => comment_depth = 1,
                b'<' if !in_angle => in_angle = true,
                b'>' if in_angle => in_angle = false,
                b'@' => at_signs += 1,
                b')' | b'<' | b'>' => return Err(AddressFieldError::Unbalanced),
                b'\\' => return Err(AddressFieldError::UnexpectedCharacter('\\')),
                // Routes and lists inside <...> are obsolete syntax mail-parser does not split.
                b',' | b';' | b':' if in_angle => {
                    return Err(AddressFieldError::UnexpectedCharacter(b as char));
                }
                _ => {}
            }
        }
    }
    if in_quote || comment_depth > 0 || in_angle || escaped {
        return Err(AddressFieldError::Unbalanced);
    }
    Ok(at_signs)
}
