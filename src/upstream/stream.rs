//! The streams lettre talks to an upstream through.
//!
//! [`ReplyStream`]: lettre reads replies with `read_line` into a `String`, so a reply whose text
//! is not UTF-8 (a `550` in Latin-1, a server echoing raw bytes) fails as an I/O error: the
//! code is lost, a permanent refusal turns into retries until `max_queue_time`, the upstream is
//! marked down, and a `250` after DATA would be taken for a failure and sent again. Below
//! lettre, this stream replaces every byte sequence that is not UTF-8 with U+FFFD, so lettre
//! always parses the reply and its class comes from the code alone. It sits on top of TLS:
//! for STARTTLS we perform the upgrade ourselves ([`Detachable`]) instead of letting lettre
//! wrap the socket.
//!
//! [`Detachable`]: the plaintext part of a STARTTLS session runs through lettre on a socket we
//! can take back once the upstream said `220` to STARTTLS; lettre's connection, with anything
//! it read past that reply (a response injection), is dropped, and a new one speaks over TLS.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use lettre::transport::smtp::client::AsyncTokioStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// U+FFFD REPLACEMENT CHARACTER, in UTF-8.
const REPLACEMENT: &[u8] = "\u{fffd}".as_bytes();

/// Bytes read from the upstream at a time.
const READ_CHUNK: usize = 4096;

/// See the module doc. Writes pass through unchanged.
pub(crate) struct ReplyStream<S> {
    inner: S,
    /// Decoded bytes not yet handed to the reader, from `out_at` on.
    out: Vec<u8>,
    out_at: usize,
    /// The start of a UTF-8 sequence cut off by the end of the last read (at most 3 bytes).
    partial: Vec<u8>,
    scratch: Box<[u8]>,
}

impl<S> ReplyStream<S> {
    pub fn new(inner: S) -> ReplyStream<S> {
        ReplyStream::replaying(b"", inner)
    }

    /// A stream that first yields `already` (a reply lettre must read again, e.g. the greeting
    /// of a session whose TLS we set up), then what `inner` sends.
    pub fn replaying(already: &[u8], inner: S) -> ReplyStream<S> {
        let mut out = Vec::new();
        decode_into(&mut Vec::new(), already, &mut out);
        ReplyStream {
            inner,
            out,
            out_at: 0,
            partial: Vec::new(),
            scratch: vec![0; READ_CHUNK].into_boxed_slice(),
        }
    }
}

/// Appends `read` (after `partial`, the cut-off start of a sequence from the read before) to
/// `out` with every ill-formed sequence replaced by U+FFFD, as `String::from_utf8_lossy` does;
/// a sequence cut off by the end of `read` is kept in `partial` for the next read.
fn decode_into(partial: &mut Vec<u8>, read: &[u8], out: &mut Vec<u8>) {
    let mut data = std::mem::take(partial);
    data.extend_from_slice(read);
    let mut rest = data.as_slice();
    loop {
        match std::str::from_utf8(rest) {
            Ok(valid) => {
                out.extend_from_slice(valid.as_bytes());
                return;
            }
            Err(e) => {
                let (valid, after) = rest.split_at(e.valid_up_to());
                out.extend_from_slice(valid);
                match e.error_len() {
                    Some(bad) => {
                        out.extend_from_slice(REPLACEMENT);
                        rest = &after[bad..];
                    }
                    None => {
                        partial.extend_from_slice(after);
                        return;
                    }
                }
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReplyStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.out_at < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_at);
                buf.put_slice(&this.out[this.out_at..this.out_at + n]);
                this.out_at += n;
                if this.out_at == this.out.len() {
                    this.out.clear();
                    this.out_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            let mut read = ReadBuf::new(&mut this.scratch);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                if this.partial.is_empty() {
                    return Poll::Ready(Ok(())); // end of stream
                }
                // The stream ended inside a sequence.
                this.partial.clear();
                this.out.extend_from_slice(REPLACEMENT);
                continue;
            }
            decode_into(&mut this.partial, read.filled(), &mut this.out);
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReplyStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: fmt::Debug> fmt::Debug for ReplyStream<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ReplyStream").field(&self.inner).finish()
    }
}

impl<S: AsyncTokioStream> AsyncTokioStream for ReplyStream<S> {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.peer_addr()
    }
}

/// A TCP stream lent to lettre for the plaintext part of a STARTTLS session; see the module
/// doc. Once [`Detachable::take`] has it back, the lettre side fails every call.
#[derive(Clone)]
pub(crate) struct Detachable(Arc<Mutex<Option<TcpStream>>>);

impl Detachable {
    pub fn new(tcp: TcpStream) -> Detachable {
        Detachable(Arc::new(Mutex::new(Some(tcp))))
    }

    /// The socket, for the TLS handshake; `None` if already taken.
    pub fn take(&self) -> Option<TcpStream> {
        self.0.lock().expect("not poisoned").take()
    }

    fn with<T>(
        &self,
        f: impl FnOnce(Pin<&mut TcpStream>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match self.0.lock().expect("not poisoned").as_mut() {
            Some(tcp) => f(Pin::new(tcp)),
            None => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the connection was handed over to TLS",
            ))),
        }
    }
}

impl AsyncRead for Detachable {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.with(|tcp| tcp.poll_read(cx, buf))
    }
}

impl AsyncWrite for Detachable {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.with(|tcp| tcp.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with(|tcp| tcp.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with(|tcp| tcp.poll_shutdown(cx))
    }
}

impl fmt::Debug for Detachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Detachable")
    }
}

impl AsyncTokioStream for Detachable {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        match self.0.lock().expect("not poisoned").as_ref() {
            Some(tcp) => tcp.peer_addr(),
            None => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the connection was handed over to TLS",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A reader that hands out the given chunks one read at a time.
    struct Chunks(std::collections::VecDeque<Vec<u8>>);

    impl AsyncRead for Chunks {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if let Some(chunk) = self.0.pop_front() {
                buf.put_slice(&chunk);
            }
            Poll::Ready(Ok(()))
        }
    }

    async fn through(chunks: &[&[u8]]) -> String {
        let chunks = Chunks(chunks.iter().map(|c| c.to_vec()).collect());
        let mut stream = ReplyStream::new(chunks);
        let mut out = Vec::new();
        stream.read_to_end(&mut out).await.unwrap();
        String::from_utf8(out).expect("always UTF-8")
    }

    #[tokio::test]
    async fn invalid_bytes_become_replacement_characters() {
        assert_eq!(
            through(&[b"550 5.1.1 <bytes \xff\xfe>\r\n"]).await,
            "550 5.1.1 <bytes \u{fffd}\u{fffd}>\r\n"
        );
        // Latin-1 text, a truncated sequence, an overlong encoding.
        assert_eq!(
            through(&[b"451 M\xfcller \xe2\x82 x \xc0\xaf\r\n"]).await,
            "451 M\u{fffd}ller \u{fffd} x \u{fffd}\u{fffd}\r\n"
        );
    }

    #[tokio::test]
    async fn valid_text_passes_even_when_a_read_cuts_a_character() {
        let text = "250 2.0.0 übernommen € 😀\r\n".as_bytes();
        for cut in 1..text.len() {
            assert_eq!(
                through(&[&text[..cut], &text[cut..]]).await,
                "250 2.0.0 übernommen € 😀\r\n",
                "cut at {cut}"
            );
        }
        // One byte per read.
        let bytes: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(through(&bytes).await, "250 2.0.0 übernommen € 😀\r\n");
    }

    #[tokio::test]
    async fn a_sequence_cut_by_the_end_of_the_stream_is_replaced() {
        assert_eq!(through(&[b"421 bye \xe2\x82"]).await, "421 bye \u{fffd}");
    }

    #[tokio::test]
    async fn a_replayed_reply_comes_first() {
        let mut stream =
            ReplyStream::replaying(b"220 ready\r\n", Chunks([b"250 ok\r\n".to_vec()].into()));
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "220 ready\r\n250 ok\r\n");
    }
}
