//! One view of the bytes: every line ends in CRLF, and there is no NUL.
//!
//! Readers disagree about a bare CR (a line end to some, a character to others), a bare LF
//! and a NUL (the end of the string to C code). A message with any of them would be one thing
//! to the policy and another to some recipient, and a bare CR or NUL before a dot line is how
//! outbound SMTP smuggling works. So the DATA decoder stores bare CR and bare LF as CRLF and
//! refuses NUL, `inspect` does the same to the file it reads, and the queue verifies it again
//! before a copy is sent.

use std::borrow::Cow;

/// A NUL byte was found: the message is refused (`550 5.6.0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("message contains NUL characters")]
pub struct HasNul;

/// `message` with every bare CR and bare LF turned into CRLF; borrowed when it already is.
pub fn crlf_only(message: &[u8]) -> Result<Cow<'_, [u8]>, HasNul> {
    if memchr::memchr(0, message).is_some() {
        return Err(HasNul);
    }
    if is_crlf_only(message) {
        return Ok(Cow::Borrowed(message));
    }
    let mut out = Vec::with_capacity(message.len() + message.len() / 32);
    let mut i = 0;
    while i < message.len() {
        match message[i] {
            b'\r' if message.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 2;
            }
            b'\r' | b'\n' => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(Cow::Owned(out))
}

/// True when every CR is followed by LF and every LF preceded by CR.
pub fn is_crlf_only(bytes: &[u8]) -> bool {
    for i in memchr::memchr2_iter(b'\r', b'\n', bytes) {
        let ok = match bytes[i] {
            b'\r' => bytes.get(i + 1) == Some(&b'\n'),
            _ => i > 0 && bytes[i - 1] == b'\r',
        };
        if !ok {
            return false;
        }
    }
    true
}

/// True when `bytes` may go on the wire as message text: CRLF line ends only, no NUL.
pub fn is_clean(bytes: &[u8]) -> bool {
    memchr::memchr(0, bytes).is_none() && is_crlf_only(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_ends_become_crlf() {
        assert_eq!(
            crlf_only(b"a\rb\nc\r\nd\r\r\ne").unwrap().as_ref(),
            b"a\r\nb\r\nc\r\nd\r\n\r\ne"
        );
        assert!(matches!(crlf_only(b"a\r\nb"), Ok(Cow::Borrowed(_))));
        assert_eq!(crlf_only(b"a\0b"), Err(HasNul));
    }

    #[test]
    fn clean_means_crlf_and_no_nul() {
        assert!(is_clean(b"a\r\nb\r\n"));
        assert!(!is_clean(b"a\rb"));
        assert!(!is_clean(b"a\nb"));
        assert!(!is_clean(b"\n"));
        assert!(!is_clean(b"a\r"));
        assert!(!is_clean(b"a\0"));
    }
}
