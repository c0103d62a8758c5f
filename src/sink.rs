//! `mailveil sink`: a capture SMTP server (an upstream stand-in for development and tests).
//!
//! Each message received is stored through [`crate::capture`] as `DIR/<id>.eml` plus
//! `DIR/<id>.json`, and only then answered with `250`, so a client that saw `250` finds the
//! files. Optional STARTTLS with a certificate and key lets tests run a real TLS upstream with a
//! private CA.
//!
//! Built on `mailin-embedded` (blocking, a thread per session), which is simple and good enough
//! for a capture tool. Its limits, accepted here:
//! - `MAIL FROM:<>` (the null sender) is refused with a syntax error; use a scripted server or
//!   the `dir` upstream to capture bounces.
//! - No SIZE, PIPELINING, SMTPUTF8, ENHANCEDSTATUSCODES or DSN; 8BITMIME and STARTTLS only.
//!   MAIL/RCPT parameters other than `BODY=` are not understood.
//! - At most [`SESSIONS`] simultaneous sessions (threads are started up front); more connections
//!   wait in the accept queue. Idle sessions time out after five minutes.
//! - Lines are taken as they come (a bare LF ends a line for it), dot-unstuffed, and stored as
//!   received; a message larger than [`MAX_MESSAGE_BYTES`] gets `552`.
//! - No AUTH, no shutdown: it runs until the process ends.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;

use mailin_embedded::{Handler, Response, Server, SslConfig, response};

/// Simultaneous sessions the sink serves; above the `max_connections` of any upstream that
/// points at it, since pooled idle connections keep their session (and thread) busy.
pub const SESSIONS: u32 = 128;

/// Largest message kept in memory and captured.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Certificate chain and private key (PEM files) offered with STARTTLS.
#[derive(Debug, Clone)]
pub struct SinkTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Why the sink could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("capture directory {dir}: {source}")]
    Dir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS certificate or key: {0}")]
    Tls(String),
    #[error("SMTP server stopped: {0}")]
    Server(String),
}

impl SinkError {
    /// True when starting again later may work (address in use, disk trouble); false when the
    /// invocation itself must change (bad certificate or key).
    pub fn is_temporary(&self) -> bool {
        match self {
            SinkError::Listen { .. } => true,
            SinkError::Dir { .. } => true,
            SinkError::Tls(_) => false,
            SinkError::Server(_) => true,
        }
    }
}

/// `mailveil sink --listen ADDR --dir DIR`: binds `listen` and serves forever.
pub fn run(listen: SocketAddr, dir: PathBuf, tls: Option<SinkTls>) -> Result<(), SinkError> {
    let listener = TcpListener::bind(listen).map_err(|source| SinkError::Listen {
        addr: listen,
        source,
    })?;
    run_on(listener, dir, tls)
}

/// Serves forever on an already bound listener, so tests can bind `127.0.0.1:0` and know the
/// port before the sink starts.
pub fn run_on(listener: TcpListener, dir: PathBuf, tls: Option<SinkTls>) -> Result<(), SinkError> {
    let addr = listener
        .local_addr()
        .map_err(|e| SinkError::Server(e.to_string()))?;
    crate::private_files::tighten_dir(&dir).map_err(|source| SinkError::Dir {
        dir: dir.clone(),
        source,
    })?;
    let mut server = Server::new(CaptureHandler::new(dir.clone()));
    server
        .with_name("mailveil-sink")
        .with_num_threads(SESSIONS)
        .with_tcp_listener(listener);
    if let Some(tls) = tls {
        server
            .with_ssl(SslConfig::SelfSigned {
                cert_path: tls.cert.display().to_string(),
                key_path: tls.key.display().to_string(),
            })
            .map_err(|e| SinkError::Tls(e.to_string()))?;
    }
    eprintln!("sink listening on {addr}, writing to {}", dir.display());
    server.serve().map_err(|e| SinkError::Server(e.to_string()))
}

/// Per-session state (mailin clones the handler for each connection): the transaction being
/// received.
#[derive(Clone)]
struct CaptureHandler {
    dir: Arc<PathBuf>,
    mail_from: String,
    rcpt_to: Vec<String>,
    data: Vec<u8>,
    too_big: bool,
}

impl CaptureHandler {
    fn new(dir: PathBuf) -> CaptureHandler {
        CaptureHandler {
            dir: Arc::new(dir),
            mail_from: String::new(),
            rcpt_to: Vec::new(),
            data: Vec::new(),
            too_big: false,
        }
    }
}

impl Handler for CaptureHandler {
    fn data_start(&mut self, _domain: &str, from: &str, _is8bit: bool, to: &[String]) -> Response {
        self.mail_from = from.to_string();
        self.rcpt_to = to.to_vec();
        self.data.clear();
        self.too_big = false;
        response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if self.data.len() + buf.len() > MAX_MESSAGE_BYTES {
            self.too_big = true;
            self.data = Vec::new();
        }
        if !self.too_big {
            self.data.extend_from_slice(buf);
        }
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        let data = std::mem::take(&mut self.data);
        if self.too_big {
            return response::NO_STORAGE;
        }
        match crate::capture::write(&self.dir, &self.mail_from, &self.rcpt_to, &[&data]) {
            Ok(id) => Response::custom(250, format!("2.0.0 Ok: captured as {id}")),
            Err(e) => {
                eprintln!("sink: cannot capture message: {e}");
                response::INTERNAL_ERROR
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    /// Sends one command and returns the (last line of the) reply.
    fn exchange(reader: &mut BufReader<TcpStream>, line: &[u8]) -> String {
        reader.get_mut().write_all(line).unwrap();
        read_reply(reader)
    }

    fn read_reply(reader: &mut BufReader<TcpStream>) -> String {
        loop {
            let mut reply = String::new();
            reader.read_line(&mut reply).unwrap();
            if reply.len() < 4 || reply.as_bytes()[3] != b'-' {
                return reply;
            }
        }
    }

    #[test]
    fn captures_a_plain_session() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("sink");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let sink_dir = dir.clone();
        std::thread::spawn(move || run_on(listener, sink_dir, None));

        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut c = BufReader::new(stream);
        assert!(read_reply(&mut c).starts_with("220"));
        assert!(exchange(&mut c, b"EHLO client.test\r\n").starts_with("250"));
        assert!(exchange(&mut c, b"MAIL FROM:<s@example.com>\r\n").starts_with("250"));
        assert!(exchange(&mut c, b"RCPT TO:<a@example.com>\r\n").starts_with("250"));
        assert!(exchange(&mut c, b"RCPT TO:<b@example.com>\r\n").starts_with("250"));
        assert!(exchange(&mut c, b"DATA\r\n").starts_with("354"));
        let reply = exchange(&mut c, b"Subject: t\r\n\r\n..dot\r\nend\r\n.\r\n");
        assert!(reply.starts_with("250"), "{reply}");
        // A second transaction on the same session.
        assert!(exchange(&mut c, b"MAIL FROM:<s2@example.com>\r\n").starts_with("250"));
        assert!(exchange(&mut c, b"RCPT TO:<c@example.com>\r\n").starts_with("250"));
        assert!(exchange(&mut c, b"DATA\r\n").starts_with("354"));
        assert!(exchange(&mut c, b"X: y\r\n\r\nz\r\n.\r\n").starts_with("250"));

        let all = crate::capture::read_all(&dir).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].mail_from, "s@example.com");
        assert_eq!(all[0].rcpt_to, vec!["a@example.com", "b@example.com"]);
        assert_eq!(all[0].bytes, b"Subject: t\r\n\r\n.dot\r\nend\r\n");
        assert!(reply.contains(&all[0].id), "the 250 names the capture id");
        assert_eq!(all[1].rcpt_to, vec!["c@example.com"]);
    }

    #[test]
    fn bad_tls_files_are_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let err = run_on(
            listener,
            tmp.path().to_path_buf(),
            Some(SinkTls {
                cert: tmp.path().join("missing-cert.pem"),
                key: tmp.path().join("missing-key.pem"),
            }),
        )
        .unwrap_err();
        assert!(matches!(err, SinkError::Tls(_)), "{err}");
        assert!(!err.is_temporary());
    }
}
