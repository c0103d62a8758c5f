//! What counts as an address in free text, and when two addresses are the same one.
//!
//! The privacy checks, log redaction and the envelope all need the same answer to "is this an
//! address, and where does it end?", and they need it for text no address parser would accept:
//! display names, comments, upstream replies, message bodies. So this is deliberately a lexical
//! rule, not a parser: every `@` with at least one local-part character before it and one
//! domain character after it is an address token, however odd its surroundings.
//!
//! The edges are chosen as a human reader draws them: characters that really occur inside
//! addresses (letters, digits, `.`, `_`, `-`, `+`, letters of any script) join; everything
//! else (quotes, brackets, `=`, `/`, `'`, white space...) separates, even where RFC 5322 would
//! allow it in a local part. `'bob@y.test'` shows `bob@y.test`; `joann@y.test` does not show
//! `ann@y.test`.

use std::ops::Range;

use crate::envelope::is_dot_atom;

/// True for a character that continues the local part to the left of `@`.
pub fn joins_local(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(c, '.' | '_' | '-' | '+')
        || (!c.is_ascii() && c.is_alphanumeric())
}

/// True for a character that continues a domain name to the right of `@`. A `.` joins only
/// when another domain character follows it (a sentence may end right after an address).
pub use crate::envelope::joins_domain;

/// Byte ranges of the address tokens in `text`, in order. A quoted local part (`"a b"@x`) is
/// part of its token; the `@` inside it also starts a token of its own (`"b@y, x"@z` shows
/// `b@y` to a careless reader).
pub fn address_tokens(text: &str) -> Vec<Range<usize>> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut last_end = 0;
    for at in memchr::memchr_iter(b'@', bytes) {
        let Some(end) = domain_end(text, at + 1) else {
            continue;
        };
        let start = local_start(text, at, last_end.min(at));
        if let Some(start) = start {
            out.push(start..end);
            last_end = end;
        }
    }
    out
}

/// Start of the local part that ends at `at` (the `@`), or `None` without one. `floor` bounds
/// the walk back so a run of `@`s stays linear: a local part never reaches into the previous
/// token's domain.
fn local_start(text: &str, at: usize, floor: usize) -> Option<usize> {
    let before = &text[..at];
    if before.ends_with('"')
        && let Some(open) = quoted_start(&before[..before.len() - 1])
    {
        return Some(open);
    }
    let mut start = at;
    for (i, c) in before[floor..].char_indices().rev() {
        if !joins_local(c) {
            break;
        }
        start = floor + i;
    }
    // Dots at the edge belong to the sentence, not the address.
    while text[start..at].starts_with('.') {
        start += 1;
    }
    (start < at).then_some(start)
}

/// Longest quoted local part looked for (RFC 5321 allows 64 octets; quoting and escapes add
/// some): bounds the walk back so text full of `"@` stays linear.
const MAX_QUOTED_LOCAL: usize = 256;

/// The opening quote of a quoted string whose closing quote was just before `text`'s end, on
/// the same line; `None` when there is none (then the `"` is only punctuation).
fn quoted_start(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let floor = bytes.len().saturating_sub(MAX_QUOTED_LOCAL);
    let mut i = bytes.len();
    while i > floor {
        i -= 1;
        match bytes[i] {
            b'"' if !escaped(&bytes[floor..], i - floor) => return Some(i),
            b'\r' | b'\n' => return None,
            _ => {}
        }
    }
    None
}

/// True when the byte at `i` is preceded by an odd number of backslashes.
fn escaped(bytes: &[u8], i: usize) -> bool {
    bytes[..i].iter().rev().take_while(|&&b| b == b'\\').count() % 2 == 1
}

/// End of the domain that starts at `from`, or `None` without one: a run of domain characters
/// and inner dots, or an address literal `[...]`.
pub(crate) fn domain_end(text: &str, from: usize) -> Option<usize> {
    let rest = &text[from..];
    if rest.starts_with('[') {
        let close = rest.find(']')?;
        let inner = &rest[1..close];
        let literal = !inner.is_empty()
            && inner
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '-'));
        return literal.then_some(from + close + 1);
    }
    let mut end = from;
    let mut chars = rest.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if joins_domain(c) {
            end = from + i + c.len_utf8();
        } else if c == '.' && chars.peek().is_some_and(|&(_, n)| joins_domain(n)) && end > from {
            continue;
        } else {
            break;
        }
    }
    (end > from).then_some(end)
}

/// True when `text[range]` stands on its own as an address: not glued to more local-part
/// characters before it or more domain characters after it. Used to accept a match of a known
/// address found by substring search.
pub fn stands_alone(text: &str, range: &Range<usize>) -> bool {
    let before = text[..range.start].chars().next_back();
    if before.is_some_and(joins_local) {
        return false;
    }
    let mut after = text[range.end..].chars();
    match after.next() {
        None => true,
        Some(c) if joins_domain(c) => false,
        Some('.') => !after.next().is_some_and(joins_domain),
        Some(_) => true,
    }
}

/// The form two addresses are compared in: the local part unquoted when quoting adds nothing
/// (`"bob"@y` is `bob@y`), all lower case. Two envelope recipients with the same key are the
/// same mailbox for de-duplication and privacy.
pub fn key(address: &str) -> String {
    let address = address.trim();
    let Some((local, domain)) = address.rsplit_once('@') else {
        return address.to_lowercase();
    };
    let local = unquoted_if_plain(local);
    // `bob@y.test.` (a fully qualified domain) is `bob@y.test`.
    let domain = domain.trim_end_matches('.');
    let mut key = String::with_capacity(local.len() + 1 + domain.len());
    for part in [local, "@", domain] {
        if part.is_ascii() {
            let from = key.len();
            key.push_str(part);
            key[from..].make_ascii_lowercase();
        } else {
            key.extend(part.chars().flat_map(char::to_lowercase));
        }
    }
    key
}

/// `"bob"` -> `bob` when the quoted content is a plain dot-atom; anything else as it is.
fn unquoted_if_plain(local: &str) -> &str {
    match local.strip_prefix('"').and_then(|l| l.strip_suffix('"')) {
        Some(inner) if is_dot_atom(inner) => inner,
        _ => local,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(text: &str) -> Vec<&str> {
        address_tokens(text).into_iter().map(|r| &text[r]).collect()
    }

    #[test]
    fn tokens_in_free_text() {
        assert_eq!(
            tokens("550 5.1.1 <bob@y.test>: rejected; for alice@x.test."),
            ["bob@y.test", "alice@x.test"]
        );
        assert_eq!(tokens("'a.b+c@x-y.test'"), ["a.b+c@x-y.test"]);
        assert_eq!(tokens("\"b@y, x\"@z.test"), ["b@y", "\"b@y, x\"@z.test"]);
        assert_eq!(
            tokens("user@[192.0.2.1] and @ alone, a@ b"),
            ["user@[192.0.2.1]"]
        );
        assert_eq!(tokens("=?utf-8?q?x?=bob@y"), ["bob@y"]);
        assert_eq!(tokens("ünïcode@bücher.test"), ["ünïcode@bücher.test"]);
        assert_eq!(tokens("a@b@c"), ["a@b"]);
    }

    #[test]
    fn many_at_signs_stay_linear() {
        let text = "a".repeat(10_000) + &"@".repeat(100_000);
        assert_eq!(tokens(&text).len(), 0);
        let text = "\"@".repeat(100_000);
        assert!(tokens(&text).len() <= 100_000);
        let text = "x@y ".repeat(100_000);
        assert_eq!(address_tokens(&text).len(), 100_000);
    }

    #[test]
    fn standing_alone() {
        let text = "joann@y.test ann@y.test ann@y.test.evil ann@y.test. ann@y.test-x";
        let found: Vec<usize> = text
            .match_indices("ann@y.test")
            .filter(|(i, m)| stands_alone(text, &(*i..i + m.len())))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(found, [13, 40]);
    }

    #[test]
    fn comparison_key() {
        assert_eq!(key("Bob@Y.Test"), "bob@y.test");
        assert_eq!(key("\"bob\"@y.test"), "bob@y.test");
        assert_eq!(key("\"b@y, x\"@z.test"), "\"b@y, x\"@z.test");
    }
}
