//! An independent oracle for the privacy checks: what a reader sees in a header block,
//! written from the SPEC and from how mail programs read, sharing no code with
//! `crate::privacy` (only mail-parser's own RFC 2047 decoder, which the product does not use
//! for this). The fuzz targets and `tests/properties/privacy_props.rs` judge the product's copies with
//! it, so a bug in the product's scanner cannot hide itself.
//!
//! Its readings are fewer and its idea of where an address ends is more lenient than the
//! product's (so it never calls a copy leaky that the product rightly let go), but it decodes
//! with a different decoder and normalises with its own tables: a leak that one reading of
//! the product misses is caught here.

use mail_parser::parsers::MessageStream;

/// True when some reading of `header` shows `address` (compared case-insensitively).
pub fn shows(header: &[u8], address: &str) -> bool {
    let address = address.to_lowercase();
    if address.is_empty() {
        return false;
    }
    readings(header)
        .iter()
        .any(|text| stands_alone_somewhere(text, &address))
}

/// The oracle's readings of a header block, all lower case: raw; unfolded; every field
/// decoded by mail-parser's unstructured-text parser (twice, for words encoded twice);
/// fullwidth forms folded and invisible characters dropped; white space around `@` and `.`
/// removed.
pub fn readings(header: &[u8]) -> Vec<String> {
    let raw = String::from_utf8_lossy(header).to_lowercase();
    let unfolded: String = raw.chars().filter(|&c| c != '\r' && c != '\n').collect();
    let mut decoded = String::new();
    for line in header.split(|&b| b == b'\n') {
        let once = decode(line);
        let twice = decode(once.as_bytes());
        decoded.push_str(&once);
        decoded.push(' ');
        decoded.push_str(&twice);
        decoded.push('\n');
    }
    // Fields as a whole too (a word may continue on a folded line).
    let once = decode(unfolded.as_bytes());
    decoded.push_str(&decode(once.as_bytes()));
    decoded.push('\n');
    decoded.push_str(&once);
    let decoded = decoded.to_lowercase();
    let folded: String = decoded.chars().filter_map(fold_char).collect();
    let mut tight = String::with_capacity(folded.len());
    let mut pending = false;
    for c in folded.chars() {
        if c == ' ' || c == '\t' {
            pending = true;
            continue;
        }
        if pending && !(c == '@' || c == '.' || tight.ends_with(['@', '.'])) {
            tight.push(' ');
        }
        pending = false;
        tight.push(c);
    }
    vec![raw, unfolded, decoded, folded, tight]
}

/// mail-parser's reading of one unstructured field value (it decodes RFC 2047 words).
fn decode(line: &[u8]) -> String {
    let mut value = line.to_vec();
    value.push(b'\n');
    match MessageStream::new(&value).parse_unstructured() {
        mail_parser::HeaderValue::Text(t) => t.into_owned(),
        mail_parser::HeaderValue::TextList(list) => list.join(" "),
        _ => String::from_utf8_lossy(line).into_owned(),
    }
}

/// Fullwidth ASCII forms (U+FF01..U+FF5E) and small/compatibility at signs to ASCII; zero
/// width and format characters dropped.
fn fold_char(c: char) -> Option<char> {
    match c {
        '\u{ff01}'..='\u{ff5e}' => char::from_u32(c as u32 - 0xff01 + 0x21),
        '\u{fe6b}' => Some('@'),
        '\u{200b}'..='\u{200f}' | '\u{2060}'..='\u{2064}' | '\u{feff}' | '\u{ad}' => None,
        _ => Some(c),
    }
}

/// `address` occurs in `text` with nothing glued to it that a reader would take as part of a
/// longer address (RFC 5322 atext on the left, domain characters on the right).
fn stands_alone_somewhere(text: &str, address: &str) -> bool {
    let atext = |c: char| c.is_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c);
    let domain = |c: char| c.is_alphanumeric() || c == '-' || c == '_';
    text.match_indices(address).any(|(i, m)| {
        let before = text[..i].chars().next_back();
        let mut after = text[i + m.len()..].chars();
        let glued_after = match after.next() {
            None => false,
            Some('.') => after.next().is_some_and(domain),
            Some(c) => domain(c),
        };
        !before.is_some_and(atext) && !glued_after
    })
}

/// Field kinds the oracle tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    To,
    Cc,
    Bcc,
    ResentBcc,
    /// Any other field that names recipients (Resent-To, Apparently-To, Delivered-To...).
    Recipients,
    Dkim,
    From,
    Received,
    Other,
}

impl Kind {
    /// Fields a rewritten copy must not have (besides its one To).
    pub const REWRITE_REMOVES: [Kind; 6] = [
        Kind::Cc,
        Kind::Bcc,
        Kind::ResentBcc,
        Kind::Recipients,
        Kind::Dkim,
        Kind::To,
    ];
}

/// An independent header splitter, written from the rules the privacy module documents (a
/// field starts at a line `name[WSP]:`, or where a lenient reader that ignores white space
/// before the colon would read an address field name; any other line continues the previous
/// one; the header ends at the first empty line), so the checks do not trust the code they
/// check.
pub struct Oracle<'a> {
    pub fields: Vec<(Kind, &'a [u8])>,
    /// The empty line ending the block (empty when there is none).
    pub end: &'a [u8],
}

impl<'a> Oracle<'a> {
    pub fn scan(header: &'a [u8]) -> Oracle<'a> {
        let mut starts: Vec<(Kind, usize)> = Vec::new();
        let mut pos = 0;
        let mut end: &'a [u8] = &[];
        // Whether a lenient reader looks for a field name at the start of the current line.
        let mut seeking_name = true;
        while pos < header.len() {
            let line_end = header[pos..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(header.len(), |i| pos + i + 1);
            let line = &header[pos..line_end];
            if line == b"\n" || line == b"\r\n" {
                end = line;
                break;
            }
            let folded = line.starts_with(b" ") || line.starts_with(b"\t");
            let lenient = if seeking_name || !folded {
                Self::lenient_kind(line)
            } else {
                None
            };
            seeking_name = (seeking_name || !folded) && lenient.is_none();
            let lenient = lenient.filter(|&k| k != Kind::Other);
            match Self::field_kind(line).or(lenient) {
                Some(kind) => starts.push((kind, pos)),
                // Lines before the first field form a field of their own.
                None if starts.is_empty() => starts.push((Kind::Other, pos)),
                None => {}
            }
            pos = line_end;
        }
        let fields_end = pos;
        let fields = starts
            .iter()
            .enumerate()
            .map(|(i, &(kind, start))| {
                let stop = starts.get(i + 1).map_or(fields_end, |s| s.1);
                (kind, &header[start..stop])
            })
            .collect();
        Oracle { fields, end }
    }

    fn field_kind(line: &[u8]) -> Option<Kind> {
        let name_len = line
            .iter()
            .take_while(|&&b| (33..=126).contains(&b) && b != b':')
            .count();
        if name_len == 0 {
            return None;
        }
        let rest = &line[name_len..];
        let ws = rest
            .iter()
            .take_while(|&&b| b == b' ' || b == b'\t')
            .count();
        if rest.get(ws) != Some(&b':') {
            return None;
        }
        let name = String::from_utf8_lossy(&line[..name_len]).to_ascii_lowercase();
        Some(match name.as_str() {
            "to" => Kind::To,
            "cc" => Kind::Cc,
            "bcc" => Kind::Bcc,
            "resent-bcc" => Kind::ResentBcc,
            "resent-to"
            | "resent-cc"
            | "apparently-to"
            | "delivered-to"
            | "x-original-to"
            | "envelope-to"
            | "x-envelope-to"
            | "x-rcpt-to"
            | "x-recipient"
            | "original-recipient"
            | "x-original-recipient"
            | "mail-followup-to" => Kind::Recipients,
            "dkim-signature" => Kind::Dkim,
            "from" | "sender" => Kind::From,
            "received" => Kind::Received,
            _ => Kind::Other,
        })
    }

    /// The kind of field a reader that drops white space before the colon sees on `line`.
    fn lenient_kind(line: &[u8]) -> Option<Kind> {
        let colon = line.iter().position(|&b| b == b':')?;
        let name: String = String::from_utf8_lossy(&line[..colon])
            .chars()
            .filter(|c| !matches!(c, ' ' | '\t' | '\r' | '\x0c' | '\n'))
            .collect::<String>()
            .to_ascii_lowercase();
        if name.is_empty() {
            return None;
        }
        // Any name counts (it ends the reader's search), even one no strict rule accepts.
        Some(Self::field_kind(format!("{name}:").as_bytes()).unwrap_or(Kind::Other))
    }

    pub fn count(&self, kind: Kind) -> usize {
        self.fields.iter().filter(|f| f.0 == kind).count()
    }

    pub fn fields_except(&self, kinds: &[Kind]) -> Vec<&'a [u8]> {
        self.fields
            .iter()
            .filter(|f| !kinds.contains(&f.0))
            .map(|f| f.1)
            .collect()
    }

    /// The fields of `kind`, joined, with line endings removed.
    pub fn joined(&self, kind: Kind) -> String {
        let bytes: Vec<u8> = self
            .fields
            .iter()
            .filter(|f| f.0 == kind)
            .flat_map(|f| f.1.iter().copied())
            .filter(|&b| b != b'\r' && b != b'\n')
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}
