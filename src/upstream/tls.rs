//! TLS to the upstream: trust anchors, the name we verify, and the TLS stream lettre talks through.
//!
//! Trust is the webpki roots plus the optional `ca_file` (a private CA), and the certificate must
//! match the configured `host` whether it is a DNS name or an IP address (rustls checks IP SANs
//! when the server name is an IP). Only the aws-lc-rs provider is used: with two providers
//! compiled in, rustls cannot pick a default and panics.
//!
//! We perform every handshake ourselves, implicit TLS before lettre sees the stream and
//! STARTTLS after lettre's plaintext session got `220` (see `client.rs`): lettre would
//! otherwise open the socket itself (without TCP_NODELAY), or put TLS on top of our stream
//! where the replies could no longer be decoded lossily (`stream.rs`).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use lettre::transport::smtp::client::AsyncTokioStream;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::UpstreamError;

/// Everything needed to open TLS to one upstream, built once per upstream.
#[derive(Clone)]
pub(crate) struct TlsSetup {
    pub connector: tokio_rustls::TlsConnector,
    pub server_name: ServerName<'static>,
}

impl TlsSetup {
    /// Reads `ca_file` (PEM, one or more certificates) and prepares verification against `host`.
    pub fn new(host: &str, ca_file: Option<&Path>) -> Result<TlsSetup, UpstreamError> {
        // The same checks config validation made (a problem there stops `check-config` and
        // `run` with the key path), so this only fails if a file changed since.
        let server_name = crate::config::tls::server_name(host).map_err(UpstreamError::Config)?;
        let roots = crate::config::tls::trust_anchors(ca_file)
            .map_err(|e| UpstreamError::Config(format!("ca_file: {e}")))?;

        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| UpstreamError::Config(format!("TLS setup: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(TlsSetup {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }
}

/// A TLS connection (implicit, or after STARTTLS) handed to lettre as an already-open stream.
pub(crate) struct TlsConnection(pub tokio_rustls::client::TlsStream<TcpStream>);

impl fmt::Debug for TlsConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TlsConnection")
            .field(self.0.get_ref().0)
            .finish()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

impl AsyncTokioStream for TlsConnection {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.0.get_ref().0.peer_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ips_are_accepted_as_server_names() {
        for host in ["smtp.example.net", "127.0.0.1", "::1", "[::1]"] {
            let setup = TlsSetup::new(host, None).unwrap();
            let is_ip = matches!(setup.server_name, ServerName::IpAddress(_));
            assert_eq!(is_ip, host != "smtp.example.net", "{host}");
        }
        assert!(matches!(
            TlsSetup::new("bad name", None),
            Err(UpstreamError::Config(_))
        ));
    }

    #[test]
    fn ca_file_must_hold_a_certificate() {
        let tmp = tempfile::tempdir().unwrap();
        let empty = tmp.path().join("empty.pem");
        std::fs::write(&empty, "not a pem\n").unwrap();
        assert!(matches!(
            TlsSetup::new("localhost", Some(&empty)),
            Err(UpstreamError::Config(_))
        ));
        assert!(matches!(
            TlsSetup::new("localhost", Some(&tmp.path().join("missing.pem"))),
            Err(UpstreamError::Config(_))
        ));
    }
}
