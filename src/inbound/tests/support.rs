//! Test doubles and a tiny SMTP client that reads whole (multi-line) replies.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;

use crate::config::{AccessConfig, InboundTlsConfig, Secret, ServerConfig, User};
use crate::inbound::admission::Admission;
use crate::inbound::listener;
use crate::inbound::session::{Context, Tuning};
use crate::inbound::{Acceptor, InboundSettings, Transaction, Verdict};
use crate::observe::{Metrics, Redactor};
use crate::reply::Reply;

/// Upper bound for any single wait in a test, so a bug shows up as a failure, not a hang.
pub const HANG_GUARD: Duration = Duration::from_secs(10);

/// Records every transaction; answers with `verdict` when set, else accepts as `Q<n>`.
#[derive(Default)]
pub struct RecordingAcceptor {
    pub received: Mutex<Vec<Transaction>>,
    pub verdict: Mutex<Option<Verdict>>,
}

impl RecordingAcceptor {
    pub fn messages(&self) -> Vec<Vec<u8>> {
        let received = self.received.lock().unwrap();
        received.iter().map(|t| t.message.clone()).collect()
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    pub fn reject_with(&self, reply: Reply) {
        *self.verdict.lock().unwrap() = Some(Verdict::Rejected(reply));
    }
}

impl Acceptor for RecordingAcceptor {
    fn accept(&self, tx: Transaction) -> impl Future<Output = Verdict> + Send {
        let mut received = self.received.lock().unwrap();
        received.push(tx);
        let verdict = self
            .verdict
            .lock()
            .unwrap()
            .clone()
            .unwrap_or(Verdict::Accepted {
                queue_id: format!("Q{}", received.len()),
            });
        async move { verdict }
    }
}

pub fn settings() -> InboundSettings {
    InboundSettings {
        server: ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            hostname: "mx.test".into(),
            max_message_size: 1000,
            max_recipients: 3,
            max_connections: 2,
            command_timeout: Duration::from_secs(5),
            max_line_length: 512,
            max_connections_per_source: 100,
            reserved_connections: 0,
            unauthenticated_timeout: Duration::from_secs(30),
            max_data_memory: crate::config::DEFAULT_MAX_DATA_MEMORY,
            tls: None,
        },
        access: AccessConfig {
            networks: vec!["127.0.0.0/8".parse().unwrap()],
            users: Vec::new(),
            credentials: Default::default(),
            auth_failures_per_source: crate::config::DEFAULT_AUTH_FAILURES_PER_SOURCE,
            auth_failures_total: crate::config::DEFAULT_AUTH_FAILURES_TOTAL,
            auth_ban: crate::config::DEFAULT_AUTH_BAN,
        },
        apps: Default::default(),
    }
}

pub fn user(name: &str, password: &str) -> User {
    User {
        name: name.into(),
        password: Secret::new(password),
    }
}

pub struct Harness {
    pub ctx: Arc<Context<RecordingAcceptor>>,
    pub acceptor: Arc<RecordingAcceptor>,
    pub metrics: Metrics,
    pub shutdown: CancellationToken,
}

impl Harness {
    pub fn new(settings: InboundSettings, tls: Option<TlsAcceptor>) -> Self {
        let acceptor = Arc::new(RecordingAcceptor::default());
        let metrics = Metrics::new();
        let shutdown = CancellationToken::new();
        let admission = Admission::new(&settings);
        let data_limit = settings.server.max_data_memory;
        let ctx = Arc::new(Context {
            settings: Arc::new(settings),
            acceptor: acceptor.clone(),
            metrics: metrics.clone(),
            redactor: Redactor::plain(),
            shutdown: shutdown.clone(),
            tls,
            tuning: Tuning {
                auth_failure_delay: Duration::from_millis(10),
                ..Tuning::default()
            },
            admission,
            data_budget: crate::inbound::memory::DataBudget::new(
                data_limit,
                metrics.data_memory_bytes.clone(),
                &metrics.data_memory_max_bytes,
            ),
        });
        Harness {
            ctx,
            acceptor,
            metrics,
            shutdown,
        }
    }

    /// Starts one session over an in-memory duplex pipe, as if from `peer`.
    pub async fn connect(&self, peer: &str) -> (Client<tokio::io::DuplexStream>, JoinHandle<()>) {
        let (client, server) = tokio::io::duplex(256 * 1024);
        let peer: SocketAddr = peer.parse().unwrap();
        let ticket = self
            .ctx
            .admission
            .admit(peer.ip(), &self.ctx.settings)
            .expect("a slot for the test connection");
        let task = tokio::spawn(listener::connection(server, peer, self.ctx.clone(), ticket));
        let mut client = Client::new(client);
        let greeting = client.reply().await;
        assert_eq!(greeting, "220 mx.test ESMTP mailveil\r\n");
        (client, task)
    }

    pub fn rejections(&self, reason: &str) -> u64 {
        self.metrics
            .inbound_rejections
            .with_label_values(&[reason])
            .get()
    }

    pub fn received(&self, outcome: &str) -> u64 {
        self.metrics
            .messages_received
            .with_label_values(&[outcome])
            .get()
    }
}

/// A line-oriented SMTP client for tests.
pub struct Client<S> {
    reader: BufReader<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    pub fn new(stream: S) -> Self {
        Client {
            reader: BufReader::new(stream),
        }
    }

    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        let stream = self.reader.get_mut();
        stream.write_all(bytes.as_ref()).await.unwrap();
        stream.flush().await.unwrap();
    }

    /// Reads one complete reply (all lines of a multi-line reply).
    pub async fn reply(&mut self) -> String {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(HANG_GUARD, self.reader.read_line(&mut line))
                .await
                .expect("reply within the hang guard")
                .unwrap();
            assert!(n > 0, "connection closed; got so far: {text:?}");
            assert!(
                line.len() >= 4 && line.ends_with("\r\n"),
                "bad reply line {line:?}"
            );
            text.push_str(&line);
            if line.as_bytes()[3] == b' ' {
                return text;
            }
        }
    }

    /// Sends one command line and returns its reply.
    pub async fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n")).await;
        self.reply().await
    }

    /// Sends one command and asserts the reply starts with `expected`.
    pub async fn expect(&mut self, line: &str, expected: &str) -> String {
        let reply = self.cmd(line).await;
        assert!(
            reply.starts_with(expected),
            "{line:?}: expected {expected:?}, got {reply:?}"
        );
        reply
    }

    pub async fn expect_reply(&mut self, expected: &str) -> String {
        let reply = self.reply().await;
        assert!(
            reply.starts_with(expected),
            "expected {expected:?}, got {reply:?}"
        );
        reply
    }

    /// True when the server closed the connection (after any remaining bytes are read).
    pub async fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        match tokio::time::timeout(HANG_GUARD, self.reader.read_to_end(&mut rest)).await {
            Ok(Ok(_)) => rest.is_empty(),
            Ok(Err(_)) => true,
            Err(_) => false,
        }
    }

    pub fn into_inner(self) -> S {
        assert!(
            self.reader.buffer().is_empty(),
            "unexpected bytes before TLS"
        );
        self.reader.into_inner()
    }
}

/// A self-signed certificate for `localhost` written as PEM files.
pub struct TestCert {
    pub _dir: tempfile::TempDir,
    pub config: InboundTlsConfig,
    pub der: CertificateDer<'static>,
}

pub fn test_cert(required: bool) -> TestCert {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    write(&cert, certified.cert.pem().as_bytes());
    write(&key, certified.signing_key.serialize_pem().as_bytes());
    TestCert {
        config: InboundTlsConfig {
            cert,
            key,
            required,
        },
        der: certified.cert.der().clone(),
        _dir: dir,
    }
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

/// A client TLS connector that trusts exactly `cert`.
pub fn connector(cert: &CertificateDer<'static>) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}
