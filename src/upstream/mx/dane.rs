//! DANE for SMTP (RFC 7672): TLSA records, published in a DNSSEC-signed zone, name the
//! certificate (or the CA) an MX host must present. When the MX host's TLSA records are
//! authenticated, STARTTLS is required and the certificate must match them: a mismatch is a
//! hard failure (the host is skipped, never sent plaintext). Without authenticated TLSA records
//! nothing changes (MTA-STS or opportunistic TLS apply).
//!
//! Authentication comes from the validating resolver the operator names (`dnssec_resolver`,
//! e.g. unbound on loopback): its AD bit is trusted, so it must be reached over a path nobody
//! can tamper with (loopback, docs/delivery.md). We ask it directly with hickory-proto messages
//! (DO and AD set) because hickory-resolver's answers do not carry the AD bit.
//!
//! Supported: DANE-EE (usage 3: the end-entity certificate or its key, no name or expiry
//! check, RFC 7672 3.1.1) and DANE-TA (usage 2: a certificate of the presented chain is the
//! trust anchor; the chain is verified up to it with the MX host's name, RFC 7672 3.1.2), with
//! selectors 0 (full certificate) and 1 (SPKI) and matching types 0, 1 (SHA-256), 2 (SHA-512).
//! PKIX usages 0 and 1 are unusable for SMTP (RFC 7672 3.1.3) and ignored.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::proto::op::{Edns, Message, Query, ResponseCode};
use hickory_resolver::proto::rr::rdata::tlsa::{CertUsage, Matching, Selector};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// A usable TLSA record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlsa {
    /// DANE-TA (2) or DANE-EE (3).
    pub trust_anchor: bool,
    pub spki: bool,
    /// 0 exact, 1 SHA-256, 2 SHA-512.
    pub matching: u8,
    pub data: Vec<u8>,
}

/// What the validating resolver said about a question.
#[derive(Debug)]
pub enum Secure<T> {
    /// Authenticated (AD set): the records (possibly none: a signed denial).
    Yes(T),
    /// Not authenticated: an unsigned zone, or a resolver that does not validate.
    No,
}

/// Asks the validating resolver at `server` for `name`/`rtype`, within `timeout`.
async fn ask(
    server: SocketAddr,
    name: &str,
    rtype: RecordType,
    timeout: Duration,
) -> Result<(bool, Vec<RData>), String> {
    let name = Name::from_ascii(name).map_err(|e| format!("{name}: {e}"))?;
    let mut query = Message::query();
    query.add_query(Query::query(name.clone(), rtype));
    query.metadata.recursion_desired = true;
    query.metadata.authentic_data = true;
    let mut edns = Edns::new();
    edns.set_dnssec_ok(true).set_max_payload(4096);
    query.set_edns(edns);
    let bytes = query.to_vec().map_err(|e| e.to_string())?;
    let socket = tokio::net::UdpSocket::bind(if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })
    .await
    .map_err(|e| e.to_string())?;
    let exchange = async {
        socket.send_to(&bytes, server).await?;
        let mut buf = vec![0u8; 65535];
        loop {
            let (n, from) = socket.recv_from(&mut buf).await?;
            if from != server {
                continue;
            }
            match Message::from_vec(&buf[..n]) {
                Ok(m) if m.metadata.id == query.metadata.id => {
                    return Ok::<Message, std::io::Error>(m);
                }
                _ => continue,
            }
        }
    };
    let answer: Message = match tokio::time::timeout(timeout, exchange).await {
        Err(_) => return Err(format!("{name} {rtype}: no answer within {timeout:?}")),
        Ok(Err(e)) => return Err(format!("{name} {rtype}: {e}")),
        Ok(Ok(m)) => m,
    };
    if answer.metadata.truncation {
        return Err(format!("{name} {rtype}: answer truncated"));
    }
    match answer.metadata.response_code {
        ResponseCode::NoError | ResponseCode::NXDomain => {}
        other => return Err(format!("{name} {rtype}: {other}")),
    }
    let records = answer
        .answers
        .iter()
        .filter(|r| r.record_type() == rtype)
        .map(|r| r.data.clone())
        .collect();
    Ok((answer.metadata.authentic_data, records))
}

/// How long a domain's answer to "is its MX RRset signed?" is kept: the question is asked for
/// every copy (before a pooled connection is chosen), so it must not cost a DNS round trip
/// each time; a zone that becomes signed gets DANE at most this much later.
const SECURE_MX_TTL: Duration = Duration::from_secs(60);

/// Domains kept at most; expired answers are swept when the map is full.
const SECURE_MX_MAX: usize = 10_000;

/// Whether domains' MX RRsets are authenticated, asked of the validating resolver and kept for
/// [`SECURE_MX_TTL`].
pub struct SecureMx {
    server: SocketAddr,
    timeout: Duration,
    known: std::sync::Mutex<std::collections::HashMap<String, (bool, std::time::Instant)>>,
}

impl SecureMx {
    pub fn new(server: SocketAddr, timeout: Duration) -> SecureMx {
        SecureMx {
            server,
            timeout,
            known: Default::default(),
        }
    }

    /// The validating resolver (for TLSA questions).
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// Whether `domain`'s MX RRset (a signed NODATA too, for an implicit MX) is authenticated:
    /// DANE only applies to MX hosts learnt securely (RFC 7672 2.2). A failed question is "no"
    /// and is not kept.
    pub async fn is_secure(&self, domain: &str) -> bool {
        let now = std::time::Instant::now();
        if let Some((secure, at)) = self.lock().get(domain)
            && now.duration_since(*at) < SECURE_MX_TTL
        {
            return *secure;
        }
        let secure = match ask(
            self.server,
            &format!("{domain}."),
            RecordType::MX,
            self.timeout,
        )
        .await
        {
            Ok((secure, _)) => secure,
            Err(e) => {
                tracing::debug!(%domain, error = %crate::observe::log::escaped(&e), "DNSSEC MX check failed; no DANE");
                return false;
            }
        };
        let mut known = self.lock();
        if known.len() >= SECURE_MX_MAX {
            known.retain(|_, (_, at)| now.duration_since(*at) < SECURE_MX_TTL);
            if known.len() >= SECURE_MX_MAX {
                known.clear();
            }
        }
        known.insert(domain.to_string(), (secure, now));
        secure
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, (bool, std::time::Instant)>>
    {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The usable TLSA records of `host` port 25. An error means a secure zone could not be
/// asked (the copy must wait: RFC 7672 2.2 forbids going on without the answer).
pub async fn tlsa(
    server: SocketAddr,
    host: &str,
    timeout: Duration,
) -> Result<Secure<Vec<Tlsa>>, String> {
    let (authentic, records) = ask(
        server,
        &format!("_25._tcp.{host}."),
        RecordType::TLSA,
        timeout,
    )
    .await?;
    if !authentic {
        return Ok(Secure::No);
    }
    let usable = records
        .into_iter()
        .filter_map(|r| match r {
            RData::TLSA(t) => {
                let trust_anchor = match t.cert_usage {
                    CertUsage::DaneTa => true,
                    CertUsage::DaneEe => false,
                    _ => return None,
                };
                let spki = match t.selector {
                    Selector::Full => false,
                    Selector::Spki => true,
                    _ => return None,
                };
                let matching = match t.matching {
                    Matching::Raw => 0,
                    Matching::Sha256 => 1,
                    Matching::Sha512 => 2,
                    _ => return None,
                };
                Some(Tlsa {
                    trust_anchor,
                    spki,
                    matching,
                    data: t.cert_data,
                })
            }
            _ => None,
        })
        .collect();
    Ok(Secure::Yes(usable))
}

/// Whether `cert` matches `record`'s selector and matching type.
fn matches(record: &Tlsa, cert: &CertificateDer<'_>) -> bool {
    let selected: Vec<u8> = if record.spki {
        match webpki::EndEntityCert::try_from(cert) {
            Ok(parsed) => parsed.subject_public_key_info().as_ref().to_vec(),
            Err(_) => return false,
        }
    } else {
        cert.as_ref().to_vec()
    };
    let digest = match record.matching {
        0 => return selected == record.data,
        1 => aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &selected),
        _ => aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA512, &selected),
    };
    digest.as_ref() == record.data.as_slice()
}

/// Verifies a server certificate against TLSA records (see the module doc).
#[derive(Debug)]
pub struct DaneVerifier {
    records: Vec<Tlsa>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl DaneVerifier {
    /// A TLS connector that accepts exactly the certificates `records` allow.
    pub fn connector(records: Vec<Tlsa>) -> Result<tokio_rustls::TlsConnector, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = DaneVerifier {
            records,
            provider: provider.clone(),
        };
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
    }
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // DANE-EE: the certificate itself; its name and dates do not matter.
        if self
            .records
            .iter()
            .any(|r| !r.trust_anchor && matches(r, end_entity))
        {
            return Ok(ServerCertVerified::assertion());
        }
        // DANE-TA: a certificate of the chain is the anchor; the chain must lead to it and name
        // the host.
        for anchor in intermediates {
            if !self
                .records
                .iter()
                .any(|r| r.trust_anchor && matches(r, anchor))
            {
                continue;
            }
            let mut roots = rustls::RootCertStore::empty();
            if roots.add(anchor.clone()).is_err() {
                continue;
            }
            let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                self.provider.clone(),
            )
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
            if verifier
                .verify_server_cert(end_entity, intermediates, server_name, &[], now)
                .is_ok()
            {
                return Ok(ServerCertVerified::assertion());
            }
        }
        Err(rustls::Error::General(
            "the certificate matches none of the MX host's DANE TLSA records".into(),
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa,
        KeyPair, KeyUsagePurpose,
    };

    struct Chain {
        ca: CertificateDer<'static>,
        leaf: CertificateDer<'static>,
        leaf_spki: Vec<u8>,
    }

    fn chain(leaf_name: &str) -> Chain {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let mut params = CertificateParams::new(vec![leaf_name.to_string()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        let leaf = params.signed_by(&key, &issuer).unwrap();
        Chain {
            ca: issuer.der().clone(),
            leaf: leaf.der().clone(),
            leaf_spki: rcgen::PublicKeyData::subject_public_key_info(&key),
        }
    }

    fn sha256(b: &[u8]) -> Vec<u8> {
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b)
            .as_ref()
            .to_vec()
    }

    fn verify(records: Vec<Tlsa>, c: &Chain, name: &str) -> bool {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let v = DaneVerifier { records, provider };
        let name = ServerName::try_from(name.to_string()).unwrap();
        v.verify_server_cert(
            &c.leaf,
            std::slice::from_ref(&c.ca),
            &name,
            &[],
            UnixTime::now(),
        )
        .is_ok()
    }

    fn record(trust_anchor: bool, spki: bool, matching: u8, data: Vec<u8>) -> Tlsa {
        Tlsa {
            trust_anchor,
            spki,
            matching,
            data,
        }
    }

    #[test]
    fn dane_ee_matches_the_certificate_or_its_key_whatever_the_name() {
        let c = chain("mx.example.net");
        let other = chain("mx.example.net");
        for (spki, data) in [(false, c.leaf.to_vec()), (true, c.leaf_spki.clone())] {
            assert!(verify(
                vec![record(false, spki, 0, data.clone())],
                &c,
                "any.name"
            ));
            assert!(verify(
                vec![record(false, spki, 1, sha256(&data))],
                &c,
                "any.name"
            ));
            let sha512 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA512, &data);
            assert!(verify(
                vec![record(false, spki, 2, sha512.as_ref().to_vec())],
                &c,
                "x"
            ));
        }
        assert!(!verify(
            vec![record(false, false, 1, sha256(&other.leaf))],
            &c,
            "x"
        ));
        assert!(!verify(
            vec![record(false, true, 1, sha256(&other.leaf_spki))],
            &c,
            "x"
        ));
    }

    #[test]
    fn dane_ta_needs_the_chain_to_the_anchor_and_the_hosts_name() {
        let c = chain("mx.example.net");
        let ta = vec![record(true, false, 1, sha256(&c.ca))];
        assert!(verify(ta.clone(), &c, "mx.example.net"));
        assert!(
            !verify(ta, &c, "other.example.net"),
            "DANE-TA checks the name"
        );
        let elsewhere = chain("mx.example.net");
        assert!(
            !verify(
                vec![record(true, false, 1, sha256(&elsewhere.ca))],
                &c,
                "mx.example.net"
            ),
            "another CA"
        );
        // A DANE-EE record of the CA is not a trust anchor.
        assert!(!verify(
            vec![record(false, false, 1, sha256(&c.ca))],
            &c,
            "mx.example.net"
        ));
    }
}
