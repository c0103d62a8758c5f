//! The relay delivering to a real `mailveil sink` process over STARTTLS: a private CA given as
//! `ca_file` is trusted; an unknown CA or a server without STARTTLS never gets the message.

use crate::support;

use std::time::Duration;

use support::*;

fn relay_config(
    sink: std::net::SocketAddr,
    ca_file: Option<&std::path::Path>,
    host: &str,
) -> String {
    let ca = ca_file
        .map(|f| format!("ca_file = \"{}\"", f.display()))
        .unwrap_or_default();
    format!(
        r#"
[spool]
dir = "{{dir}}/spool"
retry_initial = "1s"
retry_max = "2s"
[[upstream]]
name = "provider"
host = "{host}"
port = {port}
tls = "starttls"
timeout = "10s"
{ca}
"#,
        port = sink.port()
    )
}

fn msg() -> Vec<u8> {
    message(
        &["From: app@src.test", "To: a@x.test, b@y.test", "Subject: s"],
        "private\r\n",
    )
}

#[tokio::test]
async fn starttls_upstream_with_a_private_ca_is_delivered() {
    let work = tempfile::tempdir().unwrap();
    let pki = make_pki(work.path(), "upstream", &["localhost", "127.0.0.1"]);
    let captured = work.path().join("captured");
    let (_sink, addr) = start_sink(&captured, Some((&pki.cert_file, &pki.key_file)));
    for (i, host) in ["127.0.0.1", "localhost"].into_iter().enumerate() {
        let relay = InProcessRelay::start(&relay_config(addr, Some(&pki.ca_file), host)).await;
        lettre_send(
            relay.smtp,
            Some("app@src.test"),
            &["a@x.test", "b@y.test"],
            &msg(),
        )
        .await
        .unwrap();
        wait_for_captures(&captured, 2 * (i + 1)).await;
        relay.stop().await.unwrap();
    }
    let copies = wait_for_captures(&captured, 4).await;
    assert_eq!(
        copies.len(),
        4,
        "two split copies for each of the two host forms (IP and name)"
    );
    for c in copies {
        assert_eq!(body_of(&c.bytes), b"private\r\n");
    }
}

#[tokio::test]
async fn an_untrusted_certificate_is_never_delivered_to() {
    let work = tempfile::tempdir().unwrap();
    let trusted = make_pki(work.path(), "trusted", &["127.0.0.1"]);
    let rogue = make_pki(work.path(), "rogue", &["127.0.0.1"]);
    let captured = work.path().join("captured");
    let (_sink, addr) = start_sink(&captured, Some((&rogue.cert_file, &rogue.key_file)));
    let relay =
        InProcessRelay::start(&relay_config(addr, Some(&trusted.ca_file), "127.0.0.1")).await;
    let reply = lettre_send(
        relay.smtp,
        Some("app@src.test"),
        &["a@x.test", "b@y.test"],
        &msg(),
    )
    .await
    .unwrap();
    assert!(reply.starts_with("250"), "accepted and queued: {reply}");
    // Several retries happen in this window (retry_initial 1s); none may deliver.
    assert_no_captures(&captured, Duration::from_secs(3)).await;
    let (_, metrics) = relay.http_get("/metrics").await;
    assert!(metric(&metrics, "mailveil_deliveries_total{outcome=\"deferred\",provider=\"default\",upstream=\"provider\"}").unwrap_or(0.0) >= 2.0, "{metrics}");
    assert_eq!(
        metric(&metrics, "mailveil_upstream_up{upstream=\"provider\"}"),
        Some(0.0)
    );
    assert!(
        std::fs::read_dir(relay.spool().join("msg"))
            .unwrap()
            .count()
            > 0,
        "still spooled"
    );
    relay.stop().await.unwrap();
}

#[tokio::test]
async fn an_upstream_without_starttls_never_gets_plaintext() {
    let work = tempfile::tempdir().unwrap();
    let pki = make_pki(work.path(), "upstream", &["127.0.0.1"]);
    let captured = work.path().join("captured");
    let (_sink, addr) = start_sink(&captured, None);
    let relay = InProcessRelay::start(&relay_config(addr, Some(&pki.ca_file), "127.0.0.1")).await;
    lettre_send(
        relay.smtp,
        Some("app@src.test"),
        &["a@x.test", "b@y.test"],
        &msg(),
    )
    .await
    .unwrap();
    assert_no_captures(&captured, Duration::from_secs(3)).await;
    assert!(
        std::fs::read_dir(relay.spool().join("msg"))
            .unwrap()
            .count()
            > 0,
        "kept for a later attempt"
    );
    relay.stop().await.unwrap();
}
