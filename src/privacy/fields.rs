//! Header block scanning shared by the policy, the display-name parser and the rewrite.
//!
//! They must agree on exactly which bytes form a `To` or `Cc` field:
//! if they disagreed, a field could be counted as harmless and then kept, or removed while a
//! look-alike survived. So both walk the header with this one scanner.
//!
//! Rules, chosen to fail closed:
//! - The header ends at the first empty line (`CRLF` or bare `LF`). Every receiver agrees on
//!   that boundary; a whitespace-only line is *not* empty (it is an obsolete continuation).
//! - A line starting with `name[WSP]:` (RFC 5322 ftext, with the RFC 822 optional white space
//!   before the colon) starts a field. Any other line continues the previous field: folded
//!   lines, but also malformed lines such as a bare `b@y, c@z` after a `To:` line, so that
//!   stray addresses are removed (and counted) together with the field they follow.
//! - Except where lenient readers disagree: mail-parser (and mail programs like it) skip
//!   ASCII white space (space, tab, CR, form feed) anywhere before the colon, so they read
//!   `T o: b@y` or `\x0cCc: b@y` as address fields. Where such a reader would start a field on
//!   a line (see [`Reader`]) and the name it reads is one the policy handles (recipient
//!   fields, DKIM-Signature, From, Sender, Received), that line starts a field of that kind
//!   here too: it is counted and removed from rewritten copies instead of being kept as part
//!   of another field.
//!
//! The scanner only decides how copies are rewritten. Whether a copy may leave is decided by
//! the egress check ([`super::egress`]), which searches every byte of the copy's header for
//! private addresses whatever fields those bytes belong to.

/// The header fields the privacy policy treats specially.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FieldKind {
    To,
    Cc,
    Bcc,
    ResentTo,
    ResentCc,
    ResentBcc,
    /// Other fields that exist to name recipients: `Apparently-To`, `Delivered-To`,
    /// `X-Original-To`, `Envelope-To`, `Mail-Followup-To`... (see [`RECIPIENT_FIELDS`]).
    OtherRecipient,
    DkimSignature,
    From,
    Sender,
    Received,
    Other,
}

/// Names of the fields that name recipients besides To/Cc/Bcc and their `Resent-` forms:
/// their addresses are private, and split and Bcc copies drop them.
pub(crate) const RECIPIENT_FIELDS: [&str; 10] = [
    "apparently-to",
    "delivered-to",
    "x-original-to",
    "envelope-to",
    "x-envelope-to",
    "x-rcpt-to",
    "x-recipient",
    "original-recipient",
    "x-original-recipient",
    "mail-followup-to",
];

impl FieldKind {
    fn of(name: &[u8]) -> FieldKind {
        const NAMES: [(&[u8], FieldKind); 11] = [
            (b"to", FieldKind::To),
            (b"cc", FieldKind::Cc),
            (b"bcc", FieldKind::Bcc),
            (b"resent-to", FieldKind::ResentTo),
            (b"resent-cc", FieldKind::ResentCc),
            (b"resent-bcc", FieldKind::ResentBcc),
            (b"dkim-signature", FieldKind::DkimSignature),
            (b"from", FieldKind::From),
            (b"sender", FieldKind::Sender),
            (b"received", FieldKind::Received),
            (b"apparently-to", FieldKind::OtherRecipient),
        ];
        if let Some(&(_, kind)) = NAMES.iter().find(|(n, _)| name.eq_ignore_ascii_case(n)) {
            return kind;
        }
        if RECIPIENT_FIELDS
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n.as_bytes()))
        {
            return FieldKind::OtherRecipient;
        }
        FieldKind::Other
    }

    /// A field whose addresses are recipients' (private) addresses.
    pub(crate) fn is_recipient(self) -> bool {
        matches!(
            self,
            FieldKind::To
                | FieldKind::Cc
                | FieldKind::Bcc
                | FieldKind::ResentTo
                | FieldKind::ResentCc
                | FieldKind::ResentBcc
                | FieldKind::OtherRecipient
        )
    }

    /// To and Cc: the fields whose addresses make the visible set V.
    pub(crate) fn is_visible(self) -> bool {
        matches!(self, FieldKind::To | FieldKind::Cc)
    }

    /// Bcc and Resent-Bcc: removed from every copy.
    pub(crate) fn is_blind(self) -> bool {
        matches!(self, FieldKind::Bcc | FieldKind::ResentBcc)
    }
}

/// One header field as byte offsets into the message: `start..end` covers the name, the value,
/// every continuation line and the final line ending (if any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Field {
    pub start: usize,
    /// Just after the colon (equal to `start` for a leading line that is not a field).
    pub value_start: usize,
    pub end: usize,
    pub kind: FieldKind,
}

/// The header block of a message, split into fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HeaderBlock {
    pub fields: Vec<Field>,
    /// End of the last field (start of the empty line, or the message length).
    pub fields_end: usize,
    /// Start of the body: just after the empty line, or the message length if there is none.
    pub body_start: usize,
}

/// Scans the header block once, without copying anything.
pub(crate) fn scan(message: &[u8]) -> HeaderBlock {
    let mut fields: Vec<Field> = Vec::new();
    let mut reader = Reader::AtFieldStart;
    let mut pos = 0;
    while pos < message.len() {
        let line_end = message[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(message.len(), |i| pos + i + 1);
        let line = &message[pos..line_end];
        if line == b"\n" || line == b"\r\n" {
            return HeaderBlock {
                fields,
                fields_end: pos,
                body_start: line_end,
            };
        }
        let lenient = reader
            .reads_name(line)
            .then(|| lenient_name(line))
            .flatten();
        reader = reader.after(line, lenient.is_some());
        let strict =
            field_name(line).map(|(name_len, colon)| (FieldKind::of(&line[..name_len]), colon));
        let lenient = lenient
            .map(|(name, colon)| (FieldKind::of(&name), colon))
            .filter(|(kind, _)| *kind != FieldKind::Other);
        match strict.or(lenient) {
            Some((kind, colon)) => fields.push(Field {
                start: pos,
                value_start: pos + colon + 1,
                end: line_end,
                kind,
            }),
            None => match fields.last_mut() {
                Some(last) => last.end = line_end,
                None => fields.push(Field {
                    start: pos,
                    value_start: pos,
                    end: line_end,
                    kind: FieldKind::Other,
                }),
            },
        }
        pos = line_end;
    }
    HeaderBlock {
        fields,
        fields_end: message.len(),
        body_start: message.len(),
    }
}

/// Where a lenient reader (mail-parser) is at the start of a header line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reader {
    /// Looking for the next field name: at the top, and after a line it could not read as a
    /// field (no colon), where it skips white space, even a leading space or tab.
    AtFieldStart,
    /// Inside a field value: a line starting with space or tab continues it; any other line
    /// ends it and is read as the next field name.
    InValue,
}

impl Reader {
    /// True when the reader takes `line` as a possible field name.
    fn reads_name(self, line: &[u8]) -> bool {
        self == Reader::AtFieldStart || !matches!(line.first(), Some(b' ' | b'\t'))
    }

    /// The state at the start of the next line. `named`: the reader found a field name on it.
    fn after(self, line: &[u8], named: bool) -> Reader {
        match (self.reads_name(line), named) {
            (true, true) => Reader::InValue,
            (true, false) => Reader::AtFieldStart,
            (false, _) => Reader::InValue,
        }
    }
}

/// The field name a lenient reader takes from `line`: every non-white-space byte before the
/// first colon, and the colon's index; `None` without a colon or a name.
fn lenient_name(line: &[u8]) -> Option<(Vec<u8>, usize)> {
    let colon = memchr::memchr(b':', line)?;
    let name: Vec<u8> = line[..colon]
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    (!name.is_empty()).then_some((name, colon))
}

/// If `line` starts a field, the length of its name and the index of its colon.
fn field_name(line: &[u8]) -> Option<(usize, usize)> {
    let name_len = line
        .iter()
        .position(|&b| !(33..=126).contains(&b) || b == b':')
        .unwrap_or(line.len());
    if name_len == 0 {
        return None;
    }
    let colon = name_len
        + line[name_len..]
            .iter()
            .position(|&b| b != b' ' && b != b'\t')?;
    (line[colon] == b':').then_some((name_len, colon))
}

/// The line ending the message uses, judged by its first line: inbound SMTP normalises to
/// CRLF, but `.eml` files read by `inspect` often use bare LF, and a copy should not mix them.
pub(crate) fn line_ending(message: &[u8]) -> &'static [u8] {
    match message.iter().position(|&b| b == b'\n') {
        Some(i) if i == 0 || message[i - 1] != b'\r' => b"\n",
        _ => b"\r\n",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_continuations_and_body() {
        let m = b"From x\r\nTo: a@x,\r\n b@y\r\nstray@z\r\nSubject : hi\r\n\r\nbody\r\n";
        let h = scan(m);
        let kinds: Vec<_> = h.fields.iter().map(|f| f.kind).collect();
        // "From x" has no colon: a leading non-field line, kept as Other.
        assert_eq!(kinds, [FieldKind::Other, FieldKind::To, FieldKind::Other]);
        let to = h.fields[1];
        assert_eq!(&m[to.start..to.end], b"To: a@x,\r\n b@y\r\nstray@z\r\n");
        assert_eq!(&m[h.body_start..], b"body\r\n");
        assert_eq!(&m[h.fields_end..h.body_start], b"\r\n");
    }

    #[test]
    fn whitespace_only_line_does_not_end_header() {
        let m = b"Subject: a\n \nCc: b@y\n\nbody";
        let h = scan(m);
        assert_eq!(h.fields.len(), 2);
        assert_eq!(h.fields[1].kind, FieldKind::Cc);
        assert_eq!(&m[h.body_start..], b"body");
    }

    #[test]
    fn no_blank_line_is_all_header() {
        let m = b"To: a@x\r\nSubject: s";
        let h = scan(m);
        assert_eq!((h.fields_end, h.body_start), (m.len(), m.len()));
        assert_eq!(h.fields[1].end, m.len());
    }

    #[test]
    fn names_lenient_readers_see_start_fields() {
        // Space inside the name, form feed or CR before it, and a space-led line after a line
        // without a colon: mail-parser reads each as an address field, and so do we.
        let m = b"Subject: a\nT o: b@y\n\x0cCc: c@z\nno colon here\n  bcc: d@w\n\rTo: e@v\nX-Y z: f@u\n\n";
        let kinds: Vec<_> = scan(m).fields.iter().map(|f| f.kind).collect();
        assert_eq!(
            kinds,
            [
                FieldKind::Other,
                FieldKind::To,
                FieldKind::Cc,
                FieldKind::Bcc,
                FieldKind::To
            ]
        );
        // A folded line inside a value stays a continuation, whatever it looks like.
        let m = b"Subject: a\n To: b@y\n\n";
        assert_eq!(scan(m).fields.len(), 1);
    }

    #[test]
    fn line_ending_detection() {
        assert_eq!(line_ending(b"A: b\nC: d\r\n"), b"\n");
        assert_eq!(line_ending(b"A: b\r\n"), b"\r\n");
        assert_eq!(line_ending(b"A: b"), b"\r\n");
    }
}
