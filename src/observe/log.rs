//! What reaches the log of an address or of text a peer wrote.
//!
//! Addresses: by default an address appears as a short keyed hash of the local part plus the
//! domain (`3f9a1c2b@example.com`): enough to correlate lines about one recipient, not enough
//! to read the address. That holds for addresses inside free text too (an upstream's reply, an
//! error that quotes one): [`Redactor::text`] finds them the way a reader would
//! ([`address_tokens`]) and redacts each.
//!
//! Control characters: text from a peer may carry CR, LF, ESC sequences (`ESC[2K` erases the
//! terminal line, OSC `ESC]0;...BEL` retitles it) or bidi overrides that would forge or hide
//! log lines. [`Redactor::text`], [`Redactor::addr`] and [`escaped`] write every control
//! character (C0, DEL, C1), the Unicode line separators and the bidi controls as a visible
//! escape (`\r`, `\x1b`, `\u{202e}`), and a backslash as `\\`, so an escape in the log always
//! means the byte was there; whether or not addresses are shown.
//!
//! Both log formats carry these escapes as they are (the JSON formatter escapes the backslash
//! once more). [`guard_line`] is the independent check behind them: every line is scanned as
//! it is written, and what a call site forgot to escape is escaped there (in JSON as a `\uXXXX`
//! escape of the same character, so the value is unchanged and the line stays one line for
//! tools that split at U+2028 or NEL).

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::ops::Range;
use std::sync::Arc;

use crate::config::LogFormat;
use crate::privacy::address::address_tokens;

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

    /// Redactor that hides addresses under a fresh random key: the safe choice for a
    /// component built before (or without) the relay's configured one.
    pub fn hiding() -> Self {
        Redactor::new(false, rand::random())
    }

    /// The same key, showing addresses in full: for an operator who asked for them
    /// (`queue list --show-addresses`).
    pub fn showing(&self) -> Redactor {
        Redactor {
            show: true,
            key: self.key.clone(),
        }
    }

    /// The redacted form of an address (`3f9a1c2b@example.com`), whatever the setting: what an
    /// operator holding a log line searches the queue by.
    pub fn hashed(&self, address: &str) -> String {
        let hiding = Redactor {
            show: false,
            key: self.key.clone(),
        };
        hiding.addr(address).to_string()
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

    /// A `Display` value for free text that may quote addresses and may come from a peer: an
    /// upstream reply, an error's message. Every address token is redacted as configured and
    /// control characters are escaped (see the module doc). Formatting happens only when the
    /// log line is written.
    pub fn text<T: fmt::Display>(&self, text: T) -> RedactedText<'_, T> {
        RedactedText {
            redactor: self,
            text,
        }
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
        if self.address.is_empty() {
            return f.write_str("<>");
        }
        if self.redactor.show {
            return Escaping(f).write_str(self.address);
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
            write!(Escaping(f), "{}@{}", &hex[..8], domain.to_ascii_lowercase())
        }
    }
}

/// See [`Redactor::text`].
pub struct RedactedText<'a, T> {
    redactor: &'a Redactor,
    text: T,
}

impl<T: fmt::Display> fmt::Display for RedactedText<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.text.to_string();
        let mut at = 0;
        for span in merged(address_tokens(&text)) {
            Escaping(f).write_str(&text[at..span.start])?;
            write!(f, "{}", self.redactor.addr(&text[span.clone()]))?;
            at = span.end;
        }
        Escaping(f).write_str(&text[at..])
    }
}

/// Address tokens can nest (`"b@y, x"@z` holds `b@y`); each run of overlapping tokens is
/// redacted as one address, split at its last `@`.
fn merged(tokens: Vec<Range<usize>>) -> Vec<Range<usize>> {
    let mut tokens = tokens;
    tokens.sort_by_key(|t| t.start);
    let mut out: Vec<Range<usize>> = Vec::with_capacity(tokens.len());
    for t in tokens {
        match out.last_mut() {
            Some(last) if t.start < last.end => last.end = last.end.max(t.end),
            _ => out.push(t),
        }
    }
    out
}

/// A `Display` value for text that may come from a peer, with control characters escaped but
/// addresses left as they are: for text that holds no address (a DNS error, a file name).
pub fn escaped<T: fmt::Display>(text: T) -> Escaped<T> {
    Escaped(text)
}

/// See [`escaped`].
pub struct Escaped<T>(T);

impl<T: fmt::Display> fmt::Display for Escaped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(Escaping(f), "{}", self.0)
    }
}

/// Writes through to a formatter, escaping what could forge or hide a log line.
struct Escaping<'a, 'b>(&'a mut fmt::Formatter<'b>);

impl fmt::Write for Escaping<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut plain = 0;
        for (i, c) in s.char_indices() {
            if !needs_escape(c) {
                continue;
            }
            self.0.write_str(&s[plain..i])?;
            match c {
                '\\' => self.0.write_str("\\\\")?,
                '\r' => self.0.write_str("\\r")?,
                '\n' => self.0.write_str("\\n")?,
                '\t' => self.0.write_str("\\t")?,
                '\0' => self.0.write_str("\\0")?,
                c if c.is_ascii() => write!(self.0, "\\x{:02x}", c as u32)?,
                c => write!(self.0, "\\u{{{:x}}}", c as u32)?,
            }
            plain = i + c.len_utf8();
        }
        self.0.write_str(&s[plain..])
    }
}

/// Control characters (C0, DEL, C1), the Unicode line and paragraph separators, the bidi
/// controls, and the backslash that introduces our escapes.
fn needs_escape(c: char) -> bool {
    c == '\\'
        || c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// One formatted log line (with its final line end) as it may be written: see the module doc.
/// `ansi`: the text format colours its output (a terminal), so its own SGR sequences
/// (`ESC [ digits m`) stay; any other ESC is escaped.
pub fn guard_line(line: &str, format: LogFormat, ansi: bool) -> Cow<'_, str> {
    let body = line.strip_suffix('\n').unwrap_or(line);
    // Nearly every line is printable ASCII without a backslash's company: nothing to escape.
    if body.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        return Cow::Borrowed(line);
    }
    let sgr_end = |at: usize| -> Option<usize> {
        let rest = body[at..].strip_prefix("\x1b[")?;
        let digits = rest
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b';')
            .count();
        (rest.as_bytes().get(digits) == Some(&b'm')).then_some(at + 2 + digits + 1)
    };
    let unsafe_at = |at: usize, c: char| -> bool {
        c != '\\'
            && needs_escape(c)
            && !(ansi && format == LogFormat::Text && sgr_end(at).is_some())
    };
    if !body.char_indices().any(|(i, c)| unsafe_at(i, c)) {
        return Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(line.len() + 16);
    let mut skip_to = 0;
    for (i, c) in body.char_indices() {
        if i < skip_to {
            continue;
        }
        if c == '\x1b'
            && ansi
            && format == LogFormat::Text
            && let Some(end) = sgr_end(i)
        {
            out.push_str(&body[i..end]);
            skip_to = end;
            continue;
        }
        if !unsafe_at(i, c) {
            out.push(c);
            continue;
        }
        match format {
            // These occur only inside strings (the formatter writes the rest in ASCII), where
            // `\uXXXX` is the same character; all of them are in the BMP.
            LogFormat::Json => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            LogFormat::Text => {
                let _ = write!(out, "{}", escaped(c));
            }
        }
    }
    if line.ends_with('\n') {
        out.push('\n');
    }
    Cow::Owned(out)
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
        assert_eq!(
            Redactor::plain().addr("\"a\rb\"@c").to_string(),
            "\"a\\rb\"@c"
        );
    }

    fn hidden() -> Redactor {
        Redactor::new(false, [7; 32])
    }

    /// The redacted form of one address, for building expected lines.
    fn h(address: &str) -> String {
        hidden().addr(address).to_string()
    }

    #[test]
    fn addresses_in_text_are_redacted() {
        let r = hidden();
        assert_eq!(
            r.text("250 2.0.0 ok for <alice@x.test>").to_string(),
            format!("250 2.0.0 ok for <{}>", h("alice@x.test"))
        );
        assert_eq!(
            r.text("550 5.1.1 <bob@y.test>: rejected").to_string(),
            format!("550 5.1.1 <{}>: rejected", h("bob@y.test"))
        );
        assert_eq!(
            r.text("bob@y.test, carol@z.test; and Dave.D@W.test.")
                .to_string(),
            format!(
                "{}, {}; and {}.",
                h("bob@y.test"),
                h("carol@z.test"),
                h("Dave.D@W.test")
            )
        );
        // A quoted local part is one address, and the address inside it is hidden with it.
        let line = r.text("550 <\"b@y.test, x\"@z.test> unknown").to_string();
        assert_eq!(
            line,
            format!("550 <{}> unknown", h("\"b@y.test, x\"@z.test"))
        );
        assert!(!line.contains("b@y") && !line.contains("y.test"), "{line}");
        // No address: the text is unchanged.
        assert_eq!(
            r.text("451 4.3.0 try later").to_string(),
            "451 4.3.0 try later"
        );
        // Any Display value, e.g. an error.
        let e = std::io::Error::other("refused for ann@q.test");
        assert_eq!(
            r.text(&e).to_string(),
            format!("refused for {}", h("ann@q.test"))
        );
    }

    #[test]
    fn shown_addresses_stay_in_text() {
        let r = Redactor::plain();
        assert_eq!(
            r.text("550 5.1.1 <bob@y.test>: rejected").to_string(),
            "550 5.1.1 <bob@y.test>: rejected"
        );
    }

    #[test]
    fn control_characters_are_escaped_either_way() {
        let reply = "451 4.3.0 a\rFAKE LINE\n\x1b[2Kgone \x1b]0;x\x07 t\tab \0 \x7f \u{85} \u{202e}rtl \\ end";
        let expected = "451 4.3.0 a\\rFAKE LINE\\n\\x1b[2Kgone \\x1b]0;x\\x07 t\\tab \\0 \\x7f \\u{85} \\u{202e}rtl \\\\ end";
        for r in [hidden(), Redactor::plain()] {
            let line = r.text(reply).to_string();
            assert_eq!(line, expected);
            assert!(!line.chars().any(char::is_control), "{line:?}");
        }
        assert_eq!(escaped("a\x1bb@c.test").to_string(), "a\\x1bb@c.test");
        // An address next to a control character is still found and redacted.
        let line = hidden().text("x\x1bbob@y.test\r").to_string();
        assert_eq!(line, format!("x\\x1b{}\\r", h("bob@y.test")));
    }

    #[test]
    fn guarded_json_lines_keep_their_values_and_stay_one_line() {
        let value = "a\u{2028}b\u{85}c\u{7f}d\u{202e}e \\ f";
        let line = format!("{}\n", serde_json::json!({ "error": value }));
        let guarded = guard_line(&line, LogFormat::Json, false);
        assert!(guarded.ends_with("}\n"));
        let body = guarded.trim_end_matches('\n');
        assert!(!body.chars().any(needs_escape_but_backslash), "{body:?}");
        assert!(
            body.contains("\\u2028") && body.contains("\\u0085"),
            "{body}"
        );
        let parsed: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(parsed["error"], value, "same value");
        // Nothing to escape: the line is not copied.
        let clean = "{\"a\":\"b\\u001b\"}\n";
        assert!(matches!(
            guard_line(clean, LogFormat::Json, false),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn guarded_text_lines_escape_what_a_call_site_forgot() {
        let line = "WARN upstream failing error=451 busy\rFAKE \x1b[2K\x1b]0;t\x07 \u{2028}x\n";
        let guarded = guard_line(line, LogFormat::Text, false);
        assert_eq!(
            guarded,
            "WARN upstream failing error=451 busy\\rFAKE \\x1b[2K\\x1b]0;t\\x07 \\u{2028}x\n"
        );
        // Colours on a terminal are the formatter's own; an erase-line is not.
        let coloured = "\x1b[2mdate\x1b[0m \x1b[33mWARN\x1b[0m x\x1b[2Ky\n";
        assert_eq!(
            guard_line(coloured, LogFormat::Text, true),
            "\x1b[2mdate\x1b[0m \x1b[33mWARN\x1b[0m x\\x1b[2Ky\n"
        );
        assert!(matches!(
            guard_line("plain \\ line\n", LogFormat::Text, false),
            Cow::Borrowed(_)
        ));
    }

    fn needs_escape_but_backslash(c: char) -> bool {
        c != '\\' && needs_escape(c)
    }

    #[test]
    fn overlapping_tokens_merge() {
        assert_eq!(merged(vec![0..5, 1..3, 4..9, 10..12]), vec![0..9, 10..12]);
        assert_eq!(merged(vec![3..4, 0..2]), vec![0..2, 3..4]);
    }
}
