//! The SMTP client's pipelining (RFC 2920) against hand-driven peers on 127.0.0.1: each peer
//! below answers only when the client behaved as the RFC says, so a client that waits where it
//! should pipeline (or pipelines where it must wait, or sends data it must not) fails here.

use std::time::Duration;

use mailveil::config::{SmtpUpstreamConfig, UpstreamConfig, UpstreamKind, UpstreamTls};
use mailveil::upstream::{Outbound, Stage, Upstream, UpstreamError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const TIMEOUT: Duration = Duration::from_secs(5);

fn upstream(port: u16) -> Upstream {
    let config = UpstreamConfig {
        name: "peer".into(),
        limits: Default::default(),
        kind: UpstreamKind::Smtp(SmtpUpstreamConfig {
            local: false,
            host: "127.0.0.1".into(),
            port,
            tls: UpstreamTls::None,
            ca_file: None,
            credentials: None,
            max_connections: 1,
            timeout: TIMEOUT,
        }),
    };
    Upstream::from_config(&config, "relay.test").expect("upstream config")
}

async fn send(up: &Upstream, to: &[&str], body: &[u8]) -> Result<String, UpstreamError> {
    let to: Vec<String> = to.iter().map(|s| s.to_string()).collect();
    let msg = Outbound {
        mail_from: "s@example.com",
        rcpt_to: &to,
        header: b"Subject: t\r\n\r\n",
        body,
    };
    tokio::time::timeout(TIMEOUT * 3, up.send(msg))
        .await
        .expect("send ends within its timeouts")
        .map(|d| d.reply)
}

/// One accepted connection, read line by line with a record of how the bytes arrived.
struct Peer {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Peer {
    async fn accept(listener: &TcpListener) -> Peer {
        let (stream, _) = listener.accept().await.unwrap();
        Peer {
            stream,
            buf: Vec::new(),
        }
    }

    async fn say(&mut self, reply: &str) {
        self.stream.write_all(reply.as_bytes()).await.unwrap();
    }

    /// Reads until `n` complete lines are buffered and returns them. Panics after TIMEOUT:
    /// the client did not send them without waiting for a reply.
    async fn lines(&mut self, n: usize) -> Vec<String> {
        let read = async {
            loop {
                let complete = self.buf.iter().filter(|&&b| b == b'\n').count();
                if complete >= n {
                    break;
                }
                let mut chunk = [0u8; 4096];
                let got = self.stream.read(&mut chunk).await.unwrap();
                assert!(got > 0, "the client closed; had {:?}", self.text());
                self.buf.extend_from_slice(&chunk[..got]);
            }
        };
        tokio::time::timeout(TIMEOUT, read)
            .await
            .unwrap_or_else(|_| panic!("wanted {n} lines without replying, got {:?}", self.text()));
        let mut lines = Vec::new();
        for _ in 0..n {
            let at = self.buf.iter().position(|&b| b == b'\n').unwrap();
            let line: Vec<u8> = self.buf.drain(..=at).collect();
            lines.push(String::from_utf8_lossy(&line).trim_end().to_string());
        }
        lines
    }

    /// The message up to and including CRLF.CRLF.
    async fn data(&mut self) -> Vec<u8> {
        let read = async {
            while !self.buf.windows(5).any(|w| w == b"\r\n.\r\n") {
                let mut chunk = [0u8; 4096];
                let got = self.stream.read(&mut chunk).await.unwrap();
                assert!(got > 0, "the client closed in the data");
                self.buf.extend_from_slice(&chunk[..got]);
            }
        };
        tokio::time::timeout(TIMEOUT, read)
            .await
            .expect("data ends");
        let end = self.buf.windows(5).position(|w| w == b"\r\n.\r\n").unwrap() + 5;
        self.buf.drain(..end).collect()
    }

    /// Everything until the client closes (panics after TIMEOUT).
    async fn rest(&mut self) -> Vec<u8> {
        let read = async {
            loop {
                let mut chunk = [0u8; 4096];
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(got) => self.buf.extend_from_slice(&chunk[..got]),
                }
            }
        };
        tokio::time::timeout(TIMEOUT, read)
            .await
            .expect("the client closes");
        std::mem::take(&mut self.buf)
    }

    /// Nothing more arrived within `wait` (the client waits for a reply).
    async fn quiet_for(&mut self, wait: Duration) -> bool {
        let mut chunk = [0u8; 64];
        match tokio::time::timeout(wait, self.stream.read(&mut chunk)).await {
            Err(_) => self.buf.is_empty(),
            Ok(Ok(got)) => {
                self.buf.extend_from_slice(&chunk[..got]);
                false
            }
            Ok(Err(_)) => false,
        }
    }

    /// Reads whatever arrives until the client has been silent for `quiet`.
    async fn drain_for(&mut self, quiet: Duration) {
        let mut chunk = [0u8; 4096];
        while let Ok(Ok(got)) = tokio::time::timeout(quiet, self.stream.read(&mut chunk)).await {
            if got == 0 {
                break;
            }
            self.buf.extend_from_slice(&chunk[..got]);
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf).into_owned()
    }

    /// Greeting and EHLO, offering `keywords`.
    async fn hello(&mut self, keywords: &[&str]) {
        self.say("220 peer.test ESMTP\r\n").await;
        let ehlo = self.lines(1).await;
        assert!(ehlo[0].starts_with("EHLO relay.test"), "{ehlo:?}");
        let mut reply = String::from("250-peer.test\r\n");
        for k in keywords {
            reply.push_str(&format!("250-{k}\r\n"));
        }
        reply.push_str("250 8BITMIME\r\n");
        self.say(&reply).await;
    }
}

async fn listen() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}

async fn finish<T>(peer: JoinHandle<T>) -> T {
    tokio::time::timeout(TIMEOUT * 3, peer)
        .await
        .expect("the peer finishes")
        .expect("the peer's checks pass")
}

#[tokio::test]
async fn envelope_goes_in_one_write_when_pipelining_is_offered() {
    let (listener, port) = listen().await;
    let peer = tokio::spawn(async move {
        let mut p = Peer::accept(&listener).await;
        p.hello(&["PIPELINING", "SIZE 1000000"]).await;
        // No reply before all four commands are in: a waiting client times out here.
        let envelope = p.lines(4).await;
        p.say("250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.1.5 ok\r\n354 go\r\n")
            .await;
        let data = p.data().await;
        p.say("250 2.0.0 queued as P1\r\n").await;
        (envelope, data)
    });
    let up = upstream(port);
    let reply = send(&up, &["a@x.test", "b@y.test"], b".dot\r\nbody\r\n")
        .await
        .unwrap();
    assert_eq!(reply, "250 2.0.0 queued as P1");
    let (envelope, data) = finish(peer).await;
    assert!(
        envelope[0].starts_with("MAIL FROM:<s@example.com>") && envelope[0].contains(" SIZE="),
        "{envelope:?}"
    );
    assert_eq!(
        &envelope[1..],
        ["RCPT TO:<a@x.test>", "RCPT TO:<b@y.test>", "DATA"]
    );
    assert_eq!(data, b"Subject: t\r\n\r\n..dot\r\nbody\r\n.\r\n");
}

#[tokio::test]
async fn without_pipelining_each_command_waits_for_its_reply() {
    let (listener, port) = listen().await;
    let peer = tokio::spawn(async move {
        let mut p = Peer::accept(&listener).await;
        p.hello(&[]).await;
        let mut seen = Vec::new();
        for reply in ["250 2.1.0 ok\r\n", "250 2.1.5 ok\r\n", "354 go\r\n"] {
            seen.extend(p.lines(1).await);
            assert!(
                p.quiet_for(Duration::from_millis(200)).await,
                "a command came before the reply to {seen:?}: {:?}",
                p.text()
            );
            p.say(reply).await;
        }
        p.data().await;
        p.say("250 2.0.0 done\r\n").await;
        seen
    });
    let up = upstream(port);
    send(&up, &["a@x.test"], b"x\r\n").await.unwrap();
    let seen = finish(peer).await;
    assert_eq!(seen[1..], ["RCPT TO:<a@x.test>", "DATA"]);
}

/// DATA was pipelined after a RCPT the peer refused, and the peer (as RFC 2920 allows) said 354
/// for the recipient it accepted. A lone dot would deliver an empty message to that one, so
/// the client must drop the connection without sending anything more.
#[tokio::test]
async fn refused_recipient_among_accepted_cuts_the_transaction_off() {
    let (listener, port) = listen().await;
    let peer = tokio::spawn(async move {
        let mut p = Peer::accept(&listener).await;
        p.hello(&["PIPELINING"]).await;
        p.lines(4).await;
        p.say("250 ok\r\n250 ok\r\n550 5.1.1 no such user\r\n354 go\r\n")
            .await;
        p.rest().await
    });
    let up = upstream(port);
    let err = send(&up, &["a@x.test", "b@y.test"], b"secret body\r\n")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            UpstreamError::Rejected {
                stage: Stage::RcptTo,
                code: 550,
                ..
            }
        ),
        "{err}"
    );
    assert!(!err.is_temporary());
    let after = finish(peer).await;
    assert!(
        !String::from_utf8_lossy(&after).contains("secret") && !after.starts_with(b"."),
        "nothing may follow the 354: {:?}",
        String::from_utf8_lossy(&after)
    );
    assert_eq!(
        up.idle_connections(),
        0,
        "the cut-off connection is not pooled"
    );
}

/// The peer refused the only recipient and still said 354: the lone dot of RFC 2920 3.1 ends
/// the (empty) transaction, and the connection stays usable.
#[tokio::test]
async fn lone_dot_ends_a_transaction_nobody_was_accepted_for() {
    let (listener, port) = listen().await;
    let peer = tokio::spawn(async move {
        let mut p = Peer::accept(&listener).await;
        p.hello(&["PIPELINING"]).await;
        p.lines(3).await;
        p.say("250 ok\r\n550 5.1.1 unknown\r\n354 go\r\n").await;
        let dot = p.lines(1).await;
        p.say("554 5.5.1 no valid recipients\r\n").await;
        let rset = p.lines(1).await;
        p.say("250 2.0.0 reset\r\n").await;
        // The same connection carries the next copy.
        let next = p.lines(3).await;
        p.say("250 ok\r\n250 ok\r\n354 go\r\n").await;
        p.data().await;
        p.say("250 2.0.0 second\r\n").await;
        (dot, rset, next)
    });
    let up = upstream(port);
    let err = send(&up, &["gone@x.test"], b"x\r\n").await.unwrap_err();
    assert_eq!(err.code(), Some(550), "{err}");
    assert_eq!(
        send(&up, &["a@x.test"], b"y\r\n").await.unwrap(),
        "250 2.0.0 second"
    );
    let (dot, rset, next) = finish(peer).await;
    assert_eq!(dot, ["."]);
    assert_eq!(rset, ["RSET"]);
    assert_eq!(next[1..], ["RCPT TO:<a@x.test>", "DATA"]);
}

/// A 421 to MAIL in a pipelined group: the peer is closing, no further reply will come; the
/// client reports the 421 (temporary) instead of waiting for the RCPT and DATA replies.
#[tokio::test]
async fn a_421_in_the_pipelined_group_ends_the_session() {
    let (listener, port) = listen().await;
    let peer = tokio::spawn(async move {
        let mut p = Peer::accept(&listener).await;
        p.hello(&["PIPELINING"]).await;
        p.lines(3).await;
        p.say("421 4.3.2 shutting down\r\n").await;
        // Keep the connection open: the client must not wait for more replies.
        p.rest().await
    });
    let up = upstream(port);
    let err = send(&up, &["a@x.test"], b"x\r\n").await.unwrap_err();
    assert_eq!(err.code(), Some(421), "{err}");
    assert!(err.is_temporary());
    finish(peer).await;
}

/// A long envelope goes out in bounded groups, each read before the next is written, so the
/// peer's replies can never fill the socket buffers while the client is still writing.
#[tokio::test]
async fn long_envelopes_are_pipelined_in_groups() {
    let (listener, port) = listen().await;
    let recipients: Vec<String> = (0..250).map(|i| format!("r{i}@x.test")).collect();
    let peer = tokio::spawn(async move {
        let mut p = Peer::accept(&listener).await;
        p.hello(&["PIPELINING"]).await;
        let mut groups = Vec::new();
        let mut left = 252; // MAIL, 250 RCPT, DATA
        while left > 0 {
            // Wait for a group to arrive whole, then check nothing more comes until it is answered.
            let mut group = p.lines(1).await;
            p.drain_for(Duration::from_millis(200)).await;
            let buffered = p.buf.iter().filter(|&&b| b == b'\n').count();
            group.extend(p.lines(buffered).await);
            let replies: String = group
                .iter()
                .map(|c| {
                    if c == "DATA" {
                        "354 go\r\n"
                    } else {
                        "250 ok\r\n"
                    }
                })
                .collect();
            left -= group.len();
            groups.push(group.len());
            p.say(&replies).await;
        }
        p.data().await;
        p.say("250 2.0.0 all\r\n").await;
        groups
    });
    let up = upstream(port);
    let to: Vec<&str> = recipients.iter().map(String::as_str).collect();
    send(&up, &to, b"x\r\n").await.unwrap();
    let groups = finish(peer).await;
    assert!(groups.len() >= 3, "{groups:?}");
    assert!(groups.iter().all(|&n| n <= 100), "{groups:?}");
    assert_eq!(groups.iter().sum::<usize>(), 252);
}
