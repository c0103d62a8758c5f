//! Sans-IO decoder for the DATA stream (RFC 5321 4.1.1.4 and 4.5.2), written here rather than
//! taken from `smtp-proto` because its `DataReceiver` keeps bare `LF` line ends as they are and
//! has no size cap; mailveil must store CRLF lines and must never buffer past the limit.
//!
//! The message is stored as the one view every later stage reads (privacy policy, `inspect`,
//! the egress check, the upstream): lines ending in CRLF and nothing else. A reader that splits
//! lines at a bare CR or a bare LF (many mail clients do) and one that splits only at CRLF then
//! see the same lines, so a field hidden behind a bare CR (`X-A: 1<CR>Cc: b@y`) is a field of
//! its own for the policy too.
//!
//! Rules, chosen to make SMTP smuggling impossible (a message boundary seen differently by us
//! and by the upstream server):
//! - End of data is *only* `<CR><LF>.<CR><LF>` on the wire. The CRLF ending the `DATA` command
//!   counts as the first `<CR><LF>`, so an empty message is `.<CR><LF>` right after `354`.
//! - A line ends at `<CR><LF>`, at a bare `<LF>` or at a bare `<CR>` (a CR not followed by
//!   LF); every line is stored with `<CR><LF>`. `<CR><CR><LF>` is a bare-CR line end followed
//!   by an empty CRLF line.
//! - A line holding a lone dot that does not end the data, because the line before it ended in
//!   a bare CR or bare LF (`<LF>.<CR><LF>`, `<CR>.<CR><LF>`) or because its own end is bare
//!   (`.<LF>`, `.<CR>x`), is stored as the text line `.` + CRLF. It is not an end marker, not
//!   stuffing, and not silently dropped; when relayed, the upstream client dot-stuffs it to
//!   `..`, so no server downstream can see an end of data there either.
//! - Any other line starting with `.` loses that first dot (dot-unstuffing), whatever ended
//!   the previous line.
//! - A NUL byte anywhere makes the message unacceptable (RFC 5322 forbids it, and readers
//!   disagree on what follows it): the decoder notes it ([`DotDecoder::saw_nul`]), stores
//!   nothing more and frees what it held, and keeps looking for the end of data so the
//!   session can refuse the message and go on.
//!
//! So a stored message never holds a bare CR, a bare LF or a NUL.
//!
//! The size limit applies to the decoded message. Past it the decoder keeps finding the end of
//! data but stores nothing more and frees what it held, so an oversized message costs no
//! memory and the connection stays usable for a `552` and the next transaction.

use memchr::memchr3;

/// Where the decoder stands between calls; every state is resumable at any byte boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line; `after_crlf` says whether the previous line ended in CRLF.
    LineStart { after_crlf: bool },
    /// Seen a `.` at line start.
    Dot { after_crlf: bool },
    /// Seen `.<CR>` at line start.
    DotCr { after_crlf: bool },
    /// Inside a line.
    Text,
    /// Seen a CR ending a line: an LF next makes it CRLF, anything else a bare-CR line end.
    Cr,
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
    nul: bool,
}

impl DotDecoder {
    /// `limit` is the largest decoded message accepted, in bytes.
    pub fn new(limit: usize) -> Self {
        DotDecoder {
            state: State::LineStart { after_crlf: true },
            limit,
            size: 0,
            overflow: false,
            nul: false,
        }
    }

    /// True once the decoded message grew past the limit; the output was then emptied.
    pub fn overflowed(&self) -> bool {
        self.overflow
    }

    /// True once a NUL byte was seen; the output was then emptied and nothing more is stored.
    pub fn saw_nul(&self) -> bool {
        self.nul
    }

    /// Decoded size so far, counting bytes that were discarded after an overflow or a NUL.
    pub fn decoded_size(&self) -> usize {
        self.size
    }

    /// Decodes `input`, appending message bytes to `out`. Work is per line (a `memchr3` for
    /// the next CR, LF or NUL and one copy), never per byte.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Feed {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::LineStart { after_crlf } => {
                    if input[i] == b'.' {
                        self.state = State::Dot { after_crlf };
                        i += 1;
                    } else {
                        self.state = State::Text;
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
                    _ => self.state = State::Text,
                },
                State::DotCr { after_crlf } => {
                    if input[i] == b'\n' {
                        i += 1;
                        if after_crlf {
                            self.state = State::Done;
                            return Feed::End { consumed: i };
                        }
                        // `<LF>.<CR><LF>` or `<CR>.<CR><LF>`: the smuggling marker, a text line.
                        self.emit(out, b".\r\n");
                        self.state = State::LineStart { after_crlf: true };
                    } else {
                        // `.<CR>x`: a lone dot ended by a bare CR, a text line; `x` starts the
                        // next line.
                        self.emit(out, b".\r\n");
                        self.state = State::LineStart { after_crlf: false };
                    }
                }
                State::Text => {
                    let rest = &input[i..];
                    match memchr3(b'\r', b'\n', 0, rest) {
                        Some(p) => {
                            self.emit(out, &rest[..p]);
                            i += p + 1;
                            match rest[p] {
                                b'\r' => self.state = State::Cr,
                                b'\n' => {
                                    self.emit(out, b"\r\n");
                                    self.state = State::LineStart { after_crlf: false };
                                }
                                _ => self.saw_nul_byte(out),
                            }
                        }
                        None => {
                            self.emit(out, rest);
                            i = input.len();
                        }
                    }
                }
                State::Cr => {
                    self.emit(out, b"\r\n");
                    if input[i] == b'\n' {
                        i += 1;
                        self.state = State::LineStart { after_crlf: true };
                    } else {
                        // A bare CR ends the line; this byte starts the next one.
                        self.state = State::LineStart { after_crlf: false };
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

    /// A NUL refuses the message: free what was stored and store nothing more.
    fn saw_nul_byte(&mut self, out: &mut Vec<u8>) {
        if !self.nul {
            self.nul = true;
            *out = Vec::new();
        }
    }

    fn emit(&mut self, out: &mut Vec<u8>, bytes: &[u8]) {
        self.size = self.size.saturating_add(bytes.len());
        if self.overflow || self.nul {
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

    /// Decodes `input` in one call; returns (message, saw NUL, consumed) or None without an
    /// end.
    fn decode(input: &[u8]) -> Option<(Vec<u8>, bool, usize)> {
        let mut d = DotDecoder::new(usize::MAX);
        let mut out = Vec::new();
        match d.feed(input, &mut out) {
            Feed::End { consumed } => Some((out, d.saw_nul(), consumed)),
            Feed::NeedMore => None,
        }
    }

    /// The message of a NUL-free input that ends; panics otherwise.
    fn message(input: &[u8]) -> Vec<u8> {
        let (msg, nul, _) = decode(input).expect("end of data");
        assert!(!nul);
        msg
    }

    /// Decodes with the input cut at every given position.
    fn decode_split(input: &[u8], cuts: &[usize]) -> Option<(Vec<u8>, bool, usize)> {
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
                return Some((out, d.saw_nul(), start + consumed));
            }
            start = end;
        }
        None
    }

    /// A reference written line by line over the whole input, independent of the state
    /// machine, that states the rules of the module doc directly: lines end at CRLF, bare CR or
    /// bare LF; only a lone dot after a CRLF line end and ended by CRLF ends the data; a NUL
    /// anywhere empties the message.
    fn reference(input: &[u8]) -> Option<(Vec<u8>, bool, usize)> {
        let mut out = Vec::new();
        let mut nul = false;
        let mut pos = 0;
        let mut after_crlf = true;
        loop {
            let off = input[pos..]
                .iter()
                .position(|&b| b == b'\n' || b == b'\r')?;
            let line = &input[pos..pos + off];
            let crlf = input[pos + off] == b'\r' && *input.get(pos + off + 1)? == b'\n';
            pos += off + if crlf { 2 } else { 1 };
            if after_crlf && crlf && line == b"." {
                return Some((if nul { Vec::new() } else { out }, nul, pos));
            }
            nul |= line.contains(&0);
            if line == b"." {
                out.extend_from_slice(b".");
            } else if line.first() == Some(&b'.') {
                out.extend_from_slice(&line[1..]);
            } else {
                out.extend_from_slice(line);
            }
            out.extend_from_slice(b"\r\n");
            after_crlf = crlf;
        }
    }

    /// Every CR is followed by LF, every LF preceded by CR, and there is no NUL.
    fn only_crlf_lines(msg: &[u8]) -> bool {
        !msg.contains(&0)
            && msg.iter().enumerate().all(|(i, &b)| match b {
                b'\r' => msg.get(i + 1) == Some(&b'\n'),
                b'\n' => i > 0 && msg[i - 1] == b'\r',
                _ => true,
            })
    }

    #[test]
    fn plain_message_and_trailing_pipelined_command() {
        let input = b"Subject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n";
        let (msg, nul, consumed) = decode(input).unwrap();
        assert_eq!(msg, b"Subject: hi\r\n\r\nbody\r\n");
        assert!(!nul);
        assert_eq!(&input[consumed..], b"QUIT\r\n");
    }

    #[test]
    fn empty_message() {
        assert_eq!(decode(b".\r\n"), Some((Vec::new(), false, 3)));
    }

    #[test]
    fn dot_unstuffing() {
        let msg = message(b"..\r\n..leading\r\n.x\r\na.b\r\n.\r\n");
        assert_eq!(msg, b".\r\n.leading\r\nx\r\na.b\r\n");
    }

    #[test]
    fn bare_lf_lines_are_stored_with_crlf() {
        assert_eq!(message(b"a\nb\r\nc\n\r\n.\r\n"), b"a\r\nb\r\nc\r\n\r\n");
    }

    #[test]
    fn bare_cr_ends_a_line_stored_with_crlf() {
        assert_eq!(
            message(b"X-A: 1\rCc: b@y, c@z\r\n\r\nbody\rmore\r\n.\r\n"),
            b"X-A: 1\r\nCc: b@y, c@z\r\n\r\nbody\r\nmore\r\n",
            "the field behind the bare CR is a line of its own"
        );
        assert_eq!(
            message(b"a\rb\r\n.\rc\r\n\r.\r\n.\r\n"),
            b"a\r\nb\r\n.\r\nc\r\n\r\n.\r\n"
        );
    }

    #[test]
    fn cr_cr_lf_is_a_bare_cr_end_then_an_empty_line() {
        assert_eq!(message(b"a\r\r\nb\r\n.\r\n"), b"a\r\n\r\nb\r\n");
        // The CRLF of `<CR><CR><LF>` is a real CRLF line end, so the dot after it ends.
        let (msg, _, consumed) = decode(b"a\r\r\n.\r\nQUIT").unwrap();
        assert_eq!((msg.as_slice(), consumed), (&b"a\r\n\r\n"[..], 7));
    }

    #[test]
    fn lone_dot_after_a_bare_line_end_never_ends_the_data() {
        let markers: [&[u8]; 7] = [
            b"\n.\r\n", b"\n.\n", b"\r\n.\n", b"\r.\r\n", b"\r.\r", b"\r.\n", b"\r\n.\r",
        ];
        for marker in markers {
            let mut input = b"x".to_vec();
            input.extend_from_slice(marker);
            input.extend_from_slice(b"MAIL FROM:<evil@x>\r\n");
            assert_eq!(decode(&input), None, "{marker:?} ended the data");
            input.extend_from_slice(b".\r\n");
            let (msg, nul, consumed) = decode(&input).unwrap();
            assert_eq!(consumed, input.len());
            assert!(!nul);
            assert_eq!(msg, b"x\r\n.\r\nMAIL FROM:<evil@x>\r\n", "{marker:?}");
        }
    }

    #[test]
    fn nul_refuses_the_message_but_the_end_is_still_found() {
        for input in [
            &b"a\0b\r\n.\r\nQUIT\r\n"[..],
            b"\0\r\n.\r\nQUIT\r\n",
            b".\0\r\n.\r\nQUIT\r\n",
            b"x\r\n\0.\r\n.\r\nQUIT\r\n",
        ] {
            let (msg, nul, consumed) = decode(input).unwrap();
            assert!(nul, "{input:?}");
            assert!(msg.is_empty() && msg.capacity() == 0, "{input:?}");
            assert_eq!(&input[consumed..], b"QUIT\r\n", "{input:?}");
        }
        // `<CR><LF><NUL>.<CR><LF>` is not an end of data (the dot is not at the line start).
        assert_eq!(decode(b"x\r\n\0.\r\nQUIT\r\n"), None);
    }

    #[test]
    fn nul_frees_what_was_stored_and_stores_nothing_more() {
        let mut d = DotDecoder::new(usize::MAX);
        let mut out = Vec::new();
        assert_eq!(
            d.feed(b"Subject: x\r\n\r\nbody\r\n", &mut out),
            Feed::NeedMore
        );
        assert!(!out.is_empty());
        assert_eq!(d.feed(b"a\0b\r\nmore\r\n", &mut out), Feed::NeedMore);
        assert!(d.saw_nul());
        assert!(out.is_empty() && out.capacity() == 0);
        assert_eq!(
            d.feed(b"tail\r\n.\r\n", &mut out),
            Feed::End { consumed: 9 }
        );
        assert!(out.is_empty());
    }

    #[test]
    fn byte_by_byte_equals_one_shot() {
        let input = b"H: v\r\n..\r\n\n.\r\nx\r\r\n.\n.y\nz\r.\r\rw\r\n.\r\nNEXT";
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
        assert_eq!((out, d.saw_nul(), end.unwrap()), whole);
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
                            Just(&b"a"[..]), Just(&b"\r\n"[..]), Just(&b"\r\n.\r\n"[..]),
                            Just(&b"\0"[..])],
                0..40),
            cuts in proptest::collection::vec(0usize..400, 0..6),
        ) {
            let mut input: Vec<u8> = parts.concat();
            input.extend_from_slice(b"\r\n.\r\nQUIT\r\n");
            let expected = reference(&input);
            prop_assert!(expected.is_some());
            prop_assert_eq!(decode(&input), expected.clone());
            prop_assert_eq!(decode_split(&input, &cuts), expected.clone());
            let (msg, _, _) = expected.unwrap();
            prop_assert!(only_crlf_lines(&msg), "{:?}", msg);
        }
    }
}
