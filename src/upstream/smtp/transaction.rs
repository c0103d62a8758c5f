//! One copy over an open session: MAIL, every RCPT and DATA (in one write when the upstream
//! offers PIPELINING, RFC 2920), then the message and its final reply.
//!
//! A copy goes to all its recipients or to none: the first refused RCPT fails the whole copy,
//! since `send` reports one outcome and a retry must not duplicate mail for the others. When the
//! upstream accepted DATA anyway (pipelined, after a refused RCPT), the transaction is cut off:
//! with nobody accepted, by the lone dot of RFC 2920 3.1; with some accepted, by dropping the
//! connection, since a lone dot would deliver an empty message to them.

use std::fmt;

use super::wire::Reply;
use super::{Connection, SmtpClient, io, read, within};
use crate::upstream::{Outbound, Stage, UpstreamError};

/// Commands written before their replies are read, at most: a long envelope goes in several
/// writes, so the upstream's replies can never fill the socket buffers while we are still
/// writing (the deadlock RFC 2920 3.1 warns of).
const PIPELINE_MAX: usize = 100;

/// One command of the envelope.
#[derive(Clone, Copy)]
enum Command {
    Mail,
    Rcpt(usize),
    Data,
}

impl Command {
    fn stage(self) -> Stage {
        match self {
            Command::Mail => Stage::MailFrom,
            Command::Rcpt(_) => Stage::RcptTo,
            Command::Data => Stage::Data,
        }
    }
}

impl SmtpClient {
    /// One transaction: MAIL, every RCPT, DATA, the message. Returns the final reply.
    pub async fn transaction(
        &self,
        conn: &mut Connection,
        msg: &Outbound<'_>,
    ) -> Result<String, UpstreamError> {
        let result = self.transact(conn, msg).await;
        if let Err(e) = &result
            && !e.leaves_connection_usable()
        {
            conn.broken = true;
        }
        result
    }

    async fn transact(
        &self,
        conn: &mut Connection,
        msg: &Outbound<'_>,
    ) -> Result<String, UpstreamError> {
        let t = &self.timeouts;
        let ext = conn.ext;
        let utf8_addresses = !msg.mail_from.is_ascii() || msg.rcpt_to.iter().any(|r| !r.is_ascii());
        if utf8_addresses && !ext.smtputf8 {
            return Err(UpstreamError::Envelope(
                "UTF-8 address, but the upstream does not offer SMTPUTF8",
            ));
        }
        let parts = data_parts(msg.header, msg.body);
        let len = parts[0].len() + parts[1].len();
        // 8-bit content to a server without 8BITMIME is sent anyway: practically every server
        // accepts it, and refusing would bounce mail that would have been delivered.
        let eight_bit = (!msg.header.is_ascii() || !msg.body.is_ascii()) && ext.eight_bit_mime;
        let mail = MailFrom {
            path: msg.mail_from,
            eight_bit,
            smtputf8: utf8_addresses,
            size: ext.size.map(|_| len),
        }
        .to_string();

        let commands: Vec<Command> = std::iter::once(Command::Mail)
            .chain((0..msg.rcpt_to.len()).map(Command::Rcpt))
            .chain(std::iter::once(Command::Data))
            .collect();
        let per_write = if ext.pipelining { PIPELINE_MAX } else { 1 };
        let mut refused: Option<UpstreamError> = None;
        let mut accepted = 0;
        let mut data_reply = None;
        for group in commands.chunks(per_write) {
            let first = group[0].stage();
            within(first, t.command, async {
                for &command in group {
                    match command {
                        Command::Mail => conn.wire.queue(mail.as_bytes()),
                        Command::Rcpt(i) => conn
                            .wire
                            .queue(RcptTo(&msg.rcpt_to[i]).to_string().as_bytes()),
                        Command::Data => conn.wire.queue(b"DATA\r\n"),
                    }
                }
                conn.wire.flush().await.map_err(|e| io(first, e))
            })
            .await?;
            for &command in group {
                let stage = command.stage();
                let reply = match within(stage, t.command, read(&mut conn.wire, stage)).await {
                    Ok(reply) => reply,
                    // The upstream hung up after refusing: its refusal is the news.
                    Err(e) => {
                        conn.broken = true;
                        return Err(refused.unwrap_or(e));
                    }
                };
                if reply.code == 421 {
                    // The upstream is closing the session; no further reply will come.
                    conn.broken = true;
                    return Err(refused.unwrap_or_else(|| UpstreamError::from_reply(stage, &reply)));
                }
                match command {
                    Command::Mail | Command::Rcpt(_) if reply.is_positive() => {
                        accepted += usize::from(matches!(command, Command::Rcpt(_)));
                    }
                    Command::Mail | Command::Rcpt(_) => {
                        if refused.is_none() {
                            refused = Some(UpstreamError::from_reply(stage, &reply));
                        }
                        if !ext.pipelining {
                            return Err(
                                refused.unwrap_or_else(|| UpstreamError::from_reply(stage, &reply))
                            );
                        }
                    }
                    Command::Data => data_reply = Some(reply),
                }
            }
        }
        let Some(data_reply) = data_reply else {
            return Err(UpstreamError::Protocol {
                stage: Stage::Data,
                text: "no reply to DATA".into(),
            });
        };
        if !(300..400).contains(&data_reply.code) {
            return Err(
                refused.unwrap_or_else(|| UpstreamError::from_reply(Stage::Data, &data_reply))
            );
        }
        if let Some(refused) = refused {
            return Err(self.cut_off(conn, accepted, refused).await);
        }

        let stage = Stage::Message;
        let reply = within(stage, t.message_timeout(len), async {
            conn.wire
                .send_message(parts)
                .await
                .map_err(|e| io(stage, e))?;
            read(&mut conn.wire, stage).await
        })
        .await?;
        if !reply.is_positive() {
            return Err(UpstreamError::from_reply(stage, &reply));
        }
        conn.transactions += 1;
        Ok(format!("{} {}", reply.code, reply.text()))
    }

    /// Ends a transaction whose DATA was accepted although a recipient was refused, and
    /// returns the refusal.
    async fn cut_off(
        &self,
        conn: &mut Connection,
        accepted: usize,
        refused: UpstreamError,
    ) -> UpstreamError {
        if accepted > 0 {
            conn.broken = true;
            return refused;
        }
        let stage = Stage::Message;
        let ended = within(stage, self.timeouts.command, async {
            conn.wire.send(b".\r\n").await.map_err(|e| io(stage, e))?;
            read(&mut conn.wire, stage).await.map(|_: Reply| ())
        })
        .await;
        conn.broken |= ended.is_err();
        refused
    }
}

/// The message as the end of data expects it: CRLF.CRLF follows, so the message's own final
/// CRLF (usually the body's, or the header block's when the body is empty) is removed. A
/// message that does not end in CRLF gets one: SMTP cannot carry it otherwise.
pub(crate) fn data_parts<'a>(header: &'a [u8], body: &'a [u8]) -> [&'a [u8]; 2] {
    if let Some(body) = body.strip_suffix(b"\r\n") {
        [header, body]
    } else if body.is_empty() {
        [header.strip_suffix(b"\r\n").unwrap_or(header), body]
    } else {
        [header, body]
    }
}

/// `MAIL FROM:<path>` with the parameters this copy needs; `path` empty = null sender.
struct MailFrom<'a> {
    path: &'a str,
    eight_bit: bool,
    smtputf8: bool,
    /// `SIZE=` (RFC 1870) when the upstream announced SIZE.
    size: Option<usize>,
}

impl fmt::Display for MailFrom<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MAIL FROM:<{}>", self.path)?;
        if self.eight_bit {
            f.write_str(" BODY=8BITMIME")?;
        }
        if self.smtputf8 {
            f.write_str(" SMTPUTF8")?;
        }
        if let Some(size) = self.size {
            write!(f, " SIZE={size}")?;
        }
        f.write_str("\r\n")
    }
}

struct RcptTo<'a>(&'a str);

impl fmt::Display for RcptTo<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RCPT TO:<{}>\r\n", self.0)
    }
}

/// Refuses envelopes that would corrupt the command stream (CR/LF injection, brackets) before
/// anything is sent. A quoted local part (`"b@y, x"@z`) passes: the inbound side stores
/// addresses in RFC 5321 form and never lets control characters or brackets in, so this is
/// the second line of defence, not the first.
pub(crate) fn check_envelope(msg: &Outbound<'_>) -> Result<(), UpstreamError> {
    fn bad(path: &str) -> bool {
        path.chars().any(|c| c.is_control() || c == '<' || c == '>')
    }
    if msg.rcpt_to.is_empty() {
        return Err(UpstreamError::Envelope("no recipients"));
    }
    if bad(msg.mail_from) {
        return Err(UpstreamError::Envelope(
            "sender address holds control characters or brackets",
        ));
    }
    if msg.rcpt_to.iter().any(|r| r.is_empty() || bad(r)) {
        return Err(UpstreamError::Envelope(
            "recipient address is empty or holds control characters or brackets",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_crlf_is_removed_once() {
        let h = b"A: b\r\n\r\n".as_slice();
        assert_eq!(data_parts(h, b"x\r\n"), [h, b"x".as_slice()]);
        assert_eq!(data_parts(h, b"x\r\n\r\n"), [h, b"x\r\n".as_slice()]);
        assert_eq!(data_parts(h, b""), [b"A: b\r\n".as_slice(), b"".as_slice()]);
        assert_eq!(data_parts(h, b"no newline"), [h, b"no newline".as_slice()]);
    }

    #[test]
    fn commands_render() {
        let null = MailFrom {
            path: "",
            eight_bit: false,
            smtputf8: false,
            size: None,
        };
        assert_eq!(null.to_string(), "MAIL FROM:<>\r\n");
        let full = MailFrom {
            path: "a@b.c",
            eight_bit: true,
            smtputf8: true,
            size: Some(42),
        };
        assert_eq!(
            full.to_string(),
            "MAIL FROM:<a@b.c> BODY=8BITMIME SMTPUTF8 SIZE=42\r\n"
        );
        assert_eq!(RcptTo("x@y.z").to_string(), "RCPT TO:<x@y.z>\r\n");
    }

    #[test]
    fn quoted_local_parts_are_sent_byte_for_byte() {
        let rcpt = vec![
            "\"b@y, x\"@z.test".to_string(),
            "\"a\\\"b\"@x.test".to_string(),
        ];
        assert_eq!(
            RcptTo(&rcpt[0]).to_string(),
            "RCPT TO:<\"b@y, x\"@z.test>\r\n"
        );
        assert_eq!(
            RcptTo(&rcpt[1]).to_string(),
            "RCPT TO:<\"a\\\"b\"@x.test>\r\n"
        );
        let from = MailFrom {
            path: "\"no reply\"@src.test",
            eight_bit: false,
            smtputf8: false,
            size: None,
        };
        assert_eq!(from.to_string(), "MAIL FROM:<\"no reply\"@src.test>\r\n");
        let msg = Outbound {
            mail_from: from.path,
            rcpt_to: &rcpt,
            header: b"",
            body: b"",
        };
        assert!(check_envelope(&msg).is_ok(), "quoted local parts are fine");
    }

    #[test]
    fn injection_is_refused() {
        let rcpt = vec!["ok@example.com\r\nRCPT TO:<evil@example.com>".to_string()];
        let msg = Outbound {
            mail_from: "",
            rcpt_to: &rcpt,
            header: b"",
            body: b"",
        };
        assert!(matches!(
            check_envelope(&msg),
            Err(UpstreamError::Envelope(_))
        ));
        let none: Vec<String> = Vec::new();
        let msg = Outbound {
            rcpt_to: &none,
            ..msg
        };
        assert!(check_envelope(&msg).is_err());
        let good = vec!["a@example.com".to_string()];
        let msg = Outbound {
            rcpt_to: &good,
            ..msg
        };
        assert!(check_envelope(&msg).is_ok());
    }
}
