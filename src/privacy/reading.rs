//! The texts a lenient reader may see in some header bytes.
//!
//! A mail client does not show the bytes: it unfolds lines, decodes RFC 2047 words (some
//! decode the result again), renders fullwidth and compatibility characters as their plain
//! forms, hides zero-width characters, drops comments and reads obsolete address syntax with
//! white space around `@` and `.`. An address hidden by any one of those steps is still shown
//! to somebody. So the privacy checks never ask "what does this field parse to?" but "does any
//! of these readings contain the address?", and each reading is computed once, in one linear
//! pass, whatever the input.
//!
//! Readings, each built from the one before it:
//! 1. raw: the bytes as UTF-8 (invalid sequences become U+FFFD, which separates words);
//! 2. unfolded: line breaks removed (RFC 5322 unfolding, and lines glued by readers that join
//!    a broken line);
//! 3. decoded: RFC 2047 encoded-words decoded wherever they stand (inside quotes, glued to
//!    other text), repeated until nothing changes (at most [`MAX_DECODE_ROUNDS`]), with the
//!    charsets mail clients know (`encoding_rs`);
//! 4. normalised: NFKC (`＠` -> `@`, fullwidth letters -> ASCII), default-ignorable code points
//!    (zero-width spaces, soft hyphens, bidi controls) removed (searches compare
//!    case-insensitively, so case is left alone);
//! 5. unescaped: `%XX` decoded (`mailto:` URLs, RFC 2231 parameters);
//! 6. compact: comments removed, quoted pairs unescaped, white space around `@` and `.` removed,
//!    quotes around a plain local part dropped (`"bob" @ y . test` -> `bob@y.test`).
//!
//! An encoded-word in a charset none of this can decode (UTF-7, UTF-32, HZ, ISO-2022-KR/CN, an
//! unknown name) is reported by [`has_undecodable_word`]: the checks fail closed on it.

use std::borrow::Cow;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use icu_normalizer::ComposingNormalizerBorrowed;
use icu_properties::CodePointSetData;
use icu_properties::props::DefaultIgnorableCodePoint;

/// Encoded words inside encoded words are decoded this many times at most: enough for any
/// client (none decodes more than twice), and a bound on the work per field.
pub const MAX_DECODE_ROUNDS: usize = 4;

/// Calls `visit` with every reading of `raw`, skipping a reading identical to the one before.
/// Stops early when `visit` returns `true` ("found what I was looking for").
pub fn each_reading(raw: &[u8], mut visit: impl FnMut(&str) -> bool) -> bool {
    let text = crate::text::lossy(raw);
    if visit(&text) {
        return true;
    }
    let unfolded = unfold(&text);
    if unfolded != text && visit(&unfolded) {
        return true;
    }
    let decoded = decode_repeatedly(&unfolded);
    if decoded != unfolded && visit(&decoded) {
        return true;
    }
    let normalised = normalise(&decoded);
    if normalised != decoded && visit(&normalised) {
        return true;
    }
    let unescaped = percent_decode(&normalised);
    if unescaped != normalised && visit(&unescaped) {
        return true;
    }
    let compact = compact(&unescaped);
    compact != unescaped && visit(&compact)
}

/// True when `raw` holds an RFC 2047 encoded-word (at any decoding round) in a charset no
/// reading here can decode: UTF-7, UTF-32, HZ, ISO-2022-KR/CN, or a name nobody knows. Such a
/// word may show any address to a client that knows the charset, so the checks treat it as
/// showing every private address (fail closed).
pub fn has_undecodable_word(raw: &[u8]) -> bool {
    if memchr::memmem::find(raw, b"=?").is_none() {
        return false;
    }
    let text = crate::text::lossy(raw);
    let mut current = unfold(&text).into_owned();
    for _ in 0..MAX_DECODE_ROUNDS {
        let mut search = 0;
        while let Some(rel) = current[search..].find("=?") {
            let start = search + rel;
            if let Some(Word::Undecodable) = parse_word(&current[start..]) {
                return true;
            }
            search = start + 2;
        }
        match decode_words(&current) {
            Some(next) => current = next,
            None => break,
        }
    }
    false
}

/// Every reading of `raw` joined with a separator no address can span: for searches that
/// want all readings in one pass.
pub fn all_readings(raw: &[u8]) -> String {
    let mut out = String::with_capacity(raw.len() * 2);
    each_reading(raw, |r| {
        out.push_str(r);
        out.push('\n');
        false
    });
    out
}

/// Line breaks removed; borrowed when removing them cannot change what an address search
/// finds (no line break has address characters on both sides, and no encoded-word could
/// continue across one), which is the common case of a folded address list.
fn unfold(text: &str) -> Cow<'_, str> {
    if !text.contains(['\r', '\n']) || !fold_matters(text) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(text.chars().filter(|&c| c != '\r' && c != '\n').collect())
}

/// True when joining the lines of `text` could make or change an address or an encoded-word:
/// some line break has, on both sides (white space after it skipped), a character that can be
/// part of one.
fn fold_matters(text: &str) -> bool {
    let part_of_address = |c: char| {
        super::address::joins_local(c)
            || super::address::joins_domain(c)
            || matches!(c, '@' | '.' | '"' | '=' | '?' | '%' | '(' | ')' | '\\')
            || !c.is_ascii()
    };
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(rel) = memchr::memchr2(b'\r', b'\n', &bytes[i..]) {
        let start = i + rel;
        let mut end = start;
        while end < bytes.len() && matches!(bytes[end], b'\r' | b'\n' | b' ' | b'\t') {
            end += 1;
        }
        let before = text[..start].chars().next_back();
        let after = text[end..].chars().next();
        if before.is_some_and(part_of_address) && after.is_some_and(part_of_address) {
            return true;
        }
        i = end.max(start + 1);
    }
    false
}

/// RFC 2047 decoding, repeated while it changes something.
pub fn decode_repeatedly(text: &str) -> Cow<'_, str> {
    let mut current = Cow::Borrowed(text);
    for _ in 0..MAX_DECODE_ROUNDS {
        match decode_words(&current) {
            Some(next) => current = Cow::Owned(next),
            None => break,
        }
    }
    current
}

/// One round of RFC 2047 decoding; `None` when `text` holds no decodable word. White space
/// between two adjacent encoded-words disappears, as RFC 2047 section 6.2 says.
fn decode_words(text: &str) -> Option<String> {
    let mut out = String::new();
    let mut changed = false;
    let mut copied = 0;
    let mut last_word_end: Option<usize> = None;
    let mut search = 0;
    while let Some(rel) = text[search..].find("=?") {
        let start = search + rel;
        match parse_word(&text[start..]) {
            Some(Word::Decoded(len, decoded)) => {
                let gap = &text[copied..start];
                let adjacent = last_word_end == Some(copied) && gap.trim().is_empty();
                if !adjacent {
                    out.push_str(gap);
                }
                out.push_str(&decoded);
                changed = true;
                copied = start + len;
                last_word_end = Some(copied);
                search = copied;
            }
            Some(Word::Undecodable) | None => search = start + 2,
        }
    }
    if !changed {
        return None;
    }
    out.push_str(&text[copied..]);
    Some(out)
}

/// An encoded-word at the start of some text.
enum Word {
    /// Its length and decoded text.
    Decoded(usize, String),
    /// Well formed, in a charset that cannot be decoded here.
    Undecodable,
}

/// Parses `=?charset?enc?text?=` at the start of `s`; `None` when it is not an encoded-word.
/// Every part is checked as it is read and the text ends at its first `?`, so no start
/// position costs more than [`MAX_CHARSET`] bytes beyond the word itself.
fn parse_word(s: &str) -> Option<Word> {
    let b = s.as_bytes();
    let mut i = 2;
    let charset_start = i;
    while i < b.len() && i - charset_start < MAX_CHARSET && is_charset_byte(b[i]) {
        i += 1;
    }
    if i == charset_start || b.get(i) != Some(&b'?') {
        return None;
    }
    let charset = &s[charset_start..i];
    let encoding = *b.get(i + 1)?;
    if b.get(i + 2) != Some(&b'?') {
        return None;
    }
    i += 3;
    let text_start = i;
    while i < b.len() && b[i] != b'?' && b[i].is_ascii_graphic() {
        i += 1;
    }
    if b.get(i) != Some(&b'?') || b.get(i + 1) != Some(&b'=') {
        return None;
    }
    let text = &s[text_start..i];
    let bytes = match encoding {
        b'B' | b'b' => base64_lenient(text.as_bytes()),
        b'Q' | b'q' => q_decode(text),
        _ => return None,
    };
    // RFC 2231: `charset*language`.
    let label = charset.split('*').next().unwrap_or(charset);
    Some(match to_text(label, &bytes) {
        Some(decoded) => Word::Decoded(i + 2, decoded),
        None => Word::Undecodable,
    })
}

/// Base64 as lenient decoders read it (RFC 2045 6.8: characters outside the alphabet are
/// ignored), stopping at the first `=` pad; a trailing partial group is decoded as far as it
/// goes.
pub fn base64_lenient(encoded: &[u8]) -> Vec<u8> {
    let clean: Vec<u8> = encoded
        .iter()
        .copied()
        .take_while(|&c| c != b'=')
        .filter(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
        .collect();
    // A lone trailing character holds no whole byte.
    let usable = if clean.len() % 4 == 1 {
        clean.len() - 1
    } else {
        clean.len()
    };
    LENIENT.decode(&clean[..usable]).unwrap_or_default()
}

/// Standard alphabet, padding optional, stray bits in the last character ignored.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Longest charset name read (the longest IANA name is 45 characters).
const MAX_CHARSET: usize = 64;

fn is_charset_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'*' | b'+' | b'.' | b':')
}

/// The `Q` encoding: `_` is a space, `=XX` a byte.
fn q_decode(text: &str) -> Vec<u8> {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'_' => out.push(b' '),
            b'=' => {
                if let Some(v) = b.get(i + 1..i + 3).and_then(hex_byte) {
                    out.push(v);
                    i += 3;
                    continue;
                }
                out.push(b'=');
            }
            c => out.push(c),
        }
        i += 1;
    }
    out
}

fn hex_byte(pair: &[u8]) -> Option<u8> {
    let s = std::str::from_utf8(pair).ok()?;
    u8::from_str_radix(s, 16).ok()
}

/// Bytes in the named charset as text. `None` for a charset that cannot be decoded here:
/// unknown names, and the ones the WHATWG encoding standard (encoding_rs) maps to its
/// "replacement" decoder because they hide text from checks like this one (HZ, ISO-2022-KR
/// and -CN); also UTF-7 and UTF-32, which it does not know. Labels that only say the bytes are
/// 8-bit of no known charset are read as UTF-8, as mail clients do.
pub fn to_text(charset: &str, bytes: &[u8]) -> Option<String> {
    let label = charset.trim();
    if ["unknown-8bit", "x-unknown", "unknown", "8bit", "default"]
        .iter()
        .any(|l| label.eq_ignore_ascii_case(l))
    {
        return Some(crate::text::lossy(bytes).into_owned());
    }
    let encoding = encoding_rs::Encoding::for_label(label.as_bytes())?;
    if encoding == encoding_rs::REPLACEMENT {
        return None;
    }
    Some(encoding.decode_without_bom_handling(bytes).0.into_owned())
}

/// NFKC, default-ignorable code points removed. (Case is not folded here: every search
/// compares case-insensitively.) ASCII text is its own normal form.
pub fn normalise(text: &str) -> Cow<'_, str> {
    if text.is_ascii() {
        return Cow::Borrowed(text);
    }
    let ignorable = CodePointSetData::new::<DefaultIgnorableCodePoint>();
    let nfkc = ComposingNormalizerBorrowed::new_nfkc().normalize(text);
    if !nfkc.chars().any(|c| ignorable.contains(c)) {
        return nfkc;
    }
    Cow::Owned(nfkc.chars().filter(|&c| !ignorable.contains(c)).collect())
}

/// True when [`compact`] would change something that matters for an address: a comment, a
/// quoted pair, a quote right before `@`, or white space next to `@` or `.`.
fn compactable(text: &str) -> bool {
    let b = text.as_bytes();
    b.iter().enumerate().any(|(i, &c)| match c {
        b'(' | b'\\' => true,
        b'"' => b.get(i + 1) == Some(&b'@'),
        b' ' | b'\t' => {
            matches!(b.get(i + 1), Some(b'@' | b'.')) || (i > 0 && matches!(b[i - 1], b'@' | b'.'))
        }
        _ => false,
    })
}

/// Comments removed, quoted pairs unescaped, white space next to `@` and `.` removed, and
/// `"plain"@` unquoted.
fn compact(text: &str) -> Cow<'_, str> {
    if !compactable(text) {
        return Cow::Borrowed(text);
    }
    // Comments and quoted pairs.
    let mut stripped = String::with_capacity(text.len());
    let mut depth = 0usize;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next()
                    && depth == 0
                {
                    stripped.push(n);
                }
            }
            '(' => depth += 1,
            ')' if depth > 0 => depth -= 1,
            _ if depth > 0 => {}
            _ => stripped.push(c),
        }
    }
    let decoded = stripped;
    // White space next to `@` or `.` (obsolete syntax allows it there).
    let mut out = String::with_capacity(decoded.len());
    let mut pending_space = String::new();
    for c in decoded.chars() {
        if c == ' ' || c == '\t' {
            pending_space.push(c);
            continue;
        }
        let glue = matches!(c, '@' | '.') || out.ends_with(['@', '.']);
        if !glue {
            out.push_str(&pending_space);
        }
        pending_space.clear();
        out.push(c);
    }
    out.push_str(&pending_space);
    Cow::Owned(unquote_plain_locals(&out))
}

/// `%40` -> `@`: URLs (`mailto:`) and RFC 2231 parameters show addresses this way.
fn percent_decode(text: &str) -> Cow<'_, str> {
    if !text.contains('%') {
        return Cow::Borrowed(text);
    }
    let bytes: Vec<u8> = percent_encoding::percent_decode_str(text).collect();
    Cow::Owned(crate::text::lossy(&bytes).into_owned())
}

/// `"bob"@y` -> `bob@y` when the quoted part holds no separator: the same mailbox written
/// differently.
fn unquote_plain_locals(text: &str) -> String {
    if !text.contains("\"@") {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(close) = rest.find("\"@") {
        let head = &rest[..close];
        match head.rfind('"') {
            Some(open)
                if !head[open + 1..].is_empty()
                    && !head[open + 1..].contains(|c: char| {
                        c.is_whitespace() || matches!(c, ',' | ';' | '<' | '>' | '@' | ':')
                    }) =>
            {
                out.push_str(&head[..open]);
                out.push_str(&head[open + 1..]);
            }
            _ => {
                out.push_str(head);
                out.push('"');
            }
        }
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests;
