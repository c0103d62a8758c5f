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

/// A session through STARTTLS on the duplex harness, as if from `peer`.
async fn under_tls(
    h: &Harness,
    cert: &super::support::TestCert,
    peer: &str,
) -> Client<tokio_rustls::client::TlsStream<tokio::io::DuplexStream>> {
    let (mut c, _task) = h.connect(peer).await;
    c.expect("STARTTLS", "220").await;
    let stream = connector(&cert.der)
        .connect(ServerName::try_from("localhost").unwrap(), c.into_inner())
        .await
        .unwrap();
    let mut c = Client::new(stream);
    c.expect("EHLO c", "250").await;
    c
}

fn plain(user: &str, password: &str) -> String {
    format!(
        "AUTH PLAIN {}",
        BASE64.encode(format!("\0{user}\0{password}"))
    )
}

/// Outsiders (here 192.0.2.1; only 127.0.0.0/8 is inside) get `unauthenticated_timeout` from
/// the greeting, however busy they keep the session; a client inside the networks does not.
#[tokio::test(start_paused = true)]
async fn outsiders_must_authenticate_in_time_insiders_need_not() {
    let mut s = settings();
    s.server.command_timeout = Duration::from_secs(60);
    s.server.unauthenticated_timeout = Duration::from_secs(3);
    let h = Harness::new(s, None);

    let started = Instant::now();
    let (mut silent, _t1) = h.connect("192.0.2.1:1000").await;
    silent.expect_reply("421 4.7.0").await;
    assert!(silent.closed().await);
    assert_eq!(started.elapsed(), Duration::from_secs(3));

    // Commands do not move the deadline: it runs from the greeting.
    let started = Instant::now();
    let (mut busy, _t2) = h.connect("192.0.2.1:1001").await;
    busy.expect("EHLO c", "250").await;
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        busy.expect("NOOP", "250").await;
    }
    busy.expect_reply("421 4.7.0 not authenticated in time")
        .await;
    assert!(busy.closed().await);
    assert_eq!(started.elapsed(), Duration::from_secs(3));
    assert_eq!(h.rejections("unauthenticated_timeout"), 2);

    let (mut inside, _t3) = h.connect("127.0.0.1:1002").await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    inside.expect("NOOP", "250").await;
    assert_eq!(
        h.ctx.admission.open(),
        (1, 0, 0),
        "slots of closed sessions released"
    );
}

/// The deadline also bounds a STARTTLS handshake that never starts, and AUTH lifts it.
#[tokio::test(start_paused = true)]
async fn the_deadline_covers_the_handshake_and_ends_with_auth() {
    let cert = test_cert(false);
    let mut s = settings();
    s.server.tls = Some(cert.config.clone());
    s.server.command_timeout = Duration::from_secs(60);
    s.server.unauthenticated_timeout = Duration::from_secs(3);
    s.access.users = vec![user("app", "right")];
    let h = Harness::new(s, Some(tls::acceptor(&cert.config).unwrap()));

    let started = Instant::now();
    let (mut c, _task) = h.connect("192.0.2.1:1000").await;
    c.expect("STARTTLS", "220").await;
    assert!(c.closed().await, "closed mid-handshake");
    assert_eq!(started.elapsed(), Duration::from_secs(3));
    assert_eq!(h.rejections("unauthenticated_timeout"), 1);

    let mut c = under_tls(&h, &cert, "192.0.2.1:1001").await;
    c.expect(&plain("app", "right"), "235").await;
    assert_eq!(h.ctx.admission.open(), (1, 0, 0), "no longer an outsider");
    tokio::time::sleep(Duration::from_secs(30)).await;
    c.expect("NOOP", "250").await;
}

/// The AUTH failure budget is kept per source, across connections: once a source used it, its
/// AUTH is refused with `421 4.7.0` before any password is checked, even the right one; another
/// source is not affected.
#[tokio::test(start_paused = true)]
async fn a_source_over_its_auth_budget_is_refused_unchecked_on_every_connection() {
    let cert = test_cert(false);
    let mut s = settings();
    s.server.tls = Some(cert.config.clone());
    s.server.max_connections = 10;
    s.access.users = vec![user("app", "right")];
    s.access.auth_failures_per_source = "2/10m".parse().unwrap();
    s.access.auth_ban = Duration::from_secs(600);
    let h = Harness::new(s, Some(tls::acceptor(&cert.config).unwrap()));

    let mut c = under_tls(&h, &cert, "127.0.0.7:1000").await;
    c.expect(&plain("app", "wrong1"), "535 5.7.8").await;
    let mut c = under_tls(&h, &cert, "127.0.0.7:1001").await;
    c.expect(&plain("app", "wrong2"), "535 5.7.8").await;
    c.expect_reply("421 4.7.0 too many authentication failures from your address")
        .await;
    assert!(c.closed().await);

    let mut c = under_tls(&h, &cert, "127.0.0.7:1002").await;
    c.expect(&plain("app", "right"), "421 4.7.0").await;
    assert!(c.closed().await);
    let mut c = under_tls(&h, &cert, "127.0.0.7:1003").await;
    c.expect("AUTH LOGIN", "421 4.7.0").await; // refused before a password is sent
    assert_eq!(h.rejections("auth_failed"), 2);
    assert_eq!(h.rejections("auth_banned"), 2);

    let mut other = under_tls(&h, &cert, "127.0.0.8:1000").await;
    other.expect(&plain("app", "right"), "235").await;

    tokio::time::advance(Duration::from_secs(601)).await;
    let mut c = under_tls(&h, &cert, "127.0.0.7:1004").await;
    c.expect(&plain("app", "right"), "235").await;
}
