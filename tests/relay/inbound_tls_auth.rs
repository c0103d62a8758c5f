//! STARTTLS and AUTH on the inbound side, with certificates from a private CA made by rcgen and
//! lettre (rustls) as the client.

use crate::support;

use std::time::Duration;

use support::*;

struct Setup {
    relay: InProcessRelay,
    pki: TestPki,
    _certs: tempfile::TempDir,
}

async fn start(required: bool, networks: &str) -> Setup {
    let certs = tempfile::tempdir().unwrap();
    let pki = make_pki(certs.path(), "inbound", &["localhost", "127.0.0.1"]);
    let pw = certs.path().join("billing.pw");
    std::fs::write(&pw, "correct horse\n").unwrap();
    let toml = format!(
        r#"
[server]
hostname = "relay.test"
[server.tls]
cert = "{cert}"
key = "{key}"
required = {required}
[access]
networks = {networks}
[[access.users]]
name = "billing-app"
password_file = "{pw}"
{storage}"#,
        cert = pki.cert_file.display(),
        key = pki.key_file.display(),
        pw = pw.display(),
        storage = spool_and_outbox!(),
    );
    Setup {
        relay: InProcessRelay::start(&toml).await,
        pki,
        _certs: certs,
    }
}

fn msg() -> Vec<u8> {
    message(
        &[
            "From: billing@src.test",
            "To: payer@x.test",
            "Subject: invoice",
        ],
        "amount due\r\n",
    )
}

#[tokio::test]
async fn starttls_is_offered_and_auth_only_after_it() {
    let s = start(false, "[]").await;
    let (mut raw, _) = RawSmtp::connect(s.relay.smtp).await;
    let ehlo = raw.cmd("EHLO client.test").await;
    assert!(ehlo.contains("STARTTLS"), "{ehlo}");
    assert!(
        !ehlo.contains("AUTH"),
        "AUTH is not offered before TLS: {ehlo}"
    );
    let auth = raw
        .cmd("AUTH PLAIN AGJpbGxpbmctYXBwAGNvcnJlY3QgaG9yc2U=")
        .await;
    assert!(
        auth.starts_with("538 5.7.11") || auth.starts_with("530") || auth.starts_with("503"),
        "AUTH before TLS refused: {auth}"
    );
    // Not in networks, not authenticated: relaying is refused with a hint that AUTH would help.
    assert!(
        raw.cmd("MAIL FROM:<billing@src.test>")
            .await
            .starts_with("250")
    );
    let rcpt = raw.cmd("RCPT TO:<payer@x.test>").await;
    assert!(rcpt.starts_with("530 5.7.0"), "{rcpt}");
    drop(raw); // an open transaction would hold shutdown for its grace period

    let ok = lettre_send_tls(
        s.relay.smtp,
        &s.pki.ca_pem,
        Some(("billing-app", "correct horse")),
        "billing@src.test",
        &["payer@x.test"],
        &msg(),
    )
    .await;
    assert!(ok.as_ref().is_ok_and(|r| r.starts_with("250")), "{ok:?}");
    let copies = wait_for_captures(&s.relay.outbox(), 1).await;
    assert_eq!(copies[0].rcpt_to, vec!["payer@x.test".to_string()]);
    let text = String::from_utf8_lossy(&copies[0].bytes);
    assert!(
        text.contains("with ESMTPSA"),
        "trace field records TLS + AUTH: {text}"
    );

    let wrong = lettre_send_tls(
        s.relay.smtp,
        &s.pki.ca_pem,
        Some(("billing-app", "wrong")),
        "billing@src.test",
        &["payer@x.test"],
        &msg(),
    )
    .await;
    let err = wrong.unwrap_err();
    assert!(
        err.to_string().contains("535") || err.status().is_some_and(|c| c.to_string() == "535"),
        "{err}"
    );
    assert_eq!(
        mailveil::capture::read_all(&s.relay.outbox())
            .unwrap()
            .len(),
        1,
        "nothing more relayed"
    );
    s.relay.stop().await.unwrap();
}

#[tokio::test]
async fn tls_required_refuses_mail_before_starttls() {
    let s = start(true, "[\"127.0.0.0/8\"]").await;
    let (mut raw, _) = RawSmtp::connect(s.relay.smtp).await;
    raw.cmd("EHLO client.test").await;
    let mail = raw.cmd("MAIL FROM:<billing@src.test>").await;
    assert!(mail.starts_with("530 5.7.0"), "{mail}");
    drop(raw);
    // Over STARTTLS from an allowed network, no AUTH needed.
    let ok = lettre_send_tls(
        s.relay.smtp,
        &s.pki.ca_pem,
        None,
        "billing@src.test",
        &["payer@x.test"],
        &msg(),
    )
    .await;
    assert!(ok.as_ref().is_ok_and(|r| r.starts_with("250")), "{ok:?}");
    let copies = wait_for_captures(&s.relay.outbox(), 1).await;
    assert!(String::from_utf8_lossy(&copies[0].bytes).contains("with ESMTPS"));
    assert_no_captures_beyond(&s.relay, 1).await;
    s.relay.stop().await.unwrap();
}

async fn assert_no_captures_beyond(relay: &InProcessRelay, n: usize) {
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        mailveil::capture::read_all(&relay.outbox()).unwrap().len(),
        n
    );
}
