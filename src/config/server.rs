//! `[server]`: the SMTP listener, its limits and inbound TLS.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::raw::RawServer;
use super::values::{Problems, duration, size};

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Our name in the greeting, EHLO and Received fields.
    pub hostname: String,
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub max_connections: usize,
    pub command_timeout: Duration,
    /// Longest command line accepted (RFC 5321 minimum is 512 octets incl. CRLF).
    pub max_line_length: usize,
    /// Connections one source (an IPv4 address, an IPv6 /64) outside `access.networks` may
    /// hold until they authenticate: one address cannot take every slot.
    pub max_connections_per_source: usize,
    /// Slots outsiders that have not authenticated never get (they may hold at most
    /// `max_connections - reserved_connections`), so clients in `access.networks` always can.
    pub reserved_connections: usize,
    /// Time an outsider has, from the greeting, to authenticate (EHLO, STARTTLS handshake,
    /// AUTH); then `421 4.7.0`. A client in `access.networks` is never held to it.
    pub unauthenticated_timeout: Duration,
    /// Bytes of DATA all sessions together may hold in memory at once; a session that would
    /// go over it is answered `452 4.3.1` (docs/configuration.md, "Memory").
    pub max_data_memory: u64,
    pub tls: Option<InboundTlsConfig>,
}

/// Defaults of the admission limits, named so tests and docs refer to one value.
pub const DEFAULT_MAX_CONNECTIONS_PER_SOURCE: usize = 100;
pub const DEFAULT_UNAUTHENTICATED_TIMEOUT: Duration = Duration::from_secs(30);
/// Default of `server.max_data_memory`: half of the 256Mi memory limit of the manifests in
/// `deploy/`, leaving the rest for the queue, TLS and the runtime.
pub const DEFAULT_MAX_DATA_MEMORY: u64 = 128 << 20;

#[derive(Debug, Clone)]
pub struct InboundTlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// MAIL before STARTTLS is refused with `530 5.7.0`.
    pub required: bool,
}

pub(super) fn validate_server(raw: RawServer, p: &mut Problems) -> ServerConfig {
    let listen = raw.listen.as_deref().unwrap_or("127.0.0.1:2525");
    let max_connections = p.positive("server.max_connections", raw.max_connections, 1024);
    let reserved_connections = match raw.reserved_connections {
        Some(n) if n as usize > max_connections => {
            p.push(
                "server.reserved_connections",
                format!("must not exceed server.max_connections ({max_connections})"),
            );
            max_connections / 10
        }
        Some(n) => n as usize,
        None => max_connections / 10,
    };
    let unauthenticated_timeout = raw
        .unauthenticated_timeout
        .and_then(|d| duration(&d, "server.unauthenticated_timeout", p))
        .unwrap_or(DEFAULT_UNAUTHENTICATED_TIMEOUT);
    if unauthenticated_timeout.is_zero() {
        p.push(
            "server.unauthenticated_timeout",
            "must be greater than zero",
        );
    }
    let max_message_size = raw
        .max_message_size
        .and_then(|s| size(&s, "server.max_message_size", p))
        .unwrap_or(26_214_400);
    // Unset, it is never below the message size limit (a file that raised that limit stays
    // valid); set below it, it is a mistake.
    let max_data_memory = raw
        .max_data_memory
        .and_then(|s| size(&s, "server.max_data_memory", p))
        .unwrap_or(DEFAULT_MAX_DATA_MEMORY.max(max_message_size));
    if max_data_memory < max_message_size {
        p.push(
            "server.max_data_memory",
            format!(
                "must be at least server.max_message_size ({max_message_size} bytes), or no \
                 message of the largest size could ever be received"
            ),
        );
    }
    ServerConfig {
        listen: p
            .socket_addr("server.listen", listen)
            .unwrap_or_else(|| ([127, 0, 0, 1], 2525).into()),
        hostname: match raw.hostname {
            Some(h) if h.is_empty() || h.chars().any(|c| c.is_whitespace() || c.is_control()) => {
                p.push("server.hostname", "must be a host name without spaces");
                "mailveil.local".into()
            }
            Some(h) => h,
            None => "mailveil.local".into(),
        },
        max_message_size,
        max_recipients: p.positive("server.max_recipients", raw.max_recipients, 1000),
        max_connections,
        command_timeout: raw
            .command_timeout
            .and_then(|d| duration(&d, "server.command_timeout", p))
            .unwrap_or(Duration::from_secs(300)),
        max_line_length: match raw.max_line_length {
            Some(n) if n < 512 => {
                p.push(
                    "server.max_line_length",
                    "must be at least 512 (RFC 5321 4.5.3.1.4)",
                );
                4096
            }
            Some(n) => n as usize,
            None => 4096,
        },
        max_connections_per_source: p.positive(
            "server.max_connections_per_source",
            raw.max_connections_per_source,
            DEFAULT_MAX_CONNECTIONS_PER_SOURCE,
        ),
        reserved_connections,
        unauthenticated_timeout,
        max_data_memory,
        tls: raw.tls.and_then(|t| {
            let cert = p.required("server.tls.cert", t.cert).map(PathBuf::from);
            let key = p.required("server.tls.key", t.key).map(PathBuf::from);
            // Loaded exactly as the listener will load them (`super::tls`), so a missing or
            // unreadable file, a key that does not match the certificate, swapped files or a key
            // type TLS cannot use stop check-config as they would stop `run`.
            if let (Some(cert), Some(key)) = (&cert, &key)
                && let Err(e) = super::tls::server_config(cert, key)
            {
                p.push(e.file.key_path(), e.message);
            }
            Some(InboundTlsConfig {
                cert: cert?,
                key: key?,
                required: t.required,
            })
        }),
    }
}
