//! The TLS files the configuration names, loaded the one way both validation and the running
//! relay load them: the inbound certificate and key (`[server.tls]`) into a rustls
//! `ServerConfig` ([`server_config`], used by `check-config`, `run`, reload and
//! `inbound::tls::acceptor`), an upstream's trust anchors (`ca_file`, [`trust_anchors`]) and
//! the name its certificate is verified against ([`server_name`], both used by
//! `upstream::tls::TlsSetup`). So whatever would stop `run` at start is a config problem with
//! its key path, and `check-config` says so.
//!
//! Only the aws-lc-rs provider is used, never the process default.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{PemObject, SectionKind};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::values::io_words;

/// Which of the two `[server.tls]` files a problem is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFile {
    Cert,
    Key,
}

impl TlsFile {
    /// The key path of the file in the config.
    pub fn key_path(self) -> &'static str {
        match self {
            TlsFile::Cert => "server.tls.cert",
            TlsFile::Key => "server.tls.key",
        }
    }
}

/// Why the inbound certificate and key cannot be used, in plain words, with the file it is
/// about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", .file.key_path())]
pub struct TlsFileProblem {
    pub file: TlsFile,
    pub message: String,
}

fn problem(file: TlsFile, message: String) -> TlsFileProblem {
    TlsFileProblem { file, message }
}

/// The PEM sections of a file, or why it cannot be read.
fn pem_sections(path: &Path) -> Result<Vec<(SectionKind, Vec<u8>)>, String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("cannot read {}: {}", path.display(), io_words(&e)))?;
    <(SectionKind, Vec<u8>)>::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not a readable PEM file: {e}", path.display()))
}

fn is_private_key(kind: SectionKind) -> bool {
    matches!(
        kind,
        SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey
    )
}

/// Reads the certificate chain and private key of `[server.tls]`, checks that the key is one
/// TLS can use and that it belongs to the first certificate, and builds the rustls server
/// configuration from them.
pub fn server_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, TlsFileProblem> {
    let cert_sections = pem_sections(cert).map_err(|m| problem(TlsFile::Cert, m))?;
    let key_sections = pem_sections(key).map_err(|m| problem(TlsFile::Key, m))?;
    let certs: Vec<CertificateDer<'static>> = cert_sections
        .iter()
        .filter(|(kind, _)| *kind == SectionKind::Certificate)
        .map(|(_, der)| CertificateDer::from(der.clone()))
        .collect();
    let cert_has_key = cert_sections.iter().any(|(k, _)| is_private_key(*k));
    let key_has_cert = key_sections
        .iter()
        .any(|(k, _)| *k == SectionKind::Certificate);
    let swapped = || {
        format!(
            "are server.tls.cert and server.tls.key swapped? ({} holds a private key, {} a certificate)",
            cert.display(),
            key.display()
        )
    };
    if certs.is_empty() {
        return Err(problem(
            TlsFile::Cert,
            if cert_has_key && key_has_cert {
                swapped()
            } else if cert_has_key {
                format!(
                    "{} holds a private key, not a certificate (PEM \"BEGIN CERTIFICATE\")",
                    cert.display()
                )
            } else {
                format!(
                    "{} holds no TLS certificate (PEM \"BEGIN CERTIFICATE\")",
                    cert.display()
                )
            },
        ));
    }
    let Some((kind, der)) = key_sections.into_iter().find(|(k, _)| is_private_key(*k)) else {
        let encrypted =
            std::fs::read(key).is_ok_and(|b| b.windows(21).any(|w| w == b"ENCRYPTED PRIVATE KEY"));
        return Err(problem(
            TlsFile::Key,
            if encrypted {
                format!(
                    "{} holds an encrypted private key; the relay needs it unencrypted \
                     (openssl pkey -in ENCRYPTED -out PLAIN), readable by its user only",
                    key.display()
                )
            } else if key_has_cert {
                format!(
                    "{} holds a certificate, not a private key (PEM \"BEGIN PRIVATE KEY\")",
                    key.display()
                )
            } else {
                format!(
                    "{} holds no TLS private key (PEM \"BEGIN PRIVATE KEY\")",
                    key.display()
                )
            },
        ));
    };
    let key_der = PrivateKeyDer::from_pem(kind, der).ok_or_else(|| {
        problem(
            TlsFile::Key,
            format!("{} holds no usable private key", key.display()),
        )
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    if let Err(e) = CertifiedKey::from_der(certs.clone(), key_der.clone_key(), &provider) {
        return Err(match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => problem(
                TlsFile::Key,
                format!(
                    "the key in {} does not match the certificate in {} (server.tls.cert; \
                     the server's own certificate must come first there, then its CA chain)",
                    key.display(),
                    cert.display()
                ),
            ),
            rustls::Error::General(_) => problem(
                TlsFile::Key,
                format!(
                    "{} is not a key type TLS can use here: RSA (2048 bits or more), ECDSA P-256/P-384/P-521 or Ed25519",
                    key.display()
                ),
            ),
            rustls::Error::InvalidCertificate(why) => problem(
                TlsFile::Cert,
                format!(
                    "the first certificate in {} is not a valid X.509 certificate ({why:?})",
                    cert.display()
                ),
            ),
            other => problem(
                TlsFile::Cert,
                format!("{} cannot be used with its key: {other}", cert.display()),
            ),
        });
    }
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key_der))
        .map_err(|e| {
            problem(
                TlsFile::Cert,
                format!(
                    "{} and {} cannot be used: {e}",
                    cert.display(),
                    key.display()
                ),
            )
        })
}

/// The roots an upstream's certificate is verified against: the webpki roots plus every
/// certificate in `ca_file`. The error (plain words) is about `ca_file`.
pub fn trust_anchors(ca_file: Option<&Path>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let Some(path) = ca_file else {
        return Ok(roots);
    };
    let sections = pem_sections(path)?;
    let certs: Vec<CertificateDer<'static>> = sections
        .iter()
        .filter(|(kind, _)| *kind == SectionKind::Certificate)
        .map(|(_, der)| CertificateDer::from(der.clone()))
        .collect();
    if certs.is_empty() {
        return Err(if sections.iter().any(|(k, _)| is_private_key(*k)) {
            format!(
                "{} holds a private key, not a CA certificate (PEM \"BEGIN CERTIFICATE\")",
                path.display()
            )
        } else {
            format!(
                "{} holds no TLS certificate (PEM \"BEGIN CERTIFICATE\")",
                path.display()
            )
        });
    }
    for (i, cert) in certs.into_iter().enumerate() {
        roots.add(cert).map_err(|e| {
            format!(
                "certificate {} in {} is not usable as a trust anchor: {e}",
                i + 1,
                path.display()
            )
        })?;
    }
    Ok(roots)
}

/// The name an upstream's certificate must match: `host` as a DNS name or an IP address (a
/// bracketed IPv6 literal too).
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    let name = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    ServerName::try_from(name)
        .map_err(|_| format!("{host:?} is neither a DNS name nor an IP address"))
}
