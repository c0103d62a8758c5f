//! The body check (`privacy.body_check`): the body is shared by every copy of a message, so a
//! private address anywhere in it is shown to every recipient.
//!
//! What is searched, once per message, with the message's private-address automaton:
//! - the raw body bytes as they are (every literal address, whatever MIME says);
//! - every MIME part after its transfer encoding is undone (base64, quoted-printable) and its
//!   charset decoded: text and HTML (also with HTML character references and `%XX` decoded,
//!   and NFKC), attachments as bytes (a CSV of the original list), part headers (a file name)
//!   and nested messages (`message/rfc822`, `text/rfc822-headers`) with the readings of a
//!   header block.
//!
//! - the raw body's uuencoded blocks (`begin 644 name` ... `end`), decoded;
//! - base64 parts decoded leniently as well (characters outside the alphabet skipped), since
//!   readers decode what a strict decoder refuses;
//! - HTML also as a browser renders it (tags and comments removed).
//!
//! Nested messages are followed [`MAX_DEPTH`] deep; a body nested deeper cannot be checked and
//! fails closed when the message has more than one recipient. Memory: mail-parser keeps
//! unencoded parts as slices of the message and decodes one copy of each encoded part, so a
//! 25 MiB message costs at most about its size again while it is checked.

use std::borrow::Cow;

use mail_parser::{MessageParser, MimeHeaders, PartType};

use super::exposure::{Audience, Exposure};
use super::reading::{self, normalise};

/// Nested messages followed; mail-parser itself decodes 3 levels of encoded parts.
pub const MAX_DEPTH: usize = 8;

/// Where the body shows an address some recipient must not see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyLeak {
    /// A description of the part, for the reply and the log: `body part 3 (text/csv,
    /// "list.csv")`, or `body` for the raw bytes.
    pub part: String,
    /// True when the body could not be checked (nested too deep) rather than shown to hold
    /// an address.
    pub unreadable: bool,
}

/// Checks `body` (the bytes after the header block) for an address that some member of
/// `audience` may not see.
pub fn check(exposure: &Exposure, audience: &Audience, message: &[u8]) -> Option<BodyLeak> {
    if exposure.private_count() == 0 || audience.is_empty() {
        return None;
    }
    let leaks = |ids: Vec<usize>| ids.iter().any(|&id| !exposure.all_may_see(audience, id));
    // The whole message as MIME, parts numbered as mail-parser lists them.
    if let Some(parsed) = MessageParser::new().with_mime_headers().parse(message)
        && let Some(leak) = check_parts(exposure, &leaks, &parsed, "", 0)
    {
        return Some(leak);
    }
    let body = &message[super::rewrite::body_offset(message)..];
    let raw = crate::text::lossy(body);
    if leaks(exposure.shown_in_text(&raw)) {
        return Some(BodyLeak {
            part: "body".into(),
            unreadable: false,
        });
    }
    // uuencoded blocks (`begin 644 list.csv` ... `end`), as an attachment with
    // `Content-Transfer-Encoding: x-uuencode` or inline in a text part: clients decode both.
    for block in uudecode_blocks(&raw) {
        if leaks(exposure.shown_in_text(&crate::text::lossy(&block))) {
            return Some(BodyLeak {
                part: "body (uuencoded attachment)".into(),
                unreadable: false,
            });
        }
    }
    None
}

/// Every `begin <mode> <name>` ... `end` block of `text`, decoded. Lines that are not valid
/// uuencode inside a block are skipped, as lenient decoders do.
fn uudecode_blocks(text: &str) -> Vec<Vec<u8>> {
    let mut blocks = Vec::new();
    let mut current: Option<Vec<u8>> = None;
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        match &mut current {
            None => {
                let mut words = line.split_ascii_whitespace();
                let begins = words.next() == Some("begin")
                    && words
                        .next()
                        .is_some_and(|m| m.bytes().all(|b| b.is_ascii_digit()));
                if begins {
                    current = Some(Vec::new());
                }
            }
            Some(out) if line == "end" => {
                blocks.push(std::mem::take(out));
                current = None;
            }
            Some(out) => uudecode_line(line.as_bytes(), out),
        }
    }
    blocks.extend(current);
    blocks
}

/// One uuencoded line: a length character, then groups of 4 characters for 3 bytes.
fn uudecode_line(line: &[u8], out: &mut Vec<u8>) {
    let Some((&len, data)) = line.split_first() else {
        return;
    };
    let value = |c: u8| c.wrapping_sub(b' ') & 0x3f;
    let want = usize::from(value(len));
    let mut got = 0;
    for group in data.chunks(4) {
        let mut v = [0u8; 4];
        for (i, &c) in group.iter().enumerate() {
            v[i] = value(c);
        }
        for b in [
            (v[0] << 2) | (v[1] >> 4),
            (v[1] << 4) | (v[2] >> 2),
            (v[2] << 6) | v[3],
        ] {
            if got < want {
                out.push(b);
                got += 1;
            }
        }
    }
}

/// Checks the parts of one (possibly nested) message. `prefix` numbers nested parts
/// (`2.1`); the top-level header block (part 0's header) is the egress check's business.
fn check_parts(
    exposure: &Exposure,
    leaks: &dyn Fn(Vec<usize>) -> bool,
    message: &mail_parser::Message<'_>,
    prefix: &str,
    depth: usize,
) -> Option<BodyLeak> {
    let raw = message.raw_message();
    let leaks_unread = || leaks((0..exposure.private_count()).collect());
    for (n, part) in message.parts.iter().enumerate() {
        let name = || describe(prefix, n, part);
        let found = |shown: Vec<usize>| {
            leaks(shown).then(|| BodyLeak {
                part: name(),
                unreadable: false,
            })
        };
        // Part headers (file names, descriptions): nested or MIME part headers, read as
        // header text. The top-level header is not the body.
        if depth > 0 || n > 0 {
            let header = slice(raw, part.offset_header, part.offset_body);
            if let Some(leak) = found(exposure.shown(header)) {
                return Some(leak);
            }
            if reading::has_undecodable_word(header) && leaks_unread() {
                return Some(BodyLeak {
                    part: name(),
                    unreadable: true,
                });
            }
        }
        // Base64 as lenient decoders read it (characters outside the alphabet skipped), which
        // mail-parser's strict decoder gives up on.
        let base64 = part.encoding == mail_parser::Encoding::Base64
            || part
                .content_transfer_encoding()
                .is_some_and(|e| e.trim().eq_ignore_ascii_case("base64"));
        if base64 {
            let encoded = slice(raw, part.offset_body, part.offset_end);
            let decoded = reading::base64_lenient(encoded);
            if let Some(leak) = found(exposure.shown_in_text(&crate::text::lossy(&decoded))) {
                return Some(leak);
            }
        }
        let leak = match &part.body {
            PartType::Text(text) if is_headers(part) => found(exposure.shown(text.as_bytes())),
            PartType::Text(text) => found(text_readings(exposure, text, false)),
            PartType::Html(text) => found(text_readings(exposure, text, true)),
            PartType::Binary(bytes) | PartType::InlineBinary(bytes) => {
                if is_message(part) {
                    nested(exposure, leaks, bytes, &name(), depth)
                } else {
                    found(exposure.shown_in_text(&crate::text::lossy(bytes)))
                }
            }
            PartType::Message(inner) => {
                if depth + 1 >= MAX_DEPTH {
                    return Some(BodyLeak {
                        part: name(),
                        unreadable: true,
                    });
                }
                let inner_prefix = format!("{prefix}{n}.");
                check_parts(exposure, leaks, inner, &inner_prefix, depth + 1)
            }
            PartType::Multipart(_) => None,
        };
        if leak.is_some() {
            return leak;
        }
    }
    None
}

/// A `message/*` part mail-parser left as bytes (nested deeper than it decodes): parsed
/// again here, up to [`MAX_DEPTH`].
fn nested(
    exposure: &Exposure,
    leaks: &dyn Fn(Vec<usize>) -> bool,
    bytes: &[u8],
    name: &str,
    depth: usize,
) -> Option<BodyLeak> {
    if depth + 1 >= MAX_DEPTH {
        return Some(BodyLeak {
            part: name.to_string(),
            unreadable: true,
        });
    }
    let inner = MessageParser::new().with_mime_headers().parse(bytes)?;
    let header = slice(bytes, 0, inner.root_part().offset_body);
    if leaks(exposure.shown(header)) {
        return Some(BodyLeak {
            part: name.to_string(),
            unreadable: false,
        });
    }
    check_parts(exposure, leaks, &inner, &format!("{name}."), depth + 1)
}

/// A decoded text part as readers show it: as it is, NFKC and lower case, and (HTML, or text
/// with `%`) with character references and `%XX` decoded.
fn text_readings(exposure: &Exposure, text: &str, html: bool) -> Vec<usize> {
    let mut shown = exposure.shown_in_text(text);
    let normalised = normalise(text);
    if let Cow::Owned(n) = &normalised {
        shown.extend(exposure.shown_in_text(n));
    }
    if html || normalised.contains('%') {
        let decoded = decode_references(&normalised);
        let decoded = percent_encoding::percent_decode_str(&decoded).decode_utf8_lossy();
        shown.extend(exposure.shown_in_text(&decoded));
        if html {
            // As a browser renders it: tags and comments are not text, so
            // `bob<span></span>@<!-- x -->y.test` shows `bob@y.test`.
            let rendered = without_tags(&normalised);
            let rendered = decode_references(&rendered);
            shown.extend(exposure.shown_in_text(&rendered));
        }
    }
    shown
}

/// HTML with comments and tags removed (their text joins what was around them).
fn without_tags(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(open) = rest.find('<') {
        out.push_str(&rest[..open]);
        let tail = &rest[open..];
        let close = if tail.starts_with("<!--") {
            tail.find("-->").map(|i| i + 3)
        } else {
            tail.find('>').map(|i| i + 1)
        };
        match close {
            Some(len) => rest = &tail[len..],
            None => {
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// HTML numeric character references and the named ones that spell addresses.
fn decode_references(text: &str) -> Cow<'_, str> {
    if !text.contains('&') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let tail = &rest[amp..];
        let end = tail.bytes().take(12).position(|b| b == b';');
        let decoded = end.and_then(|e| reference(&tail[1..e]).map(|c| (c, e + 1)));
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &tail[len..];
            }
            None => {
                out.push('&');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

fn reference(name: &str) -> Option<char> {
    let number = |digits: &str, radix| u32::from_str_radix(digits, radix).ok();
    let code = match name.strip_prefix('#') {
        Some(n) => match n.strip_prefix(['x', 'X']) {
            Some(hex) => number(hex, 16)?,
            None => number(n, 10)?,
        },
        None => match name {
            "commat" => '@' as u32,
            "period" => '.' as u32,
            "lt" => '<' as u32,
            "gt" => '>' as u32,
            "amp" => '&' as u32,
            "quot" => '"' as u32,
            "nbsp" => ' ' as u32,
            _ => return None,
        },
    };
    char::from_u32(code)
}

fn is_headers(part: &mail_parser::MessagePart<'_>) -> bool {
    part.content_type().is_some_and(|t| {
        t.subtype()
            .is_some_and(|s| s.eq_ignore_ascii_case("rfc822-headers"))
    })
}

fn is_message(part: &mail_parser::MessagePart<'_>) -> bool {
    part.content_type()
        .is_some_and(|t| t.ctype().eq_ignore_ascii_case("message"))
}

/// `body part 2 (text/csv, "list.csv")`.
fn describe(prefix: &str, n: usize, part: &mail_parser::MessagePart<'_>) -> String {
    let ctype = part
        .content_type()
        .map(|t| match t.subtype() {
            Some(sub) => format!("{}/{}", t.ctype(), sub),
            None => t.ctype().to_string(),
        })
        .unwrap_or_else(|| "text/plain".into());
    let ctype: String = ctype
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(64)
        .collect();
    match part.attachment_name() {
        Some(file) => {
            let file: String = file
                .chars()
                .filter(|c| !c.is_control() && *c != '"' && *c != '@')
                .take(64)
                .collect();
            format!("body part {prefix}{n} ({ctype}, \"{file}\")")
        }
        None => format!("body part {prefix}{n} ({ctype})"),
    }
}

fn slice(raw: &[u8], start: u32, end: u32) -> &[u8] {
    let end = (end as usize).min(raw.len());
    let start = (start as usize).min(end);
    &raw[start..end]
}
