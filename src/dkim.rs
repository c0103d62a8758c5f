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

use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner};

use crate::config::dkim_key::LoadedKey;
use crate::config::{DkimConfig, DkimKeyConfig};
use crate::privacy::{self, Rewrite};

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
