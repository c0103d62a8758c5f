//! A DKIM signing key as the config holds it: parsed when the file is validated (so a missing,
//! unreadable or invalid key is a problem on `dkim[i].key_file`, never a silent unsigned send),
//! like the other typed values of [`super::values`]. With the `[[dkim]]` defaults, it lives here
//! rather than in [`crate::dkim`] so that the signer reads the config and the config never
//! imports the signer.

use std::fmt;
use std::sync::Arc;

use mail_auth::common::crypto::{Algorithm, DkimKey, Ed25519Key, RsaKey, Sha256, SigningKey};
use mail_auth::common::headers::Writable;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

/// Fields signed when `[[dkim]] headers` is not set: what a reader sees and what links a
/// message to its thread or unsubscribe link. Trace and transport fields are left out because
/// providers add and change them.
pub const DEFAULT_HEADERS: &[&str] = &[
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Reply-To",
    "In-Reply-To",
    "References",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
];

/// Fields listed once more than they occur when `[[dkim]] oversign` is not set: adding one of
/// these in transit (a second `From`, a `Cc` exposing recipients) breaks the signature.
pub const DEFAULT_OVERSIGN: &[&str] = &["From", "To", "Cc", "Subject"];

/// Why a key file could not be used (reported as a config problem on `dkim[i].key_file`).
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {path}: {}", super::io_words(.source))]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a PEM private key (PKCS#8 or PKCS#1): {reason}")]
    Pem { path: String, reason: String },
    #[error("{path}: {reason}")]
    Key { path: String, reason: String },
}

/// A parsed private key, shared by every signer built from the same configuration. `Debug`
/// shows the algorithm only.
#[derive(Clone)]
pub struct LoadedKey(Arc<DkimKey>);

impl LoadedKey {
    /// Reads and parses an RSA (PKCS#1 or PKCS#8) or Ed25519 (PKCS#8) private key in PEM.
    pub fn load(path: &std::path::Path) -> Result<LoadedKey, KeyError> {
        let shown = path.display().to_string();
        let pem = std::fs::read(path).map_err(|source| KeyError::Read {
            path: shown.clone(),
            source,
        })?;
        LoadedKey::from_pem(&pem).map_err(|e| match e {
            KeyError::Pem { reason, .. } => KeyError::Pem {
                path: shown.clone(),
                reason,
            },
            KeyError::Key { reason, .. } => KeyError::Key {
                path: shown.clone(),
                reason,
            },
            other => other,
        })
    }

    /// Parses PEM text (the path in errors is left empty).
    pub fn from_pem(pem: &[u8]) -> Result<LoadedKey, KeyError> {
        let der = PrivateKeyDer::from_pem_slice(pem).map_err(|e| KeyError::Pem {
            path: String::new(),
            reason: e.to_string(),
        })?;
        let bad = |reason: String| KeyError::Key {
            path: String::new(),
            reason,
        };
        let key =
            match der {
                PrivateKeyDer::Pkcs1(_) => DkimKey::Rsa(
                    RsaKey::<Sha256>::from_key_der(der).map_err(|e| bad(rsa_reason(&e)))?,
                ),
                PrivateKeyDer::Pkcs8(ref pkcs8) => {
                    let bytes = pkcs8.secret_pkcs8_der().to_vec();
                    match RsaKey::<Sha256>::from_key_der(der) {
                    Ok(rsa) => DkimKey::Rsa(rsa),
                    Err(e) if e.to_string().contains("TooSmall") => return Err(bad(rsa_reason(&e))),
                    Err(rsa_err) => DkimKey::Ed25519(
                        Ed25519Key::from_pkcs8_maybe_unchecked_der(&bytes).map_err(|ed_err| {
                            bad(format!(
                                "neither an RSA key ({rsa_err}) nor an Ed25519 key ({ed_err})"
                            ))
                        })?,
                    ),
                }
                }
                _ => {
                    return Err(bad(
                        "only RSA and Ed25519 keys are used for DKIM (this is an EC key)".into(),
                    ));
                }
            };
        Ok(LoadedKey(Arc::new(key)))
    }

    /// `rsa-sha256` or `ed25519-sha256`, as in the `a=` tag.
    pub fn algorithm_name(&self) -> &'static str {
        match self.0.algorithm() {
            Algorithm::Ed25519Sha256 => "ed25519-sha256",
            Algorithm::RsaSha1 => "rsa-sha1",
            Algorithm::RsaSha256 => "rsa-sha256",
        }
    }
}

/// Why an RSA key was refused, in the operator's terms.
fn rsa_reason(e: &mail_auth::Error) -> String {
    if e.to_string().contains("TooSmall") {
        "RSA key too small: use 2048 bits or more (RFC 8301)".into()
    } else {
        format!("RSA key: {e}")
    }
}

impl fmt::Debug for LoadedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LoadedKey({})", self.algorithm_name())
    }
}

impl SigningKey for LoadedKey {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        self.0.sign(input)
    }

    fn algorithm(&self) -> Algorithm {
        self.0.algorithm()
    }
}
