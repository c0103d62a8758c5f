//! `[[dkim]]`: signing keys for the copies the relay sends (see `crate::dkim` and
//! `docs/dkim.md`). Key files are read and parsed here (into [`super::dkim_key::LoadedKey`]), so
//! a missing, unreadable or invalid key is reported as a problem on `dkim[i].key_file` before
//! anything is sent or reloaded.

use std::path::PathBuf;

use super::dkim_key::{DEFAULT_HEADERS, DEFAULT_OVERSIGN, LoadedKey};
use super::raw::RawDkim;
use super::values::Problems;

/// All signing keys; empty means copies are sent unsigned (as before DKIM support).
#[derive(Debug, Clone, Default)]
pub struct DkimConfig {
    pub keys: Vec<DkimKeyConfig>,
}

/// One `[[dkim]]` entry.
#[derive(Debug, Clone)]
pub struct DkimKeyConfig {
    /// Lower-cased; the `d=` tag and the `From:` domain it signs for.
    pub domain: String,
    pub selector: String,
    pub key_file: PathBuf,
    /// Fields signed where present (`h=`), in this order.
    pub headers: Vec<String>,
    /// Fields signed once more than they occur (no field of that name can be added later).
    pub oversign: Vec<String>,
    /// Also sign for `From:` domains below `domain` (with `d=domain`).
    pub subdomains: bool,
    /// Also sign copies that were not rewritten (the app's own signature, if any, stays too).
    pub sign_unchanged: bool,
    pub key: LoadedKey,
}

pub(super) fn validate_dkim(raw: Vec<RawDkim>, p: &mut Problems) -> DkimConfig {
    let mut keys: Vec<DkimKeyConfig> = Vec::new();
    for (i, r) in raw.into_iter().enumerate() {
        let path = format!("dkim[{i}]");
        let domain = p
            .required(&format!("{path}.domain"), r.domain)
            .map(|d| d.trim().trim_end_matches('.').to_ascii_lowercase());
        if let Some(d) = &domain {
            if d.is_empty() || !d.contains('.') || !d.chars().all(is_domain_char) {
                p.push(
                    &format!("{path}.domain"),
                    "must be a domain name such as example.com",
                );
            } else if keys.iter().any(|k| &k.domain == d) {
                p.push(
                    &format!("{path}.domain"),
                    format!("domain {d:?} has two keys; one [[dkim]] per domain"),
                );
            }
        }
        let selector = p.required(&format!("{path}.selector"), r.selector);
        if let Some(s) = &selector
            && (s.is_empty() || !s.chars().all(is_domain_char))
        {
            p.push(
                &format!("{path}.selector"),
                "must be letters, digits, '-', '_' or '.' (it is a DNS label)",
            );
        }
        let key_file = p
            .required(&format!("{path}.key_file"), r.key_file)
            .map(PathBuf::from);
        let key = key_file.as_ref().and_then(|f| {
            p.check_secret_file(&format!("{path}.key_file"), f);
            LoadedKey::load(f)
                .map_err(|e| p.push(&format!("{path}.key_file"), e.to_string()))
                .ok()
        });
        let headers = field_list(r.headers, DEFAULT_HEADERS, &format!("{path}.headers"), p);
        if !headers.iter().any(|h| h.eq_ignore_ascii_case("from")) {
            p.push(
                &format!("{path}.headers"),
                "must include From (RFC 6376 5.4)",
            );
        }
        let oversign = field_list(r.oversign, DEFAULT_OVERSIGN, &format!("{path}.oversign"), p);
        if let (Some(domain), Some(selector), Some(key_file), Some(key)) =
            (domain, selector, key_file, key)
        {
            keys.push(DkimKeyConfig {
                domain,
                selector,
                key_file,
                headers,
                oversign,
                subdomains: r.subdomains.unwrap_or(false),
                sign_unchanged: r.sign_unchanged.unwrap_or(false),
                key,
            });
        }
    }
    DkimConfig { keys }
}

fn is_domain_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-_.".contains(c)
}

/// A list of header field names (RFC 5322 ftext), or the default when unset.
fn field_list(
    value: Option<Vec<String>>,
    default: &[&str],
    path: &str,
    p: &mut Problems,
) -> Vec<String> {
    let Some(list) = value else {
        return default.iter().map(|s| s.to_string()).collect();
    };
    for (i, name) in list.iter().enumerate() {
        let ok = !name.is_empty() && name.bytes().all(|b| (33..=126).contains(&b) && b != b':');
        if !ok {
            p.push(&format!("{path}[{i}]"), "must be a header field name");
        }
        if name.eq_ignore_ascii_case("dkim-signature") {
            p.push(
                &format!("{path}[{i}]"),
                "DKIM-Signature is never signed by another DKIM-Signature here",
            );
        }
    }
    list
}
