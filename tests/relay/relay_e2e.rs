//! End-to-end: a real SMTP client (lettre, raw sockets, Python's smtplib) talks to the relay on
//! 127.0.0.1, which applies the privacy policy, spools, and delivers to a capture directory or,
//! where the exact bytes on the wire matter, to a scripted SMTP upstream that records them.

use crate::support;
use crate::support::scripted_smtp;

use std::time::Duration;

use scripted_smtp::{Script, ScriptedSmtp};
use support::*;

fn config(privacy: &str) -> String {
    format!(
        r#"
[server]
hostname = "relay.test"
[privacy]
{privacy}
{storage}"#,
        storage = spool_and_outbox!(r#"retry_initial = "1s""#),
    )
}

const SPLIT: &str = "mode = \"split\"\nmax_visible_recipients = 1";

#[tokio::test]
async fn a_thousand_visible_addresses_become_a_thousand_private_copies() {
    let relay = InProcessRelay::start(&config(SPLIT)).await;
    let rcpts: Vec<String> = (0..1000)
        .map(|i| format!("customer{i:04}@dest{}.test", i % 7))
        .collect();
    let to_header = format!("To: {}", rcpts.join(", "));
    let body =
        "Dear customer,\r\n\r\nOur index methodology changes on 1 July.\r\n.leading dot line\r\n";
    let msg = message(
        &[
            "From: Notices <notices@exchange.test>",
            &to_header,
            "Subject: Index update",
            "Message-ID: <n1@exchange.test>",
        ],
        body,
    );
    let rcpt_refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    let reply = lettre_send(relay.smtp, Some("notices@exchange.test"), &rcpt_refs, &msg)
        .await
        .unwrap();
    assert!(reply.starts_with("250"), "{reply}");

    let copies = wait_for_captures(&relay.outbox(), 1000).await;
    assert_eq!(copies.len(), 1000);
    let mut seen = std::collections::HashSet::new();
    for copy in &copies {
        assert_eq!(copy.rcpt_to.len(), 1, "one recipient per copy");
        let own = copy.rcpt_to[0].to_lowercase();
        assert!(
            seen.insert(own.clone()),
            "each recipient gets exactly one copy"
        );
        let text = String::from_utf8_lossy(&copy.bytes).to_lowercase();
        let strangers = rcpts
            .iter()
            .filter(|r| r.to_lowercase() != own && text.contains(&r.to_lowercase()))
            .count();
        assert_eq!(
            strangers, 0,
            "copy for {own} shows {strangers} other addresses"
        );
        assert!(
            text.contains(&format!("to: {own}")),
            "To: shows its own recipient"
        );
        assert_eq!(body_of(&copy.bytes), body.as_bytes(), "body byte-identical");
        assert_eq!(copy.mail_from, "notices@exchange.test");
    }
    assert_eq!(seen.len(), 1000);
    relay.stop().await.unwrap();
}

/// Each case: header lines, envelope recipients, expected number of copies.
#[tokio::test]
async fn address_syntax_is_understood_and_unparseable_headers_fail_closed() {
    let relay = InProcessRelay::start(&config(
        "mode = \"split\"\nmax_visible_recipients = 1\ntrusted_domains = [\"corp.test\"]",
    ))
    .await;
    let cases: &[(&str, &[&str], &[&str], usize)] = &[
        (
            "group",
            &["To: friends: a@x.test, b@y.test;"],
            &["a@x.test", "b@y.test"],
            2,
        ),
        (
            "quoted name with comma",
            &["To: \"Doe, John\" <john@x.test>"],
            &["john@x.test"],
            1,
        ),
        (
            "encoded names",
            &["To: =?utf-8?b?SsO8cmdlbg==?= <j@x.test>, =?utf-8?q?Ren=C3=A9?= <r@y.test>"],
            &["j@x.test", "r@y.test"],
            2,
        ),
        (
            "duplicates by case",
            &["To: Ann@X.test", "Cc: ann@x.TEST"],
            &["ann@x.test"],
            1,
        ),
        (
            "trusted domain",
            &["To: a@corp.test, b@corp.test, c@x.test"],
            &["a@corp.test", "b@corp.test", "c@x.test"],
            1,
        ),
        (
            "unparseable",
            &["To: <<broken@@x.test, b@y.test"],
            &["broken@x.test", "b@y.test"],
            2,
        ),
        (
            "cc counts",
            &["To: a@x.test", "Cc: b@y.test"],
            &["a@x.test", "b@y.test"],
            2,
        ),
    ];
    let mut expected_total = 0;
    for (name, headers, rcpts, copies) in cases {
        let mut h = vec!["From: app@src.test", "Subject: case"];
        h.extend_from_slice(headers);
        let reply = lettre_send(
            relay.smtp,
            Some("app@src.test"),
            rcpts,
            &message(&h, "body\r\n"),
        )
        .await;
        assert!(
            reply.as_ref().is_ok_and(|r| r.starts_with("250")),
            "{name}: {reply:?}"
        );
        expected_total += copies;
        let got = wait_for_captures(&relay.outbox(), expected_total).await;
        assert_eq!(
            got.len(),
            expected_total,
            "{name}: expected {copies} deliveries"
        );
    }
    // "trusted domain": a@corp.test and b@corp.test are not counted, c@x.test alone is not
    // exposing, so it went as one unchanged delivery with three recipients.
    let all = mailveil::capture::read_all(&relay.outbox()).unwrap();
    assert!(
        all.iter().any(|c| c.rcpt_to.len() == 3),
        "trusted-domain message relayed unchanged as one delivery"
    );
    relay.stop().await.unwrap();
}

#[tokio::test]
async fn each_privacy_mode_does_what_it_says() {
    let exposing = message(
        &[
            "From: app@src.test",
            "To: \"Ann\" <ann@x.test>, bob@y.test",
            "Cc: cat@z.test",
            "Bcc: dan@w.test",
            "DKIM-Signature: v=1; a=rsa-sha256; d=src.test; b=abc",
            "Subject: s",
        ],
        "hello\r\n",
    );
    let rcpts = ["ann@x.test", "bob@y.test", "cat@z.test", "dan@w.test"];

    // split
    let relay = InProcessRelay::start(&config(SPLIT)).await;
    lettre_send(relay.smtp, Some("app@src.test"), &rcpts, &exposing)
        .await
        .unwrap();
    let copies = wait_for_captures(&relay.outbox(), 4).await;
    for c in &copies {
        let text = String::from_utf8_lossy(&c.bytes);
        assert!(!text.contains("DKIM-Signature"), "broken signature removed");
        assert!(!text.to_lowercase().contains("\ncc:") && !text.to_lowercase().contains("\nbcc:"));
        if c.rcpt_to[0] == "ann@x.test" {
            assert!(
                text.contains("To: \"Ann\" <ann@x.test>"),
                "display name kept: {text}"
            );
        }
    }
    relay.stop().await.unwrap();

    // bcc
    let relay = InProcessRelay::start(&config("mode = \"bcc\"")).await;
    lettre_send(relay.smtp, Some("app@src.test"), &rcpts, &exposing)
        .await
        .unwrap();
    let copies = wait_for_captures(&relay.outbox(), 1).await;
    assert_eq!(copies[0].rcpt_to.len(), 4, "one delivery to all recipients");
    let text = String::from_utf8_lossy(&copies[0].bytes);
    assert!(text.contains("To: undisclosed-recipients:;"), "{text}");
    for r in rcpts {
        assert!(!text.contains(r), "bcc copy shows {r}");
    }
    relay.stop().await.unwrap();

    // reject
    let relay = InProcessRelay::start(&config("mode = \"reject\"")).await;
    let err = lettre_send(relay.smtp, Some("app@src.test"), &rcpts, &exposing)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("550") || err.status().is_some_and(|c| c.to_string() == "550"),
        "{text}"
    );
    assert!(
        text.contains('3') && text.contains("Bcc"),
        "says how many were exposed and to use Bcc: {text}"
    );
    assert_no_captures(&relay.outbox(), Duration::from_millis(500)).await;
    let (_, metrics) = relay.http_get("/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "mailveil_privacy_actions_total{action=\"reject\"}"
        ),
        Some(1.0)
    );
    relay.stop().await.unwrap();

    // monitor
    let relay = InProcessRelay::start(&config("mode = \"monitor\"")).await;
    lettre_send(relay.smtp, Some("app@src.test"), &rcpts, &exposing)
        .await
        .unwrap();
    let copies = wait_for_captures(&relay.outbox(), 1).await;
    let text = String::from_utf8_lossy(&copies[0].bytes);
    assert!(
        text.contains("To: \"Ann\" <ann@x.test>, bob@y.test") && text.contains("Cc: cat@z.test"),
        "unchanged: {text}"
    );
    assert!(!text.contains("dan@w.test"), "Bcc always removed");
    assert!(
        text.contains("DKIM-Signature"),
        "unchanged messages keep their signature"
    );
    relay.stop().await.unwrap();
}

#[tokio::test]
async fn metrics_and_health_reflect_real_traffic() {
    let relay = InProcessRelay::start(&config(SPLIT)).await;
    assert_eq!(relay.http_get("/healthz").await.0, 200);
    assert_eq!(relay.http_get("/readyz").await.0, 200);
    let single = message(
        &["From: a@src.test", "To: one@x.test", "Subject: s"],
        "b\r\n",
    );
    let triple = message(
        &[
            "From: a@src.test",
            "To: one@x.test, two@y.test, three@yahoo.com",
            "Subject: s",
        ],
        "b\r\n",
    );
    lettre_send(relay.smtp, Some("a@src.test"), &["one@x.test"], &single)
        .await
        .unwrap();
    lettre_send(
        relay.smtp,
        Some("a@src.test"),
        &["one@x.test", "two@y.test", "three@yahoo.com"],
        &triple,
    )
    .await
    .unwrap();
    wait_for_captures(&relay.outbox(), 4).await;
    let (status, text) = relay.http_get("/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(
        metric(
            &text,
            "mailveil_messages_received_total{outcome=\"accepted\"}"
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(&text, "mailveil_privacy_actions_total{action=\"pass\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "mailveil_privacy_actions_total{action=\"split\"}"),
        Some(1.0)
    );
    // deliveries are counted when recorded; poll briefly for the last one.
    let mut delivered = 0.0;
    for _ in 0..100 {
        let (_, text) = relay.http_get("/metrics").await;
        delivered = metric(&text, "mailveil_deliveries_total{outcome=\"delivered\",provider=\"default\",upstream=\"outbox\"}").unwrap_or(0.0)
            + metric(&text, "mailveil_deliveries_total{outcome=\"delivered\",provider=\"yahoo\",upstream=\"outbox\"}").unwrap_or(0.0);
        if delivered == 4.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(delivered, 4.0);
    assert!(
        !text.contains("one@x.test") && !text.contains("yahoo.com"),
        "labels never carry addresses"
    );
    relay.stop().await.unwrap();
}

#[tokio::test]
async fn clients_outside_the_allowed_networks_cannot_relay() {
    let relay = InProcessRelay::start(&format!(
        "[access]\nnetworks = [\"10.0.0.0/8\"]\n{}",
        config(SPLIT)
    ))
    .await;
    let (mut s, greeting) = RawSmtp::connect(relay.smtp).await;
    assert!(greeting.starts_with("220"), "{greeting}");
    assert!(s.cmd("EHLO client.test").await.starts_with("250"));
    assert!(s.cmd("MAIL FROM:<a@src.test>").await.starts_with("250"));
    let rcpt = s.cmd("RCPT TO:<victim@x.test>").await;
    assert!(rcpt.starts_with("554 5.7.1"), "{rcpt}");
    assert!(
        s.cmd("DATA").await.starts_with('5'),
        "no recipients, no data"
    );
    let err = lettre_send(
        relay.smtp,
        Some("a@src.test"),
        &["victim@x.test"],
        &message(&["To: victim@x.test"], "x\r\n"),
    )
    .await;
    assert!(err.is_err());
    assert_no_captures(&relay.outbox(), Duration::from_millis(300)).await;
    drop(s); // an open transaction would hold shutdown for its grace period
    relay.stop().await.unwrap();
}

#[tokio::test]
async fn a_bare_lf_dot_line_never_ends_data() {
    let relay = InProcessRelay::start(&config(SPLIT)).await;
    let (mut s, _) = RawSmtp::connect(relay.smtp).await;
    s.cmd("EHLO client.test").await;
    s.cmd("MAIL FROM:<a@src.test>").await;
    s.cmd("RCPT TO:<one@x.test>").await;
    assert!(s.cmd("DATA").await.starts_with("354"));
    // The classic smuggling payload: <LF>.<CR><LF> followed by a second transaction.
    s.send(b"To: one@x.test\r\nSubject: s\r\n\r\nfirst\n.\r\nMAIL FROM:<evil@src.test>\r\nRCPT TO:<two@y.test>\r\nDATA\r\nsmuggled\r\n.\r\n").await;
    let reply = s.reply().await;
    assert!(reply.starts_with("250"), "one message accepted: {reply}");
    let copies = wait_for_captures(&relay.outbox(), 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let copies_later = mailveil::capture::read_all(&relay.outbox()).unwrap();
    assert_eq!(copies_later.len(), 1, "no second message was smuggled");
    let text = String::from_utf8_lossy(&copies[0].bytes);
    assert!(
        text.contains("MAIL FROM:<evil@src.test>"),
        "the smuggled lines stayed inside the first message"
    );
    assert_eq!(copies[0].rcpt_to, vec!["one@x.test".to_string()]);
    assert!(!text.contains("first\n."), "bare LF relayed as CRLF");
    relay.stop().await.unwrap();
}

#[tokio::test]
async fn limits_answer_552_452_421() {
    let relay = InProcessRelay::start(&format!(
        "[server]\nmax_message_size = 2000\nmax_recipients = 3\nmax_connections = 2\n{}",
        config(SPLIT).replace("[server]\nhostname = \"relay.test\"", "")
    ))
    .await;
    let (mut s, _) = RawSmtp::connect(relay.smtp).await;
    let ehlo = s.cmd("EHLO client.test").await;
    assert!(ehlo.contains("SIZE 2000"), "{ehlo}");
    assert!(
        s.cmd("MAIL FROM:<a@src.test> SIZE=5000")
            .await
            .starts_with("552 5.3.4")
    );
    assert!(s.cmd("MAIL FROM:<a@src.test>").await.starts_with("250"));
    for i in 0..3 {
        assert!(
            s.cmd(&format!("RCPT TO:<r{i}@x.test>"))
                .await
                .starts_with("250")
        );
    }
    assert!(s.cmd("RCPT TO:<r3@x.test>").await.starts_with("452 4.5.3"));
    assert!(s.cmd("DATA").await.starts_with("354"));
    let big = "x".repeat(100);
    for _ in 0..40 {
        s.send(format!("{big}\r\n").as_bytes()).await;
    }
    s.send(b".\r\n").await;
    assert!(s.reply().await.starts_with("552 5.3.4"));
    assert!(
        s.cmd("NOOP").await.starts_with("250"),
        "connection still usable after 552"
    );

    let (_second, g2) = RawSmtp::connect(relay.smtp).await;
    assert!(g2.starts_with("220"));
    let (mut third, g3) = RawSmtp::connect(relay.smtp).await;
    assert!(g3.starts_with("421 4.3.2"), "{g3}");
    assert_eq!(third.reply().await, "", "closed after 421");
    assert_no_captures(&relay.outbox(), Duration::from_millis(100)).await;
    relay.stop().await.unwrap();
}

#[tokio::test]
async fn null_sender_is_accepted_and_relayed() {
    let relay = InProcessRelay::start(&config(SPLIT)).await;
    let bounce = message(
        &[
            "From: MAILER-DAEMON@src.test",
            "To: one@x.test",
            "Subject: Undelivered",
        ],
        "bounce\r\n",
    );
    let reply = lettre_send(relay.smtp, None, &["one@x.test"], &bounce)
        .await
        .unwrap();
    assert!(reply.starts_with("250"), "{reply}");
    let copies = wait_for_captures(&relay.outbox(), 1).await;
    assert_eq!(copies[0].mail_from, "");
    relay.stop().await.unwrap();
}

/// The README's example, as a newcomer runs it: Python's smtplib against the relay.
#[tokio::test]
async fn python_smtplib_five_visible_addresses_become_five_copies() {
    let relay = InProcessRelay::start(&config(SPLIT)).await;
    let script = format!(
        "import smtplib; to=[f'customer{{i}}@example.org' for i in range(1,6)]; \
         smtplib.SMTP('127.0.0.1',{}).sendmail('notices@example.com', to, \
         'From: notices@example.com\\r\\nTo: '+', '.join(to)+'\\r\\nSubject: Index methodology update\\r\\n\\r\\nHello.\\r\\n')",
        relay.smtp.port()
    );
    let status = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(&script)
        .status()
        .await
        .expect("python3 runs");
    assert!(status.success());
    let copies = wait_for_captures(&relay.outbox(), 5).await;
    let mut to_lines: Vec<String> = copies
        .iter()
        .map(|c| {
            String::from_utf8_lossy(&c.bytes)
                .lines()
                .find(|l| l.starts_with("To:"))
                .unwrap()
                .to_string()
        })
        .collect();
    to_lines.sort();
    let expected: Vec<String> = (1..=5)
        .map(|i| format!("To: customer{i}@example.org"))
        .collect();
    assert_eq!(to_lines, expected);
    relay.stop().await.unwrap();
}

/// The real binary relaying to a scripted SMTP upstream that records the exact bytes it got.
async fn binary_to_scripted(upstream: &ScriptedSmtp) -> RelayProc {
    RelayProc::start(
        &format!(
            r#"
[server]
listen = "{{smtp}}"
hostname = "relay.test"
[privacy]
{SPLIT}
[spool]
dir = "{{dir}}/spool"
retry_initial = "1s"
{scripted}[metrics]
listen = "{{metrics}}"
"#,
            scripted = scripted_upstream("scripted", upstream.port(), "none", "10s"),
        ),
        &[],
    )
    .await
}

/// Waits until the upstream accepted `n` messages, then a moment more to see that no more come.
async fn settled_messages(upstream: &ScriptedSmtp, n: usize) -> Vec<scripted_smtp::Received> {
    let end = std::time::Instant::now() + PATIENCE;
    while upstream.record().messages.len() < n {
        assert!(
            std::time::Instant::now() < end,
            "only {} of {n} messages reached the upstream",
            upstream.record().messages.len()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let messages = upstream.record().messages;
    assert_eq!(messages.len(), n, "more messages than expected");
    messages
}

/// One transaction on an open raw session; returns the final reply.
async fn raw_transaction(s: &mut RawSmtp, from: &str, to: &[&str], data: &[u8]) -> String {
    let reply = s.cmd(&format!("MAIL FROM:<{from}>")).await;
    assert!(reply.starts_with("250"), "{reply}");
    for r in to {
        let reply = s.cmd(&format!("RCPT TO:<{r}>")).await;
        assert!(reply.starts_with("250"), "{r}: {reply}");
    }
    assert!(s.cmd("DATA").await.starts_with("354"));
    s.send(data).await;
    s.send(b".\r\n").await;
    s.reply().await
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The header field `name:` of a message as a line, if any.
fn field<'a>(data: &'a [u8], name: &str) -> Option<&'a [u8]> {
    data.split(|&b| b == b'\n')
        .find(|l| l.len() > name.len() && l[..name.len()].eq_ignore_ascii_case(name.as_bytes()))
}

/// Bare CR, bare LF, mixed line ends and smuggling-style sequences in headers and bodies: the
/// bytes the upstream receives hold CRLF line ends only, no NUL, and correct dot-stuffing;
/// a NUL message is refused on a connection that then goes on.
#[tokio::test]
async fn no_bare_cr_bare_lf_or_nul_ever_leaves_the_relay() {
    let upstream = ScriptedSmtp::start(Script::default()).await;
    let relay = binary_to_scripted(&upstream).await;
    let (mut s, _) = RawSmtp::connect(relay.smtp).await;
    assert!(s.cmd("EHLO client.test").await.starts_with("250"));
    let mixed_body = b"x\r.\r\ny\n.\r\nz\r\r\n.leading dot\r\n..two\r\n\rend\r\n";
    let messages: [(&str, Vec<u8>); 5] = [
        (
            "header-cr",
            b"From: app@src.test\r\nTo: one@x.test\r\nX-A: 1\rX-B: 2\r\nSubject: header-cr\r\n\r\nbody\rline\r\n".to_vec(),
        ),
        (
            "bare-lf",
            b"From: app@src.test\nTo: one@x.test\nSubject: bare-lf\n\nbody\nmore\r\n".to_vec(),
        ),
        (
            "mixed",
            [
                &b"From: app@src.test\r\nTo: one@x.test\nSubject: mixed\r\r\n"[..],
                mixed_body,
            ]
            .concat(),
        ),
        (
            "nul",
            b"From: app@src.test\r\nTo: one@x.test\r\nSubject: nul\r\n\r\nx\r\n\0.\r\nMAIL FROM:<e@src.test>\r\n".to_vec(),
        ),
        (
            "hidden-cc",
            b"From: app@src.test\r\nTo: one@x.test\r\nX-A: 1\rCc: two@y.test, three@z.test\r\nSubject: hidden-cc\r\n\r\nhi\r\n".to_vec(),
        ),
    ];
    for (name, data) in &messages {
        let reply = raw_transaction(&mut s, "app@src.test", &["one@x.test"], data).await;
        if *name == "nul" {
            assert!(reply.starts_with("550 5.6.0"), "{name}: {reply}");
        } else {
            assert!(reply.starts_with("250"), "{name}: {reply}");
        }
    }
    assert!(s.cmd("QUIT").await.starts_with("221"));

    let got = settled_messages(&upstream, 4).await;
    for m in &got {
        let subject = String::from_utf8_lossy(field(&m.data, "Subject:").unwrap()).to_string();
        let raw = &m.raw;
        assert!(!raw.contains(&0), "{subject}: NUL left the relay");
        for (i, &b) in raw.iter().enumerate() {
            match b {
                b'\r' => assert_eq!(raw.get(i + 1), Some(&b'\n'), "{subject}: bare CR at {i}"),
                b'\n' => assert!(i > 0 && raw[i - 1] == b'\r', "{subject}: bare LF at {i}"),
                _ => {}
            }
        }
        for line in raw.split(|&b| b == b'\n') {
            assert!(
                !line.starts_with(b".") || line.starts_with(b".."),
                "{subject}: a line starting with a dot was not stuffed: {:?}",
                String::from_utf8_lossy(line)
            );
        }
        assert!(!contains(&m.data, b"two@y.test"), "{subject}: Cc leaked");
    }
    let by_subject = |s: &str| {
        got.iter()
            .find(|m| field(&m.data, "Subject:") == Some(format!("Subject: {s}\r").as_bytes()))
            .unwrap_or_else(|| panic!("{s} not delivered"))
    };
    let header_cr = by_subject("header-cr");
    assert!(contains(&header_cr.data, b"X-A: 1\r\nX-B: 2\r\n"));
    assert!(header_cr.data.ends_with(b"\r\n\r\nbody\r\nline\r\n"));
    assert!(
        by_subject("bare-lf")
            .data
            .ends_with(b"\r\n\r\nbody\r\nmore\r\n")
    );
    let mixed = by_subject("mixed");
    assert!(
        mixed
            .data
            .ends_with(b"\r\n\r\nx\r\n.\r\ny\r\n.\r\nz\r\n\r\nleading dot\r\n.two\r\n\r\nend\r\n"),
        "{:?}",
        String::from_utf8_lossy(&mixed.data)
    );
    assert!(
        contains(&mixed.raw, b"\r\n..\r\n"),
        "the lone dots went out stuffed"
    );
    let hidden = by_subject("hidden-cc");
    assert!(
        field(&hidden.data, "Cc:").is_none(),
        "split copy carries no Cc"
    );
    let (_, metrics) = http_get(relay.metrics, "/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "mailveil_privacy_blocked_total{reason=\"malformed\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &metrics,
            "mailveil_inbound_rejections_total{reason=\"malformed\"}"
        ),
        Some(1.0)
    );
}

/// Python's smtplib: a message holding NUL is refused `550 5.6.0`, nothing is delivered, and
/// the same connection sends the next message.
#[tokio::test]
async fn a_nul_message_is_refused_and_the_connection_goes_on() {
    let upstream = ScriptedSmtp::start(Script::default()).await;
    let relay = binary_to_scripted(&upstream).await;
    let script = format!(
        r#"
import smtplib
s = smtplib.SMTP('127.0.0.1', {port})
try:
    s.sendmail('app@src.test', ['one@x.test'],
               b'From: app@src.test\r\nTo: one@x.test\r\nSubject: nul\r\n\r\na\0b\r\n')
    print('accepted')
except smtplib.SMTPDataError as e:
    print(e.smtp_code, e.smtp_error.decode())
s.sendmail('app@src.test', ['one@x.test'],
           b'From: app@src.test\r\nTo: one@x.test\r\nSubject: after\r\n\r\nclean\r\n')
print('second accepted')
s.quit()
"#,
        port = relay.smtp.port()
    );
    let out = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("550 5.6.0 message contains NUL characters"),
        "{stdout}"
    );
    assert!(stdout.contains("second accepted"), "{stdout}");
    let got = settled_messages(&upstream, 1).await;
    assert_eq!(
        field(&got[0].data, "Subject:"),
        Some(&b"Subject: after\r"[..])
    );
}

/// A quoted local part reaches the upstream exactly as the client wrote it, never de-quoted
/// into a different (and ambiguous) address.
#[tokio::test]
async fn quoted_local_parts_reach_the_upstream_exactly() {
    let upstream = ScriptedSmtp::start(Script::default()).await;
    let relay = binary_to_scripted(&upstream).await;
    let (mut s, _) = RawSmtp::connect(relay.smtp).await;
    assert!(s.cmd("EHLO client.test").await.starts_with("250"));
    let reply = raw_transaction(
        &mut s,
        "\"no reply\"@src.test",
        &["\"b@y, x\"@z.test"],
        b"From: app@src.test\r\nTo: undisclosed-recipients:;\r\nSubject: quoted\r\n\r\nhi\r\n",
    )
    .await;
    assert!(reply.starts_with("250"), "{reply}");
    let got = settled_messages(&upstream, 1).await;
    let commands = upstream.record().commands;
    assert!(
        commands.iter().any(|c| c == "RCPT TO:<\"b@y, x\"@z.test>"),
        "{commands:?}"
    );
    assert!(
        !commands.iter().any(|c| c.contains("<b@y")),
        "de-quoted recipient sent: {commands:?}"
    );
    assert_eq!(got[0].mail_line, "MAIL FROM:<\"no reply\"@src.test>");
    assert_eq!(got[0].rcpt_to, ["\"b@y, x\"@z.test"]);
}

/// Python's smtplib names one mailbox twice (domain case differs): one copy, one RCPT upstream.
#[tokio::test]
async fn the_same_recipient_twice_gets_one_copy() {
    let upstream = ScriptedSmtp::start(Script::default()).await;
    let relay = binary_to_scripted(&upstream).await;
    let script = format!(
        "import smtplib; s = smtplib.SMTP('127.0.0.1', {}); \
         r = s.sendmail('app@src.test', ['Bob@Y.test', 'bob@y.test'], \
         b'From: app@src.test\\r\\nTo: Bob@Y.test\\r\\nSubject: twice\\r\\n\\r\\nhi\\r\\n'); \
         print(r); s.quit()",
        relay.smtp.port()
    );
    let out = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "{}", "both RCPTs accepted");
    let got = settled_messages(&upstream, 1).await;
    assert_eq!(got[0].rcpt_to, ["Bob@Y.test"]);
    let rcpts = upstream
        .record()
        .commands
        .iter()
        .filter(|c| c.to_ascii_uppercase().starts_with("RCPT"))
        .count();
    assert_eq!(rcpts, 1, "one RCPT upstream");
}
