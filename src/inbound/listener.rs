//! The accept loop (admission, one tracked task per session, graceful shutdown) and the
//! per-connection driver that runs a session from greeting to close.
//!
//! A connection that gets no slot (`admission.rs`: full, outsiders' slots taken, too many from
//! its address, banned from AUTH) is told `421` and closed at once rather than queued in the
//! kernel backlog: backpressure the client can see and retry on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;

use super::Acceptor;
use super::admission::{Refusal, Ticket};
use super::live::LiveInbound;
use super::replies::Fixed;
use super::session::{Context, Flow, Session, Stream};

/// Longest we spend telling a refused client that we are full.
const REFUSAL_WRITE_LIMIT: Duration = Duration::from_secs(5);
/// Pause after an accept error (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Accepts until shutdown. With `live`, every accepted connection gets the settings snapshot
/// current at that moment (a reload takes effect for new sessions; open ones keep theirs), and
/// the admission limits of that snapshot: a lowered cap refuses new connections until enough
/// open ones end (their slots are not revoked).
pub(super) async fn run<A: Acceptor>(
    listener: TcpListener,
    mut ctx: Arc<Context<A>>,
    live: Option<LiveInbound>,
) -> std::io::Result<()> {
    let sessions = TaskTracker::new();
    let mut current = live.as_ref().map(LiveInbound::snapshot);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = ctx.shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "inbound accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        if let (Some(live), Some(seen)) = (&live, &mut current) {
            let now = live.snapshot();
            if !Arc::ptr_eq(&now, seen) {
                ctx = Arc::new(ctx.with_snapshot(&now));
                ctx.admission.configure(&now.settings);
                ctx.data_budget
                    .set_limit(now.settings.server.max_data_memory);
                ctx.metrics
                    .data_memory_max_bytes
                    .set(now.settings.server.max_data_memory as i64);
                *seen = now;
            }
        }
        match ctx.admission.admit(peer.ip(), &ctx.settings) {
            Ok(ticket) => {
                let ctx = ctx.clone();
                sessions.spawn(connection(stream, peer, ctx, ticket));
            }
            Err(refusal) => {
                let reason = refusal.rejection().reason();
                ctx.metrics
                    .inbound_rejections
                    .with_label_values(&[reason])
                    .inc();
                match refusal {
                    // Capacity: worth an operator's attention.
                    Refusal::Full => {
                        tracing::info!(peer = %peer, "inbound connection refused: too many connections")
                    }
                    // Driven by outsiders (one line per connection of a flood would flood the
                    // log); counted in the metric, and a ban is logged once when it starts.
                    Refusal::OutsidersFull | Refusal::SourceFull | Refusal::AuthBanned => {
                        tracing::debug!(peer = %peer, reason, "inbound connection refused")
                    }
                }
                sessions.spawn(refuse(stream, refusal.reply()));
            }
        }
    }
    // Stop accepting now (the port closes); sessions finish on their own terms.
    drop(listener);
    sessions.close();
    tracing::info!(
        sessions = sessions.len(),
        "inbound listener stopped; waiting for sessions"
    );
    sessions.wait().await;
    Ok(())
}

async fn refuse(mut stream: TcpStream, why: &'static Fixed) {
    let mut reply = Vec::new();
    why.write_to(&mut reply);
    let _ = tokio::time::timeout(REFUSAL_WRITE_LIMIT, async {
        stream.write_all(&reply).await?;
        stream.shutdown().await
    })
    .await;
}

/// Runs one connection from greeting to close, including a STARTTLS upgrade, and logs its
/// opening and closing; its slot (`ticket`) is released when it ends. Generic over the stream
/// so tests drive it over `tokio::io::duplex`.
pub(crate) async fn connection<S: Stream, A: Acceptor>(
    stream: S,
    peer: SocketAddr,
    ctx: Arc<Context<A>>,
    ticket: Ticket,
) {
    let opened = Instant::now();
    let gauge = ctx.metrics.inbound_connections.clone();
    gauge.inc();
    let _open = scopeguard(move || gauge.dec());
    tracing::info!(peer = %peer, "inbound connection opened");

    let redactor = ctx.redactor.clone();
    let mut session = Session::new(stream, peer, ctx, ticket);
    session.greet();
    let (result, st) = match session.run().await {
        Ok(Flow::StartTls) => super::tls::upgrade(session).await,
        Ok(_) => (Ok(()), session.st),
        Err(e) => (Err(e), session.st),
    };
    let elapsed_ms = opened.elapsed().as_millis() as u64;
    let (messages, helo) = (st.messages, st.helo_for_log());
    match result {
        Ok(()) => {
            tracing::info!(peer = %peer, %helo, messages, elapsed_ms, "inbound connection closed")
        }
        Err(e) => {
            let error = redactor.text(&e);
            tracing::info!(peer = %peer, %helo, messages, elapsed_ms, %error, "inbound connection closed")
        }
    }
}

/// Runs `f` when dropped, so the connection gauge is right even if the task is aborted.
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}
