//! Scripted sessions over `tokio::io::duplex`: reply codes, ordering and what the acceptor
//! receives.

use super::support::{Harness, settings, test_cert, user};
use crate::inbound::tls;
use crate::reply::Reply;

const LOCAL: &str = "127.0.0.1:40000";
const STRANGER: &str = "192.0.2.1:40000";

fn plain() -> Harness {
    Harness::new(settings(), None)
}

#[tokio::test]
async fn greeting_and_ehlo_keywords() {
    let h = plain();
    let (mut c, _) = h.connect(LOCAL).await;
    let ehlo = c.expect("EHLO client.test", "250-mx.test").await;
    for keyword in [
        "250-PIPELINING\r\n",
        "250-SIZE 1000\r\n",
        "250-8BITMIME\r\n",
        "250-SMTPUTF8\r\n",
        "250 ENHANCEDSTATUSCODES\r\n",
    ] {
        assert!(ehlo.contains(keyword), "{keyword:?} missing in {ehlo:?}");
    }
    assert!(!ehlo.contains("STARTTLS"), "no TLS configured: {ehlo:?}");
    assert!(!ehlo.contains("AUTH"), "{ehlo:?}");
    c.expect("HELO client.test", "250 mx.test").await;
    c.expect("QUIT", "221 2.0.0").await;
    assert!(c.closed().await);
}

#[tokio::test]
async fn starttls_offered_and_auth_withheld_before_tls() {
    let cert = test_cert(false);
    let mut s = settings();
    s.server.tls = Some(cert.config.clone());
    s.access.users = vec![user("app", "secret")];
    let h = Harness::new(s, Some(tls::acceptor(&cert.config).unwrap()));
    let (mut c, _) = h.connect(LOCAL).await;
    let ehlo = c.expect("EHLO client.test", "250-").await;
    assert!(ehlo.contains("250-STARTTLS\r\n"), "{ehlo:?}");
    assert!(!ehlo.contains("AUTH"), "AUTH offered before TLS: {ehlo:?}");
    c.expect("AUTH PLAIN AGFwcABzZWNyZXQ=", "538 5.7.11").await;
    c.expect("NOOP", "250").await;
}

#[tokio::test]
async fn null_sender_is_accepted() {
    let h = plain();
    let (mut c, _) = h.connect(LOCAL).await;
    c.expect("EHLO c", "250").await;
    c.expect("MAIL FROM:<>", "250 2.1.0").await;
    c.expect("RCPT TO:<a@example.com>", "250 2.1.5").await;
    c.expect("DATA", "354").await;
    c.send("Subject: bounce\r\n\r\nbody\r\n.\r\n").await;
    c.expect_reply("250 2.0.0 queued as Q1").await;
    let received = h.acceptor.received.lock().unwrap();
    assert_eq!(received[0].envelope.mail_from, "");
    assert_eq!(received[0].envelope.rcpt_to, vec!["a@example.com"]);
    assert_eq!(received[0].message, b"Subject: bounce\r\n\r\nbody\r\n");
    assert_eq!(received[0].client.helo, "c");
    assert!(!received[0].client.tls);
    assert_eq!(h.received("accepted"), 1);
}

#[tokio::test]
async fn pipelined_commands_are_answered_in_order() {
    let h = plain();
    let (mut c, _) = h.connect(LOCAL).await;
    c.send(
        "EHLO c\r\nMAIL FROM:<s@example.com> BODY=8BITMIME SMTPUTF8\r\n\
         RCPT TO:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n",
    )
    .await;
    c.expect_reply("250-mx.test").await;
    c.expect_reply("250 2.1.0").await;
    c.expect_reply("250 2.1.5").await;
    c.expect_reply("250 2.1.5").await;
    c.expect_reply("354").await;
    // End of data and the next commands in one write too.
    c.send("hello\r\n.\r\nMAIL FROM:<s@example.com>\r\nRSET\r\nQUIT\r\n")
        .await;
    c.expect_reply("250 2.0.0 queued as Q1").await;
    c.expect_reply("250 2.1.0").await;
    c.expect_reply("250 2.0.0").await;
    c.expect_reply("221").await;
    assert!(c.closed().await);
    let received = h.acceptor.received.lock().unwrap();
    assert_eq!(received.len(), 1);
    assert_eq!(
        received[0].envelope.rcpt_to,
        vec!["a@example.com", "b@example.com"]
    );
}

#[tokio::test]
async fn relay_denied_for_stranger_without_auth() {
    let h = plain();
    let (mut c, _) = h.connect(STRANGER).await;
    c.expect("EHLO c", "250").await;
    c.expect("MAIL FROM:<s@example.com>", "250").await;
    c.expect("RCPT TO:<a@example.com>", "554 5.7.1").await;
    c.expect("DATA", "554 5.5.1").await;
    assert_eq!(h.acceptor.count(), 0);
    assert_eq!(h.rejections("relay_denied"), 1);
}

#[tokio::test]
async fn relay_asks_for_auth_when_users_exist() {
    let cert = test_cert(false);
    let mut s = settings();
    s.server.tls = Some(cert.config.clone());
    s.access.users = vec![user("app", "secret")];
    let h = Harness::new(s, Some(tls::acceptor(&cert.config).unwrap()));
    let (mut c, _) = h.connect(STRANGER).await;
    c.expect("EHLO c", "250").await;
    c.expect("MAIL FROM:<s@example.com>", "250").await;
    c.expect("RCPT TO:<a@example.com>", "530 5.7.0").await;
    assert_eq!(h.acceptor.count(), 0);
}

#[tokio::test]
async fn users_without_tls_cannot_help_so_relay_is_denied() {
    let mut s = settings();
    s.access.users = vec![user("app", "secret")];
    let h = Harness::new(s, None);
    let (mut c, _) = h.connect(STRANGER).await;
    c.expect("EHLO c", "250").await;
    c.expect("MAIL FROM:<s@example.com>", "250").await;
    c.expect("RCPT TO:<a@example.com>", "554 5.7.1").await;
}

#[tokio::test]
async fn tls_required_refuses_mail_before_starttls() {
    let cert = test_cert(true);
    let mut s = settings();
    s.server.tls = Some(cert.config.clone());
    let h = Harness::new(s, Some(tls::acceptor(&cert.config).unwrap()));
    let (mut c, _) = h.connect(LOCAL).await;
    c.expect("EHLO c", "250").await;
    let reply = c.cmd("MAIL FROM:<s@example.com>").await;
    assert_eq!(reply, "530 5.7.0 Must issue a STARTTLS command first\r\n");
    assert_eq!(h.rejections("tls_required"), 1);
}

#[tokio::test]
async fn auth_without_users_is_not_available() {
    let h = plain();
    let (mut c, _) = h.connect(LOCAL).await;
    c.expect("EHLO c", "250").await;
    c.expect("AUTH PLAIN AGFwcABzZWNyZXQ=", "502 5.5.1").await;
}

#[tokio::test]
async fn size_parameter_over_limit_is_refused() {
    let h = plain();
    let (mut c, _) = h.connect(LOCAL).await;
    c.expect("EHLO c", "250").await;
    c.expect("MAIL FROM:<s@example.com> SIZE=1001", "552 5.3.4")
        .await;
    c.expect("MAIL FROM:<s@example.com> SIZE=1000", "250").await;
    assert_eq!(h.rejections("size"), 1);
}

#[tokio::test]
async fn unadvertised_mail_parameter_is_refused() {
    let h = plain();
    let (mut c, _) = h.connect(LOCAL).await;
    c.expect("EHLO c", "250").await;
    c.expect("MAIL FROM:<s@example.com> BODY=BINARYMIME", "555 5.5.4")
        .await;
    c.expect("MAIL FROM:<s@example.com> XFOO=1", "555 5.5.4")
        .await;
}

#[tokio::test]
async fn oversized_data_is_discarded_and_session_stays_usable() {
    let h = plain();
    let (mut c, _) = h.connect(LOCAL).await;
    c.expect("EHLO c", "250").await;
    c.expect("MAIL FROM:<s@example.com>", "250").await;
    c.expect("RCPT TO:<a@example.com>", "250").await;
    c.expect("DATA", "354").await;
    let line = "x".repeat(98) + "\r\n";
    for _ in 0..50 {
        c.send(&line).await; // 5000 bytes against a 1000-byte limit
    }
    c.send(".\r\n").await;
    c.expect_reply("552 5.3.4").await;
    assert_eq!(h.acceptor.count(), 0);
    assert_eq!(h.received("rejected"), 1);
    // The transaction is over; a new one works.
    c.expect("RCPT TO:<a@example.com>", "503").await;
    c.expect("MAIL FROM:<s@example.com>", "250").await;
    c.expect("RCPT TO:<a@example.com>", "250").await;
    c.expect("DATA", "354").await;
    c.send("small\r\n.\r\n").await;
    c.expect_reply("250 2.0.0 queued").await;
    assert_eq!(h.acceptor.messages(), vec![b"small\r\n".to_vec()]);
}

#[tokio::test]
async fn too_many_recipients_gets_452_and_the_rest_is_kept() {
    let h = plain();
    let (mut c, _) = h.connect(LOCAL).await;
    c.expect("EHLO c", "250").await;
    c.expect("MAIL FROM:<s@example.com>", "250").await;
    for i in 0..3 {
        c.expect(&format!("RCPT TO:<r{i}@example.com>"), "250")
            .await;
    }
    c.expect("RCPT TO:<r3@example.com>", "452 4.5.3").await;
    c.expect("DATA", "354").await;
    c.send("m\r\n.\r\n").await;
    c.expect_reply("250").await;
    let received = h.acceptor.received.lock().unwrap();
    assert_eq!(received[0].envelope.rcpt_to.len(), 3);
    assert_eq!(h.rejections("too_many_recipients"), 1);
}

#[tokio::test]
async fn line_too_long_is_answered_and_skipped() {
    let h = plain();
    let (mut c, _) = h.connect(LOCAL).await;
    c.expect("EHLO c", "250").await;
    let long = format!("NOOP {}", "a".repeat(600));
    c.expect(&long, "500 5.5.2").await;
    c.expect("NOOP", "250").await;
    // Longer than the read buffer and sent in pieces: one 500, then the next command works.
    c.send(format!("NOOP {}", "b".repeat(40_000))).await;
    c.expect_reply("500 5.5.2").await;
    c.send("bbbb\r\nNOOP\r\n").await;
    c.expect_reply("250").await;
    assert_eq!(h.rejections("line_too_long"), 2);
}

#[tokio::test]
async fn line_of_exactly_the_limit_is_accepted() {
    let h = plain();
    let (mut c, _) = h.connect(LOCAL).await;
    // 512 bytes including CRLF.
    let line = format!("NOOP {}", "a".repeat(512 - 5 - 2));
    c.expect(&line, "250").await;
}

async fn send_one(h: &Harness, body: &[u8]) -> (String, usize) {
    let (mut c, _) = h.connect(LOCAL).await;
    c.expect("EHLO c", "250").await;
    c.expect("MAIL FROM:<s@example.com>", "250").await;
    c.expect("RCPT TO:<a@example.com>", "250").await;
    c.expect("DATA", "354").await;
    c.send(body).await;
    let reply = c.reply().await;
    c.expect("NOOP", "250").await;
    (reply, h.acceptor.count())
}

#[tokio::test]
async fn smuggled_end_of_data_does_not_end_the_message() {
    for marker in ["\n.\r\n", "\n.\n", "\r\n.\n"] {
        let h = plain();
        let body = format!(
            "Subject: a\r\n\r\nbody{marker}MAIL FROM:<evil@x.test>\r\nRCPT TO:<v@y.test>\r\nDATA\r\nevil\r\n.\r\n"
        );
        let (reply, count) = send_one(&h, body.as_bytes()).await;
        assert!(
            reply.starts_with("250 2.0.0 queued"),
            "{marker:?}: {reply:?}"
        );
        assert_eq!(count, 1, "{marker:?}: exactly one message");
        let message = String::from_utf8(h.acceptor.messages().remove(0)).unwrap();
        assert_eq!(
            message,
            "Subject: a\r\n\r\nbody\r\n.\r\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<v@y.test>\r\nDATA\r\nevil\r\n",
            "{marker:?}"
        );
    }
}

#[tokio::test]
async fn bare_lf_is_stored_as_crlf_and_dots_are_unstuffed() {
    let h = plain();
    let (reply, _) = send_one(&h, b"A: 1\nB: 2\r\n\n..dot\r\n.x\n..\r\nend\n\r\n.\r\n").await;
    assert!(reply.starts_with("250"), "{reply:?}");
    assert_eq!(
        h.acceptor.messages()[0],
        b"A: 1\r\nB: 2\r\n\r\n.dot\r\nx\r\n.\r\nend\r\n\r\n".to_vec()
    );
}

#[tokio::test]
async fn rset_clears_the_transaction() {
    let h = plain();
    let (mut c, _) = h.connect(LOCAL).await;
    c.expect("EHLO c", "250").await;
    c.expect("MAIL FROM:<s@example.com>", "250").await;
    c.expect("RCPT TO:<a@example.com>", "250").await;
    c.expect("RSET", "250 2.0.0").await;
    c.expect("RCPT TO:<a@example.com>", "503 5.5.1").await;
    c.expect("DATA", "503 5.5.1").await;
    c.expect("MAIL FROM:<s@example.com>", "250").await;
}

#[tokio::test]
async fn rejected_verdict_is_passed_through_and_session_stays_usable() {
    let h = plain();
    h.acceptor.reject_with(Reply::new(
        550,
        "5.7.1",
        "message exposes 3 recipients; use Bcc",
    ));
    let (mut c, _) = h.connect(LOCAL).await;
    c.expect("EHLO c", "250").await;
    c.expect("MAIL FROM:<s@example.com>", "250").await;
    c.expect("RCPT TO:<a@example.com>", "250").await;
    c.expect("DATA", "354").await;
    c.send("m\r\n.\r\n").await;
    let reply = c.reply().await;
    assert_eq!(reply, "550 5.7.1 message exposes 3 recipients; use Bcc\r\n");
    assert_eq!(h.received("rejected"), 1);
    *h.acceptor.verdict.lock().unwrap() = None;
    c.expect("MAIL FROM:<s@example.com>", "250").await;
    c.expect("RCPT TO:<a@example.com>", "250").await;
    c.expect("DATA", "354").await;
    c.send("m2\r\n.\r\n").await;
    c.expect_reply("250 2.0.0 queued as Q2").await;
}

#[tokio::test]
async fn protocol_errors_and_informational_commands() {
    let h = plain();
    let (mut c, _) = h.connect(LOCAL).await;
    c.expect("MAIL FROM:<s@example.com>", "503 5.5.1").await; // before EHLO
    c.expect("FOO bar", "500 5.5.1").await;
    c.expect("EHLO c", "250").await;
    c.expect("MAIL FROM:s@example.com", "501 5.5.4").await;
    c.expect("RCPT TO:<a@example.com>", "503 5.5.1").await;
    c.expect("VRFY someone", "252 2.5.0").await;
    c.expect("HELP", "214").await;
    c.expect("EXPN list", "502 5.5.1").await;
    c.expect("STARTTLS", "502 5.5.1").await; // not configured
    c.expect("NOOP", "250 2.0.0").await;
}

#[tokio::test]
async fn too_many_errors_closes_the_connection() {
    let h = plain();
    let (mut c, task) = h.connect(LOCAL).await;
    for _ in 0..19 {
        c.expect("BOGUS", "500 5.5.1").await;
    }
    c.send("BOGUS\r\n").await;
    c.expect_reply("500 5.5.1").await;
    c.expect_reply("421 4.7.0").await;
    assert!(c.closed().await);
    tokio::time::timeout(super::support::HANG_GUARD, task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(h.rejections("too_many_errors"), 1);
}

#[tokio::test]
async fn shutdown_lets_an_open_transaction_finish_then_says_421() {
    let h = plain();
    let (mut c, _) = h.connect(LOCAL).await;
    let (mut idle, _) = h.connect(LOCAL).await;
    c.expect("EHLO c", "250").await;
    c.expect("MAIL FROM:<s@example.com>", "250").await;
    h.shutdown.cancel();
    // The idle session is told at once.
    idle.expect_reply("421 4.3.2").await;
    assert!(idle.closed().await);
    // The busy one completes its transaction first.
    c.expect("RCPT TO:<a@example.com>", "250").await;
    c.expect("DATA", "354").await;
    c.send("m\r\n.\r\n").await;
    c.expect_reply("250 2.0.0 queued").await;
    c.expect_reply("421 4.3.2").await;
    assert!(c.closed().await);
    assert_eq!(h.acceptor.count(), 1);
}

#[tokio::test]
async fn connection_gauge_follows_sessions() {
    let h = plain();
    let (mut c, task) = h.connect(LOCAL).await;
    assert_eq!(h.metrics.inbound_connections.get(), 1);
    c.expect("QUIT", "221").await;
    task.await.unwrap();
    assert_eq!(h.metrics.inbound_connections.get(), 0);
}

#[tokio::test]
async fn pipelined_replies_are_written_as_one_batch() {
    use tokio::io::AsyncReadExt;
    let h = plain();
    let (client, server) = tokio::io::duplex(64 * 1024);
    let peer: std::net::SocketAddr = LOCAL.parse().unwrap();
    let ticket = h.ctx.admission.admit(peer.ip(), &h.ctx.settings).unwrap();
    tokio::spawn(crate::inbound::listener::connection(
        server,
        peer,
        h.ctx.clone(),
        ticket,
    ));
    let mut client = client;
    let mut buf = vec![0u8; 4096];
    let n = client.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"220 "));
    tokio::io::AsyncWriteExt::write_all(&mut client, b"NOOP\r\nNOOP\r\nRSET\r\n")
        .await
        .unwrap();
    // One write by the server holds all three replies, so one read sees them all.
    let n = tokio::time::timeout(super::support::HANG_GUARD, client.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        &buf[..n],
        b"250 2.0.0 OK\r\n250 2.0.0 OK\r\n250 2.0.0 OK\r\n".as_slice()
    );
}
