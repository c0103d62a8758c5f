//! The header splice: one copy's header block, built from the original header bytes.
//!
//! Only whole fields are dropped and exactly one `To:` field is written; every other byte is
//! copied as it arrived, so signatures over other fields, odd folding and unknown fields all
//! survive. The body is never read: callers send `message[body_offset(message)..]` after the
//! block returned here, so a fan-out of 1,000 copies stores and reads the body once.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::Rewrite;
use super::exposure::Exposure;
use super::fields::{self, FieldKind};
use crate::envelope::{is_dot_atom, quoted_string};

/// Longest line we write, per RFC 5322's "SHOULD be no more than 78 characters".
const LINE_LIMIT: usize = 78;
/// Bytes of UTF-8 per RFC 2047 encoded-word: 40 bytes -> 56 base64 characters -> a 68-character
/// word, which fits one folded line with room for the field name.
const ENCODED_CHUNK: usize = 40;

/// Header block (including the empty line that ends it) of the copy described by `rewrite`.
/// Everything after the original header block is the body and is sent unchanged.
///
/// Every copy loses `Bcc` and `Resent-Bcc`, and the `for <address>` clause of a `Received`
/// field that names a private address (a trace field must not tell one recipient who else
/// got the message). Rewritten copies also lose every recipient field and `DKIM-Signature`.
pub fn render_header(message: &[u8], rewrite: &Rewrite, exposure: &Exposure) -> Vec<u8> {
    let block = fields::scan(message);
    let header = &message[..block.body_start];
    let rewritten = !matches!(rewrite, Rewrite::Unchanged);
    let dropped = |kind: FieldKind| {
        kind.is_blind() || (rewritten && (kind.is_recipient() || kind == FieldKind::DkimSignature))
    };
    let trace = |f: &fields::Field| {
        (f.kind == FieldKind::Received)
            .then(|| without_private_for(&message[f.start..f.end], exposure))
            .flatten()
    };
    let touched = |f: &fields::Field| dropped(f.kind) || trace(f).is_some();
    if !rewritten && !block.fields.iter().any(touched) {
        return header.to_vec();
    }

    let eol = fields::line_ending(message);
    let to_field = match rewrite {
        Rewrite::Unchanged => Vec::new(),
        Rewrite::OnlyRecipient {
            address,
            display_name,
        } => only_recipient_field(address, display_name.as_deref(), eol),
        Rewrite::Undisclosed => [b"To: undisclosed-recipients:;".as_slice(), eol].concat(),
    };
    let mut out = Vec::with_capacity(header.len() + to_field.len() + 2);
    let mut inserted = to_field.is_empty();
    // Copy maximal runs of kept fields in one go.
    let mut run_start = 0;
    for f in &block.fields {
        let replacement = if dropped(f.kind) {
            Vec::new()
        } else {
            match trace(f) {
                Some(bytes) => bytes,
                None => continue,
            }
        };
        out.extend_from_slice(&message[run_start..f.start]);
        run_start = f.end;
        if !inserted && f.kind.is_visible() {
            out.extend_from_slice(&to_field);
            inserted = true;
        }
        out.extend_from_slice(&replacement);
    }
    out.extend_from_slice(&message[run_start..block.fields_end]);
    if !inserted {
        // No To/Cc field: the new one goes last. The last kept line may lack its line
        // ending when the message has no body; without one the new field would be glued to it.
        if !out.is_empty() && !out.ends_with(b"\n") {
            out.extend_from_slice(eol);
        }
        out.extend_from_slice(&to_field);
    }
    out.extend_from_slice(&message[block.fields_end..block.body_start]);
    out
}

/// The `To:` field of a split copy: what [`render_header`] writes for `OnlyRecipient`, for a
/// check of that one field.
pub fn only_recipient_to(address: &str, display_name: Option<&str>) -> Vec<u8> {
    only_recipient_field(address, display_name, b"\r\n")
}

/// A `Received` field without its `for` clause when the clause names a private address;
/// `None` when there is nothing to remove. The clause is `for` between white space, then an
/// address with or without angle brackets, up to the `;` or the next white space.
fn without_private_for(field: &[u8], exposure: &Exposure) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(field).ok()?;
    let lower = text.to_ascii_lowercase();
    let mut search = 0;
    while let Some(rel) = lower[search..].find("for") {
        let at = search + rel;
        search = at + 3;
        let before_ok = lower[..at].ends_with(|c: char| c.is_ascii_whitespace());
        let rest = &text[at + 3..];
        let addr_start = rest.len() - rest.trim_start().len();
        if !before_ok || addr_start == 0 {
            continue;
        }
        let tail = &rest[addr_start..];
        let len = tail
            .find(|c: char| c == ';' || c.is_ascii_whitespace())
            .unwrap_or(tail.len());
        let address = tail[..len].trim_start_matches('<').trim_end_matches('>');
        if !exposure.is_private(address) {
            continue;
        }
        let clause_start = lower[..at].trim_end().len();
        let clause_end = at + 3 + addr_start + len;
        let shorter = [&field[..clause_start], &field[clause_end..]].concat();
        // Another clause may follow (`for <a@x>, for <b@y>` is not valid, but cheap to handle).
        return Some(without_private_for(&shorter, exposure).unwrap_or(shorter));
    }
    None
}

/// Byte offset where the body starts (just after the empty line that ends the header block);
/// the message length if there is no body.
pub fn body_offset(message: &[u8]) -> usize {
    fields::scan(message).body_start
}

/// `To: R` or `To: "Name" <R>`, folded, ending with `eol`.
///
/// Names and addresses come from the client (header or RCPT TO) and may be hostile. Control
/// characters are removed from names so a CR or LF can never start a new header field
/// (injection). The address is written as an addr-spec a reader parses as exactly this one
/// mailbox (see [`addr_spec`]); one that cannot be written so gives
/// `To: undisclosed-recipients:;` rather than a header that could show something else.
fn only_recipient_field(address: &str, display_name: Option<&str>, eol: &[u8]) -> Vec<u8> {
    let Some(address) = addr_spec(address.trim()) else {
        return [b"To: undisclosed-recipients:;".as_slice(), eol].concat();
    };
    let address = address.as_str();
    let name: String = display_name
        .unwrap_or("")
        .chars()
        .map(|c| if c == '\t' { ' ' } else { c })
        .filter(|c| !c.is_control())
        .collect();
    let name = name.trim();
    if name.is_empty() {
        let mut out = format!("To: {address}").into_bytes();
        out.extend_from_slice(eol);
        return out;
    }
    let quoted = quoted_string(name);
    let mut out = Vec::with_capacity(LINE_LIMIT + address.len() + name.len() * 2);
    out.extend_from_slice(b"To: ");
    let mut line_len = 4;
    if name.is_ascii() && 4 + quoted.len() + 3 + address.len() <= LINE_LIMIT {
        out.extend_from_slice(quoted.as_bytes());
        line_len += quoted.len();
    } else {
        // Non-ASCII, or too long for one line: RFC 2047 encoded-words, one per folded line.
        for (i, chunk) in utf8_chunks(name, ENCODED_CHUNK).enumerate() {
            if i > 0 {
                out.extend_from_slice(eol);
                out.push(b' ');
                line_len = 1;
            }
            let word = format!("=?utf-8?b?{}?=", STANDARD.encode(chunk));
            out.extend_from_slice(word.as_bytes());
            line_len += word.len();
        }
    }
    if line_len + 3 + address.len() > LINE_LIMIT {
        out.extend_from_slice(eol);
    }
    out.extend_from_slice(b" <");
    out.extend_from_slice(address.as_bytes());
    out.push(b'>');
    out.extend_from_slice(eol);
    out
}

/// `address` as an RFC 5322 addr-spec: the local part as it is when it is a dot-atom,
/// quoted otherwise; `None` when it has no `@`, contains a control character or `=?`, or its
/// domain is not a dot-atom.
///
/// Why: smtp-proto hands over RCPT TO addresses with their quotes removed, so the envelope of
/// `RCPT TO:<"bob@y.test, x"@z.test>` holds `bob@y.test, x@z.test`. Written into `To:` as it
/// is, a reader would see two mailboxes, one of them another recipient's. Quoted, it is the
/// one mailbox it is. Control characters are refused, not stripped: stripping could turn an
/// address into another recipient's. `=?` starts an RFC 2047 encoded-word, which lenient
/// readers (mail-parser) decode even inside an address: `=?utf-8?q?x=40y?=victim@v.test`
/// would show `victim@v.test`.
fn addr_spec(address: &str) -> Option<String> {
    let (local, domain) = address.rsplit_once('@')?;
    if local.is_empty()
        || address.chars().any(char::is_control)
        || address.contains("=?")
        || !is_dot_atom(domain)
    {
        return None;
    }
    if is_dot_atom(local) || is_quoted_string(local) {
        Some(address.to_string())
    } else {
        Some(format!("{}@{domain}", quoted_string(local)))
    }
}

/// A complete RFC 5322 quoted-string (`"a b"`, `"a\"b"`): the envelope keeps quoted local
/// parts in this form.
fn is_quoted_string(s: &str) -> bool {
    let Some(inner) = s.strip_prefix('"').and_then(|r| r.strip_suffix('"')) else {
        return false;
    };
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.next().is_none() => {
                return false;
            }
            '"' => return false,
            _ => {}
        }
    }
    true
}

/// Splits `s` into pieces of at most `max` bytes without cutting a character (an encoded-word
/// must hold whole characters, RFC 2047 section 5).
fn utf8_chunks(s: &str, max: usize) -> impl Iterator<Item = &str> {
    let mut rest = s;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut end = rest.len().min(max);
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        if end == 0 {
            // A single character longer than `max` (impossible for max >= 4).
            end = rest.chars().next().map_or(rest.len(), char::len_utf8);
        }
        let (head, tail) = rest.split_at(end);
        rest = tail;
        Some(head)
    })
}
