//! The one raw SMTP client of the tests, for conversations that need exact bytes on the wire:
//! [`reply_of`] reads one complete (possibly multi-line) reply from any stream, plain or TLS,
//! one byte at a time so nothing past the reply is consumed (a STARTTLS handshake can follow);
//! [`RawSmtp`] is a plain-TCP session built on it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::PATIENCE;

/// One complete SMTP reply (all lines); empty when the server closed first. `None` when it
/// did not complete within `limit`.
pub async fn reply_within<S: AsyncRead + Unpin>(s: &mut S, limit: Duration) -> Option<String> {
    let read = async {
        let mut all = Vec::new();
        let mut line = Vec::new();
        loop {
            let mut b = [0u8; 1];
            match s.read(&mut b).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            line.push(b[0]);
            if b[0] == b'\n' {
                all.extend_from_slice(&line);
                let last = line.len() < 4 || line[3] != b'-';
                line.clear();
                if last {
                    break;
                }
            }
        }
        String::from_utf8_lossy(&all).into_owned()
    };
    tokio::time::timeout(limit, read).await.ok()
}

/// One complete SMTP reply; empty when the server closed. Waiting past [`PATIENCE`] fails.
pub async fn reply_of<S: AsyncRead + Unpin>(s: &mut S) -> String {
    reply_within(s, PATIENCE)
        .await
        .expect("reply within patience")
}

/// Sends one command line (CRLF added) and returns the reply.
pub async fn cmd_of<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, line: &str) -> String {
    s.write_all(format!("{line}\r\n").as_bytes()).await.unwrap();
    reply_of(s).await
}

/// The command `AUTH PLAIN <base64 of NUL user NUL password>` (RFC 4616), without CRLF.
pub fn auth_plain(user: &str, password: &str) -> String {
    use base64::Engine;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
    format!("AUTH PLAIN {token}")
}

/// A raw SMTP conversation over plain TCP.
pub struct RawSmtp {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl RawSmtp {
    /// Connects and returns the greeting reply.
    pub async fn connect(addr: SocketAddr) -> (RawSmtp, String) {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (r, w) = stream.into_split();
        let mut s = RawSmtp {
            reader: BufReader::new(r),
            writer: w,
        };
        let greeting = s.reply().await;
        (s, greeting)
    }

    /// Connects from `source` (any 127.0.0.0/8 address: how a test plays a client network)
    /// and returns the greeting reply.
    pub async fn connect_from(addr: SocketAddr, source: std::net::IpAddr) -> (RawSmtp, String) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(source, 0)).unwrap();
        let stream = socket.connect(addr).await.unwrap();
        let (r, w) = stream.into_split();
        let mut s = RawSmtp {
            reader: BufReader::new(r),
            writer: w,
        };
        let greeting = s.reply().await;
        (s, greeting)
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.unwrap();
    }

    /// One complete (possibly multi-line) reply; empty string when the server closed.
    pub async fn reply(&mut self) -> String {
        reply_of(&mut self.reader).await
    }

    /// Sends a command line and returns the reply.
    pub async fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }
}
