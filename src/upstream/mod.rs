//! Upstream delivery: SMTP (our pipelining client over tokio, TLS verified) or a capture
//! directory.
//!
//! [`Upstream::from_config`] builds a ready upstream (TLS roots, credentials, connection cap);
//! [`Upstream::send`] hands one copy over as one SMTP transaction and classifies failures as
//! temporary or permanent ([`UpstreamError::is_temporary`]), which drives retries.
//!
//! Layout:
//! - `smtp/`: the SMTP client: sessions, pipelined transactions, every step under a timeout,
//!   replies decoded lossily (the code decides, never whether the text is UTF-8).
//! - `pool.rs`: the `max_connections` cap and the idle connections kept for reuse.
//! - `tls.rs`: trust anchors and the name certificates are verified against.
//! - `error.rs`: [`UpstreamError`] and its classifier.
//!
//! Which upstream a copy goes to (failover in order, each upstream's own rate and daily quota)
//! is the scheduler's decision: `schedule/failover.rs`.

mod error;
mod mx;
mod pool;
mod smtp;
mod tls;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

pub use error::{Stage, UpstreamError};
pub use mx::resolver as dns_resolver;
pub use smtp::TlsUsed;

use crate::config::{SmtpUpstreamConfig, UpstreamConfig, UpstreamKind, UpstreamTls};
use crate::observe::Redactor;
use pool::Pool;
use smtp::{Connection, SmtpClient, Target};

/// One copy ready to send: envelope plus the header block and body (sent back to back).
#[derive(Debug, Clone, Copy)]
pub struct Outbound<'a> {
    /// Empty string = null sender `<>`.
    pub mail_from: &'a str,
    pub rcpt_to: &'a [String],
    /// Header block including the empty line that ends it.
    pub header: &'a [u8],
    pub body: &'a [u8],
}

/// Which connections a copy may use: those opened for the same provider lane, each closed after
/// `max_transactions` (when lower than the upstream's own limit). Why: providers count
/// deliveries per connection and connections per sender; keeping each provider's connections
/// apart makes those limits exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reuse<'a> {
    pub provider: &'a str,
    pub max_transactions: Option<u32>,
    /// The provider requires TLS (`require_tls`): a direct (MX) delivery then requires
    /// STARTTLS with a certificate verified for the MX host's name, never plaintext.
    pub require_tls: bool,
}

impl Reuse<'static> {
    /// No provider: every such copy shares the same connections under the upstream's limits.
    pub const ANY: Reuse<'static> = Reuse {
        provider: "",
        max_transactions: None,
        require_tls: false,
    };
}

/// A successful hand-over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// The upstream's final reply, e.g. `250 2.0.0 Ok: queued as ABC`, or the capture id.
    pub reply: String,
    /// What protected the copy on its way; `None` for a capture directory.
    pub tls: Option<TlsUsed>,
}

/// Every client-side time limit of an SMTP upstream, in one place.
///
/// Why each exists: without them a stalled upstream would hold a connection slot (and the
/// copies waiting for it) forever. The defaults are the
/// minimums of RFC 5321 section 4.5.3.2; a configured `timeout` replaces them all
/// ([`Timeouts::uniform`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect.
    pub connect: Duration,
    /// Implicit TLS handshake, or STARTTLS with its handshake and second EHLO.
    pub tls: Duration,
    /// Server greeting plus our EHLO.
    pub greeting: Duration,
    /// The whole AUTH exchange.
    pub auth: Duration,
    /// Each of MAIL, RCPT, DATA, RSET, QUIT.
    pub command: Duration,
    /// Sending the message and waiting for the final reply; grows with the message size
    /// ([`Timeouts::message_timeout`]).
    pub message: Duration,
}

impl Timeouts {
    pub const DEFAULT_CONNECT: Duration = Duration::from_secs(30);
    pub const DEFAULT_TLS: Duration = Duration::from_secs(60);
    pub const DEFAULT_GREETING: Duration = Duration::from_secs(300);
    pub const DEFAULT_AUTH: Duration = Duration::from_secs(60);
    pub const DEFAULT_COMMAND: Duration = Duration::from_secs(300);
    pub const DEFAULT_MESSAGE: Duration = Duration::from_secs(600);
    /// The slowest transfer we wait for, in bytes per second, on top of [`Timeouts::message`]:
    /// a large message on a slow link is not a stalled upstream.
    pub const MIN_TRANSFER_RATE: u64 = 64 * 1024;

    /// The same limit for every step: what the config's `timeout` means.
    pub fn uniform(limit: Duration) -> Timeouts {
        Timeouts {
            connect: limit,
            tls: limit,
            greeting: limit,
            auth: limit,
            command: limit,
            message: limit,
        }
    }

    /// Limit for sending `len` bytes of message and reading the final reply.
    pub fn message_timeout(&self, len: usize) -> Duration {
        self.message + Duration::from_secs(len as u64 / Self::MIN_TRANSFER_RATE)
    }
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            connect: Self::DEFAULT_CONNECT,
            tls: Self::DEFAULT_TLS,
            greeting: Self::DEFAULT_GREETING,
            auth: Self::DEFAULT_AUTH,
            command: Self::DEFAULT_COMMAND,
            message: Self::DEFAULT_MESSAGE,
        }
    }
}

/// How connections to one SMTP upstream are shared and reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLimits {
    /// Simultaneous connections (busy or idle) at most; the config's `max_connections`.
    pub max_connections: usize,
    /// An idle connection older than this is closed, not reused: servers drop idle clients.
    pub max_idle: Duration,
    /// An idle connection older than this is checked with RSET before reuse; younger ones are
    /// used directly, and a failure on their first command is retried on a fresh connection.
    pub check_after_idle: Duration,
    /// Transactions per connection before it is closed, so no connection lives forever and
    /// load spreads when the upstream has several hosts behind one name.
    pub max_transactions: u32,
}

impl PoolLimits {
    pub const DEFAULT_MAX_CONNECTIONS: usize = 10;
    pub const DEFAULT_MAX_IDLE: Duration = Duration::from_secs(30);
    pub const DEFAULT_CHECK_AFTER_IDLE: Duration = Duration::from_secs(2);
    pub const DEFAULT_MAX_TRANSACTIONS: u32 = 100;
}

impl Default for PoolLimits {
    fn default() -> PoolLimits {
        PoolLimits {
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            max_idle: Self::DEFAULT_MAX_IDLE,
            check_after_idle: Self::DEFAULT_CHECK_AFTER_IDLE,
            max_transactions: Self::DEFAULT_MAX_TRANSACTIONS,
        }
    }
}

/// A configured upstream. Share it (e.g. in an `Arc`) between all senders: the connection cap
/// and the idle pool live inside.
pub struct Upstream {
    pub name: String,
    kind: Kind,
    /// Copies leave this host only over TLS: STARTTLS required or implicit TLS, or a hop that
    /// stays on this host (`local`: a loopback smarthost; a capture directory), or direct
    /// delivery, which requires verified TLS for the copies of such providers
    /// ([`Reuse::require_tls`]). Providers with `require_tls` are only sent through such
    /// upstreams.
    encrypted: bool,
    /// How failures of this upstream are logged where it is used (`upstream/failover.rs`):
    /// they quote the server's replies, which may name addresses and carry control bytes.
    log: Redactor,
}

enum Kind {
    Smtp(Box<SmtpUpstream>),
    Mx(Box<mx::MxUpstream>),
    Dir(Arc<PathBuf>),
}

struct SmtpUpstream {
    client: SmtpClient,
    target: Target,
    pool: Pool<Connection>,
}

impl Upstream {
    /// `helo` is the name we announce (server.hostname). Reads `ca_file` now, so a bad one is
    /// reported at start, not at the first delivery.
    pub fn from_config(config: &UpstreamConfig, helo: &str) -> Result<Upstream, UpstreamError> {
        let (timeouts, limits) = match &config.kind {
            UpstreamKind::Smtp(smtp) => (
                Timeouts::uniform(smtp.timeout),
                PoolLimits {
                    max_connections: smtp.max_connections,
                    ..PoolLimits::default()
                },
            ),
            UpstreamKind::Mx(mx) => (Timeouts::uniform(mx.timeout), PoolLimits::default()),
            UpstreamKind::Dir { .. } => (Timeouts::default(), PoolLimits::default()),
        };
        Upstream::with_limits(config, helo, timeouts, limits)
    }

    /// Like [`Upstream::from_config`] with explicit time limits and pool behaviour (tests,
    /// tuning); `config.max_connections` and `config.timeout` are ignored for SMTP upstreams.
    pub fn with_limits(
        config: &UpstreamConfig,
        helo: &str,
        timeouts: Timeouts,
        limits: PoolLimits,
    ) -> Result<Upstream, UpstreamError> {
        let encrypted = match &config.kind {
            UpstreamKind::Smtp(smtp) => smtp.tls != UpstreamTls::None || smtp.local,
            UpstreamKind::Mx(_) => true,
            UpstreamKind::Dir { .. } => true,
        };
        let kind = match &config.kind {
            UpstreamKind::Smtp(smtp) => {
                Kind::Smtp(Box::new(SmtpUpstream::new(smtp, helo, timeouts, limits)?))
            }
            UpstreamKind::Mx(mx) => Kind::Mx(Box::new(mx::MxUpstream::new(mx, helo, timeouts)?)),
            UpstreamKind::Dir { dir } => Kind::Dir(Arc::new(dir.clone())),
        };
        Ok(Upstream {
            name: config.name.clone(),
            kind,
            encrypted,
            log: Redactor::hiding(),
        })
    }

    /// Every configured upstream in order, announcing `helo`, logging through `redactor`; the
    /// first that cannot be built is returned with its name (at start and at reload alike).
    pub fn build_all(
        configs: &[UpstreamConfig],
        helo: &str,
        redactor: &Redactor,
    ) -> Result<Vec<Upstream>, (String, UpstreamError)> {
        configs
            .iter()
            .map(|u| {
                Upstream::from_config(u, helo)
                    .map(|built| built.with_log_redactor(redactor.clone()))
                    .map_err(|source| (u.name.clone(), source))
            })
            .collect()
    }

    /// The same upstream, its failures logged through `redactor` (the relay's, so addresses
    /// look the same in every line). Without it they are hidden under a key of their own.
    pub fn with_log_redactor(mut self, redactor: Redactor) -> Upstream {
        self.log = redactor;
        self
    }

    /// See [`with_log_redactor`](Self::with_log_redactor).
    pub fn log_redactor(&self) -> &Redactor {
        &self.log
    }

    /// Hands one copy over: one SMTP transaction with every recipient of `msg` (all accepted,
    /// or the copy fails as a whole), or one capture in the directory.
    pub async fn send(&self, msg: Outbound<'_>) -> Result<Delivered, UpstreamError> {
        self.send_reusing(msg, Reuse::ANY).await
    }

    /// Like [`send`](Self::send), on a connection of `reuse.provider`.
    pub async fn send_reusing(
        &self,
        msg: Outbound<'_>,
        reuse: Reuse<'_>,
    ) -> Result<Delivered, UpstreamError> {
        match &self.kind {
            Kind::Smtp(smtp) => smtp.send(&msg, reuse).await,
            Kind::Mx(mx) => mx.send(&msg, reuse).await,
            Kind::Dir(dir) => send_to_dir(dir.clone(), &msg).await,
        }
    }

    /// See [`Upstream::encrypted`](Upstream): whether copies leave this upstream over TLS.
    pub fn is_encrypted(&self) -> bool {
        self.encrypted
    }

    /// Whether this upstream delivers to each domain's own MX hosts (`kind = "mx"`).
    pub fn is_direct(&self) -> bool {
        matches!(self.kind, Kind::Mx(_))
    }

    /// Idle pooled connections right now (0 for a capture directory).
    pub fn idle_connections(&self) -> usize {
        match &self.kind {
            Kind::Smtp(smtp) => smtp.pool.idle_count(),
            Kind::Mx(mx) => mx.idle_connections(),
            Kind::Dir(_) => 0,
        }
    }
}

impl SmtpUpstream {
    fn new(
        config: &SmtpUpstreamConfig,
        helo: &str,
        timeouts: Timeouts,
        limits: PoolLimits,
    ) -> Result<SmtpUpstream, UpstreamError> {
        let (client, target) = SmtpClient::smarthost(config, helo, timeouts)?;
        Ok(SmtpUpstream {
            client,
            target,
            pool: Pool::new(limits),
        })
    }

    async fn send(&self, msg: &Outbound<'_>, reuse: Reuse<'_>) -> Result<Delivered, UpstreamError> {
        smtp::check_envelope(msg)?;
        send_pooled(&self.client, &self.pool, None, msg, reuse, || {
            self.client.connect(&self.target)
        })
        .await
    }
}

/// Sends `msg` over an idle connection of `pool` (of `reuse.provider`) or a new one from
/// `connect`, within the pool's cap and, when given, a permit of `also` (a cap shared by
/// several pools), taken after the pool's so a copy waiting for its pool holds nothing else.
async fn send_pooled<'a, F, Fut>(
    client: &SmtpClient,
    pool: &Pool<Connection>,
    also: Option<&Semaphore>,
    msg: &Outbound<'_>,
    reuse: Reuse<'_>,
    connect: F,
) -> Result<Delivered, UpstreamError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Connection, UpstreamError>> + 'a,
{
    let _permit = pool.admit().await;
    let _shared = match also {
        Some(cap) => Some(
            cap.acquire()
                .await
                .map_err(|_| UpstreamError::Config("the upstream is shutting down".into()))?,
        ),
        None => None,
    };
    let mut limits = *pool.limits();
    if let Some(n) = reuse.max_transactions {
        limits.max_transactions = limits.max_transactions.min(n.max(1));
    }
    let key = reuse.provider;
    // A pooled connection the server closed while idle fails on MAIL; nothing was accepted
    // then, so the copy goes once more over a fresh connection.
    let mut fresh_only = false;
    loop {
        let idle = if fresh_only { None } else { pool.take(key) };
        if idle.is_none()
            && let Some(other) = pool.evict_other(key)
        {
            client.close_now(other).await;
        }
        let (mut conn, reused) = match idle {
            Some((mut conn, idle_for)) => {
                if idle_for >= limits.check_after_idle && client.reset(&mut conn).await.is_err() {
                    continue; // dropped; try the next idle one or connect
                }
                (conn, true)
            }
            None => (connect().await?, false),
        };
        match client.transaction(&mut conn, msg).await {
            Ok(reply) => {
                let tls = Some(conn.tls);
                release(client, pool, conn, limits, key).await;
                return Ok(Delivered { reply, tls });
            }
            Err(e) if reused && e.is_stale_connection() => {
                fresh_only = true;
            }
            Err(e) => {
                if e.leaves_connection_usable() && client.reset(&mut conn).await.is_ok() {
                    release(client, pool, conn, limits, key).await;
                }
                return Err(e);
            }
        }
    }
}

/// Returns a healthy connection to the pool, or closes it when it has done its share or the
/// pool is full. Called while the sender still holds its permit (see `pool.rs`); a connection
/// that has done its share is closed before the permit goes, since the next sender will open a
/// new one in its place.
async fn release(
    client: &SmtpClient,
    pool: &Pool<Connection>,
    conn: Connection,
    limits: PoolLimits,
    key: &str,
) {
    if conn.transactions >= limits.max_transactions {
        client.close_now(conn).await;
    } else if let Some(conn) = pool.put(conn, key) {
        client.close(conn);
    }
}

/// Capture upstream: the same files as `mailveil sink`. The write is blocking (fsync), so it
/// runs on the blocking pool with its own copy of the bytes.
async fn send_to_dir(dir: Arc<PathBuf>, msg: &Outbound<'_>) -> Result<Delivered, UpstreamError> {
    smtp::check_envelope(msg)?;
    let mail_from = msg.mail_from.to_string();
    let rcpt_to = msg.rcpt_to.to_vec();
    let bytes = [msg.header, msg.body].concat();
    let id = tokio::task::spawn_blocking(move || {
        crate::capture::write(&dir, &mail_from, &rcpt_to, &[&bytes])
    })
    .await
    .map_err(|e| UpstreamError::Capture(std::io::Error::other(e.to_string())))?
    .map_err(UpstreamError::Capture)?;
    Ok(Delivered {
        reply: id,
        tls: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_timeout_grows_with_size() {
        let t = Timeouts::uniform(Duration::from_secs(10));
        assert_eq!(t.message_timeout(100), Duration::from_secs(10));
        assert_eq!(
            t.message_timeout(10 * Timeouts::MIN_TRANSFER_RATE as usize),
            Duration::from_secs(20)
        );
    }

    #[tokio::test]
    async fn dir_upstream_captures_exact_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let config = UpstreamConfig {
            name: "outbox".into(),
            limits: Default::default(),
            kind: UpstreamKind::Dir {
                dir: tmp.path().join("out"),
            },
        };
        let upstream = Upstream::from_config(&config, "relay.test").unwrap();
        let rcpt = vec!["r@example.com".to_string()];
        let delivered = upstream
            .send(Outbound {
                mail_from: "",
                rcpt_to: &rcpt,
                header: b"Subject: x\r\n\r\n",
                body: b"body\r\n",
            })
            .await
            .unwrap();
        let all = crate::capture::read_all(&tmp.path().join("out")).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].id, delivered.reply);
        assert_eq!(all[0].mail_from, "");
        assert_eq!(all[0].rcpt_to, rcpt);
        assert_eq!(all[0].bytes, b"Subject: x\r\n\r\nbody\r\n");
    }
}
