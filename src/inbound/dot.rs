//! Sans-IO decoder for the DATA stream (RFC 5321 4.1.1.4 and 4.5.2), written here rather than
//! taken from `smtp-proto` because its `DataReceiver` keeps bare `LF` line ends as they are and
//! has no size cap; mailveil must store CRLF lines and must never buffer past the limit.
//!
//! Rules, chosen to make SMTP smuggling impossible (a message boundary seen differently by us
//! and by the upstream server):
//! - End of data is *only* `<CR><LF>.<CR><LF>`. The CRLF ending the `DATA` command counts as
//!   the first `<CR><LF>`, so an empty message is `.<CR><LF>` right after `354`.
//! - A line ending in a bare `<LF>` is stored with `<CR><LF>`.
//! - A line holding a lone dot that does not end the data (`<LF>.<CR><LF>`, `<LF>.<LF>`,
//!   `<CR><LF>.<LF>`) is stored as the text line `.` + CRLF. It is not an end marker, not
//!   stuffing, and not silently dropped; when relayed, the upstream client dot-stuffs it to
//!   `..`, so no server downstream can see an end of data there either.
//! - Any other line starting with `.` loses that first dot (dot-unstuffing), whatever ended
//!   the previous line.
//! - A bare `<CR>` inside a line is kept as it is.
//!
//! The size limit applies to the decoded message. Past it the decoder keeps finding the end of
//! data but stores nothing more and frees what it held, so an oversized message costs no
//! memory and the connection stays usable for a `552` and the next transaction.

use memchr::memchr;

/// Where the decoder stands between calls; every state is resumable at any byte boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line; `after_crlf` says whether the previous line ended in CRLF.
    LineStart { after_crlf: bool },
    /// Seen a `.` at line start.
    Dot { after_crlf: bool },
    /// Seen `.<CR>` at line start.
    DotCr { after_crlf: bool },
    /// Inside a line; `cr` when the last byte stored was a CR (so an LF now completes CRLF).
    Text { cr: bool },
    /// End of data found; further input is not ours.
    Done,
}

/// Result of feeding one chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    /// The whole chunk was consumed and the end of data is still ahead.
    NeedMore,
    /// End of data found after `consumed` bytes of the chunk; the rest belongs to the next
    /// command (pipelining).
    End { consumed: usize },
}

/// Decodes one message body; create one per DATA command.
#[derive(Debug, Clone)]
pub struct DotDecoder {
    state: State,
    limit: usize,
    size: usize,
    overflow: bool,
}

impl DotDecoder {
    /// `limit` is the largest decoded message accepted, in bytes.
    pub fn new(limit: usize) -> Self {
        DotDecoder {
            state: State::LineStart { after_crlf: true },
            limit,
            size: 0,
            overflow: false,
        }
    }

    /// True once the decoded message grew past the limit; the output was then emptied.
    pub fn overflowed(&self) -> bool {
        self.overflow
    }

    /// Decoded size so far, counting bytes that were discarded after an overflow.
    pub fn decoded_size(&self) -> usize {
        self.size
    }

    /// Decodes `input`, appending message bytes to `out`. Work is per line (a `memchr` for the
    /// next LF and one copy), never per byte.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Feed {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::LineStart { after_crlf } => {
                    if input[i] == b'.' {
                        self.state = State::Dot { after_crlf };
                        i += 1;
                    } else {
                        self.state = State::Text { cr: false };
                    }
                }
                State::Dot { after_crlf } => match input[i] {
                    b'\r' => {
                        self.state = State::DotCr { after_crlf };
                        i += 1;
                    }
                    b'\n' => {
                        // `.<LF>`: a lone dot with a bare LF never ends the data.
                        self.emit(out, b".\r\n");
                        self.state = State::LineStart { after_crlf: false };
                        i += 1;
                    }
                    // Stuffing: the dot is dropped, the byte is text.
                    _ => self.state = State::Text { cr: false },
                },
                State::DotCr { after_crlf } => {
                    if input[i] == b'\n' {
                        i += 1;
                        if after_crlf {
                            self.state = State::Done;
                            return Feed::End { consumed: i };
                        }
                        // `<LF>.<CR><LF>`: the smuggling marker, stored as a text line.
                        self.emit(out, b".\r\n");
                        self.state = State::LineStart { after_crlf: true };
                    } else {
                        // `.<CR>x`: the dot was stuffing; the CR is a bare CR of the text.
                        self.emit(out, b"\r");
                        self.state = State::Text { cr: true };
                    }
                }
                State::Text { cr } => {
                    let rest = &input[i..];
                    match memchr(b'\n', rest) {
                        Some(p) => {
                            let content = &rest[..p];
                            self.emit(out, content);
                            let crlf = match content.last() {
                                Some(&last) => last == b'\r',
                                None => cr,
                            };
                            // The CR of a CRLF is already stored with the content.
                            self.emit(out, if crlf { b"\n" } else { b"\r\n" });
                            self.state = State::LineStart { after_crlf: crlf };
                            i += p + 1;
                        }
                        None => {
                            self.emit(out, rest);
                            self.state = State::Text {
                                cr: rest.last() == Some(&b'\r'),
                            };
                            i = input.len();
                        }
                    }
                }
                State::Done => return Feed::End { consumed: i },
            }
        }
        if self.state == State::Done {
            Feed::End { consumed: i }
        } else {
            Feed::NeedMore
        }
    }

    fn emit(&mut self, out: &mut Vec<u8>, bytes: &[u8]) {
        self.size = self.size.saturating_add(bytes.len());
        if self.overflow {
            return;
        }
        if self.size > self.limit {
            self.overflow = true;
            // Free the partial message: it will never be accepted.
            *out = Vec::new();
            return;
        }
        out.extend_from_slice(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Decodes `input` in one call; returns (message, consumed) or None without an end.
    fn decode(input: &[u8]) -> Option<(Vec<u8>, usize)> {
        let mut d = DotDecoder::new(usize::MAX);
        let mut out = Vec::new();
        match d.feed(input, &mut out) {
            Feed::End { consumed } => Some((out, consumed)),
            Feed::NeedMore => None,
        }
    }

    /// Decodes with the input cut at every given position.
    fn decode_split(input: &[u8], cuts: &[usize]) -> Option<(Vec<u8>, usize)> {
        let mut d = DotDecoder::new(usize::MAX);
        let mut out = Vec::new();
        let mut start = 0;
        let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        bounds.push(input.len());
        bounds.sort_unstable();
        for end in bounds {
            if end < start {
                continue;
            }
            if let Feed::End { consumed } = d.feed(&input[start..end], &mut out) {
                return Some((out, start + consumed));
            }
            start = end;
        }
        None
    }

    /// A reference written line by line over the whole input, independent of the state
    /// machine, that states the rules of the module doc directly.
    fn reference(input: &[u8]) -> Option<(Vec<u8>, usize)> {
        let mut out = Vec::new();
        let mut pos = 0;
        let mut after_crlf = true;
        while let Some(off) = input[pos..].iter().position(|&b| b == b'\n') {
            let line = &input[pos..pos + off];
            pos += off + 1;
            if after_crlf && line == b".\r" {
                return Some((out, pos));
            }
            let crlf = line.last() == Some(&b'\r');
            let body = if crlf { &line[..line.len() - 1] } else { line };
            if body == b"." {
                out.extend_from_slice(b".");
            } else if body.first() == Some(&b'.') {
                out.extend_from_slice(&body[1..]);
            } else {
                out.extend_from_slice(body);
            }
            out.extend_from_slice(b"\r\n");
            after_crlf = crlf;
        }
        None
    }

    #[test]
    fn plain_message_and_trailing_pipelined_command() {
        let input = b"Subject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n";
        let (msg, consumed) = decode(input).unwrap();
        assert_eq!(msg, b"Subject: hi\r\n\r\nbody\r\n");
        assert_eq!(&input[consumed..], b"QUIT\r\n");
    }

    #[test]
    fn empty_message() {
        assert_eq!(decode(b".\r\n"), Some((Vec::new(), 3)));
    }

    #[test]
    fn dot_unstuffing() {
        let (msg, _) = decode(b"..\r\n..leading\r\n.x\r\na.b\r\n.\r\n").unwrap();
        assert_eq!(msg, b".\r\n.leading\r\nx\r\na.b\r\n");
    }

    #[test]
    fn bare_lf_lines_are_stored_with_crlf() {
        let (msg, _) = decode(b"a\nb\r\nc\n\r\n.\r\n").unwrap();
        assert_eq!(msg, b"a\r\nb\r\nc\r\n\r\n");
    }

    #[test]
    fn bare_lf_dot_lines_never_end_the_data() {
        for marker in [&b"\n.\r\n"[..], b"\n.\n", b"\r\n.\n"] {
            let mut input = b"x".to_vec();
            input.extend_from_slice(marker);
            input.extend_from_slice(b"MAIL FROM:<evil@x>\r\n");
            assert_eq!(decode(&input), None, "{marker:?} ended the data");
            input.extend_from_slice(b".\r\n");
            let (msg, consumed) = decode(&input).unwrap();
            assert_eq!(consumed, input.len());
            assert_eq!(msg, b"x\r\n.\r\nMAIL FROM:<evil@x>\r\n", "{marker:?}");
        }
    }

    #[test]
    fn bare_cr_is_kept() {
        let (msg, _) = decode(b"a\rb\r\n.\rc\r\n\r.\r\n.\r\n").unwrap();
        assert_eq!(msg, b"a\rb\r\n\rc\r\n\r.\r\n");
    }

    #[test]
    fn byte_by_byte_equals_one_shot() {
        let input = b"H: v\r\n..\r\n\n.\r\nx\r\r\n.\n.y\nz\r\n.\r\nNEXT";
        let whole = decode(input).unwrap();
        let mut d = DotDecoder::new(usize::MAX);
        let mut out = Vec::new();
        let mut end = None;
        for (i, b) in input.iter().enumerate() {
            if let Feed::End { consumed } = d.feed(std::slice::from_ref(b), &mut out) {
                assert_eq!(consumed, 1);
                end = Some(i + 1);
                break;
            }
        }
        assert_eq!((out, end.unwrap()), whole);
    }

    #[test]
    fn oversized_message_is_discarded_but_end_is_found() {
        let mut d = DotDecoder::new(10);
        let mut out = Vec::new();
        assert_eq!(d.feed(b"0123456789\r\n", &mut out), Feed::NeedMore);
        assert!(d.overflowed());
        assert!(out.is_empty() && out.capacity() == 0);
        assert_eq!(
            d.feed(b"more\r\n.\r\nRSET\r\n", &mut out),
            Feed::End { consumed: 9 }
        );
        assert!(out.is_empty());
        assert_eq!(d.decoded_size(), 18);
    }

    #[test]
    fn message_of_exactly_the_limit_is_kept() {
        let mut d = DotDecoder::new(5);
        let mut out = Vec::new();
        assert_eq!(d.feed(b"abc\r\n.\r\n", &mut out), Feed::End { consumed: 8 });
        assert!(!d.overflowed());
        assert_eq!(out, b"abc\r\n");
    }

    proptest! {
        #[test]
        fn any_split_matches_reference(
            parts in proptest::collection::vec(
                prop_oneof![Just(&b"."[..]), Just(&b"\r"[..]), Just(&b"\n"[..]),
                            Just(&b"a"[..]), Just(&b"\r\n"[..]), Just(&b"\r\n.\r\n"[..])],
                0..40),
            cuts in proptest::collection::vec(0usize..400, 0..6),
        ) {
            let mut input: Vec<u8> = parts.concat();
            input.extend_from_slice(b"\r\n.\r\nQUIT\r\n");
            let expected = reference(&input);
            prop_assert!(expected.is_some());
            prop_assert_eq!(decode(&input), expected.clone());
            prop_assert_eq!(decode_split(&input, &cuts), expected);
        }
    }
}
