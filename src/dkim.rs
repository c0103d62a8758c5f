//! DKIM re-signing of the copies the relay sends.
//!
//! A split copy has a new `To:` and no `Cc:`, so any signature the application added no longer
//! verifies (the rewrite drops it). With `[[dkim]]` keys configured, each copy is signed again
//! *after* its rewrite, with the key whose `domain` matches the copy's `From:` domain, and the
//! `DKIM-Signature` field is put in front of the copy's header block.
//!
//! Which header fields are signed (`h=`) is chosen per copy so that an upstream provider that
//! adds fields later (`Received`, `Return-Path`, `X-*`, a missing `Message-ID` or `Date`) does
//! not break the signature: a configured field is signed only where the copy has it, except the
//! over-signed ones (`From`, `To`, `Cc`, `Subject` by default), which are listed once more than
//! they occur, so nobody can add another `From`/`To`/`Cc`/`Subject` in transit.
//!
//! Keys are parsed when the configuration is validated (so a bad key is a config error naming
//! `dkim[i].key_file`, never a silent unsigned send) and the [`Signer`] is rebuilt from every
//! reloaded configuration; the scheduler swaps it with the rest of its reloadable settings.
//!
//! The cryptography, canonicalization and field syntax are `mail-auth`'s (aws-lc-rs backend,
//! the same provider rustls uses here).

use std::fmt;
use std::sync::Arc;

use mail_auth::common::crypto::{Algorithm, DkimKey, Ed25519Key, RsaKey, Sha256, SigningKey};
use mail_auth::common::headers::{HeaderWriter, Writable};
use mail_auth::dkim::{Canonicalization, DkimSigner};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

use crate::config::{DkimConfig, DkimKeyConfig};
use crate::privacy::{self, Rewrite};

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
    #[error("cannot read {path}: {source}")]
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

/// One configured signing identity.
struct Entry {
    domain: String,
    selector: String,
    subdomains: bool,
    sign_unchanged: bool,
    headers: Vec<String>,
    oversign: Vec<String>,
    key: LoadedKey,
}

/// Signs copies with the configured keys. Built from a validated configuration (cannot fail);
/// an empty signer signs nothing.
#[derive(Default)]
pub struct Signer {
    entries: Vec<Entry>,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|e| (&e.domain, &e.selector)))
            .finish()
    }
}

impl Signer {
    pub fn from_config(config: &DkimConfig) -> Signer {
        Signer {
            entries: config.keys.iter().map(Entry::from_config).collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Signs the copy rendered with `rewrite` when a key matches its `From:` domain and the
    /// copy is rewritten (or the key signs unchanged messages too): puts the `DKIM-Signature`
    /// field in front of `header`. Returns whether it signed.
    pub fn sign_copy(&self, header: &mut Vec<u8>, body: &[u8], rewrite: &Rewrite) -> bool {
        if self.entries.is_empty() {
            return false;
        }
        let rewritten = !matches!(rewrite, Rewrite::Unchanged);
        match self.sign(header, body, rewritten) {
            Some(field) => {
                header.splice(0..0, field);
                true
            }
            None => false,
        }
    }

    /// The `DKIM-Signature` field (CRLF-terminated) for the copy `header` + `body`, or `None`
    /// when no key applies. `header` is the copy's whole header block including the empty line.
    pub fn sign(&self, header: &[u8], body: &[u8], rewritten: bool) -> Option<Vec<u8>> {
        let from = privacy::header_from(header)?;
        let domain = from.rsplit_once('@')?.1.trim().to_ascii_lowercase();
        let entry = self.entry_for(&domain)?;
        if !rewritten && !entry.sign_unchanged {
            return None;
        }
        if !header.ends_with(b"\r\n\r\n") {
            // Bare-LF line endings (or no empty line before the body): the signer would not
            // find the body, and a signature over the wrong body fails at every receiver.
            tracing::warn!(domain = %entry.domain, "DKIM: header block does not end with CRLF CRLF; copy sent unsigned");
            return None;
        }
        let names = entry.signed_names(header);
        let signer = DkimSigner::from_key(entry.key.clone())
            .domain(entry.domain.clone())
            .selector(entry.selector.clone())
            .headers(names)
            .header_canonicalization(Canonicalization::Relaxed)
            .body_canonicalization(Canonicalization::Relaxed);
        // Streaming: the body is hashed where it lies, never copied behind the header.
        let mut stream = signer.sign_streaming();
        stream.write(header);
        stream.write(body);
        match stream.finish() {
            Ok(signature) => Some(signature.to_header().into_bytes()),
            Err(e) => {
                tracing::error!(domain = %entry.domain, selector = %entry.selector, error = %e,
                    "DKIM signing failed; the copy goes out without our signature");
                None
            }
        }
    }

    /// The key for a `From:` domain: an exact match first, then the longest configured parent
    /// domain whose entry allows subdomains.
    fn entry_for(&self, domain: &str) -> Option<&Entry> {
        if let Some(e) = self.entries.iter().find(|e| e.domain == domain) {
            return Some(e);
        }
        self.entries
            .iter()
            .filter(|e| {
                e.subdomains
                    && domain.len() > e.domain.len()
                    && domain.ends_with(&e.domain)
                    && domain.as_bytes()[domain.len() - e.domain.len() - 1] == b'.'
            })
            .max_by_key(|e| e.domain.len())
    }
}

impl Entry {
    fn from_config(c: &DkimKeyConfig) -> Entry {
        Entry {
            domain: c.domain.clone(),
            selector: c.selector.clone(),
            subdomains: c.subdomains,
            sign_unchanged: c.sign_unchanged,
            headers: c.headers.clone(),
            oversign: c.oversign.clone(),
            key: c.key.clone(),
        }
    }

    /// The `h=` list for this copy: each configured field present in `header`, then each
    /// over-signed field once more. `mail-auth` signs every occurrence of a listed field and
    /// lists any listed name it did not find once more at the end, which is how the extra
    /// entries become "no further field of this name".
    fn signed_names(&self, header: &[u8]) -> Vec<String> {
        let present = field_names(header);
        let mut names: Vec<String> = self
            .headers
            .iter()
            .filter(|h| present.iter().any(|p| p.eq_ignore_ascii_case(h)))
            .cloned()
            .collect();
        names.extend(self.oversign.iter().cloned());
        names
    }
}

/// Names of the fields in a header block (folded continuation lines skipped).
fn field_names(header: &[u8]) -> Vec<&str> {
    let mut names = Vec::new();
    for line in header.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            continue;
        }
        if let Some(colon) = line.iter().position(|&b| b == b':')
            && let Ok(name) = std::str::from_utf8(&line[..colon])
        {
            names.push(name.trim_end());
        }
    }
    names
}

#[cfg(test)]
mod tests;
