//! The inbound session as the fuzz targets drive it: one whole session over an in-memory
//! pipe, fed arbitrary client bytes. Not part of the relay; `crate::fuzzing` is its only user.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::admission::Admission;
use super::session::{Context, Session, Tuning};
use super::{Acceptor, InboundSettings};
use crate::observe::{Metrics, Redactor};

/// Runs one session (greeting to close) with `input` as everything the client sends, written
/// in pieces of `chunk` bytes, and returns everything the server answered. `pretend_tls`
/// starts the session as if STARTTLS had completed, so AUTH is reachable without a handshake.
/// Must run inside a tokio runtime with time enabled. The client half closes after its last
/// byte, so the session ends on EOF rather than on a timeout.
pub async fn session<A: Acceptor>(
    input: &[u8],
    chunk: usize,
    settings: InboundSettings,
    acceptor: Arc<A>,
    pretend_tls: bool,
) -> Vec<u8> {
    let admission = Admission::new(&settings);
    let settings_limit = settings.server.max_data_memory;
    let ctx = Arc::new(Context {
        settings: Arc::new(settings),
        acceptor,
        // One registry for every run: building one per input would dominate the fuzzer's time.
        metrics: shared_metrics(),
        redactor: Redactor::plain(),
        shutdown: CancellationToken::new(),
        tls: None,
        // No pause after a failed AUTH: the fuzzer would spend its time asleep.
        tuning: Tuning {
            auth_failure_delay: Duration::ZERO,
            ..Tuning::default()
        },
        admission,
        data_budget: super::memory::DataBudget::new(
            settings_limit,
            prometheus::IntGauge::new("fuzz_data_memory", "unused").expect("valid metric"),
            &prometheus::IntGauge::new("fuzz_data_memory_max", "unused").expect("valid metric"),
        ),
    });
    let (client, server) = tokio::io::duplex(64 * 1024);
    let peer: SocketAddr = ([127, 0, 0, 1], 40000).into();
    let server_task = async move {
        let Ok(ticket) = ctx.admission.admit(peer.ip(), &ctx.settings) else {
            return;
        };
        let mut session = Session::new(server, peer, ctx, ticket);
        session.st.tls = pretend_tls;
        session.greet();
        let _ = session.run().await;
    };
    let (mut reader, mut writer) = tokio::io::split(client);
    let input = input.to_vec();
    let chunk = chunk.max(1);
    let writer_task = async move {
        for piece in input.chunks(chunk) {
            if writer.write_all(piece).await.is_err() {
                return;
            }
        }
        let _ = writer.shutdown().await;
    };
    let reader_task = async move {
        let mut out = Vec::new();
        let _ = reader.read_to_end(&mut out).await;
        out
    };
    let ((), (), replies) = tokio::join!(
        async {
            server_task.await;
        },
        writer_task,
        reader_task
    );
    replies
}

fn shared_metrics() -> Metrics {
    static METRICS: std::sync::OnceLock<Metrics> = std::sync::OnceLock::new();
    METRICS.get_or_init(Metrics::new).clone()
}
