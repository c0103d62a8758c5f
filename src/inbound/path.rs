//! The address of a MAIL or RCPT command as it is stored: `smtp-proto`'s parse, written back
//! in RFC 5321 form ([`crate::envelope::mailbox`]) and checked against the raw command line.
//!
//! `smtp-proto` hands the address with the quotes of a quoted local part removed and quietly
//! drops a CR anywhere in it. Both would let the relay store and send a different mailbox
//! from the one the client named: `<"b@y, x"@z>` reads as `b@y, x@z`, `<"a<CR>b"@z>` as
//! `ab@z`, `<a@"b@c">` (a quoted domain) as `a@b@c`. So the raw path is read too: a control
//! byte in it refuses the address, and the domain after its last `@` must be exactly the
//! domain of the parse, which rules out quoted domains and any place where the two readings
//! could split the address differently.

use memchr::memchr;

use crate::envelope::{AddressError, mailbox};

/// The stored form of `parsed`, the non-empty address `smtp-proto` read from `line` (the whole
/// MAIL or RCPT command line).
pub(super) fn envelope_address(parsed: &str, line: &[u8]) -> Result<String, AddressError> {
    let raw = raw_path(line).ok_or(AddressError::NoDomain)?;
    if raw.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Err(AddressError::ControlCharacter);
    }
    let stored = mailbox(parsed)?;
    let domain = stored.rsplit_once('@').map_or("", |(_, d)| d);
    let raw_domain = raw.rsplit(|&b| b == b'@').next().unwrap_or_default();
    if raw_domain != domain.as_bytes() {
        return Err(AddressError::BadDomain);
    }
    Ok(stored)
}

/// The bytes between the `<` that opens the path and the `>` that closes it, with quoted
/// strings and their backslash escapes honoured; `None` when the path is not closed.
fn raw_path(line: &[u8]) -> Option<&[u8]> {
    let start = memchr(b'<', line)? + 1;
    let mut in_quote = false;
    let mut escaped = false;
    for (i, &b) in line[start..].iter().enumerate() {
        if escaped {
            escaped = false;
            continue;
        }
        match b {
            b'\\' if in_quote => escaped = true,
            b'"' => in_quote = !in_quote,
            b'>' if !in_quote => return Some(&line[start..start + i]),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use smtp_proto::Request;

    use super::*;

    /// What the session stores for a RCPT command line: smtp-proto's parse, then ours.
    fn stored(line: &str) -> Result<String, String> {
        let bytes = format!("{line}\r\n").into_bytes();
        match Request::parse(&mut bytes.iter()) {
            Ok(Request::Rcpt { to }) => {
                envelope_address(&to.address, &bytes).map_err(|e| format!("ours: {e}"))
            }
            Ok(Request::Mail { from }) => {
                envelope_address(&from.address, &bytes).map_err(|e| format!("ours: {e}"))
            }
            Ok(other) => Err(format!("not MAIL/RCPT: {other:?}")),
            Err(e) => Err(format!("smtp-proto: {e:?}")),
        }
    }

    /// What smtp-proto alone makes of an address: the reason this module exists.
    fn smtp_proto_reads(line: &str) -> String {
        let bytes = format!("{line}\r\n").into_bytes();
        match Request::parse(&mut bytes.iter()) {
            Ok(Request::Rcpt { to }) => to.address.into_owned(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn smtp_proto_drops_quotes_escapes_and_cr() {
        assert_eq!(
            smtp_proto_reads("RCPT TO:<\"b@y, x\"@z.test>"),
            "b@y, x@z.test"
        );
        assert_eq!(
            smtp_proto_reads("RCPT TO:<\"a\\\"b\"@x.test>"),
            "a\"b@x.test"
        );
        assert_eq!(
            smtp_proto_reads("RCPT TO:<\"a\\\\b\"@x.test>"),
            "a\\b@x.test"
        );
        assert_eq!(smtp_proto_reads("RCPT TO:<\"a\\b\"@x.test>"), "ab@x.test");
        assert_eq!(smtp_proto_reads("RCPT TO:<\"a\rb\"@x.test>"), "ab@x.test");
        assert_eq!(smtp_proto_reads("RCPT TO:<a@\"b@c\">"), "a@b@c");
        assert_eq!(
            smtp_proto_reads("RCPT TO:<a.\"b c\"@x.test>"),
            "a.b c@x.test"
        );
        assert_eq!(smtp_proto_reads("RCPT TO:<@r1,@r2:u@x.test>"), "u@x.test");
    }

    #[test]
    fn quoted_local_parts_are_kept_quoted() {
        assert_eq!(
            stored("RCPT TO:<\"b@y, x\"@z.test>").unwrap(),
            "\"b@y, x\"@z.test"
        );
        assert_eq!(
            stored("RCPT TO:<\"a\\\"b\"@x.test>").unwrap(),
            "\"a\\\"b\"@x.test"
        );
        assert_eq!(
            stored("RCPT TO:<\"a\\\\b\"@x.test>").unwrap(),
            "\"a\\\\b\"@x.test"
        );
        assert_eq!(
            stored("MAIL FROM:<\"a b\"@x.test> SIZE=10").unwrap(),
            "\"a b\"@x.test"
        );
        // `a."b c"` is not RFC 5321 (a dot-string or a quoted string, not both): one quoted
        // string with the same content.
        assert_eq!(
            stored("RCPT TO:<a.\"b c\"@x.test>").unwrap(),
            "\"a.b c\"@x.test"
        );
    }

    #[test]
    fn needless_quotes_and_escapes_are_dropped() {
        assert_eq!(stored("RCPT TO:<\"bob\"@y.test>").unwrap(), "bob@y.test");
        assert_eq!(stored("RCPT TO:<\"a\\b\"@x.test>").unwrap(), "ab@x.test");
        assert_eq!(stored("RCPT TO:<Bob@Y.test>").unwrap(), "Bob@Y.test");
        assert_eq!(stored("RCPT TO:<@r1,@r2:u@x.test>").unwrap(), "u@x.test");
        assert_eq!(
            stored("RCPT TO:<u@x.test> ORCPT=rfc822;o@other.test").unwrap(),
            "u@x.test"
        );
    }

    #[test]
    fn addresses_that_would_change_are_refused() {
        for line in [
            "RCPT TO:<\"a\rb\"@x.test>",
            "RCPT TO:<\"a\x01b\"@x.test>",
            "RCPT TO:<\"a\x7fb\"@x.test>",
            "RCPT TO:<\"a\u{85}b\"@x.test>",
            "RCPT TO:<\"a\tb\"@x.test>",
            "RCPT TO:<a@\"b@c\">",
            "RCPT TO:<a@\"b\">",
            "RCPT TO:<a@\"b c\">",
            "RCPT TO:<\"a>b\"@x.test>",
            "RCPT TO:<\"\"@x.test>",
            "RCPT TO:<a@[192.0.2.1]>",
            "RCPT TO:<a@b..c>",
            "RCPT TO:<\u{fffd}b@x.test>",
            "RCPT TO:<a@\u{fffd}x.test>",
        ] {
            assert!(stored(line).is_err(), "{line:?} -> {:?}", stored(line));
        }
        // Bytes that are not UTF-8 never become an address either, whatever smtp-proto makes
        // of them (a reader would show U+FFFD for them, matching any such address).
        let bytes = b"RCPT TO:<\x9db@x.test>\r\n".to_vec();
        if let Ok(Request::Rcpt { to }) = Request::parse(&mut bytes.iter()) {
            assert!(envelope_address(&to.address, &bytes).is_err(), "{to:?}");
        }
    }

    #[test]
    fn raw_path_honours_quotes() {
        assert_eq!(
            raw_path(b"RCPT TO:<\"a>b\"@x> X=<y>"),
            Some(&b"\"a>b\"@x"[..])
        );
        assert_eq!(
            raw_path(b"RCPT TO:<\"a\\\">b\"@x>"),
            Some(&b"\"a\\\">b\"@x"[..])
        );
        assert_eq!(raw_path(b"RCPT TO:<a@x"), None);
    }
}
