//! Real TCP (and TLS) connections against [`serve`] on `127.0.0.1:0`.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rustls_pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::support::{
    Client, HANG_GUARD, RecordingAcceptor, TestCert, connector, settings, test_cert, user,
};
use crate::inbound::{InboundSettings, serve};
use crate::observe::{Metrics, Redactor};

struct Server {
    addr: std::net::SocketAddr,
    acceptor: Arc<RecordingAcceptor>,
    shutdown: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

async fn start(settings: InboundSettings) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = Arc::new(RecordingAcceptor::default());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve(
        listener,
        Arc::new(settings),
        acceptor.clone(),
        Metrics::new(),
        Redactor::plain(),
        shutdown.clone(),
    ));
    Server {
        addr,
        acceptor,
        shutdown,
        task,
    }
}

async fn connect(addr: std::net::SocketAddr) -> Client<TcpStream> {
    Client::new(TcpStream::connect(addr).await.unwrap())
}

#[tokio::test]
async fn connection_over_the_cap_gets_421() {
    let server = start(settings()).await; // max_connections = 2
    let mut a = connect(server.addr).await;
    a.expect_reply("220 mx.test").await;
    let mut b = connect(server.addr).await;
    b.expect_reply("220 mx.test").await;
    let mut c = connect(server.addr).await;
    assert_eq!(c.reply().await, "421 4.3.2 too many connections\r\n");
    assert!(c.closed().await);
    // A slot frees up when a session ends.
    a.expect("QUIT", "221").await;
    assert!(a.closed().await);
    let mut d = None;
    for _ in 0..100 {
        let mut next = connect(server.addr).await;
        if next.reply().await.starts_with("220") {
            d = Some(next);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut d = d.expect("a slot was freed");
    d.expect("NOOP", "250").await;
    b.expect("NOOP", "250").await;
}

#[tokio::test]
async fn idle_client_times_out_with_421() {
    let mut s = settings();
    s.server.command_timeout = Duration::from_millis(300);
    let server = start(s).await;
    let mut c = connect(server.addr).await;
    c.expect_reply("220").await;
    c.expect("EHLO c", "250").await;
    // Say nothing: the server gives up (HANG_GUARD in `reply` bounds the wait).
    assert_eq!(c.reply().await, "421 4.4.2 timeout, closing\r\n");
    assert!(c.closed().await);
}

fn tls_settings(cert: &TestCert) -> InboundSettings {
    let mut s = settings();
    s.server.tls = Some(cert.config.clone());
    s.access.networks = Vec::new(); // only AUTH can allow relaying
    s.access.users = vec![user("billing-app", "s3cret")];
    s
}

async fn starttls(
    mut c: Client<TcpStream>,
    cert: &TestCert,
) -> Client<tokio_rustls::client::TlsStream<TcpStream>> {
    c.expect("STARTTLS", "220 2.0.0").await;
    let tcp = c.into_inner();
    let name = ServerName::try_from("localhost").unwrap();
    let tls = tokio::time::timeout(HANG_GUARD, connector(&cert.der).connect(name, tcp))
        .await
        .unwrap()
        .expect("handshake with the rcgen certificate");
    Client::new(tls)
}

fn plain_auth(user: &str, password: &str) -> String {
    format!(
        "AUTH PLAIN {}",
        BASE64.encode(format!("\0{user}\0{password}"))
    )
}

#[tokio::test]
async fn starttls_then_auth_allows_relaying() {
    let cert = test_cert(false);
    let server = start(tls_settings(&cert)).await;
    let mut c = connect(server.addr).await;
    c.expect_reply("220").await;
    let ehlo = c.expect("EHLO c", "250").await;
    assert!(
        ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"),
        "{ehlo:?}"
    );
    let mut c = starttls(c, &cert).await;

    let ehlo = c.expect("EHLO c", "250").await;
    assert!(ehlo.contains("250-AUTH PLAIN LOGIN\r\n"), "{ehlo:?}");
    assert!(!ehlo.contains("STARTTLS"), "{ehlo:?}");
    c.expect("MAIL FROM:<s@example.com>", "250").await;
    c.expect("RCPT TO:<a@example.com>", "530 5.7.0").await;
    c.expect("RSET", "250").await;
    c.expect(&plain_auth("billing-app", "wrong"), "535 5.7.8")
        .await;
    c.expect(&plain_auth("billing-app", "s3cret"), "235 2.7.0")
        .await;
    c.expect("MAIL FROM:<s@example.com>", "250").await;
    c.expect("RCPT TO:<a@example.com>", "250").await;
    c.expect("DATA", "354").await;
    c.send("Subject: t\r\n\r\nhi\r\n.\r\n").await;
    c.expect_reply("250 2.0.0 queued").await;
    let received = server.acceptor.received.lock().unwrap();
    assert!(received[0].client.tls);
    assert_eq!(received[0].client.user.as_deref(), Some("billing-app"));
}

#[tokio::test]
async fn auth_login_and_failure_limit() {
    let cert = test_cert(false);
    let server = start(tls_settings(&cert)).await;
    let mut c = connect(server.addr).await;
    c.expect_reply("220").await;
    c.expect("EHLO c", "250").await;
    let mut c = starttls(c, &cert).await;
    c.expect("EHLO c", "250").await;
    c.expect("AUTH LOGIN", "334 VXNlcm5hbWU6").await;
    c.expect(&BASE64.encode("billing-app"), "334 UGFzc3dvcmQ6")
        .await;
    c.expect(&BASE64.encode("s3cret"), "235 2.7.0").await;

    let mut c = connect(server.addr).await;
    c.expect_reply("220").await;
    let mut c = starttls(c, &cert).await;
    c.expect("EHLO c", "250").await;
    c.expect(&plain_auth("billing-app", "x1"), "535").await;
    c.expect(&plain_auth("billing-app", "x2"), "535").await;
    c.expect(&plain_auth("billing-app", "x3"), "535").await;
    c.expect_reply("421 4.7.0").await;
    assert!(c.closed().await);
}

#[tokio::test]
async fn commands_pipelined_after_starttls_are_discarded() {
    let cert = test_cert(false);
    let mut s = tls_settings(&cert);
    s.access.networks = vec!["127.0.0.0/8".parse().unwrap()];
    let server = start(s).await;
    let mut c = connect(server.addr).await;
    c.expect_reply("220").await;
    c.expect("EHLO c", "250").await;
    // The injected MAIL would open a transaction inside the TLS session if it were kept.
    c.send("STARTTLS\r\nMAIL FROM:<injected@evil.test>\r\n")
        .await;
    c.expect_reply("220 2.0.0").await;
    let tcp = c.into_inner();
    let tls = connector(&cert.der)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("handshake is not disturbed by the injected bytes");
    let mut c = Client::new(tls);
    c.expect("EHLO c", "250").await;
    c.expect("RCPT TO:<a@example.com>", "503 5.5.1").await;
    c.expect("MAIL FROM:<real@example.com>", "250 2.1.0").await;
}

#[tokio::test]
async fn shutdown_closes_idle_sessions_and_serve_returns() {
    let server = start(settings()).await;
    let mut c = connect(server.addr).await;
    c.expect_reply("220").await;
    c.expect("EHLO c", "250").await;
    server.shutdown.cancel();
    assert_eq!(c.reply().await, "421 4.3.2 shutting down\r\n");
    assert!(c.closed().await);
    tokio::time::timeout(HANG_GUARD, server.task)
        .await
        .expect("serve returns after its sessions end")
        .unwrap()
        .unwrap();
    // No longer accepting.
    assert!(TcpStream::connect(server.addr).await.is_err());
}

#[tokio::test]
async fn serve_refuses_to_start_with_a_bad_certificate() {
    let cert = test_cert(false);
    let mut s = settings();
    let mut tls = cert.config.clone();
    tls.key = tls.cert.clone(); // a certificate is not a key
    s.server.tls = Some(tls);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let result = serve(
        listener,
        Arc::new(s),
        Arc::new(RecordingAcceptor::default()),
        Metrics::new(),
        Redactor::plain(),
        CancellationToken::new(),
    )
    .await;
    assert_eq!(result.unwrap_err().kind(), std::io::ErrorKind::InvalidInput);
}
