//! Hostile clients against the relay over real sockets on 127.0.0.1: slowloris, connection
//! floods, huge command lines and messages, pipelined floods, STARTTLS injection, AUTH
//! guessing, header injection through addresses, binary junk and NUL in headers, 8-bit and SMTPUTF8
//! mail, and pathological group syntax. Each test asserts the relay's answer and that it
//! keeps serving; the memory test runs the real binary and reads its peak RSS from /proc.

use crate::support;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::*;

/// A relay delivering into `{dir}/outbox`, splitting anything that shows two addresses.
fn config(server_extra: &str, rest: &str) -> String {
    format!(
        r#"
[server]
hostname = "relay.test"
{server_extra}
[privacy]
mode = "split"
max_visible_recipients = 1
{storage}{rest}
"#,
        storage = spool_and_outbox!(r#"retry_initial = "1s""#),
    )
}

/// Reads until the server closes the connection (bounded); returns everything it sent.
async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut out))
        .await
        .expect("server closes within patience")
        .ok();
    String::from_utf8_lossy(&out).into_owned()
}

async fn greeted(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(PATIENCE, s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(buf[..n].starts_with(b"220 "), "{:?}", &buf[..n]);
    s
}

/// One byte per second never completes a command: the timeout covers the whole line, not
/// each read, so the trickling client is told 421 and closed before its line ends.
#[tokio::test]
async fn slowloris_is_closed_by_the_command_timeout() {
    let relay = InProcessRelay::start(&config("command_timeout = \"3s\"", "")).await;
    let mut s = greeted(relay.smtp).await;
    let line = b"NOOP trickling-one-byte-per-second-for-much-longer-than-the-timeout\r\n";
    let mut sent = 0;
    for &b in line {
        if s.write_all(&[b]).await.is_err() {
            break;
        }
        sent += 1;
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
            Err(_) => continue, // nothing yet: the next byte
            Ok(Ok(0)) | Ok(Err(_)) => panic!("closed without a reply"),
            Ok(Ok(n)) => {
                let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
                assert!(reply.starts_with("421 4.4.2"), "{reply}");
                assert_eq!(read_to_close(&mut s).await, "", "nothing after 421");
                assert!(sent < line.len(), "closed before the line completed");
                return;
            }
        }
    }
    panic!("a client trickling {sent} bytes was never timed out");
}

/// The same inside DATA: every read used to reset the clock there too.
#[tokio::test]
async fn slow_drip_inside_data_is_cut_off() {
    let relay = InProcessRelay::start(&config("command_timeout = \"2s\"", "")).await;
    let (mut c, _) = RawSmtp::connect(relay.smtp).await;
    c.cmd("EHLO c").await;
    c.cmd("MAIL FROM:<a@src.test>").await;
    c.cmd("RCPT TO:<b@dst.test>").await;
    assert!(c.cmd("DATA").await.starts_with("354"));
    let end = std::time::Instant::now() + PATIENCE;
    let mut reply = String::new();
    while std::time::Instant::now() < end && reply.is_empty() {
        c.send(b"x").await;
        reply = tokio::time::timeout(Duration::from_millis(500), c.reply())
            .await
            .unwrap_or_default();
    }
    assert!(reply.starts_with("421 4.4.2"), "{reply:?}");
}

/// Past `max_connections` every new connection is told `421 4.3.2` and closed at once; the
/// held ones keep working and a freed slot is usable again.
#[tokio::test]
async fn connection_flood_past_the_cap_gets_421_and_close() {
    let relay = InProcessRelay::start(&config("max_connections = 4", "")).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(greeted(relay.smtp).await);
    }
    let addr = relay.smtp;
    let mut flood = Vec::new();
    for _ in 0..50 {
        flood.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            read_to_close(&mut s).await
        }));
    }
    for f in flood {
        assert_eq!(f.await.unwrap(), "421 4.3.2 too many connections\r\n");
    }
    held[0].write_all(b"NOOP\r\n").await.unwrap();
    let mut buf = [0u8; 64];
    let n = held[0].read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"250"), "held sessions still served");
    drop(held.remove(0));
    let end = std::time::Instant::now() + PATIENCE;
    loop {
        let (mut c, greeting) = RawSmtp::connect(relay.smtp).await;
        if greeting.starts_with("220") {
            assert!(c.cmd("NOOP").await.starts_with("250"));
            break;
        }
        assert!(std::time::Instant::now() < end, "slot never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A 1 MB command line is answered once with `500 5.5.2` and skipped; the session goes on.
#[tokio::test]
async fn megabyte_command_line_is_refused_and_the_session_survives() {
    let relay = InProcessRelay::start(&config("", "")).await;
    let (mut c, _) = RawSmtp::connect(relay.smtp).await;
    let mut line = b"NOOP ".to_vec();
    line.resize(1024 * 1024, b'a');
    line.extend_from_slice(b"\r\n");
    c.send(&line).await;
    assert!(c.reply().await.starts_with("500 5.5.2"));
    assert!(
        c.cmd("NOOP").await.starts_with("250"),
        "session still usable"
    );
    assert!(c.cmd("QUIT").await.starts_with("221"));
}

/// Thousands of pipelined commands in one write are all answered, in order; a pipelined
/// flood of junk is cut off after the error limit.
#[tokio::test]
async fn pipelined_command_floods() {
    let relay = InProcessRelay::start(&config("", "")).await;
    const N: usize = 20_000;
    let stream = greeted(relay.smtp).await;
    let (mut r, mut w) = stream.into_split();
    // The client writes while it reads, as a pipelining client must.
    let writer = tokio::spawn(async move {
        let mut all = b"EHLO flood\r\n".to_vec();
        for _ in 0..N {
            all.extend_from_slice(b"NOOP\r\n");
        }
        all.extend_from_slice(b"QUIT\r\n");
        w.write_all(&all).await.unwrap();
        w
    });
    let mut out = Vec::new();
    tokio::time::timeout(PATIENCE, r.read_to_end(&mut out))
        .await
        .expect("all replies within patience")
        .unwrap();
    let _w = writer.await.unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(text.matches("250 2.0.0 OK\r\n").count(), N);
    assert!(
        text.ends_with("221 2.0.0 bye\r\n"),
        "{}",
        &text[text.len() - 60..]
    );

    let mut s = greeted(relay.smtp).await;
    s.write_all(&b"JUNK\r\n".repeat(1000)).await.unwrap();
    let text = read_to_close(&mut s).await;
    assert_eq!(text.matches("500 5.5.1").count(), 20, "{text}");
    assert!(
        text.ends_with("421 4.7.0 too many errors, closing\r\n"),
        "{text}"
    );
}

/// A relay with STARTTLS and one AUTH user (password in a file); relaying needs AUTH.
async fn tls_relay(work: &std::path::Path) -> (InProcessRelay, TestPki) {
    let pki = make_pki(work, "relay", &["localhost"]);
    let password = work.join("password");
    std::fs::write(&password, "s3cret").unwrap();
    let server = format!(
        "[server.tls]\ncert = \"{}\"\nkey = \"{}\"",
        pki.cert_file.display(),
        pki.key_file.display()
    );
    let rest = format!(
        "[access]\nnetworks = []\n[[access.users]]\nname = \"app\"\npassword_file = \"{}\"",
        password.display()
    );
    (InProcessRelay::start(&config(&server, &rest)).await, pki)
}

async fn starttls(mut s: TcpStream, pki: &TestPki) -> tokio_rustls::client::TlsStream<TcpStream> {
    assert!(cmd_of(&mut s, "STARTTLS").await.starts_with("220 2.0.0"));
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    tls_connector(&pki.ca_pem).connect(name, s).await.unwrap()
}

/// RFC 3207 / CVE-2011-0411: commands pipelined after STARTTLS arrive in clear text and must
/// not run inside the TLS session.
#[tokio::test]
async fn commands_pipelined_after_starttls_are_discarded() {
    let work = tempfile::tempdir().unwrap();
    let (relay, pki) = tls_relay(work.path()).await;
    let mut s = greeted(relay.smtp).await;
    assert!(cmd_of(&mut s, "EHLO c").await.contains("STARTTLS"));
    let auth = auth_plain("app", "s3cret");
    let injected = format!(
        "STARTTLS\r\n{auth}\r\nMAIL FROM:<evil@evil.test>\r\nRCPT TO:<victim@dst.test>\r\n"
    );
    s.write_all(injected.as_bytes()).await.unwrap();
    assert!(reply_of(&mut s).await.starts_with("220 2.0.0"));
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut t = tls_connector(&pki.ca_pem)
        .connect(name, s)
        .await
        .expect("handshake undisturbed by the discarded bytes");
    // Nothing of the injected session survived: no reply was queued, no transaction, no user.
    assert!(cmd_of(&mut t, "EHLO c").await.starts_with("250-relay.test"));
    assert!(
        cmd_of(&mut t, "RCPT TO:<victim@dst.test>")
            .await
            .starts_with("503")
    );
    assert!(cmd_of(&mut t, "DATA").await.starts_with("503"));
    assert!(
        cmd_of(&mut t, "MAIL FROM:<a@src.test>")
            .await
            .starts_with("250")
    );
    let rcpt = cmd_of(&mut t, "RCPT TO:<victim@dst.test>").await;
    assert!(rcpt.starts_with("530 5.7.0"), "not authenticated: {rcpt}");
}

/// Password guessing: every failure is answered 535 after a pause, and the third closes the
/// connection with 421 4.7.0. (The pause growing per failure is checked on a paused clock in
/// the inbound unit tests.)
#[tokio::test]
async fn auth_brute_force_is_delayed_then_closed() {
    let work = tempfile::tempdir().unwrap();
    let (relay, pki) = tls_relay(work.path()).await;
    let mut s = greeted(relay.smtp).await;
    cmd_of(&mut s, "EHLO c").await;
    let mut t = starttls(s, &pki).await;
    assert!(cmd_of(&mut t, "EHLO c").await.contains("AUTH PLAIN LOGIN"));
    for guess in ["123456", "password"] {
        let reply = cmd_of(&mut t, &auth_plain("app", guess)).await;
        assert!(reply.starts_with("535 5.7.8"), "{reply}");
    }
    let reply = cmd_of(&mut t, &auth_plain("app", "qwerty")).await;
    assert!(reply.starts_with("535 5.7.8"), "{reply}");
    assert!(reply_of(&mut t).await.starts_with("421 4.7.0"));
    assert_eq!(reply_of(&mut t).await, "", "closed after the third failure");
    // The right password still works on a new connection.
    let mut s = greeted(relay.smtp).await;
    cmd_of(&mut s, "EHLO c").await;
    let mut t = starttls(s, &pki).await;
    cmd_of(&mut t, "EHLO c").await;
    let ok = cmd_of(&mut t, &auth_plain("app", "s3cret")).await;
    assert!(ok.starts_with("235"), "{ok}");
}

/// Sends one message over a raw session: MAIL (with `mail_params`), every RCPT, DATA.
/// Returns the RCPT replies and the final reply.
async fn send_raw(
    addr: SocketAddr,
    mail: &str,
    rcpts: &[&[u8]],
    message: &[u8],
) -> (Vec<String>, String) {
    let (mut c, _) = RawSmtp::connect(addr).await;
    assert!(c.cmd("EHLO c").await.starts_with("250"));
    let reply = c.cmd(&format!("MAIL FROM:{mail}")).await;
    assert!(reply.starts_with("250"), "{reply}");
    let mut rcpt_replies = Vec::new();
    for r in rcpts {
        c.send(&[b"RCPT TO:".as_slice(), r, b"\r\n"].concat()).await;
        let mut reply = c.reply().await;
        // A line split by an embedded LF is two commands: collect the second answer too.
        if r.contains(&b'\n') {
            reply.push_str(&c.reply().await);
        }
        rcpt_replies.push(reply);
    }
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send(message).await;
    c.send(b".\r\n").await;
    let fin = c.reply().await;
    c.cmd("QUIT").await;
    (rcpt_replies, fin)
}

/// The header block of a captured copy, as lines.
fn header_lines(bytes: &[u8]) -> Vec<Vec<u8>> {
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(bytes.len(), |p| p + 2);
    bytes[..end]
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l).to_vec())
        .collect()
}

fn starts_with_ci(line: &[u8], prefix: &str) -> bool {
    line.len() >= prefix.len() && line[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// CR, LF and NUL smuggled through RCPT TO addresses and through encoded display names never
/// produce a header field of their own in any copy. An address holding a control character is
/// refused: keeping it is impossible and stripping it would name another mailbox.
#[tokio::test]
async fn crlf_injection_through_addresses_never_adds_a_header() {
    let relay = InProcessRelay::start(&config("", "")).await;
    let msg = message(
        &[
            "From: app@src.test",
            "To: =?utf-8?q?Eve=0D=0ABcc:_x=0D=0A?= <b@y.test>, a@x.test",
            "Subject: injection",
        ],
        "body\r\n",
    );
    let rcpts: &[&[u8]] = &[
        b"<\"a\r\nBcc: evil@evil.test\"@y.test>", // split by the LF: two refused commands
        b"<\"c\rBcc: evil@evil.test\"@y.test>",   // bare CR: refused (the parser drops it)
        b"<\"d\0Bcc: evil@evil.test\"@y.test>",   // NUL: refused
        b"<\"e\x0bf\"@y.test>",                   // other control characters: refused
        b"<a@x.test>",
        b"<b@y.test>",
    ];
    let (replies, fin) = send_raw(relay.smtp, "<app@src.test>", rcpts, &msg).await;
    assert!(
        replies[0].starts_with("501") && replies[0].contains("\r\n500"),
        "{replies:?}"
    );
    assert!(replies[1].starts_with("501 5.1.3"), "{replies:?}");
    assert!(replies[2].starts_with("501 5.1.3"), "{replies:?}");
    assert!(replies[3].starts_with("501 5.1.3"), "{replies:?}");
    assert!(fin.starts_with("250"), "{fin}");
    let copies = wait_for_captures(&relay.outbox(), 2).await;
    assert_eq!(copies.len(), 2);
    for copy in &copies {
        let lines = header_lines(&copy.bytes);
        let to: Vec<_> = lines.iter().filter(|l| starts_with_ci(l, "to:")).collect();
        assert_eq!(to.len(), 1, "one To field in {:?}", copy.rcpt_to);
        for line in &lines {
            assert!(
                !starts_with_ci(line, "bcc") && !starts_with_ci(line, "cc"),
                "injected field {:?} in the copy for {:?}",
                String::from_utf8_lossy(line),
                copy.rcpt_to
            );
        }
        let text = String::from_utf8_lossy(&copy.bytes);
        let own = &copy.rcpt_to[0];
        for other in ["a@x.test", "b@y.test"] {
            assert!(own == other || !text.contains(other), "{own} sees {other}");
        }
    }
    assert!(
        copies.iter().all(|c| !c.rcpt_to[0].contains("Bcc")),
        "the CR recipient was refused, not stored without its CR"
    );
}

/// A recipient whose local part must stay quoted gets a split copy whose `To:` names it in the
/// form the envelope holds, quoted once (quoting it again would name another mailbox). A quoted
/// local part that holds another private address shows that address to its reader: refused.
#[tokio::test]
async fn a_quoted_recipient_is_named_quoted_in_its_split_copy() {
    let relay = InProcessRelay::start(&config("", "")).await;
    let msg = message(
        &[
            "From: app@src.test",
            "To: \"c, Bcc: evil\"@y.test, a@x.test",
            "Subject: quoted",
        ],
        "body\r\n",
    );
    let rcpts: &[&[u8]] = &[b"<\"c, Bcc: evil\"@y.test>", b"<a@x.test>"];
    let (replies, fin) = send_raw(relay.smtp, "<app@src.test>", rcpts, &msg).await;
    assert!(replies.iter().all(|r| r.starts_with("250")), "{replies:?}");
    assert!(fin.starts_with("250"), "{fin}");
    let copies = wait_for_captures(&relay.outbox(), 2).await;
    let odd = copies
        .iter()
        .find(|c| c.rcpt_to[0].contains("Bcc"))
        .expect("the quoted recipient's copy");
    assert_eq!(odd.rcpt_to, ["\"c, Bcc: evil\"@y.test"]);
    let to = header_lines(&odd.bytes)
        .into_iter()
        .find(|l| starts_with_ci(l, "to:"))
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&to),
        "To: \"c, Bcc: evil\"@y.test",
        "the odd local part is quoted once, so it is one mailbox"
    );

    // `"x a@x.test"@y.test` would show a@x.test to whoever reads its copy.
    let msg = message(
        &["From: app@src.test", "To: a@x.test", "Subject: embedded"],
        "body\r\n",
    );
    let rcpts: &[&[u8]] = &[b"<\"x a@x.test\"@y.test>", b"<a@x.test>"];
    let (_, fin) = send_raw(relay.smtp, "<app@src.test>", rcpts, &msg).await;
    assert!(fin.starts_with("550 5.7.1"), "{fin}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        mailveil::capture::read_all(&relay.outbox()).unwrap().len(),
        2
    );
}

/// Invalid UTF-8 and 8-bit junk in headers: the message is accepted, address fields that
/// cannot be read fail closed (split), and every other field is relayed byte for byte. The
/// same message with NUL bytes is refused `550 5.6.0` and nothing is delivered.
#[tokio::test]
async fn invalid_utf8_in_headers_is_relayed_and_fails_closed_nul_is_refused() {
    let relay = InProcessRelay::start(&config("", "")).await;
    let junk: &[u8] = b"X-Junk: a b\xff\xfe\xc3(\x80 end";
    let msg = [
        b"From: app@src.test\r\n".as_slice(),
        junk,
        b"\r\nSubject: \xe9t\xe9 \x01\r\nTo: \xff\xfe <a@x.test>,\x01 b@y.test\x7f\xc3\r\n\r\nbody \x02 \xff\r\n",
    ]
    .concat();
    let with_nul: Vec<u8> = msg.iter().map(|&b| if b == 0x01 { 0 } else { b }).collect();
    let rcpts: &[&[u8]] = &[b"<a@x.test>", b"<b@y.test>"];
    let (_, fin) = send_raw(relay.smtp, "<app@src.test>", rcpts, &with_nul).await;
    assert!(fin.starts_with("550 5.6.0"), "{fin}");
    let (_, fin) = send_raw(relay.smtp, "<app@src.test>", rcpts, &msg).await;
    assert!(fin.starts_with("250"), "{fin}");
    let copies = wait_for_captures(&relay.outbox(), 2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let copies_later = mailveil::capture::read_all(&relay.outbox()).unwrap();
    assert_eq!(
        copies_later.len(),
        2,
        "split: private copies, none of the NUL message"
    );
    for copy in &copies {
        assert!(!copy.bytes.contains(&0));
        let lines = header_lines(&copy.bytes);
        assert!(lines.iter().any(|l| l == junk), "X-Junk kept byte for byte");
        assert!(lines.iter().any(|l| l == b"Subject: \xe9t\xe9 \x01"));
        assert!(
            copy.bytes.ends_with(b"\r\n\r\nbody \x02 \xff\r\n"),
            "body unchanged"
        );
        let own = &copy.rcpt_to[0];
        let to: Vec<_> = lines.iter().filter(|l| starts_with_ci(l, "to:")).collect();
        assert_eq!(to.len(), 1);
        let to = String::from_utf8(to[0].clone()).expect("the new To is clean UTF-8");
        assert!(to.contains(own.as_str()), "{to}");
        assert!(!to.chars().any(char::is_control), "{to}");
        for other in ["a@x.test", "b@y.test"] {
            assert!(own == other || !to.contains(other), "{to}");
        }
    }
}

/// SMTPUTF8 addresses and 8-bit headers and body arrive intact.
#[tokio::test]
async fn eight_bit_and_smtputf8_mail_is_relayed_intact() {
    let relay = InProcessRelay::start(&config("", "")).await;
    let msg = message(
        &[
            "From: Jürgen <jürgen@bücher.test>",
            "To: 李雷 <李@例子.test>, b@x.test",
            "Subject: Grüße — ünïcödé",
        ],
        "Grüße aus Köln\r\n",
    );
    let mut msg = msg;
    msg.extend_from_slice(b"latin-1 \xe9t\xe9\r\n");
    let rcpts: &[&[u8]] = &["<李@例子.test>".as_bytes(), b"<b@x.test>"];
    let (replies, fin) = send_raw(
        relay.smtp,
        "<jürgen@bücher.test> SMTPUTF8 BODY=8BITMIME",
        rcpts,
        &msg,
    )
    .await;
    assert!(replies.iter().all(|r| r.starts_with("250")), "{replies:?}");
    assert!(fin.starts_with("250"), "{fin}");
    let copies = wait_for_captures(&relay.outbox(), 2).await;
    for copy in &copies {
        assert_eq!(copy.mail_from, "jürgen@bücher.test");
        assert_eq!(body_of(&copy.bytes), body_of(&msg), "8-bit body intact");
        let lines = header_lines(&copy.bytes);
        assert!(
            lines
                .iter()
                .any(|l| l == "Subject: Grüße — ünïcödé".as_bytes())
        );
        assert!(
            lines
                .iter()
                .any(|l| l == "From: Jürgen <jürgen@bücher.test>".as_bytes())
        );
    }
    let li = copies
        .iter()
        .find(|c| c.rcpt_to == ["李@例子.test"])
        .unwrap();
    let text = String::from_utf8_lossy(&li.bytes);
    assert!(
        text.contains("李@例子.test") && !text.contains("b@x.test"),
        "{text}"
    );
}

/// Extremely long and deeply nested address syntax: no stack overflow, no hang, and the
/// message fails closed (split), each copy showing only its own address.
#[tokio::test]
async fn long_and_deeply_nested_group_syntax_fails_closed() {
    let relay = InProcessRelay::start(&config("", "")).await;
    let depth = 100_000;
    let cases: Vec<(String, String)> = vec![
        (
            "nested groups".into(),
            format!(
                "To: {}a@x.test, b@y.test{}",
                "g: ".repeat(depth),
                ";".repeat(depth)
            ),
        ),
        (
            "nested comments".into(),
            format!(
                "To: a@x.test {}b@y.test{}",
                "(".repeat(depth),
                ")".repeat(depth)
            ),
        ),
        (
            "unbalanced nesting".into(),
            format!("To: {}a@x.test, b@y.test", "g: (\"<".repeat(depth)),
        ),
        (
            "long folded list".into(),
            format!(
                "To: {}a@x.test, b@y.test",
                "friend@far.test,\r\n ".repeat(depth / 4)
            ),
        ),
    ];
    for (i, (what, to)) in cases.iter().enumerate() {
        let msg = message(
            &["From: app@src.test", to, &format!("Subject: case {i}")],
            "x\r\n",
        );
        let (_, fin) = send_raw(
            relay.smtp,
            "<app@src.test>",
            &[b"<a@x.test>", b"<b@y.test>"],
            &msg,
        )
        .await;
        assert!(fin.starts_with("250"), "{what}: {fin}");
    }
    let copies = wait_for_captures(&relay.outbox(), 2 * cases.len()).await;
    assert_eq!(copies.len(), 2 * cases.len(), "every case split in two");
    for copy in &copies {
        let own = &copy.rcpt_to[0];
        let header = &copy.bytes[..copy.bytes.len() - 3];
        let text = String::from_utf8_lossy(header);
        for other in ["a@x.test", "b@y.test", "friend@far.test"] {
            assert!(
                own == other || !text.contains(other),
                "copy for {own} shows {other}"
            );
        }
    }
}

/// Peak resident memory of a process, from /proc (Linux).
fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

/// The real binary with a 1 MiB size cap: a 1 MB command line and a 256 MiB DATA stream are
/// refused without being buffered (peak RSS stays far below the stream), and the session
/// stays usable after each.
#[tokio::test]
async fn huge_data_stream_is_refused_without_buffering() {
    const STREAM: usize = 256 * 1024 * 1024;
    const RSS_BOUND_KIB: u64 = 64 * 1024;
    let work = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = work.path().join("mailveil.toml");
    let text = config("max_message_size = 1048576", "")
        .replace("{dir}", &work.path().display().to_string())
        .replace(
            "[server]",
            &format!("[server]\nlisten = \"127.0.0.1:{port}\""),
        );
    std::fs::write(&cfg, text).unwrap();
    let cfg_s = cfg.display().to_string();
    let mut relay = spawn_mailveil(&["run", "-c", &cfg_s], &work.path().join("relay.log"), &[]);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for_port(addr, &mut relay);

    let (mut c, _) = RawSmtp::connect(addr).await;
    let mut line = b"NOOP ".to_vec();
    line.resize(1024 * 1024, b'a');
    line.extend_from_slice(b"\r\n");
    c.send(&line).await;
    assert!(c.reply().await.starts_with("500 5.5.2"));
    c.cmd("EHLO c").await;
    c.cmd("MAIL FROM:<a@src.test>").await;
    c.cmd("RCPT TO:<b@dst.test>").await;
    assert!(c.cmd("DATA").await.starts_with("354"));
    let chunk = b"Subject: big\r\n".iter().copied().chain(
        std::iter::repeat_n(b'x', 1022)
            .chain(*b"\r\n")
            .cycle()
            .take(64 * 1024 - 14),
    );
    let chunk: Vec<u8> = chunk.collect();
    for _ in 0..STREAM / chunk.len() {
        c.send(&chunk).await;
    }
    c.send(b"\r\n.\r\n").await;
    let reply = c.reply().await;
    assert!(reply.starts_with("552 5.3.4"), "{reply}");
    assert!(
        c.cmd("RSET").await.starts_with("250"),
        "session usable after 552"
    );
    assert!(c.cmd("QUIT").await.starts_with("221"));
    let hwm = vm_hwm_kib(relay.pid());
    eprintln!(
        "relay peak RSS after a {} MiB stream: {hwm} KiB",
        STREAM >> 20
    );
    assert!(
        hwm < RSS_BOUND_KIB,
        "relay peak RSS {hwm} KiB: the stream was buffered"
    );
    assert!(
        std::fs::read_dir(work.path().join("outbox"))
            .map(|d| d.count())
            .unwrap_or(0)
            == 0,
        "nothing delivered"
    );
}

/// Field names a lenient mail program reads despite white space (`T o:`, a form feed before
/// `Cc:`) count as address fields and never reach a copy (found by the rewrite fuzz target).
#[tokio::test]
async fn address_fields_with_spaced_names_are_counted_and_removed() {
    let relay = InProcessRelay::start(&config("", "")).await;
    let msg = [
        b"From: app@src.test\r\nTo: a@x.test\r\nSubject: s\r\nT o: b@y.test\r\n".as_slice(),
        b"\x0cCc: c@z.test\r\n\r\nbody\r\n",
    ]
    .concat();
    let rcpts: &[&[u8]] = &[b"<a@x.test>", b"<b@y.test>", b"<c@z.test>"];
    let (_, fin) = send_raw(relay.smtp, "<app@src.test>", rcpts, &msg).await;
    assert!(fin.starts_with("250"), "{fin}");
    let copies = wait_for_captures(&relay.outbox(), 3).await;
    assert_eq!(copies.len(), 3, "three visible addresses: split");
    for copy in &copies {
        let own = &copy.rcpt_to[0];
        let parsed = mail_parser::MessageParser::default()
            .parse(&copy.bytes)
            .unwrap();
        let shown: Vec<String> = [parsed.to(), parsed.cc()]
            .into_iter()
            .flatten()
            .flat_map(|a| a.iter())
            .filter_map(|a| a.address.as_deref().map(str::to_string))
            .collect();
        assert_eq!(
            shown,
            std::slice::from_ref(own),
            "what a mail program shows {own}"
        );
    }
}
