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
//! Nested messages are followed [`MAX_DEPTH`] deep; a body nested deeper cannot be checked and
//! fails closed when the message has more than one recipient. Memory: mail-parser keeps
//! unencoded parts as slices of the message and decodes one copy of each encoded part, so a
//! 25 MiB message costs at most about its size again while it is checked.

use std::borrow::Cow;

use mail_parser::{MessageParser, MimeHeaders, PartType};

use super::exposure::{Audience, Exposure};
use super::reading::normalise;

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
    let raw = String::from_utf8_lossy(body);
    if leaks(exposure.shown_in_text(&raw)) {
        return Some(BodyLeak {
            part: "body".into(),
            unreadable: false,
        });
    }
    None
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
        }
        let leak = match &part.body {
            PartType::Text(text) if is_headers(part) => found(exposure.shown(text.as_bytes())),
            PartType::Text(text) => found(text_readings(exposure, text, false)),
            PartType::Html(text) => found(text_readings(exposure, text, true)),
            PartType::Binary(bytes) | PartType::InlineBinary(bytes) => {
                if is_message(part) {
                    nested(exposure, leaks, bytes, &name(), depth)
                } else {
                    found(exposure.shown_in_text(&String::from_utf8_lossy(bytes)))
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
    }
    shown
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
        let end = tail[..tail.len().min(12)].find(';');
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
