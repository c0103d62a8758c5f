//! Abuse limits measured on tokio's paused clock (no wall-clock assertions): the AUTH failure
//! delay grows with each failure, and the command timeout covers a whole line.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rustls_pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use super::support::{Client, Harness, connector, settings, test_cert, user};
use crate::inbound::tls;

#[tokio::test(start_paused = true)]
async fn auth_failure_delay_grows_then_the_connection_closes() {
    let cert = test_cert(false);
    let mut s = settings();
    s.server.tls = Some(cert.config.clone());
    s.access.users = vec![user("app", "right")];
    let h = Harness::new(s, Some(tls::acceptor(&cert.config).unwrap()));
    let (mut c, _task) = h.connect("127.0.0.1:1000").await;
    c.expect("STARTTLS", "220").await;
    let stream = connector(&cert.der)
        .connect(ServerName::try_from("localhost").unwrap(), c.into_inner())
        .await
        .unwrap();
    let mut c = Client::new(stream);
    c.expect("EHLO c", "250").await;
    let base = Duration::from_millis(10); // the harness' auth_failure_delay
    for failure in 1..=3u32 {
        let started = Instant::now();
        let guess = BASE64.encode(format!("\0app\0wrong{failure}"));
        c.expect(&format!("AUTH PLAIN {guess}"), "535 5.7.8").await;
        let waited = started.elapsed();
        assert!(
            waited >= base * failure && waited < base * (failure + 1),
            "failure {failure} answered after {waited:?}"
        );
    }
    c.expect_reply("421 4.7.0").await;
    assert!(c.closed().await);
    assert_eq!(h.rejections("auth_failed"), 3);
}

#[tokio::test(start_paused = true)]
async fn command_timeout_covers_the_whole_line() {
    let h = Harness::new(settings(), None); // command_timeout = 5 s
    let (c, _task) = h.connect("127.0.0.1:1000").await;
    let started = Instant::now();
    let mut stream = c.into_inner();
    // One byte a second: each read comes well within the timeout, the line never does.
    for &b in b"NOOP slowly\r\n" {
        if stream.write_all(&[b]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut c = Client::new(stream);
    c.expect_reply("421 4.4.2").await;
    assert!(c.closed().await);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(5), "{waited:?}");
    assert_eq!(h.rejections("timeout"), 1);
}
