//! Bounded resources against a real `mailveil run` process over raw SMTP: `spool.max_bytes`
//! answers `452 4.3.1` at the cap (readiness unaffected), loses nothing accepted and accepts
//! again once the queue drained; `server.max_data_memory` refuses a session whose DATA would
//! take the sessions together past the cap with `452 4.3.1`, while the others go through.

use crate::support;

use std::time::{Duration, Instant};

use support::*;

const TOKEN: &str = "budget-test-token-Qx";

/// A message of about `size` bytes for `to`.
fn sized_message(to: &str, size: usize) -> Vec<u8> {
    let line = "x".repeat(76);
    let mut body = String::new();
    while body.len() < size {
        body.push_str(&line);
        body.push_str("\r\n");
    }
    message(
        &[
            "From: app@src.test",
            &format!("To: {to}"),
            "Subject: budget",
        ],
        &body,
    )
}

/// One transaction on an open session; returns the reply to MAIL if it was refused, else the
/// reply at end of DATA.
async fn transaction(s: &mut RawSmtp, to: &str, data: &[u8]) -> String {
    let mail = s.cmd("MAIL FROM:<app@src.test>").await;
    if !mail.starts_with("250") {
        return mail;
    }
    let rcpt = s.cmd(&format!("RCPT TO:<{to}>")).await;
    assert!(rcpt.starts_with("250"), "{rcpt}");
    let go = s.cmd("DATA").await;
    assert!(go.starts_with("354"), "{go}");
    s.send(data).await;
    s.send(b".\r\n").await;
    s.reply().await
}

async fn session(addr: std::net::SocketAddr) -> RawSmtp {
    let (mut s, greeting) = RawSmtp::connect(addr).await;
    assert!(greeting.starts_with("220"), "{greeting}");
    let ehlo = s.cmd("EHLO client.test").await;
    assert!(ehlo.starts_with("250"), "{ehlo}");
    s
}

async fn metrics_of(relay: &RelayProc) -> String {
    let (code, text) = http_get(relay.metrics, "/metrics").await;
    assert_eq!(code, 200);
    text
}

#[tokio::test]
async fn spool_max_bytes_refuses_at_the_cap_loses_nothing_and_accepts_after_the_drain() {
    let config = concat!(
        r#"
[server]
listen = "{smtp}"
hostname = "relay.test"
"#,
        spool_and_outbox!("max_bytes = \"16KiB\""),
        metrics_listener!(),
        admin_listener!(),
    );
    let relay = RelayProc::start(config, &[("TEST_ADMIN_TOKEN", TOKEN)]).await;
    // Paused: nothing leaves, so the spool fills.
    let (code, _) = http_request(relay.admin, "POST", "/pause", Some(TOKEN)).await;
    assert_eq!(code, 200);

    let mut s = session(relay.smtp).await;
    let mut accepted = Vec::new();
    let mut refusal = None;
    for i in 0..10 {
        let to = format!("r{i}@dest.test");
        let reply = transaction(&mut s, &to, &sized_message(&to, 5000)).await;
        if reply.starts_with("250") {
            accepted.push(to);
        } else {
            refusal = Some(reply);
            break;
        }
    }
    let refusal = refusal.expect("the cap was never reached");
    assert!(refusal.starts_with("452 4.3.1"), "{refusal}");
    assert!(
        (1..4).contains(&accepted.len()),
        "16 KiB holds at most three 5 KB messages: {}",
        accepted.len()
    );
    // A declared size that would cross the cap is refused at MAIL already; the relay stays
    // ready meanwhile.
    let more = s.cmd("MAIL FROM:<app@src.test> SIZE=5000").await;
    assert!(more.starts_with("452 4.3.1"), "{more}");
    let (ready, body) = http_get(relay.metrics, "/readyz").await;
    assert_eq!(
        ready, 200,
        "the spool cap must not affect readiness: {body}"
    );
    let text = metrics_of(&relay).await;
    assert_eq!(metric(&text, "mailveil_spool_max_bytes"), Some(16384.0));
    assert!(
        metric(
            &text,
            "mailveil_inbound_rejections_total{reason=\"spool_max_bytes\"}"
        )
        .unwrap_or(0.0)
            >= 2.0,
        "{text}"
    );
    assert!(metric(&text, "mailveil_spool_bytes").unwrap() <= 16384.0);

    // Resume: everything accepted is delivered, and mail is accepted again.
    let (code, _) = http_request(relay.admin, "POST", "/resume", Some(TOKEN)).await;
    assert_eq!(code, 200);
    let got = wait_for_captures(&relay.outbox(), accepted.len()).await;
    let mut delivered: Vec<String> = got.iter().map(|c| c.rcpt_to[0].clone()).collect();
    delivered.sort();
    accepted.sort();
    assert_eq!(delivered, accepted, "every accepted message is delivered");
    let end = Instant::now() + PATIENCE;
    loop {
        let text = metrics_of(&relay).await;
        if metric(&text, "mailveil_spool_bytes") == Some(0.0) {
            break;
        }
        assert!(Instant::now() < end, "the spool never emptied:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let again = transaction(
        &mut s,
        "again@dest.test",
        &sized_message("again@dest.test", 5000),
    )
    .await;
    assert!(again.starts_with("250"), "{again}");
    wait_for_captures(&relay.outbox(), accepted.len() + 1).await;
}

#[tokio::test]
async fn data_memory_cap_refuses_a_session_with_452_while_another_holds_it() {
    let config = concat!(
        r#"
[server]
listen = "{smtp}"
hostname = "relay.test"
max_message_size = "1MiB"
max_data_memory = "1MiB"
"#,
        spool_and_outbox!(),
        metrics_listener!(),
    );
    let relay = RelayProc::start(config, &[]).await;
    let big_to = "big@dest.test";
    let big = sized_message(big_to, 700_000);

    // Session one sends most of a large message and holds it (no end of data yet).
    let mut one = session(relay.smtp).await;
    assert!(one.cmd("MAIL FROM:<app@src.test>").await.starts_with("250"));
    assert!(
        one.cmd(&format!("RCPT TO:<{big_to}>"))
            .await
            .starts_with("250")
    );
    assert!(one.cmd("DATA").await.starts_with("354"));
    one.send(&big).await;
    let end = Instant::now() + PATIENCE;
    loop {
        let text = metrics_of(&relay).await;
        let held = metric(&text, "mailveil_data_memory_bytes").unwrap_or(0.0);
        if held >= 700_000.0 {
            assert_eq!(
                metric(&text, "mailveil_data_memory_max_bytes"),
                Some(1048576.0)
            );
            break;
        }
        assert!(
            Instant::now() < end,
            "session one never held its DATA:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    // Meanwhile two more sessions send large messages at once: no room for either.
    let mut others = Vec::new();
    for i in 0..2 {
        let addr = relay.smtp;
        others.push(tokio::spawn(async move {
            let mut s = session(addr).await;
            let to = format!("other{i}@dest.test");
            let reply = transaction(&mut s, &to, &sized_message(&to, 400_000)).await;
            (s, reply)
        }));
    }
    let mut sessions = Vec::new();
    for t in others {
        let (s, reply) = t.await.unwrap();
        assert!(
            reply.starts_with("452 4.3.1"),
            "DATA past server.max_data_memory must be refused: {reply}"
        );
        sessions.push(s);
    }
    // A declared size with no room is refused at MAIL already.
    let mut s = sessions.pop().unwrap();
    let sized = s.cmd("MAIL FROM:<app@src.test> SIZE=600000").await;
    assert!(sized.starts_with("452 4.3.1"), "{sized}");

    // Session one completes: accepted, delivered; then the memory is free again.
    one.send(b".\r\n").await;
    let reply = one.reply().await;
    assert!(reply.starts_with("250"), "{reply}");
    let end = Instant::now() + PATIENCE;
    loop {
        let text = metrics_of(&relay).await;
        if metric(&text, "mailveil_data_memory_bytes") == Some(0.0) {
            assert!(
                metric(
                    &text,
                    "mailveil_inbound_rejections_total{reason=\"data_memory\"}"
                )
                .unwrap_or(0.0)
                    >= 3.0,
                "{text}"
            );
            break;
        }
        assert!(
            Instant::now() < end,
            "DATA memory never given back:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let to = "retry@dest.test";
    let reply = transaction(&mut s, to, &sized_message(to, 400_000)).await;
    assert!(
        reply.starts_with("250"),
        "after the others finished: {reply}"
    );
    let got = wait_for_captures(&relay.outbox(), 2).await;
    let mut rcpts: Vec<&str> = got.iter().map(|c| c.rcpt_to[0].as_str()).collect();
    rcpts.sort();
    assert_eq!(
        rcpts,
        vec![big_to, to],
        "only the accepted messages went out"
    );
}
