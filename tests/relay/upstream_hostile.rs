//! Hostile upstreams: a raw TCP server on 127.0.0.1 that sends garbage, answers with an endless
//! multi-line reply (fast, and as a slow drip), or stalls in the middle of a reply. Each must
//! end within the upstream `timeout` as a *temporary* failure; through the relay the copy is
//! deferred, retried and finally delivered once the upstream behaves. Nothing is lost.

use crate::support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use mailveil::config::{SmtpUpstreamConfig, UpstreamConfig, UpstreamKind, UpstreamTls};
use mailveil::upstream::{Outbound, Upstream, UpstreamError};
use support::*;

/// What the server does to a connection it is hostile on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hostility {
    /// Bytes that are not SMTP instead of a greeting.
    GarbageGreeting,
    /// A proper greeting, then junk as the answer to EHLO.
    GarbageAfterEhlo,
    /// `250-...` lines to EHLO as fast as the socket takes them, forever.
    EndlessMultilineFast,
    /// `250-...` lines to EHLO, one every 100 ms, forever.
    EndlessMultilineDrip,
    /// Half of the EHLO reply, then silence with the connection open.
    StallMidReply,
    /// Takes the whole message, then sends `25` of the final reply and stalls.
    StallAfterData,
}

/// What the well-behaved part of the server accepted.
#[derive(Debug, Default)]
struct Seen {
    connections: usize,
    messages: Vec<(Vec<String>, Vec<u8>)>,
}

struct HostileUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HostileUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves connection `i` with `plan[i]`'s hostility; connections past the plan are served
/// properly (and recorded).
async fn start(plan: Vec<Hostility>) -> HostileUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let state = seen.clone();
    let task = tokio::spawn(async move {
        let mut sessions = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let n = {
                let mut s = state.lock().unwrap();
                s.connections += 1;
                s.connections - 1
            };
            match plan.get(n) {
                Some(&h) => sessions.spawn(hostile(h, stream)),
                None => sessions.spawn(good(stream, state.clone())),
            };
        }
    });
    HostileUpstream { addr, seen, task }
}

async fn read_line(r: &mut BufReader<TcpStream>) -> Option<String> {
    let mut line = Vec::new();
    match r.read_until(b'\n', &mut line).await {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(String::from_utf8_lossy(&line).trim_end().to_string()),
    }
}

/// Reads (and drops) whatever comes until the client gives up.
async fn drain(r: &mut BufReader<TcpStream>) {
    let mut buf = [0u8; 4096];
    while matches!(r.read(&mut buf).await, Ok(n) if n > 0) {}
}

/// Reads a message up to the lone `.` line; None if the client went away.
async fn read_data(r: &mut BufReader<TcpStream>) -> Option<Vec<u8>> {
    let mut data = Vec::new();
    loop {
        let mut line = Vec::new();
        if r.read_until(b'\n', &mut line).await.ok()? == 0 {
            return None;
        }
        if line == b".\r\n" {
            return Some(data);
        }
        let line = line.strip_prefix(b".").unwrap_or(&line);
        data.extend_from_slice(line);
    }
}

async fn hostile(h: Hostility, stream: TcpStream) {
    let mut r = BufReader::new(stream);
    let greeting: &[u8] = match h {
        Hostility::GarbageGreeting => {
            b"\x16\x03\x01\x00 HTTP/1.1 400 Bad Request\r\n\xff\xfe\0\r\n"
        }
        _ => b"220 hostile.test ESMTP\r\n",
    };
    if r.get_mut().write_all(greeting).await.is_err() {
        return;
    }
    if h == Hostility::GarbageGreeting {
        return drain(&mut r).await;
    }
    if read_line(&mut r).await.is_none() {
        return;
    }
    let w = r.get_mut();
    match h {
        Hostility::GarbageGreeting => {}
        Hostility::GarbageAfterEhlo => {
            let _ = w.write_all(b"hello? \0\xff what is EHLO\r\n").await;
        }
        Hostility::EndlessMultilineFast | Hostility::EndlessMultilineDrip => {
            let line = b"250-and another extension nobody asked for\r\n";
            loop {
                if w.write_all(line).await.is_err() {
                    return;
                }
                if h == Hostility::EndlessMultilineDrip {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        Hostility::StallMidReply => {
            let _ = w.write_all(b"250-hostile.test\r\n250-PIPEL").await;
        }
        Hostility::StallAfterData => {
            let _ = w.write_all(b"250 hostile.test\r\n").await;
            loop {
                let Some(line) = read_line(&mut r).await else {
                    return;
                };
                let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
                let reply: &[u8] = match verb.as_str() {
                    "DATA" => b"354 go on\r\n",
                    _ => b"250 ok\r\n",
                };
                if r.get_mut().write_all(reply).await.is_err() {
                    return;
                }
                if verb == "DATA" {
                    if read_data(&mut r).await.is_none() {
                        return;
                    }
                    let _ = r.get_mut().write_all(b"25").await;
                    break;
                }
            }
        }
    }
    drain(&mut r).await;
}

/// A minimal correct SMTP server that records what it accepts.
async fn good(stream: TcpStream, seen: Arc<Mutex<Seen>>) {
    let mut r = BufReader::new(stream);
    if r.get_mut()
        .write_all(b"220 good.test ESMTP\r\n")
        .await
        .is_err()
    {
        return;
    }
    let mut rcpts = Vec::new();
    while let Some(line) = read_line(&mut r).await {
        let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" => b"250-good.test\r\n250 8BITMIME\r\n",
            "MAIL" => {
                rcpts.clear();
                b"250 ok\r\n"
            }
            "RCPT" => {
                let addr = line[line.find('<').unwrap_or(0) + 1..].trim_end_matches('>');
                rcpts.push(addr.to_string());
                b"250 ok\r\n"
            }
            "DATA" => {
                if r.get_mut().write_all(b"354 go on\r\n").await.is_err() {
                    return;
                }
                let Some(data) = read_data(&mut r).await else {
                    return;
                };
                seen.lock().unwrap().messages.push((rcpts.clone(), data));
                b"250 2.0.0 stored\r\n"
            }
            "QUIT" => {
                let _ = r.get_mut().write_all(b"221 bye\r\n").await;
                return;
            }
            "RSET" | "NOOP" => b"250 ok\r\n",
            _ => b"500 what\r\n",
        };
        if r.get_mut().write_all(reply).await.is_err() {
            return;
        }
    }
}

fn upstream_to(addr: SocketAddr, timeout: Duration) -> Upstream {
    let config = UpstreamConfig {
        name: "hostile".into(),
        limits: Default::default(),
        kind: UpstreamKind::Smtp(SmtpUpstreamConfig {
            local: false,
            host: addr.ip().to_string(),
            port: addr.port(),
            tls: UpstreamTls::None,
            ca_file: None,
            credentials: None,
            max_connections: 1,
            timeout,
        }),
    };
    Upstream::from_config(&config, "relay.test").unwrap()
}

const ALL: [Hostility; 6] = [
    Hostility::GarbageGreeting,
    Hostility::GarbageAfterEhlo,
    Hostility::EndlessMultilineFast,
    Hostility::EndlessMultilineDrip,
    Hostility::StallMidReply,
    Hostility::StallAfterData,
];

/// Every kind of hostility ends the attempt as a temporary failure; the ones that keep the
/// connection busy end by the timeout (or lettre's reply-size cap for the fast flood).
#[tokio::test]
async fn every_hostile_upstream_is_a_temporary_failure() {
    let rcpt = vec!["r@dst.test".to_string()];
    let attempts = ALL.iter().map(|&h| {
        let rcpt = rcpt.clone();
        async move {
            let server = start(vec![h]).await;
            let up = upstream_to(server.addr, Duration::from_secs(2));
            let msg = Outbound {
                mail_from: "app@src.test",
                rcpt_to: &rcpt,
                header: b"Subject: t\r\n\r\n",
                body: b"body\r\n",
            };
            let result = tokio::time::timeout(PATIENCE, up.send(msg))
                .await
                .unwrap_or_else(|_| panic!("{h:?}: the attempt never ended"));
            (h, result.map(|d| d.reply))
        }
    });
    for (h, result) in futures_join_all(attempts).await {
        let err = result.expect_err(&format!("{h:?} cannot succeed"));
        eprintln!("{h:?}: {err}");
        assert!(err.is_temporary(), "{h:?}: {err} must be temporary");
        match h {
            Hostility::EndlessMultilineDrip
            | Hostility::StallMidReply
            | Hostility::StallAfterData => {
                assert!(matches!(err, UpstreamError::Timeout { .. }), "{h:?}: {err}");
            }
            Hostility::GarbageGreeting
            | Hostility::GarbageAfterEhlo
            | Hostility::EndlessMultilineFast => {}
        }
    }
}

/// Runs futures concurrently (the attempts wait on timeouts; in sequence they would add up).
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

/// Through the relay: the copy meets garbage, an endless reply and a stall after DATA, is
/// deferred each time, and is delivered intact once the upstream behaves.
#[tokio::test]
async fn relay_defers_and_retries_until_a_hostile_upstream_behaves() {
    let server = start(vec![
        Hostility::GarbageAfterEhlo,
        Hostility::EndlessMultilineDrip,
        Hostility::StallAfterData,
    ])
    .await;
    let relay = InProcessRelay::start(&format!(
        r#"
[server]
hostname = "relay.test"
[spool]
dir = "{{dir}}/spool"
retry_initial = "1s"
retry_max = "1s"
upstream_cool_off = "1s"
[[upstream]]
name = "hostile"
host = "127.0.0.1"
port = {port}
tls = "none"
timeout = "1s"
"#,
        port = server.addr.port()
    ))
    .await;
    let msg = message(
        &["From: app@src.test", "To: r@dst.test", "Subject: keep"],
        "never lost\r\n",
    );
    let reply = lettre_send(relay.smtp, Some("app@src.test"), &["r@dst.test"], &msg)
        .await
        .unwrap();
    assert!(reply.starts_with("250"), "{reply}");

    let deadline = std::time::Instant::now() + PATIENCE * 2;
    loop {
        if !server.seen.lock().unwrap().messages.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not delivered after {} connections",
            server.seen.lock().unwrap().connections
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (rcpts, data) = server.seen.lock().unwrap().messages[0].clone();
    assert_eq!(rcpts, ["r@dst.test"]);
    assert!(data.ends_with(b"\r\n\r\nnever lost\r\n"), "{data:?}");
    assert!(server.seen.lock().unwrap().connections >= 4);
    let (_, metrics) = relay.http_get("/metrics").await;
    let series = |outcome: &str| {
        metric(
            &metrics,
            &format!(
                "mailveil_deliveries_total{{outcome=\"{outcome}\",provider=\"default\",upstream=\"hostile\"}}"
            ),
        )
        .unwrap_or(0.0)
    };
    assert!(series("deferred") >= 3.0, "{metrics}");
    assert_eq!(series("failed"), 0.0, "never failed permanently");
    assert_eq!(series("delivered"), 1.0);
    relay.stop().await.unwrap();
}
