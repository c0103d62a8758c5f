//! What a session stores is what the client meant, in one form every later stage reads the
//! same way: lines ending in CRLF only (bare CR and bare LF are line ends), no NUL (refused),
//! envelope addresses as named (quoted local parts kept), each recipient once.

use super::support::{Harness, settings};

const LOCAL: &str = "127.0.0.1:40000";

fn plain() -> Harness {
    Harness::new(settings(), None)
}

/// One transaction on a new session; returns the final reply. The session must stay usable.
async fn send_one(h: &Harness, rcpts: &[&str], body: &[u8]) -> String {
    let (mut c, _) = h.connect(LOCAL).await;
    c.expect("EHLO c", "250").await;
    c.expect("MAIL FROM:<s@example.com>", "250").await;
    for r in rcpts {
        c.expect(&format!("RCPT TO:{r}"), "250").await;
    }
    c.expect("DATA", "354").await;
    c.send(body).await;
    let reply = c.reply().await;
    c.expect("NOOP", "250").await;
    reply
}

#[tokio::test]
async fn bare_cr_is_a_line_end_stored_as_crlf() {
    let h = plain();
    let reply = send_one(
        &h,
        &["<a@example.com>"],
        b"From: s@example.com\r\nX-A: 1\rCc: b@y.test, c@z.test\r\nSubject: s\r\n\r\nbody\rline\r\r\nend\r\n.\r\n",
    )
    .await;
    assert!(reply.starts_with("250 2.0.0"), "{reply:?}");
    assert_eq!(
        h.acceptor.messages()[0],
        b"From: s@example.com\r\nX-A: 1\r\nCc: b@y.test, c@z.test\r\nSubject: s\r\n\r\nbody\r\nline\r\n\r\nend\r\n"
            .to_vec()
    );
}

#[tokio::test]
async fn a_dot_after_a_bare_line_end_does_not_end_the_message() {
    for marker in ["\r.\r\n", "\n.\r\n", "\r.\r", "\r\n.\r"] {
        let h = plain();
        let body = format!(
            "Subject: a\r\n\r\nbody{marker}MAIL FROM:<evil@x.test>\r\nRCPT TO:<v@y.test>\r\nDATA\r\nevil\r\n.\r\n"
        );
        let reply = send_one(&h, &["<a@example.com>"], body.as_bytes()).await;
        assert!(reply.starts_with("250 2.0.0"), "{marker:?}: {reply:?}");
        assert_eq!(h.acceptor.count(), 1, "{marker:?}: exactly one message");
        assert_eq!(
            String::from_utf8(h.acceptor.messages().remove(0)).unwrap(),
            "Subject: a\r\n\r\nbody\r\n.\r\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<v@y.test>\r\nDATA\r\nevil\r\n",
            "{marker:?}"
        );
    }
}

#[tokio::test]
async fn nul_refuses_the_message_and_the_session_goes_on() {
    let h = plain();
    let (mut c, _) = h.connect(LOCAL).await;
    c.expect("EHLO c", "250").await;
    c.expect("MAIL FROM:<s@example.com>", "250").await;
    c.expect("RCPT TO:<a@example.com>", "250").await;
    c.expect("DATA", "354").await;
    // `<CR><LF><NUL>.<CR><LF>` is no end of data either: the message goes on to the real one.
    c.send(b"Subject: a\r\n\r\nx\r\n\0.\r\nRSET\r\nmore\r\n.\r\n")
        .await;
    let reply = c.reply().await;
    assert_eq!(
        reply,
        "550 5.6.0 message contains NUL characters; nothing was accepted\r\n"
    );
    assert_eq!(h.acceptor.count(), 0);
    assert_eq!(h.received("rejected"), 1);
    assert_eq!(h.rejections("malformed"), 1);
    assert_eq!(
        h.metrics
            .privacy_blocked
            .with_label_values(&["malformed"])
            .get(),
        1
    );
    // The transaction is over; the next message on the same connection goes through.
    c.expect("RCPT TO:<a@example.com>", "503").await;
    c.expect("MAIL FROM:<s@example.com>", "250").await;
    c.expect("RCPT TO:<a@example.com>", "250").await;
    c.expect("DATA", "354").await;
    c.send("clean\r\n.\r\n").await;
    c.expect_reply("250 2.0.0 queued").await;
    assert_eq!(h.acceptor.messages(), vec![b"clean\r\n".to_vec()]);
}

#[tokio::test]
async fn quoted_local_parts_are_stored_quoted() {
    let h = plain();
    let reply = send_one(
        &h,
        &[
            "<\"b@y, x\"@z.test>",
            "<\"a\\\"q\"@x.test>",
            "<\"plain\"@x.test>",
        ],
        b"m\r\n.\r\n",
    )
    .await;
    assert!(reply.starts_with("250"), "{reply:?}");
    let received = h.acceptor.received.lock().unwrap();
    assert_eq!(
        received[0].envelope.rcpt_to,
        ["\"b@y, x\"@z.test", "\"a\\\"q\"@x.test", "plain@x.test"]
    );
}

#[tokio::test]
async fn quoted_sender_is_stored_quoted() {
    let h = plain();
    let (mut c, _) = h.connect(LOCAL).await;
    c.expect("EHLO c", "250").await;
    c.expect("MAIL FROM:<\"no reply\"@src.test>", "250 2.1.0")
        .await;
    c.expect("RCPT TO:<a@example.com>", "250").await;
    c.expect("DATA", "354").await;
    c.send("m\r\n.\r\n").await;
    c.expect_reply("250").await;
    let received = h.acceptor.received.lock().unwrap();
    assert_eq!(received[0].envelope.mail_from, "\"no reply\"@src.test");
}

#[tokio::test]
async fn addresses_that_cannot_be_kept_exactly_are_refused() {
    let h = plain();
    let (mut c, _) = h.connect(LOCAL).await;
    c.expect("EHLO c", "250").await;
    c.expect("MAIL FROM:<a@\"b@c\">", "501 5.1.7").await;
    c.expect("MAIL FROM:<\"a\rb\"@src.test>", "501 5.1.7").await;
    c.expect("MAIL FROM:<s@example.com>", "250").await;
    for rcpt in [
        "<a@\"b@c\">",       // quoted domain: smtp-proto reads `a@b@c`
        "<a@\"b\">",         // quoted domain
        "<\"a\rb\"@y.test>", // smtp-proto drops the CR
        "<\"a\tb\"@y.test>", // control character
        "<\"a>b\"@y.test>",  // angle bracket inside the quotes
        "<\"\"@y.test>",     // empty local part
        "<a@[192.0.2.1]>",   // address literal: smtp-proto refuses it
        "<>",
        "<postmaster>",
    ] {
        c.expect(&format!("RCPT TO:{rcpt}"), "501 5.1.3").await;
    }
    c.expect("RCPT TO:<a@example.com>", "250").await;
}

#[tokio::test]
async fn a_recipient_given_twice_is_accepted_once() {
    let h = plain();
    let reply = send_one(
        &h,
        &[
            "<Bob@Y.test>",
            "<bob@y.test>",
            "<\"bob\"@Y.TEST>",
            "<carol@y.test>",
            "<BOB@y.test>",
        ],
        b"m\r\n.\r\n",
    )
    .await;
    assert!(reply.starts_with("250"), "{reply:?}");
    let received = h.acceptor.received.lock().unwrap();
    assert_eq!(
        received[0].envelope.rcpt_to,
        ["Bob@Y.test", "carol@y.test"],
        "first spelling kept, each mailbox once"
    );
}

#[tokio::test]
async fn duplicates_do_not_count_towards_max_recipients() {
    // max_recipients = 3 in the test settings.
    let h = plain();
    let (mut c, _) = h.connect(LOCAL).await;
    c.expect("EHLO c", "250").await;
    c.expect("MAIL FROM:<s@example.com>", "250").await;
    for r in ["r0", "r1", "R0", "r2", "r1", "R2"] {
        c.expect(&format!("RCPT TO:<{r}@example.com>"), "250 2.1.5")
            .await;
    }
    // The cap is reached with three distinct recipients; a duplicate is still fine.
    c.expect("RCPT TO:<r3@example.com>", "452 4.5.3").await;
    c.expect("RCPT TO:<r0@example.com>", "250 2.1.5").await;
    c.expect("DATA", "354").await;
    c.send("m\r\n.\r\n").await;
    c.expect_reply("250").await;
    let received = h.acceptor.received.lock().unwrap();
    assert_eq!(
        received[0].envelope.rcpt_to,
        ["r0@example.com", "r1@example.com", "r2@example.com"]
    );
}
