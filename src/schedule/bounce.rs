//! RFC 3464 delivery status notifications ("bounces"), off unless `[spool] bounce = true`.
//!
//! A bounce goes from the null sender to the original envelope sender and names only the
//! recipients of the copy that failed; the returned headers are that copy's headers, which show
//! no other recipient. So a bounce of a split copy cannot leak the fan-out either.
//!
//! This module assembles the bounce (its spool record and its bytes); the queue decides when
//! one is due, spools it and queues it like any other message.

use crate::envelope::Envelope;
use crate::privacy::{Decision, PlannedDelivery, Rewrite};
use crate::spool::{DeliveryRecord, MessageMeta, Spool, unix_now};

/// Why the delivery failed, for the report.
pub struct Failure<'a> {
    pub code: u16,
    /// The upstream's answer or our reason, one line.
    pub diagnostic: &'a str,
    /// `max_queue_time` ran out (status 4.4.7) rather than a permanent reply.
    pub expired: bool,
}

/// The bounce of deliveries `indices` of `meta` (the first of which had header block
/// `header`), ready to spool: a new message from the null sender to `meta`'s envelope sender,
/// one delivery in the sender's `provider` lane, no hold, and its bytes ([`report`]). One
/// delivery per bounce when a copy fails; all the copies an operator bounced at once in one
/// (a held fan-out of thousands must not become thousands of bounces).
pub fn message(
    hostname: &str,
    provider: String,
    meta: &MessageMeta,
    indices: &[usize],
    failure: &Failure<'_>,
    header: &[u8],
) -> (MessageMeta, Vec<u8>) {
    let sender = meta.envelope.mail_from.clone();
    let id = Spool::new_id();
    let bytes = report(hostname, meta, indices, failure, header, &id);
    let dsn = MessageMeta {
        id,
        received_at: unix_now(),
        envelope: Envelope {
            mail_from: String::new(),
            rcpt_to: vec![sender.clone()],
        },
        decision: Decision::Pass,
        size: bytes.len() as u64,
        deliveries: vec![DeliveryRecord {
            planned: PlannedDelivery {
                rcpt_to: vec![sender],
                rewrite: Rewrite::Unchanged,
            },
            provider,
        }],
        hold: None,
        privacy: None,
        app: None,
    };
    (dsn, bytes)
}

/// The bounce message for deliveries `indices` of `meta`, returning the header block `header`
/// of the first (a copy's own header, which shows no other recipient).
pub fn report(
    hostname: &str,
    meta: &MessageMeta,
    indices: &[usize],
    failure: &Failure<'_>,
    header: &[u8],
    id: &str,
) -> Vec<u8> {
    let rcpts: Vec<&String> = indices
        .iter()
        .flat_map(|&k| &meta.deliveries[k].planned.rcpt_to)
        .collect();
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_default();
    let arrival = time::OffsetDateTime::from_unix_timestamp(meta.received_at as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc2822)
                .ok()
        })
        .unwrap_or_default();
    let diagnostic: String = failure
        .diagnostic
        .chars()
        .filter(|c| !c.is_control())
        .take(500)
        .collect();
    let status = match (failure.expired, failure.code) {
        (true, _) => "4.4.7".to_string(),
        (false, c) if (500..600).contains(&c) => "5.0.0".to_string(),
        (false, _) => "5.0.0".to_string(),
    };
    let boundary = format!("mailveil-dsn-{id}");
    let mut m = String::new();
    m.push_str(&format!(
        "From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n"
    ));
    m.push_str(&format!("To: <{}>\r\n", clean(&meta.envelope.mail_from)));
    m.push_str("Subject: Undelivered Mail Returned to Sender\r\n");
    m.push_str(&format!("Date: {date}\r\n"));
    m.push_str(&format!("Message-ID: <{id}@{hostname}>\r\n"));
    m.push_str("Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n");
    m.push_str(&format!("Content-Type: multipart/report; report-type=delivery-status; boundary=\"{boundary}\"\r\n\r\n"));
    m.push_str(&format!(
        "--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    ));
    m.push_str(&format!(
        "Your message {} could not be delivered to:\r\n",
        meta.id
    ));
    for r in &rcpts {
        m.push_str(&format!("  {}\r\n", clean(r)));
    }
    m.push_str(&format!(
        "\r\nReason: {} {diagnostic}\r\n\r\n",
        failure.code
    ));
    m.push_str(&format!(
        "--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"
    ));
    m.push_str(&format!(
        "Reporting-MTA: dns; {hostname}\r\nX-Mailveil-Queue-ID: {}\r\nArrival-Date: {arrival}\r\n",
        meta.id
    ));
    for r in rcpts {
        m.push_str(&format!(
            "\r\nFinal-Recipient: rfc822; {}\r\nAction: failed\r\nStatus: {status}\r\nDiagnostic-Code: smtp; {} {diagnostic}\r\n",
            clean(r),
            failure.code
        ));
    }
    m.push_str(&format!(
        "\r\n--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n"
    ));
    let mut out = m.into_bytes();
    let header = header
        .strip_suffix(b"\r\n\r\n")
        .or_else(|| header.strip_suffix(b"\n\n"))
        .unwrap_or(header);
    out.extend_from_slice(header);
    out.extend_from_slice(format!("\r\n\r\n--{boundary}--\r\n").as_bytes());
    out
}

/// Addresses are written into header and report lines: no control characters.
fn clean(address: &str) -> String {
    address
        .chars()
        .filter(|c| !c.is_control() && *c != '<' && *c != '>')
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_only_the_failed_copy_and_never_injects_lines() {
        let meta = MessageMeta {
            id: "Q1".into(),
            received_at: 0,
            envelope: Envelope {
                mail_from: "app@src.test".into(),
                rcpt_to: vec!["a@x.test".into(), "b@y.test".into()],
            },
            decision: Decision::Split,
            size: 1,
            deliveries: ["a@x.test", "b@y.test"]
                .iter()
                .map(|r| DeliveryRecord {
                    planned: PlannedDelivery {
                        rcpt_to: vec![r.to_string()],
                        rewrite: Rewrite::Unchanged,
                    },
                    provider: "default".into(),
                })
                .collect(),
            hold: None,
            privacy: None,
            app: None,
        };
        let failure = Failure {
            code: 550,
            diagnostic: "no such user\r\nBcc: evil@z.test",
            expired: false,
        };
        let text = String::from_utf8(report(
            "relay.test",
            &meta,
            &[1],
            &failure,
            b"To: b@y.test\r\nSubject: s\r\n\r\n",
            "B1",
        ))
        .unwrap();
        assert!(text.contains("Final-Recipient: rfc822; b@y.test"));
        assert!(
            !text.contains("a@x.test"),
            "the other copy's recipient is not named"
        );
        assert!(
            !text.contains("\r\nBcc:"),
            "no header injection through the diagnostic"
        );
        assert!(text.contains("Status: 5.0.0") && text.contains("To: <app@src.test>"));
        assert!(text.contains("report-type=delivery-status"));
    }
}
