//! The bytes of one client session: the transport (TCP, or TLS over it), replies read through
//! smtp-proto's reply parser, commands gathered into one write, and the message dot-stuffed on
//! its way out.
//!
//! Replies are decoded lossily (smtp-proto turns bytes that are not UTF-8 into U+FFFD): a `550`
//! in Latin-1 or a server echoing raw bytes is classified by its code like any other reply, so a
//! permanent refusal is never mistaken for a broken connection and retried until it expires.
//!
//! Nothing here has a time limit of its own: the session (`mod.rs`) puts one around every step.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use smtp_proto::response::parser::ResponseReceiver;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::upstream::{Stage, UpstreamError};

/// Bytes read from the upstream at a time. The parser consumes everything it is given, so this
/// never has to hold more than one read.
const READ_CHUNK: usize = 8 << 10;

/// Bytes of stuffed message gathered before they are written: what a copy in flight costs in
/// memory on top of the message itself, whatever the message's size.
const WRITE_CHUNK: usize = 64 << 10;

/// A plain or TLS connection to the upstream.
pub(crate) enum Transport {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One reply of the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    pub code: u16,
    /// The enhanced status code (RFC 3463) when the reply carries one.
    esc: Option<[u8; 3]>,
    /// The text of every line without codes, lines joined by `\n`.
    message: String,
}

impl Reply {
    /// The reply as logs and shaping rules read it: the enhanced code, then every line's text
    /// joined by spaces (`5.7.1 Rejected by policy`).
    pub fn text(&self) -> String {
        let lines = self.message.split('\n').collect::<Vec<_>>().join(" ");
        match self.esc {
            Some([a, b, c]) => format!("{a}.{b}.{c} {lines}").trim_end().to_string(),
            None => lines,
        }
    }

    /// The lines after the first (EHLO keywords).
    pub fn extra_lines(&self) -> impl Iterator<Item = &str> {
        self.message.split('\n').skip(1)
    }

    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// A stand-in `334` that starts the exchange of AUTH LOGIN.
    pub fn continuation() -> Reply {
        Reply {
            code: 334,
            esc: None,
            message: String::new(),
        }
    }

    #[cfg(test)]
    pub fn for_test(code: u16, message: &str) -> Reply {
        Reply {
            code,
            esc: None,
            message: message.to_string(),
        }
    }
}

/// Why no reply could be read.
#[derive(Debug)]
pub(crate) enum WireError {
    Io(io::Error),
    /// The upstream closed the connection.
    Closed,
    /// Bytes that are not an SMTP reply (bad code, a reply over 4 KiB).
    Syntax(String),
}

impl WireError {
    /// The error as the session reports it at `stage`.
    pub fn at(self, stage: Stage) -> UpstreamError {
        match self {
            WireError::Io(e) => UpstreamError::Io {
                stage,
                text: e.to_string(),
            },
            WireError::Closed => UpstreamError::Protocol {
                stage,
                text: "the upstream closed the connection".into(),
            },
            WireError::Syntax(text) => UpstreamError::Protocol { stage, text },
        }
    }
}

impl From<io::Error> for WireError {
    fn from(e: io::Error) -> WireError {
        WireError::Io(e)
    }
}

/// The session's connection with its read buffer and the commands waiting to be written.
pub(crate) struct Wire {
    stream: Transport,
    input: Box<[u8]>,
    /// Unparsed input is `input[start..end]`.
    start: usize,
    end: usize,
    receiver: ResponseReceiver,
    out: Vec<u8>,
}

impl Wire {
    pub fn new(stream: Transport) -> Wire {
        Wire {
            stream,
            input: vec![0; READ_CHUNK].into_boxed_slice(),
            start: 0,
            end: 0,
            receiver: ResponseReceiver::default(),
            out: Vec::with_capacity(512),
        }
    }

    /// The next reply, waiting for the upstream as long as it takes.
    pub async fn reply(&mut self) -> Result<Reply, WireError> {
        loop {
            if self.start < self.end {
                let mut bytes = self.input[self.start..self.end].iter();
                let before = bytes.len();
                let parsed = self.receiver.parse(&mut bytes);
                self.start += before - bytes.len();
                match parsed {
                    Ok(r) => {
                        self.receiver.reset();
                        let esc = (r.esc[0] != 0).then_some(r.esc);
                        return Ok(Reply {
                            code: r.code,
                            esc,
                            message: r.message,
                        });
                    }
                    Err(smtp_proto::Error::NeedsMoreData { .. }) => {}
                    Err(e) => return Err(WireError::Syntax(format!("unreadable reply: {e:?}"))),
                }
            }
            if self.start == self.end {
                self.start = 0;
                self.end = 0;
            } else if self.end == self.input.len() {
                // The parser left bytes unconsumed (it does not today): keep them in front.
                self.input.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let n = self.stream.read(&mut self.input[self.end..]).await?;
            if n == 0 {
                return Err(WireError::Closed);
            }
            self.end += n;
        }
    }

    /// Whether the upstream sent bytes not read as a reply yet.
    pub fn has_unread_input(&self) -> bool {
        self.start < self.end
    }

    /// Adds a command to the next write.
    pub fn queue(&mut self, command: &[u8]) {
        self.out.extend_from_slice(command);
    }

    /// Writes every queued command at once.
    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.out.clear();
        }
        self.stream.flush().await
    }

    /// Queues and writes one command.
    pub async fn send(&mut self, command: &[u8]) -> io::Result<()> {
        self.queue(command);
        self.flush().await
    }

    /// Writes the message after a `354`: every line that starts with a dot gets another one
    /// (RFC 5321 4.5.2), then CRLF.CRLF. `parts` are sent back to back and must not end in CRLF
    /// (see `data_parts`): the end of data supplies it.
    pub async fn send_message(&mut self, parts: [&[u8]; 2]) -> io::Result<()> {
        let mut at_line_start = true;
        for part in parts {
            for chunk in part.chunks(WRITE_CHUNK) {
                stuff_into(&mut self.out, chunk, &mut at_line_start);
                if self.out.len() >= WRITE_CHUNK {
                    self.stream.write_all(&self.out).await?;
                    self.out.clear();
                }
            }
        }
        self.out.extend_from_slice(b"\r\n.\r\n");
        self.flush().await
    }

    /// The plain TCP connection back, for the TLS handshake after `STARTTLS` was accepted.
    /// Anything the upstream sent after its `220` is dropped with the buffer: it came before
    /// TLS and must not be read as a reply of the encrypted session (a response injection).
    pub fn into_plain(self) -> Option<TcpStream> {
        match self.stream {
            Transport::Plain(tcp) => Some(tcp),
            Transport::Tls(_) => None,
        }
    }
}

/// Appends `chunk` to `out` with a dot added before every dot that starts a line. A line starts
/// after LF (a bare LF too, as receivers count lines that way) and at the start of the message;
/// `at_line_start` carries that across chunks.
fn stuff_into(out: &mut Vec<u8>, chunk: &[u8], at_line_start: &mut bool) {
    let Some(&last) = chunk.last() else {
        return;
    };
    if *at_line_start && chunk[0] == b'.' {
        out.push(b'.');
    }
    let mut from = 0;
    for at in memchr::memmem::find_iter(chunk, b"\n.") {
        out.extend_from_slice(&chunk[from..=at]);
        out.push(b'.');
        from = at + 1;
    }
    out.extend_from_slice(&chunk[from..]);
    *at_line_start = last == b'\n';
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stuffed(chunks: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut at_line_start = true;
        for c in chunks {
            stuff_into(&mut out, c, &mut at_line_start);
        }
        out
    }

    #[test]
    fn dots_at_line_starts_are_doubled_across_chunk_boundaries() {
        assert_eq!(
            stuffed(&[b".a\r\n.b\r\nc.d\r\n..\r\n"]),
            b"..a\r\n..b\r\nc.d\r\n...\r\n"
        );
        assert_eq!(stuffed(&[b"a\r\n", b".b"]), b"a\r\n..b");
        assert_eq!(stuffed(&[b"a\r", b"\n.b"]), b"a\r\n..b");
        assert_eq!(stuffed(&[b"a", b".b"]), b"a.b");
        assert_eq!(stuffed(&[b"bare\n.lf"]), b"bare\n..lf");
        assert_eq!(stuffed(&[b"", b".x"]), b"..x");
    }

    #[test]
    fn stuffing_matches_a_line_by_line_reference() {
        // Every message of dots, CR, LF and letters up to 7 bytes, split at every point.
        let alphabet = [b'.', b'\r', b'\n', b'x'];
        for len in 0..=7u32 {
            for mut n in 0..4usize.pow(len) {
                let mut msg = Vec::new();
                for _ in 0..len {
                    msg.push(alphabet[n % 4]);
                    n /= 4;
                }
                let mut expected = Vec::new();
                let mut start = true;
                for &b in &msg {
                    if start && b == b'.' {
                        expected.push(b'.');
                    }
                    expected.push(b);
                    start = b == b'\n';
                }
                for cut in 0..=msg.len() {
                    let (a, b) = msg.split_at(cut);
                    assert_eq!(stuffed(&[a, b]), expected, "{msg:?} cut at {cut}");
                }
            }
        }
    }

    #[tokio::test]
    async fn replies_are_read_one_by_one_and_lossily() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(
                b"250-first\r\n250-SIZE 100\r\n250 PIPELINING\r\n550 5.1.1 caf\xe9 gone\r\n",
            )
            .await
            .unwrap();
            s.write_all(b"354 go ahead\r\n").await.unwrap();
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut wire = Wire::new(Transport::Plain(tcp));
        let ehlo = wire.reply().await.unwrap();
        assert_eq!(ehlo.code, 250);
        assert_eq!(
            ehlo.extra_lines().collect::<Vec<_>>(),
            ["SIZE 100", "PIPELINING"]
        );
        let refused = wire.reply().await.unwrap();
        assert_eq!(refused.code, 550);
        assert_eq!(refused.text(), "5.1.1 caf\u{fffd} gone");
        assert_eq!(wire.reply().await.unwrap().code, 354);
        server.await.unwrap();
        assert!(matches!(wire.reply().await, Err(WireError::Closed)));
    }
}
