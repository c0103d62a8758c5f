//! Every fixed reply the listener sends, in one place, so codes can be reviewed against
//! RFC 5321 / 3463 / 4954 / 3207 without reading the session logic.
//!
//! Fixed replies are `const` values written straight into the output buffer: the common
//! path (MAIL, RCPT, DATA) allocates nothing to answer.

use std::io::Write;

/// A reply whose text is known at compile time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Fixed {
    pub code: u16,
    pub status: &'static str,
    pub text: &'static str,
}

impl Fixed {
    const fn new(code: u16, status: &'static str, text: &'static str) -> Self {
        Fixed { code, status, text }
    }

    pub fn write_to(&self, out: &mut Vec<u8>) {
        // Writing into a Vec cannot fail.
        let _ = write!(out, "{} {} {}\r\n", self.code, self.status, self.text);
    }
}

pub(super) const OK: Fixed = Fixed::new(250, "2.0.0", "OK");
pub(super) const SENDER_OK: Fixed = Fixed::new(250, "2.1.0", "sender OK");
pub(super) const RECIPIENT_OK: Fixed = Fixed::new(250, "2.1.5", "recipient OK");
pub(super) const START_DATA: Fixed =
    Fixed::new(354, "2.0.0", "start mail input; end with <CRLF>.<CRLF>");
pub(super) const BYE: Fixed = Fixed::new(221, "2.0.0", "bye");
pub(super) const VRFY: Fixed = Fixed::new(
    252,
    "2.5.0",
    "cannot VRFY user, but will accept message and attempt delivery",
);
pub(super) const HELP: Fixed = Fixed::new(
    214,
    "2.0.0",
    "commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP STARTTLS AUTH",
);
pub(super) const READY_TLS: Fixed = Fixed::new(220, "2.0.0", "ready to start TLS");
pub(super) const AUTH_OK: Fixed = Fixed::new(235, "2.7.0", "authentication successful");

pub(super) const UNKNOWN_COMMAND: Fixed = Fixed::new(500, "5.5.1", "command unrecognized");
pub(super) const LINE_TOO_LONG: Fixed = Fixed::new(500, "5.5.2", "line too long");
pub(super) const SYNTAX: Fixed = Fixed::new(501, "5.5.4", "syntax error in parameters");
pub(super) const BAD_SENDER: Fixed = Fixed::new(501, "5.1.7", "bad sender address syntax");
pub(super) const BAD_RECIPIENT: Fixed = Fixed::new(501, "5.1.3", "bad recipient address syntax");
pub(super) const NOT_IMPLEMENTED: Fixed = Fixed::new(502, "5.5.1", "command not implemented");
pub(super) const HELO_FIRST: Fixed = Fixed::new(503, "5.5.1", "send EHLO or HELO first");
pub(super) const NESTED_MAIL: Fixed = Fixed::new(503, "5.5.1", "sender already given");
pub(super) const NEED_MAIL: Fixed = Fixed::new(503, "5.5.1", "need MAIL before RCPT");
pub(super) const NEED_MAIL_DATA: Fixed = Fixed::new(503, "5.5.1", "need MAIL before DATA");
pub(super) const NO_RECIPIENTS: Fixed = Fixed::new(554, "5.5.1", "no valid recipients");
pub(super) const UNSUPPORTED_PARAM: Fixed =
    Fixed::new(555, "5.5.4", "MAIL parameter not supported");
pub(super) const MESSAGE_TOO_BIG: Fixed = Fixed::new(
    552,
    "5.3.4",
    "message size exceeds fixed maximum message size",
);
pub(super) const MESSAGE_HAS_NUL: Fixed = Fixed::new(
    550,
    "5.6.0",
    "message contains NUL characters; nothing was accepted",
);
/// The spool is at `spool.max_bytes` (at MAIL) or DATA memory is at `server.max_data_memory`
/// (at MAIL for a declared size, or at end of DATA): nothing was accepted; try later.
pub(super) const STORAGE_FULL: Fixed =
    Fixed::new(452, "4.3.1", "insufficient system storage; try again later");
pub(super) const DATA_MEMORY_FULL: Fixed = Fixed::new(
    452,
    "4.3.1",
    "too many messages in transit; nothing was accepted, try again later",
);
pub(super) const TOO_MANY_RECIPIENTS: Fixed = Fixed::new(
    452,
    "4.5.3",
    "too many recipients; send the rest in another transaction",
);

pub(super) const RELAY_DENIED: Fixed = Fixed::new(554, "5.7.1", "relay access denied");
pub(super) const AUTH_REQUIRED: Fixed =
    Fixed::new(530, "5.7.0", "authentication required to relay");
pub(super) const MUST_STARTTLS: Fixed =
    Fixed::new(530, "5.7.0", "Must issue a STARTTLS command first");

pub(super) const TLS_NOT_AVAILABLE: Fixed = Fixed::new(502, "5.5.1", "STARTTLS not available");
pub(super) const ALREADY_TLS: Fixed = Fixed::new(503, "5.5.1", "already under TLS");

pub(super) const AUTH_NOT_AVAILABLE: Fixed =
    Fixed::new(502, "5.5.1", "authentication not available");
pub(super) const ENCRYPTION_REQUIRED: Fixed = Fixed::new(538, "5.7.11", "Encryption required");
pub(super) const ALREADY_AUTHENTICATED: Fixed = Fixed::new(503, "5.5.1", "already authenticated");
pub(super) const AUTH_IN_TRANSACTION: Fixed =
    Fixed::new(503, "5.5.1", "AUTH not permitted during a mail transaction");
pub(super) const AUTH_MECHANISM: Fixed =
    Fixed::new(504, "5.5.4", "unrecognized authentication type");
pub(super) const AUTH_CANCELLED: Fixed = Fixed::new(501, "5.7.0", "authentication cancelled");
pub(super) const AUTH_MALFORMED: Fixed =
    Fixed::new(501, "5.5.2", "cannot decode authentication response");
pub(super) const AUTH_FAILED: Fixed =
    Fixed::new(535, "5.7.8", "authentication credentials invalid");

pub(super) const TOO_MANY_ERRORS: Fixed = Fixed::new(421, "4.7.0", "too many errors, closing");
pub(super) const TOO_MANY_AUTH_FAILURES: Fixed =
    Fixed::new(421, "4.7.0", "too many authentication failures, closing");
pub(super) const TIMEOUT: Fixed = Fixed::new(421, "4.4.2", "timeout, closing");
pub(super) const SHUTTING_DOWN: Fixed = Fixed::new(421, "4.3.2", "shutting down");
pub(super) const TOO_MANY_CONNECTIONS: Fixed = Fixed::new(421, "4.3.2", "too many connections");
pub(super) const TOO_MANY_SOURCE_CONNECTIONS: Fixed =
    Fixed::new(421, "4.7.0", "too many connections from your address");
pub(super) const NOT_AUTHENTICATED_IN_TIME: Fixed =
    Fixed::new(421, "4.7.0", "not authenticated in time, closing");
pub(super) const AUTH_BANNED: Fixed = Fixed::new(
    421,
    "4.7.0",
    "too many authentication failures from your address, try again later",
);
pub(super) const AUTH_EXHAUSTED: Fixed = Fixed::new(
    421,
    "4.7.0",
    "too many authentication failures, try again later",
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_wire_form() {
        let mut out = Vec::new();
        RELAY_DENIED.write_to(&mut out);
        assert_eq!(out, b"554 5.7.1 relay access denied\r\n");
    }
}
