//! TLS to the upstream: trust anchors and the name we verify.
//!
//! Trust is the webpki roots plus the optional `ca_file` (a private CA), and the certificate must
//! match the configured `host` whether it is a DNS name or an IP address (rustls checks IP SANs
//! when the server name is an IP). Only the aws-lc-rs provider is used: with two providers
//! compiled in, rustls cannot pick a default and panics.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::ServerName;

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
        Ok(TlsSetup {
            connector: verified_connector(ca_file)?,
            server_name,
        })
    }
}

/// A connector that verifies certificates against the webpki roots plus `ca_file`.
pub(crate) fn verified_connector(
    ca_file: Option<&Path>,
) -> Result<tokio_rustls::TlsConnector, UpstreamError> {
    let roots = crate::config::tls::trust_anchors(ca_file)
        .map_err(|e| UpstreamError::Config(format!("ca_file: {e}")))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| UpstreamError::Config(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// The connector of opportunistic STARTTLS (RFC 7435), shared by every MX connection: any
/// certificate is accepted, since an MX host's name is not authenticated without MTA-STS or
/// DANE, but the handshake's signatures are still checked, so the session is encrypted to the
/// holder of the certificate's key. SNI carries the MX host name.
pub(crate) fn opportunistic_connector() -> Result<tokio_rustls::TlsConnector, UpstreamError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| UpstreamError::Config(format!("TLS setup: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// See [`opportunistic_connector`].
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The name an MX host is greeted by in SNI: its DNS name, or its address when it has no valid
/// one.
pub(crate) fn sni_name(host: &str, addr: std::net::IpAddr) -> ServerName<'static> {
    ServerName::try_from(host.to_string()).unwrap_or_else(|_| ServerName::IpAddress(addr.into()))
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
