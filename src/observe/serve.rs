//! Serving the metrics and admin HTTP listeners under limits, so that a client who can reach
//! the port cannot hold connections (and the file descriptors SMTP shares) for long.
//!
//! `axum::serve` has no knobs for this, so connections are served here with hyper's HTTP/1
//! server directly:
//! - **Connection cap** ([`HttpLimits::max_connections`]): a connection beyond it gets a `503`
//!   (when that can be written without waiting) and is closed at once, never queued.
//! - **Header timeout** ([`HttpLimits::header_timeout`]): the whole request head must arrive
//!   within it, one slow line at a time included. hyper starts the same clock when a kept-alive
//!   connection waits for its next request, so it is also the idle keep-alive timeout.
//! - **Write timeout** ([`HttpLimits::write_timeout`]): a response the client stops reading
//!   (pipelined requests, never read) ends the connection when it makes no progress for this
//!   long.
//! - **Size limits**: a request head over [`MAX_HEADER_BYTES`] gets `431`; a body announced
//!   over [`MAX_BODY_BYTES`] gets `413` (no endpoint reads one; admin POSTs are empty).
//!
//! Rejections are counted in `mailveil_http_rejections_total{listener,reason}` and open
//! connections in `mailveil_http_connections{listener}`.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Metrics;

/// Request head (request line and header fields) bytes at most; more gets `431`. Prometheus
/// and `mailveil ctl` send a few hundred bytes.
pub const MAX_HEADER_BYTES: usize = 8 << 10;
/// Request body bytes at most; a larger `Content-Length` gets `413`. No endpoint reads a body.
pub const MAX_BODY_BYTES: usize = 4 << 10;
/// hyper's read buffer per connection (its minimum is 8 KiB): bounds what pipelined requests
/// can make one connection hold in memory.
const READ_BUFFER_BYTES: usize = 16 << 10;
/// How long after shutdown starts open connections get to finish their request.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// The limits of one HTTP listener. Only `max_connections` is configurable
/// (`[metrics] max_connections`, `[admin] max_connections`, defaults in [`crate::config`]): the
/// timeouts are generous for any real client of these endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections open at once; more are refused at once.
    pub max_connections: usize,
    /// The whole request head must arrive within this, and a kept-alive connection may wait
    /// this long for its next request.
    pub header_timeout: Duration,
    /// A response that makes no progress for this long (the client stopped reading) ends its
    /// connection.
    pub write_timeout: Duration,
}

impl HttpLimits {
    pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
    pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

    /// The defaults with a connection cap of `max_connections`.
    pub fn with_max_connections(max_connections: usize) -> HttpLimits {
        HttpLimits {
            max_connections,
            header_timeout: Self::DEFAULT_HEADER_TIMEOUT,
            write_timeout: Self::DEFAULT_WRITE_TIMEOUT,
        }
    }
}

/// The `listener` label values of the HTTP metrics.
pub const HTTP_LISTENERS: [&str; 2] = ["metrics", "admin"];
/// The `reason` label values of `mailveil_http_rejections_total`.
pub const HTTP_REJECTION_REASONS: [&str; 3] =
    ["connection_limit", "header_timeout", "write_timeout"];

/// What the HTTP metrics of one listener are counted under.
#[derive(Clone)]
pub struct HttpCounters {
    pub metrics: Metrics,
    /// One of [`HTTP_LISTENERS`].
    pub listener: &'static str,
}

impl HttpCounters {
    fn rejected(&self, reason: &str) {
        self.metrics
            .http_rejections
            .with_label_values(&[self.listener, reason])
            .inc();
    }
}

/// Serves `app` on `listener` under `limits` until `shutdown` is cancelled; then stops
/// accepting, lets open connections finish their request (at most [`SHUTDOWN_WAIT`]) and
/// returns.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    counters: HttpCounters,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let app = app
        .layer(middleware::from_fn(refuse_large_bodies))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let tracker = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was accepted:
                    // wait a moment instead of spinning.
                    tracing::debug!(error = %e, listener = counters.listener, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            counters.rejected("connection_limit");
            refuse(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (app, counters, shutdown) = (app.clone(), counters.clone(), shutdown.clone());
        tracker.spawn(async move {
            let _slot = slot;
            let open = counters
                .metrics
                .http_connections
                .with_label_values(&[counters.listener]);
            open.inc();
            serve_connection(stream, app, limits, &counters, shutdown).await;
            open.dec();
        });
    }
    tracker.close();
    let _ = tokio::time::timeout(SHUTDOWN_WAIT, tracker.wait()).await;
    Ok(())
}

/// One connection, until the client closes it, a limit ends it or shutdown has let its request
/// finish.
async fn serve_connection(
    stream: TcpStream,
    app: Router,
    limits: HttpLimits,
    counters: &HttpCounters,
    shutdown: CancellationToken,
) {
    let io = TokioIo::new(WriteDeadline::new(stream, limits.write_timeout));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_header_size(MAX_HEADER_BYTES)
        .max_buf_size(READ_BUFFER_BYTES);
    let conn = builder.serve_connection(io, TowerToHyperService::new(app));
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.as_mut().await
        }
    };
    if let Err(e) = result {
        if e.is_timeout() {
            counters.rejected("header_timeout");
        } else if std::error::Error::source(&e)
            .and_then(|s| s.downcast_ref::<io::Error>())
            .is_some_and(|io| io.kind() == io::ErrorKind::TimedOut)
        {
            counters.rejected("write_timeout");
        }
    }
}

/// Closes a connection over the cap: a `503` if the socket takes it without waiting, then the
/// close. What the client already sent (a request head's worth at most, without waiting) is
/// read first, so the close is usually a FIN that lets the `503` arrive, not a reset that
/// discards it.
fn refuse(stream: TcpStream) {
    const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\
        Content-Type: text/plain\r\nContent-Length: 25\r\n\r\ntoo many open connections";
    let mut sink = [0u8; 1024];
    for _ in 0..MAX_HEADER_BYTES / sink.len() {
        if !matches!(stream.try_read(&mut sink), Ok(n) if n > 0) {
            break;
        }
    }
    let _ = stream.try_write(BUSY);
    drop(stream);
}

/// `413` for a body announced larger than [`MAX_BODY_BYTES`], before any handler runs.
async fn refuse_large_bodies(request: Request, next: Next) -> Response {
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return (StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n").into_response();
    }
    next.run(request).await
}

/// A stream whose writes fail with `TimedOut` once one has waited `limit` without the peer
/// taking a byte. Reads pass through (hyper's header timeout covers them).
struct WriteDeadline {
    inner: TcpStream,
    limit: Duration,
    /// Running while a write is pending; cleared by every write that makes progress.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl WriteDeadline {
    fn new(inner: TcpStream, limit: Duration) -> WriteDeadline {
        WriteDeadline {
            inner,
            limit,
            stalled: None,
        }
    }

    /// After the inner stream answered `Pending`: `TimedOut` once the stall lasted `limit`.
    fn check_stall<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let limit = self.limit;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "client stopped reading the response",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progressed<T>(
        &mut self,
        result: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        match result {
            Poll::Pending => self.check_stall(cx),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl AsyncRead for WriteDeadline {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteDeadline {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.progressed(result, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.progressed(result, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        self.progressed(result, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
