//! The metrics and admin HTTP listeners of a real `mailveil run` process under clients that
//! try to hold connections: silent ones, slow-drip ones, too many at once, idle keep-alive,
//! oversized requests and a client that never reads its responses. Each is closed or refused
//! within the documented limits (docs/security.md), and a fresh client is served afterwards.

use crate::support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "http-limits-token-Kx";

/// `mailveil_http_*` defaults: the header timeout, and what a test allows on top of it.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const SLACK: Duration = Duration::from_secs(3);

const CONFIG: &str = concat!(
    r#"
[server]
listen = "{smtp}"
"#,
    spool_and_outbox!(),
    metrics_listener!(),
    admin_listener!(),
);

async fn relay(config: &str) -> RelayProc {
    RelayProc::start(config, &[("TEST_ADMIN_TOKEN", TOKEN)]).await
}

/// Reads until the server closes the connection (EOF or reset); returns what it sent and
/// when it closed, or `None` when it was still open at `deadline`.
async fn closed_by(stream: &mut TcpStream, deadline: Instant) -> Option<(Vec<u8>, Instant)> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some((got, Instant::now())),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// `GET /healthz`: the whole answer, or the error that ended the connection.
async fn healthz(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await?;
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, s.read_to_end(&mut answer))
        .await
        .expect("an answer or a close")?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

fn sample(text: &str, series: &str) -> f64 {
    metric(text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

#[tokio::test]
async fn a_silent_connection_is_closed_within_the_header_timeout() {
    let r = relay(CONFIG).await;
    for (port, addr) in [("metrics", r.metrics), ("admin", r.admin)] {
        let opened = Instant::now();
        let mut silent = TcpStream::connect(addr).await.unwrap();
        // One that sent half a request line is no different.
        let mut partial = TcpStream::connect(addr).await.unwrap();
        partial.write_all(b"GET /metr").await.unwrap();
        for stream in [&mut silent, &mut partial] {
            let closed = closed_by(stream, opened + HEADER_TIMEOUT + SLACK).await;
            assert!(
                closed.is_some(),
                "{port}: a connection that sends no request is still open after {:?}",
                HEADER_TIMEOUT + SLACK
            );
        }
    }
    let (_, text) = http_get(r.metrics, "/metrics").await;
    for listener in ["metrics", "admin"] {
        let series = format!(
            "mailveil_http_rejections_total{{listener=\"{listener}\",reason=\"header_timeout\"}}"
        );
        assert!(sample(&text, &series) >= 2.0, "{series}:\n{text}");
    }
}

/// One header line every second: each line arrives in time, the whole head does not.
#[tokio::test]
async fn a_slow_drip_request_is_closed_within_the_header_timeout() {
    let r = relay(CONFIG).await;
    let drip = |addr: SocketAddr| async move {
        let opened = Instant::now();
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut read, mut write) = stream.into_split();
        let writer = tokio::spawn(async move {
            let _ = write
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                .await;
            for i in 0.. {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let line = format!("X-Drip-{i}: still here\r\n");
                if write.write_all(line.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
        let mut buf = [0u8; 1024];
        let closed = tokio::time::timeout(HEADER_TIMEOUT + SLACK, async {
            loop {
                match read.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        writer.abort();
        (closed.is_ok(), opened.elapsed())
    };
    let (metrics, admin) = tokio::join!(drip(r.metrics), drip(r.admin));
    for (port, (closed, after)) in [("metrics", metrics), ("admin", admin)] {
        assert!(
            closed,
            "{port}: a slow-drip client is still connected after {after:?}"
        );
    }
}

/// The finding: 200 slow clients per port. Beyond the cap they are refused at once, the rest
/// are closed by the header timeout, and then a fresh client is served on both ports.
#[tokio::test]
async fn two_hundred_slow_clients_per_port_are_refused_or_closed() {
    let r = relay(CONFIG).await;
    let mut clients = Vec::new();
    for addr in [r.metrics, r.admin] {
        for _ in 0..200 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
            clients.push((addr, s));
        }
    }
    let opened = Instant::now();
    // Refused at once: the connections over the cap (64 metrics, 16 admin) are closed a second
    // later, long before the header timeout.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut refused = 0;
    for (_, s) in clients.iter_mut() {
        if closed_by(s, Instant::now() + Duration::from_millis(2))
            .await
            .is_some()
        {
            refused += 1;
        }
    }
    assert!(
        opened.elapsed() < HEADER_TIMEOUT,
        "counting took too long to tell refusals from timeouts"
    );
    assert!(
        refused >= (200 - 64) + (200 - 16),
        "only {refused} of 400 connections were refused at once"
    );
    // The others go when their head has not arrived within the header timeout.
    for (addr, s) in clients.iter_mut() {
        assert!(
            closed_by(s, opened + HEADER_TIMEOUT + SLACK)
                .await
                .is_some(),
            "a slow client of {addr} is still connected after {:?}",
            opened.elapsed()
        );
    }
    assert_eq!(http_get(r.metrics, "/healthz").await, (200, "ok\n".into()));
    let (code, body) = http_request(r.admin, "GET", "/status", Some(TOKEN)).await;
    assert_eq!(code, 200, "{body}");
    let (_, text) = http_get(r.metrics, "/metrics").await;
    assert!(
        sample(
            &text,
            "mailveil_http_rejections_total{listener=\"metrics\",reason=\"connection_limit\"}"
        ) >= 136.0,
        "{text}"
    );
    assert!(
        sample(
            &text,
            "mailveil_http_rejections_total{listener=\"admin\",reason=\"connection_limit\"}"
        ) >= 184.0,
        "{text}"
    );
}

/// `[metrics] max_connections`: while the cap is taken a fresh client gets `503` at once; when
/// the holders go, it is served again.
#[tokio::test]
async fn the_connection_cap_is_configurable_and_frees_up() {
    let config = CONFIG.replace(
        "listen = \"{metrics}\"",
        "listen = \"{metrics}\"\nmax_connections = 4",
    );
    let r = relay(&config).await;
    let mut holders = Vec::new();
    for _ in 0..4 {
        holders.push(TcpStream::connect(r.metrics).await.unwrap());
    }
    // The relay has accepted them when a request on one more is refused (a `503`, or a reset
    // when the close overtakes it).
    let deadline = Instant::now() + PATIENCE;
    loop {
        let started = Instant::now();
        match healthz(r.metrics).await {
            Ok(answer) if answer.starts_with("HTTP/1.1 503") => {
                assert!(answer.contains("too many"), "{answer}");
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                assert!(
                    started.elapsed() < Duration::from_secs(1),
                    "refused at once"
                );
                break;
            }
            other => assert!(Instant::now() < deadline, "never refused: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(holders);
    let deadline = Instant::now() + PATIENCE;
    loop {
        if healthz(r.metrics)
            .await
            .is_ok_and(|a| a.starts_with("HTTP/1.1 200"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "the cap never freed up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A kept-alive connection that asks nothing more is closed like a silent one.
#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let r = relay(CONFIG).await;
    let mut s = TcpStream::connect(r.metrics).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.ends_with(b"ok\n") {
        let n = tokio::time::timeout(PATIENCE, s.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        assert!(n > 0, "closed before answering");
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    let answered = Instant::now();
    assert!(
        closed_by(&mut s, answered + HEADER_TIMEOUT + SLACK)
            .await
            .is_some(),
        "an idle keep-alive connection is still open"
    );
}

#[tokio::test]
async fn oversized_requests_are_refused() {
    let r = relay(CONFIG).await;
    // A request head over 8 KiB.
    let mut s = TcpStream::connect(r.metrics).await.unwrap();
    let big = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    s.write_all(big.as_bytes()).await.unwrap();
    let (answer, _) = closed_by(&mut s, Instant::now() + PATIENCE)
        .await
        .expect("closed");
    assert!(
        answer.starts_with(b"HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // A body announced over 4 KiB, with a valid token.
    let mut s = TcpStream::connect(r.admin).await.unwrap();
    s.write_all(
        format!(
            "POST /pause HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Length: 1000000\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (answer, _) = closed_by(&mut s, Instant::now() + PATIENCE)
        .await
        .expect("closed");
    assert!(
        answer.starts_with(b"HTTP/1.1 413"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let (_, status) = http_request(r.admin, "GET", "/status", Some(TOKEN)).await;
    assert!(status.contains("\"paused\":false"), "not paused: {status}");
}

/// Pipelined scrapes that are never read: once the socket buffers are full the response stops
/// moving, and the connection is closed by the write timeout instead of staying forever.
#[tokio::test]
async fn a_client_that_never_reads_is_closed_by_the_write_timeout() {
    let r = relay(CONFIG).await;
    let s = TcpStream::connect(r.metrics).await.unwrap();
    let requests = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(3000);
    // The relay reads requests as it answers them: write in the background.
    let (mut read, mut write) = s.into_split();
    let writer = tokio::spawn(async move {
        let _ = write.write_all(requests.as_bytes()).await;
        write
    });
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (_, text) = http_get(r.metrics, "/metrics").await;
        if metric(
            &text,
            "mailveil_http_rejections_total{listener=\"metrics\",reason=\"write_timeout\"}",
        ) == Some(1.0)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a client that never reads is still served:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The connection is gone: reading drains what was sent, then ends.
    let mut buf = vec![0u8; 1 << 16];
    let ended = tokio::time::timeout(PATIENCE, async {
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the connection stayed open");
    writer.abort();
}
